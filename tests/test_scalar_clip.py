"""CLIPScore, PickScore and HPSv2 on a tiny random CLIPModel saved to a temp folder with a locally
built tokenizer: scores match an independent float64 recomputation (preprocessing written out by
hand where it is the official one's), batching does not change them, a bf16 PickScore keeps its
scale in float32, and missing files fail before loading. Parity with the official packages
themselves: tests/parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from rewards.scalar import CLIPScoreReward, HPSv2Reward, PickScoreReward
from rl.tiny import build_clip_tokenizer

PROMPTS = ["a red apple on a table", "a blue car", "two dogs in the snow", "a photo"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # layer norms start as identities: make every mapping error visible
        for name, param in model.named_parameters():
            if name != "logit_scale":
                param.add_(0.1 * torch.randn_like(param))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tokenizer,
    )
    folder = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _images(n: int, seed: int = 0, shape=(40, 48, 3)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def _processor_pixels(processor, image):
    return processor(images=[image], return_tensors="pt")["pixel_values"].double()


def _clip_s_pixels(processor, image):
    """OpenAI CLIP's eval transform written out: shorter side to 32 (longer one truncated), PIL
    bicubic, centre crop at offsets rounded half to even, /255, CLIP mean/std (float64)."""
    size = processor.image_processor.crop_size["height"]
    w, h = image.size
    image = image.resize((size, size * h // w) if w <= h else (size * w // h, size), Image.BICUBIC)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64) / 255
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    arr = (arr - np.array(mean)) / np.array(std)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _reference(folder, images, prompts, pixels=_processor_pixels):
    """Cosine and logit scale recomputed in float64 from the saved model, step by step."""
    model = CLIPModel.from_pretrained(folder).double().eval()
    processor = CLIPProcessor.from_pretrained(folder)
    cos = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            pix = pixels(processor, image)
            ids = processor.tokenizer([prompt], return_tensors="pt")["input_ids"]
            vision = model.vision_model(pixel_values=pix).pooler_output
            img = model.visual_projection(vision)[0]
            text_hidden = model.text_model(input_ids=ids).last_hidden_state[0]
            eos = (ids[0] == processor.tokenizer.eos_token_id).nonzero()[0, 0]
            txt = model.text_projection(text_hidden[eos])
            cos.append(float(img @ txt / (img.norm() * txt.norm())))
    return torch.tensor(cos, dtype=torch.float64), float(model.logit_scale.detach().exp())


def test_clipscore_matches_float64_reference_and_normalisations(clip_dir):
    # 44 x 40 -> 35 x 32: an overhang of 3, where the CLIP image processor's floored crop
    # offset (1) differs from the rounded one (2) of the CLIP-S reference code.
    images = _images(4, shape=(40, 44, 3))
    texts = [f"a photo depicts {prompt}" for prompt in PROMPTS]
    cos, _ = _reference(clip_dir, images, texts, pixels=_clip_s_pixels)
    reward = CLIPScoreReward(path=str(clip_dir), batch_size=3, normalize="none")
    out = reward(images, PROMPTS)
    torch.testing.assert_close(out.scores.double(), cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.details["cosine"].double(), cos, atol=1e-5, rtol=0)
    assert out.num_failed == 0
    clip_s = CLIPScoreReward(path=str(clip_dir), normalize="clip_s")(images, PROMPTS).scores
    torch.testing.assert_close(clip_s.double(), 2.5 * cos.clamp(min=0), atol=1e-5, rtol=0)
    percent = CLIPScoreReward(path=str(clip_dir), normalize="percent")(images, PROMPTS).scores
    torch.testing.assert_close(percent.double(), 100 * cos.clamp(min=0), atol=1e-3, rtol=0)


def test_clipscore_prefix_comes_from_the_reference_code_and_can_be_turned_off(clip_dir):
    images = _images(2, seed=3)
    reward = CLIPScoreReward(path=str(clip_dir), normalize="none")
    # Cleaned as clip.tokenize cleans it: ftfy, HTML entities, whitespace, lower case.
    assert reward.texts(["a  cat\u2019s &amp;amp; toy"]) == ["a photo depicts a cat's & toy"]
    other = CLIPScoreReward(path=str(clip_dir), prefix="An image of", clean_text=False)
    assert other.texts(["x &amp; y"]) == ["An image of x &amp; y"]  # space added, as reference
    bare = CLIPScoreReward(path=str(clip_dir), normalize="none", prefix=None)
    assert bare.texts(["a cat"]) == ["a cat"]
    cos, _ = _reference(clip_dir, images, PROMPTS[:2], pixels=_clip_s_pixels)
    torch.testing.assert_close(bare(images, PROMPTS[:2]).scores.double(), cos, atol=1e-5, rtol=0)
    assert not torch.allclose(reward(images, PROMPTS[:2]).scores.double(), cos, atol=1e-4)


def test_pickscore_is_scaled_cosine_and_batch_invariant(clip_dir):
    images = _images(4, seed=1)
    cos, scale = _reference(clip_dir, images, PROMPTS)
    assert math.isclose(scale, math.exp(2.6592), rel_tol=1e-4)  # CLIP's initial logit scale
    raw = PickScoreReward(path=str(clip_dir), processor_path=str(clip_dir), normalize="none")
    one_by_one = PickScoreReward(path=str(clip_dir), batch_size=1)
    scores = raw(images, PROMPTS).scores.double()
    torch.testing.assert_close(scores, scale * cos, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        one_by_one(images, PROMPTS).scores.double(), scores / 26, atol=1e-5, rtol=0
    )


def test_pickscore_in_bf16_scales_and_compares_in_float32(clip_dir):
    images = _images(3, seed=4)
    fp32 = PickScoreReward(path=str(clip_dir), normalize="none")(images, PROMPTS[:3])
    bf16 = PickScoreReward(path=str(clip_dir), dtype="bfloat16", normalize="none")
    out = bf16(images, PROMPTS[:3])
    assert bf16.model.logit_scale.dtype == torch.bfloat16  # the towers do run in bf16
    exact = math.exp(2.6592)  # the checkpoint's float32 logit scale, exponentiated
    ratio = out.details["raw"] / out.details["cosine"]
    torch.testing.assert_close(ratio, torch.full((3,), exact, dtype=ratio.dtype), rtol=1e-6, atol=0)
    rounded_first = math.exp(float(torch.tensor(2.6592).to(torch.bfloat16)))
    assert abs(rounded_first / exact - 1) > 2e-3  # what exponentiating the bf16 value would shift
    cosines = out.details["cosine"], fp32.details["cosine"]
    torch.testing.assert_close(*cosines, atol=0.03, rtol=0)  # only the towers round


def test_tensor_input_and_release_reload(clip_dir):
    from transformers.image_processing_backends import PilBackend

    reward = CLIPScoreReward(path=str(clip_dir))
    batch = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = reward(batch, PROMPTS[:2]).scores
    assert isinstance(reward.image_processor, PilBackend)  # pinned, torchvision or not
    reward.release()
    assert reward.model is None and reward.image_processor is None
    torch.testing.assert_close(reward(batch, PROMPTS[:2]).scores, first)


def test_missing_paths_fail_before_loading(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        PickScoreReward(path=str(tmp_path / "no_such_dir"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        CLIPScoreReward(path=str(empty))
    with pytest.raises(FileNotFoundError, match="processor.*lacks preprocessor_config.json"):
        PickScoreReward(path=str(clip_dir), processor_path=str(empty))
    with pytest.raises(ValueError, match="normalize"):
        PickScoreReward(path=str(clip_dir), normalize="bogus")


def _as_openclip(model: CLIPModel) -> dict[str, torch.Tensor]:
    """The tiny CLIPModel's weights in OpenCLIP's layout (what an HPSv2 checkpoint holds)."""
    out = {"logit_scale": model.logit_scale.data}
    for src, dst in (("vision_model", "visual."), ("text_model", "")):
        tower = getattr(model, src)
        for i, layer in enumerate(tower.encoder.layers):
            block = f"{dst}transformer.resblocks.{i}."
            attn = layer.self_attn
            out[block + "attn.in_proj_weight"] = torch.cat(
                [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            )
            out[block + "attn.in_proj_bias"] = torch.cat(
                [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            )
            for name, module in (
                ("attn.out_proj", attn.out_proj),
                ("ln_1", layer.layer_norm1),
                ("ln_2", layer.layer_norm2),
                ("mlp.c_fc", layer.mlp.fc1),
                ("mlp.c_proj", layer.mlp.fc2),
            ):
                out[block + name + ".weight"] = module.weight
                out[block + name + ".bias"] = module.bias
    vis, txt = model.vision_model, model.text_model
    out |= {
        "visual.class_embedding": vis.embeddings.class_embedding,
        "visual.positional_embedding": vis.embeddings.position_embedding.weight,
        "visual.conv1.weight": vis.embeddings.patch_embedding.weight,
        "visual.ln_pre.weight": vis.pre_layrnorm.weight,
        "visual.ln_pre.bias": vis.pre_layrnorm.bias,
        "visual.ln_post.weight": vis.post_layernorm.weight,
        "visual.ln_post.bias": vis.post_layernorm.bias,
        "visual.proj": model.visual_projection.weight.T,
        "token_embedding.weight": txt.embeddings.token_embedding.weight,
        "positional_embedding": txt.embeddings.position_embedding.weight,
        "ln_final.weight": txt.final_layer_norm.weight,
        "ln_final.bias": txt.final_layer_norm.bias,
        "text_projection": model.text_projection.weight.T,
    }
    return {f"module.{k}": v.detach().clone() for k, v in out.items()}


def test_hpsv2_openclip_checkpoint_scores_like_the_clip_it_came_from(clip_dir, tmp_path):
    state = _as_openclip(CLIPModel.from_pretrained(clip_dir))
    checkpoint = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": state}, checkpoint)
    images = _images(3, seed=2)  # 48 x 40: letterboxed to 32 x 27, padded 2 px top, 3 bottom

    def letterboxed(processor, image):
        """HPSv2's transform in float64: the float tensor resized (bicubic, antialiased, not
        clamped), zero-padded, normalised with OpenAI CLIP's mean/std."""
        x = torch.from_numpy(np.asarray(image, dtype=np.float64) / 255).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(27, 32), mode="bicubic", antialias=True)
        x = torch.nn.functional.pad(x, (0, 0, 2, 3))
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64)
        return (x - mean[:, None, None]) / std[:, None, None]

    cos, _ = _reference(clip_dir, images, PROMPTS[:3], pixels=letterboxed)
    reward = HPSv2Reward(path=str(checkpoint), processor_path=str(clip_dir), batch_size=2)
    torch.testing.assert_close(reward(images, PROMPTS[:3]).scores.double(), cos, atol=1e-5, rtol=0)
    percent = HPSv2Reward(path=str(checkpoint), processor_path=str(clip_dir), normalize="percent")
    torch.testing.assert_close(
        percent(images, PROMPTS[:3]).scores.double(), 100 * cos, atol=1e-3, rtol=0
    )

    fp16 = HPSv2Reward(path=str(checkpoint), processor_path=str(clip_dir), autocast=True)
    mixed = fp16(images, PROMPTS[:3]).scores.double()
    torch.testing.assert_close(mixed, cos, atol=5e-3, rtol=0)
    assert not torch.equal(mixed, reward(images, PROMPTS[:3]).scores.double())  # fp16 did run

    torch.save({"state_dict": state | {"module.score_head.weight": torch.zeros(1)}}, checkpoint)
    with pytest.raises(KeyError, match="score_head"):
        HPSv2Reward(path=str(checkpoint), processor_path=str(clip_dir))(images, PROMPTS[:3])
    with pytest.raises(FileNotFoundError, match="hpsv2 checkpoint.*missing.pt"):
        HPSv2Reward(path=str(tmp_path / "missing.pt"), processor_path=str(clip_dir))


def test_hydra_config_builds_the_reward(clip_dir):
    from pathlib import Path

    from omegaconf import OmegaConf

    from rewards import build_reward

    conf = Path(__file__).resolve().parents[1] / "conf" / "reward" / "clipscore.yaml"
    reward = build_reward(OmegaConf.merge(OmegaConf.load(conf), {"path": str(clip_dir)}))
    assert isinstance(reward, CLIPScoreReward) and reward.normalize == "clip_s"
    images = _images(2, seed=5)
    direct = CLIPScoreReward(path=str(clip_dir))(images, PROMPTS[:2]).scores
    torch.testing.assert_close(reward(images, PROMPTS[:2]).scores, direct)


def test_checkpoint_tensor_reads_one_tensor_from_any_weights_layout(clip_dir, tmp_path):
    from safetensors.torch import load_file

    from rewards.scalar.common import checkpoint_tensor

    state = load_file(str(clip_dir / "model.safetensors"))
    expected = state["logit_scale"]
    torch.testing.assert_close(checkpoint_tensor(clip_dir, "logit_scale"), expected)
    torch.save(state, tmp_path / "pytorch_model.bin")  # the older single-file layout
    torch.testing.assert_close(checkpoint_tensor(tmp_path, "logit_scale"), expected)
    with pytest.raises(KeyError, match="no_such_tensor"):
        checkpoint_tensor(clip_dir, "no_such_tensor")
