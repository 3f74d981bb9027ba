"""TIIF-Bench: official file formats, the official answer parsing, summaries worked out by hand
from the official summary rules (missing result, unparseable answer, 4-decimal rounding), the
official judge prompt, summaries without a model, and an end-to-end run with the tiny SD3 that
re-asks unparseable answers and resumes without regenerating anything."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from eval.common import BenchmarkInputError, nan_to_none
from eval.generation import GenerationConfig, build_pipeline
from eval.judging import JudgeOptions, load_prompt
from eval.tiif import (
    GROUPS,
    LEVEL_TITLES,
    UNPARSED_DIR,
    evaluate,
    load_tiif,
    parse_yes_no,
    result_path,
    run_tiif,
    summarize,
    summary_markdown,
)
from rewards.judges.base import Judge, JudgeResult

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval" / "tiif"
OFFICIAL = REPO.parent / "shared" / "benchmarks" / "tiif"
TINY_GEN = GenerationConfig(num_steps=1, height=32, width=32, batch_size=4)
DESCS = ("short_description", "long_description")


class ScriptedJudge(Judge):
    """Answers 'no' to questions mentioning blue, 'yes' to the rest. Unparseable (one line
    only) whenever a question mentions a sign, and for the green bird at temperature 0 only
    (a re-ask, which samples, parses). Remembers every (prompt, temperature, system)."""

    name = "scripted"

    def __init__(self):
        self.calls = []

    def yes_prob(self, items):
        return JudgeResult(torch.full((len(items),), float("nan")), ["no"] * len(items))

    def generate(self, images, text, max_new_tokens=512, *, temperature=0.0, system=None):
        self.calls.append((text, temperature, system))
        questions = [q for q in text.splitlines() if q.strip().endswith("?")]
        if any("sign" in q for q in questions):
            return "yes, there is a sign"
        if temperature == 0 and any("green" in q for q in questions):
            return "yes"
        return "\n".join(("no" if "blue" in q else "Yes") + " - because" for q in questions)


def test_parse_yes_no_follows_the_official_rule():
    assert parse_yes_no("Yes, a cat.\nno: none\n\nYES", 3) == ["yes", "no", "yes"]
    assert parse_yes_no("Sure!\nyes\nno", 2) == ["yes", "no"]  # other lines are ignored
    assert parse_yes_no("yes\nno", 3) is None  # count mismatch -> unparseable
    assert parse_yes_no("yesterday\nnobody", 2) is None  # whole words only


def test_load_fixture_and_layout():
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    assert [c.type for c in cases] == ["color+2d", "color+2d", "shape+color", "text"]
    assert cases[1].index == 1 and cases[3].answers == ("yes", "yes", "no")
    path = result_path(Path("r"), "m", cases[1], "long_description")
    assert path == Path("r/m/color+2d/long/1.json")
    assert len(load_tiif(FIX / "prompts", FIX / "eval_prompts", limit_per_type=1)) == 3


def test_misaligned_files_and_wrong_names_fail_naming_them(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "e").mkdir()
    (tmp_path / "p" / "text_prompts.jsonl").write_text(
        (FIX / "prompts" / "color+2d_prompts.jsonl").read_text()
    )
    (tmp_path / "e" / "text_eval_prompts.jsonl").write_text(
        (FIX / "eval_prompts" / "text_eval_prompts.jsonl").read_text()
    )
    with pytest.raises(ValueError, match="text_prompts.jsonl has 2 lines"):
        load_tiif(tmp_path / "p", tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="TIIF folder not found: .*nowhere"):
        load_tiif(tmp_path / "p", tmp_path / "nowhere")
    with pytest.raises(
        BenchmarkInputError,
        match=r"unknown TIIF type\(s\) \['colour'\].*valid types: "
        "color\\+2d, shape\\+color, text$",
    ):
        load_tiif(FIX / "prompts", FIX / "eval_prompts", types=["colour"])


def write_result(root: Path, case, desc: str, preds: list[str]) -> None:
    """A result file in the official format (as eval_with_vlm.py writes it)."""
    path = result_path(root / "eval_results", "m", case, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"attribute": case.type, "desc": desc, "gt_answers": list(case.answers),
              "model_pred": preds, "model_output": "\n".join(preds)}  # fmt: skip
    path.write_text(json.dumps(record))


def hand_folder(root: Path) -> list:
    """Short: every answer right. Long: color+2d #0 one answer wrong (3/4) and #1 without a
    result (its answer never parsed: only an eval_unparsed record); shape+color two wrong
    (3/5); text one wrong (2/3 = 0.666.., a 4-decimal cell 0.6667)."""
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    flips = {("color+2d", 0): 1, ("shape+color", 0): 2, ("text", 0): 1}
    for case in cases:
        write_result(root, case, "short_description", list(case.answers))
        if (case.type, case.index) == ("color+2d", 1):
            unparsed = root / UNPARSED_DIR / "m" / "color+2d" / "long" / "1.json"
            unparsed.parent.mkdir(parents=True)
            unparsed.write_text(json.dumps({"model_output": "no idea", "attempts": 4}))
            continue
        preds = list(case.answers)
        for i in range(flips[case.type, case.index]):
            preds[i] = "no" if preds[i] == "yes" else "yes"
        write_result(root, case, "long_description", preds)
    return cases


def official_tiif_summary(results_dir: Path) -> dict:
    """The official summary_results.py + summary_dimension_results.py rules, written out: per
    (type, short|long) folder the zipped gt/pred pairs of every *.json there; the accuracy goes
    through a 4-decimal cell; a group is the mean of its types that have a score, Overall the
    mean of the groups that have one."""
    cells = {}
    for model in results_dir.iterdir():
        for type_dir in model.iterdir():
            for length in type_dir.iterdir():
                pairs = [
                    pair
                    for f in length.glob("*.json")
                    for pair in zip(*(json.loads(f.read_text())[k] for k in
                                      ("gt_answers", "model_pred")))
                ]  # fmt: skip
                if pairs:
                    right = sum(g.strip().lower() == p.strip().lower() for g, p in pairs)
                    cells[type_dir.name, length.name] = float(f"{right / len(pairs):.4f}")
    out = {}
    for key in ("short", "long"):
        groups = []
        for _, members in GROUPS.values():
            scores = [cells[t, key] for t in members if (t, key) in cells]
            groups.append(sum(scores) / len(scores) if scores else math.nan)
        present = [g for g in groups if not math.isnan(g)]
        out[key] = sum(present) / len(present)
    return out


def test_summary_worked_by_hand_from_the_official_rules(tmp_path):
    cases = hand_folder(tmp_path)
    s = summarize(tmp_path / "eval_results", "m", cases)
    long = s["types"]["color+2d"]["long"]
    assert (long["correct"], long["total"], long["scored"], long["unparsed"]) == (3, 4, 1, 1)
    assert s["groups"]["Attribute+Relation"]["long"] == 0.75  # #1 left out, not 3/7
    assert s["groups"]["Attribute"]["long"] == 0.6
    assert s["groups"]["Text Generation"]["long"] == 0.6667  # 2/3 through a 4-decimal cell
    by_hand = (0.6 + 0.75 + 0.6667) / 3  # 0.672233..; unrounded types would give 0.672222..
    assert s["overall"]["long"] == pytest.approx(by_hand, abs=1e-12)
    official = official_tiif_summary(tmp_path / "eval_results")
    assert s["overall"]["long"] == pytest.approx(official["long"], abs=1e-12)
    assert s["overall"]["short"] == 1.0
    assert s["levels"]["advanced"]["long"] == pytest.approx((0.75 + 0.6667) / 2, abs=1e-12)
    assert s["coverage"]["long"] == {"images": 4, "scored": 3, "unparsed": 1, "unreadable": 0,
                                     "no_result": 0, "fraction_scored": 0.75}  # fmt: skip
    assert s["scoring"].startswith("official")
    # Without prompt files (an official folder): the same numbers from the files alone.
    files_only = summarize(tmp_path / "eval_results", "m")
    assert files_only["overall"] == s["overall"]
    assert nan_to_none(files_only["groups"]) == nan_to_none(s["groups"])
    # Our stricter option: the image without a parsed result counts its 3 questions wrong.
    strict = summarize(tmp_path / "eval_results", "m", cases, scoring="strict")
    assert strict["types"]["color+2d"]["long"]["total"] == 7
    assert strict["overall"]["long"] == pytest.approx((0.6 + 0.4286 + 0.6667) / 3, abs=1e-12)
    assert strict["scoring"].startswith("strict")
    # A result file lost (no record at all) is also left out: color+2d long is then #0 alone.
    (tmp_path / UNPARSED_DIR / "m" / "color+2d" / "long" / "1.json").unlink()
    again = summarize(tmp_path / "eval_results", "m", cases)
    assert again["types"]["color+2d"]["long"]["no_result"] == 1
    assert again["overall"] == s["overall"]


def test_a_result_file_holding_a_list_is_skipped_and_counted_as_officially(tmp_path, caplog):
    """The official summary_results.py reads each file with ``data.get(...)`` inside a
    try/except that prints the error and goes on: a top-level JSON list (or broken JSON) adds
    nothing. Here the same: skipped, named in a warning, counted as unreadable."""
    cases = hand_folder(tmp_path)
    before = summarize(tmp_path / "eval_results", "m")
    folder = tmp_path / "eval_results" / "m" / "shape+color" / "long"
    (folder / "7.json").write_text(json.dumps([{"gt_answers": ["yes"], "model_pred": ["no"]}]))
    (folder / "8.json").write_text('{"gt_answers": ["yes"], "model_pr')
    after = summarize(tmp_path / "eval_results", "m")
    assert after["overall"] == before["overall"]
    assert after["coverage"]["long"]["unreadable"] == 2
    assert after["coverage"]["long"]["images"] == before["coverage"]["long"]["images"] + 2
    assert "7.json holds a JSON list" in caplog.text and "8.json" in caplog.text
    assert "2 unreadable result files" in summary_markdown(after)
    # With the prompt files, the cases' own result files are read: nothing changes there.
    assert summarize(tmp_path / "eval_results", "m", cases)["overall"] == before["overall"]


def test_tables_round_as_the_official_printout():
    """summary_dimension_results.py prints ``df.round(4)``: numpy rounds 0.71665 (stored just
    above it, 0.7166500000000000092..) as 7166.5 -> 7166, half to even, where Python's
    ``f"{x:.4f}"`` rounds the stored value up to 0.7167. The official call itself decides."""
    value = 0.71665
    official_printout = str(pd.DataFrame({"long": [value]}).round(4))
    assert "0.7166" in official_printout and f"{value:.4f}" == "0.7167"
    summary = {
        "model_name": "m", "metric": "", "scoring": "official", "coverage": {},
        "overall": {"long": value}, "types": {},
        "levels": {lv: {"long": value} for lv in LEVEL_TITLES},
        "groups": {name: {"long": value} for name in GROUPS},
    }  # fmt: skip
    table = summary_markdown(summary)
    assert "| 0.7166 |" in table and "0.7167" not in table


def test_end_to_end_tiny_sd3_retries_and_resume(tmp_path):
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    pipe = build_pipeline({"name": "tiny", "seed": 0, "dtype": "float32"}, None, "cpu")
    judge = ScriptedJudge()
    opts = JudgeOptions(batch_size=3, temperature=0.0, retries=2, retry_temperature=0.7)
    summary = run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    # color+2d 7/7 (the green bird parses on its re-ask), shape+color 4/5 (the blue book),
    # text: never parses, so it is left out (no score) - for short and long alike.
    for key in ("short", "long"):
        assert summary["groups"]["Attribute+Relation"][key] == 1.0
        assert summary["groups"]["Attribute"][key] == pytest.approx(0.8)
        assert math.isnan(summary["groups"]["Text Generation"][key])
        assert summary["overall"][key] == pytest.approx(0.9)
        assert summary["types"]["text"][key]["unparsed"] == 1
    temps = [t for text, t, _ in judge.calls if "sign" in text]
    assert sorted(temps) == [0.0, 0.0, 0.7, 0.7, 0.7, 0.7]  # 2 images, asked 1 + 2 times
    assert {system for _, _, system in judge.calls} == {"You are a professional image critic."}
    assert summary["judging"]["prompt"] == "official" and summary["judging"]["retries"] == 2
    bird = json.loads((tmp_path / "eval_results/tiny/color+2d/short/1.json").read_text())
    assert bird["model_pred"] == ["yes", "yes", "yes"]
    unparsed = json.loads((tmp_path / UNPARSED_DIR / "tiny/text/short/0.json").read_text())
    assert unparsed["attempts"] == 3 and unparsed["model_output"] == "yes, there is a sign"
    assert not (tmp_path / "eval_results/tiny/text").exists()  # the official summary never sees it
    result = json.loads((tmp_path / "eval_results/tiny/shape+color/long/0.json").read_text())
    assert set(result) == {"attribute", "desc", "jsonl_file", "line_idx", "questions",
                           "gt_answers", "model_pred", "model_output"}  # fmt: skip
    assert result["jsonl_file"] == "shape+color_eval_prompts.jsonl"  # the official value
    assert "Basic_Attribute - Attribute" in (tmp_path / "summary.md").read_text()

    image = tmp_path / "images" / "color+2d" / "tiny" / "long_description" / "1.png"
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    records = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("eval_*/**/*.json")}
    calls = len(judge.calls)
    run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert len(judge.calls) == calls  # nothing judged again (unparsed records are kept)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamps
    assert len(stamps) == 8 and len(records) == 8

    # An image lost after judging is made again, and its old judgement (of the lost image) is
    # replaced; every other image and judgement stays as it was.
    image.unlink()
    run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert len(judge.calls) == calls + 2  # the green bird: greedy, then one re-ask
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("eval_*/**/*.json")}
    assert {p for p in after if after[p] != records[p]} == {
        tmp_path / "eval_results/tiny/color+2d/long/1.json"
    }


def make_images(root: Path, cases, suffix: str = ".png", skip=()) -> None:
    """Images made elsewhere (skip_generation), in any extension the official script accepts."""
    for case in cases:
        for desc in DESCS:
            if (case.type, case.index, desc) in skip:
                continue
            path = root / "images" / case.type / "m" / desc / f"{case.index}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)


def test_official_prompt_verbatim_and_a_stable_wording_per_image(tmp_path):
    """The official preset sends its three stored wordings (##YNQuestions## replaced by the
    questions, one per line) and its system message; each image keeps its wording on a rerun.
    Images as .jpg are judged like .png; a missing one is left out and counted."""
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    make_images(tmp_path, cases, ".jpg", skip={("text", 0, "long_description")})
    official = load_prompt("tiif", "official")
    assert "A113N-W3I/TIIF-Bench" in official.source and len(official.templates) == 3
    opts = JudgeOptions(temperature=0.0, retries=0)
    first = ScriptedJudge()
    summary = run_tiif(None, first, cases, tmp_path, "m", TINY_GEN, opts)
    by_questions = {"\n".join(q.strip() for q in c.questions): c for c in cases}
    for text, _, system in first.calls:
        template = next(t for t in official.templates if text.startswith(t.split("##")[0]))
        questions = next(q for q in by_questions if template.replace("##YNQuestions##", q) == text)
        assert questions and system == "You are a professional image critic."
    assert len(first.calls) == 7 and summary["coverage"]["long"]["no_result"] == 1
    shutil.rmtree(tmp_path / "eval_results"), shutil.rmtree(tmp_path / UNPARSED_DIR)
    again = ScriptedJudge()
    run_tiif(None, again, cases, tmp_path, "m", TINY_GEN, opts)
    assert sorted(again.calls) == sorted(first.calls)
    with pytest.raises(ValueError, match="lacks"):
        run_tiif(None, ScriptedJudge(), cases, tmp_path, "m", TINY_GEN,
                 JudgeOptions(template=["no placeholder"]))  # fmt: skip


def compose_tiif(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("tiif", overrides=overrides)


def test_command_pixel_judge_yes_prob_resume_guard_and_summary_only(tmp_path):
    """The command line with the tiny SD3 and the pixel judge: TIIF questions are outside the
    pixel grammar, so no answer comes back and the image is left out (no score, not an error).
    Then the summary alone, from the folder, with no model and no judge."""
    overrides = [
        "model=tiny", "judge=pixel",
        f"data.prompt_dir={FIX / 'prompts'}", f"data.eval_dir={FIX / 'eval_prompts'}",
        "data.types=[text]", "judging.answer_mode=yes_prob", "generation.num_steps=1",
        "generation.height=32", "generation.width=32",
    ]  # fmt: skip
    evaluate(compose_tiif(overrides), tmp_path)  # what `python -m eval.tiif` runs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["types"]["text"]["short"] == {
        "correct": 0, "total": 0, "images": 1, "scored": 0, "unparsed": 1, "unreadable": 0,
        "no_result": 0, "score": None,
    }  # fmt: skip
    assert (tmp_path / "images/text/tiny/short_description/0.png").is_file()
    # Resuming into this folder with other sampling settings would mix images: refused. A
    # knob that changes only speed (the batch size) resumes.
    with pytest.raises(ValueError, match=r"other \['generation'\] settings"):
        evaluate(compose_tiif([*overrides, "generation.num_steps=2"]), tmp_path)
    assert evaluate(compose_tiif([*overrides, "generation.batch_size=2"]), tmp_path)["types"]

    # Summary only: a judge that cannot even be built (nothing listens there) is never built.
    only = [
        "summarize_only=true", f"results_dir={tmp_path / 'eval_results'}", "model_name=tiny",
        "judge=openai", "judge.base_url=http://127.0.0.1:9/v1", "scoring=official",
        f"data.prompt_dir={FIX / 'prompts'}", f"data.eval_dir={FIX / 'eval_prompts'}",
        "data.types=[text]",
    ]  # fmt: skip
    evaluate(compose_tiif(only), tmp_path / "summary_only")
    again = json.loads((tmp_path / "summary_only" / "summary.json").read_text())
    assert again["types"] == summary["types"] and again["coverage"] == summary["coverage"]


def test_summary_only_of_an_official_folder(tmp_path):
    """An official eval_with_vlm.py output folder (one model, no prompt files given): the same
    summary files, the numbers of the official rules."""
    hand_folder(tmp_path / "theirs")
    shutil.rmtree(tmp_path / "theirs" / UNPARSED_DIR)  # the official script keeps none
    out, theirs = tmp_path / "out", f"results_dir={tmp_path / 'theirs' / 'eval_results'}"
    evaluate(compose_tiif(["summarize_only=true", theirs]), out)
    summary = json.loads((out / "summary.json").read_text())
    official = official_tiif_summary(tmp_path / "theirs" / "eval_results")
    assert summary["overall"]["long"] == pytest.approx(official["long"], abs=1e-12)
    assert summary["model_name"] == "m" and (out / "summary.md").is_file()
    with pytest.raises(BenchmarkInputError, match="needs data.prompt_dir"):
        evaluate(compose_tiif(["summarize_only=true", "scoring=strict", theirs]), out)


def test_bad_input_ends_in_one_line_and_locks_nothing(tmp_path):
    """`python -m eval.tiif` with a wrong type name: one line naming the valid types, exit 1,
    and the folder is not locked, so the corrected command then runs there."""
    cmd = [
        sys.executable, "-m", "eval.tiif", f"data.prompt_dir={FIX / 'prompts'}",
        f"data.eval_dir={FIX / 'eval_prompts'}", "data.types=[Text]", f"output_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("eval.tiif: unknown TIIF type(s) ['Text']")
    assert lines[-1].endswith("valid types: color+2d, shape+color, text")
    assert not (tmp_path / "run_settings.json").exists()


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official TIIF-Bench files absent")
@pytest.mark.parametrize(("split", "count"), [("testmini", 277), ("test", 2538)])
def test_official_tiif_files_parse(split, count):
    cases = load_tiif(OFFICIAL / f"{split}_prompts", OFFICIAL / f"{split}_eval_prompts")
    assert len(cases) == count
    grouped = {t for _, members in GROUPS.values() for t in members}
    assert {c.type for c in cases} == grouped
