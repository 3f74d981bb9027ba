"""UniGenBench++ for the base model or a LoRA checkpoint.

    python -m eval.unigenbench data.csv=/data/UniGenBench/data/test_prompts_en.csv \
        model=sd35_medium model.path=/models/sd3.5-medium \
        lora=/runs/x/checkpoints/epoch_000060/lora \
        judge=openai judge.base_url=http://127.0.0.1:8000/v1 judge.model=UniGenBench-EvalModel
    # summarise an existing results CSV (ours or the official script's), no model, no judge
    python -m eval.unigenbench summarize_only=true results_csv=/runs/ugb/results/m_en.csv

Flow, as the official scripts (CodeGoat24/UniGenBench ``eval/``) lay it out:

1. Read the CSV (``index``, ``prompt_en``, ``sub_dims_en``: JSON with ``Testpoints`` and
   ``Testpoint Description``). The official long-prompt CSV has a row whose JSON is malformed;
   ``data.malformed_rows=skip`` (default) leaves such rows out and lists them in the output,
   ``error`` stops with the row number. The category (``en``, ``en_long``) comes from the CSV
   name (``test_prompts_<category>.csv``) or ``data.category``.
2. Generate ``images_per_prompt`` (4) images per prompt, named ``{index}_{j}.png`` in
   ``images/<category>/<model_name>/`` (the official ``eval_data/<category>/<model>`` layout;
   seeded, batched, resumable; ``.jpg``/``.jpeg``/``.webp`` images found there count too).
3. Ask the judge about every image with all its testpoints (``judging.prompt=official``: the
   official template with its testpoint definitions). The answer parses as in the official
   ``eval_common.parse_evaluation_response``: ``<analysis>`` and ``<score>`` both present,
   each a Python list with one entry per testpoint. An answer that does not parse is asked
   again (``judging.retries``, official: 10), then the image is left out, as the official
   script leaves it out; a failed judge call leaves the image without a row, asked again by a
   rerun. Rows go to the official CSV
   ``results/<model_name>_<category>.csv`` (``index, prompt, testpoint, output, result_json,
   img_path``; a left-out image's ``result_json`` is ``null``, as the official script writes
   it); images already in it are not judged again (resume).
4. Accuracy per primary dimension (testpoint name before the first "-") and per sub dimension
   (the full name) by the official ``calculate_scores`` rule (a testpoint is correct when its
   score is 1; a row whose ``result_json`` does not read is skipped), written as the official
   per-model JSON ``results/<model_name>_<category>.json`` and as ``scores.json`` /
   ``scores.md`` with coverage, the scoring policy and the overall figure, defined here as
   the unweighted mean of the primary-dimension accuracies (the official script prints none).
   ``scoring=strict`` counts every testpoint of an image without a parsed result as wrong.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from eval.command import benchmark_run, output_dir
from eval.common import (
    BenchmarkInputError,
    MissingInputError,
    atomic_write,
    check_entry,
    check_scoring,
    exit_on_input_error,
    markdown_table,
    nan_to_none,
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
    load_prompt,
    resolve_judge,
    yes_no_by_prob,
)
from rewards.judges.base import Judge

log = logging.getLogger(__name__)

CATEGORIES = ("en", "en_long", "zh", "zh_long")  # the official --category values
_CATEGORY = "|".join(sorted(CATEGORIES, key=len, reverse=True))  # en_long tried before en
YES_PROB_QUESTION = "Does the image show {description} ({testpoint}: {definition})?"
MALFORMED_POLICIES = ("skip", "error")
CSV_COLUMNS = ["index", "prompt", "testpoint", "output", "result_json", "img_path"]
# Every placeholder a wording may use: the official template's four and our {checkpoints}.
_FIELD = re.compile(r"\{(prompt|testpoint|explanation|test_explanation|checkpoints)\}")
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
SCORINGS = {
    "official": "an image without a parsed result (missing image, unparseable answer, failed "
    "judge call) is left out, as the official score calculator leaves it out",
    "strict": "every testpoint of an image without a parsed result (missing image, "
    "unparseable answer, failed judge call) counts as wrong",
}
OVERALL_DEFINITION = (
    "overall = unweighted mean of the primary-dimension accuracies (the official script prints "
    "no overall figure)"
)


class UniGenBenchDataError(BenchmarkInputError):
    """A UniGenBench CSV that does not follow the official format."""


@cache
def official_prompt() -> dict[str, Any]:
    """The official testpoint definitions and the headers the official template uses."""
    return dict(load_prompt("unigenbench", "official").extra)


def testpoint_definitions() -> dict[str, str]:
    """Testpoint name -> the official definition (EXPLANATION_DICT_EN)."""
    return official_prompt()["testpoint_definitions"]


@dataclass(frozen=True)
class UgbCase:
    """One prompt with its testpoints and what each asks for."""

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]


def official_primary(testpoint: str) -> str:
    """The official primary-dimension key: the name up to the first "-" (trailing space kept,
    ``"Attribute - Color"`` -> ``"Attribute "``), or the whole name without one."""
    return testpoint.split("-", 1)[0] if "-" in testpoint else testpoint


def primary_dimension(testpoint: str) -> str:
    """``"Attribute - Color"`` -> ``"Attribute"``; names without "-" are their own primary."""
    return official_primary(testpoint).strip()


def category_of(csv_path: str | Path, category: str | None = None) -> str:
    """``category`` if given, else the one in ``test_prompts_<category>.csv``, else ``en``."""
    if category is None:
        match = re.search(rf"_({_CATEGORY})$", Path(csv_path).stem)
        category = match.group(1) if match else "en"
    if category not in CATEGORIES:
        raise BenchmarkInputError(f"data.category must be one of {CATEGORIES}, got {category!r}")
    return category


def load_unigenbench(
    path: str | Path, malformed_rows: str = "skip", limit: int | None = None
) -> tuple[list[UgbCase], list[int]]:
    """Read the official CSV; returns the cases and the indices of skipped malformed rows."""
    if malformed_rows not in MALFORMED_POLICIES:
        raise BenchmarkInputError(f"malformed_rows must be one of {MALFORMED_POLICIES}")
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"UniGenBench CSV not found: {path}")
    frame = pd.read_csv(path)
    missing = {"index", "prompt_en", "sub_dims_en"} - set(frame.columns)
    if missing:
        raise UniGenBenchDataError(
            f"{path}: missing column(s) {sorted(missing)} (the English CSVs test_prompts_en.csv "
            "and test_prompts_en_long.csv are supported)"
        )
    definitions = testpoint_definitions()
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
        unknown = sorted(set(testpoints) - set(definitions))
        if unknown:
            raise UniGenBenchDataError(f"{where}: unknown testpoint(s) {unknown}")
        cases.append(UgbCase(int(row.index), str(row.prompt_en), tuple(testpoints), tuple(descs)))
        if limit is not None and len(cases) >= limit:
            break
    return cases, skipped


def prompt_fields(case: UgbCase) -> dict[str, str]:
    """What a wording's placeholders become: the official ``build_system_prompt`` values
    (``testpoint`` is the Python list of names; ``explanation`` and ``test_explanation`` are
    the headed, 「」-bracketed definition and description lines) and our ``checkpoints``."""
    official = official_prompt()
    definitions = official["testpoint_definitions"]
    explanation = "".join(f"\n{tp}: {definitions[tp]}" for tp in case.testpoints)
    described = "".join(f"\n{tp}: {d}" for tp, d in zip(case.testpoints, case.descriptions))
    checkpoints = "\n".join(
        f"{i + 1}. {tp}: {definitions[tp]} -- {d}"
        for i, (tp, d) in enumerate(zip(case.testpoints, case.descriptions))
    )
    return {
        "prompt": case.prompt,
        "testpoint": str(list(case.testpoints)),
        "explanation": f"{official['definition_header']}:\u300c{explanation}\n\u300d",
        "test_explanation": f"{official['description_header']}:\u300c{described}\n\u300d",
        "checkpoints": checkpoints,
    }


def format_judge_prompt(template: str, case: UgbCase) -> str:
    """``template`` with its placeholders filled in one pass (text of the prompt itself is
    never read as a placeholder); for the official template this equals its ``str.format``."""
    fields = prompt_fields(case)
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def parse_scores(text: str | None, num_testpoints: int) -> tuple[Any, Any] | None:
    """``(analysis, scores)`` by the official ``parse_evaluation_response``: ``<analysis>`` and
    ``<score>`` both present, each a Python literal whose length equals the number of
    testpoints; None otherwise. As lenient as the official rule: the values are kept as written,
    whatever their type (a string or a tuple of the right length parses too; only a ``score``
    that is a list of 1s counts later, as the official ``calculate_scores`` reads it). A
    literal without a length (a number), on which the official worker raises, is None here."""
    analysis_match = _ANALYSIS.search(text or "")
    score_match = _SCORE.search(text or "")
    if analysis_match is None or score_match is None:
        return None
    try:
        analysis = ast.literal_eval(analysis_match.group(1).strip())
        scores = ast.literal_eval(score_match.group(1).strip())
        if len(analysis) != num_testpoints or len(scores) != num_testpoints:
            return None
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    return analysis, scores


def _row(case: UgbCase, img_path: Path, output: str | None, parsed: tuple | None) -> dict:
    """One official CSV row; ``parsed`` None writes ``result_json`` as ``null`` (left out)."""
    result = None
    if parsed is not None:
        analysis, scores = parsed
        result = {
            "prompt": case.prompt,
            "testpoint": list(case.testpoints),
            "analysis": analysis,
            "score": scores,
        }
    return {
        "index": str(case.index),
        "prompt": case.prompt,
        "testpoint": str(list(case.testpoints)),
        "output": output,
        # default=repr: a parsed value JSON cannot hold (a set) is kept as its Python text
        "result_json": json.dumps(result, ensure_ascii=False, indent=4, default=repr),
        "img_path": str(img_path),
    }


def _judge_generate(
    judge: Judge, chunk, asking: Asking, streak: FailureStreak
) -> list[dict | None]:
    requests = [
        (Image.open(path).convert("RGB"), format_judge_prompt(asking.template_for(path.stem), case))
        for case, path in chunk
    ]
    sizes = [len(case.testpoints) for case, _ in chunk]
    answers = ask_until_parsed(
        judge, requests, lambda i, out: parse_scores(out, sizes[i]), asking, streak
    )
    rows: list[dict | None] = []
    for (case, path), answer in zip(chunk, answers):
        if answer.text is None:  # no call succeeded: no row, a rerun asks again
            log.warning("UniGenBench %s: judge call failed: %s", path, answer.error)
            rows.append(None)
        else:
            rows.append(_row(case, path, answer.text, answer.parsed))
    return rows


def _judge_yes_prob(judge: Judge, case: UgbCase, path: Path) -> dict:
    definitions = testpoint_definitions()
    questions = [
        YES_PROB_QUESTION.format(description=d, testpoint=t, definition=definitions[t])
        for t, d in zip(case.testpoints, case.descriptions)
    ]
    image = Image.open(path).convert("RGB")
    answers, probs, reasons = yes_no_by_prob(judge, image, f"Prompt: {case.prompt}", questions)
    output = json.dumps(nan_to_none({"p_yes": probs, "reasons": reasons}))
    if "invalid" in answers:  # an unanswered testpoint: the image is left out
        return _row(case, path, output, None)
    analysis = [f"P(yes) = {p:.4f}" for p in probs]
    return _row(case, path, output, (analysis, [int(a == "yes") for a in answers]))


def _image_keys(paths: Iterable[Any]) -> set[str]:
    """``{index}_{j}`` of image paths (rows and images match by it, whatever the extension)."""
    return {Path(str(p)).stem for p in paths}


def judge_images(
    judge: Judge,
    tasks: Sequence[tuple[UgbCase, Path]],
    csv_path: Path,
    asking: Asking,
    stale: Sequence[Path] = (),
) -> int:
    """Judge the images not yet in ``csv_path`` (rows of ``stale`` images, made again since
    they were judged, are dropped first); the CSV is rewritten after every batch so an
    interrupted run resumes where it stopped. Rows are matched by image name without its
    extension (unique in a model's CSV), so a moved run folder still resumes. Returns how
    many images were asked about."""
    done = (
        pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        if csv_path.is_file()
        else pd.DataFrame(columns=CSV_COLUMNS)
    )
    done = done[~done["img_path"].map(lambda p: Path(p).stem).isin(_image_keys(stale))]
    seen = _image_keys(done["img_path"])
    todo = [t for t in tasks if t[1].stem not in seen]
    rows = done.to_dict("records")
    step = asking.batch_size if asking.answer_mode == "generate" else 1
    streak = FailureStreak()
    for start in tqdm(range(0, len(todo), step), desc="UniGenBench judging", unit="batch"):
        chunk = todo[start : start + step]
        if asking.answer_mode == "generate":
            rows += [r for r in _judge_generate(judge, chunk, asking, streak) if r is not None]
        else:
            rows.append(_judge_yes_prob(judge, *chunk[0]))
        with atomic_write(csv_path) as tmp:  # every field quoted: a judge's answer may hold a
            # lone carriage return, which unquoted would split its row when read back
            pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(tmp, index=False, quoting=csv.QUOTE_ALL)
    return len(todo)


def _row_scores(row: pd.Series) -> tuple[list[str], list | None]:
    """(testpoints, scores) of a results row as the official ``calculate_scores`` reads it;
    scores None when that reading fails (the official script skips the row)."""
    try:
        testpoints = ast.literal_eval(row["testpoint"])
        if not isinstance(row["result_json"], str):
            return testpoints, None
        scores = ast.literal_eval(row["result_json"])["score"]
        return testpoints, scores if isinstance(scores, list) else None
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        return [], None


def official_scores(counts: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """The official per-model JSON (``calculate_scores``): primary dimensions in the order
    first met, sub dimensions sorted, accuracy rounded to 4 decimals (0 without testpoints)."""

    def entry(correct: int, total: int) -> dict[str, Any]:
        acc = correct / total if total > 0 else 0
        return {"correct": correct, "total": total, "accuracy": round(acc, 4)}

    return {
        "primary_dimensions": {k: entry(*v) for k, v in counts["primary"].items()},
        "sub_dimensions": {k: entry(*counts["sub"][k]) for k in sorted(counts["sub"])},
    }


def summarize(
    frame: pd.DataFrame,
    cases: Sequence[tuple[UgbCase, Path]] | None = None,
    scoring: str = "official",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our summary, the official per-model JSON) of a results CSV read as a frame. With
    ``cases`` (``(case, image path)`` of every expected image) only their rows count and the
    images without a row are known."""
    check_scoring(scoring, SCORINGS, "data.csv" if cases is None else None)
    expected = None if cases is None else {path.stem: case for case, path in cases}
    if expected is not None:
        frame = frame[frame["img_path"].map(lambda p: Path(str(p)).stem).isin(set(expected))]
    counts: dict[str, dict[str, list[int]]] = {
        "primary": defaultdict(lambda: [0, 0]),
        "sub": defaultdict(lambda: [0, 0]),
    }

    def add(testpoints: Sequence[str], scores: Sequence[Any]) -> None:
        for testpoint, score in zip(testpoints, scores):
            for table, key in ((counts["primary"], official_primary(testpoint)),
                               (counts["sub"], testpoint)):  # fmt: skip
                table[key][1] += 1
                table[key][0] += int(score == 1)

    scored = unparsed = 0
    for _, row in frame.iterrows():
        testpoints, scores = _row_scores(row)
        if scores is not None:
            scored += 1
            add(testpoints, scores)
            continue
        unparsed += 1
        if scoring == "strict":
            add(testpoints, [0] * len(testpoints))
    missing = sorted(set(expected or ()) - _image_keys(frame["img_path"]))
    if scoring == "strict":
        for key in missing:
            add(expected[key].testpoints, [0] * len(expected[key].testpoints))
    official = official_scores(counts)
    primary = _by_primary(counts["sub"])
    sub = {k: _accuracy(*v) for k, v in sorted(counts["sub"].items())}
    correct = sum(c for c, _ in counts["sub"].values())
    total = sum(t for _, t in counts["sub"].values())
    means = [v["accuracy"] for v in primary.values()]
    images = len(expected) if expected is not None else scored + unparsed
    summary = {
        "overall": sum(means) / len(means) if means else math.nan,
        "overall_definition": OVERALL_DEFINITION,
        "scoring": f"{scoring}: {SCORINGS[scoring]}",
        "testpoint_accuracy": correct / total if total else math.nan,
        "coverage": {
            "images": images,
            "scored": scored,
            "unparsed": unparsed,
            "no_result": len(missing),
            "fraction_scored": scored / images if images else 0.0,
        },
        "primary": primary,
        "sub": sub,
    }
    return summary, official


def _accuracy(correct: int, total: int) -> dict[str, Any]:
    return {"correct": correct, "total": total, "accuracy": correct / total if total else math.nan}


def _by_primary(sub_counts: dict[str, list[int]]) -> dict[str, dict]:
    """The testpoints' counts summed per primary dimension ("Attribute", the official key without
    its trailing space), unrounded, sorted."""
    merged: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for testpoint, (correct, total) in sub_counts.items():
        merged[primary_dimension(testpoint)][0] += correct
        merged[primary_dimension(testpoint)][1] += total
    return {k: _accuracy(*v) for k, v in sorted(merged.items())}


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    cov = summary["coverage"]
    text = f"# UniGenBench++: {title}\n\n{summary['overall_definition']}\n\n"
    text += f"- scoring: {summary['scoring']}\n"
    if "judging" in summary:
        text += f"- judging: {json.dumps(summary['judging'], ensure_ascii=False)}\n"
    text += (
        f"- images: {cov['scored']}/{cov['images']} scored, {cov['unparsed']} without a parsed "
        f"answer, {cov['no_result']} without a result\n\n"
    )
    rows = [
        [k, v["accuracy"], f"{v['correct']}/{v['total']}"] for k, v in summary["primary"].items()
    ]
    rows.append(["**Overall**", summary["overall"], ""])
    text += markdown_table(["primary dimension", "accuracy", "correct"], rows) + "\n"
    sub_rows = [
        [k, v["accuracy"], f"{v['correct']}/{v['total']}"] for k, v in summary["sub"].items()
    ]
    return text + markdown_table(["sub dimension", "accuracy", "correct"], sub_rows)


def read_results(csv_path: Path) -> pd.DataFrame:
    """A results CSV as the official calculator reads it (``pd.read_csv``). A file pandas cannot
    read, or one with two rows for an image (the official calculator would count it twice),
    ends the command with one line naming the file and the rows."""
    if not csv_path.is_file():
        raise MissingInputError(f"UniGenBench results CSV not found: {csv_path}")
    try:
        frame = pd.read_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UniGenBenchDataError(f"{csv_path}: not a readable results CSV: {err}") from None
    missing = {"testpoint", "result_json", "img_path"} - set(frame.columns)
    if missing:
        raise UniGenBenchDataError(f"{csv_path}: missing column(s) {sorted(missing)}")
    repeated = frame["img_path"].duplicated(keep=False)
    if repeated.any():
        first = frame.loc[repeated, "img_path"].iloc[0]
        lines = [i + 2 for i in frame.index[frame["img_path"] == first]]  # + header, 1-based
        raise UniGenBenchDataError(
            f"{csv_path}: image {first} has {len(lines)} rows (lines {lines}); "
            f"{int(repeated.sum())} rows repeat an image, which would count it more than once"
        )
    return frame


def write_scores(summary: dict, official: dict, out_dir: Path, official_json: Path) -> None:
    """scores.json, scores.md and the official per-model JSON (as ``calculate_scores`` dumps
    it: indent 4, no trailing newline)."""
    write_json(out_dir / "scores.json", summary)
    (out_dir / "scores.md").write_text(summary_markdown(summary, summary["model_name"]))
    with atomic_write(official_json) as tmp:
        tmp.write_text(json.dumps(official, ensure_ascii=False, indent=4), encoding="utf-8")


def results_stem(model_name: str, category: str) -> str:
    """``<model_name>_<category>``: the official results CSV/JSON name (without suffix)."""
    return f"{model_name}_{category}"


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
    category: str = "en",
    scoring: str = "official",
) -> dict[str, Any]:
    """Generate (when ``pipe`` is given), judge and summarise under ``out_dir``
    (images/<category>/<model_name>/, results/<model_name>_<category>.csv and .json,
    scores.json, scores.md)."""
    asking = opts.asking("unigenbench")
    asking.check_placeholders(["{prompt}"], ["{checkpoints}", "{testpoint}", "{test_explanation}"])
    images_dir = out_dir / "images" / category / model_name
    jobs = [
        (case, ImageJob(case.prompt, images_dir / f"{case.index}_{j}.png", key=f"{case.index}_{j}"))
        for case in cases
        for j in range(images_per_prompt)
    ]
    made, found = prepare_images(pipe, [job for _, job in jobs], gen, "UniGenBench")
    stem = results_stem(model_name, category)
    csv_path = out_dir / "results" / f"{stem}.csv"
    tasks = [(case, path) for (case, _), path in zip(jobs, found) if path is not None]
    judge_images(resolve_judge(judge), tasks, csv_path, asking, stale=sorted(made))
    expected = [(case, job.path) for case, job in jobs]
    summary, official = summarize(read_results(csv_path), expected, scoring)
    summary.update(
        model_name=model_name,
        category=category,
        skipped_malformed_rows=list(skipped_rows),
        judging=asking.describe(),
    )
    write_scores(summary, official, out_dir, csv_path.with_suffix(".json"))
    return summary


def summarize_existing(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """``summarize_only=true``: the score files of an existing results CSV (ours, or the
    official script's ``results/<model>_<category>.csv``), with no model and no judge."""
    if cfg.get("results_csv"):
        csv_path = Path(cfg.results_csv)
    elif cfg.get("output_dir") and cfg.get("model_name") and cfg.data.get("csv"):
        category = category_of(cfg.data.csv, cfg.data.get("category"))
        csv_path = out / "results" / f"{results_stem(cfg.model_name, category)}.csv"
    else:
        raise BenchmarkInputError(
            "summarize_only=true needs results_csv=<results/<model>_<category>.csv>"
        )
    match = re.fullmatch(rf"(.+)_({_CATEGORY})", csv_path.stem)
    model_name = match.group(1) if match else csv_path.stem
    category = category_of(csv_path, cfg.data.get("category"))
    expected, skipped = None, []
    if cfg.data.get("csv"):
        cases, skipped = load_unigenbench(cfg.data.csv, cfg.data.malformed_rows, cfg.data.limit)
        expected = [
            (case, Path(f"{case.index}_{j}.png"))
            for case in cases
            for j in range(cfg.images_per_prompt)
        ]
    summary, official = summarize(read_results(csv_path), expected, cfg.scoring)
    summary.update(model_name=model_name, category=category, skipped_malformed_rows=skipped)
    official_json = out / "results" / f"{results_stem(model_name, category)}.json"
    write_scores(summary, official, out, official_json)
    return summary


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The whole command for a composed ``unigenbench`` config: CSV, generation, judge, scores
    (or, with ``summarize_only``, the scores of an existing results CSV)."""
    check_entry(cfg, "unigenbench")
    if cfg.get("summarize_only"):
        summary = summarize_existing(cfg, out)
    else:
        if not cfg.data.get("csv"):
            raise BenchmarkInputError("set data.csv=<test_prompts_en.csv or _en_long.csv>")
        cases, skipped = load_unigenbench(cfg.data.csv, cfg.data.malformed_rows, cfg.data.limit)
        category = category_of(cfg.data.csv, cfg.data.get("category"))
        run = benchmark_run(cfg, out, results=("images", "results"))
        summary = run_unigenbench(
            run.pipe, run.judge, cases, out, run.model_name, run.gen, run.opts,
            cfg.images_per_prompt, skipped, category, cfg.scoring,
        )  # fmt: skip
    print_report(
        out / "scores.md",
        f"UniGenBench overall {summary['overall']:.4f} ({OVERALL_DEFINITION}); results in {out}",
    )
    return summary


@hydra.main(config_path="../conf", config_name="unigenbench", version_base=None)
def main(cfg: DictConfig) -> None:
    """Entry point: everything goes to ``output_dir`` or else the Hydra run folder; bad
    benchmark input ends the command with one line."""
    protect_secrets(cfg)
    with exit_on_input_error("eval.unigenbench", FileNotFoundError):
        evaluate(cfg, output_dir(cfg))


if __name__ == "__main__":
    main()
