"""MixGRPO (arXiv 2507.21802; Tencent-Hunyuan/MixGRPO): a sliding SDE window, ODE elsewhere.

Source: ``fastvideo/train_grpo_flux.py`` (``sample_reference_model``: steps inside the window are
SDE, all others deterministic; ``train_one_step``: only the window's steps are trained),
``fastvideo/utils/grpo_states.py`` (``GRPOTrainingStates``: the window schedule) and
``fastvideo/utils/sampling_utils.py`` (``run_sample_step``: the Flash variant's DPM-Solver++ for
the ODE part after the window), all at commit e5cdd6a427778d8c8b2e7a48ce16972141adbe7c.

The window schedule (``GRPOTrainingStates``; the default ``strategy="progressive"`` with
``prog_overlap`` is how both official scripts
``scripts/finetune/finetune_flux_grpo_MixGRPO{,_Flash}.sh`` run it): the window starts at step 0
and moves ``shift_step`` steps later every ``iters_per_group`` iterations (one iteration = one
epoch here: sample a batch of groups, train it); it spans ``range(start, min(start + window_size,
num_steps - 2))``, so it shrinks at the tail (the code's ``max_timesteps = sampling_steps - 2``),
and with ``roll_back`` it starts again from 0 once ``start`` has passed ``num_steps - 2``. The
code's other strategies are options: ``"decay"`` stays ``max_iters_per_group`` iterations at step
0, falling linearly to ``min_iters_per_group`` at the last position; ``"exp_decay"`` stays
``ceil(iters_per_group x exp(-k x max(0, start - threshold)))``; ``"random"`` starts at 0, then
draws each later epoch's start uniformly in ``[0, num_steps - 2 - window_size]``. (The code without
``prog_overlap`` moves by the window size: ``shift_step=window_size``.) Every batch of an epoch
uses that epoch's window; the loss is Flow-GRPO's (the scripts run ``--flow_grpo_sampling``,
``kl_coeff 0``).

Changed: ``"random"`` draws from the trainer's seeded per-rank window generator (saved in
checkpoints, so resume is exact), where the code draws from an unseeded numpy generator; where
the code's window is empty (``start == num_steps - 2``, reached only by runs longer
than ``iters_per_group x (num_steps - 2)`` epochs) the epoch samples ODE-only and trains nothing,
as the code does; and the Flash re-spacing keeps at least one step down to sigma 0 (see
:class:`rl.algorithms.solvers.DPMSolver`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from rl.algorithms.flow_grpo import FlowGRPO
from rl.algorithms.solvers import DPMSolver

if TYPE_CHECKING:
    from rl.families import ModelFamily
    from rl.rollout import Rollout, RolloutConfig


@dataclass
class MixGRPOSettings:
    """``algorithm=mixgrpo`` (defaults: the official scripts' values, conf/algorithm/mixgrpo.yaml).

    Attributes:
        window_size: SDE (trained) steps per window (``--group_size 4``).
        iters_per_group: epochs before the window moves (``--iters_per_group`` 25; Flash 20).
        shift_step: steps the window moves by (``--prog_overlap_step 1``).
        roll_back: restart from step 0 after the last position (``--roll_back``).
        strategy: how the window moves (``--sample_strategy``): progressive, decay, exp_decay or
            random (see the module).
        max_iters_per_group, min_iters_per_group: "decay"'s epochs per position at the first
            and the last position (``--max_iters_per_group 10 --min_iters_per_group 1``).
        exp_decay_threshold, exp_decay_k: "exp_decay"'s start position and rate
            (``GRPOTrainingStates`` defaults 13 and 0.1).
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
    strategy: str = "progressive"
    max_iters_per_group: int = 10
    min_iters_per_group: int = 1
    exp_decay_threshold: int = 13
    exp_decay_k: float = 0.1
    flash: bool = False
    flash_order: int = 2
    flash_compress_ratio: float = 0.4
    flash_shift: float = 3.0


STRATEGIES = ("progressive", "decay", "exp_decay", "random")


def epochs_at(start: int, settings: MixGRPOSettings, max_timesteps: int) -> float:
    """How many epochs the window stays at ``start`` before it moves."""
    s = settings
    if s.strategy == "decay":
        progress = start / max_timesteps
        interpolated = s.max_iters_per_group * (1 - progress) + s.min_iters_per_group * progress
        return max(s.min_iters_per_group, int(interpolated))
    if s.strategy == "exp_decay":
        late = max(0, start - s.exp_decay_threshold)
        return math.ceil(s.iters_per_group * math.exp(-s.exp_decay_k * late))
    return s.iters_per_group


def window_start(epoch: int, settings: MixGRPOSettings, num_steps: int) -> int:
    """Where the window of ``epoch`` (0-based) starts under a deterministic strategy: the state of
    ``GRPOTrainingStates``, whose ``update_iteration`` runs once per iteration after the window is
    read."""
    max_timesteps = num_steps - 2
    start = in_group = 0
    for _ in range(epoch):
        in_group += 1
        if in_group >= epochs_at(start, settings, max_timesteps):
            in_group = 0
            start += settings.shift_step
        if start > max_timesteps:
            if settings.roll_back:
                start = in_group = 0
            else:
                start = max_timesteps
    return start


def window_at(start: int, settings: MixGRPOSettings, num_steps: int) -> tuple[int, int]:
    """``[start, end)``: the window from ``start``; empty (start == end) at the code's tail."""
    return start, max(start, min(start + settings.window_size, num_steps - 2))


class MixGRPO(FlowGRPO):
    """Flow-GRPO whose SDE window follows MixGRPO's schedule, epoch by epoch."""

    name = "mixgrpo"

    def __init__(self, settings: MixGRPOSettings, rollout: RolloutConfig) -> None:
        super().__init__(settings, rollout)
        self.epoch: int | None = None
        self.window = (0, 0)

    def epoch_window(self, epoch: int, generator: torch.Generator) -> tuple[int, int] | None:
        """This epoch's window (the same for all its batches); None for the code's empty tail
        window (sampled ODE-only). ``"random"`` draws it from ``generator`` once per epoch."""
        if epoch != self.epoch:
            self.epoch, s, steps = epoch, self.settings, self.rollout.num_steps
            if s.strategy == "random" and epoch > 0:
                highest = steps - 2 - s.window_size
                start = int(torch.randint(0, highest + 1, (1,), generator=generator))
            else:
                start = 0 if s.strategy == "random" else window_start(epoch, s, steps)
            self.window = window_at(start, s, steps)
        start, end = self.window
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
        start, end = self.window
        return end - start

    @staticmethod
    def problems(
        settings: Any, rollout: RolloutConfig, train: Any, family: ModelFamily | None = None
    ) -> list[str]:
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
        if s.strategy not in STRATEGIES:
            out.append(f"algorithm.strategy={s.strategy!r} must be one of {STRATEGIES}")
        if s.strategy == "decay" and not 1 <= s.min_iters_per_group <= s.max_iters_per_group:
            out.append(
                "algorithm.min_iters_per_group and max_iters_per_group must satisfy "
                f"1 <= min <= max (got {s.min_iters_per_group}, {s.max_iters_per_group})"
            )
        if s.flash and not 0 < s.flash_compress_ratio <= 1:
            out.append(f"algorithm.flash_compress_ratio={s.flash_compress_ratio} must be in (0, 1]")
        if s.flash and s.flash_order not in (1, 2):
            out.append(f"algorithm.flash_order={s.flash_order} must be 1 or 2")
        return out
