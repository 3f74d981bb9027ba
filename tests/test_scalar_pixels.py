"""The official preprocessing steps reproduced in rewards.scalar.pixels, the prompt cleaning of
HPSv2, the stored model texts, and which rewards see images in their own mode. (Pixel-for-pixel
agreement with the official torchvision pipelines themselves: tests/parity.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rewards.scalar
from rewards.base import Reward
from rewards.images import read_images
from rewards.scalar import (
    CLIPScoreReward,
    HPSv2Reward,
    HPSv3Reward,
    ImageRewardReward,
    PickScoreReward,
    UnifiedRewardReward,
)
from rewards.scalar.clip import clip_clean_text
from rewards.scalar.pixels import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    clip_eval_pixels,
    letterbox_pixels,
    resize_shorter_side,
)

TEXTS = Path(rewards.scalar.__file__).parent / "texts"


def _ramp(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """An image whose pixel values encode their coordinates, so a crop offset shows."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("overhang, offset", [(0, 0), (1, 0), (2, 1), (3, 2), (5, 2), (7, 4)])
def test_center_crop_rounds_offsets_half_to_even(overhang, offset):
    """torchvision's CenterCrop: round((h - size) / 2); floor division would give overhang // 2."""
    image = _ramp(10 + overhang, 10 + overhang)
    crop = np.asarray(center_crop(image, 10))
    assert crop.shape == (10, 10, 3)
    assert crop[0, 0, 0] == offset and crop[0, 0, 1] == offset


def test_resize_truncates_the_longer_side_and_keeps_the_mode():
    assert resize_shorter_side(_ramp(40, 44), 32).size == (32, 35)  # 44 * 32 / 40 = 35.2
    assert resize_shorter_side(_ramp(44, 40), 32).size == (35, 32)
    same = _ramp(32, 50)
    assert resize_shorter_side(same, 32) is same
    assert resize_shorter_side(_ramp(40, 44, "RGBA"), 32).mode == "RGBA"
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(_ramp(8, 20), 10)


def test_clip_eval_pixels_resizes_rgba_before_dropping_alpha():
    """As OpenAI CLIP's transform: the RGBA image is resized with premultiplied alpha, then
    converted, which differs from converting first wherever the image is transparent."""
    rgba = np.zeros((40, 44, 4), dtype=np.uint8)
    rgba[:, ::2] = (255, 0, 0, 255)  # opaque red columns ...
    rgba[:, 1::2] = (0, 0, 255, 0)  # ... between transparent ones with blue underneath
    image = Image.fromarray(rgba, "RGBA")
    ours = clip_eval_pixels(image, 32)
    resized_then_rgb = center_crop(resize_shorter_side(image, 32), 32).convert("RGB")
    expected = np.asarray(resized_then_rgb, dtype=np.float32) / 255
    expected = (expected - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, np.float32)
    torch.testing.assert_close(ours, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6, rtol=0)
    rgb_first = clip_eval_pixels(image.convert("RGB"), 32)
    assert not torch.allclose(ours, rgb_first, atol=1e-3)


def test_letterbox_pads_black_around_the_resized_image():
    pixels = letterbox_pixels(_ramp(48, 40), 32)  # 48 x 40 -> 32 x 27 (round 26.7), 5 rows of pad
    assert pixels.shape == (3, 32, 32)
    black = ((torch.zeros(3) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))[:, None]
    for row in (0, 1, 29, 30, 31):  # 2 rows on top, 3 at the bottom
        torch.testing.assert_close(pixels[:, row], black.expand(3, 32), atol=1e-6, rtol=0)
    assert not torch.allclose(pixels[:, 2], black.expand(3, 32))
    square = letterbox_pixels(_ramp(32, 32), 32)  # nothing to resize or pad
    raw = torch.from_numpy(np.asarray(_ramp(32, 32), dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    expected = (raw - mean) / std
    torch.testing.assert_close(square, expected, atol=1e-6, rtol=0)
    assert letterbox_pixels(_ramp(32, 20), 32).shape == (3, 32, 32)  # padded though not resized


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """``[n_out, n_in]`` float64 weights of torch's bicubic resize along one axis
    (align_corners=False), written from their definitions: without antialiasing, Keys' kernel with
    a = -0.75 at the source coordinate (o + 0.5) * s - 0.5 (rounded to float32 as torch computes
    it), taps clamped to the border; with it,
    the kernel with a = -0.5 stretched by the downscale factor, its taps cut at the border and
    renormalised (PIL's scheme)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        if not antialias:  # torch computes this coordinate in the input's dtype (float32)
            f32 = np.float32
            src = float(f32(f32(n_in) / f32(n_out)) * f32(o + 0.5) - f32(0.5))
            base = np.floor(src)
            for k in range(-1, 3):
                weights[o, int(np.clip(base + k, 0, n_in - 1))] += _cubic(src - (base + k), -0.75)
        else:
            stretch = max(scale, 1.0)
            center = (o + 0.5) * scale
            lo = max(int(center - 2 * stretch + 0.5), 0)
            hi = min(int(center + 2 * stretch + 0.5), n_in)
            taps = _cubic((np.arange(lo, hi) - center + 0.5) / stretch, -0.5)
            weights[o, lo:hi] = taps / taps.sum()
    return weights


@pytest.mark.parametrize("antialias", [True, False])
def test_letterbox_resizes_as_torchvision_of_each_era(antialias):
    """hpsv2's F.resize without ``antialias``: antialiased bicubic on torchvision >= 0.17, plain
    bicubic (a = -0.75, no prefilter) before; checked against float64 weights from the kernels'
    definitions, on a 1024 px image downscaled to 224 and a small one upscaled."""
    for width, height, new_w, new_h in ((1024, 1024, 224, 224), (20, 12, 224, 134)):
        rng = np.random.default_rng(width)
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = letterbox_pixels(image, 224, antialias=antialias)
        unit = np.asarray(image, dtype=np.float64) / 255
        rows = _resize_matrix(height, new_h, antialias)
        cols = _resize_matrix(width, new_w, antialias)
        rows_done = np.tensordot(rows, unit, axes=(1, 0))  # [new_h, width, 3]
        resized = np.tensordot(rows_done, cols, axes=(1, 1)).transpose(0, 2, 1)  # [new_h, new_w, 3]
        top = (224 - new_h) // 2
        expected = np.zeros((224, 224, 3))
        expected[top : top + new_h] = resized
        expected = (expected - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
        reference = torch.from_numpy(expected).permute(2, 0, 1).float()
        torch.testing.assert_close(ours, reference, atol=5e-5, rtol=0)  # float32 sums
    sharp = letterbox_pixels(image, 224, antialias=False)
    assert not torch.allclose(sharp, letterbox_pixels(image, 224, antialias=True), atol=1e-2)


def test_hpsv2_antialias_option_names_the_torchvision_behaviour(tmp_path):
    from rewards.scalar.hpsv2 import ANTIALIAS

    assert ANTIALIAS == {"torchvision_0.17": True, "torchvision_0.16": False}
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="antialias must be one of"):
        HPSv2Reward(path="x.pt", processor_path=str(tmp_path), antialias="true")


@pytest.mark.parametrize(
    "prompt, cleaned",
    [
        ("An astronaut\u2019s glove", "an astronaut's glove"),
        ("salt &amp;amp; pepper", "salt & pepper"),
        ("  two\n dogs\t in   snow ", "two dogs in snow"),
        ("caf\u00c3\u00a9 au lait", "caf\u00e9 au lait"),  # mojibake repaired by ftfy
    ],
)
def test_clip_prompts_are_cleaned_as_the_clip_tokenizers_do(prompt, cleaned):
    assert clip_clean_text(prompt) == cleaned


def test_every_stored_model_text_names_its_source():
    sources = (TEXTS / "SOURCES.md").read_text()
    named = set(re.findall(r"^\| `([^`]+)` \|", sources, flags=re.MULTILINE))
    stored = {path.name for path in TEXTS.glob("*.txt")}
    assert stored and named == stored
    assert re.search(r"[0-9a-f]{40}", sources)  # commits are pinned


def test_which_rewards_see_images_in_their_own_mode():
    """Those whose official preprocessing converts images itself get them unconverted."""
    own_mode = {CLIPScoreReward, ImageRewardReward}
    for cls in (CLIPScoreReward, PickScoreReward, ImageRewardReward, HPSv2Reward, HPSv3Reward,
                UnifiedRewardReward):  # fmt: skip
        assert cls.keeps_image_mode == (cls in own_mode), cls.__name__
    assert Reward.keeps_image_mode is False
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert read_images([rgba])[0][0].mode == "RGB"
    assert read_images([rgba], keep_mode=True)[0][0].mode == "RGBA"


def test_antialias_bench_measures_the_input_shift_between_eras(capsys):
    from bench.hpsv2_antialias import main

    result = main([])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    shifts = result["images"]
    assert set(shifts) == {"photo_upscaled", "rendered_figure", "zone_plate"}
    assert all(s["size"] == [1024, 1024] and s["rms_pixel"] > 0.01 for s in shifts.values())
    assert shifts["zone_plate"]["rms_pixel"] > shifts["photo_upscaled"]["rms_pixel"]
