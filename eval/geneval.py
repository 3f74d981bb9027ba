"""GenEval (djghosh13/geneval) for a model or a LoRA checkpoint, in the official formats.

    python -m eval.geneval data.metadata=/data/flow_grpo/geneval/test_metadata.jsonl \\
        model.path=/models/sd35m lora=/runs/x/checkpoints/epoch_000060/lora \\
        reward=remote reward.url=http://127.0.0.1:8102
    python -m eval.geneval summarize_only=true results=/path/results.jsonl

1. Reads the metadata rows (``tag``, ``include``, optional ``exclude``, ``prompt``; a row without
   its tag ends the command with one line naming it).
2. Generates the official layout under ``<output_dir>/images``: ``<index:05d>/metadata.jsonl``
   (the row) and ``<index:05d>/samples/<n:05d>.png``, ``images_per_prompt`` (4) per prompt, as
   the official ``generation/diffusers_generate.py`` writes them, so the official
   ``evaluate_images.py`` can score that folder too. Each image's seed is
   ``crc32("<index>/<n>") + generation.seed``; a rerun keeps the images already there.
3. Scores every image with the reward (normally the GenEval reward behind the reward service,
   served with ``reward.only_strict=false`` so it returns the benchmark's decision as
   ``details["correct"]``) and writes ``results.jsonl`` with the official columns (``filename``,
   ``tag``, ``prompt``, ``correct``, ``reason``, ``metadata``, ``details``) plus ``strict`` and
   ``score`` (Flow-GRPO's reward decisions). An image the reward could not score (NaN) is left
   out and counted in ``summary.json``.
4. Summarises ``results.jsonl`` as the official ``evaluation/summary_scores.py`` does (its printed
   text, character for character, in ``summary.txt``): the share of correct images and of prompts
   with at least one correct image, per tag in order of first appearance, and the overall score =
   the mean of the per-tag accuracies.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image

from eval.common import (
    BenchmarkInputError,
    MissingInputError,
    check_entry,
    exit_on_input_error,
    protect_secrets,
    write_json,
)
from eval.generation import GenerationConfig, ImageJob, prepare_images
from rewards.base import Reward
from rewards.scalar.geneval import check_metadata

log = logging.getLogger(__name__)


def load_geneval(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The metadata rows of ``path`` (JSON lines), each checked; the first ``limit`` only."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"GenEval metadata file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkInputError(f"{path}:{number} is not JSON ({err.msg})") from None
        try:
            check_metadata(row, f"{path}:{number}")
        except ValueError as err:
            raise BenchmarkInputError(str(err)) from None
        if not isinstance(row.get("prompt"), str):
            raise BenchmarkInputError(f"{path}:{number} has no 'prompt'")
        rows.append(row)
    if not rows:
        raise BenchmarkInputError(f"no GenEval rows in {path}")
    return rows[:limit] if limit else rows


def image_jobs(
    rows: list[dict[str, Any]], folder: Path, images_per_prompt: int
) -> list[tuple[dict[str, Any], ImageJob]]:
    """The official folder layout: writes each ``<index>/metadata.jsonl``; one job per image."""
    jobs = []
    for index, row in enumerate(rows):
        prompt_dir = folder / f"{index:0>5}"
        (prompt_dir / "samples").mkdir(parents=True, exist_ok=True)
        (prompt_dir / "metadata.jsonl").write_text(json.dumps(row))
        for n in range(images_per_prompt):
            path = prompt_dir / "samples" / f"{n:05}.png"
            jobs.append((row, ImageJob(row["prompt"], path, key=f"{index}/{n}")))
    return jobs


def score_images(
    reward: Reward, items: list[tuple[dict[str, Any], Path]], batch_size: int
) -> tuple[list[dict[str, Any]], int]:
    """results.jsonl rows for the images ``items`` (metadata row, path), and how many were
    left out because the reward gave NaN."""
    rows, unscored = [], 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        images = [Image.open(path) for _, path in batch]
        metas = [row for row, _ in batch]
        out = reward(images, [m["prompt"] for m in metas], metas)
        if "correct" not in out.details:
            raise BenchmarkInputError(
                f"reward {reward.name} gives no 'correct' detail: score with the GenEval reward "
                "served with reward.only_strict=false"
            )
        strict = out.details.get("strict")
        for i, (meta, path) in enumerate(batch):
            correct = float(out.details["correct"][i])
            if math.isnan(float(out.scores[i])) or math.isnan(correct):
                unscored += 1
                continue
            rows.append({
                "filename": str(path), "tag": meta["tag"], "prompt": meta["prompt"],
                "correct": bool(correct), "reason": "", "metadata": json.dumps(meta),
                "details": "{}", "score": float(out.scores[i]),
                "strict": None if strict is None else bool(strict[i]),
            })  # fmt: skip
    return rows, unscored


def summarize_results(results: str | Path | list[dict[str, Any]]) -> dict[str, Any]:
    """The official summary of results.jsonl rows (a path or the rows), with its printed text."""
    if not isinstance(results, list):
        path = Path(results)
        if not path.is_file():
            raise MissingInputError(f"results file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        results = [json.loads(line) for line in lines if line.strip()]
    if not results:
        raise BenchmarkInputError("no results to summarise")
    by_prompt: dict[str, list[bool]] = {}
    by_tag: dict[str, list[bool]] = {}
    for row in results:
        by_prompt.setdefault(row["metadata"], []).append(bool(row["correct"]))
        by_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
    correct = [bool(row["correct"]) for row in results]
    tasks = {tag: {"accuracy": sum(v) / len(v), "correct": sum(v), "total": len(v)}
             for tag, v in by_tag.items()}  # fmt: skip
    overall = float(np.mean([task["accuracy"] for task in tasks.values()]))
    images_correct = sum(correct) / len(correct)
    prompts_correct = sum(any(v) for v in by_prompt.values()) / len(by_prompt)
    text = ["Summary", "=======", f"Total images: {len(results)}",
            f"Total prompts: {len(by_prompt)}", f"% correct images: {images_correct:.2%}",
            f"% correct prompts: {prompts_correct:.2%}", "", "Task breakdown",
            "=============="]  # fmt: skip
    for tag, task in tasks.items():
        text.append(f"{tag:<16} = {task['accuracy']:.2%} ({task['correct']} / {task['total']})")
    text += ["", f"Overall score (avg. over tasks): {overall:.5f}"]
    return {
        "overall": overall,
        "tasks": tasks,
        "images": len(results),
        "prompts": len(by_prompt),
        "correct_images": images_correct,
        "correct_prompts": prompts_correct,
        "text": "\n".join(text) + "\n",
    }


def run_geneval(
    pipe,
    reward: Reward,
    rows: list[dict[str, Any]],
    out_dir: Path,
    gen: GenerationConfig,
    images_per_prompt: int = 4,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given; else the images must be there), score and summarise
    under ``out_dir`` (images/, results.jsonl, summary.json, summary.txt)."""
    jobs = image_jobs(rows, out_dir / "images", images_per_prompt)
    _, found = prepare_images(pipe, [job for _, job in jobs], gen, "GenEval")
    items = [(row, path) for (row, _), path in zip(jobs, found) if path is not None]
    reward.check_prompts([row["prompt"] for row, _ in items], [row for row, _ in items])
    results, unscored = score_images(reward, items, batch_size)
    with open(out_dir / "results.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in results)
    summary = summarize_results(results)
    summary["coverage"] = {"images": len(jobs), "missing": len(jobs) - len(items),
                           "unscored": unscored, "scored": len(results)}  # fmt: skip
    scores = [row["score"] for row in results]
    summary["reward_mean"] = float(np.mean(scores)) if scores else float("nan")
    strict = [row["strict"] for row in results if row["strict"] is not None]
    summary["strict_accuracy"] = float(np.mean(strict)) if strict else float("nan")
    (out_dir / "summary.txt").write_text(summary["text"])
    write_json(out_dir / "summary.json", summary)
    return summary


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``geneval`` config."""
    from eval.command import reward_benchmark_run

    check_entry(cfg, "geneval")
    if cfg.get("summarize_only"):
        if not cfg.get("results"):
            raise BenchmarkInputError("summarize_only=true needs results=<results.jsonl>")
        summary = summarize_results(cfg.results)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", summary)
    else:
        if not cfg.data.get("metadata"):
            raise BenchmarkInputError("set data.metadata=<geneval test_metadata.jsonl>")
        rows = load_geneval(cfg.data.metadata, cfg.data.get("limit"))
        run = reward_benchmark_run(cfg, out, ("results.jsonl",))
        summary = run_geneval(run.pipe, run.reward(), rows, out, run.gen,
                              cfg.images_per_prompt, cfg.score_batch_size)  # fmt: skip
    print(summary["text"], end="")
    print(f"results in {out}")
    return summary


@hydra.main(config_path="../conf", config_name="geneval", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point; bad benchmark input ends the command with one line."""
    from eval.command import output_dir

    protect_secrets(cfg)
    with exit_on_input_error("eval.geneval"):
        evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
