"""Every reward behind one interface: ``reward(images, prompts, metadata) -> RewardOutput``."""

from __future__ import annotations

from typing import Any

from rewards.base import Reward, RewardOutput

__all__ = ["Reward", "RewardOutput", "build_reward"]


def _input_errors() -> tuple[type[Exception], ...]:
    from rewards.judges.base import JudgeError
    from rewards.rubric_set import RubricSetError

    return (RubricSetError, JudgeError, FileNotFoundError)


def build_reward(cfg: Any) -> Reward:
    """Instantiate a reward from its Hydra config node (``conf/reward/*.yaml``).

    A required field left at ``???`` fails with the override that sets it. The judge of a rubric
    reward is the root ``judge`` node pulled in by interpolation, so Hydra reports it as
    ``reward.judge.model_path``; the message names ``judge.model_path``, what the user types.
    An invalid rubric set or a judge that cannot work (a JudgeError) is raised as itself,
    not wrapped in Hydra's InstantiationException, so an entry point prints its one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
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
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):  # nested: a judge inside the reward
            cause = cause.__cause__
        if isinstance(cause, _input_errors()):
            raise cause from None
        raise
    if not isinstance(reward, Reward):
        target = cfg.get("_target_") if hasattr(cfg, "get") else None
        raise TypeError(f"reward config {target!r} built a {type(reward).__name__}, not a Reward")
    return reward
