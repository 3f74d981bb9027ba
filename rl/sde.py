"""One stochastic flow-matching step with the log-density of its outcome (Flow-GRPO's policy).

Flow-GRPO turns the deterministic Euler sampler of a rectified-flow model into a Gaussian policy
per step so that a policy gradient exists. Two such samplers are kept from the reference:

* ``kind="sde"`` (Flow-GRPO): the reverse SDE with the same marginals as the ODE. With
  s = sigma, s' = sigma_next, dt = s' - s < 0 and a = noise_level,
  std_t = a * sqrt(s / (1 - s)) (where s == 1, ``sigma_max`` replaces s in the denominator, as the
  reference does with the schedule's second sigma), mean = x (1 + std_t^2 dt / (2 s))
  + v (1 + std_t^2 (1 - s) / (2 s)) dt, and x' ~ N(mean, (std_t sqrt(-dt))^2). The log-prob is
  the exact Gaussian log-density.
* ``kind="cps"`` (coefficient-preserving sampling, arXiv 2509.05952): std = s' sin(a pi / 2),
  x0 = x - s v, x1 = x + (1 - s) v, mean = x0 (1 - s') + x1 sqrt(s'^2 - std^2), x' = mean + std eps.
  As in the reference its log-prob is -(x' - mean)^2 with constants and the variance dropped
  (ratios only need log-prob differences at a fixed std).

``noise_level = 0`` is the plain Euler ODE step (both formulas reduce to x + v dt); it has no
density, so its log-prob is returned as 0 and such steps are never trained. Everything is computed
in float32 whatever the model dtype (bf16 overflows in the squared error), and the log-prob is
averaged, not summed, over the non-batch dimensions, which is why Flow-GRPO's clip range is ~1e-4.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

SdeKind = Literal["sde", "cps"]


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] tensor as float32 [B, 1, ...] broadcastable against ``like``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.reshape(-1, *([1] * (like.ndim - 1))).expand(
        like.shape[0], *([1] * (like.ndim - 1))
    )


def sde_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    kind: SdeKind = "sde",
    sigma_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Take (or, with ``prev_sample``, evaluate) one step from ``sigma`` to ``sigma_next``.

    Args:
        sample: x at ``sigma``, [B, ...].
        velocity: the model's (CFG-combined) velocity at x, same shape.
        sigma, sigma_next: scalars or per-sample [B] tensors, sigma_next < sigma.
        noise_level: a in the formulas above; 0 gives the Euler ODE step.
        prev_sample: the outcome to score instead of drawing one (the training forward).
        generator: for the drawn noise (ignored when ``prev_sample`` is given).
        kind: "sde" (Flow-GRPO) or "cps".
        sigma_max: denominator stand-in where sigma == 1 (``kind="sde"`` only); the reference
            uses the schedule's second sigma.

    Returns:
        ``(prev_sample, log_prob, mean, std)``: the outcome x' (float32), its log-prob (float32
        [B], mean over non-batch dims), the step mean (float32, carries grad from ``velocity``)
        and std [B, 1, ...]: std_t for "sde" (the step's noise std is std_t * sqrt(-dt); Flow-GRPO's
        KL divides by 2 std_t^2 and so leaves out that dt factor) and the noise std for "cps".
    """
    if kind not in ("sde", "cps"):
        raise ValueError(f"sde kind={kind!r} is not 'sde' or 'cps'")
    x, v = sample.float(), velocity.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = s_next - s

    if noise_level == 0:
        mean = x + v * dt
        std = torch.zeros_like(s)
        if prev_sample is None:
            prev_sample = mean.detach()
        log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return prev_sample.float(), log_prob, mean, std

    if kind == "sde":
        if sigma_max is None and bool((s == 1).any()):
            raise ValueError("sde_step at sigma == 1 needs sigma_max (the schedule's sigmas[1])")
        denominator = 1 - torch.where(s == 1, sigma_max if sigma_max is not None else 0.0, s)
        std = noise_level * torch.sqrt(s / denominator)
        mean = x * (1 + std**2 / (2 * s) * dt) + v * (1 + std**2 * (1 - s) / (2 * s)) * dt
        noise_std = std * torch.sqrt(-dt)
    else:
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0, x1 = x - s * v, x + (1 - s) * v
        mean = x0 * (1 - s_next) + x1 * torch.sqrt(s_next**2 - std**2)
        noise_std = std

    if prev_sample is None:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev_sample = mean.detach() + noise_std * noise
    prev_sample = prev_sample.float()
    squared_error = (prev_sample.detach() - mean) ** 2
    if kind == "sde":
        log_density = (
            -squared_error / (2 * noise_std**2) - torch.log(noise_std) - 0.5 * math.log(2 * math.pi)
        )
    else:
        log_density = -squared_error
    log_prob = log_density.mean(dim=tuple(range(1, x.ndim)))
    return prev_sample, log_prob, mean, std
