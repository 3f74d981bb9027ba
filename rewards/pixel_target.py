"""A deterministic pixel-statistics reward that a tiny random-weight model can learn.

It rewards images whose *mean colour*, *brightness* (mean luminance) and *contrast* (standard
deviation of luminance) are close to fixed targets. It ignores the prompt on purpose: the offline
demo trains a random tiny SD3 that understands no words, and a target it can reach by shifting
its output statistics makes "the reward clearly rises" a fair test of the trainer itself.

Each component scores ``1 - distance`` in ``[0, 1]``:

* ``colour``: ``1 - mean_c |mean_rgb_c - target_rgb_c|`` (per-channel means in ``[0, 1]``);
* ``brightness``: ``1 - |mean luminance - target_brightness|`` (Rec. 601 luma);
* ``contrast``: ``1 - |std luminance - target_contrast| / 0.5`` clipped at 0 (0.5 is the largest
  std an image in ``[0, 1]`` can have).

The score is the weight-normalised sum of the components with a non-zero weight; every component
is also reported in ``details`` so a run can be read term by term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from rewards.base import Reward, RewardOutput
from rewards.images import LUMA_WEIGHTS, to_float_array

MAX_STD = 0.5


class PixelTargetReward(Reward):
    """Closeness of an image's colour, brightness and contrast to fixed targets (prompt ignored).

    Args:
        target_rgb: target per-channel mean, three values in ``[0, 1]``.
        target_brightness: target mean luminance in ``[0, 1]``.
        target_contrast: target luminance standard deviation in ``[0, 0.5]``.
        weights: weight of each of ``colour``, ``brightness``, ``contrast`` (non-negative, not all
            zero); missing names weigh 0.
    """

    name = "pixel_target"
    COMPONENTS = ("colour", "brightness", "contrast")

    def __init__(
        self,
        target_rgb: Sequence[float] = (0.9, 0.2, 0.2),
        target_brightness: float = 0.4,
        target_contrast: float = 0.2,
        weights: dict[str, float] | None = None,
    ) -> None:
        rgb = np.asarray(target_rgb, dtype=np.float64)
        if rgb.shape != (3,) or np.any(rgb < 0) or np.any(rgb > 1):
            raise ValueError(f"target_rgb must be three values in [0, 1], got {list(target_rgb)}")
        if not 0 <= target_brightness <= 1:
            raise ValueError(f"target_brightness must be in [0, 1], got {target_brightness}")
        if not 0 <= target_contrast <= MAX_STD:
            raise ValueError(f"target_contrast must be in [0, {MAX_STD}], got {target_contrast}")
        weights = dict(weights if weights is not None else {"colour": 1.0})
        unknown = set(weights) - set(self.COMPONENTS)
        if unknown:
            raise ValueError(f"unknown weight names {sorted(unknown)}; use {self.COMPONENTS}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {weights}")
        self.target_rgb = rgb
        self.target_brightness = float(target_brightness)
        self.target_contrast = float(target_contrast)
        self.weights = {c: float(weights.get(c, 0.0)) for c in self.COMPONENTS}

    def components(self, image: Image.Image) -> dict[str, float]:
        """The three component scores of one image."""
        pixels = to_float_array(image)
        luma = pixels @ LUMA_WEIGHTS
        return {
            "colour": 1.0 - float(np.abs(pixels.mean(axis=(0, 1)) - self.target_rgb).mean()),
            "brightness": 1.0 - abs(float(luma.mean()) - self.target_brightness),
            "contrast": max(0.0, 1.0 - abs(float(luma.std()) - self.target_contrast) / MAX_STD),
        }

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        parts = [self.components(image) for image in images]
        details = {c: torch.tensor([p[c] for p in parts]) for c in self.COMPONENTS}
        total = sum(self.weights.values())
        scores = sum(w * details[c] for c, w in self.weights.items() if w > 0) / total
        return RewardOutput(scores=scores, details=details)
