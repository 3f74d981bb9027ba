"""A weighted mix of rewards that is itself a reward.

``score = sum_i weight_i * score_i``. Each component is called through its own ``Reward``
interface on the same batch, in the order given. The output keeps everything a run needs to read
the mix term by term: ``details["<name>"]`` is component ``name``'s score and
``details["<name>/<key>"]`` each of its own details; failures are counted as ``"<name>: <reason>"``.

A NaN in any component makes the sample's total NaN (a mix with a missing term is not comparable
to the others in its group); the component's own reason is what gets counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from rewards.base import FLOAT32_MAX, Reward, RewardOutput


class MultiReward(Reward):
    """Weighted sum of named rewards.

    Args:
        components: ``{name: {"reward": Reward | reward config, "weight": float}}``. A reward given
            as a config (a mapping with ``_target_``) is built with :func:`rewards.build_reward`.
        name: the mix's name in logs.
    """

    def __init__(self, components: Mapping[str, Mapping[str, Any]], name: str = "multi") -> None:
        from rewards import build_reward

        if not components:
            raise ValueError("MultiReward needs at least one component")
        self.name = name
        self.rewards: dict[str, Reward] = {}
        self.weights: dict[str, float] = {}
        for key, spec in components.items():
            if not isinstance(spec, Mapping) or "reward" not in spec:
                raise ValueError(f"{name}: component {key!r} needs a 'reward' (and a 'weight')")
            unknown = set(spec) - {"reward", "weight"}
            if unknown:
                raise ValueError(f"{name}: component {key!r} has unknown fields {sorted(unknown)}")
            reward = spec["reward"]
            if not isinstance(reward, Reward):
                reward = build_reward(reward)
            weight = spec.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{name}: component {key!r} weight must be a number: {weight!r}")
            if not math.isfinite(weight) or abs(weight) > FLOAT32_MAX:
                raise ValueError(
                    f"{name}: component {key!r} weight must be finite in float32: {weight!r}"
                )
            self.rewards[key] = reward
            self.weights[key] = float(weight)

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        total = torch.zeros(len(images), dtype=torch.float64)
        details: dict[str, torch.Tensor] = {}
        failures: Counter = Counter()
        for key, reward in self.rewards.items():
            out = reward(images, prompts, metadata)
            total += self.weights[key] * out.scores.to(torch.float64)
            details[key] = out.scores
            details.update({f"{key}/{name}": value for name, value in out.details.items()})
            failures.update({f"{key}: {reason}": n for reason, n in out.failures.items()})
        return RewardOutput(total, details, failures)

    def check_prompts(self, prompts, metadata) -> None:
        for reward in self.rewards.values():
            reward.check_prompts(prompts, metadata)

    def release(self) -> None:
        for reward in self.rewards.values():
            reward.release()
