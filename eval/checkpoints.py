"""Evaluate every saved checkpoint of a training run and compare them.

    python -m eval.checkpoints run_dir=runs/train/2026-01-01_00-00-00 judge=openai \
        eval_hook.tiif.prompt_dir=/data/TIIF-Bench/data/testmini_prompts \
        eval_hook.tiif.eval_dir=/data/TIIF-Bench/data/testmini_eval_prompts

The checkpoints are ``<run_dir>/checkpoints/epoch_NNNNNN/lora/`` (complete ones only, i.e. with
the trainer's ``COMPLETE`` marker), plus the base model as epoch 0 (``include_base``). The model
comes from the run's own ``.hydra/config.yaml`` unless ``model`` is given, and so do the
generation settings the hook leaves null (the run's resolution, guidance and evaluation steps:
:func:`eval.after_checkpoint.run_generation`). The pipeline is built once; each checkpoint's LoRA
is loaded, evaluated with :func:`eval.after_checkpoint.evaluate_pipeline` (the ``eval_hook``
subset) and unloaded.

Outputs in ``<run_dir>/<output_name>/`` (default ``eval_checkpoints``): one folder per
checkpoint, ``metrics.jsonl`` (one row per checkpoint; checkpoints already there are skipped, so
the command resumes; a rerun with another ``eval_hook`` or model is refused there) and
``checkpoints.png`` (each metric against the epoch). With ``wandb.enabled`` the rows are logged
to a wandb run of their own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.after_checkpoint import evaluate_pipeline, run_generation
from eval.common import (
    check_entry,
    check_resume_settings,
    exit_on_input_error,
    protect_secrets,
)
from eval.generation import build_pipeline, load_lora, resolve_device
from rl.checkpoint import CHECKPOINT_DIR, MARKER, checkpoint_name
from rl.metrics import read_rows
from rl.redact import redact

log = logging.getLogger(__name__)

LORA_SUBDIR = "lora"  # where rl.train exports the LoRA inside a checkpoint


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, lora folder)`` of every complete checkpoint of the run, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"no checkpoints folder in {run_dir}")
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_DIR.match(path.name)
        if not match or not path.is_dir():
            continue
        if not (path / MARKER).is_file():
            log.warning("skipping half-written checkpoint %s", path)
        elif not (path / LORA_SUBDIR).is_dir():
            log.warning("skipping %s: no exported LoRA (%s/)", path, LORA_SUBDIR)
        else:
            found.append((int(match.group(1)), path / LORA_SUBDIR))
    return sorted(found)


def run_model_config(run_dir: Path) -> Any:
    """The ``model`` node the run was trained with (from Hydra's saved config)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved} not found: pass model=... explicitly")
    return OmegaConf.load(saved).model


def run_generation_settings(run_dir: Path) -> dict[str, Any] | None:
    """The generation settings the run stands for (its ``rollout`` node, trainer defaults for
    keys it lacks), which fill the hook's null ``generation`` settings; None without a saved
    config (the hook must then set them)."""
    from rl.rollout import RolloutConfig

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return None
    node = OmegaConf.load(saved).get("rollout")
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return run_generation(RolloutConfig(**values))


def plot_checkpoints(rows: list[dict[str, Any]], path: Path) -> None:
    """One small panel per metric (all are accuracies in [0, 1]), score against epoch, each
    point labelled with its value; on one shared axis, coinciding lines would hide each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = sorted(rows, key=lambda r: r["epoch"])
    names = sorted({k for r in rows for k in r if k.startswith("eval/")}) or ["(no metrics)"]
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False, sharex=True
    )
    for ax, name in zip(axes.flat, names):
        points = [(r["epoch"], r[name]) for r in rows if r.get(name) is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
            for x, y in points:
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 5),
                            ha="center", fontsize=7)  # fmt: skip
        ax.set_title(name.removeprefix("eval/"), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.05, 1.1)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch (0 = base model)")
    fig.suptitle("benchmark scores per checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_checkpoints(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate the base model and every checkpoint not yet in metrics.jsonl."""
    run_dir = Path(cfg.run_dir)
    out = run_dir / cfg.output_name
    model_cfg = cfg.model if cfg.get("model") else run_model_config(run_dir)
    check_resume_settings(
        out,
        {"eval_hook": OmegaConf.to_container(cfg.eval_hook, resolve=True),
         "model": OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True)},
        f"pass output_name=<another folder> to keep both, or delete {out}",
        ("metrics.jsonl", "epoch_*"),
    )  # fmt: skip
    metrics_file = out / "metrics.jsonl"
    rows = read_rows(metrics_file) if metrics_file.is_file() else []
    done = {r["epoch"] for r in rows}
    todo = ([(0, None)] if cfg.include_base else []) + find_checkpoints(run_dir)
    todo = [(epoch, lora) for epoch, lora in todo if epoch not in done]
    run = run_generation_settings(run_dir)
    if todo:
        pipe = build_pipeline(model_cfg, None, resolve_device(cfg.device))
    for epoch, lora in todo:
        if lora is not None:
            load_lora(pipe, lora)
        metrics = evaluate_pipeline(pipe, cfg.eval_hook, out / checkpoint_name(epoch), epoch, run)
        if lora is not None:
            pipe.unload_lora_weights()
        row = {"epoch": epoch, "checkpoint": str(lora) if lora else "base", **metrics}
        rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        with open(metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("epoch %d: %s", epoch, metrics)
    plot_checkpoints(rows, out / "checkpoints.png")
    return sorted(rows, key=lambda r: r["epoch"])


def log_to_wandb(rows: list[dict[str, Any]], cfg: DictConfig) -> None:
    import wandb

    run = wandb.init(
        project=cfg.wandb.project,
        name=f"{Path(cfg.run_dir).name}-checkpoints",
        mode=cfg.wandb.mode,
        dir=str(Path(cfg.run_dir) / cfg.output_name),
        config=redact(OmegaConf.to_container(cfg.eval_hook, resolve=True)),
    )
    run.define_metric("eval/*", step_metric="epoch")
    for row in rows:
        run.log({k: v for k, v in row.items() if k != "checkpoint"})
    run.log(
        {"checkpoints": wandb.Image(str(Path(cfg.run_dir) / cfg.output_name / "checkpoints.png"))}
    )
    run.finish()


@hydra.main(config_path="../conf", config_name="checkpoints", version_base=None)
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    """Entry point: evaluate, write metrics.jsonl and checkpoints.png, optionally log to wandb;
    bad input (a wrong benchmark setting, a missing folder) ends in one line."""
    protect_secrets(cfg)
    with exit_on_input_error("eval.checkpoints", FileNotFoundError):
        check_entry(cfg, "checkpoints")
        rows = evaluate_checkpoints(cfg)
    if cfg.wandb.enabled:
        log_to_wandb(rows, cfg)
    for row in rows:
        print(json.dumps(row))
    print(f"results in {Path(cfg.run_dir) / cfg.output_name}")
    return rows


if __name__ == "__main__":
    main()
