"""Seed pair selection: clear preferences from many different prompts (FiFA-style composite).

Two signals, each turned into a score in [0, 1], then mixed with ``margin_weight``:

- **margin**: a proxy reward's score gap in the direction people chose, ``r(preferred) -
  r(other)``, ranked across the pool (a pair the proxy finds obvious teaches a clear rule);
- **diversity**: prompts are clustered (k-means on TF-IDF vectors); within each cluster pairs are
  ordered by margin and the j-th gets ``1 / (1 + j)``, so the best pair of every cluster outranks
  the second-best of any cluster at equal margin.

Without a proxy reward the margin term is constant and selection is by diversity alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer

from rewards.base import Reward
from rubric_learning.pairs import PreferencePair, open_image

log = logging.getLogger(__name__)


def proxy_margins(
    reward: Reward | None, pairs: Sequence[PreferencePair], batch_size: int = 16
) -> np.ndarray:
    """``r(preferred) - r(other)`` per pair under ``reward``; zeros without a reward.

    A pair the reward could not score (NaN) gets margin 0, i.e. no evidence either way, and is
    counted in a warning.
    """
    margins = np.zeros(len(pairs))
    if reward is None:
        return margins
    unscored = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = [open_image(r) for p in chunk for r in (p.image_a, p.image_b)]
        prompts = [p.prompt for p in chunk for _ in range(2)]
        scores = reward(images, prompts).scores.double().numpy().reshape(-1, 2)
        sign = np.array([2.0 * p.label - 1.0 for p in chunk])
        gap = sign * (scores[:, 0] - scores[:, 1])
        unscored += int(np.isnan(gap).sum())
        margins[start : start + len(chunk)] = np.nan_to_num(gap, nan=0.0)
    if unscored:
        log.warning("seed selection: proxy reward left %d/%d pairs unscored", unscored, len(pairs))
    return margins


def cluster_prompts(prompts: Sequence[str], n_clusters: int, seed: int) -> np.ndarray:
    """K-means cluster id per prompt on TF-IDF vectors.

    At most as many clusters as distinct vectors: prompts that differ only in words TF-IDF
    ignores (single characters, digits) share a vector, and one cluster per duplicate would be
    empty. Prompts without any usable word form one cluster.
    """
    try:
        vectors = TfidfVectorizer(ngram_range=(1, 2), min_df=1).fit_transform(prompts)
    except ValueError:  # empty vocabulary
        return np.zeros(len(prompts), dtype=int)
    distinct = _distinct_rows(vectors.tocsr())
    k = max(1, min(n_clusters, distinct))
    if k == 1:
        return np.zeros(len(prompts), dtype=int)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors)


def _distinct_rows(matrix: Any) -> int:
    """Number of distinct rows of a sparse CSR matrix (without densifying it)."""
    matrix.sort_indices()
    ptr, rows = matrix.indptr, set()
    for i in range(matrix.shape[0]):
        part = slice(ptr[i], ptr[i + 1])
        rows.add((matrix.indices[part].tobytes(), matrix.data[part].round(12).tobytes()))
    return len(rows)


def composite_scores(margins: np.ndarray, clusters: np.ndarray, margin_weight: float) -> np.ndarray:
    """Mix the ranked margin and the within-cluster diversity score (both in [0, 1])."""
    n = len(margins)
    margin_score = (rankdata(margins) - 1) / max(n - 1, 1)
    diversity = np.zeros(n)
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        order = members[np.argsort(-margins[members], kind="stable")]
        diversity[order] = 1.0 / (1.0 + np.arange(len(order)))
    return margin_weight * margin_score + (1.0 - margin_weight) * diversity


def select_seed_pairs(
    pairs: Sequence[PreferencePair],
    num: int = 256,
    reward: Reward | None = None,
    n_clusters: int = 32,
    margin_weight: float = 0.5,
    seed: int = 0,
) -> list[PreferencePair]:
    """The ``num`` pairs with the highest composite score (all of them if fewer)."""
    if not 0.0 <= margin_weight <= 1.0:
        raise ValueError(f"seeds.margin_weight must be in [0, 1], got {margin_weight}")
    pairs = list(pairs)
    if len(pairs) <= num:
        return pairs
    margins = proxy_margins(reward, pairs)
    clusters = cluster_prompts([p.prompt for p in pairs], n_clusters, seed)
    score = composite_scores(margins, clusters, margin_weight)
    chosen = np.argsort(-score, kind="stable")[:num]
    return [pairs[i] for i in sorted(chosen)]
