"""Flow-GRPO fine-tuning of a text-to-image flow model (any family of :mod:`rl.families`: SD3.5,
FLUX.1, Qwen-Image) against any reward: ``python -m rl.train``.

One recipe class that reads top to bottom: :meth:`FlowGRPOTrainer.setup`, :meth:`~.train` (one
epoch = sample, score, advantages, update), :meth:`~.save`, :meth:`~.cleanup`.

Kept from the reference implementation, because the algorithm depends on them: K images per
prompt with groups spread over all ranks and advantages computed after gathering every rank's
rewards (global std by default); the clipped-ratio loss on log-probs that are per-dimension means
(hence the tiny clip range), with a KL to the LoRA-disabled transformer; training the stored
transitions of the first 9 of 10 steps (or of each batch's SDE window, drawn per batch and per
rank in the fast variant) in one inner epoch, with gradient accumulation spanning all trained steps
of the accumulated micro-batches; dropping samples whose advantage is 0; the EMA's warm-up and
cadence. Changed: the number of batches per epoch derives from the process count (one preset
scales), training micro-batches keep the same count on every rank (padding with weight 0) so
multi-process runs never hang, the EMA steps once per optimizer step with the reference recipe's
repeat count (rl/ema.py), NaN rewards are excluded instead of crashing the statistics, and resume
is exact (sampler, noise and window generators, optimizer, EMA, metrics).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rewards import RewardOutput, build_reward
from rewards.async_reward import AsyncReward
from rewards.judges.base import JudgeError
from rewards.rubric_set import RubricSetError
from rl.advantages import PromptStatTracker
from rl.algorithms import build_algorithm
from rl.checkpoint import (
    CheckpointManager,
    UntrustedCheckpointError,
    checkpoint_name,
    gather_objects,
    register_lora_hooks,
)
from rl.config import (
    ConfigError,
    TrainConfig,
    TrainSection,
    check_entry,
    parse_config,
    register_resolvers,
)
from rl.distributed import (
    LaunchError,
    configure_deepspeed,
    distributed_state,
    gathered,
    held_share,
    whole_numel,
    zero_stage,
)
from rl.ema import EMA
from rl.families import model_spec
from rl.guards import (
    RewardGuard,
    StepGuard,
    TimeLimitedReward,
    TrainingStopped,
    check_finite,
    exit_with,
)
from rl.heldout import CURVE_FILE as HELDOUT_CURVE
from rl.heldout import HeldOutEvaluator, eval_rollout_config, plot_heldout
from rl.lora import ReferencePolicy, base_model_name, export_lora, make_trainable
from rl.loss import StepLoss
from rl.metrics import MetricsFileError, RunLogger, read_rows
from rl.models import (
    ModelFolderError,
    apply_precision,
    compile_transformer_blocks,
    load_pipeline,
    precision_plan,
)
from rl.redact import protect_run
from rl.rollout import PromptCache, Rollout, move_text_encoders, sample
from rl.sampler import GroupLayout, GroupSampler, SamplerConfigError, load_prompts

log = logging.getLogger(__name__)

LOSS_METRICS = ("policy_loss", "kl", "clipfrac", "approx_kl")  # epoch means
MAX_METRICS = ("log_ratio_abs_max", "onpolicy_log_ratio_abs_max")  # epoch maxima over ranks
PROMPT_CACHE_SOURCES = {
    "encoded": "encoded once",
    "encoded+written": "encoded once and written to rollout.prompt_cache_dir",
    "disk": "read from rollout.prompt_cache_dir (no encoder ran)",
}
# Per-rank generator seeds: distinct per rank and purpose, fixed by the run seed.
NOISE_STREAM, SHUFFLE_STREAM, WINDOW_STREAM, ALGORITHM_STREAM = 1, 2, 3, 4


def rank_seed(seed: int, rank: int, stream: int) -> int:
    return seed * 1_000_003 + rank * 101 + stream


class FlowGRPOTrainer:
    """The training recipe. ``FlowGRPOTrainer(cfg, run_dir).run()`` does everything."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, raw_config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.raw_config = raw_config

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything cheap and checkable first (prompts, batch arithmetic), then the models,
        then the optimizer and trainer state, and last the resume."""
        self._setup_data()
        self._setup_models()
        self._setup_optimization()
        self.checkpoints = CheckpointManager(
            self.accelerator,
            self.run_dir / "checkpoints",
            self.cfg.checkpoint.keep_last,
            frozen_base=not self.cfg.lora.full_finetune,
            trained=self.params,
        )
        self.logger = RunLogger(
            self.run_dir, asdict(self.cfg.logger), self.raw_config, self.is_main
        )
        resume_from = self.checkpoints.resolve(self.cfg.resume)
        self.last_good: Path | None = resume_from  # named when the run stops itself
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self._log_plan()

    def _setup_data(self) -> None:
        """Prompts, the group sampler and the accelerator (its accumulation follows the plan)."""
        cfg, t = self.cfg, self.cfg.train
        state = distributed_state()
        self.prompts, self.metadata = load_prompts(cfg.data.prompts, cfg.data.prompt_file)
        self.layout, self.micro_batches = epoch_plan(t, len(self.prompts), state.num_processes)
        self.sampler = GroupSampler(self.layout, rank=state.process_index, seed=cfg.seed)
        # the algorithm (conf/algorithm/) says which steps a rollout trains and how they turn into
        # a loss; accumulation spans its largest number of trained steps per rollout
        self.algorithm = build_algorithm(cfg.algorithm, cfg.rollout)
        self.num_train_steps = self.algorithm.max_train_steps
        accumulation = self.micro_batches // t.optimizer_steps_per_epoch * self.num_train_steps
        # a family whose LoRA targets include modules the loss never reaches (Qwen-Image's last
        # block's text stream) has DDP look for them; ZeRO needs nothing
        unused = model_spec(cfg.model.get("name")).family.unused_in_loss
        self.accelerator = acc = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=accumulation,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        )
        if acc.gradient_accumulation_steps != accumulation:
            raise LaunchError(
                f"the launcher set gradient accumulation to {acc.gradient_accumulation_steps} "
                f"(ACCELERATE_GRADIENT_ACCUMULATION_STEPS / --gradient_accumulation_steps); the "
                f"trainer derives it ({accumulation}) from train.optimizer_steps_per_epoch: drop it"
            )
        configure_deepspeed(acc, t.micro_batch_size, t.max_grad_norm)
        if zero_stage(acc) == 3:
            refuse_under_zero3(cfg)
        self.is_main = acc.is_main_process
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _setup_models(self) -> None:
        """The pipeline (a model folder is checked before any weights load), the reward, and the
        trained parameters with their KL reference."""
        cfg, t, acc = self.cfg, self.cfg.train, self.accelerator
        self.threads_before = torch.get_num_threads()
        if t.num_threads is not None:
            torch.set_num_threads(t.num_threads)
        self.tf32_before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = t.allow_tf32  # flow_grpo train_sd3.py l. 449-450
        set_seed(cfg.seed)  # identical LoRA init on every rank
        pipe = load_pipeline(cfg.model)  # checks a model folder before any weights load
        reward = build_reward(cfg.reward)
        reward.check_prompts(self.prompts, self.metadata)  # e.g. OCR: each needs a "text"
        # a hung judge costs at most train.reward_timeout_s per call (rl/guards.py)
        self.reward = TimeLimitedReward(reward, t.reward_timeout_s)
        # held-out rewards (eval_rewards): built on rank 0 only, and only when listed
        wanted = bool(cfg.eval_rewards.rewards) and acc.is_main_process
        self.heldout = HeldOutEvaluator(cfg.eval_rewards, self.prompts) if wanted else None
        self.precision = precision_plan(t.mixed_precision, cfg.model.get("dtype") or "float32")
        apply_precision(pipe, self.precision)
        pipe.vae.to(acc.device)
        move_text_encoders(pipe, acc.device)
        self.pipe = pipe

        transformer = pipe.transformer.to(acc.device)
        self.params = make_trainable(transformer, cfg.lora)
        self.algorithm.bind(self.params, rank_seed(cfg.seed, acc.process_index, ALGORITHM_STREAM))
        # beta = 0 (the fast preset): no reference policy, so its forward never runs
        self.reference = ReferencePolicy(transformer, cfg.lora) if t.beta > 0 else None
        if t.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if t.compile:
            compile_transformer_blocks(transformer, t.compile_backend)
        self.transformer = transformer
        self._setup_prompt_cache()

    def _setup_prompt_cache(self) -> None:
        """Mode "all": every unique prompt (and the CFG negative "") encoded once, then the text
        encoders leave the accelerator. Mode "epoch": a fresh cache per epoch (see sample_epoch)."""
        r = self.cfg.rollout
        unique = list(dict.fromkeys(self.prompts))
        self.cache_mode = r.cache_mode(len(unique))
        self.cache = self.new_prompt_cache()
        self.release_text_encoders = r.release_text_encoders
        if self.release_text_encoders is None:
            self.release_text_encoders = self.cache.family.release_text_encoders
        if self.cache_mode == "all":
            negative = self.cache.negative_prompts(r.guidance_scale)
            self.prompt_cache_source = self.cache.fill(
                unique + negative, r.prompt_cache_dir, self.cfg.model, self.is_main, self.is_main
            )
            self.cache.offload_text_encoders()
        elif self.release_text_encoders:
            self.cache.offload_text_encoders()

    def new_prompt_cache(self) -> PromptCache:
        r, device = self.cfg.rollout, self.accelerator.device
        on_device = self.cache_mode == "epoch" or r.prompt_cache_on_device
        return PromptCache(
            self.pipe, r.max_sequence_length, device, store_device=device if on_device else "cpu"
        )

    def _setup_optimization(self) -> None:
        """AdamW, accelerate's wrapping, EMA, the advantage tracker and the generators."""
        cfg, t, acc = self.cfg, self.cfg.train, self.accelerator
        optimizer = torch.optim.AdamW(
            self.params,
            lr=t.learning_rate,
            betas=tuple(t.adam_betas),
            weight_decay=t.adam_weight_decay,
            eps=t.adam_epsilon,
        )
        if not cfg.lora.full_finetune:
            register_lora_hooks(acc)
        self.transformer, self.optimizer = acc.prepare(self.transformer, optimizer)
        self.ema = (
            EMA(self.params, cfg.ema.decay, cfg.ema.update_every, cfg.ema.repeat)
            if cfg.ema.enabled
            else None
        )
        self.tracker = PromptStatTracker(global_std=t.global_std)
        rank = acc.process_index
        self.noise_gen = torch.Generator().manual_seed(rank_seed(cfg.seed, rank, NOISE_STREAM))
        self.shuffle_gen = torch.Generator().manual_seed(rank_seed(cfg.seed, rank, SHUFFLE_STREAM))
        # the fast variant's per-batch SDE window; per rank, as the reference's python RNG
        self.window_gen = torch.Generator().manual_seed(rank_seed(cfg.seed, rank, WINDOW_STREAM))
        self.start_epoch, self.optimizer_step = 0, 0
        self.scorer = AsyncReward(self.reward) if t.reward_in_background else None
        self.reward_guard = RewardGuard(
            self.reward.name, t.max_failed_reward_share, t.max_failed_epochs
        )
        self.step_guard = StepGuard(t.max_nonfinite_steps)

    def _log_plan(self) -> None:
        t, acc = self.cfg.train, self.accelerator
        if self.is_main:
            log.info(
                "run folder %s | %d processes | %d prompts | %d images/epoch in %d batches of "
                "%d per process | %d trained steps | %d trainable parameters | weights: "
                "transformer %s, VAE %s, text encoders %s, mixed precision %s%s",
                self.run_dir,
                acc.num_processes,
                len(self.prompts),
                self.layout.images_per_epoch,
                self.layout.batches_per_epoch,
                t.batch_size,
                self.num_train_steps,
                sum(whole_numel(p) for p in self.params),
                *(str(d).removeprefix("torch.") for d in vars(self.precision).values()),
                t.mixed_precision,
                "" if t.mixed_precision != "fp16" or acc.device.type != "cpu" else
                " (accelerate runs no fp16 autocast on the CPU: float32 compute)",
            )  # fmt: skip
            if zero_stage(acc) == 3:
                held, total = held_share(acc.unwrap_model(self.transformer))
                log.info(
                    "ZeRO-3: this process holds %d of the transformer's %d parameters (%.1f%%), "
                    "frozen base included",
                    held,
                    total,
                    100 * held / total,
                )
            r = self.cfg.rollout
            if self.cache_mode == "all":
                log.info(
                    "prompt cache: all | %d prompts (with the negative) %s, %.1f MB "
                    "on %s | text encoders moved to the CPU",
                    len(self.cache),
                    PROMPT_CACHE_SOURCES[self.prompt_cache_source],
                    self.cache.nbytes / 2**20,
                    self.cache.store_device,
                )
            else:
                log.info(
                    "prompt cache: epoch | each epoch's prompts are encoded in a cache dropped "
                    "after the epoch (rollout.prompt_cache=%s, %d unique prompts, limit %d)",
                    r.prompt_cache,
                    len(set(self.prompts)),
                    r.prompt_cache_max_prompts,
                )

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        epochs = range(self.start_epoch, self.cfg.train.epochs)
        for epoch in tqdm(epochs, desc="epochs", disable=not self.is_main):
            timer = PhaseTimer()
            with timer("sample_s"):
                rollout, group_ids, scores = self.sample_epoch()
            with timer("advantages_s"):
                advantages, row = self.epoch_advantages(group_ids, scores)
            # a failed epoch (too many NaN rewards) is neither trained on nor checkpointed
            usable = self.rewards_usable(epoch + 1, row)
            with timer("train_s"):
                if usable:
                    row |= self.train_epoch(rollout, advantages, ~torch.isnan(scores.scores))
                    row |= self.algorithm.end_epoch(self.optimizer_step)
                else:
                    row |= self.no_update()
            done = epoch + 1  # epochs are numbered by how many are done, as checkpoints are
            row = {"epoch": done, **row}
            if self.sample_images_due(done):
                self.logger.save_samples(done, *self.sample_preview(rollout, scores))
            row |= timer.seconds
            row["images_per_s"] = self.layout.images_per_epoch / timer.seconds["sample_s"]
            checkpointed = done % self.cfg.checkpoint.every_n_epochs == 0
            checkpointed = checkpointed or done == self.cfg.train.epochs
            with timer("eval_s"):  # before the checkpoint, which saves the divergence history
                row |= self.heldout_rewards(done, checkpointed)
            with timer("checkpoint_s"):
                if usable and checkpointed:
                    self.save(done, row)
            with timer("eval_s"):
                row |= self.maybe_evaluate(done)
            self.logger.log_epoch(row | timer.seconds)

    def sample_epoch(self) -> tuple[Rollout, torch.Tensor, RewardOutput]:
        """Sample this rank's batches of the next epoch; return them, their prompt (group) ids
        and their rewards (scored in a background thread if configured)."""
        unwrapped = self.accelerator.unwrap_model(self.transformer)
        unwrapped.eval()  # as the reference; one mode per phase also keeps compiled graphs few
        rollouts: list[Rollout] = []
        pending: list[Future | RewardOutput] = []
        epoch = self.sampler.next_epoch
        batches = self.sampler.next_epoch_batches()
        if self.cache_mode == "epoch":
            # memory bounded by the epoch's prompts, not by a data set of tens of thousands;
            # encoded here, outside the autocast below, as the reference's compute_text_embeddings
            # (fp16 text encoders then compute in fp16, not in autocast's choice of dtypes)
            self.cache = self.new_prompt_cache()
            epoch_prompts = [self.prompts[i] for indices in batches for i in indices]
            negative = self.cache.negative_prompts(self.cfg.rollout.guidance_scale)
            if self.release_text_encoders:  # on the accelerator only while encoding
                self.cache.encode_released(epoch_prompts + negative)
            else:
                self.cache.encode_all(epoch_prompts + negative)
        algorithm = self.algorithm
        for indices in tqdm(batches, desc="sampling", leave=False, disable=not self.is_main):
            prompts = [self.prompts[i] for i in indices]
            start = self.group_start_noise(epoch, indices) if self.cfg.train.same_latent else None
            window = algorithm.epoch_window(epoch, self.window_gen)
            with self.accelerator.autocast(), algorithm.sampling_weights():
                rollout = sample(
                    self.pipe,
                    unwrapped,
                    self.cache,
                    prompts,
                    algorithm.rollout_config(window),
                    self.noise_gen,
                    latents=start,
                    window=window,
                    record_means=algorithm.record_means,
                    ode_solver=algorithm.ode_solver(),
                )
            metadata = [self.metadata[i] for i in indices]
            if self.scorer is not None:
                pending.append(self.scorer.submit(rollout.images, prompts, metadata))
            else:
                pending.append(self.reward(rollout.images, prompts, metadata))
            rollouts.append(rollout)
        outputs = [p.result() if isinstance(p, Future) else p for p in pending]
        if self.cache_mode == "epoch" and epoch == self.start_epoch and self.is_main:
            log.info("prompt cache: epoch | %.1f MB this epoch", self.cache.nbytes / 2**20)
        group_ids = torch.tensor([i for indices in batches for i in indices])
        return Rollout.cat(rollouts), group_ids, concat_reward_outputs(outputs)

    def group_start_noise(self, epoch: int, indices: list[int]) -> torch.Tensor:
        """One start noise per group, the same on whichever rank a member lands: it is drawn
        from (seed, epoch, prompt index), never from a rank's generator."""
        r = self.cfg.rollout
        shape = self.cache.family.latent_shape(self.pipe, r.height, r.width)
        seeds = [hash((self.cfg.seed, epoch, i)) & (2**63 - 1) for i in indices]  # int hash: stable
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(noise).to(self.accelerator.device)

    def epoch_advantages(
        self, group_ids: torch.Tensor, scores: RewardOutput
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Gather every rank's rewards, compute group advantages, return this rank's share and
        the epoch's reward and group statistics."""
        acc = self.accelerator
        rewards = acc.gather(scores.scores.to(acc.device)).cpu()
        advantages, stats = self.tracker.advantages(
            rewards, acc.gather(group_ids.to(acc.device)).cpu()
        )
        valid = rewards[~torch.isnan(rewards)]
        stats["reward_mean"] = float(valid.mean()) if valid.numel() else math.nan
        stats["reward_std"] = float(valid.std(correction=0)) if valid.numel() else math.nan
        for name, values in sorted(scores.details.items()):
            stats[f"reward/{name}"] = float(acc.gather(values.to(acc.device)).nanmean())
        for reason, count in gather_failures(acc, scores.failures).items():
            stats[f"reward_failures/{reason}"] = float(count)
        local = group_ids.numel()
        mine = advantages[acc.process_index * local : (acc.process_index + 1) * local]
        return mine, stats

    def rewards_usable(self, epochs_done: int, row: dict[str, Any]) -> bool:
        """Whether this epoch's rewards may be trained on (rl/guards.py: RewardGuard); adds
        ``reward_failed_share`` to ``row``. Raises TrainingStopped at the failed-epoch limit."""
        total = self.layout.images_per_epoch
        failed = int(row.get("reward_nan", 0))
        row["reward_failed_share"] = failed / total
        prefix = "reward_failures/"
        reasons = Counter(
            {k.removeprefix(prefix): int(v) for k, v in row.items() if k.startswith(prefix)}
        )
        return self.reward_guard.check(epochs_done, failed, total, reasons, self.last_good_name())

    def last_good_name(self) -> str:
        return str(self.last_good) if self.last_good is not None else "none (nothing saved)"

    def no_update(self) -> dict[str, float]:
        """The training metrics of an epoch without an update."""
        skipped = dict.fromkeys(LOSS_METRICS + ("grad_norm", *MAX_METRICS), math.nan)
        return skipped | {
            "kept_samples": 0.0,
            "nonfinite_steps": 0.0,
            "optimizer_step": float(self.optimizer_step),
        }

    def train_epoch(
        self, rollout: Rollout, advantages: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, float]:
        """One inner epoch over this rank's samples with non-zero advantage (with a valid reward,
        for an algorithm that trains zero advantages too), every trained step.

        The kept samples are split into the same number of micro-batches on every rank (a rank
        that runs out trains a weight-0 stand-in), and gradients accumulate over
        ``micro_batches / optimizer_steps_per_epoch`` micro-batches x all trained steps. The EMA
        steps after every optimizer step.
        """
        t, acc = self.cfg.train, self.accelerator
        rollout = self.algorithm.prepare_training(rollout)
        num_steps = self.algorithm.train_steps_this_epoch(rollout)
        mask = valid if self.algorithm.trains_zero_advantage else advantages != 0
        keep = mask.nonzero().flatten()
        kept = int(acc.gather(torch.tensor([keep.numel()], device=acc.device)).sum())
        if kept == 0 or num_steps == 0:
            log.warning("nothing to train this epoch (no kept sample or no window step)")
            return self.no_update()
        if t.shuffle_samples:
            keep = keep[torch.randperm(keep.numel(), generator=self.shuffle_gen)]
        means: dict[str, float] = dict.fromkeys(LOSS_METRICS, 0.0)
        maxima: dict[str, float] = dict.fromkeys(MAX_METRICS, 0.0)
        grad_norms: list[float] = []
        nonfinite_steps = 0
        first_step = self.optimizer_step
        self.transformer.train()
        # compiled blocks keep static shapes: every micro-batch padded to the largest possible
        pad_to = -(-self.layout.batches_per_epoch * t.batch_size // self.micro_batches)
        chunks = micro_batch_chunks(keep, self.micro_batches, pad_to if t.compile else None)
        self.set_accumulation(num_steps)
        for chunk, weight in tqdm(chunks, desc="training", leave=False, disable=not self.is_main):
            weight = weight.to(acc.device)
            batch, batch_advantages = rollout.select(chunk), advantages[chunk].to(acc.device)
            for position in range(num_steps):
                with acc.accumulate(self.transformer):
                    out = self.step_loss(batch, position, batch_advantages, weight)
                    self.step_guard.saw_loss(out.loss)
                    acc.backward(out.loss)
                    stepped = True
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(self.params, t.max_grad_norm)
                        # a non-finite loss or gradient skips the step (rl/guards.py)
                        stepped = self.step_guard.step_ok(acc, grad_norm, self.last_good_name())
                        nonfinite_steps += not stepped
                        if stepped and grad_norm is not None:  # DeepSpeed reports its own
                            grad_norms.append(float(grad_norm))
                    if stepped or acc.scaler is not None:  # fp16's scaler skips it itself
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                log_ratio = float(out.log_ratio_abs_max)
                maxima["log_ratio_abs_max"] = max(maxima["log_ratio_abs_max"], log_ratio)
                if self.optimizer_step == first_step:  # still the rollout's own weights
                    onpolicy = maxima["onpolicy_log_ratio_abs_max"]
                    maxima["onpolicy_log_ratio_abs_max"] = max(onpolicy, log_ratio)
                if acc.sync_gradients and stepped:
                    self.optimizer_step += 1
                    if self.ema is not None:  # one EMA event per optimizer step
                        self.ema.step(self.optimizer_step)
                for name in LOSS_METRICS:
                    means[name] += float(getattr(out, name)) / (len(chunks) * num_steps)
        means["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        stats = {k: reduce_scalar(acc, v, "mean") for k, v in means.items()}
        stats |= {k: reduce_scalar(acc, v, "max") for k, v in maxima.items()}
        return stats | {
            "kept_samples": float(kept),
            "nonfinite_steps": float(nonfinite_steps),
            "optimizer_step": float(self.optimizer_step),
        }

    def step_loss(
        self, batch: Rollout, position: int, advantages: torch.Tensor, weight: torch.Tensor
    ) -> StepLoss:
        """Loss of the ``position``-th trained step of one micro-batch: the algorithm's."""
        return self.algorithm.step_loss(self, batch, position, advantages, weight)

    def set_accumulation(self, num_steps: int) -> None:
        """Accumulate over this epoch's micro-batches x ``num_steps`` trained steps (fewer than
        planned only where an algorithm's window shrinks, as MixGRPO's at its tail)."""
        acc = self.accelerator
        steps = self.micro_batches // self.cfg.train.optimizer_steps_per_epoch * num_steps
        if steps != acc.gradient_accumulation_steps:
            if acc.distributed_type == DistributedType.DEEPSPEED:
                raise LaunchError(
                    f"this epoch trains {num_steps} steps instead of {self.num_train_steps}, and "
                    "DeepSpeed fixes gradient accumulation at launch: keep the run inside the "
                    "algorithm's full-size windows (e.g. fewer epochs)"
                )
            acc.gradient_accumulation_steps = steps

    def sample_images_due(self, epochs_done: int) -> bool:
        """Sample grids after the first epoch, every ``log.sample_every_n_epochs`` and the last."""
        every = self.cfg.log.sample_every_n_epochs
        last = epochs_done == self.cfg.train.epochs
        return every > 0 and (epochs_done == 1 or epochs_done % every == 0 or last)

    def sample_preview(
        self, rollout: Rollout, scores: RewardOutput
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        n = self.cfg.log.num_sample_images
        return rollout.images[:n], rollout.prompts[:n], scores.scores[:n]

    def maybe_evaluate(self, epochs_done: int) -> dict[str, float]:
        """Run the eval hook (rank 0) every ``eval_hook.every_n_epochs`` epochs, at this run's
        resolution, guidance and evaluation steps unless the hook sets its own."""
        every = int(self.cfg.eval_hook.get("every_n_epochs") or 0)
        if every <= 0 or epochs_done % every:
            return {}
        results: dict[str, float] = {}
        if self.is_main:
            from eval.after_checkpoint import evaluate_pipeline, run_generation

            out_dir = self.run_dir / "eval" / checkpoint_name(epochs_done)
            hook, run = OmegaConf.create(self.cfg.eval_hook), run_generation(self.cfg.rollout)
            with self.trained_weights(), self.cache.text_encoders_on_device():
                results = evaluate_pipeline(self.pipe, hook, out_dir, epochs_done, run)
        self.accelerator.wait_for_everyone()
        return results

    def heldout_rewards(self, epochs_done: int, checkpointed: bool) -> dict[str, float]:
        """Rank 0: sample the eval prompts by the ODE from fixed noise with the trained weights and
        score them with the training and held-out rewards (rl/heldout.py); {} when not due."""
        section = self.cfg.eval_rewards
        every = section.every_n_epochs
        due = checkpointed or (every > 0 and epochs_done % every == 0)
        if not section.rewards or not due:
            return {}
        row: dict[str, float] = {}
        if self.heldout is not None:
            unwrapped = self.accelerator.unwrap_model(self.transformer)
            unwrapped.eval()
            prompts, size = self.heldout.prompts, self.cfg.train.batch_size
            generator = torch.Generator().manual_seed(section.seed)
            rollout_cfg = eval_rollout_config(self.cfg.rollout)
            images = []
            with self.trained_weights(), self.accelerator.autocast():
                for i in range(0, len(prompts), size):
                    chunk = prompts[i : i + size]
                    out = sample(self.pipe, unwrapped, self.cache, chunk, rollout_cfg, generator)
                    images.append(out.images)
            row = self.heldout.evaluate(torch.cat(images), self.reward)
        self.accelerator.wait_for_everyone()
        return row

    def trained_weights(self):
        """The weights to export and evaluate: the EMA's when enabled, else the live ones."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ save / resume
    def save(self, epochs_done: int, row: dict[str, Any]) -> None:
        """Checkpoint after ``epochs_done`` epochs (all ranks), with the LoRA exported inside;
        weights that are not finite stop the run instead (never checkpointed)."""
        what = f"checkpoint after epoch {epochs_done}"
        with gathered(self.accelerator, self.params):  # ZeRO-3: whole on every process
            check_finite(self.params, what, self.last_good_name())
        if self.ema is not None:
            shadow = self.ema.state_dict()["shadow"]
            check_finite(shadow, f"{what} (EMA)", self.last_good_name())
        state = {
            "epochs_done": epochs_done,
            "optimizer_step": self.optimizer_step,
            "sampler": self.sampler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "algorithm": self.algorithm.state_dict(),
            "heldout": self.heldout.monitor.state_dict() if self.heldout is not None else None,
            "metrics_row": row,
            "per_rank": {
                "noise_gen": self.noise_gen.get_state(),
                "shuffle_gen": self.shuffle_gen.get_state(),
                "window_gen": self.window_gen.get_state(),
                "global_rng": global_rng_state(),
            },
        }
        # full fine-tuning: accelerate's state already holds the whole transformer
        full = self.cfg.lora.full_finetune
        export = None if full else lambda to: self.export(to, epochs_done)
        self.last_good = self.checkpoints.save(epochs_done, state, export)

    def load_checkpoint(self, path: Path) -> None:
        state = self.checkpoints.load(path)
        self.start_epoch = state["epochs_done"]
        self.optimizer_step = state["optimizer_step"]
        self.sampler.load_state_dict(state["sampler"])
        self.algorithm.load_state_dict(state.get("algorithm", {}))
        if self.heldout is not None and state.get("heldout") is not None:
            self.heldout.monitor.load_state_dict(state["heldout"])
        self.tracker.load_state_dict(state["tracker"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{path} has no EMA state but ema.enabled=true")
            self.ema.load_state_dict(state["ema"])
        self.noise_gen.set_state(state["per_rank"]["noise_gen"])
        self.shuffle_gen.set_state(state["per_rank"]["shuffle_gen"])
        self.window_gen.set_state(state["per_rank"]["window_gen"])
        set_global_rng_state(state["per_rank"]["global_rng"])
        self.logger.restore(self.start_epoch, state["metrics_row"])
        if self.is_main:
            log.info("resumed from %s after %d epochs", path, self.start_epoch)

    def export(self, folder: Path, epochs_done: int) -> None:
        """Rank 0: the LoRA (``lora/``) or, for full fine-tuning, the transformer."""
        transformer = self.accelerator.unwrap_model(self.transformer)
        with self.trained_weights():
            check_finite(self.params, f"export after epoch {epochs_done}", self.last_good_name())
            if self.cfg.lora.full_finetune:
                transformer.save_pretrained(folder / "transformer")
                return
            export_lora(
                transformer,
                self.pipe,
                folder / "lora",
                base_model=base_model_name(self.cfg.model),
                reward=str(self.cfg.reward.get("_target_", "reward")),
                epoch=epochs_done,
                settings=self.cfg.lora,
            )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Final export and reward curve (rank 0); stop the scoring thread; free the reward."""
        with gathered(self.accelerator, self.params):  # ZeRO-3: the whole LoRA on every process
            if self.is_main:
                self.export(self.run_dir, self.cfg.train.epochs)
        if self.is_main:
            self.logger.finish()
            if self.heldout is not None:
                plot_heldout(read_rows(self.logger.path), self.run_dir / HELDOUT_CURVE)
            log.info("done; metrics, samples, checkpoints and the LoRA are in %s", self.run_dir)
        if self.scorer is not None:
            self.scorer.close()
        self.reward.release()
        if self.heldout is not None:
            self.heldout.release()
        self.accelerator.end_training()
        torch.set_num_threads(self.threads_before)
        torch.backends.cuda.matmul.allow_tf32 = self.tf32_before

    def run(self) -> None:
        self.setup()
        self.train()
        self.accelerator.wait_for_everyone()
        self.cleanup()


class PhaseTimer:
    """Wall-clock seconds per named phase: ``with timer("train_s"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def refuse_under_zero3(cfg: TrainConfig) -> None:
    """Raise LaunchError naming the settings a ZeRO-3 launch cannot run: the EMA's whole shadow
    copy of weights that ZeRO-3 partitions (DiffusionNFT's old policy is one too), and the eval
    hook and held-out rewards, which generate on rank 0 alone while every forward of a
    partitioned model needs all processes."""
    every = int(cfg.eval_hook.get("every_n_epochs") or 0)
    wanted = {
        "ema.enabled=true": cfg.ema.enabled,
        "algorithm=diffusion_nft (its old policy is such a copy)": cfg.algorithm.name
        == "diffusion_nft",
        f"eval_hook.every_n_epochs={every}": every > 0,
        "eval_rewards.rewards": bool(cfg.eval_rewards.rewards),
    }
    unsupported = [name for name, on in wanted.items() if on]
    if unsupported:
        raise LaunchError(
            f"DeepSpeed ZeRO-3 cannot run {', '.join(unsupported)}: turn them off, and evaluate "
            "the exported LoRA afterwards (python -m eval.checkpoints)"
        )


def epoch_plan(t: TrainSection, num_prompts: int, num_processes: int) -> tuple[GroupLayout, int]:
    """The epoch's group layout and each process's training micro-batches per epoch.

    Raises SamplerConfigError or ConfigError, naming the numbers, when ``num_processes`` cannot
    split the epoch into whole batches or the micro-batches into ``optimizer_steps_per_epoch``.
    """
    layout = GroupLayout(
        num_prompts=num_prompts,
        group_size=t.group_size,
        groups_per_epoch=t.groups_per_epoch,
        batch_size=t.batch_size,
        num_processes=num_processes,
    )
    layout.validate()
    micro_batches = layout.batches_per_epoch * math.ceil(t.batch_size / t.micro_batch_size)
    if micro_batches % t.optimizer_steps_per_epoch:
        raise ConfigError(
            f"train.optimizer_steps_per_epoch={t.optimizer_steps_per_epoch} does not divide "
            f"the {micro_batches} training micro-batches per epoch on {num_processes} processes "
            f"({layout.batches_per_epoch} batches x ceil(batch_size {t.batch_size} / "
            f"micro_batch_size {t.micro_batch_size}))"
        )
    return layout, micro_batches


def micro_batch_chunks(
    keep: torch.Tensor, count: int, pad_to: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``keep`` (sample indices) cut into ``count`` near-equal micro-batches with per-row weights.

    Every micro-batch has at least one row, so every rank runs the same number of forwards and
    backwards: an empty one becomes a weight-0 stand-in (sample 0). With ``pad_to``, each is
    filled up to that many rows with weight-0 stand-ins (fixed shapes for compiled blocks).
    """
    chunks = []
    for chunk in torch.tensor_split(keep, count):
        weight = torch.ones(chunk.numel())
        rows = max(1, pad_to or 0) - chunk.numel()
        if rows > 0:
            chunk = torch.cat([chunk, torch.zeros(rows, dtype=torch.long)])
            weight = torch.cat([weight, torch.zeros(rows)])
        chunks.append((chunk, weight))
    return chunks


def reduce_scalar(accelerator: Accelerator, value: float, op: str) -> float:
    """A float reduced over ranks ("mean" or "max")."""
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), op))


def global_rng_state() -> dict[str, Any]:
    """This process's global RNGs (accelerate's save_state keeps only rank 0's)."""
    return {
        "python": random.getstate(),
        "numpy": numpy_state_plain(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def numpy_state_plain() -> tuple:
    """numpy's global RNG state with its key array as a tensor, so that the trainer state loads
    with ``torch.load(weights_only=True)`` (no numpy objects to unpickle)."""
    name, keys, *rest = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), *rest)


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def concat_reward_outputs(outputs: list[RewardOutput]) -> RewardOutput:
    """Join per-batch reward outputs into one (a detail missing from a batch, e.g. one that
    failed as a whole, is NaN there)."""
    failures: Counter = Counter()
    for out in outputs:
        failures.update(out.failures)
    names = dict.fromkeys(n for o in outputs for n in o.details)

    def detail(out: RewardOutput, name: str) -> torch.Tensor:
        return out.details.get(name, torch.full_like(out.scores, math.nan))

    return RewardOutput(
        scores=torch.cat([o.scores for o in outputs]),
        details={n: torch.cat([detail(o, n) for o in outputs]) for n in names},
        failures=failures,
    )


def gather_failures(accelerator: Accelerator, failures: Counter) -> Counter:
    """Sum the per-rank failure counters."""
    total: Counter = Counter()
    for counter in gather_objects(accelerator, dict(failures)):
        total.update(counter)
    return total


USER_ERRORS = (
    ConfigError,
    LaunchError,
    SamplerConfigError,
    ModelFolderError,
    FileNotFoundError,
    UntrustedCheckpointError,
    MetricsFileError,
    JudgeError,  # e.g. the judge server is not up at start-up
    RubricSetError,  # e.g. a weight that is infinite in float32
    TrainingStopped,  # a failing reward or non-finite training: why, and the last good checkpoint
)

register_resolvers()


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    trainer = None
    try:
        check_entry(cfg, hydra_cfg.runtime.choices.get("experiment"))
        train_cfg = parse_config(cfg)
        run_dir = Path(hydra_cfg.runtime.output_dir)
        # secrets (judge.api_key, ...) leave argv, Hydra's files and the logs; wandb gets the
        # redacted config
        config = protect_run(OmegaConf.to_container(cfg, resolve=True), run_dir)
        trainer = FlowGRPOTrainer(train_cfg, run_dir, config)
        trainer.run()
    except USER_ERRORS as err:  # a mistake in the input: its message, not a traceback
        exit_with(f"error: {type(err).__name__}: {err}", getattr(trainer, "reward", None))


if __name__ == "__main__":
    main()
