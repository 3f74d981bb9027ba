"""Every reward behind one interface: ``reward(images, prompts, metadata) -> RewardOutput``."""

from __future__ import annotations

from typing import Any

from rewards.base import Reward, RewardOutput

__all__ = ["Reward", "RewardOutput", "build_reward"]


def build_reward(cfg: Any) -> Reward:
    """Instantiate a reward from its Hydra config node (``conf/reward/*.yaml``)."""
    from hydra.utils import instantiate

    reward = instantiate(cfg, _convert_="all")
    if not isinstance(reward, Reward):
        target = cfg.get("_target_") if hasattr(cfg, "get") else None
        raise TypeError(f"reward config {target!r} built a {type(reward).__name__}, not a Reward")
    return reward
