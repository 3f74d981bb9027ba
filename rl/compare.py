"""Side-by-side comparison of the RL algorithms on the offline demo: ``python -m rl.compare``.

    python -m rl.compare algorithms=flow_grpo,grpo_guard,mixgrpo,diffusion_nft
    python -m rl.compare algorithms=flow_grpo,mixgrpo epochs=20 out=outputs/compare train.seed=1

Runs each algorithm's demo (:data:`DEMOS`: ``experiment=demo`` with ``algorithm=NAME``, or the
algorithm's own demo preset where it needs one) one after the other in this process, with the same
seed and the same number of epochs; any other ``key=value`` is passed to every run as a config
override. Writes into ``out`` (default ``outputs/compare/<time>``): one run folder per algorithm,
``compare.png`` (the mean rubric reward against wall-clock seconds, images sampled and judge calls)
and ``compare.md``, a markdown table: the mean reward of the first and last 5 epochs, its gain,
seconds per epoch and their ratio to flow_grpo's, the minutes the run took from its start (model
building included), images sampled and judge calls (``yes_prob`` items asked of the judge).
Seconds per epoch are the epochs' own phases (sampling, scoring, training, checkpoints); both
depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rl.config import parse_config, register_resolvers

CONF = str(Path(__file__).resolve().parents[1] / "conf")
DEMOS = {
    "flow_grpo": ["experiment=demo"],
    "grpo_guard": ["experiment=demo", "algorithm=grpo_guard"],
    "mixgrpo": ["experiment=demo_mixgrpo"],
    "diffusion_nft": ["experiment=demo_nft"],
}
PHASES = ("sample_s", "advantages_s", "train_s", "checkpoint_s", "eval_s")
WINDOW = 5  # epochs averaged at the start and at the end


def run_demo(name: str, run_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Train ``name``'s demo into ``run_dir``; its metrics rows with ``wall_s`` (cumulative
    seconds of the epochs' phases), ``images`` and ``judge_calls`` (both cumulative), and
    ``run_s`` (seconds since the run started, model building included: what a user waits)."""
    from rl.train import FlowGRPOTrainer

    start = time.perf_counter()

    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("train", overrides=[*DEMOS[name], *overrides])
    trainer = FlowGRPOTrainer(parse_config(cfg), run_dir, OmegaConf.to_container(cfg))
    trainer.setup()
    counts = {"judge_calls": 0}
    judge = getattr(trainer.reward, "judge", None)
    if judge is not None:
        ask = judge.yes_prob

        def counted(items):
            counts["judge_calls"] += len(items)
            return ask(items)

        judge.yes_prob = counted
    log_epoch, totals = trainer.logger.log_epoch, {"wall_s": 0.0, "images": 0}

    def log_with_counts(row: dict[str, Any]) -> None:
        totals["wall_s"] += sum(row.get(k, 0.0) for k in PHASES)
        totals["images"] += trainer.layout.images_per_epoch
        log_epoch(row | totals | counts | {"run_s": time.perf_counter() - start})

    trainer.logger.log_epoch = log_with_counts
    trainer.train()
    trainer.accelerator.wait_for_everyone()
    trainer.cleanup()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per algorithm: reward at the start and end, its gain, cost and ratio to flow_grpo."""
    rows = []
    for name, metrics in runs.items():
        first = sum(r["reward_mean"] for r in metrics[:WINDOW]) / len(metrics[:WINDOW])
        last = sum(r["reward_mean"] for r in metrics[-WINDOW:]) / len(metrics[-WINDOW:])
        rows.append({
            "algorithm": name, "epochs": len(metrics), "first5": first, "last5": last,
            "gain": last - first, "s_per_epoch": metrics[-1]["wall_s"] / len(metrics),
            "run_min": metrics[-1]["run_s"] / 60,
            "images": metrics[-1]["images"], "judge_calls": metrics[-1]["judge_calls"],
        })  # fmt: skip
    base = next((r["s_per_epoch"] for r in rows if r["algorithm"] == "flow_grpo"), None)
    for row in rows:
        row["ratio"] = row["s_per_epoch"] / base if base else float("nan")
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| algorithm | epochs | reward, first 5 | reward, last 5 | gain | s / epoch | "
        "ratio to flow_grpo | run, minutes | images sampled | judge calls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | {r['epochs']} | {r['first5']:.3f} | {r['last5']:.3f} | "
            f"{r['gain']:+.3f} | {r['s_per_epoch']:.1f} | {r['ratio']:.2f} | {r['run_min']:.1f} | "
            f"{r['images']} | "
            f"{r['judge_calls']} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = [("wall_s", "wall-clock seconds"), ("images", "images sampled"),
                 ("judge_calls", "judge calls")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label) in zip(axes, axes_keys):
        for name, metrics in runs.items():
            ax.plot([r[key] for r in metrics], [r["reward_mean"] for r in metrics], label=name)
        ax.set(xlabel=label, ylabel="mean reward", title=f"reward vs {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv: list[str]) -> None:
    options = dict(arg.split("=", 1) for arg in argv if arg.split("=", 1)[0] in
                   ("algorithms", "epochs", "out"))  # fmt: skip
    overrides = [arg for arg in argv if arg.split("=", 1)[0] not in options]
    names = options.get("algorithms", ",".join(DEMOS)).split(",")
    unknown = [n for n in names if n not in DEMOS]
    if unknown:
        sys.exit(f"error: unknown algorithms {unknown}; choose from {sorted(DEMOS)}")
    if "epochs" in options:
        overrides.append(f"train.epochs={int(options['epochs'])}")
    out = Path(options.get("out", f"outputs/compare/{time.strftime('%Y-%m-%d_%H-%M-%S')}"))
    out.mkdir(parents=True, exist_ok=True)
    register_resolvers()
    runs = {name: run_demo(name, out / name, overrides) for name in names}
    rows = summary(runs)
    (out / "compare.md").write_text(markdown(rows))
    (out / "compare.json").write_text(json.dumps(rows, indent=1))
    plot(runs, out / "compare.png")
    print(markdown(rows))
    print(f"written: {out / 'compare.md'}, {out / 'compare.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
