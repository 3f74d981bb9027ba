"""A synthetic world in which the right rubrics are known, to show that rubric learning learns.

**Images** (``image_size`` px, PNG bytes) are drawn procedurally with known visual attributes: four
quadrant colours, an optional centre square of its own colour, a global brightness factor and
pixel noise of random strength (contrast). Colours, brightness, contrast and regions are exactly
what the pixel judge's grammar talks about (:mod:`rewards.judges.pixel`).

**Preferences** come from a hidden weighted rule set, statements of that grammar: the utility of
an image is ``sum_k w_k P_pixel(yes | rule k)``, the image with the higher utility is preferred,
and each label is then flipped with probability ``noise``. The hidden set's own accuracy on the
(noisy) labels is the oracle that learning is compared with.

**The proposer** (:class:`SyntheticProposer`) stands in for the generative VLM. It answers the
synthesis, diagnosis and extraction requests from what it is shown -- the two images and which one
won -- by measuring every grammar statement on both images and naming those on which the winner
leads the most, plus a few random statements of the grammar (it is a noisy annotator). It never
reads the hidden rules: it behaves like a VLM that looks at the images, so it offers hidden rules
among many distractors, including rules suggested by mislabelled pairs.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from rewards.judges.base import Judge, JudgeError, JudgeItem, JudgeResult
from rewards.judges.pixel import PixelJudge, pixel_statements
from rubric_learning.dedup import statement_key
from rubric_learning.pairs import PreferencePair, Splits

COLOUR_WORDS = ("crimson", "teal", "amber", "violet", "olive", "navy", "coral", "jade")
SUBJECTS = ("abstract poster", "geometric tile", "flag design", "colour study", "stained glass")


def _to_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def draw_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """One procedural image ``[size, size, 3]`` uint8 with random colours, regions and contrast."""
    half, quarter = size // 2, size // 4
    canvas = np.empty((size, size, 3))
    for rows in (slice(0, half), slice(half, size)):
        for cols in (slice(0, half), slice(half, size)):
            canvas[rows, cols] = rng.uniform(0, 1, 3) ** 1.5
    if rng.random() < 0.7:
        canvas[quarter : size - quarter, quarter : size - quarter] = rng.uniform(0, 1, 3) ** 1.5
    canvas = canvas * rng.uniform(0.6, 1.4) + rng.normal(0, rng.uniform(0, 0.3), canvas.shape)
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)


def draw_grid_variants(
    rng: np.random.Generator, size: int, redraw: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two samples for one prompt: a shared 3x3 layout of random cell colours, in which each
    variant redraws every cell with probability ``redraw``, with its own brightness and noise."""
    base = rng.uniform(0, 1, (3, 3, 3)) ** 1.5
    bounds = [round(i * size / 3) for i in range(4)]
    out = []
    for _ in range(2):
        cells = np.where(rng.random((3, 3, 1)) < redraw, rng.uniform(0, 1, (3, 3, 3)) ** 1.5, base)
        canvas = np.empty((size, size, 3))
        for i, j in np.ndindex(3, 3):
            canvas[bounds[i] : bounds[i + 1], bounds[j] : bounds[j + 1]] = cells[i, j]
        canvas = canvas * rng.uniform(0.9, 1.1) + rng.normal(0, rng.uniform(0, 0.1), canvas.shape)
        out.append((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    return out[0], out[1]


def draw_pair(rng: np.random.Generator, layout: str, size: int, redraw: float) -> list[np.ndarray]:
    """The two images of one pair: independent quadrant images, or two variants of one grid."""
    if layout == "quadrants":
        return [draw_image(rng, size), draw_image(rng, size)]
    if layout == "grid":
        return list(draw_grid_variants(rng, size, redraw))
    raise ValueError(f"data.layout must be quadrants or grid, got {layout!r}")


def _prompt(rng: np.random.Generator) -> str:
    a, b = rng.choice(COLOUR_WORDS, size=2, replace=False)
    return f"a {rng.choice(SUBJECTS)} in {a} and {b}"


def check_rules(rules: Sequence[Mapping]) -> list[tuple[str, float]]:
    """The hidden rules as (text, weight); each must be a pixel-grammar statement."""
    out = []
    for i, rule in enumerate(rules):
        text, weight = rule.get("text"), rule.get("weight")
        if not isinstance(text, str) or not PixelJudge.understands(text):
            raise ValueError(f"hidden_rules[{i}]: {text!r} is not a statement of the pixel grammar")
        if not isinstance(weight, (int, float)) or weight <= 0:
            raise ValueError(f"hidden_rules[{i}]: weight must be a positive number, got {weight!r}")
        out.append((text, float(weight)))
    if not out:
        raise ValueError("the synthetic world needs at least one hidden rule")
    return out


def perceive(
    image: Image.Image, gamma: float = 1.0, gains: Sequence[float] | None = None
) -> Image.Image:
    """The image as an observer with its own eyes sees it: ``(rgb ** gamma) * gains`` per
    channel, clipped. ``gamma`` > 1 darkens mid-tones, ``gains`` tint; (1, None) is the image."""
    if gamma == 1.0 and gains is None:
        return image
    rgb = np.asarray(image.convert("RGB"), dtype=float) / 255.0
    rgb = rgb**gamma * np.asarray(gains if gains is not None else (1.0, 1.0, 1.0))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))


def utilities(
    images: Sequence[Image.Image],
    rules: Sequence[tuple[str, float]],
    gamma: float = 1.0,
    gains: Sequence[float] | None = None,
) -> np.ndarray:
    """Hidden utility ``sum_k w_k P(yes | rule k)`` of each image under the pixel judge, the
    image seen through :func:`perceive` (``gamma``, ``gains``: the people's own eyes)."""
    judge = PixelJudge()
    images = [perceive(im, gamma, gains) for im in images]
    items = [JudgeItem(im, "", text) for im in images for text, _ in rules]
    probs = judge.yes_prob(items).probs.double().numpy().reshape(len(images), len(rules))
    return probs @ np.array([w for _, w in rules])


def build_world(
    hidden_rules: Sequence[Mapping],
    num_train: int = 256,
    num_val: int = 128,
    num_test: int = 256,
    noise: float = 0.1,
    min_gap: float = 0.0,
    image_size: int = 32,
    seed: int = 0,
    layout: str = "quadrants",
    redraw: float = 0.35,
    bt_scale: float | None = None,
    human_gamma: float = 1.0,
    human_gains: Sequence[float] | None = None,
    taste_sd: float = 0.0,
) -> Splits:
    """Draw the world's train/validation/test pairs, labelled by the hidden rules plus noise.

    ``layout="quadrants"``: two independent images of four random quadrants (the first world);
    ``"grid"``: two variants of one random 3x3 layout, each cell redrawn with probability
    ``redraw`` (the discovery world: like two samples for one prompt, they differ in a few
    places). Pairs whose hidden utilities differ by less than ``min_gap`` are redrawn: like
    people shown two near-identical images, the hidden rules have no preference between them.

    Labels: the image with the higher utility wins, then each label flips with probability
    ``noise``; or, with ``bt_scale`` set, A wins with probability ``sigmoid(bt_scale * (u_A -
    u_B))`` (Bradley-Terry, the refiner's own model, so the hidden set is the true model and a
    proxy statement gains nothing from the labels' shape; ``noise`` is then unused).

    The people who label need not see what the judge measures (the realistic world,
    ``experiment=synthetic_open``): ``human_gamma``/``human_gains`` are their eyes
    (:func:`perceive`: the hidden rules are applied to the image as they see it), and
    ``taste_sd`` adds to each image's utility a term of its own, drawn once, that no statement
    describes. Defaults (1, None, 0) give the pixel judge's own utility.
    """
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"data.noise is a label flip probability in [0, 0.5), got {noise}")
    rules = check_rules(hidden_rules)
    rng = np.random.default_rng(seed)
    total = num_train + num_val + num_test
    arrays, utility = [], []
    while len(utility) < total:
        drawn = [
            image
            for _ in range(total - len(utility))
            for image in draw_pair(rng, layout, image_size, redraw)
        ]
        images = [Image.fromarray(a) for a in drawn]
        gaps = utilities(images, rules, human_gamma, human_gains)
        if taste_sd:
            gaps = gaps + rng.normal(0.0, taste_sd, len(gaps))
        gaps = gaps.reshape(-1, 2)
        for k in np.flatnonzero(np.abs(gaps[:, 0] - gaps[:, 1]) >= min_gap):
            arrays += drawn[2 * k : 2 * k + 2]
            utility.append(gaps[k])
    utility = np.array(utility[:total])
    arrays = arrays[: 2 * total]
    a_wins = utility[:, 0] > utility[:, 1]
    if bt_scale is None:
        flipped = rng.random(total) < noise
    else:
        p_a = 1.0 / (1.0 + np.exp(-bt_scale * (utility[:, 0] - utility[:, 1])))
        flipped = (rng.random(total) < p_a) != a_wins
    pairs = [
        PreferencePair(
            id=f"synthetic-{i:05d}",
            prompt=_prompt(rng),
            image_a=_to_png(arrays[2 * i]),
            image_b=_to_png(arrays[2 * i + 1]),
            label=float(a_wins[i] != flipped[i]),
            source="synthetic",
            metadata={"flipped": bool(flipped[i]), "utility": utility[i].tolist()},
        )
        for i in range(total)
    ]
    return Splits(
        pairs[:num_train], pairs[num_train : num_train + num_val], pairs[num_train + num_val :]
    )


class SyntheticProposer(Judge):
    """A generative judge for the synthetic world: proposes grammar statements from the images.

    For a request about two images it reads which image won (``image 1``/``image 2`` in the
    request) and the statements already listed (lines starting with ``- ``), measures every
    grammar statement on both images, and proposes the ``rules_per_answer`` new statements with
    the largest lead of the winner (at least ``min_lead``), plus ``random_per_answer`` random new
    statements. Requests that ask for a JSON list get one inside a short explanation; others
    (the failure diagnosis) get prose naming the dimensions. Answers are deterministic per
    request and ``seed``.
    """

    name = "synthetic-proposer"

    def __init__(
        self,
        grammar: str = "basic",
        rules_per_answer: int = 2,
        random_per_answer: int = 1,
        min_lead: float = 0.3,
        comparison_penalty: float = 0.0,
        tie_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.rules_per_answer = rules_per_answer
        self.random_per_answer = random_per_answer
        self.min_lead = min_lead
        self.comparison_penalty = comparison_penalty
        self.tie_jitter = tie_jitter
        self.seed = seed
        self.statements = pixel_statements(grammar)
        self.pixel = PixelJudge()

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        raise JudgeError("SyntheticProposer only generates text; score rubrics with judge=pixel")

    def _winner(self, text: str) -> int:
        match = re.search(r"preferred image ([12])", text)
        if match is None:
            raise JudgeError("SyntheticProposer: the request does not say which image won")
        return int(match[1]) - 1

    def propose(self, images: Sequence[Image.Image], text: str) -> list[str]:
        """The statements this proposer offers for one request."""
        winner = self._winner(text)
        listed = {statement_key(line[2:]) for line in text.splitlines() if line.startswith("- ")}
        fresh = [s for s in self.statements if statement_key(s) not in listed]
        items = [JudgeItem(im, "", s) for im in images[:2] for s in fresh]
        probs = self.pixel.yes_prob(items).probs.double().numpy().reshape(2, len(fresh))
        lead = probs[winner] - probs[1 - winner]
        digest = zlib.crc32(text.encode() + images[0].tobytes() + images[1].tobytes())
        rng = np.random.default_rng([self.seed, digest])
        is_comparison = np.array([" than the " in s for s in fresh])
        salience = lead - self.comparison_penalty * is_comparison
        if self.tie_jitter:  # near-equal leads in random order, not the grammar's
            salience = salience + rng.uniform(0, self.tie_jitter, len(fresh))
        order = np.argsort(-salience, kind="stable")
        chosen = [fresh[i] for i in order[: self.rules_per_answer] if lead[i] >= self.min_lead]
        others = [s for s in fresh if s not in chosen]
        size = min(self.random_per_answer, len(others))
        picks = rng.choice(len(others), size=size, replace=False)
        return chosen + [others[i] for i in picks]

    def generate(self, images: Sequence[Image.Image], text: str, max_new_tokens: int = 512) -> str:
        statements = self.propose(images, text)
        if "JSON list" not in text:
            return "The rubric misses these dimensions: " + " ".join(statements)
        return (
            "The preferred image differs visibly in colour, brightness and contrast.\n"
            f"```json\n{json.dumps(statements)}\n```"
        )
