"""Group-relative advantages (the "G" of GRPO), computed over an epoch gathered from all ranks.

Every image belongs to the group of its prompt. ``A = (r - mean_group) / (std + eps)``, where the
std is the group's own or, with ``global_std`` (the reference default), the std of every reward of
the epoch. Statistics use the population std (ddof 0), as the reference does. A NaN reward (a sample
the reward could not score) is left out of its group's mean and std and out of the global std, gets
advantage 0 and is counted with a warning; since samples with advantage 0 teach nothing, the
trainer then drops them together with the ones from groups whose rewards were all equal.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

log = logging.getLogger(__name__)


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, global_std: bool, eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages ``[N]`` (float32) for rewards ``[N]`` grouped by ``group_ids`` ``[N]``.

    Returns the advantages and statistics: ``num_groups``, ``group_size_min`` / ``_max`` (all
    members, NaN included), ``reward_nan`` (NaN rewards excluded) and ``zero_advantage`` (samples
    whose advantage is exactly 0 and that the trainer filters out).
    """
    rewards = rewards.double().reshape(-1)
    group_ids = group_ids.reshape(-1)
    valid = ~torch.isnan(rewards)
    num_nan = int((~valid).sum())
    if num_nan:
        log.warning(
            "%d of %d rewards are NaN; excluded from the group statistics (advantage 0)",
            num_nan,
            rewards.numel(),
        )
    advantages = torch.zeros_like(rewards)
    zero = torch.zeros((), dtype=rewards.dtype)
    global_scale = rewards[valid].std(correction=0) if valid.sum() > 1 else zero
    groups, sizes = torch.unique(group_ids, return_counts=True)
    for gid in groups:
        members = (group_ids == gid) & valid
        if members.sum() == 0:
            continue
        values = rewards[members]
        scale = global_scale if global_std else values.std(correction=0)
        advantages[members] = (values - values.mean()) / (scale + eps)
    stats = {
        "num_groups": float(groups.numel()),
        "group_size_min": float(sizes.min()),
        "group_size_max": float(sizes.max()),
        "reward_nan": float(num_nan),
        "zero_advantage": float((advantages == 0).sum()),
    }
    return advantages.float(), stats


class PromptStatTracker:
    """Computes each epoch's advantages and remembers how often every prompt was trained on.

    The group statistics themselves are per epoch (the reference clears its tracker every epoch);
    what persists, and is saved in checkpoints, is the per-prompt count, logged as
    ``prompts_seen``.
    """

    def __init__(self, global_std: bool, eps: float = 1e-4) -> None:
        self.global_std = global_std
        self.eps = eps
        self.times_seen: Counter[int] = Counter()

    def advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Advantages for one gathered epoch; updates the per-prompt counts."""
        adv, stats = group_advantages(rewards, group_ids, self.global_std, self.eps)
        self.times_seen.update(torch.unique(group_ids).tolist())
        stats["prompts_seen"] = float(len(self.times_seen))
        return adv, stats

    def state_dict(self) -> dict[str, Any]:
        return {"times_seen": dict(self.times_seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.times_seen = Counter({int(k): int(v) for k, v in state["times_seen"].items()})
