"""MixGRPO (arXiv 2507.21802; Tencent-Hunyuan/MixGRPO): a sliding SDE window, ODE elsewhere.

Source: ``fastvideo/train_grpo_flux.py`` (``sample_reference_model``: steps inside the window are
SDE, all others deterministic; ``train_one_step``: only the window's steps are trained),
``fastvideo/utils/grpo_states.py`` (``GRPOTrainingStates``: the window schedule) and
``fastvideo/utils/sampling_utils.py`` (``run_sample_step``: the Flash variant's DPM-Solver++ for
the ODE part after the window), all at commit e5cdd6a427778d8c8b2e7a48ce16972141adbe7c.

The window schedule (``sample_strategy="progressive"`` with ``prog_overlap``, as both official
scripts ``scripts/finetune/finetune_flux_grpo_MixGRPO{,_Flash}.sh`` run it): the window starts at
step 0 and moves ``shift_step`` steps later every ``iters_per_group`` iterations (one iteration =
one epoch here: sample a batch of groups, train it); it spans ``range(start, min(start +
window_size, num_steps - 2))``, so it shrinks at the tail (the code's ``max_timesteps =
sampling_steps - 2``), and with ``roll_back`` it starts again from 0 once ``start`` has passed
``num_steps - 2``. The code's other strategies (random, decay, exp_decay) are not ported. Every
batch of an epoch uses that epoch's window; the loss is Flow-GRPO's (the scripts run
``--flow_grpo_sampling``, ``kl_coeff 0``).

Changed: where the code's window is empty (``start == num_steps - 2``, reached only by runs longer
than ``iters_per_group x (num_steps - 2)`` epochs) the epoch samples ODE-only and trains nothing,
as the code does; and the Flash re-spacing keeps at least one step down to sigma 0 (see
:class:`rl.algorithms.solvers.DPMSolver`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from rl.algorithms.flow_grpo import FlowGRPO
from rl.algorithms.solvers import DPMSolver

if TYPE_CHECKING:
    from rl.rollout import Rollout, RolloutConfig


@dataclass
class MixGRPOSettings:
    """``algorithm=mixgrpo`` (defaults: the official scripts' values, conf/algorithm/mixgrpo.yaml).

    Attributes:
        window_size: SDE (trained) steps per window (``--group_size 4``).
        iters_per_group: epochs before the window moves (``--iters_per_group`` 25; Flash 20).
        shift_step: steps the window moves by (``--prog_overlap_step 1``).
        roll_back: restart from step 0 after the last position (``--roll_back``).
        flash: solve the ODE part after the window with DPM-Solver++ (MixGRPO-Flash,
            ``--dpm_algorithm_type dpmsolver++ --dpm_apply_strategy post``).
        flash_order: the solver's order (``--dpm_solver_order 2``, midpoint).
        flash_compress_ratio: the post-window steps kept (``--dpm_post_compress_ratio 0.4``).
        flash_shift: the timestep shift used to re-space them (``--shift 3``).
    """

    name: str = "mixgrpo"
    window_size: int = 4
    iters_per_group: int = 25
    shift_step: int = 1
    roll_back: bool = True
    flash: bool = False
    flash_order: int = 2
    flash_compress_ratio: float = 0.4
    flash_shift: float = 3.0


def window_start(epoch: int, settings: MixGRPOSettings, num_steps: int) -> int:
    """Where the window of ``epoch`` (0-based) starts: ``GRPOTrainingStates`` in progressive mode,
    whose ``update_iteration`` runs once per iteration after the window is read."""
    max_timesteps = num_steps - 2
    start = 0
    for iteration in range(1, epoch + 1):
        if iteration % settings.iters_per_group == 0:
            start += settings.shift_step
        if start > max_timesteps:
            start = 0 if settings.roll_back else max_timesteps
    return start


def epoch_window(epoch: int, settings: MixGRPOSettings, num_steps: int) -> tuple[int, int]:
    """``[start, end)`` of the SDE window of ``epoch``; empty (start == end) at the code's tail."""
    start = window_start(epoch, settings, num_steps)
    return start, max(start, min(start + settings.window_size, num_steps - 2))


class MixGRPO(FlowGRPO):
    """Flow-GRPO whose SDE window follows MixGRPO's schedule, epoch by epoch."""

    name = "mixgrpo"

    def __init__(self, settings: MixGRPOSettings, rollout: RolloutConfig) -> None:
        super().__init__(settings, rollout)
        self.epoch = 0

    def epoch_window(self, epoch: int, generator: torch.Generator) -> tuple[int, int] | None:
        """This epoch's window; None for the code's empty tail window (sampled ODE-only)."""
        self.epoch = epoch
        start, end = epoch_window(epoch, self.settings, self.rollout.num_steps)
        return (start, end) if end > start else None

    def rollout_config(self, window: tuple[int, int] | None) -> RolloutConfig:
        if window is None:  # the empty tail window: every step ODE, nothing trained
            return replace(self.rollout, noise_level=0.0)
        return replace(self.rollout, sde_window=window)

    def ode_solver(self) -> DPMSolver | None:
        s = self.settings
        if not s.flash:
            return None
        return DPMSolver(
            order=s.flash_order, start=None, post_compress_ratio=s.flash_compress_ratio,
            shift=s.flash_shift,
        )  # fmt: skip

    @property
    def max_train_steps(self) -> int:
        return self.settings.window_size

    def train_steps_this_epoch(self, rollout: Rollout) -> int:
        start, end = epoch_window(self.epoch, self.settings, self.rollout.num_steps)
        return end - start

    @staticmethod
    def problems(settings: Any, rollout: RolloutConfig, train: Any) -> list[str]:
        s, out = settings, []
        if rollout.sde_window is not None or rollout.sde_window_size:
            out.append(
                "algorithm=mixgrpo places its own SDE window: unset rollout.sde_window and "
                "rollout.sde_window_size (experiment=demo_mixgrpo shows how)"
            )
        if not 1 <= s.window_size <= rollout.num_steps - 2:
            out.append(
                f"algorithm.window_size={s.window_size} must be in 1..num_steps - 2 = "
                f"{rollout.num_steps - 2} (MixGRPO never trains the last two steps)"
            )
        if s.iters_per_group < 1 or s.shift_step < 1:
            out.append("algorithm.iters_per_group and algorithm.shift_step must be >= 1")
        if s.flash and not 0 < s.flash_compress_ratio <= 1:
            out.append(f"algorithm.flash_compress_ratio={s.flash_compress_ratio} must be in (0, 1]")
        if s.flash and s.flash_order not in (1, 2):
            out.append(f"algorithm.flash_order={s.flash_order} must be 1 or 2")
        return out
