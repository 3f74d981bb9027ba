"""PixelTargetReward against a float64 recomputation of its documented formulas."""

import numpy as np
import pytest
import torch

from rewards.pixel_target import PixelTargetReward


def test_components_and_weighted_score_match_the_formulas():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=gen)
    reward = PixelTargetReward(
        target_rgb=(0.9, 0.2, 0.2),
        target_brightness=0.4,
        target_contrast=0.2,
        weights={"colour": 2.0, "contrast": 1.0},
    )
    out = reward(images, ["p"] * 3)
    pixels = np.round(images.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255) / 255
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    colour = 1 - np.abs(pixels.mean(axis=(1, 2)) - [0.9, 0.2, 0.2]).mean(axis=1)
    brightness = 1 - np.abs(luma.mean(axis=(1, 2)) - 0.4)
    contrast = np.maximum(0, 1 - np.abs(luma.std(axis=(1, 2)) - 0.2) / 0.5)
    np.testing.assert_allclose(out.details["colour"], colour, rtol=1e-6)
    np.testing.assert_allclose(out.details["brightness"], brightness, rtol=1e-6)
    np.testing.assert_allclose(out.details["contrast"], contrast, rtol=1e-6)
    np.testing.assert_allclose(out.scores, (2 * colour + contrast) / 3, rtol=1e-6)


def test_the_target_itself_scores_one_and_bad_settings_are_refused():
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    assert float(PixelTargetReward(target_rgb=(1, 0, 0))(red, ["x"]).scores[0]) == 1.0
    with pytest.raises(ValueError, match="target_rgb"):
        PixelTargetReward(target_rgb=(2, 0, 0))
    with pytest.raises(ValueError, match="unknown weight names"):
        PixelTargetReward(weights={"colour": 1, "sharpness": 1})
