"""Every reward behind one interface: ``reward(images, prompts, metadata) -> RewardOutput``."""

from __future__ import annotations

from typing import Any

from rewards.base import Reward, RewardOutput

__all__ = ["Reward", "RewardOutput", "build_reward", "instantiate"]


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that an error the built object's own constructor
    raises (a missing file, a malformed one) comes out as itself, not wrapped in Hydra's
    ``InstantiationException``, so a command can tell bad input from a bug and end with its
    one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):  # nested: a judge inside the reward
            cause = cause.__cause__
        if isinstance(cause, Exception):
            raise cause from None
        raise


def build_reward(cfg: Any) -> Reward:
    """Instantiate a reward from its Hydra config node (``conf/reward/*.yaml``).

    A required field left at ``???`` fails with the override that sets it. The judge of a rubric
    reward is the root ``judge`` node pulled in by interpolation, so Hydra reports it as
    ``reward.judge.model_path``; the message names ``judge.model_path``, what the user types.
    An error the reward's own constructor raises (an invalid rubric set, a judge that cannot
    work) comes out as itself (:func:`instantiate`), so an entry point prints its one line.
    """
    from omegaconf.errors import MissingMandatoryValue

    try:
        reward = instantiate(cfg, _convert_="all")
    except MissingMandatoryValue as err:
        key = str(getattr(err, "full_key", "") or "")
        override = "judge." + key.rsplit(".judge.", 1)[1] if ".judge." in key else key
        raise MissingMandatoryValue(
            f"{override} is required and not set: pass {override}=<local path or value> "
            "on the command line"
        ) from err
    if not isinstance(reward, Reward):
        target = cfg.get("_target_") if hasattr(cfg, "get") else None
        raise TypeError(f"reward config {target!r} built a {type(reward).__name__}, not a Reward")
    return reward
