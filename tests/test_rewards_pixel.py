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


# --------------------------------------------------------------------------- the grid grammar

GRID_ROWS, GRID_COLS = ["top", "middle", "bottom"], ["left", "middle", "right"]
SIZE = 36  # thirds of 12 px


def _grid_in(region: str, y: int, x: int) -> bool:
    """Membership in a grid region, from thirds computed here (integer pixels of a 36 px image)."""
    row, col = y // 12, x // 12
    if region.endswith(" row"):
        return GRID_ROWS[row] == region[:-4]
    if region.endswith(" column"):
        return GRID_COLS[col] == region[:-7]
    name = region[: -len(" cell")]
    r, c = ("middle", "middle") if name == "middle" else name.split("-")
    return GRID_ROWS[row] == r and GRID_COLS[col] == c


def _grid_pixels(image: Image.Image, region: str) -> list[tuple[float, float, float]]:
    rows = _pixels(image)
    if region == "image":
        return [p for row in rows for p in row]
    return [p for y, row in enumerate(rows) for x, p in enumerate(row) if _grid_in(region, y, x)]


def expected_grid(statement: str, image: Image.Image) -> float:
    """Independent P(yes) for a grid-region statement of the canonical spelling."""
    s = statement.lower().rstrip(".")
    region = s[len("the ") : s.index(" of the image")]

    def channel_means(reg: str) -> list[float]:
        px = _grid_pixels(image, reg)
        return [_mean([p[c] for p in px]) for c in range(3)]

    def dominance(reg: str, colour: str) -> float:
        r, g, b = channel_means(reg)
        return {
            "red": r - max(g, b),
            "green": g - max(r, b),
            "blue": b - max(r, g),
            "yellow": min(r, g) - b,
            "cyan": min(g, b) - r,
            "magenta": min(r, b) - g,
        }[colour]

    def luma_values(reg: str) -> list[float]:
        return [_luma(p) for p in _grid_pixels(image, reg)]

    if " than the " in s:
        word = s.split(" of the image is ")[1].split()[0]
        other = s.split(" than the ")[1]
        if word == "brighter":
            diff = _mean(luma_values(region)) - _mean(luma_values(other))
        else:
            colour = {"redder": "red", "greener": "green", "bluer": "blue"}[word]
            diff = dominance(region, colour) - dominance(other, colour)
        return _sigmoid(diff / 0.05)
    last = s.split()[-1]
    if last in ("contrast", "saturation"):
        high = s.split()[-2] == "high"
        if last == "contrast":
            values = luma_values(region)
            mu = _mean(values)
            z = (math.sqrt(_mean([(v - mu) ** 2 for v in values])) - 0.2) / 0.05
        else:
            z = (_mean([max(p) - min(p) for p in _grid_pixels(image, region)]) - 0.3) / 0.08
        return _sigmoid(z if high else -z)
    if last in ("bright", "dark"):
        z = (_mean(luma_values(region)) - 0.5) / 0.08
        return _sigmoid(z if last == "bright" else -z)
    return _sigmoid((dominance(region, last) - 0.10) / 0.05)


def _grid_image() -> Image.Image:
    """Nine cells of different colours with pixel noise, so regions and channels all differ."""
    cells = RNG.uniform(0, 1, (3, 3, 3))
    arr = np.repeat(np.repeat(cells, 12, axis=0), 12, axis=1) + RNG.normal(0, 0.08, (36, 36, 3))
    return Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))


def test_grid_grammar_has_1104_distinct_statements_including_the_basic_45():
    grid = pixel_statements("grid")
    assert len(grid) == len(set(grid)) == 1104
    assert grid[:45] == pixel_statements("basic") == pixel_statements()
    assert all(PixelJudge.understands(s) for s in grid)
    with pytest.raises(ValueError, match="unknown pixel grammar"):
        pixel_statements("huge")


def test_grid_statements_match_independent_numbers():
    images = [_grid_image(), _grid_image()]
    grid = [
        s for s in pixel_statements("grid")[45:] if any(k in s for k in ("cell", "row", "column"))
    ]
    sample = [grid[i] for i in np.random.default_rng(1).choice(len(grid), 120, replace=False)]
    result = PixelJudge().yes_prob([JudgeItem(im, "", s) for im in images for s in sample])
    want = torch.tensor([expected_grid(s, im) for im in images for s in sample])
    torch.testing.assert_close(result.probs, want.float(), rtol=0, atol=2e-6)
    assert ((result.probs > 0.05) & (result.probs < 0.95)).sum() >= 10


def test_repeated_questions_about_one_image_reuse_its_statistics_and_agree():
    image, judge = _grid_image(), PixelJudge(remembered_images=2)
    question = "The top-left cell of the image is brighter than the middle cell."
    first = judge.yes_prob([JudgeItem(image, "", question)]).probs
    copy = Image.frombytes(image.mode, image.size, image.tobytes())  # same content, new object
    again = judge.yes_prob([JudgeItem(copy, "", question)]).probs
    assert first == again and len(judge._stats) == 1
    for _ in range(3):
        judge.yes_prob([JudgeItem(_grid_image(), "", question)])
    assert len(judge._stats) == 2  # only the last two images are remembered
