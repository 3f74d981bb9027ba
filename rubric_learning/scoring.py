"""Asking the judges through the cache: rubric scores for pairs, and generated answers.

:class:`RubricScorer` returns P(yes) for every (pair, rubric, side) as an array ``[n_pairs,
n_rubrics, 2]``. It looks every item up in the :class:`~rubric_learning.cache.JudgeCache` first,
then sends only the missing ones to the judge's batched ``yes_prob`` grouped by image (so backends
that share the image + prompt prefix compute it once) and stores each batch as soon as it comes
back. A round that adds rubrics therefore scores only the new ones, and a rerun resumes.

:class:`CachedGenerator` does the same for free-text answers (rule synthesis and failure
analysis). Both count judge calls, items sent and cache hits in :class:`JudgeStats`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rewards.judges.base import Judge, JudgeItem
from rewards.rubric_set import DEFAULT_TEMPLATE
from rubric_learning.cache import JudgeCache, make_key
from rubric_learning.pairs import ImageRef, PreferencePair, content_hash, open_image


def _hit_rate(scored: int, hits: int) -> float:
    """Share of score look-ups answered by the cache (0 when nothing was looked up)."""
    return hits / (scored + hits) if scored + hits else 0.0


@dataclass
class JudgeStats:
    """What the judges were asked: batched calls, items sent, items found in the cache."""

    score_calls: int = 0
    items_scored: int = 0
    score_cache_hits: int = 0
    generate_calls: int = 0
    generate_cache_hits: int = 0
    failures: Counter = field(default_factory=Counter)

    def snapshot(self) -> dict:
        return {
            "judge_calls": self.score_calls + self.generate_calls,
            "score_calls": self.score_calls,
            "items_scored": self.items_scored,
            "score_cache_hits": self.score_cache_hits,
            "generate_calls": self.generate_calls,
            "generate_cache_hits": self.generate_cache_hits,
            "cache_hit_rate": _hit_rate(self.items_scored, self.score_cache_hits),
            "failures": dict(self.failures),
        }

    def since(self, before: dict) -> dict:
        """The counts accumulated since ``before`` (a :meth:`snapshot`)."""
        now = self.snapshot()
        delta = {k: now[k] - before[k] for k in now if isinstance(now[k], int)}
        delta["cache_hit_rate"] = _hit_rate(delta["items_scored"], delta["score_cache_hits"])
        delta["failures"] = dict(Counter(now["failures"]) - Counter(before["failures"]))
        return delta


class ImageHashes:
    """Content hash per image reference, computed once."""

    def __init__(self) -> None:
        self._memo: dict[ImageRef, str] = {}

    def __call__(self, ref: ImageRef) -> str:
        if ref not in self._memo:
            self._memo[ref] = content_hash(ref)
        return self._memo[ref]


def pil_hash(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class RubricScorer:
    """P(yes) of rubrics on the images of preference pairs, through the cache."""

    def __init__(
        self,
        judge: Judge,
        cache: JudgeCache,
        judge_id: str,
        template: dict[str, str] | None = None,
        batch_size: int = 64,
        stats: JudgeStats | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.judge = judge
        self.cache = cache
        self.judge_id = judge_id
        self.template = dict(template or DEFAULT_TEMPLATE)
        self.batch_size = batch_size
        self.stats = stats or JudgeStats()
        self.retry_failed = retry_failed
        self.hashes = ImageHashes()
        self._keys: dict[tuple[str, str, str], str] = {}

    def _key(self, image_hash: str, context: str, question: str) -> str:
        """The cache key of one item, hashed once per run (rounds look the same items up)."""
        parts = (image_hash, context, question)
        key = self._keys.get(parts)
        if key is None:
            key = make_key("score", self.judge_id, context, question, image_hash)
            self._keys[parts] = key
        return key

    def score_pairs(
        self, pairs: Sequence[PreferencePair], rubrics: Sequence[str], desc: str = "scoring"
    ) -> np.ndarray:
        """``[n_pairs, n_rubrics, 2]`` P(yes) for image A (index 0) and B (1); NaN = unanswered."""
        out = np.full((len(pairs), len(rubrics), 2), np.nan)
        questions = [self.template["question"].format(rubric=rubric) for rubric in rubrics]
        # Missing items grouped by image: {(image hash, context): (ref, [(question, key)])}.
        missing: dict[tuple[str, str], tuple[ImageRef, list[tuple[str, str]]]] = {}
        where: dict[str, list[tuple[int, int, int]]] = {}
        for i, pair in enumerate(pairs):
            context = self.template["context"].format(prompt=pair.prompt)
            for side, ref in enumerate((pair.image_a, pair.image_b)):
                image_hash = self.hashes(ref)
                for k, question in enumerate(questions):
                    key = self._key(image_hash, context, question)
                    hit = self.cache.get_score(key)
                    if hit is not None and not (self.retry_failed and math.isnan(hit[0])):
                        out[i, k, side] = hit[0]
                        self.stats.score_cache_hits += 1
                        continue
                    if key not in where:
                        group = missing.setdefault((image_hash, context), (ref, []))
                        group[1].append((question, key))
                    where.setdefault(key, []).append((i, k, side))
        if missing:
            self._ask(missing, where, out, desc)
        return out

    def _ask(self, missing, where, out, desc) -> None:
        total = sum(len(v[1]) for v in missing.values())
        pending: list[tuple[JudgeItem, str]] = []
        with tqdm(total=total, desc=desc, unit="item", leave=False) as bar:
            for (_, context), (ref, wanted) in missing.items():
                image = open_image(ref)
                for question, key in wanted:
                    pending.append((JudgeItem(image, context, question), key))
                    if len(pending) >= self.batch_size:
                        self._flush(pending, where, out, bar)
                        pending = []
            if pending:
                self._flush(pending, where, out, bar)

    def _flush(self, pending, where, out, bar) -> None:
        result = self.judge.yes_prob([item for item, _ in pending])
        probs = torch.as_tensor(result.probs, dtype=torch.float64).reshape(-1).tolist()
        if len(probs) != len(pending):
            raise RuntimeError(
                f"judge {self.judge_id}: returned {len(probs)} scores for {len(pending)} items"
            )
        entries = []
        for (_, key), prob, reason in zip(pending, probs, result.reasons):
            entries.append((key, prob, reason))
            for i, k, side in where[key]:
                out[i, k, side] = prob
            if reason is not None:
                self.stats.failures[reason] += 1
        self.cache.put_scores(entries)
        self.stats.score_calls += 1
        self.stats.items_scored += len(pending)
        bar.update(len(pending))


class CachedGenerator:
    """A generative judge whose answers are stored in the cache, keyed by request and images."""

    def __init__(
        self,
        judge: Judge,
        cache: JudgeCache,
        judge_id: str,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        stats: JudgeStats | None = None,
    ) -> None:
        self.judge = judge
        self.cache = cache
        self.judge_id = judge_id
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.stats = stats or JudgeStats()

    def _key(self, images: Sequence[Image.Image], text: str, max_new_tokens: int) -> str:
        hashes = [pil_hash(im) for im in images]
        return make_key("generate", self.judge_id, str(max_new_tokens), text, *hashes)

    def generate_many(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        desc: str = "generating",
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Answers to ``requests``, each at most ``max_new_tokens`` long (None: the default)."""
        max_new_tokens = max_new_tokens or self.max_new_tokens
        keys = [self._key(images, text, max_new_tokens) for images, text in requests]
        answers = [self.cache.get_answer(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        self.stats.generate_cache_hits += len(requests) - len(todo)
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, leave=False):
            chunk = todo[start : start + self.batch_size]
            new = self.judge.generate_many([requests[i] for i in chunk], max_new_tokens)
            if len(new) != len(chunk):
                raise RuntimeError(
                    f"generator {self.judge_id}: {len(new)} answers for {len(chunk)} requests"
                )
            self.cache.put_answers([(keys[i], a) for i, a in zip(chunk, new)])
            for i, answer in zip(chunk, new):
                answers[i] = answer
            self.stats.generate_calls += 1
        return answers
