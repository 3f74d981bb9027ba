"""CLIPScore against CLIP-S as its reference computes it: OpenAI's ``clip`` package (openai-clip
1.0.1, PyPI) for the model, the loader and ``clip.tokenize``, and jmhessel/clipscore's
clipscore.py (not a package) for the image transform and the formula ``w * max(cos, 0)``, w = 2.5,
written out in official_clipscore.py with file and commit.

The official side builds a small ViT-B/32-shaped OpenAI CLIP with random weights, saves it in
float16 as the released weights are, and scores real images with prompts that need CLIP's text
cleaning (curly quotes, HTML entities, mojibake, runs of whitespace) and one past the 77-token
context. Here that state dict becomes a transformers CLIP folder (the layout of
openai/clip-vit-base-patch32), CLIPScoreReward scores it with its defaults, and the token ids, the
pixels and the scores must agree (scores to 1e-4 relative in float32).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from support import PROMPTS, max_relative_difference, run_official
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from rewards.scalar import CLIPScoreReward
from rewards.scalar.hpsv2 import openclip_to_transformers
from rewards.scalar.pixels import clip_eval_pixels

pytestmark = pytest.mark.parity

DIMS = {"width": 64, "layers": 2, "embed": 32}
CLEANING = [
    "\u201cA red bicycle\u201d leaning on a wall",  # curly double quotes
    "fish &amp; chips &lt;on a plate&gt; with &quot;salt&quot;",  # entities
    "caf\u00c3\u00a9 au lait,\n\ttwo   cups",  # mojibake, newline, tab, space runs
    "Rock &amp;amp; roll poster \u2014 1969",  # double-escaped entity, em dash
]


def _clip_folder(folder, state, tokenizer_files):
    """The official weights as a transformers CLIP folder (OpenAI CLIP and OpenCLIP share the
    key layout hpsv2.openclip_to_transformers maps)."""
    common = dict(hidden_size=DIMS["width"], intermediate_size=4 * DIMS["width"],
                  num_hidden_layers=DIMS["layers"], num_attention_heads=DIMS["width"] // 64,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)  # fmt: skip
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407, **common),
        vision_config=dict(image_size=224, patch_size=32, **common),
        projection_dim=DIMS["embed"],
    )  # fmt: skip
    model = CLIPModel(config)
    model.load_state_dict({k: v.float() for k, v in openclip_to_transformers(state).items()})
    model.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(str(tokenizer_files), model_max_length=77).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size=224).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def official(real_images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipscore")
    (folder / "tokenizer").mkdir()
    prompts = [*PROMPTS, *CLEANING]
    images = [real_images[i % len(real_images)] for i in range(len(prompts))]
    spec = {
        "seed": 0,
        "dims": DIMS,
        "checkpoint": str(folder / "ViT-B-32-parity.pt"),
        "inputs": str(folder / "inputs.pt"),
        "tokenizer_folder": str(folder / "tokenizer"),
        "images": [str(p) for p in images],
        "prompts": prompts,
    }
    result = run_official("clipscore", "official_clipscore.py", spec, folder)
    state = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    clip_dir = _clip_folder(folder / "clip", state, folder / "tokenizer")
    return spec, result, clip_dir


@pytest.fixture(scope="module")
def reward(official):
    _, _, clip_dir = official
    return CLIPScoreReward(path=str(clip_dir), batch_size=4)


def test_tokens_equal_clip_tokenize(official, reward):
    """Prefix, ftfy, HTML entities, whitespace, lower case and truncation to 77 tokens (the last
    one the end-of-text token) as clip.tokenize(..., truncate=True) gives them."""
    spec, _, _ = official
    theirs = torch.load(spec["inputs"], weights_only=True)["tokens"]
    reward._ensure_loaded()
    ours = reward.tokenizer(reward.texts(spec["prompts"]), truncation=True, max_length=77)
    for row, ids in zip(theirs.tolist(), ours["input_ids"]):
        assert ids == row[: len(ids)] and not any(row[len(ids) :]), (ids, row)
    assert max(len(ids) for ids in ours["input_ids"]) == 77  # the long prompt is truncated
    raw = CLIPScoreReward(path=str(official[2]), clean_text=False)
    raw._ensure_loaded()
    unclean = raw.tokenizer(raw.texts(CLEANING), truncation=True, max_length=77)["input_ids"]
    assert all(ids != row[: len(ids)] for ids, row in zip(unclean, theirs[-4:].tolist()))


def test_pixels_equal_the_reference_transform(official):
    spec, _, _ = official
    theirs = torch.load(spec["inputs"], weights_only=True)["pixels"]
    for path, pixels in zip(spec["images"], theirs):
        torch.testing.assert_close(
            clip_eval_pixels(Image.open(path), 224), pixels, atol=2e-6, rtol=0
        )


def test_scores_equal_clip_s(official, reward):
    spec, result, _ = official
    out = reward([Image.open(p) for p in spec["images"]], spec["prompts"])
    difference = max_relative_difference(out.scores.tolist(), result["scores"])
    cosine = (out.details["cosine"].double() - torch.tensor(result["cosine"])).abs().max().item()
    print(json.dumps({"reward": "clipscore", "pairs": len(spec["prompts"]),
                      "max_rel_diff": difference, "cosine_max_abs_diff": cosine,
                      "positive": sum(s > 0 for s in result["scores"])}))  # fmt: skip
    assert difference < 1e-4 and cosine < 1e-5
    positive = sum(s > 0 for s in result["scores"])
    assert 0 < positive < len(result["scores"])  # both sides of the clamp at 0 are compared
