"""``python -m rubric_learning.sweep``: a synthetic world over several seeds, as one table.

Each seed draws a new world (images, labels, writer and judge noise) and runs the full pipeline
with the chosen preset (``--experiment synthetic``, ``synthetic_discovery`` or
``synthetic_open``). Two one-round controls run on the same world, sharing its judge cache:

- ``--round0``: **round 0 at equal budget** -- one round of seed synthesis and one fit, given as
  many seed pairs as the full loop showed the writer (seed pairs plus hard pairs) and as many
  distinct rubrics as the full loop scored (``budget.max_rubrics``, no per-round cap). The table
  prints both budgets side by side, so that they can be checked.
- ``--round0-small``: round 0 as the preset configures it (``rounds=1``: its few seed pairs and
  its per-round cap), a far smaller budget than the loop's.

The printed Markdown table shows, per seed, the held-out accuracy as a share of the hidden rule
set's own for the loop and the controls, hidden rules found (admitted at some point) and kept,
distractors kept, the budgets, and writer answers cut at ``max_new_tokens``; then the mean with a
95% interval (Student t over the seeds) and, with ``--round0``, the mean paired difference loop
minus equal-budget round 0 with its interval. Any further argument is a Hydra override applied
to every run, e.g. ``python -m rubric_learning.sweep --seeds 0,1 refiner=paper``. ``--plot
PATH`` draws accuracy against rubrics scored: the loop round by round and the controls.

Acceptance lines (the ``passes`` column):

- ``synthetic``: test >= 0.9 x oracle, every hidden rule kept, distractors kept <= 20% of offered;
- ``synthetic_discovery`` (on the means): test >= 0.95 x oracle, the small round 0 <= 0.85 x
  oracle, distractors <= 10% of the kept rubrics (issue 11; it needs ``--round0-small``);
- ``synthetic_open``: none; the table is a measurement.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from scipy import stats

from rubric_learning.learn import learn

CONF = str(Path(__file__).resolve().parents[1] / "conf")
EXPERIMENTS = ("synthetic", "synthetic_discovery", "synthetic_open")


def run_seed(experiment: str, seed: int, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """One run whose world, writer, judge noise and learner all use ``seed``."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(
            "learn",
            overrides=[
                f"experiment={experiment}",
                f"seed={seed}",
                f"data.seed={seed}",
                f"generator.seed={seed}",
                *overrides,
            ],
        )
    if "seed" in cfg.judge:  # the realistic world's judge draws its noise from a seed
        with open_dict(cfg):
            cfg.judge.seed = seed
    return learn(cfg, out_dir)


def equal_budget(full: dict[str, Any]) -> list[str]:
    """Overrides that give round 0 the full loop's budgets: the pairs it showed the writer as
    seed pairs, and the distinct rubrics it scored, admitted in one round (most-proposed first)."""
    return [
        "rounds=1",
        f"seeds.num={full['writer_pairs']}",
        f"budget.max_rubrics={full['judge_budget_used']}",
        "budget.max_new_per_round=null",
    ]


def ratio(result: dict[str, Any] | None) -> float:
    """Held-out accuracy as a share of the hidden set's (NaN when the run is absent)."""
    return np.nan if result is None else result["test_accuracy"] / result["oracle_accuracy"]


def passes(experiment: str, runs: dict[str, dict | None]) -> bool | None:
    """The acceptance line of ``experiment`` for one seed; None where there is none, or where
    it needs a control that did not run."""
    full = runs["loop"]
    if experiment == "synthetic":
        return (
            ratio(full) >= 0.9
            and full["hidden_kept"] == full["hidden_rules"]
            and full["distractors_kept"] <= 0.2 * full["distractors_offered"]
        )
    return None


def mean_passes(experiment: str, means: dict[str, float]) -> bool | None:
    """The discovery world's acceptance, on the means over the seeds."""
    if experiment != "synthetic_discovery":
        return None
    if means["loop"] < 0.95 or means["distractor_share"] > 0.10:
        return False
    return None if np.isnan(means["small"]) else bool(means["small"] <= 0.85)


def verdict(passed: bool | None) -> str:
    """The ``passes`` column's text."""
    return {True: "yes", False: "NO", None: "-"}[passed]


def interval(values: list[float]) -> str:
    """``mean [low, high]``: the mean and its 95% Student-t interval over the seeds."""
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def _pair(full: dict, other: dict | None, key: str) -> str:
    return f"{full[key]}" if other is None else f"{full[key]} / {other[key]}"


def _kept(result: dict[str, Any]) -> str:
    return f"{result['distractors_kept']} of {result['hidden_kept'] + result['distractors_kept']}"


def _cut(result: dict[str, Any]) -> int:
    return sum(v for k, v in result["cut_answers"].items() if "still" not in k)


def table(experiment: str, results: dict[int, dict[str, dict | None]]) -> str:
    """Markdown rows per seed, then the means with 95% intervals."""
    lines = [
        "| seed | loop: test / hidden set's | loop ratio | round 0, equal budget | round 0, "
        "small | hidden found (loop / r0) | hidden kept (loop / r0) | distractors kept "
        "(loop / r0) | rubrics scored (loop / r0) | pairs shown to writer (loop / r0) "
        "| cut answers | best round | passes |",
        "|" + "---|" * 13,
    ]
    cols: dict[str, list[float]] = {"loop": [], "equal": [], "small": [], "gain": []}
    shares = []
    for seed, runs in results.items():
        full, eq, small = runs["loop"], runs.get("equal"), runs.get("small")
        cols["loop"].append(ratio(full))
        cols["equal"].append(ratio(eq))
        cols["small"].append(ratio(small))
        cols["gain"].append(ratio(full) - ratio(eq))
        shares.append(full["distractor_share"])
        distractors = _kept(full) if eq is None else f"{_kept(full)} / {_kept(eq)}"
        lines.append(
            f"| {seed} | {full['test_accuracy']:.3f} / {full['oracle_accuracy']:.3f} "
            f"| {ratio(full):.3f} | {_fmt(ratio(eq))} | {_fmt(ratio(small))} "
            f"| {_pair(full, eq, 'hidden_offered')} | {_pair(full, eq, 'hidden_kept')} "
            f"| {distractors} | {_pair(full, eq, 'judge_budget_used')} "
            f"| {_pair(full, eq, 'writer_pairs')} | {_cut(full)} | {full['best_round']} "
            f"| {verdict(passes(experiment, runs))} |"
        )
    means = {k: float(np.nanmean(v)) if not np.isnan(v).all() else np.nan for k, v in cols.items()}
    means["distractor_share"] = float(np.mean(shares))
    lines.append(
        f"| mean [95% interval] | | {interval(cols['loop'])} | {interval(cols['equal'])} "
        f"| {interval(cols['small'])} | | | ({means['distractor_share']:.0%} of kept) | | | | "
        f"| {verdict(mean_passes(experiment, means))} |"
    )
    if not np.isnan(cols["gain"]).all():
        lines += [
            "",
            f"Loop minus equal-budget round 0 (paired by seed): {interval(cols['gain'])}.",
        ]
    return "\n".join(lines)


def plot_budget(out: Path, seeds: list[int], path: Path) -> Path:
    """Accuracy against rubrics scored: each seed's loop round by round (its kept set's test
    accuracy, reported only, over the hidden set's) and its one-round controls, from the run
    folders' ``report.json``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    marks = {
        "round0_equal": ("s", "round 0, equal budget"),
        "round0_small": ("^", "round 0, small"),
    }
    for n, seed in enumerate(seeds):
        report = json.loads((out / f"seed{seed}" / "report.json").read_text())
        oracle = report["oracle_accuracy"]
        xs = [r["judge_budget"]["used"] for r in report["rounds"]]
        ys = [r["test_accuracy"] / oracle for r in report["rounds"]]
        ax.plot(
            xs, ys, "-", color="tab:blue", alpha=0.5, label="full loop, by round" if not n else None
        )
        for name, (marker, label) in marks.items():
            run = out / f"seed{seed}_{name}" / "report.json"
            if run.exists():
                other = json.loads(run.read_text())
                ax.plot(
                    other["judge_budget_used"],
                    other["test_accuracy"] / other["oracle_accuracy"],
                    marker,
                    color="tab:orange" if name == "round0_equal" else "tab:green",
                    alpha=0.7,
                    label=label if not n else None,
                )
    ax.set_xlabel("distinct rubrics scored (judge budget used)")
    ax.set_ylabel("test accuracy / hidden set's")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="synthetic")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated, e.g. 1,3")
    parser.add_argument(
        "--round0", action="store_true", help="also run round 0 alone at the loop's budgets"
    )
    parser.add_argument(
        "--round0-small", action="store_true", help="also run the preset's round 0 (rounds=1)"
    )
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument(
        "--plot", type=Path, default=None, help="also draw accuracy against rubrics scored (PNG)"
    )
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        results: dict[int, dict[str, dict | None]] = {}
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            shared = [*overrides, f"scoring.cache_path={out / f'cache_seed{seed}.sqlite'}"]
            runs: dict[str, dict | None] = {
                "loop": run_seed(args.experiment, seed, shared, out / f"seed{seed}")
            }
            if args.round0:
                runs["equal"] = run_seed(
                    args.experiment,
                    seed,
                    [*shared, *equal_budget(runs["loop"])],
                    out / f"seed{seed}_round0_equal",
                )
            if args.round0_small:
                runs["small"] = run_seed(
                    args.experiment, seed, [*shared, "rounds=1"], out / f"seed{seed}_round0_small"
                )
            results[seed] = runs
        if args.plot:
            plot_budget(out, seeds, args.plot)
    text = table(args.experiment, results)
    print(text)
    return text


if __name__ == "__main__":
    main()
