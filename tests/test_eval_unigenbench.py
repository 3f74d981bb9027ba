"""UniGenBench++: the official CSV in and out, the official answer parser, dimension accuracies
worked out by hand from the official score calculator (an unparseable answer, a failed judge
call, a missing image), the official per-model JSON, the yes_prob CSV read by the official
rules, the official judge template, summaries without a model, and a tiny end-to-end run that
resumes without new work."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from eval.generation import GenerationConfig, build_pipeline
from eval.judging import JudgeOptions, load_prompt
from eval.unigenbench import (
    CSV_COLUMNS,
    UgbCase,
    UniGenBenchDataError,
    category_of,
    evaluate,
    format_judge_prompt,
    load_unigenbench,
    parse_scores,
    primary_dimension,
    read_results,
    run_unigenbench,
)
from rewards.judges.base import Judge, JudgeError, JudgeResult

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval" / "unigenbench" / "test_prompts_en.csv"
OFFICIAL = REPO.parent / "shared" / "benchmarks" / "unigenbench"
TINY_GEN = GenerationConfig(num_steps=1, height=32, width=32, batch_size=8)


class ScriptedJudge(Judge):
    """Prompt 0 (the cat): analysis and scores [1, 0, 1] for every image. Prompt 1 (the dogs):
    [1, 1, 0, 1] for the first two images asked; any other ask about the dogs (later images,
    every re-ask) gets an answer without <analysis> (unparseable by the official rule). In
    yes_prob mode: P(yes) 0.9 for red things, 0.2 for the rest, no answer (NaN) for "no tail"."""

    name = "scripted"

    def __init__(self):
        self.calls = []

    def yes_prob(self, items):
        probs = [
            float("nan") if "no tail" in i.question else 0.9 if "red" in i.question else 0.2
            for i in items
        ]
        reasons = ["no yes/no token" if p != p else None for p in probs]
        return JudgeResult(torch.tensor(probs), reasons)

    def generate(self, images, text, max_new_tokens=512, *, temperature=0.0, system=None):
        self.calls.append((text, temperature, max_new_tokens))
        if "red cat" in text:
            return '<analysis>["red", "not on it", "painted"]</analysis>\n<score>[1, 0, 1]</score>'
        first_asks = sum(t == 0 for x, t, _ in self.calls if "dogs" in x)
        if temperature == 0 and first_asks <= 2:
            return "<analysis>['a', 'b', 'c', 'd']</analysis><score>[1, 1, 0, 1]</score>"
        return "The image shows two dogs. <score>[1, 1, 1, 1]</score>"


def test_parse_scores_is_the_official_rule():
    assert parse_scores('<analysis>["x", "y"]</analysis><score>[1, 0]</score>', 2) == (
        ["x", "y"], [1, 0],
    )  # fmt: skip
    assert parse_scores("<score>[1, 0]</score>", 2) is None  # <analysis> is required
    assert parse_scores("<analysis>['x']</analysis><score>[1, 0]</score>", 2) is None
    assert parse_scores("<analysis>[1, 2]</analysis><score>[1, 0]</score>", 3) is None
    # A score list of the right length parses whatever its entries; only 1 counts as met.
    assert parse_scores("<analysis>['a', 'b']</analysis><score>[1, 2]</score>", 2)[1] == [1, 2]
    assert parse_scores("<analysis>x y</analysis><score>[1]</score>", 1) is None  # not literal
    assert parse_scores(None, 1) is None


def test_parse_scores_is_as_lenient_as_the_official_parser():
    """CodeGoat24/UniGenBench eval/src/eval_common.py (49d0bce) ``parse_evaluation_response``
    checks only that both literals have one entry per testpoint (``len``): an analysis that
    is one string of that length, a tuple or a dict parses there, so here too; a literal with
    no length (the official worker raises TypeError) is None."""
    two = "<analysis>{}</analysis><score>{}</score>"
    assert parse_scores(two.format("'ab'", "[1, 0]"), 2) == ("ab", [1, 0])
    assert parse_scores(two.format("('x', 'y')", "(1, 1)"), 2) == (("x", "y"), (1, 1))
    assert parse_scores(two.format("{'a': 1, 'b': 2}", "[1, 1]"), 2)[0] == {"a": 1, "b": 2}
    assert parse_scores(two.format("'abc'", "[1, 0]"), 2) is None  # 3 characters, 2 testpoints
    assert parse_scores(two.format("7", "[1, 0]"), 2) is None
    assert parse_scores(two.format("['x', 'y']", "5"), 2) is None


def test_primary_dimension_and_category_names():
    assert primary_dimension("Attribute - Color") == "Attribute"
    assert primary_dimension("Action - Hand (Character/Anthropomorphic)") == "Action"
    assert primary_dimension("World Knowledge") == "World Knowledge"
    assert category_of("/d/test_prompts_en_long.csv") == "en_long"
    assert category_of("/d/test_prompts_en.csv") == "en" and category_of("mine.csv") == "en"


def test_official_template_filled_as_build_system_prompt_fills_it():
    """The official template (stored verbatim) filled as the official build_system_prompt does:
    str.format with the Python list of testpoint names and the headed, 「」-bracketed lines.
    Text of the prompt that looks like a placeholder stays as it is."""
    official = load_prompt("unigenbench", "official")
    assert "CodeGoat24/UniGenBench" in official.source and official.max_new_tokens == 4096
    defs = official.extra["testpoint_definitions"]
    assert len(defs) == 27
    case = UgbCase(3, "A {testpoint} sign, red", ("Attribute - Color", "Style"), ("red", "ink"))
    explanation = (
        "Checkpoints Defination:\u300c"
        + "".join(f"\n{p}: {defs[p]}" for p in case.testpoints)
        + "\n\u300d"
    )
    described = "Checkpoints Description:\u300c\nAttribute - Color: red\nStyle: ink\n\u300d"
    expected = official.templates[0].format(
        prompt=case.prompt, testpoint="['Attribute - Color', 'Style']",
        explanation=explanation, test_explanation=described,
    )  # fmt: skip
    assert format_judge_prompt(official.templates[0], case) == expected


def official_calculate_scores(csv_path: Path) -> dict:
    """The official eval_common.calculate_scores rule, written out: each row's testpoint list and
    the "score" of its result_json, both read with ast.literal_eval (a row that fails is
    skipped); the primary key is the name before the first "-", unstripped; accuracy rounded to
    4 decimals; sub dimensions sorted."""
    big, small = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for _, row in pd.read_csv(csv_path).iterrows():
        try:
            checkpoints = ast.literal_eval(row["testpoint"])
            scores = ast.literal_eval(row["result_json"])["score"]
        except (ValueError, SyntaxError, TypeError, KeyError):
            continue
        for cp, score in zip(checkpoints, scores):
            for table, key in ((big, cp.split("-", 1)[0] if "-" in cp else cp), (small, cp)):
                table[key][1] += 1
                table[key][0] += score == 1

    def entry(c, t):
        return {"correct": c, "total": t, "accuracy": round(c / t if t else 0, 4)}

    return {
        "primary_dimensions": {k: entry(*v) for k, v in big.items()},
        "sub_dimensions": {k: entry(*small[k]) for k in sorted(small)},
    }


def test_end_to_end_worked_by_hand_and_resumable(tmp_path):
    cases, skipped = load_unigenbench(FIX)
    assert [c.index for c in cases] == [0, 1] and skipped == []
    pipe = build_pipeline({"name": "tiny", "seed": 0, "dtype": "float32"}, None, "cpu")
    judge = ScriptedJudge()
    opts = JudgeOptions(batch_size=3, retries=2)
    s = run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    # Cat x4: Color 1, 2D 0, Style 1. Dogs: two images [1, 1, 0, 1]; two never parse (asked
    # 3 times each), so they are left out, as the official calculator leaves them out.
    sub = {k: (v["correct"], v["total"]) for k, v in s["sub"].items()}
    assert sub == {
        "Action - Animal": (2, 2), "Attribute - Color": (6, 6), "Attribute - Quantity": (2, 2),
        "Entity Layout - Two-Dimensional Space": (0, 4), "Grammar - Negation": (0, 2),
        "Style": (4, 4),
    }  # fmt: skip
    assert s["overall"] == pytest.approx((1 + 1 + 0 + 1 + 0) / 5)  # Action Attribute EL Style G
    assert s["testpoint_accuracy"] == pytest.approx(14 / 20)
    assert s["coverage"] == {"images": 8, "scored": 6, "unparsed": 2, "no_result": 0,
                             "fraction_scored": 0.75}  # fmt: skip
    assert [t for x, t, _ in judge.calls if "dogs" in x].count(1.0) == 4  # 2 images x 2 re-asks
    assert {n for _, _, n in judge.calls} == {4096}  # the official answer budget

    csv = tmp_path / "results" / "tiny_en.csv"
    rows = pd.read_csv(csv)
    assert list(rows.columns) == CSV_COLUMNS and len(rows) == 8
    raw = pd.read_csv(csv, keep_default_na=False)
    assert (raw["result_json"] == "null").sum() == 2  # as the official script writes a failure
    assert json.loads(rows.iloc[0]["result_json"])["score"] == [1, 0, 1]
    # The official per-model JSON: the official rule on our CSV, by hand and written out.
    official = json.loads(csv.with_suffix(".json").read_text())
    assert official == official_calculate_scores(csv)
    assert official["primary_dimensions"] == {
        "Attribute ": {"correct": 8, "total": 8, "accuracy": 1.0},
        "Entity Layout ": {"correct": 0, "total": 4, "accuracy": 0.0},
        "Style": {"correct": 4, "total": 4, "accuracy": 1.0},
        "Action ": {"correct": 2, "total": 2, "accuracy": 1.0},
        "Grammar ": {"correct": 0, "total": 2, "accuracy": 0.0},
    }
    names = sorted(p.name for p in (tmp_path / "images" / "en" / "tiny").iterdir())
    assert names == [f"{i}_{j}.png" for i in (0, 1) for j in range(4)]

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    before = len(judge.calls)
    again = run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert len(judge.calls) == before  # nothing judged again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamps
    assert again["overall"] == s["overall"]

    # A lost image is made again and its stale row replaced: one new judgement, one row each.
    (tmp_path / "images" / "en" / "tiny" / "0_0.png").unlink()
    run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert len(judge.calls) == before + 1
    rows = pd.read_csv(csv)
    assert len(rows) == 8 and rows["img_path"].is_unique

    # A run folder moved elsewhere still resumes (rows are matched by image name).
    moved = tmp_path.parent / f"{tmp_path.name}_moved"
    shutil.copytree(tmp_path, moved)
    run_unigenbench(pipe, judge, cases, moved, "tiny", TINY_GEN, opts)
    assert len(judge.calls) == before + 1

    # Our stricter option counts the two unparsed dog images wrong (4 testpoints each).
    strict = compose_ugb(["summarize_only=true", f"results_csv={csv}", f"data.csv={FIX}",
                          "scoring=strict"])  # fmt: skip
    st = evaluate(strict, tmp_path / "strict")
    assert st["sub"]["Attribute - Quantity"]["total"] == 4
    assert st["overall"] == pytest.approx((8 / 12 + 2 / 4 + 0 + 1 + 0) / 5)


def compose_ugb(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("unigenbench", overrides=overrides)


def make_images(folder: Path, cases, suffix: str, skip=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for j in range(4):
            if f"{case.index}_{j}" not in skip:
                Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / f"{case.index}_{j}{suffix}")


def test_yes_prob_csv_read_by_the_official_rules_and_summary_only(tmp_path):
    """yes_prob mode writes rows the official calculator reads (analysis as text, no JSON null
    inside); a testpoint without an answer leaves the image out (result_json null). Images are
    .webp here (accepted), one is missing (left out, counted). Then the scores again from the
    CSV alone, with no model and no judge, ours or as the official script names it."""
    long_csv = tmp_path / "test_prompts_en_long.csv"
    shutil.copy(FIX, long_csv)
    cases, _ = load_unigenbench(long_csv)
    make_images(tmp_path / "run" / "images" / "en_long" / "m", cases, ".webp", skip={"0_3"})
    opts = JudgeOptions(answer_mode="yes_prob")
    s = run_unigenbench(None, ScriptedJudge(), cases, tmp_path / "run", "m", TINY_GEN, opts,
                        category="en_long")  # fmt: skip
    csv = tmp_path / "run" / "results" / "m_en_long.csv"
    official = official_calculate_scores(csv)
    # Cat x3 (one image missing): red (Color) yes, the rest P(yes) 0.2 -> no. Dogs: "no tail"
    # is unanswered, so all four dog images are left out.
    assert official["sub_dimensions"] == {
        "Attribute - Color": {"correct": 3, "total": 3, "accuracy": 1.0},
        "Entity Layout - Two-Dimensional Space": {"correct": 0, "total": 3, "accuracy": 0.0},
        "Style": {"correct": 0, "total": 3, "accuracy": 0.0},
    }
    assert json.loads(csv.with_suffix(".json").read_text()) == official
    assert s["coverage"] == {"images": 8, "scored": 3, "unparsed": 4, "no_result": 1,
                             "fraction_scored": 0.375}  # fmt: skip
    row = pd.read_csv(csv).iloc[0]
    assert ast.literal_eval(row["result_json"])["analysis"][0] == "P(yes) = 0.9000"
    assert s["overall"] == pytest.approx((1.0 + 0.0 + 0.0) / 3) and s["category"] == "en_long"

    only = evaluate(compose_ugb(["summarize_only=true", f"results_csv={csv}"]), tmp_path / "o")
    assert only["primary"] == s["primary"] and only["overall"] == s["overall"]
    assert only["model_name"] == "m" and only["category"] == "en_long"
    written = json.loads((tmp_path / "o" / "results" / "m_en_long.json").read_text())
    assert written == official and (tmp_path / "o" / "scores.md").is_file()


def test_a_corrupt_or_repeated_results_csv_ends_in_one_line_naming_the_rows(tmp_path):
    """A results CSV with an image twice would have it counted twice by the official
    calculator (0.75 became 0.90): refused, naming the image and its lines. A CSV pandas
    cannot read (a ragged row, an empty file) is named with pandas' own reason. Through the
    command line: one line, exit 1, no traceback."""
    cases, _ = load_unigenbench(FIX)
    make_images(tmp_path / "run" / "images" / "en" / "m", cases, ".png")
    run_unigenbench(None, ScriptedJudge(), cases, tmp_path / "run", "m", TINY_GEN, JudgeOptions())
    csv = tmp_path / "run" / "results" / "m_en.csv"
    frame = pd.read_csv(csv)
    repeated = tmp_path / "repeated.csv"
    frame.iloc[[0, 1, 2, 0]].to_csv(repeated, index=False)
    with pytest.raises(UniGenBenchDataError, match=r"repeated.csv: image .*0_0.png has 2 rows "
                       r"\(lines \[2, 5\]\)"):  # fmt: skip
        read_results(repeated)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(csv.read_text() + '"1","2","3","4","5","6","7","8"\n')
    with pytest.raises(UniGenBenchDataError, match="ragged.csv: not a readable results CSV"):
        read_results(ragged)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UniGenBenchDataError, match="empty.csv: not a readable results CSV"):
        read_results(tmp_path / "empty.csv")
    cmd = [sys.executable, "-m", "eval.unigenbench", "summarize_only=true",
           f"results_csv={repeated}", f"hydra.run.dir={tmp_path / 'h'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("eval.unigenbench: ")
    assert "has 2 rows" in proc.stderr


class FailingJudge(ScriptedJudge):
    """Every judge call about the dogs fails (after the judge's own retries); with ``down``,
    every call fails (the server is gone)."""

    down = False
    failed = 0

    def generate(self, images, text, max_new_tokens=512, *, temperature=0.0, system=None):
        if "dogs" in text or self.down:
            self.failed += 1
            raise JudgeError("generation failed: HTTP 400 (bad request)")
        return super().generate(images, text, max_new_tokens, temperature=temperature)


def test_a_failed_judge_call_leaves_the_image_out_and_a_rerun_asks_again(tmp_path):
    cases, _ = load_unigenbench(FIX)
    make_images(tmp_path / "images" / "en" / "m", cases, ".png")
    judge = FailingJudge()
    opts = JudgeOptions(batch_size=4, retries=1)
    s = run_unigenbench(None, judge, cases, tmp_path, "m", TINY_GEN, opts)
    assert s["coverage"]["scored"] == 4 and s["coverage"]["no_result"] == 4
    assert s["sub"]["Style"] == {"correct": 4, "total": 4, "accuracy": 1.0}
    assert len(pd.read_csv(tmp_path / "results" / "m_en.csv")) == 4  # no rows for failures
    # The dogs' batch fails, then each dog image alone; a failed call is not re-asked.
    assert judge.failed == 1 + 4
    again = FailingJudge()
    run_unigenbench(None, again, cases, tmp_path, "m", TINY_GEN, opts)
    assert again.calls == [] and again.failed == 1 + 4  # a rerun asks only the dogs again

    # A judge that answers nothing at all is taken to be down after FAILURE_STREAK images.
    down = FailingJudge()
    down.down = True
    many = [UgbCase(i, f"cat {i}", ("Style",), ("ink",)) for i in range(5)]
    make_images(tmp_path / "d" / "images" / "en" / "m", many, ".png")
    with pytest.raises(JudgeError, match="answered none of the last 16 images"):
        run_unigenbench(None, down, many, tmp_path / "d", "m", TINY_GEN, opts)


class CarriageReturnJudge(ScriptedJudge):
    """Answers with a lone carriage return and no comma or quote (nothing else would make the CSV
    writer quote the field), as a random model's noise once did."""

    def generate(self, images, text, max_new_tokens=512, *, temperature=0.0, system=None):
        self.calls.append((text, temperature, max_new_tokens))
        return "no analysis\rno score"


def test_an_answer_with_a_carriage_return_keeps_its_row(tmp_path):
    """Such an answer survives the results CSV: one row per image, the answer verbatim, read back
    as the official calculator reads it (unparsed, not lost), and a rerun asks nothing again."""
    cases, _ = load_unigenbench(FIX)
    make_images(tmp_path / "images" / "en" / "m", cases[:1], ".png")
    opts = JudgeOptions(batch_size=4, retries=0)
    s = run_unigenbench(None, CarriageReturnJudge(), cases[:1], tmp_path, "m", TINY_GEN, opts)
    rows = pd.read_csv(tmp_path / "results" / "m_en.csv")
    assert len(rows) == 4 and (rows["output"] == "no analysis\rno score").all()
    assert s["coverage"]["unparsed"] == 4 and s["coverage"]["no_result"] == 0
    again = CarriageReturnJudge()
    run_unigenbench(None, again, cases[:1], tmp_path, "m", TINY_GEN, opts)
    assert again.calls == []


def test_command_tiny_model_tiny_vlm_judge(tmp_path, capsys):
    """The command line offline: tiny SD3, tiny random Qwen3-VL writing free text with the
    official template. Its noise never parses, so both images are left out (re-asked once,
    sampling) and the run still completes."""
    overrides = [
        "model=tiny", "judge=tiny_qwen3_vl", f"data.csv={FIX}", "data.limit=1",
        "images_per_prompt=2", "judging.max_new_tokens=4", "judging.retries=1",
        "generation.num_steps=1", "generation.height=32", "generation.width=32",
    ]  # fmt: skip
    evaluate(compose_ugb(overrides), tmp_path)  # what `python -m eval.unigenbench` runs
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["coverage"]["unparsed"] == 2 and scores["coverage"]["scored"] == 0
    assert scores["overall"] is None  # nothing scored: no figure, not 0
    assert scores["judging"]["prompt"] == "official" and scores["judging"]["max_new_tokens"] == 4
    assert "overall = unweighted mean" in capsys.readouterr().out


def test_malformed_row_policy(tmp_path):
    frame = pd.read_csv(FIX)
    frame.loc[1, "sub_dims_en"] = '{"Testpoints": ["Style" "World Knowledge"]}'
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    cases, skipped = load_unigenbench(bad)
    assert len(cases) == 1 and skipped == [1]
    with pytest.raises(UniGenBenchDataError, match="index 1"):
        load_unigenbench(bad, malformed_rows="error")
    with pytest.raises(FileNotFoundError, match="UniGenBench CSV not found: .*nowhere.csv"):
        load_unigenbench(tmp_path / "nowhere.csv")


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official UniGenBench files absent")
def test_official_unigenbench_csvs_parse():
    cases, skipped = load_unigenbench(OFFICIAL / "test_prompts_en.csv")
    testpoints = [t for c in cases for t in c.testpoints]
    assert len(cases) == 600 and skipped == [] and len(testpoints) == 1813
    assert len(set(testpoints)) == 27 and len({primary_dimension(t) for t in testpoints}) == 10
    long_cases, long_skipped = load_unigenbench(OFFICIAL / "test_prompts_en_long.csv")
    assert long_skipped == [509] and len(long_cases) == 599  # a broken row in the official CSV
