"""UniGenBench++ for the base model or a LoRA checkpoint.

    python -m eval.unigenbench data.csv=/data/UniGenBench/data/test_prompts_en.csv \
        model=sd35_medium model.path=/models/sd3.5-medium \
        lora=/runs/x/checkpoints/epoch_000060/lora \
        judge=openai judge.base_url=http://127.0.0.1:8000/v1 judge.model=UniGenBench-EvalModel

Flow, as the official scripts lay it out:

1. Read the CSV (``index``, ``prompt_en``, ``sub_dims_en``: JSON with ``Testpoints`` and
   ``Testpoint Description``). The official long-prompt CSV has a row whose JSON is malformed;
   ``data.malformed_rows=skip`` (default) leaves such rows out and lists them in the output,
   ``error`` stops with the row number.
2. Generate ``images_per_prompt`` (4) images per prompt, named ``{index}_{j}.png`` in
   ``images/<model_name>/`` (seeded, batched, resumable).
3. Ask the judge about every image with all its testpoints (definition + what the prompt asks);
   the answer must contain ``<score>[0/1, ...]</score>`` with one entry per testpoint, otherwise
   (unparseable) every testpoint of that image scores 0. Rows go to the official CSV
   ``results/<model_name>_en.csv`` (``index, prompt, testpoint, output, result_json, img_path``);
   images already in it are not judged again (resume).
4. Accuracy per primary dimension (the part of the testpoint name before " - ") and per sub
   dimension (the full testpoint name), as the official script counts them: a testpoint of an
   image is correct when its score is 1. ``scores.json`` holds both, plus the overall figure,
   defined here as the unweighted mean of the primary-dimension accuracies (the official script
   prints none), and the plain testpoint accuracy over all images.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from eval.command import benchmark_run, output_dir
from eval.common import atomic_write, check_entry, markdown_table, print_report, write_json
from eval.generation import GenerationConfig, ImageJob, prepare_images
from eval.judging import JudgeOptions, generate_answers, resolve_judge, yes_no_by_prob
from rewards.judges.base import Judge

log = logging.getLogger(__name__)

# What each testpoint checks (short definitions, so the judge knows what a checkpoint means).
TESTPOINTS: dict[str, str] = {
    "Relationship - Comparison": "two entities compared on some attribute",
    "Relationship - Composition": "one entity made up of one or more other entities",
    "Relationship - Inclusion": "an entity contained in a container, which may be a flat "
    "surface such as a picture on a wall",
    "Relationship - Similarity": "different entities that resemble each other",
    "Compound - Imagination": "things that cannot happen in real life",
    "Compound - Feature Matching": "different entities each carrying their own kind of attribute",
    "Attribute - Size": "size, height, length, thickness or width of a subject",
    "Attribute - Expression": "a facial expression that shows a clear emotion",
    "Attribute - Quantity": "the exact number of items, especially three or more",
    "Attribute - Material": "the material or texture of an entity",
    "Attribute - Color": "the colours of entities",
    "Attribute - Shape": "the shapes of entities",
    "Entity Layout - Two-Dimensional Space": "where entities are placed in the image plane",
    "Entity Layout - Three-Dimensional Space": "where entities are placed in depth",
    "Action - Full-body (Character/Anthropomorphic)": "a whole-body action of a person or "
    "anthropomorphic character",
    "Action - Hand (Character/Anthropomorphic)": "hand actions, with hands and fingers complete "
    "and undistorted",
    "Action - Animal": "an action performed by an animal",
    "Action - Contact Interaction": "entities physically touching or acting on each other",
    "Action - Non-contact Interaction": "entities interacting without touch, such as eye contact",
    "Action - State": "an ongoing state of an entity, usually described by a verb",
    "Grammar - Negation": "something the prompt says is absent or not so",
    "Grammar - Pronoun Reference": "pronouns resolved to the right entity",
    "Grammar - Consistency": "an attribute shared by several entities",
    "World Knowledge": "knowledge of well-known people, places, objects, domains or slang",
    "Style": "an art, painting, photography or design style, or an artist's manner",
    "Text Generation": "the exact text asked for, nothing missing and nothing extra",
    "Logical Reasoning": "what the prompt implies and needs reasoning to depict",
}

DEFAULT_PROMPT = (
    "You check whether a generated image meets a list of checkpoints taken from its prompt. "
    "Describe only what is visible.\n\n"
    "Prompt: {prompt}\n\n"
    "Checkpoints (name: what it means -- what the prompt asks for):\n{checkpoints}\n\n"
    "Judge each checkpoint on its own: 1 if the image meets it, 0 if not. Reply in this format, "
    "with one list entry per checkpoint, in order:\n"
    '<analysis>["analysis of checkpoint 1", ...]</analysis>\n<score>[1, 0, ...]</score>'
)

YES_PROB_QUESTION = "Does the image show {description} ({testpoint}: {definition})?"

_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
MALFORMED_POLICIES = ("skip", "error")
CSV_COLUMNS = ["index", "prompt", "testpoint", "output", "result_json", "img_path"]


class UniGenBenchDataError(ValueError):
    """A UniGenBench CSV that does not follow the official format."""


@dataclass(frozen=True)
class UgbCase:
    """One prompt with its testpoints and what each asks for."""

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]


def primary_dimension(testpoint: str) -> str:
    """``"Attribute - Color"`` -> ``"Attribute"``; names without " - " are their own primary."""
    return testpoint.split("-", 1)[0].strip()


def load_unigenbench(
    path: str | Path, malformed_rows: str = "skip", limit: int | None = None
) -> tuple[list[UgbCase], list[int]]:
    """Read the official CSV; returns the cases and the indices of skipped malformed rows."""
    if malformed_rows not in MALFORMED_POLICIES:
        raise ValueError(f"malformed_rows must be one of {MALFORMED_POLICIES}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UniGenBench CSV not found: {path}")
    frame = pd.read_csv(path)
    missing = {"index", "prompt_en", "sub_dims_en"} - set(frame.columns)
    if missing:
        raise UniGenBenchDataError(f"{path}: missing column(s) {sorted(missing)}")
    cases, skipped = [], []
    for row in frame.itertuples(index=False):
        where = f"{path} index {row.index}"
        try:
            dims = json.loads(row.sub_dims_en)
            testpoints, descs = dims["Testpoints"], dims["Testpoint Description"]
            if len(testpoints) != len(descs) or not testpoints:
                raise UniGenBenchDataError(
                    f"{len(testpoints)} testpoints vs {len(descs)} descriptions"
                )
        except (json.JSONDecodeError, KeyError, TypeError, UniGenBenchDataError) as err:
            if malformed_rows == "error":
                raise UniGenBenchDataError(f"{where}: malformed sub_dims_en ({err})") from err
            log.warning("%s: malformed sub_dims_en skipped (%s)", where, err)
            skipped.append(int(row.index))
            continue
        unknown = sorted(set(testpoints) - set(TESTPOINTS))
        if unknown:
            raise UniGenBenchDataError(f"{where}: unknown testpoint(s) {unknown}")
        cases.append(UgbCase(int(row.index), str(row.prompt_en), tuple(testpoints), tuple(descs)))
        if limit is not None and len(cases) >= limit:
            break
    return cases, skipped


def format_judge_prompt(template: str, case: UgbCase) -> str:
    lines = [
        f"{i + 1}. {tp}: {TESTPOINTS[tp]} -- {desc}"
        for i, (tp, desc) in enumerate(zip(case.testpoints, case.descriptions))
    ]
    return template.replace("{prompt}", case.prompt).replace("{checkpoints}", "\n".join(lines))


def parse_scores(text: str, num_testpoints: int) -> tuple[list[int] | None, list | None]:
    """``(scores, analysis)`` from ``<score>[...]</score>`` (and ``<analysis>`` if present);
    scores is None unless it is a list of 0/1 with one entry per testpoint."""
    match = _SCORE.search(text or "")
    if not match:
        return None, None
    try:
        scores = ast.literal_eval(match.group(1).strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None, None
    if (
        not isinstance(scores, list | tuple)
        or len(scores) != num_testpoints
        or any(isinstance(s, bool) or s not in (0, 1) for s in scores)
    ):
        return None, None
    analysis = None
    found = _ANALYSIS.search(text)
    if found:
        try:
            analysis = ast.literal_eval(found.group(1).strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            analysis = found.group(1).strip()
    return [int(s) for s in scores], analysis


def _row(case: UgbCase, img_path: Path, output: str, scores, analysis, error=None) -> dict:
    result = {
        "prompt": case.prompt,
        "testpoint": list(case.testpoints),
        "analysis": analysis,
        "score": scores,
    }
    if error:
        result["parse_error"] = error
    return {
        "index": str(case.index),
        "prompt": case.prompt,
        "testpoint": str(list(case.testpoints)),
        "output": output,
        "result_json": json.dumps(result, ensure_ascii=False, indent=4),
        "img_path": str(img_path),
    }


def _judge_one_batch(judge: Judge, chunk, opts: JudgeOptions) -> list[dict]:
    images = [Image.open(path).convert("RGB") for _, path in chunk]
    rows = []
    if opts.answer_mode == "generate":
        texts = [
            format_judge_prompt(opts.template_for(path.stem, DEFAULT_PROMPT), case)
            for case, path in chunk
        ]
        for (case, path), out in zip(
            chunk, generate_answers(judge, list(zip(images, texts)), opts)
        ):
            scores, analysis = parse_scores(out, len(case.testpoints))
            error = (
                None
                if scores is not None
                else "no <score>[0/1, ...]</score> list of the right length"
            )
            rows.append(
                _row(case, path, out, scores or [0] * len(case.testpoints), analysis, error)
            )
        return rows
    for (case, path), image in zip(chunk, images):
        questions = [
            YES_PROB_QUESTION.format(description=d, testpoint=t, definition=TESTPOINTS[t])
            for t, d in zip(case.testpoints, case.descriptions)
        ]
        answers, probs, reasons = yes_no_by_prob(judge, image, f"Prompt: {case.prompt}", questions)
        scores = [int(a == "yes") for a in answers]
        error = (
            None
            if "invalid" not in answers
            else f"unanswered: {sorted(set(filter(None, reasons)))}"
        )
        rows.append(_row(case, path, json.dumps({"p_yes": probs}), scores, None, error))
    return rows


def _file_names(frame: pd.DataFrame) -> pd.Series:
    """The image file name (``{index}_{j}.png``) of every row of a results CSV."""
    return frame["img_path"].map(lambda p: Path(p).name)


def judge_images(
    judge: Judge,
    tasks: Sequence[tuple[UgbCase, Path]],
    csv_path: Path,
    opts: JudgeOptions,
    stale: Sequence[Path] = (),
) -> int:
    """Judge the images not yet in ``csv_path`` (rows of ``stale`` images, made again since
    they were judged, are dropped first); the CSV is rewritten after every batch so an
    interrupted run resumes where it stopped. Rows are matched by image file name (unique in a
    model's CSV), so a moved run folder still resumes. Returns how many images were judged."""
    done = (
        pd.read_csv(csv_path, dtype=str)
        if csv_path.is_file()
        else pd.DataFrame(columns=CSV_COLUMNS)
    )
    done = done[~_file_names(done).isin({p.name for p in stale})]
    seen = set(_file_names(done))
    todo = [t for t in tasks if t[1].name not in seen]
    opts.check_placeholders(DEFAULT_PROMPT, "{prompt}", "{checkpoints}")
    rows = done.to_dict("records")
    for start in tqdm(
        range(0, len(todo), opts.batch_size), desc="UniGenBench judging", unit="batch"
    ):
        rows += _judge_one_batch(judge, todo[start : start + opts.batch_size], opts)
        with atomic_write(csv_path) as tmp:
            pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(tmp, index=False)
    return len(todo)


OVERALL_DEFINITION = (
    "overall = unweighted mean of the primary-dimension accuracies; a testpoint counts as "
    "correct when the judge scored it 1 (unparseable answers score 0)"
)


def summarize(csv_path: Path, img_paths: Sequence[Path] | None = None) -> dict[str, Any]:
    """Primary- and sub-dimension accuracies from the official CSV (only the rows of the
    images named as in ``img_paths``, if given), the overall figure and the count of
    unparseable answers."""
    frame = pd.read_csv(csv_path, dtype=str)
    if img_paths is not None:
        frame = frame[_file_names(frame).isin({p.name for p in img_paths})]
    primary: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    sub: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    unparsed = 0
    for row in frame.itertuples(index=False):
        result = json.loads(row.result_json)
        unparsed += int("parse_error" in result)
        for testpoint, score in zip(ast.literal_eval(row.testpoint), result["score"]):
            for table, key in ((primary, primary_dimension(testpoint)), (sub, testpoint)):
                table[key][0] += int(score == 1)
                table[key][1] += 1

    def acc(table):
        return {
            k: {"correct": c, "total": t, "accuracy": c / t} for k, (c, t) in sorted(table.items())
        }

    primary_acc, sub_acc = acc(primary), acc(sub)
    correct, total = sum(c for c, _ in sub.values()), sum(t for _, t in sub.values())
    means = [v["accuracy"] for v in primary_acc.values()]
    return {
        "overall": sum(means) / len(means) if means else math.nan,
        "overall_definition": OVERALL_DEFINITION,
        "testpoint_accuracy": correct / total if total else math.nan,
        "num_images": len(frame),
        "unparsed_images": unparsed,
        "primary": primary_acc,
        "sub": sub_acc,
    }


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    text = f"# UniGenBench++: {title}\n\n{summary['overall_definition']}\n\n"
    rows = [
        [k, v["accuracy"], f"{v['correct']}/{v['total']}"] for k, v in summary["primary"].items()
    ]
    rows.append(["**Overall**", summary["overall"], ""])
    text += markdown_table(["primary dimension", "accuracy", "correct"], rows) + "\n"
    sub_rows = [
        [k, v["accuracy"], f"{v['correct']}/{v['total']}"] for k, v in summary["sub"].items()
    ]
    return text + markdown_table(["sub dimension", "accuracy", "correct"], sub_rows)


def run_unigenbench(
    pipe,
    judge: Judge | Callable[[], Judge],
    cases: Sequence[UgbCase],
    out_dir: Path,
    model_name: str,
    gen: GenerationConfig,
    opts: JudgeOptions,
    images_per_prompt: int = 4,
    skipped_rows: Sequence[int] = (),
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given), judge and summarise under ``out_dir``
    (images/<model_name>/, results/<model_name>_en.csv, scores.json, scores.md)."""
    images_dir = out_dir / "images" / model_name
    jobs = [
        (case, ImageJob(case.prompt, images_dir / f"{case.index}_{j}.png", key=f"{case.index}_{j}"))
        for case in cases
        for j in range(images_per_prompt)
    ]
    made = prepare_images(pipe, [job for _, job in jobs], gen, "UniGenBench")
    csv_path = out_dir / "results" / f"{model_name}_en.csv"
    tasks = [(case, job.path) for case, job in jobs]
    judge_images(resolve_judge(judge), tasks, csv_path, opts, stale=sorted(made))
    summary = summarize(csv_path, [path for _, path in tasks])
    summary["model_name"] = model_name
    summary["skipped_malformed_rows"] = list(skipped_rows)
    write_json(out_dir / "scores.json", summary)
    (out_dir / "scores.md").write_text(summary_markdown(summary, model_name))
    return summary


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``unigenbench`` config: CSV, generation, judge, scores."""
    check_entry(cfg, "unigenbench")
    cases, skipped = load_unigenbench(cfg.data.csv, cfg.data.malformed_rows, cfg.data.limit)
    run = benchmark_run(cfg, out)
    summary = run_unigenbench(
        run.pipe, run.judge, cases, out, run.model_name, run.gen, run.opts,
        cfg.images_per_prompt, skipped,
    )  # fmt: skip
    print_report(
        out / "scores.md",
        f"UniGenBench overall {summary['overall']:.4f} ({OVERALL_DEFINITION}); results in {out}",
    )
    return summary


@hydra.main(config_path="../conf", config_name="unigenbench", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point: everything goes to ``output_dir`` or else the Hydra run folder."""
    evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
