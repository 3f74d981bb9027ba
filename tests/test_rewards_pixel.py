"""PixelJudge: every grammar rule checked on synthetic images against numbers computed here.

The expected probabilities are recomputed in this file with plain Python loops over the pixels
(float64, no numpy reductions shared with the judge), so a wrong region, channel or scale fails.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.judges.base import JudgeItem
from rewards.judges.pixel import UNKNOWN_STATEMENT, PixelJudge, pixel_statements

RNG = np.random.default_rng(0)
H, W = 24, 32


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _pixels(image: Image.Image) -> list[list[tuple[float, float, float]]]:
    """Rows of (r, g, b) floats in [0, 1], read pixel by pixel."""
    width, height = image.size
    return [
        [tuple(v / 255.0 for v in image.getpixel((x, y))) for x in range(width)]
        for y in range(height)
    ]


def _in_region(region: str, y: int, x: int) -> bool:
    in_center = H // 4 <= y < H - H // 4 and W // 4 <= x < W - W // 4
    return {
        "image": True,
        "top half": y < H / 2,
        "bottom half": y >= H / 2,
        "left half": x < W / 2,
        "right half": x >= W / 2,
        "center": in_center,
        "border": not in_center,
    }[region]


def _region_pixels(image: Image.Image, region: str) -> list[tuple[float, float, float]]:
    rows = _pixels(image)
    return [p for y, row in enumerate(rows) for x, p in enumerate(row) if _in_region(region, y, x)]


def _luma(p: tuple[float, float, float]) -> float:
    return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def expected(statement: str, image: Image.Image) -> float:
    """Independent P(yes) for a canonical statement."""
    s = statement.lower().rstrip(".")
    words = s.split()
    colours = ["red", "green", "blue"]

    def dominance(region: str, colour: str) -> float:
        px = _region_pixels(image, region)
        means = [_mean([p[c] for p in px]) for c in range(3)]
        c = colours.index(colour)
        return means[c] - max(m for i, m in enumerate(means) if i != c)

    def brightness(region: str) -> float:
        return _mean([_luma(p) for p in _region_pixels(image, region)])

    if s.startswith("the image is predominantly"):
        return _sigmoid((dominance("image", words[-1]) - 0.10) / 0.05)
    if s in ("the image is bright", "the image is dark"):
        z = (brightness("image") - 0.5) / 0.08
        return _sigmoid(z if words[-1] == "bright" else -z)
    if s.endswith("contrast"):
        lumas = [_luma(p) for p in _region_pixels(image, "image")]
        mu = _mean(lumas)
        std = math.sqrt(_mean([(v - mu) ** 2 for v in lumas]))
        z = (std - 0.2) / 0.05
        return _sigmoid(z if words[-2] == "high" else -z)
    if s.endswith("saturation"):
        sat = _mean([max(p) - min(p) for p in _region_pixels(image, "image")])
        z = (sat - 0.3) / 0.08
        return _sigmoid(z if words[-2] == "high" else -z)
    region = s[len("the ") : s.index(" of the image")]
    if " brighter than the " in s:
        other = s.split(" brighter than the ")[1]
        return _sigmoid((brightness(region) - brightness(other)) / 0.05)
    if words[-1] in colours:
        return _sigmoid((dominance(region, words[-1]) - 0.10) / 0.05)
    z = (brightness(region) - 0.5) / 0.08
    return _sigmoid(z if words[-1] == "bright" else -z)


def _images() -> list[Image.Image]:
    """A few images whose statistics land near and far from every threshold."""
    noise = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    reddish = np.clip(RNG.normal([150, 110, 100], 20, (H, W, 3)), 0, 255).astype(np.uint8)
    split = np.zeros((H, W, 3), np.uint8)
    split[: H // 2] = [30, 40, 200]
    split[H // 2 :] = [220, 210, 60]
    framed = np.full((H, W, 3), [20, 160, 30], np.uint8)
    framed[H // 4 : H - H // 4, W // 4 : W - W // 4] = [240, 240, 240]
    greyish = np.clip(RNG.normal(128, 6, (H, W, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    return [Image.fromarray(a) for a in (noise, reddish, split, framed, greyish)]


def test_every_statement_matches_independent_numbers():
    judge = PixelJudge()
    images = _images()
    statements = pixel_statements()
    items = [JudgeItem(im, "a prompt", s) for im in images for s in statements]
    result = judge.yes_prob(items)
    assert result.probs.dtype == torch.float32 and result.failures == {}
    want = torch.tensor([expected(s, im) for im in images for s in statements])
    torch.testing.assert_close(result.probs, want.float(), rtol=0, atol=2e-6)
    # graded answers, not just 0/1: some probabilities land well inside (0.05, 0.95)
    assert ((result.probs > 0.05) & (result.probs < 0.95)).sum() >= 10


def test_known_images_answer_the_obvious_way():
    split, framed = _images()[2:4]
    judge = PixelJudge()
    questions = {
        "The top half of the image is blue.": True,
        "The bottom half of the image is blue.": False,
        "The bottom half of the image is brighter than the top half.": True,
        "The center of the image is brighter than the border.": True,
        "The border of the image is green.": True,
    }
    image_for = {q: split if "half" in q else framed for q in questions}
    probs = judge.yes_prob([JudgeItem(image_for[q], "", q) for q in questions]).probs
    for p, (q, truth) in zip(probs.tolist(), questions.items()):
        assert (p > 0.9) if truth else (p < 0.1), (q, p)


def test_opposite_statements_sum_to_one():
    image = _images()[1]
    pairs = [
        ("The image is bright.", "The image is dark."),
        ("The image has high contrast.", "The image has low contrast."),
        (
            "The left half of the image is brighter than the right half.",
            "The right half of the image is brighter than the left half.",
        ),
    ]
    judge = PixelJudge()
    for a, b in pairs:
        pa, pb = judge.yes_prob([JudgeItem(image, "", a), JudgeItem(image, "", b)]).probs.tolist()
        assert pa + pb == pytest.approx(1.0, abs=1e-6)


def test_question_template_spelling_variants_and_unknown_statements():
    image = _images()[1]
    template = 'Does the image satisfy the following rule? Rule: "{}" Answer with yes or no.'
    known = [
        template.format("The image is predominantly red."),
        "the image is MOSTLY   red",
        "The centre of the image is bright!",
        "The image has high colour saturation.",
    ]
    unknown = [
        "The image contains a cat.",
        template.format("The top half of the image is brighter than the left half."),
        "The image is predominantly purple.",
        "",
    ]
    assert all(PixelJudge.understands(q) for q in known)
    assert not any(PixelJudge.understands(q) for q in unknown)
    result = PixelJudge().yes_prob([JudgeItem(image, "", q) for q in known + unknown])
    assert not torch.isnan(result.probs[: len(known)]).any()
    assert torch.isnan(result.probs[len(known) :]).all()
    assert result.failures == {UNKNOWN_STATEMENT: len(unknown)}
    canonical = PixelJudge().yes_prob([JudgeItem(image, "", "The image is predominantly red.")])
    assert result.probs[0] == canonical.probs[0] == result.probs[1]


def test_statement_list_is_unique_and_understood():
    statements = pixel_statements()
    assert len(statements) == len(set(statements)) == 45
    assert all(PixelJudge.understands(s) for s in statements)
