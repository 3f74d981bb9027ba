"""Flow-GRPO's own scalar rewards against the reference formulas (yifan123/flow_grpo
``flow_grpo/rewards.py`` and ``flow_grpo/aesthetic_scorer.py``, commit ac4c86e8): JPEG
(in)compressibility recomputed as the reference does from the same pixels, and the LAION aesthetic
predictor on a tiny random CLIP (projection 768) with a random MLP saved in the released
checkpoint's layout, against a float64 recomputation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel

from rewards import build_reward
from rewards.scalar import AestheticReward, JpegCompressibilityReward, JpegIncompressibilityReward


def _reference_jpeg_kb(images: torch.Tensor) -> np.ndarray:
    """flow_grpo ``jpeg_incompressibility``: round to uint8, NHWC, PIL JPEG q95, bytes / 1000."""
    arr = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
    sizes = []
    for image in arr:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return np.array(sizes)


def _image_batch() -> torch.Tensor:
    torch.manual_seed(0)
    smooth = torch.linspace(0, 1, 64).repeat(3, 48, 1)  # compresses well
    noisy = torch.rand(3, 48, 64) * 1.2 - 0.1  # outside [0, 1]: the clamp matters
    flat = torch.full((3, 48, 64), 0.5)
    return torch.stack([smooth, noisy, flat])


def test_jpeg_rewards_equal_the_reference_formula():
    images = _image_batch()
    expected = _reference_jpeg_kb(images)
    incompressible = JpegIncompressibilityReward()(images, ["", "", ""])
    compressible = JpegCompressibilityReward()(images, ["", "", ""])
    np.testing.assert_allclose(incompressible.scores.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(compressible.scores.numpy(), -expected / 500, rtol=1e-6)
    np.testing.assert_allclose(compressible.details["raw"].numpy(), expected, rtol=1e-6)
    assert expected[1] > expected[0] > expected[2]  # noise is the least compressible


def test_jpeg_reward_on_pil_images_and_configs():
    images = _image_batch()
    pil = [Image.fromarray(a) for a in _uint8(images)]
    out = build_reward({"_target_": "rewards.scalar.JpegIncompressibilityReward"})(pil, [""] * 3)
    np.testing.assert_allclose(out.scores.numpy(), _reference_jpeg_kb(images), rtol=1e-6)
    with pytest.raises(ValueError, match="quality"):
        JpegCompressibilityReward(quality=0)


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)


def write_aesthetic_files(folder):
    """A tiny CLIP folder projecting to 768 and a random MLP state dict with the released file's
    keys (``layers.{0,2,4,6,7}``), as ``sac+logos+ava1-l14-linearMSE.pth`` holds them."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=768,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(folder)
    sizes = [(768, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out) * 0.1
    mlp = folder / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, mlp)
    return folder, mlp, state


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory):
    return write_aesthetic_files(tmp_path_factory.mktemp("tiny_clip_l14"))


def _reference_aesthetic(folder, state, images) -> np.ndarray:
    """float64: processor pixels -> CLIP image features -> / L2 norm -> the five linear layers."""
    model = CLIPModel.from_pretrained(str(folder)).double().eval()
    processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"].double()
    with torch.no_grad():
        embed = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    x = embed / torch.linalg.vector_norm(embed, dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{index}.weight"].double().T + state[f"layers.{index}.bias"].double()
    return x.squeeze(1).numpy()


def test_aesthetic_matches_float64_reference(aesthetic_files):
    folder, mlp, state = aesthetic_files
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 30, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)).convert("L"),
    ]
    reward = AestheticReward(path=str(folder), mlp_path=str(mlp), batch_size=2)
    out = reward(images, ["ignored"] * 3)
    expected = _reference_aesthetic(folder, state, [im.convert("RGB") for im in images])
    np.testing.assert_allclose(out.scores.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(expected, 6))) == 3  # the images score differently
    again = AestheticReward(path=str(folder), mlp_path=str(mlp), batch_size=3)(images, [""] * 3)
    np.testing.assert_allclose(again.scores.numpy(), out.scores.numpy(), rtol=1e-5)


def test_aesthetic_checks_files_and_layout(aesthetic_files, tmp_path):
    folder, mlp, state = aesthetic_files
    with pytest.raises(FileNotFoundError, match="aesthetic MLP"):
        AestheticReward(path=str(folder), mlp_path=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="aesthetic CLIP model"):
        AestheticReward(path=str(tmp_path), mlp_path=str(mlp))
    renamed = tmp_path / "renamed.pth"
    torch.save({k.replace("layers.", "net."): v for k, v in state.items()}, renamed)
    with pytest.raises(KeyError, match="missing"):
        AestheticReward(path=str(folder), mlp_path=str(renamed))([Image.new("RGB", (8, 8))], [""])
