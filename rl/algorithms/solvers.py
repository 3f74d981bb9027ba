"""A higher-order ODE solver for the deterministic steps of a rollout: multistep DPM-Solver++.

Two algorithms sample with it instead of Flow-GRPO's Euler steps:

* MixGRPO-Flash (Tencent-Hunyuan/MixGRPO ``fastvideo/utils/sampling_utils.py``, ``run_sample_step``
  with ``dpm_apply_strategy="post"``): every step up to the end of the SDE window runs as before
  (Euler ODE before it, SDE inside it) and feeds its data prediction to the solver; after the window
  the remaining ODE part is re-spaced into fewer steps (``post_compress_ratio``) and solved with
  DPM-Solver++ of order 2 (midpoint).
* DiffusionNFT (NVlabs/DiffusionNFT ``flow_grpo/diffusers_patch/solver.py``, ``solver="dpm2"``):
  every step is deterministic DPM-Solver++(2M).

For a rectified flow ``x = (1 - s) x0 + s eps`` the data prediction is ``x0 = x - s v``; with
alpha = 1 - s, lambda = log(alpha / s) and h = lambda_next - lambda:

* order 1 (DDIM, equal to first-order DPM-Solver++): ``x' = (s'/s) x + (alpha' - alpha s'/s) x0``,
  written without logarithms so that s = 1 (alpha = 0) and s' = 0 need no special case;
* order 2 (2M, midpoint): ``x' = (s'/s) x - alpha' (e^-h - 1) (D0 + D1 / 2)`` with D0 the current
  data prediction and ``D1 = (D0 - D_prev) h / h_prev``.

As both references, the first step taken and the last step are first order, and the coefficients
are computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def time_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """SD3's static timestep shift ``shift t / (1 + (shift - 1) t)`` (``sd3_time_shift``)."""
    return shift * t / (1 + (shift - 1) * t)


def inverse_time_shift(shift: float, sigma: float) -> float:
    """The unshifted time of ``sigma``: the inverse of :func:`time_shift`."""
    return sigma / (shift - (shift - 1) * sigma)


def first_order_step(
    x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One DDIM / first-order DPM-Solver++ step from ``sigma`` to ``sigma_next``."""
    s, s_next = sigma.double(), sigma_next.double()
    ratio = s_next / s
    return (ratio * x.double() + ((1 - s_next) - (1 - s) * ratio) * x0.double()).float()


def second_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    sigma_prev: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
) -> torch.Tensor:
    """One multistep DPM-Solver++(2M) midpoint step; ``x0_prev`` was predicted at ``sigma_prev``."""
    s_prev, s, s_next = sigma_prev.double(), sigma.double(), sigma_next.double()

    def lam(value: torch.Tensor) -> torch.Tensor:
        return torch.log(1 - value) - torch.log(value)

    h, h_prev = lam(s_next) - lam(s), lam(s) - lam(s_prev)
    d0, d1 = x0.double(), (x0.double() - x0_prev.double()) * (h / h_prev)
    out = (s_next / s) * x.double() - (1 - s_next) * torch.expm1(-h) * (d0 + 0.5 * d1)
    return out.float()


@dataclass
class DPMSolver:
    """Solves the ODE steps from ``start`` on with multistep DPM-Solver++ of ``order`` 1 or 2.

    ``start``: the first step index it solves (None: the end of each rollout's SDE window, as
    MixGRPO-Flash; 0: every step, as DiffusionNFT). ``post_compress_ratio`` (MixGRPO-Flash)
    re-spaces the steps after ``start``: ``max(int(remaining x ratio), 1)`` schedule points spread
    evenly in unshifted time from the sigma at ``start`` down to 0 and mapped back with SD3's
    ``shift``.
    """

    order: int = 2
    start: int | None = 0
    post_compress_ratio: float | None = None
    shift: float = 3.0

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"the DPM solver order must be 1 or 2, got {self.order}")

    def begin(
        self, timesteps: torch.Tensor, sigmas: torch.Tensor, window: tuple[int, int] | None
    ) -> SolverRun:
        """The per-rollout solver state with this rollout's (possibly re-spaced) schedule."""
        start = self.start if self.start is not None else (window[1] if window else 0)
        if self.post_compress_ratio is not None:
            timesteps, sigmas = self.compressed_schedule(timesteps, sigmas, start)
        return SolverRun(self.order, start, timesteps, sigmas)

    def compressed_schedule(
        self, timesteps: torch.Tensor, sigmas: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MixGRPO-Flash's schedule: the steps before ``start`` unchanged, then
        ``max(int((T - start + 1) x ratio), 1)`` points from ``sigmas[start]`` to 0, evenly spaced
        in unshifted time. Where that rounds to a single point (which stops above 0), two are
        kept."""
        num_steps = sigmas.numel() - 1
        points = max(int((num_steps - start + 1) * self.post_compress_ratio), 1)
        points = max(points, 2)  # one point would leave the image undenoised
        start_time = inverse_time_shift(self.shift, float(sigmas[start]))
        post = time_shift(self.shift, torch.linspace(start_time, 0, points, dtype=torch.float64))
        post[0] = sigmas[start]  # exactly the window's last sigma
        new_sigmas = torch.cat([sigmas[:start], post.to(sigmas.dtype).to(sigmas.device)])
        scale = timesteps[0] / sigmas[0]  # SD3: timesteps are sigmas x 1000
        return (new_sigmas[:-1] * scale).to(timesteps.dtype), new_sigmas


@dataclass
class SolverRun:
    """One rollout's solver: ``observe`` every step before ``start`` (their data predictions feed
    the multistep formula), ``step`` the ones from ``start`` on."""

    order: int
    start: int
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    x0_history: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def solves(self, step: int) -> bool:
        return step >= self.start

    def observe(self, step: int, x: torch.Tensor, velocity: torch.Tensor) -> None:
        """Record the data prediction of a step that another rule took."""
        self.x0_history = [*self.x0_history[-1:], (step, x.float() - self.sigmas[step] * velocity)]

    def step(self, step: int, x: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """Take step ``step`` (sigma index ``step`` to ``step + 1``) deterministically."""
        x0 = x.float() - self.sigmas[step] * velocity.float()
        last = step == self.sigmas.numel() - 2
        first_order = self.order == 1 or not self.x0_history or last
        if first_order:
            out = first_order_step(x, x0, self.sigmas[step], self.sigmas[step + 1])
        else:
            prev_step, x0_prev = self.x0_history[-1]
            out = second_order_step(
                x, x0, x0_prev, self.sigmas[prev_step], self.sigmas[step], self.sigmas[step + 1]
            )
        self.x0_history = [*self.x0_history[-1:], (step, x0)]
        return out
