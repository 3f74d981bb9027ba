"""GRPO-Guard (arXiv 2510.22319): Flow-GRPO with a regulated importance ratio.

Why: with Flow-GRPO's SDE, the log-ratio of a step is ``log r = mean(-(x' - mu_theta)^2 + (x' -
mu_old)^2) / (2 sigma^2)``, where ``sigma = std_t sqrt(-dt)`` is the step's noise std. Under the
rollout's own noise its expectation is ``-mean((mu_theta - mu_old)^2) / (2 sigma^2)``: the ratio is
biased below 1, most at the low-noise steps, and its spread differs from step to step. The clip
then fails to hold back over-confident positive samples, and the policy over-optimises the proxy
reward (the paper's "implicit over-optimisation").

What changes (the loss only; rollouts are Flow-GRPO's, plus each step's mean):

* **RatioNorm**: add back the bias, ``log r + mean((mu_theta - mu_old)^2) / (2 sigma^2)``, so the
  log-ratio is centred at 0 whatever the step;
* **per-step gradient reweighting**: multiply that by the step's ``sigma``, which evens out the
  steps' gradient scales (the raw log-ratio's gradient grows as 1 / sigma^2).

Together: ``log r_guard = sigma (log r) + mean((mu_theta - mu_old)^2) / (2 sigma)``, which is the
official form as X-GenGroup/Flow-Factory implements it (``src/flow_factory/trainers/grpo.py``,
``GRPOGuardTrainer.optimize``, commit a0b2bc5a2b4fbf9125429b3fb70c0c5d7631047c, the lines
``scale_factor = torch.sqrt(-output.dt) * output.std_dev_t`` ... ``ratio = torch.exp(...)``).
Equivalently ``log r_guard = mean((mu_theta - mu_old) * eps)`` with ``eps`` the rollout's standard
noise. The clipped objective, advantage clamp and KL term are Flow-GRPO's. It needs the Gaussian
SDE (``rollout.sde_kind=sde``): CPS's log-prob has no variance term to normalise, which
Flow-Factory also refuses ("grpo-guard reweighting is only compatible with Flow-SDE").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rl.algorithms.flow_grpo import FlowGRPO
from rl.loss import StepLoss

if TYPE_CHECKING:
    from rl.families import ModelFamily
    from rl.rollout import Rollout, RolloutConfig
    from rl.train import FlowGRPOTrainer


@dataclass
class GRPOGuardSettings:
    """``algorithm=grpo_guard``: no settings beyond Flow-GRPO's (train.clip_range etc.)."""

    name: str = "grpo_guard"


def guard_log_ratio(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mean: torch.Tensor,
    old_mean: torch.Tensor,
    noise_std: torch.Tensor,
) -> torch.Tensor:
    """GRPO-Guard's normalised, reweighted log-ratio ``[B]`` (float32).

    ``log_prob`` / ``old_log_prob`` [B] are per-dimension-mean Gaussian log-probs of the same
    outcome, ``mean`` / ``old_mean`` [B, ...] the policy's and the rollout's step means and
    ``noise_std`` the step's noise std (scalar or [B, 1, ...]).
    """
    sigma = torch.as_tensor(noise_std, dtype=torch.float32).reshape(-1)
    mse = (mean.float() - old_mean.float()).pow(2).flatten(1).mean(dim=1)
    return (log_prob.float() - old_log_prob.float()) * sigma + mse / (2 * sigma)


class GRPOGuard(FlowGRPO):
    """Flow-GRPO whose ratio is :func:`guard_log_ratio`'s."""

    name = "grpo_guard"
    record_means = True

    def step_loss(
        self,
        trainer: FlowGRPOTrainer,
        batch: Rollout,
        position: int,
        advantages: torch.Tensor,
        weight: torch.Tensor,
    ) -> StepLoss:
        with trainer.accelerator.autocast():
            step = self.policy_step(trainer, batch, position)
        noise_std = step.std * torch.sqrt(-batch.step_dt(position)).reshape(step.std.shape)
        log_ratio = guard_log_ratio(
            step.log_prob, batch.old_log_prob(position), step.mean, batch.old_mean(position),
            noise_std,
        )  # fmt: skip
        return self.clipped_loss(
            trainer, step, log_ratio, torch.zeros_like(log_ratio), advantages, weight
        )

    @staticmethod
    def problems(
        settings: Any, rollout: RolloutConfig, train: Any, family: ModelFamily | None = None
    ) -> list[str]:
        if rollout.sde_kind != "sde":
            return [
                "algorithm=grpo_guard needs rollout.sde_kind=sde (its RatioNorm divides by the "
                f"SDE's noise std; {rollout.sde_kind} has none)"
            ]
        return []
