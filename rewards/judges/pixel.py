"""A deterministic judge for a small grammar of visual statements, measured from the pixels.

The pixel judge stands in for a VLM in the offline demo, in tests and in the synthetic world of
rubric learning: it answers "is this statement true of the image?" with a probability computed
from a measured quantity, ``P(yes) = sigmoid((measure - threshold) / scale)``, so answers are
graded (a slightly red image is "somewhat" predominantly red), smooth and exactly reproducible.

Grammar (case-insensitive, a trailing period and extra spaces are ignored; ``color``/``colour``
and ``mostly``/``predominantly`` are interchangeable). ``<region>`` is one of ``top half``,
``bottom half``, ``left half``, ``right half``, ``center`` (the middle half of the height and of
the width, a quarter of the area) or ``border`` (everything outside the center); ``<colour>`` is
``red``, ``green`` or ``blue``. Luma is ITU-R BT.601 ``0.299 R + 0.587 G + 0.114 B``, values in
``[0, 1]``.

==============================================  ======================================  =====  =====
statement                                       measure                                 thr.   scale
==============================================  ======================================  =====  =====
The image is predominantly <colour>.            mean(c) - max(other channels' means)    0.10   0.05
The image is bright. / The image is dark.       mean luma                               0.50   0.08
The image has high contrast. / ... low ...      standard deviation of luma              0.20   0.05
The image has high saturation. / ... low ...    mean of per-pixel max(RGB) - min(RGB)   0.30   0.08
The <region> of the image is <colour>.          colour dominance inside the region      0.10   0.05
The <region> of the image is bright. / dark.    mean luma inside the region             0.50   0.08
The <A> of the image is brighter than the <B>.  mean luma(A) - mean luma(B)             0.00   0.05
==============================================  ======================================  =====  =====

Compared pairs (A, B): top half / bottom half, left half / right half, center / border, in
either order.

"low" and "dark" statements use the mirrored logistic ``sigmoid((threshold - measure) / scale)``,
so "bright" and "dark" (or "high" and "low") sum to 1 for every image.

A question is looked up as a whole and, failing that, each double-quoted part of it (the default
judge template quotes the rubric), so the rubric-set templates work unchanged. A statement outside
the grammar gets NaN with the reason ``"unknown statement"``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rewards.images import LUMA_WEIGHTS, to_float_array
from rewards.judges.base import Judge, JudgeItem, JudgeResult

UNKNOWN_STATEMENT = "unknown statement"

COLOURS = ("red", "green", "blue")
REGIONS = ("top half", "bottom half", "left half", "right half", "center", "border")
COMPARED_REGIONS = (
    ("top half", "bottom half"),
    ("bottom half", "top half"),
    ("left half", "right half"),
    ("right half", "left half"),
    ("center", "border"),
    ("border", "center"),
)


@dataclass(frozen=True)
class Scale:
    """The logistic turning a measure into P(yes): ``sigmoid(+-(m - threshold) / scale)``."""

    threshold: float
    scale: float

    def prob(self, measure: float, mirrored: bool = False) -> float:
        z = (measure - self.threshold) / self.scale
        return 1.0 / (1.0 + math.exp(z if mirrored else -z))


COLOUR_SCALE = Scale(0.10, 0.05)
BRIGHTNESS_SCALE = Scale(0.50, 0.08)
CONTRAST_SCALE = Scale(0.20, 0.05)
SATURATION_SCALE = Scale(0.30, 0.08)
COMPARISON_SCALE = Scale(0.00, 0.05)


def region_mask(region: str, height: int, width: int) -> np.ndarray:
    """Boolean ``[H, W]`` mask of a named region (see the module docstring)."""
    mask = np.zeros((height, width), dtype=bool)
    if region == "image":
        mask[:] = True
    elif region == "top half":
        mask[: height // 2] = True
    elif region == "bottom half":
        mask[height - height // 2 :] = True
    elif region == "left half":
        mask[:, : width // 2] = True
    elif region == "right half":
        mask[:, width - width // 2 :] = True
    elif region in ("center", "border"):
        mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = True
        if region == "border":
            mask = ~mask
    else:
        raise ValueError(f"unknown region {region!r}; known: image, {', '.join(REGIONS)}")
    return mask


class ImageMeasures:
    """Lazily computed pixel statistics of one image, shared by every question about it."""

    def __init__(self, image: Image.Image) -> None:
        self.rgb = to_float_array(image)
        self.luma = self.rgb @ LUMA_WEIGHTS
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, region: str) -> np.ndarray:
        if region not in self._masks:
            self._masks[region] = region_mask(region, *self.luma.shape)
        return self._masks[region]

    def colour_dominance(self, colour: str, region: str = "image") -> float:
        means = self.rgb[self.mask(region)].mean(axis=0)
        c = COLOURS.index(colour)
        return float(means[c] - np.delete(means, c).max())

    def brightness(self, region: str = "image") -> float:
        return float(self.luma[self.mask(region)].mean())

    def contrast(self) -> float:
        return float(self.luma.std())

    def saturation(self) -> float:
        return float((self.rgb.max(axis=-1) - self.rgb.min(axis=-1)).mean())


Rule = Callable[[ImageMeasures], float]
_COLOUR = "(?P<colour>red|green|blue)"
_REGION = "(?P<region>top half|bottom half|left half|right half|center|centre|border)"


def _region(match: re.Match, key: str = "region") -> str:
    """The region named by group ``key``; ``"image"`` when the pattern names none."""
    name = match.groupdict().get(key)
    if not name:
        return "image"
    return "center" if name == "centre" else name


def _colour_rule(m: re.Match) -> Rule:
    region = _region(m)
    return lambda x: COLOUR_SCALE.prob(x.colour_dominance(m["colour"], region))


def _brightness_rule(m: re.Match) -> Rule:
    region = _region(m)
    dark = m["level"] == "dark"
    return lambda x: BRIGHTNESS_SCALE.prob(x.brightness(region), mirrored=dark)


def _contrast_rule(m: re.Match) -> Rule:
    low = m["level"] == "low"
    return lambda x: CONTRAST_SCALE.prob(x.contrast(), mirrored=low)


def _saturation_rule(m: re.Match) -> Rule:
    low = m["level"] == "low"
    return lambda x: SATURATION_SCALE.prob(x.saturation(), mirrored=low)


def _comparison_rule(m: re.Match) -> Rule | None:
    a, b = _region(m, "a"), _region(m, "b")
    if (a, b) not in COMPARED_REGIONS:
        return None
    return lambda x: COMPARISON_SCALE.prob(x.brightness(a) - x.brightness(b))


_R = _REGION.replace("region", "{}")
GRAMMAR: list[tuple[re.Pattern, Callable[[re.Match], Rule | None]]] = [
    (re.compile(rf"the image is (?:predominantly|mostly) {_COLOUR}"), _colour_rule),
    (re.compile(r"the image is (?P<level>bright|dark)"), _brightness_rule),
    (re.compile(r"the image has (?P<level>high|low) contrast"), _contrast_rule),
    (re.compile(r"the image has (?P<level>high|low) (?:colou?r )?saturation"), _saturation_rule),
    (re.compile(rf"the {_REGION} of the image is {_COLOUR}"), _colour_rule),
    (re.compile(rf"the {_REGION} of the image is (?P<level>bright|dark)"), _brightness_rule),
    (
        re.compile(rf"the {_R.format('a')} of the image is brighter than the {_R.format('b')}"),
        _comparison_rule,
    ),
]
"""(pattern, rule builder) pairs; a pattern must match the whole normalised statement."""


def pixel_statements() -> list[str]:
    """Every statement of the grammar in its canonical spelling (45 statements)."""
    out = [f"The image is predominantly {c}." for c in COLOURS]
    out += ["The image is bright.", "The image is dark."]
    out += [f"The image has {lv} contrast." for lv in ("high", "low")]
    out += [f"The image has {lv} saturation." for lv in ("high", "low")]
    for region, word in itertools.product(REGIONS, (*COLOURS, "bright", "dark")):
        out.append(f"The {region} of the image is {word}.")
    out += [f"The {a} of the image is brighter than the {b}." for a, b in COMPARED_REGIONS]
    return out


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").strip().lower()


def parse_statement(text: str) -> Rule | None:
    """The rule for ``text`` (the whole text or one of its double-quoted parts), or None."""
    candidates = [text, *re.findall(r'"([^"]*)"', text)]
    for candidate in candidates:
        statement = _normalise(candidate)
        for pattern, build in GRAMMAR:
            match = pattern.fullmatch(statement)
            if match:
                rule = build(match)
                if rule is not None:
                    return rule
    return None


class PixelJudge(Judge):
    """Answers grammar statements from pixel statistics; see the module docstring for the table.

    ``scoring`` is accepted for interface parity with the VLM judges and has no effect: the
    probabilities are already normalised (``P(yes) + P(no) = 1``).
    """

    name = "pixel"

    def __init__(self, scoring: str = "normalized") -> None:
        self.scoring = scoring

    @staticmethod
    def understands(text: str) -> bool:
        """Whether ``text`` (or a double-quoted part of it) is a statement of the grammar."""
        return parse_statement(text) is not None

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        measures: dict[int, ImageMeasures] = {}
        probs, reasons = [], []
        for item in items:
            rule = parse_statement(item.question)
            if rule is None:
                probs.append(float("nan"))
                reasons.append(UNKNOWN_STATEMENT)
                continue
            key = id(item.image)
            if key not in measures:
                measures[key] = ImageMeasures(item.image)
            probs.append(rule(measures[key]))
            reasons.append(None)
        return JudgeResult(torch.tensor(probs, dtype=torch.float32), reasons)
