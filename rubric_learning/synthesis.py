"""Rule synthesis: ask the generative judge why one image won, and collect rubric statements.

For each seed pair the judge sees the prompt and both images (image 1 = A, image 2 = B) and is
told which one people preferred. It explains the visual differences that justify the choice and
ends with a JSON list of objective, reusable statements that the preferred image satisfies.

:func:`parse_rubric_list` reads that list from free text (a fenced block, the last bracketed list,
items that are strings or objects with a ``rubric``/``text`` field); an answer without one raises
:class:`RubricParseError`, which callers count and skip. :class:`RubricPool` keeps the working
set free of exact duplicates (same normalised text) and rewordings (see :func:`is_rewording`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from PIL import Image

from rewards.rubric_set import Rubric
from rubric_learning.pairs import PreferencePair, open_image

SYNTHESIS_PROMPT = """You are helping to write an evaluation rubric for text-to-image generation.
Both images were generated from this prompt: "{prompt}"
People preferred image {winner} over image {loser}.

1. Look at the prompt and at both images.
2. Explain briefly which visual differences justify the preference for image {winner}.
3. Turn those differences into rubric statements: short, objective yes/no checks about a single
   image that a careful viewer would answer the same way every time, that image {winner}
   satisfies and image {loser} does not, and that would be useful for judging other images too
   (do not name "image 1" or "image 2").

Finish with the statements as a JSON list of strings, for example:
["The main subject is fully visible and not cropped.", "Text in the image is spelled correctly."]
"""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+")


class RubricParseError(ValueError):
    """A generator answer that contains no JSON list of rubric statements."""


def winner_and_loser(label: float) -> tuple[int, int]:
    """The preferred and the other image's number in a request (image 1 = A, image 2 = B)."""
    return (1, 2) if label > 0.5 else (2, 1)


def pair_images(pair: PreferencePair) -> list[Image.Image]:
    """The pair's two images, opened in A, B order (image 1, image 2 of every request)."""
    return [open_image(pair.image_a), open_image(pair.image_b)]


def synthesis_prompt(prompt: str, label: float) -> str:
    """The synthesis request for one pair (image 1 = A, image 2 = B)."""
    winner, loser = winner_and_loser(label)
    return SYNTHESIS_PROMPT.format(prompt=prompt, winner=winner, loser=loser)


def _statements(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("rubric", item.get("text", item.get("statement")))
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
    return out or None


def _bracketed_candidates(text: str) -> list[str]:
    """Every balanced ``[...]`` span of the text, last one first."""
    spans, stack = [], []
    for i, ch in enumerate(text):
        if ch == "[":
            stack.append(i)
        elif ch == "]" and stack:
            start = stack.pop()
            if not stack:
                spans.append(text[start : i + 1])
    return spans[::-1]


def parse_rubric_list(answer: str) -> list[str]:
    """The rubric statements in a generator's answer; raises :class:`RubricParseError`."""
    candidates = [m.strip() for m in _FENCE.findall(answer)][::-1] + _bracketed_candidates(answer)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            value = value.get("rubrics", value.get("rules"))
        statements = _statements(value)
        if statements is not None:
            return statements
    snippet = " ".join(answer.split())[:160]
    raise RubricParseError(f"generator answer holds no JSON list of rubric statements: {snippet!r}")


def normalise(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: the exact-duplicate key."""
    return " ".join(_WORD.findall(text.lower()))


def is_rewording(a: str, b: str, threshold: float) -> bool:
    """Whether two normalised statements say the same with words added or dropped.

    The word sequences must match with insertions and deletions only (``difflib``), with a
    similarity ratio of at least ``threshold``. A substituted word makes a different rule, however
    similar the rest: "bright" / "dark", "left half ... right half" / "right half ... left half".
    """
    matcher = SequenceMatcher(None, a.split(), b.split(), autojunk=False)
    if any(tag == "replace" for tag, *_ in matcher.get_opcodes()):
        return False
    return matcher.ratio() >= threshold


@dataclass
class RubricPool:
    """The working set of rubrics, without exact or near duplicates.

    ``near_duplicate`` is the similarity ratio at or above which a new statement counts as a
    rewording of one already in the pool (:func:`is_rewording`). ``min_words`` and
    ``max_words`` drop fragments and essays.
    """

    near_duplicate: float = 0.85
    min_words: int = 3
    max_words: int = 40
    rubrics: list[Rubric] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    _keys: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.rubrics)

    def texts(self) -> list[str]:
        return [r.text for r in self.rubrics]

    def add(self, text: str, provenance: dict) -> Rubric | None:
        """Append ``text`` unless it duplicates a pool member; returns the new rubric or None."""
        key = normalise(text)
        words = len(key.split())
        if words < self.min_words or words > self.max_words:
            self.rejected["length"] += 1
            return None
        if key in self._keys:
            self.rejected["exact duplicate"] += 1
            return None
        if any(is_rewording(key, other, self.near_duplicate) for other in self._keys):
            self.rejected["near duplicate"] += 1
            return None
        rubric = Rubric(f"r{len(self.rubrics):04d}", " ".join(text.split()), 0.0, provenance)
        self.rubrics.append(rubric)
        self._keys.append(key)
        return rubric

    def add_answer(self, answer: str, provenance: dict) -> list[Rubric]:
        """Parse a generator answer and add its statements; unparseable answers are counted."""
        try:
            statements = parse_rubric_list(answer)
        except RubricParseError:
            self.rejected["unparseable answer"] += 1
            raise
        added = [self.add(s, provenance) for s in statements]
        return [r for r in added if r is not None]


def synthesis_requests(pairs: Sequence[PreferencePair]) -> list[tuple[list[Image.Image], str]]:
    """(images, text) generation requests, one per pair, images opened in A, B order."""
    return [(pair_images(p), synthesis_prompt(p.prompt, p.label)) for p in pairs]
