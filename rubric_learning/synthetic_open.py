"""The realistic synthetic world (``experiment=synthetic_open``): a writer and a judge that behave
more like VLMs than the pixel grammar does, around the same known hidden rules.

What the discovery world gives the learner for free, and what this world takes away:

- **Spelling.** :class:`OpenProposer` names a grammar statement in one of its
  :func:`surface_forms` (``"The upper-left square is reddish."`` for ``"The top-left cell of the
  image is red."``): the canonical spelling only at ``canonical_rate``. Some forms share the
  canonical one's dedup key (``picture``/``image``, ``appears``), most do not, so one rule can
  enter the working set several times and spend the judge budget twice.
- **Statements outside the grammar** (:data:`OFF_GRAMMAR`: composition, mood, style), about
  ``off_grammar_per_answer`` per answer; :class:`OpenWorldJudge` answers them with scores that
  carry no information about the preference.
- **Repeats.** Each statement slot repeats one of the listed ("do not repeat") statements with
  probability ``repeat_rate``, in a spelling of its choice.
- **Its own ranking.** The writer ranks statements by the lead it perceives: the pixel
  measures of the images as *it* sees them (:func:`~rubric_learning.synthetic.perceive` with
  ``view_gamma``/``view_gains``), plus Gaussian noise of ``rank_noise``; not the judge's scores.
- **The judge** (:class:`OpenWorldJudge`) reads every surface form as its statement (a VLM
  understands paraphrases), then adds a calibration error (``temperature``, ``bias`` on the
  logit) and per-(image, rubric text) logit noise ``noise``, fixed per item so a cache stays
  exact. It is not the labeller: the labels come from the people's utility
  (:func:`~rubric_learning.synthetic.build_world` with ``human_gamma``/``human_gains``/
  ``taste_sd``).

The writer never reads the hidden rules; :meth:`OpenWorldJudge.canonical` lets the run count
hidden rules found and kept whatever their spelling.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from rewards.images import image_hash
from rewards.judges.base import Judge, JudgeItem, JudgeResult
from rewards.judges.pixel import GRAMMARS, PixelJudge, pixel_statements
from rubric_learning.dedup import statement_key
from rubric_learning.synthetic import COLOUR_WORDS, SyntheticProposer, perceive

_ROW = {"top": ("top", "upper"), "middle": ("middle", "central"), "bottom": ("bottom", "lower")}
REGION_ALIASES: dict[str, tuple[str, ...]] = {
    "top half": ("top half", "upper half"),
    "bottom half": ("bottom half", "lower half"),
    "left half": ("left half", "left side"),
    "right half": ("right half", "right side"),
    "center": ("center", "centre", "middle area"),
    "border": ("border", "edges"),
    "top row": ("top row", "upper band"),
    "middle row": ("middle row", "central band"),
    "bottom row": ("bottom row", "lower band"),
    "left column": ("left column", "left strip"),
    "middle column": ("middle column", "central strip"),
    "right column": ("right column", "right strip"),
    "middle cell": ("middle cell", "central square"),
    **{
        f"{r}-{c} cell": (f"{r}-{c} cell", f"{r} {c} cell", f"{_ROW[r][1]}-{c} square")
        for r in _ROW
        for c in ("left", "middle", "right")
        if (r, c) != ("middle", "middle")
    },
}
"""How a writer names each region: the grammar's name first."""
WORD_ALIASES: dict[str, tuple[str, ...]] = {
    "red": ("red", "reddish"),
    "green": ("green", "greenish"),
    "blue": ("blue", "bluish"),
    "yellow": ("yellow", "yellowish"),
    "cyan": ("cyan", "turquoise"),
    "magenta": ("magenta", "purplish pink"),
    "bright": ("bright", "light", "brightly lit"),
    "dark": ("dark", "dim", "dimly lit"),
    "high contrast": ("high contrast", "strong contrast"),
    "low contrast": ("low contrast", "weak contrast", "flat contrast"),
    "high saturation": ("high saturation", "high colour saturation", "vivid colours"),
    "low saturation": ("low saturation", "low colour saturation", "muted colours"),
    "brighter": ("brighter", "lighter"),
    "redder": ("redder", "more red"),
    "greener": ("greener", "more green"),
    "bluer": ("bluer", "more blue"),
}
"""How a writer names each attribute: the grammar's word first."""
FRAMES: dict[str, tuple[str, ...]] = {
    "image_colour": (
        "The image is predominantly {w}.",
        "The image is mostly {w}.",
        "Most of the image is {w}.",
        "The picture is mainly {w}.",
    ),
    "image_is": ("The image is {w}.", "The picture looks {w}.", "The whole image is {w}."),
    "image_has": ("The image has {w}.", "The picture shows {w}.", "Overall the image has {w}."),
    "region_is": (
        "The {r} of the image is {w}.",
        "The {r} of the picture is {w}.",
        "The {r} of the image appears {w}.",
        "The {r} is {w}.",
        "In the image, the {r} is {w}.",
    ),
    "region_has": (
        "The {r} of the image has {w}.",
        "The {r} of the picture shows {w}.",
        "The {r} has {w}.",
    ),
    "comparison": (
        "The {r} of the image is {w} than the {b}.",
        "The {r} is {w} than the {b}.",
        "In the picture, the {r} is {w} than the {b}.",
    ),
}
"""Sentence frames per statement shape: the grammar's own first."""
_SHAPES = [
    ("image_colour", re.compile(r"The image is predominantly (?P<w>\w+)\.")),
    ("image_is", re.compile(r"The image is (?P<w>bright|dark)\.")),
    ("image_has", re.compile(r"The image has (?P<w>(?:high|low) \w+)\.")),
    ("comparison", re.compile(r"The (?P<r>.+) of the image is (?P<w>\w+) than the (?P<b>.+)\.")),
    ("region_has", re.compile(r"The (?P<r>.+) of the image has (?P<w>(?:high|low) \w+)\.")),
    ("region_is", re.compile(r"The (?P<r>.+) of the image is (?P<w>[\w ]+)\.")),
]

OFF_GRAMMAR: tuple[str, ...] = (
    "The composition is balanced.",
    "The colours are harmonious.",
    "The image looks professional.",
    "The layout feels symmetrical.",
    "The image has a pleasing colour palette.",
    "The shapes are cleanly separated.",
    "The image matches the prompt.",
    "The image has a calm mood.",
    "The image looks modern.",
    "The edges between the cells are sharp.",
    "The image has no visual clutter.",
    "The colour transitions are smooth.",
    "The image draws the eye to the middle.",
    "The design looks intentional.",
    "The pattern is visually interesting.",
    "The image has a clear visual hierarchy.",
    "The colours complement each other.",
    "The image feels warm.",
    "The image feels cool.",
    "The image looks vibrant.",
    "The image looks cohesive.",
    "The image has a clear focal point.",
    "The image has an artistic style.",
    "The grid lines are well aligned.",
    "The image has rich detail.",
    "The image is aesthetically pleasing.",
    "The lighting looks natural.",
    "The image has a sense of depth.",
    "The image avoids garish colours.",
    "The colour scheme follows the prompt.",
    *(f"The {word} tones are prominent." for word in COLOUR_WORDS),
    *(f"The image uses {word} well." for word in COLOUR_WORDS),
)
"""Statements a VLM writer offers that no grammar statement means: holistic qualities, mood,
style, fidelity to the prompt's colour words. The judge's answers to them are uninformative."""


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!").strip().lower()


def surface_forms(statement: str) -> list[str]:
    """Every spelling of a grammar statement a writer may use, the statement itself first."""
    for shape, pattern in _SHAPES:
        match = pattern.fullmatch(statement)
        if match is None:
            continue
        parts = match.groupdict()
        words = WORD_ALIASES.get(parts["w"], (parts["w"],))
        regions = REGION_ALIASES.get(parts.get("r") or "", (parts.get("r"),))
        others = REGION_ALIASES.get(parts.get("b") or "", (parts.get("b"),))
        forms = [
            frame.format(r=r, w=w, b=b)
            for frame in FRAMES[shape]
            for r in regions
            for w in words
            for b in others
        ]
        return list(dict.fromkeys([statement, *forms]))
    raise ValueError(f"no surface forms for {statement!r}: not a canonical grammar statement")


@functools.lru_cache(maxsize=4)
def lexicon(grammar: str) -> dict[str, str]:
    """Normalised surface form -> grammar statement, for every statement of ``grammar``.

    A form two statements could share would be ambiguous; none does (``tests``), and such a
    form would be left out rather than read as either.
    """
    if grammar not in GRAMMARS:
        raise ValueError(f"unknown pixel grammar {grammar!r}; choose one of {GRAMMARS}")
    table: dict[str, str] = {}
    ambiguous: set[str] = set()
    for statement in pixel_statements(grammar):
        for form in surface_forms(statement):
            key = _normalise(form)
            if table.get(key, statement) != statement:
                ambiguous.add(key)
            table[key] = statement
    for key in ambiguous:
        del table[key]
    return table


def _uniforms(*parts: object) -> tuple[float, float]:
    """Two numbers in (0, 1) fixed by ``parts`` (a hash): the same item always draws the same
    noise, so cached and fresh answers agree."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return tuple((int.from_bytes(digest[k : k + 4], "little") + 0.5) / 2**32 for k in (0, 4))


def _unit_normal(*parts: object) -> float:
    """A standard normal number fixed by ``parts`` (Box-Muller on :func:`_uniforms`)."""
    u1, u2 = _uniforms(*parts)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


class OpenWorldJudge(Judge):
    """The realistic world's scoring judge: the pixel judge read through every surface form,
    with a calibration error and per-item noise; uninformative outside the grammar.

    For a statement of the grammar in any spelling, ``P(yes) = sigmoid(temperature *
    logit(p) + bias + noise * z)`` with ``p`` the pixel judge's probability (clipped to
    ``[1e-3, 1 - 1e-3]``) and ``z`` a standard normal fixed by (seed, image, question). Outside
    the grammar, ``P(yes) = sigmoid(m + off_grammar_sd * z)`` with ``m`` in ``[-2, 2]`` fixed by
    the question: a confident answer that says nothing about which image people prefer.
    """

    name = "open-world"

    def __init__(
        self,
        grammar: str = "grid",
        temperature: float = 0.7,
        bias: float = 0.3,
        noise: float = 0.5,
        off_grammar_sd: float = 1.0,
        seed: int = 0,
        scoring: str = "normalized",
    ) -> None:
        self.lexicon = lexicon(grammar)
        self.temperature, self.bias, self.noise = temperature, bias, noise
        self.off_grammar_sd, self.seed, self.scoring = off_grammar_sd, seed, scoring
        self.pixel = PixelJudge()
        self.canonical = functools.lru_cache(maxsize=65536)(self._canonical)

    def _canonical(self, text: str) -> str | None:
        """The grammar statement ``text`` (or a double-quoted part of it) means, or None."""
        for candidate in (text, *re.findall(r'"([^"]*)"', text)):
            meaning = self.lexicon.get(_normalise(candidate))
            if meaning is not None:
                return meaning
        return None

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        meanings = [self.canonical(item.question) for item in items]
        known = [i for i, m in enumerate(meanings) if m is not None]
        pixel = self.pixel.yes_prob(
            [JudgeItem(items[i].image, "", meanings[i]) for i in known]
        ).probs.double()
        base = dict(zip(known, pixel.clamp(1e-3, 1 - 1e-3).tolist()))
        hashes: dict[int, str] = {}
        probs = []
        for i, item in enumerate(items):
            key = id(item.image)
            if key not in hashes:
                hashes[key] = image_hash(item.image)
            z = _unit_normal(self.seed, hashes[key], item.question)
            if i in base:
                p = base[i]
                logit = self.temperature * math.log(p / (1 - p)) + self.bias + self.noise * z
            else:
                mean = 4.0 * _uniforms(self.seed, "mean", item.question)[0] - 2.0
                logit = mean + self.off_grammar_sd * z
            probs.append(1.0 / (1.0 + math.exp(-logit)))
        return JudgeResult(torch.tensor(probs, dtype=torch.float32), [None] * len(items))


class OpenProposer(SyntheticProposer):
    """The realistic world's writer (module docstring): its own eyes, noisy ranking, open
    vocabulary, statements outside the grammar, and repeats of listed statements.

    Per request: perceive both images (``view_gamma``, ``view_gains``), rank the grammar
    statements not listed (in any spelling) by perceived winner lead plus ``rank_noise`` noise
    (one-region statements before comparisons, ``comparison_penalty``), name the top
    ``rules_per_answer`` that lead by at least ``min_lead``, each slot replaced with probability
    ``repeat_rate`` by a listed statement, then ``random_per_answer`` random ones and about
    ``off_grammar_per_answer`` statements outside the grammar; spell each grammar statement
    canonically with probability ``canonical_rate``, else in another of its surface forms.
    """

    name = "open-proposer"

    def __init__(
        self,
        grammar: str = "grid",
        rules_per_answer: int = 4,
        random_per_answer: int = 1,
        min_lead: float = 0.3,
        comparison_penalty: float = 0.5,
        rank_noise: float = 0.15,
        view_gamma: float = 0.8,
        view_gains: Sequence[float] = (1.1, 1.0, 0.9),
        canonical_rate: float = 0.4,
        off_grammar_per_answer: float = 1.0,
        repeat_rate: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            grammar, rules_per_answer, random_per_answer, min_lead, comparison_penalty, 0.0, seed
        )
        self.rank_noise = rank_noise
        self.view_gamma, self.view_gains = view_gamma, tuple(view_gains)
        self.canonical_rate = canonical_rate
        self.off_grammar_per_answer = off_grammar_per_answer
        self.repeat_rate = repeat_rate
        self.lexicon = lexicon(grammar)

    def _meaning(self, text: str) -> str:
        return self.lexicon.get(_normalise(text), text)

    def _spell(self, statement: str, rng: np.random.Generator) -> str:
        if statement not in self.lexicon.values() or rng.random() < self.canonical_rate:
            return statement
        forms = [f for f in surface_forms(statement)[1:] if _normalise(f) in self.lexicon]
        return forms[rng.integers(len(forms))] if forms else statement

    def propose(self, images: Sequence[Image.Image], text: str) -> list[str]:
        winner = self._winner(text)
        listed = [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]
        listed = [s for s in listed if s != "(none yet)"]
        meant = {self._meaning(s) for s in listed}
        fresh = [s for s in self.statements if s not in meant]
        seen = [perceive(im, self.view_gamma, self.view_gains) for im in images[:2]]
        items = [JudgeItem(im, "", s) for im in seen for s in fresh]
        probs = self.pixel.yes_prob(items).probs.double().numpy().reshape(2, len(fresh))
        lead = probs[winner] - probs[1 - winner]
        digest = hashlib.blake2b(
            text.encode() + images[0].tobytes() + images[1].tobytes(), digest_size=8
        ).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
        is_comparison = np.array([" than the " in s for s in fresh])
        salience = lead - self.comparison_penalty * is_comparison
        salience = salience + rng.normal(0.0, self.rank_noise, len(fresh))
        order = np.argsort(-salience, kind="stable")
        named = [fresh[i] for i in order[: self.rules_per_answer] if lead[i] >= self.min_lead]
        named = [
            listed[rng.integers(len(listed))] if listed and rng.random() < self.repeat_rate else s
            for s in named
        ]
        others = [s for s in fresh if s not in named]
        picks = rng.choice(
            len(others), size=min(self.random_per_answer, len(others)), replace=False
        )
        statements = [self._spell(self._meaning(s), rng) for s in named]
        statements += [self._spell(others[i], rng) for i in picks]
        whole, part = divmod(self.off_grammar_per_answer, 1.0)
        count = int(whole) + int(rng.random() < part)
        listed_keys = {statement_key(s) for s in listed}
        off = [s for s in OFF_GRAMMAR if statement_key(s) not in listed_keys]
        if off and count:
            statements += [
                off[i] for i in rng.choice(len(off), min(count, len(off)), replace=False)
            ]
        return statements
