"""Curriculum-bucketed hard-pair mining: which misranked pairs to learn new rubrics from.

With the kept rubric set's reward ``R``, a training pair is misranked when ``R(preferred) -
R(other) <= 0``. Misranked pairs fall into three buckets (checked in this order):

- ``high_reward``: both images score at or above the ``high_reward_percentile`` of all training
  images, yet the order is wrong -- finer distinctions among good images are missing;
- ``small_margin``: ``|margin|`` below the ``small_margin_percentile`` of the misranked pairs'
  ``|margin|`` -- a subtle dimension is missing;
- ``large_margin``: the rest -- the rubric set confidently contradicts people, a major dimension
  is missing.

Each round draws ``per_round`` pairs with bucket shares interpolated linearly from
``schedule_start`` (round 0) to ``schedule_end`` (last round): early rounds favour large-margin
errors, later ones high-reward errors. A bucket with too few pairs hands its share to the others.
A pair drawn ``max_uses`` times (4, the paper's "selected more than four times are excluded") is
never drawn again: noisy or unlearnable pairs; the counts report how many were held back so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

BUCKETS = ("small_margin", "large_margin", "high_reward")


def bucket_pairs(
    rewards: np.ndarray,
    labels: np.ndarray,
    small_margin_percentile: float = 50.0,
    high_reward_percentile: float = 75.0,
) -> dict[str, np.ndarray]:
    """Misranked pair indices per bucket, from per-image rewards ``[n, 2]`` (A, B)."""
    sign = 2 * np.asarray(labels, dtype=float) - 1
    margin = sign * (rewards[:, 0] - rewards[:, 1])
    wrong = margin <= 0
    high_cut = np.percentile(rewards, high_reward_percentile)
    high = wrong & (rewards.min(axis=1) >= high_cut)
    rest = wrong & ~high
    if rest.any():
        small_cut = np.percentile(np.abs(margin[rest]), small_margin_percentile)
        small = rest & (np.abs(margin) < small_cut)
    else:
        small = np.zeros_like(rest)
    large = rest & ~small
    return {
        "small_margin": np.flatnonzero(small),
        "large_margin": np.flatnonzero(large),
        "high_reward": np.flatnonzero(high),
    }


def bucket_shares(
    round_index: int, num_rounds: int, start: Mapping[str, float], end: Mapping[str, float]
) -> dict[str, float]:
    """Bucket sampling shares for a round, interpolated from ``start`` to ``end``, summing to 1."""
    t = round_index / max(num_rounds - 1, 1)
    raw = {b: (1 - t) * float(start.get(b, 0.0)) + t * float(end.get(b, 0.0)) for b in BUCKETS}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("mining schedule shares must not all be zero")
    return {b: v / total for b, v in raw.items()}


@dataclass
class HardPairMiner:
    """Draws hard pairs per round by the bucket schedule, remembering how often each was used."""

    per_round: int = 32
    max_uses: int = 4
    small_margin_percentile: float = 50.0
    high_reward_percentile: float = 75.0
    schedule_start: Mapping[str, float] = field(
        default_factory=lambda: {"small_margin": 0.3, "large_margin": 0.6, "high_reward": 0.1}
    )
    schedule_end: Mapping[str, float] = field(
        default_factory=lambda: {"small_margin": 0.3, "large_margin": 0.1, "high_reward": 0.6}
    )
    seed: int = 0
    uses: Counter = field(default_factory=Counter)

    def mine(
        self,
        rewards: np.ndarray,
        labels: np.ndarray,
        pair_ids: list[str],
        round_index: int,
        num_rounds: int,
    ) -> tuple[list[int], dict[str, dict[str, int]]]:
        """Indices of the pairs drawn this round and, per bucket, how many pairs are misranked,
        available, held back by the reuse cap (``capped``) and drawn."""
        buckets = bucket_pairs(
            rewards, labels, self.small_margin_percentile, self.high_reward_percentile
        )
        available = {
            b: [int(i) for i in idx if self.uses[pair_ids[i]] < self.max_uses]
            for b, idx in buckets.items()
        }
        shares = bucket_shares(round_index, num_rounds, self.schedule_start, self.schedule_end)
        quota = self._quotas(shares, {b: len(v) for b, v in available.items()})
        rng = np.random.default_rng([self.seed, round_index])
        chosen, counts = [], {}
        for b in BUCKETS:
            picked = rng.choice(available[b], size=quota[b], replace=False) if quota[b] else []
            chosen.extend(int(i) for i in picked)
            counts[b] = {
                "misranked": len(buckets[b]),
                "available": len(available[b]),
                "capped": len(buckets[b]) - len(available[b]),
                "drawn": quota[b],
            }
        for i in chosen:
            self.uses[pair_ids[i]] += 1
        return sorted(chosen), counts

    def _quotas(self, shares: dict[str, float], sizes: dict[str, int]) -> dict[str, int]:
        """Split ``per_round`` by share, capped by bucket size, leftovers to buckets with room."""
        want = min(self.per_round, sum(sizes.values()))
        quota = {b: min(sizes[b], int(round(shares[b] * self.per_round))) for b in BUCKETS}
        by_share = sorted(BUCKETS, key=lambda b: -shares[b])
        while sum(quota.values()) > want:
            b = next(b for b in reversed(by_share) if quota[b] > 0)
            quota[b] -= 1
        while sum(quota.values()) < want:
            b = next(b for b in by_share if quota[b] < sizes[b])
            quota[b] += 1
        return quota
