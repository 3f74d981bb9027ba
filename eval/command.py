"""What the generation-benchmark commands (``eval.tiif``, ``eval.unigenbench``, ``eval.geneval``,
``eval.ocr``) share: turning a composed config into the model, the judge or reward, the sampling
and judging settings, and the output folder, so each command only adds its own data and summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eval.common import check_resume_settings, run_dir
from eval.generation import GenerationConfig, build_pipeline, model_name_for, resolve_device
from eval.judging import JudgeOptions
from rewards.base import Reward
from rewards.judges.base import Judge


def settings_from_cfg(cfg: Any) -> tuple[GenerationConfig, JudgeOptions]:
    """The ``generation`` and ``judging`` nodes of a benchmark or eval-hook config."""
    gen = GenerationConfig.from_cfg(OmegaConf.to_container(cfg.generation, resolve=True))
    return gen, JudgeOptions.from_cfg(cfg.judging)


@dataclass(frozen=True)
class BenchmarkRun:
    """Everything a generation benchmark needs besides its cases: ``pipe`` is None with
    ``skip_generation``; ``judge`` is a factory, called once the images exist."""

    pipe: Any
    judge: Callable[[], Judge]
    model_name: str
    gen: GenerationConfig
    opts: JudgeOptions


# What decides the images and judgements a run folder keeps (a resume must not mix them).
RESUME_KEYS = ("model", "lora", "model_name", "generation", "judge", "judging")


def _plain(value: Any) -> Any:
    """A config value as plain Python, interpolations resolved."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def benchmark_run(cfg: DictConfig, out: Path, results: Sequence[str]) -> BenchmarkRun:
    """Check that ``out`` holds no results (files under the ``results`` glob patterns) of
    other settings, then build the model (base + optional ``lora``) unless
    ``skip_generation``; the judge is deferred."""
    import hydra

    check_resume_settings(
        out,
        {k: _plain(cfg.get(k)) for k in RESUME_KEYS},
        "pick a new output_dir (to judge the same images with another judge, copy images/ "
        "there and pass skip_generation=true)",
        results,
    )
    gen, opts = settings_from_cfg(cfg)
    pipe = None
    if not cfg.skip_generation:
        pipe = build_pipeline(cfg.model, cfg.get("lora"), resolve_device(cfg.device))
    judge = partial(hydra.utils.instantiate, cfg.judge)
    return BenchmarkRun(pipe, judge, model_name_for(cfg), gen, opts)


def output_dir(cfg: DictConfig) -> Path:
    """``output_dir`` when set (e.g. to resume into a known folder), else the Hydra run folder."""
    return Path(cfg.output_dir) if cfg.get("output_dir") else run_dir()


@dataclass(frozen=True)
class RewardBenchmarkRun:
    """What a reward-scored benchmark (GenEval, OCR) needs besides its prompts: ``pipe`` is None
    with ``skip_generation``; ``reward`` is a factory, called once the images exist."""

    pipe: Any
    reward: Callable[[], Reward]
    gen: GenerationConfig


def reward_benchmark_run(cfg: DictConfig, out: Path, results: Sequence[str]) -> RewardBenchmarkRun:
    """As :func:`benchmark_run`, for a benchmark scored by a reward (``cfg.reward``) instead of
    a judge: the resume guard compares the model, LoRA, generation and reward settings."""
    from rewards import build_reward

    check_resume_settings(
        out,
        {k: _plain(cfg.get(k)) for k in ("model", "lora", "generation", "reward")},
        "pick a new output_dir (to score the same images again, copy images/ there and pass "
        "skip_generation=true)",
        results,
    )
    gen = GenerationConfig.from_cfg(OmegaConf.to_container(cfg.generation, resolve=True))
    pipe = None
    if not cfg.skip_generation:
        pipe = build_pipeline(cfg.model, cfg.get("lora"), resolve_device(cfg.device))
    return RewardBenchmarkRun(pipe, partial(build_reward, cfg.reward), gen)
