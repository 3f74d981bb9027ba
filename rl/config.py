"""The schema of ``conf/train.yaml`` and its start-up validation.

Each section of the config is a dataclass below, every field documented. :func:`parse_config`
merges the composed Hydra config into these schemas (an unknown or mistyped key fails there, naming
the section and key), then checks the values and how they combine, and raises ONE
:class:`ConfigError` listing every problem, one line each, before anything heavy loads. The
``model``, ``reward``, ``judge`` and ``eval_hook`` nodes belong to their own builders and pass
through untouched; ``rollout`` is checked by building :class:`rl.rollout.RolloutConfig` and
``algorithm`` by :func:`rl.algorithms.parse_algorithm`, then against the rollout and train sections.

Also here: the OmegaConf resolvers that give a multi-process run ONE run folder (rank 0 picks the
timestamp and shares it) and keep Hydra's own files to rank 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl.lora import LoraSettings

MIXED_PRECISION = ("no", "bf16", "fp16")
LOGGER_MODES = ("online", "offline", "disabled")


class ConfigError(ValueError):
    """The train config is invalid; the message lists every problem, one per line."""


@dataclass
class DataSection:
    """Training prompts: exactly one of an inline list or a file (.txt lines / .jsonl "prompt")."""

    prompts: list[str] | None = None
    prompt_file: str | None = None


@dataclass
class TrainSection:
    """Flow-GRPO and optimisation settings (defaults: the reference SD3.5-M recipe)."""

    epochs: int = 100  # outer iterations: sample, score, compute advantages, train
    batch_size: int = 9  # images each process samples per batch
    micro_batch_size: int = 9  # images per training forward (<= batch_size; the reference: equal)
    group_size: int = 24  # K: images per prompt; advantages are relative within a group
    groups_per_epoch: int = 48  # distinct prompts per epoch; batches/epoch derive from processes
    optimizer_steps_per_epoch: int = 2  # gradient accumulation spans the rest
    learning_rate: float = 3e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    clip_range: float = 1e-4  # PPO ratio clip (log-probs are per-dimension means: tiny ratios)
    adv_clip_max: float = 5.0  # advantages are clamped to +- this
    beta: float = 0.04  # KL weight (0 disables the reference forward)
    kl_include_dt: bool = False  # False: the reference's KL (no dt); True: exact Gaussian KL
    global_std: bool = True  # advantage std over the whole epoch instead of per group
    # CFG training: the uncond velocity's gradient is cut (flow_grpo ac4c86e); False: 74db691's
    detach_uncond: bool = True
    allow_tf32: bool = True  # TF32 matmuls on CUDA during the run (flow_grpo config.allow_tf32)
    # no | bf16 | fp16 (autocast; trained params stay fp32). fp16 = the reference's SD3 layout:
    # float32 transformer and VAE, fp16 text encoders (needs model.dtype=float32); see rl.models
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (regional; static shapes)
    compile_backend: str = "inductor"  # torch.compile backend (e.g. aot_eager to debug)
    reward_in_background: bool = False  # score batch i in a thread while batch i+1 samples
    shuffle_samples: bool = True  # shuffle the epoch's samples before training
    num_threads: int | None = None  # torch CPU threads during the run (null: torch's default)
    same_latent: bool = False  # one start noise per group (drawn from seed, epoch and prompt)
    # What stops a run (rl/guards.py). An epoch with more than this share of NaN rewards is a
    # failed epoch (no update, no checkpoint); the default stops a dead judge in epoch 1.
    max_failed_reward_share: float = 0.5
    max_failed_epochs: int = 1  # failed epochs in a row that stop the run (exit 1, one line)
    reward_timeout_s: float | None = 300.0  # wall-time limit of one reward call (null: none)
    max_nonfinite_steps: int = 3  # skipped non-finite optimizer steps in a row that stop it


@dataclass
class EmaSection:
    """EMA of the trained weights, used for exports and evaluation when enabled (rl/ema.py:
    flow_grpo's warm-up min((1 + s) / (10 + s), decay) and cadence, one event per optimizer step
    applying ``repeat`` updates)."""

    enabled: bool = True  # flow_grpo's SD3 configs (config/grpo.py train.ema = True)
    decay: float = 0.9
    update_every: int = 8  # updates when (optimizer steps done + 1) % update_every == 0
    repeat: int = 2  # updates per event: the reference's micro-batches per step at 32 GPUs


@dataclass
class CheckpointSection:
    """Checkpoints (accelerate state + trainer state) under <run>/checkpoints/."""

    every_n_epochs: int = 10  # and always after the last epoch
    keep_last: int | None = 3  # older complete checkpoints are deleted; null keeps all


@dataclass
class LogSection:
    """What is written besides metrics.jsonl."""

    sample_every_n_epochs: int = 10  # sample grid PNG (0 = never); also after epoch 1 and the last
    num_sample_images: int = 16  # images per grid (from rank 0's first batches)


@dataclass
class LoggerSection:
    """wandb settings (conf/logger/)."""

    mode: str = "disabled"  # online | offline | disabled
    project: str = "autorubric-rl"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """The whole, validated train config."""

    seed: int
    resume: str | None
    data: DataSection
    rollout: Any  # rl.rollout.RolloutConfig
    algorithm: Any  # the settings dataclass of rl.algorithms (conf/algorithm/)
    train: TrainSection
    lora: LoraSettings
    ema: EmaSection
    checkpoint: CheckpointSection
    log: LogSection
    logger: LoggerSection
    model: dict[str, Any]
    reward: DictConfig  # kept as a node: it may interpolate the root (e.g. ${judge})
    eval_hook: dict[str, Any]
    eval_rewards: Any  # rl.heldout.EvalRewardsSection, its rewards kept as config nodes


SCHEMAS = {
    "data": DataSection,
    "train": TrainSection,
    "lora": LoraSettings,
    "ema": EmaSection,
    "checkpoint": CheckpointSection,
    "log": LogSection,
    "logger": LoggerSection,
}


def check_entry(cfg: DictConfig, experiment: str | None) -> None:
    """Fail when an experiment preset of another entry was selected (e.g. experiment=synthetic)."""
    entry = cfg.get("entry")
    if entry != "train":
        name = f"experiment={experiment}" if experiment else f"entry={entry}"
        raise ConfigError(f"{name} is a preset for {entry_module(entry)}, not rl.train")


def entry_module(entry: Any) -> str:
    modules = {"learn": "rubric_learning.learn", "train": "rl.train"}
    return modules.get(entry, f"eval.{entry}")


def parse_config(cfg: DictConfig) -> TrainConfig:
    """Validate ``cfg`` against the schemas; raise one ConfigError listing every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for name, schema in SCHEMAS.items():
        try:
            node = cfg.get(name)
            # resolved in place first: a value may interpolate the root (${model.name})
            node = OmegaConf.to_container(node, resolve=True) if node is not None else {}
            merged = OmegaConf.merge(OmegaConf.structured(schema), node)
            sections[name] = OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            problems.append(f"{name}: {str(err).splitlines()[0]}")
            sections[name] = schema()
    rollout = None
    try:
        from rl.rollout import RolloutConfig

        node = OmegaConf.to_container(cfg.get("rollout") or {}, resolve=True)
        rollout = RolloutConfig(**node)  # makes sde_window a tuple
    except (TypeError, ValueError) as err:
        problems.append(f"rollout: {err}")
    algorithm = None
    try:
        from rl.algorithms import algorithm_problems, parse_algorithm

        algorithm = parse_algorithm(cfg.get("algorithm"))
        if rollout is not None:
            family = model_family(cfg.get("model"))
            problems += algorithm_problems(algorithm, rollout, sections["train"], family)
    except (ValueError, OmegaConfBaseException) as err:
        problems.append(f"algorithm: {str(err).splitlines()[0]}")
    problems += value_problems(sections)
    eval_rewards = parse_eval_rewards(cfg.get("eval_rewards"), problems)
    try:
        from rl.models import precision_plan

        model_dtype = (cfg.get("model") or {}).get("dtype") or "float32"
        precision_plan(sections["train"].mixed_precision, model_dtype)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ConfigError("invalid train config:\n  - " + "\n  - ".join(problems))

    def plain(name: str) -> dict[str, Any]:
        node = cfg.get(name)
        return OmegaConf.to_container(node, resolve=True) if node is not None else {}

    return TrainConfig(
        seed=int(cfg.get("seed", 0)),
        resume=cfg.get("resume"),
        rollout=rollout,
        algorithm=algorithm,
        model=plain("model"),
        reward=cfg.reward,
        eval_hook=plain("eval_hook"),
        eval_rewards=eval_rewards,
        **sections,
    )


def parse_eval_rewards(node: Any, problems: list[str]) -> Any:
    """``eval_rewards`` as :class:`rl.heldout.EvalRewardsSection`; its reward nodes stay nodes
    (a reward may interpolate the root, e.g. ``${judge}``). Problems are appended."""
    from rl.heldout import EvalRewardsSection

    if node is None:
        return EvalRewardsSection()
    rest = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "rewards"}
    try:
        section = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(EvalRewardsSection), rest)
        )
    except OmegaConfBaseException as err:
        problems.append(f"eval_rewards: {str(err).splitlines()[0]}")
        return EvalRewardsSection()
    rewards = node.get("rewards") or {}
    if not hasattr(rewards, "items"):
        problems.append("eval_rewards.rewards must map a name to a reward config")
        return section
    section.rewards = {str(name): rewards[name] for name in rewards}
    if section.every_n_epochs < 0 or section.patience < 1 or section.num_prompts < 1:
        problems.append(
            "eval_rewards: every_n_epochs must be >= 0, patience >= 1 and num_prompts >= 1"
        )
    return section


def value_problems(s: dict[str, Any]) -> list[str]:
    """Range and combination checks that do not depend on the process count."""
    t: TrainSection = s["train"]
    checks = [
        (t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1"),
        (
            1 <= t.micro_batch_size <= t.batch_size,
            f"train.micro_batch_size={t.micro_batch_size} must be in 1..batch_size {t.batch_size}",
        ),
        (t.optimizer_steps_per_epoch >= 1, "train.optimizer_steps_per_epoch must be >= 1"),
        (t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0"),
        (len(t.adam_betas) == 2, f"train.adam_betas={t.adam_betas} must be two numbers"),
        (t.max_grad_norm > 0, f"train.max_grad_norm={t.max_grad_norm} must be > 0"),
        (t.clip_range > 0, f"train.clip_range={t.clip_range} must be > 0"),
        (t.adv_clip_max > 0, f"train.adv_clip_max={t.adv_clip_max} must be > 0"),
        (t.beta >= 0, f"train.beta={t.beta} must be >= 0"),
        (
            0 <= t.max_failed_reward_share <= 1,
            f"train.max_failed_reward_share={t.max_failed_reward_share} must be in [0, 1]",
        ),
        (t.max_failed_epochs >= 1, f"train.max_failed_epochs={t.max_failed_epochs} must be >= 1"),
        (
            t.reward_timeout_s is None or t.reward_timeout_s > 0,
            f"train.reward_timeout_s={t.reward_timeout_s} must be > 0 or null",
        ),
        (
            t.max_nonfinite_steps >= 1,
            f"train.max_nonfinite_steps={t.max_nonfinite_steps} must be >= 1",
        ),
        (
            t.num_threads is None or t.num_threads >= 1,
            f"train.num_threads={t.num_threads} must be >= 1 or null",
        ),
        (
            t.mixed_precision in MIXED_PRECISION,
            f"train.mixed_precision={t.mixed_precision!r} is not one of {MIXED_PRECISION}",
        ),
        (
            not t.compile or t.compile_backend in compile_backends(),
            f"train.compile_backend={t.compile_backend!r} is not a torch.compile backend "
            "(e.g. inductor, or aot_eager to debug)",
        ),
        (
            s["logger"].mode in LOGGER_MODES,
            f"logger.mode={s['logger'].mode!r} is not one of {LOGGER_MODES}",
        ),
        (s["lora"].rank >= 1, f"lora.rank={s['lora'].rank} must be >= 1"),
        (s["ema"].repeat >= 1, f"ema.repeat={s['ema'].repeat} must be >= 1"),
        (s["checkpoint"].every_n_epochs >= 1, "checkpoint.every_n_epochs must be >= 1"),
        (
            s["checkpoint"].keep_last is None or s["checkpoint"].keep_last >= 1,
            "checkpoint.keep_last must be >= 1 or null",
        ),
        (
            (s["data"].prompts is None) != (s["data"].prompt_file is None),
            "set exactly one of data.prompts and data.prompt_file (or use experiment=demo)",
        ),
    ]
    return [message for ok, message in checks if not ok]


def compile_backends() -> list[str]:
    """Every registered ``torch.compile`` backend name (debug ones such as aot_eager too)."""
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


_RUN_STAMP: list[str] = []


def shared_run_stamp() -> str:
    """A ``YYYY-MM-DD/HH-MM-SS`` stamp, identical on every process of a launch.

    With several processes (``accelerate launch``), each one composes the config and would read
    its own clock; rank 0's stamp is broadcast instead, so all of them use one run folder.
    """
    if not _RUN_STAMP:
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate.utils import broadcast_object_list

            from rl.distributed import distributed_state

            distributed_state()  # joins the process group that the launcher described
            stamp = broadcast_object_list([stamp], from_process=0)[0]
        _RUN_STAMP.append(stamp)
    return _RUN_STAMP[0]


def model_family(model: Any) -> Any:
    """The family of the ``model`` section's ``name``; None when the name is unknown (the model
    loader reports that, naming the known names)."""
    from rl.families import MODELS

    spec = MODELS.get((model or {}).get("name"))
    return spec.family if spec is not None else None


def family_lora_targets(model_name: str) -> list[str]:
    """The default LoRA targets of ``model.name``'s family (``${rl_lora_targets:...}``)."""
    from rl.families import lora_targets

    return lora_targets(model_name)


def register_resolvers() -> None:
    """``${rl_run_stamp:}``, ``${rl_lora_targets:name}`` (the LoRA targets of a model's family),
    and ``${rl_rank0:x}`` / ``${rl_rank0_file:path}``: x on rank 0, null / os.devnull elsewhere
    (so only rank 0 writes Hydra's files and log)."""
    resolvers = {
        "rl_run_stamp": shared_run_stamp,
        "rl_lora_targets": family_lora_targets,
        "rl_rank0": lambda value: value if _rank() == 0 else None,
        "rl_rank0_file": lambda path: path if _rank() == 0 else os.devnull,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()  # composing conf/train.yaml needs them, in every entry and test
