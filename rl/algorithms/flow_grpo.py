"""Flow-GRPO (arXiv 2505.05470; yifan123/flow_grpo ``scripts/train_sd3.py``): the default.

Rollouts are SDE (or CPS) trajectories with the log-prob of every stored transition; the loss of
a trained step is the clipped-ratio objective of :func:`rl.loss.grpo_step_loss` plus ``beta``
times the KL to the LoRA-disabled transformer. Which steps are SDE and trained is the rollout
section's choice (the first ``train_fraction`` of the steps, a fixed window, or the fast variant's
random window per batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rl.algorithms.base import Algorithm
from rl.loss import StepLoss, grpo_step_loss, kl_to_reference
from rl.rollout import step_log_prob

if TYPE_CHECKING:
    from rl.rollout import Rollout
    from rl.train import FlowGRPOTrainer


@dataclass
class FlowGRPOSettings:
    """``algorithm=flow_grpo``: no settings of its own (the train and rollout sections do))."""

    name: str = "flow_grpo"


@dataclass
class PolicyStep:
    """The policy's re-scored transition of one trained step (all per sample, float32)."""

    log_prob: torch.Tensor  # [B]
    mean: torch.Tensor  # [B, ...] the step's Gaussian mean (carries the graph)
    std: torch.Tensor  # [B, 1, ...] std_t (SDE) or the noise std (CPS)
    kl: torch.Tensor | None  # [B] KL to the reference, None when train.beta == 0


class FlowGRPO(Algorithm):
    """The reference algorithm; GRPO-Guard and MixGRPO change parts of it."""

    name = "flow_grpo"

    def policy_step(self, trainer: FlowGRPOTrainer, batch: Rollout, position: int) -> PolicyStep:
        """Policy forward of the ``position``-th trained step, and the reference forward (only
        when ``train.beta > 0``) with its KL."""
        cfg, t = trainer.cfg, trainer.cfg.train
        log_prob, mean, std = step_log_prob(
            trainer.transformer, batch, position, trainer.cache, cfg.rollout, t.detach_uncond
        )
        kl = None
        if trainer.reference is not None:
            with torch.no_grad(), trainer.reference.active() as ref_model:
                _, ref_mean, _ = step_log_prob(
                    ref_model, batch, position, trainer.cache, cfg.rollout
                )
            include_dt = t.kl_include_dt and cfg.rollout.sde_kind == "sde"
            kl = kl_to_reference(mean, ref_mean, std, batch.step_dt(position), include_dt)
        return PolicyStep(log_prob, mean, std, kl)

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
        return self.clipped_loss(
            trainer, step, step.log_prob, batch.old_log_prob(position), advantages, weight
        )

    @staticmethod
    def clipped_loss(
        trainer: FlowGRPOTrainer,
        step: PolicyStep,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        weight: torch.Tensor,
    ) -> StepLoss:
        """The clipped policy loss (with ``step``'s KL) under the run's train settings; the ratio
        is ``exp(log_prob - old_log_prob)``."""
        t = trainer.cfg.train
        return grpo_step_loss(
            log_prob,
            old_log_prob,
            advantages,
            weight,
            clip_range=t.clip_range,
            adv_clip_max=t.adv_clip_max,
            beta=t.beta,
            kl=step.kl,
        )
