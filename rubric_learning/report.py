"""What a rubric-learning run leaves in its folder, rewritten after every round.

- ``report.json``: the run's settings summary, one entry per round (train/validation accuracy,
  test accuracy as reported only, C, working-set size, new/pruned/admitted rubrics, kept
  rubrics with weights, pruned rubrics re-admitted, judge budget used, hidden rules found so far
  in a synthetic world, mining bucket counts with the pairs drawn, judge calls and cache hits of
  that round) and, at the end, the best round, the held-out figures, the pairs shown to the
  writer and the writer answers cut at ``max_new_tokens`` (``cut_answers``);
- ``report.md``: the same as tables for people;
- ``accuracy.png``: train, validation and test accuracy by round (the best round marked), and
  hidden rules found so far when the world has them;
- ``rubric_set.json`` (written by :func:`save_rubric_set`): the best rubric set, in the schema
  that :class:`rewards.rubric.RubricReward` reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
        test = record.get("test_accuracy")
        hidden = record.get("hidden")
        print(
            f"round {record['round']}: train acc {record['train_accuracy']:.3f}, "
            f"val acc {record['val_accuracy']:.3f}"
            + (f", test acc {test:.3f} (reported only)" if test is not None else "")
            + f" | working set {record['working_set_size']}, kept {len(record['kept'])} "
            f"(C={record['C']:g})"
            + (f", hidden rules found {hidden['found']}/{hidden['total']}" if hidden else "")
            + f" | judge budget {_budget(record)} | judge calls "
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
            "| round | train acc | val acc | test acc (reported only) | working set | new | pruned "
            "| admitted | kept | C | hidden found | judge budget | judge calls | items scored "
            "| cache hit rate |",
            "|" + "---|" * 15,
        ]
        for r in self.rounds:
            j = r["judge"]
            test = "-" if r.get("test_accuracy") is None else f"{r['test_accuracy']:.3f}"
            hidden = f"{r['hidden']['found']}/{r['hidden']['total']}" if r.get("hidden") else "-"
            lines.append(
                f"| {r['round']} | {r['train_accuracy']:.3f} | {r['val_accuracy']:.3f} | {test} "
                f"| {r['working_set_size']} | {r['new_rubrics']} | {r.get('pruned', '-')} "
                f"| {r.get('admitted', '-')} | {len(r['kept'])} | {r['C']:g} | {hidden} "
                f"| {_budget(r)} | {j['judge_calls']} | {j['items_scored']} "
                f"| {j['cache_hit_rate']:.1%} |"
            )
        for r in self.rounds:
            lines += ["", f"## Round {r['round']}", ""]
            if r.get("buckets"):
                counts = ", ".join(
                    f"{b}: {c['misranked']} misranked, {c['capped']} held back by the reuse cap, "
                    f"{c['drawn']} drawn"
                    for b, c in r["buckets"].items()
                )
                lines += [f"Hard pairs: {counts}.", ""]
            if r.get("stopped"):
                lines += [f"Stopped after this round: {r['stopped']}.", ""]
            lines += ["| weight | rubric |", "|---|---|"]
            lines += [f"| {k['weight']:.3f} | {k['text']} |" for k in r["kept"]]
        if self.final:
            lines += ["", "## Result", ""]
            lines += [f"- {k}: {v}" for k, v in self.final.items() if not isinstance(v, dict)]
            if self.final.get("cut_answers"):  # writer answers cut at max_new_tokens
                lines.append(f"- cut_answers: {self.final['cut_answers']}")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """Accuracy by round (train, validation, test as reported), the best round marked; with
        hidden rules, how many have been found so far on a second axis."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["round"] for r in self.rounds]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(xs, [r["train_accuracy"] for r in self.rounds], "o-", label="train")
        ax.plot(xs, [r["val_accuracy"] for r in self.rounds], "s-", label="validation")
        tests = [r.get("test_accuracy") for r in self.rounds]
        if any(t is not None for t in tests):
            ax.plot(xs, [np.nan if t is None else t for t in tests], "^--", label="test (reported)")
        if "best_round" in self.final:
            best = self.final["best_round"]
            ax.axvline(best, color="grey", linestyle=":", label=f"best (round {best})")
        if "oracle_accuracy" in self.final:
            ax.axhline(
                self.final["oracle_accuracy"],
                color="k",
                linestyle="--",
                lw=0.8,
                label="hidden rules (test)",
            )
        if self.rounds[0].get("hidden"):
            twin = ax.twinx()
            found = [r["hidden"]["found"] for r in self.rounds]
            twin.bar(xs, found, color="tab:green", alpha=0.2, label="hidden rules found")
            twin.set_ylim(0, self.rounds[0]["hidden"]["total"] * 1.05)
            twin.set_ylabel("hidden rules found")
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
        ax.set_xlabel("round")
        ax.set_ylabel("pairwise accuracy")
        ax.set_xticks(xs)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _budget(record: dict[str, Any]) -> str:
    """Distinct rubrics scored so far, and the cap if there is one."""
    budget = record.get("judge_budget") or {}
    used, cap = budget.get("used", "-"), budget.get("max")
    return f"{used}/{cap}" if cap else f"{used}"


def save_rubric_set(
    path: Path,
    kept: list[tuple[Rubric, float]],
    template: dict[str, str],
    scoring: str,
    training: dict[str, Any],
    judge: dict[str, Any] | None = None,
) -> Path:
    """Write the kept rubrics with their refiner weights as a rubric set file, recording the
    scoring judge (``Judge.identity()``: model and P(yes) rule) the weights were learned with."""
    rubrics = [Rubric(r.id, r.text, float(w), dict(r.provenance)) for r, w in kept]
    return RubricSet(rubrics, dict(template), scoring, training, judge=judge).save(path)
