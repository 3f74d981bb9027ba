"""UniGenBench++: the official CSV in and out, the <score> answer format, hand-checked dimension
accuracies, and an end-to-end tiny run that resumes without new work."""

from __future__ import annotations

import ast
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.generation import GenerationConfig, build_pipeline
from eval.judging import JudgeOptions
from eval.unigenbench import (
    CSV_COLUMNS,
    UniGenBenchDataError,
    evaluate,
    load_unigenbench,
    parse_scores,
    primary_dimension,
    run_unigenbench,
)
from rewards.judges.base import Judge, JudgeResult

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval" / "unigenbench" / "test_prompts_en.csv"
OFFICIAL = REPO.parent / "shared" / "benchmarks" / "unigenbench"
TINY_GEN = GenerationConfig(num_steps=1, height=32, width=32, batch_size=8)


class ScriptedJudge(Judge):
    """Prompt 0 (the cat): scores [1, 0, 1] for every image. Prompt 1 (the dogs): [1, 1, 0, 1]
    for its first two images, then an answer without a score list (unparseable)."""

    name = "scripted"

    def __init__(self):
        self.seen = Counter()

    def yes_prob(self, items):
        return JudgeResult(torch.full((len(items),), float("nan")), ["no"] * len(items))

    def generate(self, images, text, max_new_tokens=512):
        if "red cat" in text:
            return '<analysis>["red", "not on it", "painted"]</analysis>\n<score>[1, 0, 1]</score>'
        self.seen["dogs"] += 1
        if self.seen["dogs"] <= 2:
            return "<analysis>['a', 'b', 'c', 'd']</analysis><score>[1, 1, 0, 1]</score>"
        return "The image shows two dogs. Score: 1, 1, 1, 1"


def test_parse_scores_requires_a_full_binary_list():
    assert parse_scores("<score>[1, 0]</score>", 2) == ([1, 0], None)
    assert parse_scores('<analysis>["x"]</analysis><score>[1]</score>', 1) == ([1], ["x"])
    assert parse_scores("<score>[1, 0]</score>", 3) == (None, None)  # wrong length
    assert parse_scores("<score>[1, 2]</score>", 2) == (None, None)  # not 0/1
    assert parse_scores("<score>yes</score>", 1) == (None, None)
    assert parse_scores("1, 0", 2) == (None, None)


def test_primary_dimension_names():
    assert primary_dimension("Attribute - Color") == "Attribute"
    assert primary_dimension("Action - Hand (Character/Anthropomorphic)") == "Action"
    assert primary_dimension("World Knowledge") == "World Knowledge"


def test_end_to_end_hand_checked_and_resumable(tmp_path):
    cases, skipped = load_unigenbench(FIX)
    assert [c.index for c in cases] == [0, 1] and skipped == []
    pipe = build_pipeline({"name": "tiny", "seed": 0, "dtype": "float32"}, None, "cpu")
    judge = ScriptedJudge()
    opts = JudgeOptions(answer_mode="generate", batch_size=3)
    s = run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    # Cat x4: Color 1, 2D 0, Style 1. Dogs: two images [1, 1, 0, 1], two unparseable (all 0).
    sub = {k: (v["correct"], v["total"]) for k, v in s["sub"].items()}
    assert sub == {
        "Action - Animal": (2, 4),
        "Attribute - Color": (6, 8),
        "Attribute - Quantity": (2, 4),
        "Entity Layout - Two-Dimensional Space": (0, 4),
        "Grammar - Negation": (0, 4),
        "Style": (4, 4),
    }
    assert s["primary"]["Attribute"]["accuracy"] == pytest.approx(8 / 12)
    assert s["overall"] == pytest.approx((8 / 12 + 0.5 + 0 + 0 + 1) / 5)
    assert s["testpoint_accuracy"] == pytest.approx(14 / 28)
    assert s["unparsed_images"] == 2 and s["num_images"] == 8
    assert "mean of the primary-dimension accuracies" in s["overall_definition"]

    csv = pd.read_csv(tmp_path / "results" / "tiny_en.csv")
    assert list(csv.columns) == CSV_COLUMNS and len(csv) == 8
    first = json.loads(csv.iloc[0]["result_json"])
    assert first["score"] == [1, 0, 1] and ast.literal_eval(csv.iloc[0]["testpoint"])[2] == "Style"
    names = sorted(p.name for p in (tmp_path / "images" / "tiny").iterdir())
    assert names == [f"{i}_{j}.png" for i in (0, 1) for j in range(4)]
    assert json.loads((tmp_path / "scores.json").read_text())["overall"] == s["overall"]

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    before = sum(judge.seen.values())
    again = run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert sum(judge.seen.values()) == before  # nothing judged again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamps
    assert again["overall"] == s["overall"]

    # A lost image is made again and its stale row replaced: one new judgement, one row each.
    (tmp_path / "images" / "tiny" / "1_0.png").unlink()
    run_unigenbench(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert sum(judge.seen.values()) == before + 1
    rows = pd.read_csv(tmp_path / "results" / "tiny_en.csv")
    assert len(rows) == 8 and rows["img_path"].is_unique

    # A run folder moved elsewhere still resumes (rows are matched by image file name).
    moved = tmp_path.parent / f"{tmp_path.name}_moved"
    shutil.copytree(tmp_path, moved)
    run_unigenbench(pipe, judge, cases, moved, "tiny", TINY_GEN, opts)
    assert sum(judge.seen.values()) == before + 1


def test_command_tiny_model_tiny_vlm_judge(tmp_path, capsys):
    """The command line offline: tiny SD3, tiny random Qwen3-VL writing free text. Its noise
    has no <score> list, so every testpoint is counted wrong and the run still completes."""
    overrides = [
        "model=tiny", "judge=tiny_qwen3_vl",
        f"data.csv={FIX}", "data.limit=1", "images_per_prompt=2", "judging.max_new_tokens=4",
        "generation.num_steps=1", "generation.height=32", "generation.width=32",
    ]  # fmt: skip
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        evaluate(
            compose("unigenbench", overrides=overrides), tmp_path
        )  # what `python -m eval.unigenbench` runs
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["unparsed_images"] == 2 and scores["overall"] == 0.0
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
