"""The interface between the one training recipe (:mod:`rl.train`) and an RL algorithm.

An algorithm says three things, and nothing else:

* **what a rollout records**: the rollout settings it samples with
  (:meth:`Algorithm.rollout_config`, e.g. no SDE noise at all for DiffusionNFT), which steps of this
  epoch are SDE and trained (:meth:`Algorithm.epoch_window`), whether each step's Gaussian mean is
  kept (:attr:`Algorithm.record_means`, GRPO-Guard's RatioNorm needs the rollout's mean) and which
  ODE solver runs the deterministic steps (:meth:`Algorithm.ode_solver`);
* **how a recorded batch plus advantages becomes a loss** (:meth:`Algorithm.step_loss`, one trained
  step of one micro-batch; the trainer accumulates, clips, steps the optimizer and the EMA);
* **what it keeps between epochs** (:meth:`Algorithm.end_epoch`, :meth:`Algorithm.state_dict`),
  e.g. DiffusionNFT's old policy, saved in checkpoints for an exact resume.

Sampling, advantages, the optimizer, EMA, checkpoints, distribution and logging stay in the trainer.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rl.loss import StepLoss

if TYPE_CHECKING:
    from rl.algorithms.solvers import DPMSolver
    from rl.families import ModelFamily
    from rl.rollout import Rollout, RolloutConfig
    from rl.train import FlowGRPOTrainer


class Algorithm:
    """Flow-GRPO's choices; every other algorithm overrides only what it changes.

    ``settings`` is the validated ``algorithm`` config node (a dataclass of the algorithm's own).
    """

    name: ClassVar[str] = "flow_grpo"
    record_means: ClassVar[bool] = False  # keep each step's mean in the rollout (GRPO-Guard)
    trains_zero_advantage: ClassVar[bool] = False  # Flow-GRPO drops samples whose advantage is 0

    def __init__(self, settings: Any, rollout: RolloutConfig) -> None:
        self.settings = settings
        self.rollout = rollout

    def bind(self, params: list[torch.nn.Parameter], seed: int) -> None:
        """Called once the trained parameters exist, with a seed of this rank's own (DiffusionNFT
        copies its old policy and seeds its training noise here)."""

    # -------------------------------------------------------------- what a rollout records
    def rollout_config(self, window: tuple[int, int] | None) -> RolloutConfig:
        """The rollout settings of a batch sampled with ``window``."""
        return self.rollout

    def epoch_window(self, epoch: int, generator: torch.Generator) -> tuple[int, int] | None:
        """The SDE (trained) window of one sampling batch of ``epoch`` (0-based); Flow-GRPO's
        own: the fast variant's random window, the fixed one, or None (every step SDE)."""
        return self.rollout.draw_window(generator)

    def ode_solver(self) -> DPMSolver | None:
        """The solver of the deterministic (ODE) steps; None: Euler, as Flow-GRPO."""
        return None

    @property
    def max_train_steps(self) -> int:
        """Trained steps per rollout (the most of any epoch): sizes gradient accumulation."""
        return self.rollout.num_train_steps

    def train_steps_this_epoch(self, rollout: Rollout) -> int:
        """How many trained steps each sample of this epoch's ``rollout`` has."""
        return rollout.num_train_steps

    def prepare_training(self, rollout: Rollout) -> Rollout:
        """The epoch's rollout as training reads it (DiffusionNFT draws its timesteps here)."""
        return rollout

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The weights that sample rollouts: the live ones (DiffusionNFT: its old policy)."""
        return contextlib.nullcontext()

    # -------------------------------------------------------------- the loss
    def step_loss(
        self,
        trainer: FlowGRPOTrainer,
        batch: Rollout,
        position: int,
        advantages: torch.Tensor,
        weight: torch.Tensor,
    ) -> StepLoss:
        """Loss of the ``position``-th trained step of one micro-batch (see :class:`FlowGRPO`)."""
        raise NotImplementedError

    # -------------------------------------------------------------- between epochs
    def end_epoch(self, optimizer_step: int) -> dict[str, float]:
        """Called after each epoch's training with the optimizer steps done; returns metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @staticmethod
    def problems(
        settings: Any, rollout: RolloutConfig, train: Any, family: ModelFamily | None = None
    ) -> list[str]:
        """Start-up checks of how ``settings`` combine with the rollout and train sections and
        the model's family (None when ``model.name`` is unknown, which is reported elsewhere)."""
        return []
