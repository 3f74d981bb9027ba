"""Visual text rendering (Flow-GRPO's OCR task) for a model or a LoRA checkpoint.

    python -m eval.ocr data.prompts=/data/flow_grpo/ocr/test.txt model.path=/models/sd35m \\
        lora=/runs/x/checkpoints/epoch_000060/lora reward=remote reward.url=http://127.0.0.1:8101

Generates ``images_per_prompt`` images per prompt (1, as Flow-GRPO's evaluation) as
``images/<index:05d>_<n>.png`` (seed ``crc32("<index>_<n>") + generation.seed``; a rerun keeps the
images already there), scores them with the reward (the OCR reward, in process or behind the
reward service) and writes ``results.jsonl`` (per image: prompt, quoted text, score) and
``summary.json``: ``ocr_mean``, the mean reward Flow-GRPO logs as ``eval_reward_ocr``, and
``exact``, the share of images whose text contains the quoted one (reward 1; our addition). A
prompt without a quoted text ends the command with one line naming it; an image the reward could
not score (NaN) is left out and counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
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
from rewards.scalar.ocr import check_ocr_prompt, quoted_text


def load_ocr_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """The prompts of a text file (one per line, blank lines skipped), each with quoted text."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"OCR prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p][:limit] if limit else [p for p in prompts if p]
    for prompt in prompts:
        try:
            check_ocr_prompt(prompt)
        except ValueError as err:
            raise BenchmarkInputError(f"{path}: {err}") from None
    if not prompts:
        raise BenchmarkInputError(f"no prompts in {path}")
    return prompts


def run_ocr(
    pipe,
    reward: Reward,
    prompts: list[str],
    out_dir: Path,
    gen: GenerationConfig,
    images_per_prompt: int = 1,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given), score and summarise under ``out_dir``."""
    jobs = [
        ImageJob(prompt, out_dir / "images" / f"{index:05d}_{n}.png", key=f"{index}_{n}")
        for index, prompt in enumerate(prompts)
        for n in range(images_per_prompt)
    ]
    _, found = prepare_images(pipe, jobs, gen, "OCR")
    items = [(job.prompt, path) for job, path in zip(jobs, found) if path is not None]
    reward.check_prompts([p for p, _ in items], [{} for _ in items])
    rows, unscored = [], 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        out = reward([Image.open(path) for _, path in batch], [p for p, _ in batch])
        for (prompt, path), score in zip(batch, out.scores.tolist()):
            if math.isnan(score):
                unscored += 1
                continue
            rows.append({"image": str(path), "prompt": prompt, "text": quoted_text(prompt),
                         "score": score, "exact": score == 1.0})  # fmt: skip
    with open(out_dir / "results.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    scores = [row["score"] for row in rows]
    summary = {
        "ocr_mean": sum(scores) / len(scores) if scores else float("nan"),
        "exact": sum(row["exact"] for row in rows) / len(rows) if rows else float("nan"),
        "coverage": {"images": len(jobs), "missing": len(jobs) - len(items),
                     "unscored": unscored, "scored": len(rows)},
    }  # fmt: skip
    write_json(out_dir / "summary.json", summary)
    return summary


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``ocr`` config."""
    from eval.command import reward_benchmark_run

    check_entry(cfg, "ocr")
    if not cfg.data.get("prompts"):
        raise BenchmarkInputError("set data.prompts=<flow_grpo ocr/test.txt>")
    prompts = load_ocr_prompts(cfg.data.prompts, cfg.data.get("limit"))
    run = reward_benchmark_run(cfg, out, ("results.jsonl",))
    summary = run_ocr(run.pipe, run.reward(), prompts, out, run.gen, cfg.images_per_prompt,
                      cfg.score_batch_size)  # fmt: skip
    print(f"OCR mean reward {summary['ocr_mean']:.4f}, exact {summary['exact']:.4f} "
          f"({summary['coverage']['scored']} images); results in {out}")  # fmt: skip
    return summary


@hydra.main(config_path="../conf", config_name="ocr", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point; bad benchmark input ends the command with one line."""
    from eval.command import output_dir

    protect_secrets(cfg)
    with exit_on_input_error("eval.ocr"):
        evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
