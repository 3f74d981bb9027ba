"""RL algorithms for the one trainer, chosen with ``algorithm=NAME`` (conf/algorithm/).

Each is one module behind :class:`rl.algorithms.base.Algorithm`: ``flow_grpo`` (the default),
``grpo_guard``, ``mixgrpo`` and ``diffusion_nft``. :func:`parse_algorithm` turns the config node
into the algorithm's settings dataclass (an unknown key fails there), :func:`algorithm_problems`
lists bad combinations with the rest of the config, and :func:`build_algorithm` makes the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from rl.algorithms.base import Algorithm
from rl.algorithms.diffusion_nft import DiffusionNFT, DiffusionNFTSettings
from rl.algorithms.flow_grpo import FlowGRPO, FlowGRPOSettings
from rl.algorithms.grpo_guard import GRPOGuard, GRPOGuardSettings
from rl.algorithms.mixgrpo import MixGRPO, MixGRPOSettings


@dataclass(frozen=True)
class Entry:
    cls: type[Algorithm]
    settings: type


ALGORITHMS = {
    "flow_grpo": Entry(FlowGRPO, FlowGRPOSettings),
    "grpo_guard": Entry(GRPOGuard, GRPOGuardSettings),
    "mixgrpo": Entry(MixGRPO, MixGRPOSettings),
    "diffusion_nft": Entry(DiffusionNFT, DiffusionNFTSettings),
}


def parse_algorithm(node: Any) -> Any:
    """The settings dataclass of the ``algorithm`` node (None or missing: flow_grpo).

    Raises ValueError naming the known algorithms, or OmegaConf's error for an unknown key.
    """
    node = OmegaConf.create(node if node is not None else {"name": "flow_grpo"})
    name = node.get("name", "flow_grpo")
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name={name!r} is not one of {sorted(ALGORITHMS)}")
    schema = OmegaConf.structured(ALGORITHMS[name].settings)
    return OmegaConf.to_object(OmegaConf.merge(schema, node))


def algorithm_problems(settings: Any, rollout: Any, train: Any, family: Any = None) -> list[str]:
    """Start-up checks of the algorithm against the rollout and train sections and the family."""
    return ALGORITHMS[settings.name].cls.problems(settings, rollout, train, family)


def build_algorithm(settings: Any, rollout: Any) -> Algorithm:
    return ALGORITHMS[settings.name].cls(settings, rollout)


__all__ = ["ALGORITHMS", "Algorithm", "algorithm_problems", "build_algorithm", "parse_algorithm"]
