"""TIIF-Bench (text-to-image instruction following) for the base model or a LoRA checkpoint.

    python -m eval.tiif data.prompt_dir=/data/TIIF-Bench/data/testmini_prompts \
        data.eval_dir=/data/TIIF-Bench/data/testmini_eval_prompts \
        model=sd35_medium model.path=/models/sd3.5-medium \
        lora=/runs/x/checkpoints/epoch_000060/lora \
        judge=openai judge.base_url=http://127.0.0.1:8000/v1 judge.model=Qwen2.5-VL-72B-Instruct
    # summarise an existing results folder (ours or the official eval_with_vlm.py's), no model
    python -m eval.tiif summarize_only=true results_dir=/runs/tiif/eval_results model_name=m

Flow, as the official scripts (A113N-W3I/TIIF-Bench ``eval/``) lay it out:

1. Read ``<type>_prompts.jsonl`` (``type``, ``short_description``, ``long_description``) and the
   line-aligned ``<type>_eval_prompts.jsonl`` (``yn_question_list``, ``yn_answer_list``).
2. Generate one image per case and description at
   ``images/<type>/<model_name>/<short_description|long_description>/<idx>.png`` (seeded,
   batched, resumable: existing images, also ``.jpg``/``.jpeg``/``.webp``, are kept).
3. Ask the judge all yes/no questions of an image in one prompt (``judging.prompt=official``:
   the official system message and its three wordings, one per image picked by the image's
   key). The answer parses as in the official ``eval_with_vlm.py``: the lines that start with
   "yes"/"no", in order, and their count must equal the number of questions. The official
   script re-asks an answer that does not parse until it parses; here it is re-asked up to
   ``judging.retries`` times at ``judging.retry_temperature``, then left out and counted.
   Results go to ``eval_results/<model_name>/<type>/<short|long>/<idx>.json`` with the official
   keys (``attribute``, ``desc``, ``jsonl_file``, ``line_idx``, ``questions``, ``gt_answers``,
   ``model_pred``, ``model_output``); answers that never parsed go to ``eval_unparsed/`` (same
   layout, outside the folder the official summary reads). Existing records are kept (resume).
4. Score as the official ``summary_results.py`` and ``summary_dimension_results.py`` do: per
   (type, short|long) the correct answers over the questions of the result files that exist; a
   type's score is rounded to 4 decimals (the official summary passes it through a 4-decimal
   spreadsheet cell) before its group averages it; the 9 groups carry their official names;
   Overall = the mean of the 9 groups; short and long separately (``summary.json``,
   ``summary.md``, whose group and overall cells round as the official printout does: numpy's
   half-to-even ``round(4)``). A result file the official script cannot read (not JSON, or a
   top-level list) is skipped as it skips it, and counted as unreadable. ``scoring=strict``
   instead counts every question of an image without a parsed result (missing image,
   unparseable answer, failed judge call) as wrong.
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
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from eval.command import benchmark_run, output_dir
from eval.common import (
    BenchmarkInputError,
    MissingInputError,
    check_entry,
    check_scoring,
    exit_on_input_error,
    fmt,
    markdown_table,
    print_report,
    protect_secrets,
    write_json,
)
from eval.generation import GenerationConfig, ImageJob, prepare_images
from eval.judging import (
    Asking,
    FailureStreak,
    JudgeOptions,
    ask_until_parsed,
    resolve_judge,
    yes_no_by_prob,
)
from rewards.judges.base import Judge

log = logging.getLogger(__name__)

DESCRIPTIONS = ("short_description", "long_description")
RESULTS_DIR = "eval_results"
UNPARSED_DIR = "eval_unparsed"  # beside eval_results/, so the official summary never reads it

# The 9 groups of the official summary_dimension_results.py: name -> (level, types).
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
    "Complex": ("real_world", ("real_world",)),
}  # fmt: skip
# How the official table titles the levels and groups ("==== Basic_Attribute - Attribute ====").
LEVEL_TITLES = {
    "basic": ("Basic_Following_Overall", "Basic"),
    "advanced": ("Advanced_Following_Overall", "Advanced"),
    "real_world": ("Real_World_Following_Overall", "Real"),
}
SCORINGS = {
    "official": "an image without a parsed result (missing image, unparseable answer, failed "
    "judge call) is left out of its type's score, as the official summary leaves it out",
    "strict": "every question of an image without a parsed result (missing image, unparseable "
    "answer, failed judge call) counts as wrong",
}
METRIC = (
    "type score = correct yes/no answers / questions, rounded to 4 decimals before groups "
    "average it; group = mean of its types; overall = mean of the 9 groups (groups without "
    "results skipped); short and long separately"
)

_YES_NO = re.compile(r"^(yes|no)\b", flags=re.IGNORECASE)


class TiifDataError(BenchmarkInputError):
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
    """Read every ``<type>_prompts.jsonl`` of ``prompt_dir`` with its eval file of ``eval_dir``
    (only ``types`` if given: an unknown name fails listing the valid ones)."""
    prompt_dir, eval_dir = Path(prompt_dir), Path(eval_dir)
    for folder in (prompt_dir, eval_dir):
        if not folder.is_dir():
            raise MissingInputError(f"TIIF folder not found: {folder}")
    files = {f.name.removesuffix("_prompts.jsonl"): f for f in prompt_dir.glob("*_prompts.jsonl")}
    if not files:
        raise MissingInputError(f"no *_prompts.jsonl files in {prompt_dir}")
    unknown = sorted(set(types or ()) - set(files))
    if unknown:
        raise MissingInputError(
            f"unknown TIIF type(s) {unknown}: no <type>_prompts.jsonl for them in {prompt_dir}; "
            f"valid types: {', '.join(sorted(files))}"
        )
    cases = []
    for name, file in sorted(files.items()):
        if types is not None and name not in types:
            continue
        eval_file = eval_dir / f"{name}_eval_prompts.jsonl"
        if not eval_file.is_file():
            raise MissingInputError(f"{file.name} has no eval file {eval_file}")
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


def question_placeholder(asking: Asking) -> str:
    """``##YNQuestions##`` in the official wordings, ``{questions}`` in ours and in custom ones."""
    return "{questions}" if asking.custom_template else asking.preset.extra["placeholder"]


def format_question_prompt(template: str, placeholder: str, questions: Sequence[str]) -> str:
    """The official ``format_questions_prompt``: the questions, stripped, one per line."""
    return template.replace(placeholder, "\n".join(q.strip() for q in questions))


@dataclass(frozen=True)
class TiifTask:
    """One image to judge and where its record goes (``unparsed``: an answer that never parsed)."""

    case: TiifCase
    desc: str
    image: Path
    result: Path
    unparsed: Path

    def record(self, **fields: Any) -> dict[str, Any]:
        """The official result keys, then ``fields``."""
        return {
            "attribute": self.case.type,
            "desc": self.desc,
            "jsonl_file": self.case.jsonl_file,
            "line_idx": self.case.index,
            "questions": list(self.case.questions),
            "gt_answers": list(self.case.answers),
            **fields,
        }


def judge_images(judge: Judge, tasks: Sequence[TiifTask], asking: Asking) -> dict[str, int]:
    """Judge each task that has no record yet; returns how many were asked, scored, left
    unparsed and left without an answer (failed judge calls: asked again by a rerun)."""
    todo = [t for t in tasks if not t.result.is_file() and not t.unparsed.is_file()]
    counts = {"asked": len(todo), "scored": 0, "unparsed": 0, "failed": 0}
    placeholder = question_placeholder(asking)
    step = asking.batch_size if asking.answer_mode == "generate" else 1
    streak = FailureStreak()
    for start in tqdm(range(0, len(todo), step), desc="TIIF judging", unit="batch"):
        chunk = todo[start : start + step]
        images = [Image.open(t.image).convert("RGB") for t in chunk]
        if asking.answer_mode == "generate":
            texts = [
                format_question_prompt(
                    asking.template_for(image_key(t.case, t.desc)), placeholder, t.case.questions
                )
                for t in chunk
            ]
            sizes = [len(t.case.questions) for t in chunk]
            answers = ask_until_parsed(
                judge,
                list(zip(images, texts)),
                lambda i, out, sizes=sizes: parse_yes_no(out, sizes[i]),
                asking,
                streak,
            )
            for task, answer in zip(chunk, answers):
                if answer.ok:
                    write_json(
                        task.result, task.record(model_pred=answer.parsed, model_output=answer.text)
                    )
                    counts["scored"] += 1
                elif answer.text is not None:
                    reason = "the yes/no line count never matched the question count"
                    write_json(
                        task.unparsed,
                        task.record(
                            model_output=answer.text, attempts=answer.attempts, reason=reason
                        ),
                    )
                    counts["unparsed"] += 1
                else:
                    log.warning("TIIF %s: judge call failed: %s", task.image, answer.error)
                    counts["failed"] += 1
        else:
            task = chunk[0]
            preds, probs, reasons = yes_no_by_prob(judge, images[0], "", task.case.questions)
            if "invalid" in preds:
                write_json(task.unparsed, task.record(p_yes=probs, reasons=reasons))
                counts["unparsed"] += 1
            else:
                output = json.dumps({"p_yes": probs})
                write_json(task.result, task.record(model_pred=preds, model_output=output))
                counts["scored"] += 1
    if counts["unparsed"] or counts["failed"]:
        log.warning("TIIF judging: %s", counts)
    return counts


def count_result(path: Path) -> tuple[int, int] | None:
    """(correct, questions) of one result file, by the official ``summary_results.py`` rule:
    the pairs of ``gt_answers`` and ``model_pred`` (zipped), compared stripped and
    lower-cased; a pair that is not two strings ends the file's count (the official script's
    error there stops reading it after counting that question). None: a file the official
    script skips with an error line (unreadable, not JSON, or JSON whose top level is not an
    object, e.g. a list); it is named in a warning and counted as ``unreadable``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("unreadable TIIF result %s (skipped, as officially): %s", path, err)
        return None
    if not isinstance(record, dict):
        log.warning(
            "TIIF result %s holds a JSON %s, not an object (skipped, as officially)",
            path, type(record).__name__,
        )  # fmt: skip
        return None
    correct = total = 0
    for gt, pred in zip(record.get("gt_answers", []), record.get("model_pred", [])):
        total += 1
        if not (isinstance(gt, str) and isinstance(pred, str)):
            log.warning("TIIF result %s: non-text answer %r / %r", path, gt, pred)
            break
        correct += gt.strip().lower() == pred.strip().lower()
    return correct, total


def official_round(score: float) -> float:
    """The 4-decimal cell the official summary writes (``f"{x:.4f}"``) and reads back."""
    return score if math.isnan(score) else float(f"{score:.4f}")


def displayed(score: float) -> float:
    """A score as the official ``summary_dimension_results.py`` prints it: pandas'
    ``round(4)``, i.e. numpy's rounding of ``score * 1e4`` half to even (0.71665 -> 0.7166,
    where Python's ``f"{0.71665:.4f}"`` gives 0.7167)."""
    return score if math.isnan(score) else float(np.round(score, 4))


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


COVERAGE_COUNTS = ("images", "scored", "unparsed", "unreadable", "no_result")


def _new_row() -> dict[str, Any]:
    return {
        "correct": 0, "total": 0, "images": 0, "scored": 0, "unparsed": 0, "unreadable": 0,
        "no_result": 0,
    }  # fmt: skip


def _files_on_disk(results_dir: Path, model_name: str, keys: Sequence[str]):
    """(type, key, result file) of every ``*.json`` in the official layout (no prompt files)."""
    model_dir = results_dir / model_name
    if not model_dir.is_dir():
        return
    for type_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        for key in keys:
            for path in sorted((type_dir / key).glob("*.json")):
                yield type_dir.name, key, path


def summarize(
    results_dir: Path,
    model_name: str,
    cases: Sequence[TiifCase] | None = None,
    descriptions: Sequence[str] = DESCRIPTIONS,
    scoring: str = "official",
) -> dict[str, Any]:
    """Per-type, per-group, per-level and overall scores, short and long separately, from the
    result files of ``results_dir/<model_name>/``. With ``cases`` only their images count
    and coverage is known (images without a result are ``no_result``); without, every result
    file there counts, as the official summary reads them."""
    check_scoring(scoring, SCORINGS, "data.prompt_dir and data.eval_dir" if cases is None else None)
    keys = [d.split("_")[0] for d in descriptions]
    unparsed_dir = results_dir.parent / UNPARSED_DIR
    per_type: dict[str, dict[str, dict]] = {}

    def add(row: dict[str, Any], path: Path, questions: int | None) -> None:
        counted = count_result(path) if path.is_file() else None
        unparsed = (unparsed_dir / path.relative_to(results_dir)).is_file()
        row["images"] += 1
        if counted is not None:
            row["scored"] += 1
            row["correct"] += counted[0]
            row["total"] += counted[1]
            return
        if path.is_file() and not unparsed:
            row["unreadable"] += 1
        else:
            row["unparsed" if unparsed else "no_result"] += 1
        if scoring == "strict":
            row["total"] += questions

    if cases is None:
        for kind, key, path in _files_on_disk(results_dir, model_name, keys):
            add(per_type.setdefault(kind, {}).setdefault(key, _new_row()), path, None)
        for kind, key, _ in _files_on_disk(unparsed_dir, model_name, keys):
            row = per_type.setdefault(kind, {}).setdefault(key, _new_row())
            row["images"] += 1
            row["unparsed"] += 1
    else:
        for case in cases:
            for desc, key in zip(descriptions, keys):
                row = per_type.setdefault(case.type, {}).setdefault(key, _new_row())
                add(row, result_path(results_dir, model_name, case, desc), len(case.questions))
    for rows in per_type.values():
        for row in rows.values():
            row["score"] = row["correct"] / row["total"] if row["total"] else float("nan")
    known = {t for _, members in GROUPS.values() for t in members}
    unknown = sorted(set(per_type) - known)
    if unknown:
        log.warning("TIIF types outside the 9 groups (left out of groups/overall): %s", unknown)

    def type_mean(members: Sequence[str], key: str) -> float:
        rows = [per_type[t][key] for t in members if key in per_type.get(t, {})]
        return _mean([official_round(row["score"]) for row in rows])

    groups = {
        name: {key: type_mean(members, key) for key in keys}
        for name, (_, members) in GROUPS.items()
    }
    levels = {
        level: {
            key: type_mean([t for lv, ms in GROUPS.values() if lv == level for t in ms], key)
            for key in keys
        }
        for level in LEVEL_TITLES
    }
    coverage = {}
    for key in keys:
        rows = [r[key] for r in per_type.values() if key in r]
        total = {k: sum(r[k] for r in rows) for k in COVERAGE_COUNTS}
        total["fraction_scored"] = total["scored"] / total["images"] if total["images"] else 0.0
        coverage[key] = total
    return {
        "model_name": model_name,
        "metric": METRIC,
        "scoring": f"{scoring}: {SCORINGS[scoring]}",
        "coverage": coverage,
        "overall": {key: _mean([g[key] for g in groups.values()]) for key in keys},
        "levels": levels,
        "groups": groups,
        "types": per_type,
        "types_outside_groups": unknown,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (groups + overall under the official titles, then every
    type), with the scoring policy, the judge settings and the coverage."""
    keys = list(summary["overall"])
    text = f"# TIIF-Bench: {summary['model_name']}\n\n{summary['metric']}\n\n"
    text += f"- scoring: {summary['scoring']}\n"
    if "judging" in summary:
        text += f"- judging: {json.dumps(summary['judging'], ensure_ascii=False)}\n"
    for key, c in summary["coverage"].items():
        text += (
            f"- {key}: {c['scored']}/{c['images']} images scored, {c['unparsed']} unparseable, "
            f"{c['unreadable']} unreadable result files, {c['no_result']} without a result\n"
        )
    rows = []
    for level, (title, prefix) in LEVEL_TITLES.items():
        rows.append([f"{title} - Overall", *(displayed(summary["levels"][level][k]) for k in keys)])
        rows += [
            [f"{prefix}_{name} - {name}", *(displayed(summary["groups"][name][k]) for k in keys)]
            for name, (lv, _) in GROUPS.items()
            if lv == level
        ]
    rows.append(["**Overall average score of 9 sub-attributes**",
                 *(displayed(summary["overall"][k]) for k in keys)])  # fmt: skip
    text += "\n" + markdown_table(["group", *keys], rows) + "\n"
    type_rows = [
        [t, *(_type_cell(v[k]) if k in v else "-" for k in keys)]
        for t, v in sorted(summary["types"].items())
    ]
    return text + markdown_table(["type", *keys], type_rows)


def _type_cell(row: dict[str, Any]) -> str:
    return (
        f"{fmt(row['score'])} ({row['correct']}/{row['total']}; "
        f"{row['scored']}/{row['images']} images)"
    )


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_markdown(summary))


def run_tiif(
    pipe,
    judge: Judge | Callable[[], Judge],
    cases: Sequence[TiifCase],
    out_dir: Path,
    model_name: str,
    gen: GenerationConfig,
    opts: JudgeOptions,
    descriptions: Sequence[str] = DESCRIPTIONS,
    scoring: str = "official",
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given), judge and summarise; writes everything under
    ``out_dir`` (images/, eval_results/, eval_unparsed/, summary.json, summary.md) and returns
    the summary. ``judge`` may be a factory, called only after generation (the generator's
    memory is then already free for it)."""
    bad = set(descriptions) - set(DESCRIPTIONS)
    if bad:
        raise ValueError(f"descriptions must be among {DESCRIPTIONS}, got {sorted(bad)}")
    check_scoring(scoring, SCORINGS)
    asking = opts.asking("tiif")
    asking.check_placeholders([question_placeholder(asking)])
    images_dir, results_dir = out_dir / "images", out_dir / RESULTS_DIR
    pairs = [(case, desc) for desc in descriptions for case in cases]
    jobs = [
        ImageJob(getattr(case, desc), image_path(images_dir, model_name, case, desc),
                 key=image_key(case, desc))
        for case, desc in pairs
    ]  # fmt: skip
    made, found = prepare_images(pipe, jobs, gen, "TIIF")
    tasks = []
    for (case, desc), image in zip(pairs, found):
        result = result_path(results_dir, model_name, case, desc)
        unparsed = out_dir / UNPARSED_DIR / result.relative_to(results_dir)
        if image in made:  # judged on an earlier image of this name: judge the new one
            result.unlink(missing_ok=True)
            unparsed.unlink(missing_ok=True)
        if image is not None:
            tasks.append(TiifTask(case, desc, image, result, unparsed))
    judge_images(resolve_judge(judge), tasks, asking)
    summary = summarize(results_dir, model_name, cases, descriptions, scoring)
    summary["judging"] = asking.describe()
    write_summary(summary, out_dir)
    return summary


def _model_folders(results_dir: Path) -> list[str]:
    """The model folders of ``results_dir`` and of its ``eval_unparsed`` sibling."""
    roots = [d for d in (results_dir, results_dir.parent / UNPARSED_DIR) if d.is_dir()]
    return sorted({p.name for root in roots for p in root.iterdir() if p.is_dir()})


def summarize_existing(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """``summarize_only=true``: the summary files of an existing results folder (ours, or the
    official ``eval_with_vlm.py``'s ``--output_dir``), with no model and no judge."""
    if cfg.get("results_dir"):
        results_dir = Path(cfg.results_dir)
    elif cfg.get("output_dir"):
        results_dir = out / RESULTS_DIR
    else:
        raise BenchmarkInputError("summarize_only=true needs results_dir=<eval_results folder>")
    models = _model_folders(results_dir)
    if not models:
        raise MissingInputError(f"no TIIF results (model folders) in {results_dir}")
    model_name = cfg.get("model_name")
    if model_name is None and len(models) > 1:
        raise BenchmarkInputError(f"{results_dir} holds {models}; pick one with model_name=")
    model_name = model_name or models[0]
    if model_name not in models:
        raise MissingInputError(f"no results of model {model_name!r} in {results_dir}: {models}")
    cases = None
    if cfg.data.get("prompt_dir") or cfg.data.get("eval_dir"):
        cases = _load_cases(cfg)
    summary = summarize(results_dir, model_name, cases, cfg.descriptions, cfg.scoring)
    write_summary(summary, out)
    return summary


def _load_cases(cfg: DictConfig) -> list[TiifCase]:
    data = cfg.data
    if not data.get("prompt_dir") or not data.get("eval_dir"):
        raise BenchmarkInputError("set data.prompt_dir and data.eval_dir (the TIIF jsonl folders)")
    return load_tiif(data.prompt_dir, data.eval_dir, data.get("types"), data.get("limit_per_type"))


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``tiif`` config: cases, generation, judge, summary
    (or, with ``summarize_only``, the summary of an existing results folder)."""
    check_entry(cfg, "tiif")
    if cfg.get("summarize_only"):
        summary = summarize_existing(cfg, out)
    else:
        cases = _load_cases(cfg)
        run = benchmark_run(cfg, out, results=("images", RESULTS_DIR, UNPARSED_DIR))
        summary = run_tiif(
            run.pipe, run.judge, cases, out, run.model_name, run.gen, run.opts,
            cfg.descriptions, cfg.scoring,
        )  # fmt: skip
    print_report(out / "summary.md", f"TIIF overall: {summary['overall']}; results in {out}")
    return summary


@hydra.main(config_path="../conf", config_name="tiif", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point: everything goes to ``output_dir`` or else the Hydra run folder; bad
    benchmark input ends the command with one line."""
    protect_secrets(cfg)
    with exit_on_input_error("eval.tiif", FileNotFoundError):
        evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
