"""What a rubric-learning run leaves in its folder, rewritten after every round.

- ``report.json``: the run's settings summary, one entry per round (train/validation accuracy,
  C, working-set size, new rubrics, kept rubrics with weights, mining bucket counts, judge calls
  and cache hits of that round) and, at the end, the best round and the held-out figures;
- ``report.md``: the same as tables for people;
- ``accuracy.png``: train and validation accuracy by round (the best round marked);
- ``rubric_set.json`` (written by :func:`save_rubric_set`): the best rubric set, in the schema
  that :class:`rewards.rubric.RubricReward` reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.rubric_set import Rubric, RubricSet

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """Accumulates per-round records and writes report.json / report.md / accuracy.png."""

    out_dir: Path
    header: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    def add_round(self, record: dict[str, Any]) -> None:
        self.rounds.append(record)
        calls = record["judge"]
        print(
            f"round {record['round']}: train acc {record['train_accuracy']:.3f}, "
            f"val acc {record['val_accuracy']:.3f} | working set {record['working_set_size']}, "
            f"kept {len(record['kept'])} (C={record['C']:g}) | judge calls "
            f"{calls['judge_calls']} ({calls['items_scored']} items scored, "
            f"{calls['generate_calls']} generate batches), cache hit rate "
            f"{calls['cache_hit_rate']:.1%}",
            flush=True,
        )
        self.write()

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = {"settings": self.header, "rounds": self.rounds, **self.final}
        (self.out_dir / "report.json").write_text(json.dumps(data, indent=2) + "\n")
        (self.out_dir / "report.md").write_text(self.markdown())
        if self.rounds:
            self.plot(self.out_dir / "accuracy.png")

    def markdown(self) -> str:
        lines = ["# Rubric learning report", ""]
        lines += [
            "| round | train acc | val acc | working set | new | kept | C | judge calls "
            "| items scored | cache hit rate |",
            "|" + "---|" * 10,
        ]
        for r in self.rounds:
            j = r["judge"]
            lines.append(
                f"| {r['round']} | {r['train_accuracy']:.3f} | {r['val_accuracy']:.3f} | "
                f"{r['working_set_size']} | {r['new_rubrics']} | {len(r['kept'])} | {r['C']:g} | "
                f"{j['judge_calls']} | {j['items_scored']} | {j['cache_hit_rate']:.1%} |"
            )
        for r in self.rounds:
            lines += ["", f"## Round {r['round']}", ""]
            if r.get("buckets"):
                counts = ", ".join(
                    f"{b}: {c['misranked']} misranked, {c['drawn']} drawn"
                    for b, c in r["buckets"].items()
                )
                lines += [f"Hard pairs: {counts}.", ""]
            lines += ["| weight | rubric |", "|---|---|"]
            lines += [f"| {k['weight']:.3f} | {k['text']} |" for k in r["kept"]]
        if self.final:
            lines += ["", "## Result", ""]
            lines += [f"- {k}: {v}" for k, v in self.final.items() if not isinstance(v, dict)]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["round"] for r in self.rounds]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(xs, [r["train_accuracy"] for r in self.rounds], "o-", label="train")
        ax.plot(xs, [r["val_accuracy"] for r in self.rounds], "s-", label="validation")
        if "best_round" in self.final:
            best = self.final["best_round"]
            ax.axvline(best, color="grey", linestyle=":", label=f"best (round {best})")
            if self.final.get("test_accuracy") is not None:
                ax.plot([best], [self.final["test_accuracy"]], "k*", ms=10, label="test, best set")
        if "oracle_accuracy" in self.final:
            ax.axhline(
                self.final["oracle_accuracy"],
                color="k",
                linestyle="--",
                lw=0.8,
                label="hidden rules (test)",
            )
        ax.set_xlabel("round")
        ax.set_ylabel("pairwise accuracy")
        ax.set_xticks(xs)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def save_rubric_set(
    path: Path,
    kept: list[tuple[Rubric, float]],
    template: dict[str, str],
    scoring: str,
    training: dict[str, Any],
) -> Path:
    """Write the kept rubrics with their refiner weights as a rubric set file."""
    rubrics = [Rubric(r.id, r.text, float(w), dict(r.provenance)) for r, w in kept]
    return RubricSet(rubrics, dict(template), scoring, training).save(path)
