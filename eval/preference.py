"""Accuracy of any reward on human preference benchmarks (MMRB2, HPDv3, Pick-a-Pic, jsonl).

    python -m eval.preference benchmark=mmrb2 data.path=/data/mmrb2/t2i.json reward=<name> ...

The reward scores each image of a pair against the pair's prompt; the pairwise decision is
``A`` if ``score(A) > score(B)``, ``B`` if lower, ``tie`` if equal and ``invalid`` if either
score is NaN (the reward's counted failure reasons are reported). A pair is correct when the
decision equals the human choice; a tie is always wrong, and so is an invalid decision except
on MMRB2, whose official flow leaves it out (its strict figure counts it wrong).

* MMRB2 follows its official protocol: each pair is one forward trial (A shown first) and one
  reverse trial (A/B swapped, judgement flipped back); accuracy = correct trials / judged
  trials, per ``prompt_source`` and overall. As in the official flow (``evaluate.py`` stores no
  judgement when the judge call fails, ``compute_accuracy.py`` counts only stored ones), a trial
  without a score (NaN: a failed judge call or an unreadable image) is left out and counted;
  ``strict_accuracy`` beside it counts such trials wrong (correct / (2 x pairs)). A tie is a
  judged trial and wrong. The trials go to ``mmrb2_predictions.json`` in the official
  ``{pair_id: {"forward": [{"judgement": ...}], "reverse": [...]}}`` format (``"tie"`` as
  such, an empty list for a failed trial), so the official scorer gives the same accuracy.
  A pointwise reward scores each image once, so both trials share the same two scores.
* Human ties (label 0.5, Pick-a-Pic) follow ``benchmark.tie_policy``: ``drop`` (left out of
  the accuracy and counted, the usual choice) or ``half`` (every decision on a tie earns 0.5;
  an invalid one, with a NaN score, earns nothing).

Outputs in the run folder (``output_dir``, else the Hydra run folder): ``results.json``,
``results.md`` (a table per source), ``predictions.jsonl`` (one line per pair with both
scores). ``predictions.jsonl`` grows batch by batch while the pairs are scored, so a crash loses
at most one batch: the same command with ``output_dir=<that folder>`` keeps the pairs it holds
with both scores and scores only the others (a pair with a NaN score is asked again); a torn
last line is skipped with a warning. A folder holding scores of other settings (benchmark,
data, reward, judge) is refused.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from eval.common import (
    BenchmarkInputError,
    atomic_write,
    check_entry,
    check_resume_settings,
    exit_on_input_error,
    fmt,
    markdown_table,
    nan_to_none,
    print_report,
    protect_secrets,
    run_dir,
    write_json,
)
from eval.leakage import LeakageError, check_leakage
from rewards.base import Reward
from rubric_learning.pairs import (
    TIE,
    CorruptImageError,
    PairDataError,
    PreferencePair,
    load_hpdv3,
    load_jsonl,
    load_mmrb2,
    load_pickapic,
    open_image,
)

log = logging.getLogger(__name__)

TIE_POLICIES = ("drop", "half")
UNREADABLE_IMAGE = "unreadable image"
PREDICTIONS = "predictions.jsonl"


@dataclass
class PairResult:
    """Both scores of one pair and the decision they imply."""

    id: str
    source: str
    label: float
    score_a: float
    score_b: float

    @property
    def judgement(self) -> str:
        return decide(self.score_a, self.score_b)


def decide(score_a: float, score_b: float) -> str:
    """``"A"``/``"B"`` for a strictly higher score, ``"tie"`` if equal, ``"invalid"`` on NaN."""
    if math.isnan(score_a) or math.isnan(score_b):
        return "invalid"
    if score_a > score_b:
        return "A"
    if score_b > score_a:
        return "B"
    return "tie"


def _flip(judgement: str) -> str:
    return {"A": "B", "B": "A"}.get(judgement, judgement)


def _load_batch(pairs: Sequence[PreferencePair]) -> tuple[list, list[int], Counter]:
    """Images of a batch of pairs as [a0, b0, a1, b1, ...]; unreadable ones become None."""
    images, bad, failures = [], [], Counter()
    for pair in pairs:
        for side, ref in (("A", pair.image_a), ("B", pair.image_b)):
            try:
                images.append(open_image(ref))
            except (FileNotFoundError, CorruptImageError) as err:
                log.warning("pair %s image %s: %s", pair.id, side, err)
                images.append(None)
                bad.append(len(images) - 1)
                failures[UNREADABLE_IMAGE] += 1
    return images, bad, failures


def _prediction_line(result: PairResult) -> str:
    return json.dumps(nan_to_none(asdict(result) | {"judgement": result.judgement})) + "\n"


def read_scored(path: Path, pairs: Sequence[PreferencePair]) -> dict[str, PairResult]:
    """The pairs of ``pairs`` that a predictions file of an earlier run scored on both sides
    (the last line of a pair wins). A line that does not read (a crash tore the last one) is
    skipped with a warning; a pair with a missing score is left to be scored again."""
    wanted = {p.id: p for p in pairs}
    scored: dict[str, PairResult] = {}
    if not path.is_file():
        return scored
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            pair = wanted.get(row["id"]) if isinstance(row, dict) else None
            a, b = (math.nan if row[k] is None else float(row[k]) for k in ("score_a", "score_b"))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s line %d does not read (%s): skipped, its pair is scored again",
                        path, number, err)  # fmt: skip
            continue
        if pair is not None and math.isfinite(a) and math.isfinite(b):
            scored[pair.id] = PairResult(pair.id, pair.source, pair.label, a, b)
    return scored


def score_pairs(
    reward: Reward,
    pairs: Sequence[PreferencePair],
    batch_size: int = 8,
    progress: Path | None = None,
) -> tuple[list[PairResult], Counter]:
    """Score both images of every pair with ``reward`` (``batch_size`` pairs per call). With
    ``progress`` (a predictions file), the pairs it already holds scored are kept, and each
    scored batch is appended to it at once, so a crash loses at most one batch."""
    done = read_scored(progress, pairs) if progress is not None else {}
    if done:
        log.info("%d of %d pairs already scored in %s: kept", len(done), len(pairs), progress)
    todo = [p for p in pairs if p.id not in done]
    failures: Counter = Counter()
    for start in tqdm(range(0, len(todo), batch_size), desc="scoring pairs", unit="batch"):
        batch = todo[start : start + batch_size]
        images, bad, load_failures = _load_batch(batch)
        failures += load_failures
        prompts = [p.prompt for p in batch for _ in (0, 1)]
        meta = [{"pair_id": p.id, "side": s, "source": p.source} for p in batch for s in "AB"]
        keep = [i for i in range(len(images)) if i not in bad]
        scores = torch.full((len(images),), float("nan"))
        if keep:
            out = reward(
                [images[i] for i in keep], [prompts[i] for i in keep], [meta[i] for i in keep]
            )
            scores[keep] = out.scores.float().cpu()
            failures += out.failures
        new = [
            PairResult(p.id, p.source, p.label, float(scores[2 * k]), float(scores[2 * k + 1]))
            for k, p in enumerate(batch)
        ]
        done.update((r.id, r) for r in new)
        if progress is not None:
            with open(progress, "a", encoding="utf-8") as f:
                f.writelines(_prediction_line(r) for r in new)
    return [done[p.id] for p in pairs], failures


def mmrb2_predictions(results: Sequence[PairResult], evaluator: str) -> dict[str, Any]:
    """The official MMRB2 predictions file: one forward and one reverse trial per pair."""

    def trial(judgement: str, meta: dict[str, float]) -> list[dict[str, Any]]:
        if judgement == "invalid":  # no score: stored as the official generator stores a failure
            return []
        return [{"judgement": judgement, "evaluator": evaluator, "metadata": meta}]

    out = {}
    for r in results:
        meta = {"score_a": r.score_a, "score_b": r.score_b}
        # Reverse trial: the images are shown swapped, so "A" now means the original B.
        out[r.id] = {
            "forward": trial(decide(r.score_a, r.score_b), meta),
            "reverse": trial(decide(r.score_b, r.score_a), meta),
        }
    return out


def _empty_row() -> dict[str, float]:
    return {"correct": 0.0, "total": 0, "ties_dropped": 0, "tie_judgements": 0, "invalid": 0}


def _finish(rows: dict[str, dict]) -> dict[str, dict]:
    for row in rows.values():
        row["accuracy"] = row["correct"] / row["total"] if row["total"] else float("nan")
    return dict(sorted(rows.items()))


def mmrb2_accuracy(predictions: dict[str, Any], pairs: Sequence[PreferencePair]) -> dict[str, dict]:
    """MMRB2 accuracy per source and overall from a predictions file, by the official rule: a
    trial counts when its first judgement is not empty (a reverse one flipped back) and is right
    when it equals the human choice, so a tie or any other text is wrong; a trial without a
    judgement (empty list, or the pair missing) is left out and counted in ``invalid``.
    ``strict_accuracy`` counts those trials wrong too."""
    rows: dict[str, dict] = defaultdict(_empty_row)
    for pair in pairs:
        pred = predictions.get(pair.id) or {}
        for name, flip in (("forward", False), ("reverse", True)):
            judgement = (pred.get(name) or [{}])[0].get("judgement")
            judgement = _flip(judgement) if flip else judgement
            for key in (pair.source, "overall"):
                row = rows[key]
                if not judgement:
                    row["invalid"] += 1
                    continue
                row["total"] += 1
                row["correct"] += float(judgement == ("A" if pair.label == 1.0 else "B"))
                row["tie_judgements"] += int(judgement == "tie")
    for row in rows.values():
        trials = row["total"] + row["invalid"]
        row["strict_accuracy"] = row["correct"] / trials if trials else float("nan")
    return _finish(rows)


def pairwise_accuracy(results: Sequence[PairResult], tie_policy: str = "drop") -> dict[str, dict]:
    """Pair accuracy per source and overall; human ties follow ``tie_policy``."""
    if tie_policy not in TIE_POLICIES:
        raise BenchmarkInputError(
            f"benchmark.tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}"
        )
    rows: dict[str, dict] = defaultdict(_empty_row)
    for r in results:
        judgement = r.judgement
        for key in (r.source, "overall"):
            row = rows[key]
            if r.label == TIE and tie_policy == "drop":
                row["ties_dropped"] += 1
                continue
            row["total"] += 1
            row["tie_judgements"] += int(judgement == "tie")
            row["invalid"] += int(judgement == "invalid")
            if r.label == TIE:  # any decision earns half, but a missing score stays wrong
                row["correct"] += 0.5 * (judgement != "invalid")
            else:
                row["correct"] += float(judgement == {1.0: "A", 0.0: "B"}[r.label])
    return _finish(rows)


TIE_POLICY_TEXT = {
    "drop": "human ties (label 0.5) are left out of the accuracy (counted in ties_dropped)",
    "half": "every decision on a human tie (label 0.5) earns 0.5, except a missing (NaN) score",
}
DECISION_TEXT = (
    "decision = A if score(A) > score(B), B if lower; equal scores (tie) are wrong, and so are "
    "missing (NaN) scores (MMRB2: left out, wrong in strict_accuracy)"
)


def evaluate_pairs(
    reward: Reward,
    pairs: Sequence[PreferencePair],
    benchmark: str,
    tie_policy: str = "drop",
    batch_size: int = 8,
    evaluator: str = "reward",
    progress: Path | None = None,
) -> dict[str, Any]:
    """Score every pair and compute the benchmark's accuracy; returns the full report.
    ``progress``: the predictions file that keeps scored pairs as they come (resume)."""
    if not pairs:
        raise BenchmarkInputError(f"{benchmark}: no pairs to evaluate")
    repeated = [i for i, n in Counter(p.id for p in pairs).items() if n > 1]
    if repeated:
        raise BenchmarkInputError(
            f"{benchmark}: {len(repeated)} pair id(s) appear more than once (e.g. "
            f"{repeated[0]!r}); each pair must be counted once"
        )
    results, failures = score_pairs(reward, pairs, batch_size, progress)
    report: dict[str, Any] = {
        "benchmark": benchmark,
        "num_pairs": len(pairs),
        "decision_rule": DECISION_TEXT,
        "failures": dict(failures),
        "results": results,
    }
    if benchmark == "mmrb2":
        preds = mmrb2_predictions(results, evaluator)
        report["metric"] = (
            "MMRB2: correct trials / judged trials, forward + reverse per pair; a trial without "
            "a score (failed judge call) is left out as in the official flow (invalid); "
            "strict_accuracy = correct trials / (2 x pairs)"
        )
        report["accuracy"] = mmrb2_accuracy(preds, pairs)
        report["mmrb2_predictions"] = preds
    else:
        report["metric"] = "pair accuracy"
        report["tie_policy"] = f"{tie_policy}: {TIE_POLICY_TEXT[tie_policy]}"
        report["accuracy"] = pairwise_accuracy(results, tie_policy)
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """results.json, results.md, predictions.jsonl (+ mmrb2_predictions.json) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = report.pop("results")
    preds = report.pop("mmrb2_predictions", None)
    with atomic_write(out_dir / PREDICTIONS) as tmp:
        tmp.write_text("".join(_prediction_line(r) for r in results), encoding="utf-8")
    if preds is not None:
        write_json(out_dir / "mmrb2_predictions.json", preds)
    write_json(out_dir / "results.json", report)
    acc = report["accuracy"]
    header = ["source", "accuracy", "correct", "total", "tie decisions", "invalid", "ties dropped"]

    strict = "strict_accuracy" in acc["overall"]
    if strict:
        header[2:2] = ["strict accuracy"]

    def table_row(name: str, v: dict[str, Any]) -> list[Any]:
        counts = (v["total"], v["tie_judgements"], v["invalid"], v["ties_dropped"])
        shown = (v["accuracy"], v["strict_accuracy"]) if strict else (v["accuracy"],)
        return [name, *shown, fmt(v["correct"], 1), *counts]

    rows = [table_row(k, v) for k, v in acc.items() if k != "overall"]
    rows.append(table_row("**overall**", acc["overall"]))
    text = f"# {report['benchmark']} preference accuracy\n\n"
    text += f"- metric: {report['metric']}\n- {report['decision_rule']}\n"
    if "tie_policy" in report:
        text += f"- tie policy: {report['tie_policy']}\n"
    if report["failures"]:
        text += f"- unscored images by reason: {report['failures']}\n"
    if report.get("leakage"):
        text += f"- pairs a rubric set learned from: {report['leakage']['summary']}\n"
    (out_dir / "results.md").write_text(text + "\n" + markdown_table(header, rows))


def load_pairs(benchmark_cfg: Any, data_cfg: Any) -> list[PreferencePair]:
    """Load ``data.path`` with the loader of ``benchmark.name`` (rubric_learning.pairs, the one
    set of loaders of the project) and keep the first ``data.limit`` pairs."""
    name, path, root = benchmark_cfg.name, data_cfg.get("path"), data_cfg.get("image_root")
    if not path:
        raise BenchmarkInputError(f"benchmark={name} needs data.path=<file>")
    if name == "mmrb2":
        pairs = load_mmrb2(path, image_root=root, prompts_path=data_cfg.get("prompts_path"))
    elif name == "hpdv3":
        pairs = load_hpdv3(path, image_root=root, seed=benchmark_cfg.get("shuffle_seed", 0))
    elif name == "pickapic":
        pairs = load_pickapic(path)
    elif name == "jsonl":
        pairs = load_jsonl(path, image_root=root)
    else:
        raise BenchmarkInputError(
            f"unknown benchmark {name!r}; choose mmrb2, hpdv3, pickapic or jsonl"
        )
    limit = data_cfg.get("limit")
    pairs = pairs[:limit] if limit else pairs
    _check_first_images(pairs, name)
    return pairs


def _check_first_images(pairs: Sequence[PreferencePair], name: str) -> None:
    """A wrong image folder fails at once, naming the path, instead of scoring all-NaN pairs."""
    for ref in (pairs[0].image_a, pairs[0].image_b) if pairs else ():
        if isinstance(ref, str) and not Path(ref).is_file():
            raise FileNotFoundError(
                f"benchmark={name}: image {ref} not found; set data.image_root to the folder "
                "that holds the images"
            )


RESUME_KEYS = ("benchmark", "data", "reward", "judge", "leakage")


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``preference`` config, written to ``out``."""
    from rewards import build_reward

    check_entry(cfg, "preference")
    pairs, leakage = check_leakage(load_pairs(cfg.benchmark, cfg.data), cfg)
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k))
                else cfg.get(k) for k in RESUME_KEYS}  # fmt: skip
    check_resume_settings(out, settings, "pick a new output_dir", results=(PREDICTIONS,))
    reward = build_reward(cfg.reward)
    evaluator = OmegaConf.select(cfg, "reward._target_", default="reward")
    report = evaluate_pairs(
        reward, pairs, cfg.benchmark.name, cfg.benchmark.tie_policy, cfg.batch_size, evaluator,
        progress=out / PREDICTIONS,
    )  # fmt: skip
    report["leakage"] = leakage
    write_report(report, out)
    overall = report["accuracy"]["overall"]
    strict = f" (strict {overall['strict_accuracy']:.4f})" if "strict_accuracy" in overall else ""
    print_report(
        out / "results.md", f"overall accuracy {overall['accuracy']:.4f}{strict}; results in {out}"
    )
    return report


@hydra.main(config_path="../conf", config_name="preference", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point: load the pairs, build the reward, score, write the report into
    ``output_dir`` (resumed) or the Hydra run folder; bad input ends in one line."""
    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir()
    protect_secrets(cfg)
    with exit_on_input_error("eval.preference", PairDataError, LeakageError, FileNotFoundError):
        evaluate(cfg, out)


if __name__ == "__main__":
    main()
