"""HPSv2 against the official ``hpsv2`` package (1.2.0, PyPI), run in its own environment, in both
torchvision eras: ``hpsv2`` (torchvision >= 0.17, tensors antialiased when resized) and
``hpsv2_torchvision016`` (torch 2.1.2 + torchvision 0.16.2, not antialiased), each against the
``antialias`` value named after it.

The official side builds hpsv2's OpenCLIP model (a small ViT, the real BPE tokenizer), gives it
random weights, saves them as ``HPS_v2.1_compressed.pt`` is laid out and scores real images with
``hpsv2.img_score.score``. Here that file loads through ``reward.path`` with a CLIP folder for the
same architecture, and the scores must agree to 1e-4 relative in float32.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from support import PROMPTS, max_relative_difference, run_official
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPTokenizer

from rewards.scalar import HPSv2Reward
from rewards.scalar.hpsv2 import ANTIALIAS
from rewards.scalar.pixels import letterbox_pixels

pytestmark = pytest.mark.parity

WIDTH, LAYERS, HEADS, PATCH, EMBED = 64, 2, 2, 32, 32
# environment -> the antialias option that reproduces it, and its torchvision's first digits
ERAS = {"hpsv2": ("torchvision_0.17", "0."), "hpsv2_torchvision016": ("torchvision_0.16", "0.16.")}
OPEN_CLIP_CONFIG = {
    "embed_dim": EMBED,
    "vision_cfg": {
        "image_size": 224,
        "layers": LAYERS,
        "width": WIDTH,
        "head_width": WIDTH // HEADS,
        "patch_size": PATCH,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": HEADS,
                 "layers": LAYERS},
}  # fmt: skip


def _clip_folder(folder, tokenizer_files):
    """What the laion CLIP-ViT-H-14 folder is to the real model: config, tokenizer, processor."""
    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, hidden_act="gelu", layer_norm_eps=1e-5)  # fmt: skip
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407, **common),
        vision_config=dict(image_size=224, patch_size=PATCH, **common),
        projection_dim=EMBED,
    )  # fmt: skip
    config.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(str(tokenizer_files), model_max_length=77).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size=224).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(ERAS))
def official(request, real_images, clip_tokenizer_files, tmp_path_factory):
    env = request.param
    folder = tmp_path_factory.mktemp(env)
    rgba = [p for p in real_images if Image.open(p).mode == "RGBA"]
    converted = []
    for path in rgba:  # what hpsv2 can score of an RGBA image: its RGB channels
        target = folder / f"{path.stem}_as_rgb.png"
        Image.open(path).convert("RGB").save(target)
        converted.append(target)
    images = [*real_images, *converted]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(real_images))]
    prompts += [prompts[real_images.index(path)] for path in rgba]  # same prompt as the original
    spec = {
        "seed": 0,
        "open_clip_config": OPEN_CLIP_CONFIG,
        "checkpoint": str(folder / "HPS_v2.1_compressed.pt"),
        "pixels": str(folder / "pixels.pt"),
        "images": [str(p) for p in images],
        "prompts": prompts,
    }
    result = run_official(env, "official_hpsv2.py", spec, folder)
    antialias, version = ERAS[env]
    assert result["torchvision"].startswith(version), result["torchvision"]
    if antialias == "torchvision_0.17":
        assert tuple(int(x) for x in result["torchvision"].split(".")[:2]) >= (0, 17)
    clip_dir = _clip_folder(folder / "clip", clip_tokenizer_files)
    return spec, result, clip_dir, {p: r for p, r in zip(rgba, converted)}, antialias


def test_checkpoint_is_laid_out_as_released(official):
    spec, *_ = official
    checkpoint = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["state_dict"]
    state = checkpoint["state_dict"]
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    assert "text_projection" in state and "logit_scale" in state
    assert all(value.dtype == torch.float16 for value in state.values())


def test_pixels_equal_the_official_transform(official):
    """Equal to this era's pixels, and (for an image hpsv2 downscales) not to the other era's."""
    spec, result, _, _, antialias = official
    theirs = torch.load(spec["pixels"], weights_only=True)
    other = next(name for name in ANTIALIAS if name != antialias)
    shifts = {}
    for path, error in zip(spec["images"], result["errors"]):
        if error is not None:
            continue
        image = Image.open(path).convert("RGB")
        ours = letterbox_pixels(image, 224, antialias=ANTIALIAS[antialias])
        official_pixels = theirs[path.rsplit("/", 1)[-1]]
        # float32 rounding of torch 2.1's and today's bicubic kernels: a few ulp
        torch.testing.assert_close(ours, official_pixels, atol=5e-6, rtol=0)
        if max(image.size) > 224:
            wrong = letterbox_pixels(image, 224, antialias=ANTIALIAS[other])
            shifts[path] = (wrong - official_pixels).abs().max().item()
    print(json.dumps({"reward": "hpsv2", "era": antialias, "other_era_max_abs_pixel": shifts}))
    assert shifts and min(shifts.values()) > 1e-2


def test_scores_equal_the_official_package(official):
    spec, result, clip_dir, rgba_as_rgb, antialias = official
    reward = HPSv2Reward(
        path=spec["checkpoint"], processor_path=str(clip_dir), batch_size=3, antialias=antialias
    )
    images = [Image.open(p) for p in spec["images"]]
    ours = reward(images, spec["prompts"]).scores.tolist()
    theirs = dict(zip(spec["images"], result["scores"]))
    errors = dict(zip(spec["images"], result["errors"]))
    pairs = []
    for path, score in zip(spec["images"], ours):
        if path in {str(p) for p in rgba_as_rgb}:
            # hpsv2 keeps RGBA's alpha as a 4th channel and fails; we score the RGB channels,
            # which is hpsv2's own score of the image converted to RGB.
            assert "channels" in errors[path] or "size" in errors[path], errors[path]
            rgb_path = str(rgba_as_rgb[next(p for p in rgba_as_rgb if str(p) == path)])
            pairs.append((score, theirs[rgb_path]))
        else:
            assert errors[path] is None
            pairs.append((score, theirs[path]))
    difference = max_relative_difference(*zip(*pairs))
    absolute = max(abs(a - b) for a, b in pairs)
    print(json.dumps({"reward": "hpsv2", "era": antialias, "pairs": len(pairs),
                      "max_rel_diff": difference, "max_abs_diff": absolute,
                      "scores": [b for _, b in pairs]}))  # fmt: skip
    # 1e-4 relative, or 1e-6 absolute for a cosine near 0 (torch 2.1's era scores one at -3e-4)
    assert difference < 1e-4 or absolute < 1e-6
    assert len({round(s, 6) for s in ours}) > 1  # the random model tells inputs apart
