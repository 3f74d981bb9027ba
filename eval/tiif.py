"""TIIF-Bench (text-to-image instruction following) for the base model or a LoRA checkpoint.

    python -m eval.tiif data.prompt_dir=/data/TIIF-Bench/data/testmini_prompts \
        data.eval_dir=/data/TIIF-Bench/data/testmini_eval_prompts \
        model=sd35_medium model.path=/models/sd3.5-medium \
        lora=/runs/x/checkpoints/epoch_000060/lora \
        judge=openai judge.base_url=http://127.0.0.1:8000/v1 judge.model=Qwen2.5-VL-72B-Instruct

Flow, as the official scripts lay it out:

1. Read ``<type>_prompts.jsonl`` (``type``, ``short_description``, ``long_description``) and the
   line-aligned ``<type>_eval_prompts.jsonl`` (``yn_question_list``, ``yn_answer_list``).
2. Generate one image per case and description at
   ``images/<type>/<model_name>/<short_description|long_description>/<idx>.png`` (seeded,
   batched, resumable: existing images are kept).
3. Ask the judge all yes/no questions of an image in one prompt; the answer parses as in the
   official ``eval_with_vlm.py``: the lines that start with "yes"/"no" in order, and their count
   must equal the number of questions, otherwise every question of the image is wrong. Results
   go to ``eval_results/<model_name>/<type>/<short|long>/<idx>.json`` with the official keys
   (``attribute``, ``desc``, ``jsonl_file``, ``line_idx``, ``questions``, ``gt_answers``,
   ``model_pred``, ``model_output``); an existing result is kept (resume).
4. Score per (type, short|long) = correct answers / questions; a group's score = the mean of its
   types' scores, the 9 groups as in the official ``summary_dimension_results.py``, Overall = the
   mean of the 9 groups; short and long reported separately (``summary.json``, ``summary.md``).

The official script draws one of three prompt wordings at random per image; this one uses one
fixed template (``DEFAULT_PROMPT``, ``{questions}`` = the questions, one per line), so that a run
is reproducible at temperature 0, or, given a list (``judging.template``), the wording picked by
a hash of each image's key, which varies wordings across images and still repeats exactly.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from eval.command import benchmark_run, output_dir
from eval.common import check_entry, fmt, markdown_table, print_report, write_json
from eval.generation import GenerationConfig, ImageJob, prepare_images
from eval.judging import JudgeOptions, generate_answers, resolve_judge, yes_no_by_prob
from rewards.judges.base import Judge

log = logging.getLogger(__name__)

DESCRIPTIONS = ("short_description", "long_description")

# The 9 groups of TIIF-Bench (official summary_dimension_results.py), by following level.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Attribute": ("basic", ("shape+color", "color+texture", "texture+color", "shape+texture")),
    "Relation": ("basic", ("2d_spatial_relation", "3d_spatial_relation", "action+2d",
                           "action+3d")),
    "Reasoning": ("basic", ("numeracy", "negation", "differentiation", "comparison")),
    "Attribute+Relation": ("advanced", ("action+color", "action+texture", "color+2d", "color+3d",
                                        "shape+2d", "shape+3d", "texture+2d", "texture+3d")),
    "Attribute+Reasoning": ("advanced", ("numeracy+color", "numeracy+texture",
                                         "comparison+color", "comparison+texture",
                                         "differentiation+color", "differentiation+texture",
                                         "negation+color", "negation+texture")),
    "Relation+Reasoning": ("advanced", ("numeracy+2d", "numeracy+3d", "comparison+2d",
                                        "comparison+3d", "differentiation+2d",
                                        "differentiation+3d", "negation+2d", "negation+3d")),
    "Text Generation": ("advanced", ("text",)),
    "Style Control": ("advanced", ("style",)),
    "Real World": ("real_world", ("real_world",)),
}  # fmt: skip

DEFAULT_PROMPT = (
    "Examine the image closely and answer each yes/no question below about what it shows.\n\n"
    "Questions:\n{questions}\n\n"
    "Answer with one line per question, in the order given. Begin each line with yes or no, "
    "then a brief reason. Do not write anything else."
)

_YES_NO = re.compile(r"^(yes|no)\b", flags=re.IGNORECASE)


class TiifDataError(ValueError):
    """TIIF prompt/eval files that do not follow the official format."""


@dataclass(frozen=True)
class TiifCase:
    """One line of a prompt file with its line-aligned yes/no questions."""

    type: str
    index: int
    short_description: str
    long_description: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    jsonl_file: str  # the eval file's name, as the official judge script records it


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TiifDataError(f"{path}:{n}: not valid JSON ({err})") from err
    return rows


def load_tiif(
    prompt_dir: str | Path,
    eval_dir: str | Path,
    types: Sequence[str] | None = None,
    limit_per_type: int | None = None,
) -> list[TiifCase]:
    """Read every ``<type>_prompts.jsonl`` of ``prompt_dir`` with its eval file of ``eval_dir``."""
    prompt_dir, eval_dir = Path(prompt_dir), Path(eval_dir)
    for folder in (prompt_dir, eval_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"TIIF folder not found: {folder}")
    files = sorted(prompt_dir.glob("*_prompts.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *_prompts.jsonl files in {prompt_dir}")
    cases = []
    for file in files:
        name = file.name.removesuffix("_prompts.jsonl")
        if types is not None and name not in types:
            continue
        eval_file = eval_dir / f"{name}_eval_prompts.jsonl"
        if not eval_file.is_file():
            raise FileNotFoundError(f"{file.name} has no eval file {eval_file}")
        prompts, evals = _read_jsonl(file), _read_jsonl(eval_file)
        if len(prompts) != len(evals):
            raise TiifDataError(f"{file} has {len(prompts)} lines but {eval_file} has {len(evals)}")
        for idx, (p, e) in enumerate(zip(prompts, evals)):
            where = f"{file.name} / {eval_file.name} line {idx + 1}"
            try:
                kind, questions, answers = p["type"], e["yn_question_list"], e["yn_answer_list"]
                short, long = p["short_description"], p["long_description"]
            except KeyError as err:
                raise TiifDataError(f"{where}: missing field {err}") from err
            if e.get("type", kind) != kind:
                raise TiifDataError(f"{where}: type {kind!r} vs {e['type']!r}")
            if len(questions) != len(answers) or not questions:
                raise TiifDataError(f"{where}: {len(questions)} questions, {len(answers)} answers")
            if any(a.strip().lower() not in ("yes", "no") for a in answers):
                raise TiifDataError(f"{where}: answers must be yes or no")
            cases.append(
                TiifCase(kind, idx, short, long, tuple(questions), tuple(answers), eval_file.name)
            )
            if limit_per_type is not None and idx + 1 >= limit_per_type:
                break
    if types is not None:
        missing = set(types) - {c.type for c in cases}
        if missing:
            raise FileNotFoundError(f"no TIIF prompt file for type(s) {sorted(missing)}")
    return cases


def image_key(case: TiifCase, desc: str) -> str:
    """``<type>/<desc>/<idx>``: what an image's seed and judge-template pick derive from."""
    return f"{case.type}/{desc}/{case.index}"


def image_path(images_dir: Path, model_name: str, case: TiifCase, desc: str) -> Path:
    """``<images_dir>/<type>/<model_name>/<desc>/<idx>.png`` (the official layout)."""
    return images_dir / case.type / model_name / desc / f"{case.index}.png"


def result_path(results_dir: Path, model_name: str, case: TiifCase, desc: str) -> Path:
    """``<results_dir>/<model_name>/<type>/<short|long>/<idx>.json`` (the official layout)."""
    return results_dir / model_name / case.type / desc.split("_")[0] / f"{case.index}.json"


def parse_yes_no(text: str, num_questions: int) -> list[str] | None:
    """The official rule: the lines starting with yes/no, in order; None unless their count
    equals the number of questions."""
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    preds = [m.group(1).lower() for m in map(_YES_NO.match, lines) if m]
    return preds if len(preds) == num_questions else None


def format_question_prompt(template: str, questions: Sequence[str]) -> str:
    return template.replace("{questions}", "\n".join(q.strip() for q in questions))


def _result_record(case: TiifCase, desc: str, preds: list[str], output: str) -> dict[str, Any]:
    return {
        "attribute": case.type,
        "desc": desc,
        "jsonl_file": case.jsonl_file,
        "line_idx": case.index,
        "questions": list(case.questions),
        "gt_answers": list(case.answers),
        "model_pred": preds,
        "model_output": output,
    }


def judge_images(
    judge: Judge,
    tasks: Sequence[tuple[TiifCase, str, Path, Path]],
    opts: JudgeOptions,
) -> int:
    """Judge each (case, desc, image, result file) whose result file does not exist yet; returns
    how many were judged. An unparseable answer is written with every prediction "invalid"."""
    todo = [t for t in tasks if not t[3].is_file()]
    opts.check_placeholders(DEFAULT_PROMPT, "{questions}")
    step = opts.batch_size if opts.answer_mode == "generate" else 1
    for start in tqdm(range(0, len(todo), step), desc="TIIF judging", unit="batch"):
        chunk = todo[start : start + step]
        images = [Image.open(t[2]).convert("RGB") for t in chunk]
        if opts.answer_mode == "generate":
            texts = [
                format_question_prompt(
                    opts.template_for(image_key(case, desc), DEFAULT_PROMPT), case.questions
                )
                for case, desc, _, _ in chunk
            ]
            outputs = generate_answers(judge, list(zip(images, texts)), opts)
            records = []
            for (case, desc, _, _), out in zip(chunk, outputs):
                preds = parse_yes_no(out, len(case.questions))
                record = _result_record(case, desc, preds or ["invalid"] * len(case.questions), out)
                if preds is None:
                    record["parse_error"] = "answer count does not match the question count"
                records.append(record)
        else:
            (case, desc, _, _), image = chunk[0], images[0]
            preds, probs, reasons = yes_no_by_prob(judge, image, "", case.questions)
            record = _result_record(case, desc, preds, json.dumps({"p_yes": probs}))
            record["reasons"] = reasons
            records = [record]
        for (_, _, _, out_path), record in zip(chunk, records):
            write_json(out_path, record)
    return len(todo)


def _score_file(path: Path, case: TiifCase) -> tuple[int, int, int]:
    """(correct, questions, unparsed) of one result file; a missing file counts all wrong."""
    if not path.is_file():
        return 0, len(case.questions), 1
    record = json.loads(path.read_text(encoding="utf-8"))
    preds = record.get("model_pred") or []
    correct = sum(str(p).strip().lower() == g.strip().lower() for p, g in zip(preds, case.answers))
    return correct, len(case.answers), int("parse_error" in record or "invalid" in preds)


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarize(
    cases: Sequence[TiifCase], results_dir: Path, model_name: str, descriptions=DESCRIPTIONS
) -> dict[str, Any]:
    """Per-type, per-group, per-level and overall scores, short and long separately."""
    per_type: dict[str, dict[str, dict]] = {}
    for case in cases:
        for desc in descriptions:
            key = desc.split("_")[0]
            row = per_type.setdefault(case.type, {}).setdefault(
                key, {"correct": 0, "total": 0, "unparsed_images": 0, "images": 0}
            )
            correct, total, unparsed = _score_file(
                result_path(results_dir, model_name, case, desc), case
            )
            row["correct"] += correct
            row["total"] += total
            row["unparsed_images"] += unparsed
            row["images"] += 1
    for rows in per_type.values():
        for row in rows.values():
            row["score"] = row["correct"] / row["total"]
    keys = [d.split("_")[0] for d in descriptions]
    known = {t for _, members in GROUPS.values() for t in members}
    unknown = sorted(set(per_type) - known)
    if unknown:
        log.warning("TIIF types outside the 9 groups (left out of groups/overall): %s", unknown)

    def type_mean(members: Sequence[str], key: str) -> float:
        return _mean([per_type[t][key]["score"] for t in members if t in per_type])

    groups = {
        name: {key: type_mean(members, key) for key in keys}
        for name, (_, members) in GROUPS.items()
    }
    levels = {
        level: {
            key: type_mean([t for lv, ms in GROUPS.values() if lv == level for t in ms], key)
            for key in keys
        }
        for level in ("basic", "advanced", "real_world")
    }
    overall = {key: _mean([g[key] for g in groups.values()]) for key in keys}
    return {
        "model_name": model_name,
        "metric": "type score = correct yes/no answers / questions; group = mean of its types; "
        "overall = mean of the 9 groups (groups without images skipped); unparseable = wrong",
        "overall": overall,
        "levels": levels,
        "groups": groups,
        "types": per_type,
        "types_outside_groups": unknown,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (groups + overall, then every type)."""
    keys = list(summary["overall"])
    text = f"# TIIF-Bench: {summary['model_name']}\n\n{summary['metric']}\n\n"
    rows = [[name, *(g[k] for k in keys)] for name, g in summary["groups"].items()]
    rows += [[f"{lv} (all types)", *(v[k] for k in keys)] for lv, v in summary["levels"].items()]
    rows.append(["**Overall (9 groups)**", *(summary["overall"][k] for k in keys)])
    text += markdown_table(["group", *keys], rows) + "\n"
    type_rows = [
        [t, *(f"{fmt(v[k]['score'])} ({v[k]['correct']}/{v[k]['total']})" for k in keys)]
        for t, v in sorted(summary["types"].items())
    ]
    return text + markdown_table(["type", *keys], type_rows)


def run_tiif(
    pipe,
    judge: Judge | Callable[[], Judge],
    cases: Sequence[TiifCase],
    out_dir: Path,
    model_name: str,
    gen: GenerationConfig,
    opts: JudgeOptions,
    descriptions: Sequence[str] = DESCRIPTIONS,
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given), judge and summarise; writes everything under
    ``out_dir`` (images/, eval_results/, summary.json, summary.md) and returns the summary.
    ``judge`` may be a factory, called only after generation (the generator's memory is
    then already free for it)."""
    bad = set(descriptions) - set(DESCRIPTIONS)
    if bad:
        raise ValueError(f"descriptions must be among {DESCRIPTIONS}, got {sorted(bad)}")
    images_dir, results_dir = out_dir / "images", out_dir / "eval_results"
    pairs = [(case, desc) for desc in descriptions for case in cases]
    jobs = [
        ImageJob(getattr(case, desc), image_path(images_dir, model_name, case, desc),
                 key=image_key(case, desc))
        for case, desc in pairs
    ]  # fmt: skip
    made = prepare_images(pipe, jobs, gen, "TIIF")
    tasks = [
        (case, desc, job.path, result_path(results_dir, model_name, case, desc))
        for (case, desc), job in zip(pairs, jobs)
    ]
    for _, _, image, result in tasks:
        if image in made:  # judged on an earlier image of this name: judge the new one
            result.unlink(missing_ok=True)
    judge_images(resolve_judge(judge), tasks, opts)
    summary = summarize(cases, results_dir, model_name, descriptions)
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    return summary


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``tiif`` config: cases, generation, judge, summary."""
    check_entry(cfg, "tiif")
    cases = load_tiif(
        cfg.data.prompt_dir, cfg.data.eval_dir, cfg.data.types, cfg.data.limit_per_type
    )
    run = benchmark_run(cfg, out)
    summary = run_tiif(
        run.pipe, run.judge, cases, out, run.model_name, run.gen, run.opts, cfg.descriptions
    )
    print_report(out / "summary.md", f"TIIF overall: {summary['overall']}; results in {out}")
    return summary


@hydra.main(config_path="../conf", config_name="tiif", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point: everything goes to ``output_dir`` or else the Hydra run folder."""
    evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
