"""Rule synthesis: ask the generative judge why one image won, and collect rubric statements.

For each seed pair the judge sees the prompt and both images (image 1 = A, image 2 = B) and is
told which one people preferred. It explains the visual differences that justify the choice and
ends with a JSON list of objective, reusable statements that the preferred image satisfies.

:func:`parse_rubric_list` reads that list from free text (a fenced block, the last bracketed list,
items that are strings or objects with a ``rubric``/``text`` field); an answer without one raises
:class:`RubricParseError`, which callers count and skip. :class:`RubricPool` is the working set:
it admits statements that are neither duplicates nor paraphrases of a rubric in it or dropped from
it (:func:`rubric_learning.dedup.statement_key`), within the judge budget, and prunes it after
each fit.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from rewards.rubric_set import Rubric
from rubric_learning.dedup import StatementKey, statement_key
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
    """The rubric statements in a generator's answer; raises :class:`RubricParseError`.

    A list with statements is preferred wherever it stands; an answer whose only list is empty
    (``[]``: "nothing new to add") gives no statements rather than an error.
    """
    candidates = [m.strip() for m in _FENCE.findall(answer)][::-1] + _bracketed_candidates(answer)
    empty = False
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
        empty = empty or value == []
    if empty:
        return []
    snippet = " ".join(answer.split())[:160]
    raise RubricParseError(f"generator answer holds no JSON list of rubric statements: {snippet!r}")


def cut_list_statements(answer: str) -> list[str]:
    """The complete statements of a list that the answer opens and never closes: an answer cut
    at ``max_new_tokens`` in the middle of its list. Items are read one by one from the last
    unclosed ``[``; the first incomplete one ends the list. Empty when there is no such list or
    no item in it is complete.
    """
    stack = []
    for i, ch in enumerate(answer):
        if ch == "[":
            stack.append(i)
        elif ch == "]" and stack:
            stack.pop()
    if not stack:
        return []
    decoder, text, pos, items = json.JSONDecoder(), answer, stack[0] + 1, []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if pos >= len(text) and not isinstance(item, str):
            break  # a number or word at the very end may itself be cut; a closed string is not
        items.append(item)
    return _statements(items) or []


def read_answer(answer: str) -> tuple[list[str], bool]:
    """(statements, cut): the answer's statement list, or, when it holds no complete list, the
    complete statements of the list it was cut in (``cut`` True). Raises
    :class:`RubricParseError` when it holds neither."""
    try:
        return parse_rubric_list(answer), False
    except RubricParseError:
        statements = cut_list_statements(answer)
        if statements:
            return statements, True
        raise


def normalise(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: the exact-duplicate key."""
    return " ".join(_WORD.findall(text.lower()))


@dataclass
class RubricPool:
    """The working set of rubrics, the rubrics pruned from it, and the judge budget.

    A statement is admitted unless it is too short or too long (``min_words``/``max_words``
    words), has the :func:`~rubric_learning.dedup.statement_key` of a rubric in the working set
    (an exact duplicate or a paraphrase) or of one pruned earlier (``previously dropped``: a
    rubric the fit rejected is not scored again), or the judge budget is spent: ``max_rubrics``
    caps the distinct rubrics ever admitted, each of which the next round scores (None: no cap).
    Rejections are counted by reason in :attr:`rejected`, answers cut inside their list in
    :attr:`cut_answers`. Ids run over everything admitted.
    """

    min_words: int = 3
    max_words: int = 40
    max_rubrics: int | None = None
    synonyms: Mapping[str, str] = field(default_factory=dict)
    rubrics: list[Rubric] = field(default_factory=list)
    dropped: list[Rubric] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    cut_answers: int = 0
    _keys: dict[StatementKey, Rubric] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rubrics)

    def texts(self) -> list[str]:
        """The working set's statements."""
        return [r.text for r in self.rubrics]

    def tried_texts(self) -> list[str]:
        """Every statement admitted so far: the working set, then the dropped rubrics."""
        return self.texts() + [r.text for r in self.dropped]

    @property
    def admitted(self) -> int:
        """Distinct rubrics admitted (and so scored, or about to be): the judge budget used."""
        return len(self.rubrics) + len(self.dropped)

    @property
    def budget_spent(self) -> bool:
        return self.max_rubrics is not None and self.admitted >= self.max_rubrics

    def key(self, text: str) -> StatementKey:
        return statement_key(text, self.synonyms)

    def add(self, text: str, provenance: dict) -> Rubric | None:
        """Admit ``text`` (see the class docstring); returns the new rubric or None."""
        words = len(normalise(text).split())
        if words < self.min_words or words > self.max_words:
            self.rejected["length"] += 1
            return None
        key = self.key(text)
        known = self._keys.get(key)
        if known is not None:
            dropped = any(known is r for r in self.dropped)
            self.rejected["previously dropped" if dropped else _repeat_kind(known.text, text)] += 1
            return None
        if self.budget_spent:
            self.rejected["judge budget"] += 1
            return None
        rubric = Rubric(f"r{self.admitted:04d}", " ".join(text.split()), 0.0, provenance)
        self.rubrics.append(rubric)
        self._keys[key] = rubric
        return rubric

    def add_candidates(
        self, candidates: Iterable[tuple[str, dict]], max_new: int | None = None
    ) -> list[Rubric]:
        """Admit candidate statements, those that more answers proposed first; at most
        ``max_new`` of them (None: no cap), the rest counted as ``round cap``.

        A statement's votes are the number of candidates sharing its key; ties keep their order.
        Under a judge budget the rubrics that many hard pairs point to are scored first.
        """
        groups: dict[StatementKey, list[tuple[str, dict]]] = {}
        for text, provenance in candidates:
            groups.setdefault(self.key(text), []).append((text, provenance))
        ranked = sorted(groups.values(), key=len, reverse=True)
        added: list[Rubric] = []
        for group in ranked:
            text, provenance = group[0]
            if max_new is not None and len(added) >= max_new and self.key(text) not in self._keys:
                self.rejected["round cap"] += 1
                continue
            rubric = self.add(text, {**provenance, "votes": len(group)})
            if rubric is not None:
                added.append(rubric)
            for other, _ in group[1:]:  # the others are duplicates or paraphrases of the first
                self.rejected[_repeat_kind(text, other)] += 1
        return added

    def add_answers(
        self, answers: Sequence[str], provenances: Sequence[dict], max_new: int | None = None
    ) -> tuple[list[Rubric], list[str]]:
        """Parse generator answers and admit their statements; returns (added, parse errors).

        An answer without a statement list is counted (``unparseable answer``) and skipped; one
        cut inside its list gives its complete statements and is counted in :attr:`cut_answers`.
        """
        candidates, errors = [], []
        for answer, provenance in zip(answers, provenances, strict=True):
            try:
                statements, cut = read_answer(answer)
            except RubricParseError as err:
                self.rejected["unparseable answer"] += 1
                errors.append(str(err))
                continue
            self.cut_answers += cut
            candidates += [(text, provenance) for text in statements]
        return self.add_candidates(candidates, max_new), errors

    def readmit(self, texts: Iterable[str]) -> list[Rubric]:
        """Move the dropped rubrics with these texts back into the working set (they were
        admitted once, so the judge budget does not count them again)."""
        wanted = set(texts)
        back = [r for r in self.dropped if r.text in wanted]
        self.dropped = [r for r in self.dropped if r.text not in wanted]
        self.rubrics += back
        return back

    def prune(self, keep: Iterable[int]) -> list[Rubric]:
        """Keep the working-set rubrics at indices ``keep``; the others move to the dropped list."""
        keep = set(keep)
        gone = [r for i, r in enumerate(self.rubrics) if i not in keep]
        self.rubrics = [r for i, r in enumerate(self.rubrics) if i in keep]
        self.dropped += gone
        return gone


def synthesis_requests(pairs: Sequence[PreferencePair]) -> list[tuple[list[Image.Image], str]]:
    """(images, text) generation requests, one per pair, images opened in A, B order."""
    return [(pair_images(p), synthesis_prompt(p.prompt, p.label)) for p in pairs]


def _repeat_kind(first: str, other: str) -> str:
    """How ``other`` repeats ``first`` (their keys are equal): word for word or in other words."""
    return "exact duplicate" if normalise(first) == normalise(other) else "paraphrase"
