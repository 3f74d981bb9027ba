"""DiffusionNFT (arXiv 2509.16117; NVlabs/DiffusionNFT): negative-aware fine-tuning on the forward
process, CFG-free.

Source: ``scripts/train_nft_sd3.py`` and ``config/nft.py`` at commit
24af5554898d85e93efa492f42b5e9cdf4156e9b. What it changes against Flow-GRPO:

* **Rollouts** are deterministic: the *old* policy samples every step with DPM-Solver++(2M)
  (``sample.solver="dpm2"``, ``deterministic=True``, guidance 1) and only the final latents ``x0``
  are kept; no log-probs.
* **The loss is on the forward process**: for each of ``int(num_steps x train_fraction)`` schedule
  timesteps (a fresh permutation per sample), ``x_t = (1 - t) x0 + t eps`` with fresh noise. With
  ``v`` the trained velocity and ``v_old`` the old policy's, the implicit positive and negative
  policies are ``v+ = beta v + (1 - beta) v_old`` and ``v- = (1 + beta) v_old - beta v``, their data
  predictions ``x0± = x_t - t v±``, and the per-sample loss is
  ``adv_clip_max x (r ||x0+ - x0||^2 / w+ + (1 - r) ||x0- - x0||^2 / w-) / beta`` (means over
  dimensions), with the adaptive weights ``w± = max(mean|x0± - x0|, 1e-5)`` (no gradient) and the
  optimality probability ``r = clamp(clamp(A, ±adv_clip_max) / adv_clip_max / 2 + 1/2, 0, 1)``
  (the reward normalisation: group advantages mapped to [0, 1]). ``train.beta`` adds
  ``mean((v - v_ref)^2)`` to the LoRA-disabled transformer.
* **Every sample trains**, a zero advantage included (r = 1/2 pulls ``v`` towards ``v_old``);
  samples whose reward is NaN are left out.
* **The old policy** is a copy of the trained weights, blended after every epoch as
  ``old <- decay old + (1 - decay) theta`` with
  ``decay = min(max(step - flat, 0) x uprate, uphold)`` at ``step`` optimizer steps done
  (``return_decay``; ``decay_type`` 0, 1 or 2).

The paper and the code agree on these; where the code has options the paper does not
(``adv_mode``), the code's default ``"all"`` is the preset.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from rl.algorithms.base import Algorithm
from rl.algorithms.solvers import DPMSolver
from rl.ema import EMA
from rl.loss import StepLoss, weighted_mean
from rl.rollout import predict_velocity

if TYPE_CHECKING:
    from rl.families import ModelFamily
    from rl.rollout import Rollout, RolloutConfig
    from rl.train import FlowGRPOTrainer

# return_decay's (flat, uprate, uphold) per decay_type (train_nft_sd3.py)
DECAY_TYPES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}
ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")


@dataclass
class DiffusionNFTSettings:
    """``algorithm=diffusion_nft`` (defaults: config/nft.py ``_get_config``).

    Attributes:
        beta: the implicit policies' mix (``config.beta``; 1.0, 0.1 for OCR and multi-reward).
        decay_type: the old policy's blending schedule (``config.decay_type``; 1, 2 for OCR).
        adv_mode: ``config.train.adv_mode`` ("all"; or positive_only, negative_only, one_only,
            binary).
        solver_order: the sampling solver, DPM-Solver++ of order 1 or 2 (``solver="dpm2"``).
    """

    name: str = "diffusion_nft"
    beta: float = 1.0
    decay_type: int = 1
    adv_mode: str = "all"
    solver_order: int = 2


def old_policy_decay(optimizer_step: int, decay_type: int) -> float:
    """``return_decay``: the old policy's decay after ``optimizer_step`` optimizer steps."""
    flat, uprate, uphold = DECAY_TYPES[decay_type]
    if optimizer_step < flat:
        return 0.0
    return min((optimizer_step - flat) * uprate, uphold)


def optimality_probability(
    advantages: torch.Tensor, adv_clip_max: float, adv_mode: str
) -> torch.Tensor:
    """``r`` in [0, 1] from group advantages (clamped, moded, mapped linearly)."""
    adv = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    if adv_mode == "positive_only":
        adv = adv.clamp(0, adv_clip_max)
    elif adv_mode == "negative_only":
        adv = adv.clamp(-adv_clip_max, 0)
    elif adv_mode == "one_only":
        adv = (adv > 0).float()
    elif adv_mode == "binary":
        adv = torch.sign(adv)
    return ((adv / adv_clip_max) / 2.0 + 0.5).clamp(0, 1)


def implicit_policies(
    velocity: torch.Tensor, old_velocity: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit positive and negative velocities ``(v+, v-)``; ``old_velocity`` is detached."""
    old = old_velocity.detach()
    return beta * velocity + (1 - beta) * old, (1.0 + beta) * old - beta * velocity


def nft_loss(
    velocity: torch.Tensor,
    old_velocity: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    adv_clip_max: float,
    adv_mode: str = "all",
    kl_beta: float = 0.0,
    ref_velocity: torch.Tensor | None = None,
) -> StepLoss:
    """DiffusionNFT's loss of one timestep of a micro-batch (see the module); ``t`` is [B] in
    [0, 1], ``weight`` [B] the padding weights. Returns the loss and its parts."""
    dims = tuple(range(1, x0.ndim))
    t_b = t.float().view(-1, *([1] * (x0.ndim - 1)))
    r = optimality_probability(advantages, adv_clip_max, adv_mode)
    positive, negative = implicit_policies(velocity.float(), old_velocity.float(), beta)

    def weighted_error(v: torch.Tensor) -> torch.Tensor:
        x0_pred = xt - t_b * v
        with torch.no_grad():
            scale = (x0_pred.double() - x0.double()).abs().mean(dim=dims, keepdim=True)
            scale = scale.clip(min=0.00001)
        return ((x0_pred - x0) ** 2 / scale).mean(dim=dims)

    per_sample = r * weighted_error(positive) / beta + (1.0 - r) * weighted_error(negative) / beta
    policy = weighted_mean(per_sample * adv_clip_max, weight)
    nan = torch.full_like(policy, math.nan).detach()
    kl = nan
    loss = policy
    if ref_velocity is not None:
        kl = weighted_mean((velocity.float() - ref_velocity.float()).pow(2).mean(dim=dims), weight)
        loss = policy + kl_beta * kl
    with torch.no_grad():
        deviation = weighted_mean(
            (velocity.float() - old_velocity.float()).pow(2).mean(dim=dims), weight
        )
    return StepLoss(
        loss=loss,
        policy_loss=policy.detach(),
        kl=kl.detach(),
        clipfrac=nan,
        approx_kl=deviation,  # mean (v - v_old)^2: how far the policy moved from the old one
        log_ratio_abs_max=torch.zeros(()),
    )


class OldPolicy(EMA):
    """The old policy: a float32 copy of the trained parameters, swapped in to sample and to
    predict ``v_old``, and blended towards them after every epoch."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, decay=0.0, update_every=1)

    @torch.no_grad()
    def blend(self, decay: float) -> None:
        """``old <- decay old + (1 - decay) theta`` (the order of train_nft_sd3.py's update)."""
        for old, param in zip(self.shadow, self.params):
            old.copy_(old * decay + param.detach().float() * (1.0 - decay))


class DiffusionNFT(Algorithm):
    name = "diffusion_nft"
    trains_zero_advantage = True

    def __init__(self, settings: DiffusionNFTSettings, rollout: RolloutConfig) -> None:
        super().__init__(settings, rollout)
        self.old: OldPolicy | None = None
        self.generator = torch.Generator()  # training noise and timesteps (seeded per rank)

    def bind(self, params: list[torch.nn.Parameter], seed: int) -> None:
        self.old = OldPolicy(params)
        self.generator.manual_seed(seed)

    def rollout_config(self, window: tuple[int, int] | None) -> RolloutConfig:
        return replace(self.rollout, noise_level=0.0)

    def ode_solver(self) -> DPMSolver:
        return DPMSolver(order=self.settings.solver_order, start=0)

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        return self.old.swapped_in()

    def prepare_training(self, rollout: Rollout) -> Rollout:
        """Each sample's trained timesteps: the first ``num_train_steps`` of a permutation of all
        the schedule's steps (``perms_time`` in train_nft_sd3.py)."""
        steps, trained = rollout.timesteps.shape[1], rollout.num_train_steps
        perms = [torch.randperm(steps, generator=self.generator)[:trained] for _ in rollout.prompts]
        return replace(rollout, train_steps=torch.stack(perms).to(rollout.train_steps.device))

    def step_loss(
        self,
        trainer: FlowGRPOTrainer,
        batch: Rollout,
        position: int,
        advantages: torch.Tensor,
        weight: torch.Tensor,
    ) -> StepLoss:
        t_cfg = trainer.cfg.train
        step = batch.step_index(position).to(batch.timesteps.device)
        rows = torch.arange(step.numel(), device=step.device)
        timestep = batch.timesteps[rows, step]
        t = timestep.float() / 1000.0
        x0 = batch.latents[:, -1].float()
        noise = torch.randn(x0.shape, generator=self.generator).to(x0.device)
        t_b = t.view(-1, *([1] * (x0.ndim - 1)))
        xt = (1 - t_b) * x0 + t_b * noise

        def velocity(model: torch.nn.Module) -> torch.Tensor:
            # no CFG branch; a guidance-distilled family's embedding reads the run's scale, and a
            # packed-latent family's positions the image size
            r = self.rollout
            return predict_velocity(
                model, xt, timestep, batch.embeds, batch.pooled, None, None, r.guidance_scale,
                (r.height, r.width),
            )  # fmt: skip

        with trainer.accelerator.autocast():
            with torch.no_grad(), self.old.swapped_in():
                old_v = velocity(trainer.transformer)
            v = velocity(trainer.transformer)
            ref_v = None
            if trainer.reference is not None:
                with torch.no_grad(), trainer.reference.active() as ref_model:
                    ref_v = velocity(ref_model)
        return nft_loss(
            v, old_v, x0, xt, t, advantages, weight, self.settings.beta, t_cfg.adv_clip_max,
            self.settings.adv_mode, t_cfg.beta, ref_v,
        )  # fmt: skip

    def end_epoch(self, optimizer_step: int) -> dict[str, float]:
        decay = old_policy_decay(optimizer_step, self.settings.decay_type)
        self.old.blend(decay)
        return {"old_policy_decay": decay}

    def state_dict(self) -> dict[str, Any]:
        return {"old": self.old.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.old.load_state_dict(state["old"])
        self.generator.set_state(state["generator"])

    @staticmethod
    def problems(
        settings: Any, rollout: RolloutConfig, train: Any, family: ModelFamily | None = None
    ) -> list[str]:
        s, out = settings, []
        # CFG-free: no negative branch. A guidance-distilled family (FLUX) reads the guidance
        # scale through an embedding instead, which samples and trains alike.
        if family.uses_cfg(rollout.guidance_scale) if family else rollout.uses_cfg:
            out.append(
                f"algorithm=diffusion_nft is CFG-free: set rollout.guidance_scale=1 (got "
                f"{rollout.guidance_scale}; its loss trains the conditional velocity alone)"
            )
        if rollout.sde_window is not None or rollout.sde_window_size:
            out.append(
                "algorithm=diffusion_nft samples ODE-only and trains forward-process timesteps: "
                "unset rollout.sde_window and rollout.sde_window_size (see experiment=demo_nft)"
            )
        if train.same_latent:
            out.append(
                "algorithm=diffusion_nft samples by the ODE, so train.same_latent=true would make "
                "every image of a group identical (no advantage): set it false"
            )
        if s.decay_type not in DECAY_TYPES:
            out.append(f"algorithm.decay_type={s.decay_type} must be one of {sorted(DECAY_TYPES)}")
        if s.adv_mode not in ADV_MODES:
            out.append(f"algorithm.adv_mode={s.adv_mode!r} must be one of {ADV_MODES}")
        if not s.beta > 0:
            out.append(f"algorithm.beta={s.beta} must be > 0 (the loss divides by it)")
        if s.solver_order not in (1, 2):
            out.append(f"algorithm.solver_order={s.solver_order} must be 1 or 2")
        return out
