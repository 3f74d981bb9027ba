"""A deterministic judge for a compositional grammar of visual statements, measured from pixels.

The pixel judge stands in for a VLM in the offline demo, in tests and in the synthetic worlds of
rubric learning: it answers "is this statement true of the image?" with a probability computed
from a measured quantity, ``P(yes) = sigmoid((measure - threshold) / scale)``, so answers are
graded (a slightly red image is "somewhat" predominantly red), smooth and exactly reproducible.

Grammar (case-insensitive, a trailing period and extra spaces are ignored; ``color``/``colour``,
``centre``/``center``, ``mostly``/``predominantly`` and ``top-left``/``top left`` are
interchangeable). Regions:

- the halves ``top half``, ``bottom half``, ``left half``, ``right half``, ``center`` (the middle
  half of the height and of the width, a quarter of the area) and ``border`` (outside the center);
- the 3x3 grid (thirds of the height and width): rows ``top row``, ``middle row``, ``bottom row``,
  columns ``left column``, ``middle column``, ``right column`` and the nine cells ``top-left cell``,
  ``top-middle cell``, ``top-right cell``, ``middle-left cell``, ``middle cell``, ``middle-right
  cell``, ``bottom-left cell``, ``bottom-middle cell``, ``bottom-right cell``.

``<colour>`` is ``red``, ``green``, ``blue`` (dominance: that channel's mean minus the larger of the
other two) or ``yellow``, ``cyan``, ``magenta`` (the smaller mean of its two channels minus the
third). Luma is ITU-R BT.601 ``0.299 R + 0.587 G + 0.114 B``, values in ``[0, 1]``.

==================================================  ==================================  =====  =====
statement                                           measure                             thr.   scale
==================================================  ==================================  =====  =====
The image is predominantly <colour>.                colour dominance                    0.10   0.05
The image is bright. / The image is dark.           mean luma                           0.50   0.08
The image has high contrast. / ... low ...          standard deviation of luma          0.20   0.05
The image has high saturation. / ... low ...        mean of per-pixel max(RGB)-min(RGB) 0.30   0.08
The <region> of the image is <colour>.              colour dominance inside the region  0.10   0.05
The <region> of the image is bright. / dark.        mean luma inside the region         0.50   0.08
The <grid region> of the image has high/low         as for the image, inside the region as above
contrast. / ... high/low saturation.
The <A> of the image is brighter than the <B>.      mean luma(A) - mean luma(B)         0.00   0.05
The <A> of the image is redder/greener/bluer        dominance(A) - dominance(B) of that 0.00   0.05
than the <B>.                                       colour
==================================================  ==================================  =====  =====

Compared pairs (A, B): top half / bottom half, left half / right half, center / border, in
either order, and any two different grid regions (rows, columns, cells).

"low" and "dark" statements use the mirrored logistic ``sigmoid((threshold - measure) / scale)``,
so "bright" and "dark" (or "high" and "low") sum to 1 for every image.

:func:`pixel_statements` lists the canonical spellings: ``grammar="basic"`` the 45 statements
about the image, halves, center and border in red/green/blue (the first synthetic world), and
``grammar="grid"`` all 1,104 (the discovery world).

A question is looked up as a whole and, failing that, each double-quoted part of it (the default
judge template quotes the rubric), so the rubric-set templates work unchanged. A statement outside
the grammar gets NaN with the reason ``"unknown statement"``.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rewards.images import LUMA_WEIGHTS, image_hash, to_float_array
from rewards.judges.base import Judge, JudgeItem, JudgeResult

UNKNOWN_STATEMENT = "unknown statement"
GRAMMARS = ("basic", "grid")

COLOURS = ("red", "green", "blue")
SECONDARY_COLOURS = ("yellow", "cyan", "magenta")
REGIONS = ("top half", "bottom half", "left half", "right half", "center", "border")
COMPARED_REGIONS = (
    ("top half", "bottom half"),
    ("bottom half", "top half"),
    ("left half", "right half"),
    ("right half", "left half"),
    ("center", "border"),
    ("border", "center"),
)
GRID_ROWS = ("top", "middle", "bottom")
GRID_COLUMNS = ("left", "middle", "right")


def cell_name(row: str, column: str) -> str:
    """A grid cell's name, e.g. ``"top-left cell"``; the central one is ``"middle cell"``."""
    return "middle cell" if row == column == "middle" else f"{row}-{column} cell"


GRID_REGIONS = (
    *(f"{r} row" for r in GRID_ROWS),
    *(f"{c} column" for c in GRID_COLUMNS),
    *(cell_name(r, c) for r in GRID_ROWS for c in GRID_COLUMNS),
)
COMPARATIVES = {"brighter": None, "redder": "red", "greener": "green", "bluer": "blue"}


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


def _grid_span(name: str, names: Sequence[str], size: int) -> slice:
    """The third of ``size`` pixels that row or column ``name`` covers."""
    i = names.index(name)
    return slice(round(i * size / 3), round((i + 1) * size / 3))


Rect = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1


def region_rects(region: str, height: int, width: int) -> tuple[Rect, Rect | None]:
    """A named region as a rectangle, minus an optional inner rectangle (only ``border`` has
    one: the image minus the center)."""
    whole = (0, height, 0, width)
    half_h, half_w = height // 2, width // 2
    center = (height // 4, height - height // 4, width // 4, width - width // 4)
    fixed = {
        "image": whole,
        "top half": (0, half_h, 0, width),
        "bottom half": (height - half_h, height, 0, width),
        "left half": (0, height, 0, half_w),
        "right half": (0, height, width - half_w, width),
        "center": center,
    }
    if region in fixed:
        return fixed[region], None
    if region == "border":
        return whole, center
    if region.endswith(" row") and region[:-4] in GRID_ROWS:
        rows = _grid_span(region[:-4], GRID_ROWS, height)
        return (rows.start, rows.stop, 0, width), None
    if region.endswith(" column") and region[:-7] in GRID_COLUMNS:
        cols = _grid_span(region[:-7], GRID_COLUMNS, width)
        return (0, height, cols.start, cols.stop), None
    if region in GRID_REGIONS:  # a cell
        row, column = ("middle", "middle") if region == "middle cell" else region[:-5].split("-")
        rows, cols = _grid_span(row, GRID_ROWS, height), _grid_span(column, GRID_COLUMNS, width)
        return (rows.start, rows.stop, cols.start, cols.stop), None
    known = ", ".join(("image", *REGIONS, *GRID_REGIONS))
    raise ValueError(f"unknown region {region!r}; known: {known}")


@dataclass(frozen=True)
class RegionStats:
    """What every statement about one region of one image is computed from."""

    brightness: float  # mean luma
    contrast: float  # standard deviation of luma
    saturation: float  # mean of per-pixel max(RGB) - min(RGB)
    dominance: dict[str, float]  # colour -> dominance of that colour in the region's mean RGB

    @classmethod
    def of_sums(cls, sums: np.ndarray, count: int) -> RegionStats:
        """From the region's sums of R, G, B, luma, luma^2 and saturation over ``count`` pixels."""
        r, g, b, luma, luma_sq, saturation = (float(v) / count for v in sums)
        dominance = {
            "red": r - max(g, b),
            "green": g - max(r, b),
            "blue": b - max(r, g),
            "yellow": min(r, g) - b,
            "cyan": min(g, b) - r,
            "magenta": min(r, b) - g,
        }
        contrast = math.sqrt(max(luma_sq - luma * luma, 0.0))
        return cls(luma, contrast, saturation, dominance)


class ImageMeasures:
    """Pixel statistics of one image per region, computed once and shared by every question.

    Region sums come from a summed-area table of R, G, B, luma, luma^2 and saturation, so each
    region costs four look-ups whatever its size. ``stats`` may be a dict remembered from an
    earlier batch with the same image (the judge keeps them by content).
    """

    def __init__(self, image: Image.Image, stats: dict[str, RegionStats] | None = None) -> None:
        self.image = image
        self.stats = {} if stats is None else stats
        self._table: np.ndarray | None = None

    def _summed_area(self) -> np.ndarray:
        if self._table is None:
            rgb = to_float_array(self.image)
            luma = rgb @ LUMA_WEIGHTS
            saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
            planes = np.concatenate([rgb, np.stack([luma, luma**2, saturation], -1)], -1)
            table = np.zeros((planes.shape[0] + 1, planes.shape[1] + 1, planes.shape[2]))
            table[1:, 1:] = planes.cumsum(0).cumsum(1)
            self._table = table
        return self._table

    def _rect_sums(self, rect: Rect) -> tuple[np.ndarray, int]:
        y0, y1, x0, x1 = rect
        t = self._summed_area()
        return t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0], (y1 - y0) * (x1 - x0)

    def region(self, region: str = "image") -> RegionStats:
        if region not in self.stats:
            height, width = self.image.height, self.image.width
            rect, hole = region_rects(region, height, width)
            sums, count = self._rect_sums(rect)
            if hole is not None:
                hole_sums, hole_count = self._rect_sums(hole)
                sums, count = sums - hole_sums, count - hole_count
            self.stats[region] = RegionStats.of_sums(sums, count)
        return self.stats[region]


Rule = Callable[[ImageMeasures], float]
_COLOUR = "(?P<colour>red|green|blue|yellow|cyan|magenta)"
_CELL = "(?:top|middle|bottom)[- ](?:left|middle|right) cell|middle cell"
_GRID = f"(?:top|middle|bottom) row|(?:left|middle|right) column|{_CELL}"
_REGION = f"(?P<region>top half|bottom half|left half|right half|center|centre|border|{_GRID})"
_GRID_REGION = f"(?P<region>{_GRID})"


def _region(match: re.Match, key: str = "region") -> str:
    """The canonical name of the region in group ``key``; ``"image"`` when the pattern has none."""
    name = match.groupdict().get(key)
    if not name:
        return "image"
    if name.endswith(" cell"):  # "top left cell" -> "top-left cell"
        name = name[: -len(" cell")].replace(" ", "-") + " cell"
    return {"centre": "center", "middle-middle cell": "middle cell"}.get(name, name)


def _colour_rule(m: re.Match) -> Rule:
    region = _region(m)
    return lambda x: COLOUR_SCALE.prob(x.region(region).dominance[m["colour"]])


def _brightness_rule(m: re.Match) -> Rule:
    region = _region(m)
    dark = m["level"] == "dark"
    return lambda x: BRIGHTNESS_SCALE.prob(x.region(region).brightness, mirrored=dark)


def _contrast_rule(m: re.Match) -> Rule:
    region, low = _region(m), m["level"] == "low"
    return lambda x: CONTRAST_SCALE.prob(x.region(region).contrast, mirrored=low)


def _saturation_rule(m: re.Match) -> Rule:
    region, low = _region(m), m["level"] == "low"
    return lambda x: SATURATION_SCALE.prob(x.region(region).saturation, mirrored=low)


def _comparison_rule(m: re.Match) -> Rule | None:
    a, b = _region(m, "a"), _region(m, "b")
    if (a, b) not in COMPARED_REGIONS and not (a in GRID_REGIONS and b in GRID_REGIONS and a != b):
        return None
    colour = COMPARATIVES[m["comparative"]]
    if colour is None:
        return lambda x: COMPARISON_SCALE.prob(x.region(a).brightness - x.region(b).brightness)
    return lambda x: COMPARISON_SCALE.prob(
        x.region(a).dominance[colour] - x.region(b).dominance[colour]
    )


_R = _REGION.replace("region", "{}")
_SATURATION = "(?:colou?r )?saturation"
GRAMMAR: list[tuple[re.Pattern, Callable[[re.Match], Rule | None]]] = [
    (re.compile(rf"the image is (?:predominantly|mostly) {_COLOUR}"), _colour_rule),
    (re.compile(r"the image is (?P<level>bright|dark)"), _brightness_rule),
    (re.compile(r"the image has (?P<level>high|low) contrast"), _contrast_rule),
    (re.compile(rf"the image has (?P<level>high|low) {_SATURATION}"), _saturation_rule),
    (re.compile(rf"the {_REGION} of the image is {_COLOUR}"), _colour_rule),
    (re.compile(rf"the {_REGION} of the image is (?P<level>bright|dark)"), _brightness_rule),
    (
        re.compile(rf"the {_GRID_REGION} of the image has (?P<level>high|low) contrast"),
        _contrast_rule,
    ),
    (
        re.compile(rf"the {_GRID_REGION} of the image has (?P<level>high|low) {_SATURATION}"),
        _saturation_rule,
    ),
    (
        re.compile(
            rf"the {_R.format('a')} of the image is (?P<comparative>brighter|redder|greener|bluer)"
            rf" than the {_R.format('b')}"
        ),
        _comparison_rule,
    ),
]
"""(pattern, rule builder) pairs; a pattern must match the whole normalised statement."""


def pixel_statements(grammar: str = "basic") -> list[str]:
    """Every statement of a grammar in its canonical spelling (basic: 45, grid: 1,104)."""
    if grammar not in GRAMMARS:
        raise ValueError(f"unknown pixel grammar {grammar!r}; choose one of {GRAMMARS}")
    out = [f"The image is predominantly {c}." for c in COLOURS]
    out += ["The image is bright.", "The image is dark."]
    out += [f"The image has {lv} contrast." for lv in ("high", "low")]
    out += [f"The image has {lv} saturation." for lv in ("high", "low")]
    for region, word in itertools.product(REGIONS, (*COLOURS, "bright", "dark")):
        out.append(f"The {region} of the image is {word}.")
    out += [f"The {a} of the image is brighter than the {b}." for a, b in COMPARED_REGIONS]
    if grammar == "basic":
        return out
    out += [f"The image is predominantly {c}." for c in SECONDARY_COLOURS]
    out += [f"The {r} of the image is {c}." for r in REGIONS for c in SECONDARY_COLOURS]
    out += [
        f"The {a} of the image is {w} than the {b}."
        for a, b in COMPARED_REGIONS
        for w in list(COMPARATIVES)[1:]
    ]
    for region in GRID_REGIONS:
        out += [f"The {region} of the image is {c}." for c in (*COLOURS, *SECONDARY_COLOURS)]
        out += [f"The {region} of the image is {lv}." for lv in ("bright", "dark")]
        out += [f"The {region} of the image has {lv} contrast." for lv in ("high", "low")]
        out += [f"The {region} of the image has {lv} saturation." for lv in ("high", "low")]
    for a, b in itertools.permutations(GRID_REGIONS, 2):
        out += [f"The {a} of the image is {w} than the {b}." for w in COMPARATIVES]
    return out


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").strip().lower()


@functools.lru_cache(maxsize=65536)
def parse_statement(text: str) -> Rule | None:
    """The rule for ``text`` (the whole text or one of its double-quoted parts), or None.

    Memoised: a learning run asks the same few hundred questions of thousands of images.
    """
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

    def __init__(self, scoring: str = "normalized", remembered_images: int = 4096) -> None:
        self.scoring = scoring
        self.remembered_images = remembered_images
        self._stats: OrderedDict[str, dict[str, RegionStats]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def understands(text: str) -> bool:
        """Whether ``text`` (or a double-quoted part of it) is a statement of the grammar."""
        return parse_statement(text) is not None

    def _measures(self, image: Image.Image) -> ImageMeasures:
        """Measures of ``image`` with the region statistics of its last ``remembered_images``
        (by content) reused: rubric learning asks hundreds of questions about one image."""
        key = image_hash(image)
        with self._lock:
            stats = self._stats.pop(key, None)
            stats = {} if stats is None else stats
            self._stats[key] = stats
            while len(self._stats) > self.remembered_images:
                self._stats.popitem(last=False)
        return ImageMeasures(image, stats)

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
                measures[key] = self._measures(item.image)
            probs.append(rule(measures[key]))
            reasons.append(None)
        return JudgeResult(torch.tensor(probs, dtype=torch.float32), reasons)
