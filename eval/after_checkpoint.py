"""The trainer's evaluation hook: a small benchmark subset run on the pipeline being trained.

``rl.train`` calls :func:`evaluate_pipeline` on rank 0 every ``eval_hook.every_n_epochs`` epochs,
with the LoRA (or its EMA) active, and logs the returned flat metrics; ``eval.checkpoints`` calls
it once per saved checkpoint. The hook config (``conf/eval_hook/*.yaml``) names the benchmarks:

* ``tiif``: TIIF-Bench cases (``prompt_dir``, ``eval_dir``, ``types``, ``limit_per_type``,
  ``descriptions``) -> ``eval/tiif_<short|long>_overall`` and ``eval/tiif_<short|long>_<level>``
  (basic, advanced, real_world; a level without a scored type is left out), and
  ``eval/tiif_<short|long>_coverage`` (the fraction of images with a parsed answer);
* ``unigenbench``: UniGenBench++ prompts (``csv``, ``limit``, ``images_per_prompt``,
  ``category``) -> ``eval/unigenbench_overall``, ``eval/unigenbench_testpoint_accuracy`` (left
  out when no image was scored) and ``eval/unigenbench_coverage``;

* ``geneval``: GenEval prompts (``metadata``, ``limit``, ``images_per_prompt``) scored by the
  hook's ``reward`` (the GenEval reward behind the reward service, served with
  ``reward.only_strict=false``) -> ``eval/geneval_overall`` (the official score),
  ``eval/geneval_strict_accuracy`` and ``eval/geneval_reward`` (Flow-GRPO's partial score) and
  ``eval/geneval_coverage``;
* ``ocr``: OCR prompts (``prompts``, ``limit``, ``images_per_prompt``) scored by the hook's
  ``reward`` -> ``eval/ocr_mean``, ``eval/ocr_exact`` and ``eval/ocr_coverage``;

plus ``judge`` (a judge node, built once per process and reused; only the judged benchmarks need
it), ``judging``, ``reward`` (for GenEval and OCR: one reward node, or ``geneval.reward`` /
``ocr.reward`` each) and ``generation`` (the sampling settings; image seeds are fixed, so epochs
compare like for like). A ``generation`` setting left null is the run's own
(:func:`run_generation`): its resolution, guidance scale and text length, and its evaluation
steps (``rollout.eval_num_steps``), so a run is evaluated at the size its model was trained at
(the tiny model holds 32 px, not 512) and a run without CFG at guidance 1, as flow_grpo evaluates
(its SD3 configs set ``sample.eval_guidance_scale`` to their ``sample.guidance_scale``;
``sample.eval_num_steps`` is 40 in each).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from eval.generation import GenerationConfig
from eval.judging import JudgeOptions
from rewards.base import Reward
from rewards.judges.base import Judge

if TYPE_CHECKING:
    from rl.rollout import RolloutConfig

log = logging.getLogger(__name__)

_JUDGES: dict[str, Judge] = {}
_REWARDS: dict[str, Reward] = {}


def hook_judge(judge_cfg: Any) -> Judge:
    """The judge of ``judge_cfg``, built on first use and kept for later evaluations."""
    import hydra

    if judge_cfg is None:
        raise ValueError(
            "eval_hook.judge is not set: give the hook a judge node (it defaults to the run's "
            "root `judge`), e.g. judge=qwen3_vl judge.model_path=... or eval_hook.judge={...}"
        )
    key = json.dumps(
        OmegaConf.to_container(OmegaConf.create(judge_cfg), resolve=True), sort_keys=True
    )
    if key not in _JUDGES:
        _JUDGES[key] = hydra.utils.instantiate(judge_cfg)
    return _JUDGES[key]


def run_generation(rollout: RolloutConfig) -> dict[str, Any]:
    """The generation settings a training run stands for: its evaluation steps, guidance scale,
    resolution and T5 length."""
    return {
        "num_steps": rollout.eval_num_steps,
        "guidance_scale": rollout.guidance_scale,
        "height": rollout.height,
        "width": rollout.width,
        "max_sequence_length": rollout.max_sequence_length,
    }


def hook_generation(hook_cfg: Any, run: Mapping[str, Any] | None) -> GenerationConfig:
    """The hook's ``generation`` node with every null setting taken from ``run``
    (:func:`run_generation`); a null left without a run setting is an error naming it."""
    values = OmegaConf.to_container(OmegaConf.create(hook_cfg.generation), resolve=True)
    for key, value in values.items():
        if value is None and run is not None and key in run:
            values[key] = run[key]
    unset = [key for key, value in values.items() if value is None]
    if unset:
        names = ", ".join(f"eval_hook.generation.{key}" for key in unset)
        raise ValueError(
            f"{names}: null means the training run's own setting, and no run was given; "
            "set a value (e.g. eval_hook.generation.height=512)"
        )
    return GenerationConfig.from_cfg(values)


def evaluate_pipeline(
    pipe, hook_cfg: DictConfig, out_dir: Path, epoch: int, run: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Run the configured benchmark subset with ``pipe`` as it is; flat ``eval/...`` metrics.
    ``run``: the training run's generation settings (:func:`run_generation`), which fill the
    hook's null ``generation`` settings."""
    out_dir = Path(out_dir)
    name = f"epoch_{epoch:06d}"
    gen = hook_generation(hook_cfg, run)
    metrics: dict[str, float] = {}
    metrics.update(_reward_benchmarks(pipe, hook_cfg, out_dir, name, gen))
    tiif, ugb = hook_cfg.get("tiif"), hook_cfg.get("unigenbench")
    if tiif or ugb:
        metrics.update(_judged_benchmarks(pipe, hook_cfg, out_dir, name, gen))
    metrics = {k: v for k, v in metrics.items() if v == v}  # a level without types is NaN: omit
    log.info("evaluation after epoch %d: %s", epoch, metrics)
    return metrics


def _judged_benchmarks(
    pipe, hook_cfg: DictConfig, out_dir: Path, name: str, gen: GenerationConfig
) -> dict[str, float]:
    """The TIIF-Bench and UniGenBench++ subsets of the hook (those it names), judged by a VLM."""
    from eval.tiif import DESCRIPTIONS, load_tiif, run_tiif
    from eval.unigenbench import category_of, load_unigenbench, run_unigenbench

    metrics: dict[str, float] = {}
    tiif, ugb = hook_cfg.get("tiif"), hook_cfg.get("unigenbench")
    opts = JudgeOptions.from_cfg(hook_cfg.judging)
    judge = hook_judge(hook_cfg.get("judge"))
    if tiif:
        cases = load_tiif(
            tiif.prompt_dir, tiif.eval_dir, tiif.get("types"), tiif.get("limit_per_type")
        )
        descriptions = list(tiif.get("descriptions") or DESCRIPTIONS)
        summary = run_tiif(pipe, judge, cases, out_dir / "tiif", name, gen, opts, descriptions)
        for key, value in summary["overall"].items():
            metrics[f"eval/tiif_{key}_overall"] = value
            metrics[f"eval/tiif_{key}_coverage"] = summary["coverage"][key]["fraction_scored"]
            for level, scores in summary["levels"].items():
                metrics[f"eval/tiif_{key}_{level}"] = scores[key]
    if ugb:
        cases, skipped = load_unigenbench(
            ugb.csv, ugb.get("malformed_rows", "skip"), ugb.get("limit")
        )
        summary = run_unigenbench(
            pipe, judge, cases, out_dir / "unigenbench", name, gen, opts,
            ugb.get("images_per_prompt", 4), skipped, category_of(ugb.csv, ugb.get("category")),
        )  # fmt: skip
        metrics["eval/unigenbench_overall"] = summary["overall"]
        metrics["eval/unigenbench_testpoint_accuracy"] = summary["testpoint_accuracy"]
        metrics["eval/unigenbench_coverage"] = summary["coverage"]["fraction_scored"]
    judge.release()
    return metrics


def hook_reward(reward_cfg: Any, benchmark: str) -> Reward:
    """The reward of ``reward_cfg``, built on first use and kept for later evaluations."""
    from rewards import build_reward

    if reward_cfg is None:
        raise ValueError(
            f"eval_hook.{benchmark} needs a reward: set eval_hook.reward (e.g. "
            "{_target_: rewards.remote.RemoteReward, url: http://127.0.0.1:8102})"
        )
    key = json.dumps(
        OmegaConf.to_container(OmegaConf.create(reward_cfg), resolve=True), sort_keys=True
    )
    if key not in _REWARDS:
        _REWARDS[key] = build_reward(reward_cfg)
    return _REWARDS[key]


def _reward_benchmarks(
    pipe, hook_cfg: DictConfig, out_dir: Path, name: str, gen: GenerationConfig
) -> dict[str, float]:
    """The GenEval and OCR subsets of the hook (those it names), scored by rewards."""
    from eval.geneval import load_geneval, run_geneval
    from eval.ocr import load_ocr_prompts, run_ocr

    metrics: dict[str, float] = {}
    geneval, ocr = hook_cfg.get("geneval"), hook_cfg.get("ocr")
    if not (geneval or ocr):
        return metrics
    if geneval:
        reward = hook_reward(geneval.get("reward") or hook_cfg.get("reward"), "geneval")
        rows = load_geneval(geneval.metadata, geneval.get("limit"))
        folder = out_dir / "geneval" / name
        folder.mkdir(parents=True, exist_ok=True)
        summary = run_geneval(pipe, reward, rows, folder, gen, geneval.get("images_per_prompt", 4))
        metrics["eval/geneval_overall"] = summary["overall"]
        metrics["eval/geneval_strict_accuracy"] = summary["strict_accuracy"]
        metrics["eval/geneval_reward"] = summary["reward_mean"]
        coverage = summary["coverage"]
        metrics["eval/geneval_coverage"] = coverage["scored"] / coverage["images"]
    if ocr:
        reward = hook_reward(ocr.get("reward") or hook_cfg.get("reward"), "ocr")
        prompts = load_ocr_prompts(ocr.prompts, ocr.get("limit"))
        folder = out_dir / "ocr" / name
        folder.mkdir(parents=True, exist_ok=True)
        summary = run_ocr(pipe, reward, prompts, folder, gen, ocr.get("images_per_prompt", 1))
        metrics["eval/ocr_mean"] = summary["ocr_mean"]
        metrics["eval/ocr_exact"] = summary["exact"]
        coverage = summary["coverage"]
        metrics["eval/ocr_coverage"] = coverage["scored"] / coverage["images"]
    return metrics
