"""The Flow-GRPO objective for one trained denoising step.

``loss = PPO + beta * KL`` where, per sample,

* ``PPO = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` with ``ratio = exp(logp -
  logp_old)`` and the advantage ``A`` clamped to ``[-adv_clip_max, adv_clip_max]``;
* ``KL = mean((mu_theta - mu_ref)^2) / (2 * var)``: the KL divergence between the policy's and the
  reference's Gaussian transitions, which share their std. The reference implementation divides by
  ``std_t^2`` only, dropping the step's ``-dt`` from the transition variance
  ``std_t^2 * (-dt)``; ``include_dt`` makes that choice explicit (False = the reference's form,
  True = the exact Gaussian KL, larger by ``1 / -dt``).

Per-sample weights (0 for padding samples that only keep ranks in step) turn means into weighted
means, so padding never changes the loss or its gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StepLoss:
    """The loss of one trained step and its diagnostics (all scalars; loss carries the graph)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    log_ratio_abs_max: torch.Tensor


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)``; 0 (with the graph kept) when every weight is 0."""
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def kl_to_reference(
    mean: torch.Tensor,
    ref_mean: torch.Tensor,
    std_t: torch.Tensor,
    dt: torch.Tensor | float,
    include_dt: bool,
) -> torch.Tensor:
    """Per-sample KL ``[B]`` between transitions with means ``mean`` / ``ref_mean`` ``[B, ...]``.

    ``std_t`` is the SDE's noise scale at the step (scalar or per sample, without the sqrt(-dt)
    factor); ``dt`` (< 0) is the step's sigma difference.
    """
    sq = (mean.float() - ref_mean.float()).pow(2).flatten(1).mean(dim=1)
    var = torch.as_tensor(std_t, dtype=torch.float32).reshape(-1) ** 2
    if include_dt:
        var = var * (-torch.as_tensor(dt, dtype=torch.float32).reshape(-1))
    return sq / (2 * var)


def grpo_step_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    clip_range: float,
    adv_clip_max: float,
    beta: float,
    kl: torch.Tensor | None = None,
) -> StepLoss:
    """The clipped policy loss (+ ``beta * kl``) of one step; all inputs are ``[B]``."""
    adv = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy = weighted_mean(torch.maximum(unclipped, clipped), weight)
    kl_mean = weighted_mean(kl, weight) if kl is not None else torch.full_like(policy, math.nan)
    real = weight > 0
    with torch.no_grad():
        clipfrac = weighted_mean(((ratio - 1.0).abs() > clip_range).float(), weight)
        approx_kl = weighted_mean(0.5 * log_ratio.pow(2), weight)
        abs_max = log_ratio[real].abs().max() if real.any() else torch.zeros(())
    return StepLoss(
        loss=policy + beta * kl_mean if kl is not None else policy,  # kl NaN = not computed
        policy_loss=policy.detach(),
        kl=kl_mean.detach(),
        clipfrac=clipfrac,
        approx_kl=approx_kl,
        log_ratio_abs_max=abs_max.detach(),
    )
