"""Preference-benchmark accuracy: hand-checked fixtures in each benchmark's own format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eval.preference import (
    PairResult,
    decide,
    evaluate_pairs,
    load_pairs,
    mmrb2_accuracy,
    pairwise_accuracy,
    write_report,
)
from rewards.base import Reward, RewardOutput
from rubric_learning.pairs import PreferencePair

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval" / "preference"
OFFICIAL = REPO.parent / "shared" / "benchmarks"


class RedReward(Reward):
    """Score = mean red channel in [0, 1]: the fixtures' images are solid (r, 0, 0) squares."""

    name = "red"

    def score(self, images, prompts, metadata):
        return RewardOutput(torch.tensor([np.asarray(im)[..., 0].mean() / 255 for im in images]))


def _load(name: str, path: str, **extra):
    bench = OmegaConf.create({"name": name, "tie_policy": "drop", **extra})
    return load_pairs(bench, OmegaConf.create({"path": str(FIX / path)}))


def test_decision_rule_tie_and_nan_are_not_a_or_b():
    assert decide(0.7, 0.2) == "A" and decide(0.2, 0.7) == "B"
    assert decide(0.5, 0.5) == "tie"
    assert decide(float("nan"), 0.1) == "invalid"


def test_mmrb2_fixture_hand_checked(tmp_path):
    # evalmuse: right, wrong, tie -> 2 of 6 trials; wise: right, right, corrupt image (no
    # score: left out as the official flow leaves a failed judge call out) -> 4 of 4 judged.
    # Overall 6 of 10 judged trials (0.6); strict, the 2 failed trials wrong: 6 of 12 (0.5).
    pairs = _load("mmrb2", "mmrb2_t2i.json")
    assert pairs[0].prompt == "a red square number 0"
    report = evaluate_pairs(RedReward(), pairs, "mmrb2", batch_size=4, evaluator="red")
    acc = report["accuracy"]
    assert acc["evalmuse"]["correct"] == 2 and acc["evalmuse"]["total"] == 6
    assert (acc["wise"]["correct"], acc["wise"]["total"], acc["wise"]["invalid"]) == (4, 4, 2)
    assert acc["wise"]["strict_accuracy"] == pytest.approx(4 / 6)
    assert acc["overall"]["accuracy"] == pytest.approx(0.6)
    assert acc["overall"]["strict_accuracy"] == pytest.approx(0.5)
    assert acc["evalmuse"]["tie_judgements"] == 2 and acc["wise"]["invalid"] == 2
    assert report["failures"] == {"unreadable image": 1}

    preds = report["mmrb2_predictions"]
    first, tie, bad = (preds[p.id] for p in (pairs[0], pairs[2], pairs[5]))
    assert first["forward"][0]["judgement"] == "A" and first["reverse"][0]["judgement"] == "B"
    assert tie["forward"][0]["judgement"] == "tie" == tie["reverse"][0]["judgement"]
    assert bad["forward"] == [] and bad["reverse"] == []  # as evaluate.py stores a failure

    write_report(report, tmp_path)
    written = json.loads((tmp_path / "mmrb2_predictions.json").read_text())
    assert set(written) == {p.id for p in pairs}
    assert written[pairs[5].id] == {"forward": [], "reverse": []}
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert lines[5]["score_b"] is None and lines[5]["judgement"] == "invalid"  # NaN -> null
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["accuracy"]["overall"]["accuracy"] == pytest.approx(0.6)
    # The official rule (MMRB2's compute_accuracy.py) on the written file gives the same number.
    assert official_mmrb2_accuracy(written, FIX / "mmrb2_t2i.json") == pytest.approx(0.6)
    assert "tie" in results["decision_rule"]
    assert "| **overall** | 0.6000 | 0.5000 |" in (tmp_path / "results.md").read_text()
    assert len(lines) == 6


def official_mmrb2_accuracy(predictions: dict, benchmark_file: Path) -> float:
    """MMRB2's published scoring rule, rewritten here: per pair in the predictions file, the
    first forward judgement must equal ``chosen`` and the first reverse one, with A and B
    swapped back, too; pairs or empty judgements missing from the file are not counted."""
    correct = counted = 0
    for pair in json.loads(benchmark_file.read_text())["pairs"]:
        pred = predictions.get(pair["id"])
        if pred is None:
            continue
        for trial, swap in (("forward", {}), ("reverse", {"A": "B", "B": "A"})):
            judgement = (pred.get(trial) or [{}])[0].get("judgement")
            if judgement:
                counted += 1
                correct += swap.get(judgement, judgement) == pair["chosen"]
    return correct / counted


def test_mmrb2_metric_counts_reverse_flip_missing_and_unparseable():
    pairs = [PreferencePair(f"p{i}", "x", "a", "b", 1.0, "s") for i in range(4)]
    preds = {
        "p0": {"forward": [{"judgement": "A"}], "reverse": [{"judgement": "B"}]},  # 2 right
        "p1": {"forward": [{"judgement": "A"}], "reverse": [{"judgement": "A"}]},  # 1 right
        "p2": {"forward": [{"judgement": "no idea"}], "reverse": []},  # wrong, left out
        # p3 missing: two trials left out
    }
    acc = mmrb2_accuracy(preds, pairs)["overall"]
    assert (acc["correct"], acc["total"], acc["invalid"]) == (3, 5, 3)
    assert acc["accuracy"] == pytest.approx(3 / 5) and acc["strict_accuracy"] == pytest.approx(
        3 / 8
    )


def test_hpdv3_shuffles_a_b_and_scores_strictly(tmp_path):
    pairs = _load("hpdv3", "hpdv3_test.json", shuffle_seed=3)
    report = evaluate_pairs(RedReward(), pairs, "hpdv3", batch_size=2)
    assert report["accuracy"]["overall"]["correct"] == 2
    assert report["accuracy"]["overall"]["total"] == 3
    many = [dict(json.loads((FIX / "hpdv3_test.json").read_text())[0]) for _ in range(40)]
    file = tmp_path / "many.json"
    file.write_text(json.dumps(many))
    bench = OmegaConf.create({"name": "hpdv3", "tie_policy": "drop"})
    shuffled = load_pairs(bench, OmegaConf.create({"path": str(file), "image_root": str(FIX)}))
    assert {p.label for p in shuffled} == {0.0, 1.0}  # the preferred image sits on both sides


@pytest.mark.parametrize(("policy", "correct", "total"), [("drop", 2, 3), ("half", 2.5, 4)])
def test_pickapic_tie_policy(policy, correct, total):
    pairs = _load("pickapic", "pickapic_test.parquet")
    report = evaluate_pairs(RedReward(), pairs, "pickapic", tie_policy=policy)
    overall = report["accuracy"]["overall"]
    assert (overall["correct"], overall["total"]) == (correct, total)
    assert report["tie_policy"].startswith(policy)
    assert overall["ties_dropped"] == (1 if policy == "drop" else 0)


def test_half_tie_policy_gives_no_credit_for_a_missing_score():
    results = [
        PairResult("t1", "s", 0.5, 0.3, 0.3),  # human tie, reward tie: half
        PairResult("t2", "s", 0.5, 0.9, 0.1),  # human tie, reward prefers A: half
        PairResult("t3", "s", 0.5, float("nan"), 0.1),  # human tie, no score: wrong
        PairResult("p1", "s", 1.0, 0.9, 0.1),  # A preferred and chosen: right
    ]
    half = pairwise_accuracy(results, "half")["overall"]
    assert (half["correct"], half["total"], half["invalid"]) == (2.0, 4, 1)
    drop = pairwise_accuracy(results, "drop")["overall"]
    assert (drop["correct"], drop["total"], drop["ties_dropped"]) == (1.0, 1, 3)


def test_jsonl_per_source():
    report = evaluate_pairs(RedReward(), _load("jsonl", "pairs.jsonl"), "jsonl")
    acc = report["accuracy"]
    assert acc["s1"]["accuracy"] == 0.5 and acc["s2"]["accuracy"] == 1.0
    assert acc["overall"]["correct"] == 2


def test_wrong_image_root_fails_naming_the_path(tmp_path):
    bench = OmegaConf.create({"name": "jsonl", "tie_policy": "drop"})
    data = OmegaConf.create({"path": str(FIX / "pairs.jsonl"), "image_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="image_root"):
        load_pairs(bench, data)


def test_entry_point_with_rubric_reward_and_pixel_judge(tmp_path):
    """The real command: Hydra config, rubric reward, pixel judge ('predominantly red')."""
    cmd = [
        sys.executable, "-m", "eval.preference", "benchmark=mmrb2",
        f"data.path={FIX / 'mmrb2_t2i.json'}", "reward=rubric", "judge=pixel",
        f"reward.rubric_set={FIX / 'red_rubric.json'}", f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["accuracy"]["overall"]["accuracy"] == pytest.approx(0.6)
    assert "overall accuracy 0.6000 (strict 0.5000)" in proc.stdout
    # The official rule (MMRB2's compute_accuracy.py) on the written file gives the same number.
    assert official_mmrb2_accuracy(
        json.loads((tmp_path / "mmrb2_predictions.json").read_text()), FIX / "mmrb2_t2i.json"
    ) == pytest.approx(0.6)


@pytest.mark.skipif(not (OFFICIAL / "mmrb2").is_dir(), reason="official MMRB2 files absent")
def test_official_mmrb2_file_parses(tmp_path):
    file = OFFICIAL / "mmrb2" / "t2i_response_only.json"
    ids = [row["id"] for row in json.loads(file.read_text())["pairs"]]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({i: "(no prompt in the response-only release)" for i in ids}))
    bench = OmegaConf.create({"name": "mmrb2", "tie_policy": "drop"})
    data = {"path": str(file), "prompts_path": str(prompts), "image_root": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="image_root"):  # metadata only: no images
        load_pairs(bench, OmegaConf.create(data))
    from rubric_learning.pairs import load_mmrb2

    pairs = load_mmrb2(str(file), prompts_path=str(prompts))
    assert len(pairs) == 1000
    assert {p.source for p in pairs} == {"evalmuse", "oneigbench", "r2ibench", "wise",
                                         "realunify_ueg"}  # fmt: skip


class CrashingRedReward(RedReward):
    """RedReward that counts the images it scores and dies (as a killed process would) after
    ``calls`` calls."""

    def __init__(self, calls: int | None = None):
        super().__init__()
        self.calls, self.scored = calls, 0

    def score(self, images, prompts, metadata):
        if self.calls is not None and self.calls == 0:
            raise KeyboardInterrupt("killed")
        self.calls = None if self.calls is None else self.calls - 1
        self.scored += len(images)
        return super().score(images, prompts, metadata)


def test_scores_are_written_as_they_come_and_a_rerun_resumes(tmp_path):
    """A run that dies after two batches has written those two batches; the rerun into the
    same file scores only the rest (a NaN pair again, a torn last line skipped) and ends with
    the report of a run that never stopped."""
    pairs = _load("jsonl", "pairs.jsonl")
    clean = evaluate_pairs(RedReward(), pairs, "jsonl", batch_size=1)
    progress = tmp_path / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_pairs(CrashingRedReward(calls=2), pairs, "jsonl", batch_size=1, progress=progress)
    written = progress.read_text().splitlines()
    assert [json.loads(line)["id"] for line in written] == [p.id for p in pairs[:2]]
    progress.write_text(written[0] + "\n" + written[1][:20])  # the second line torn mid-write
    rerun = CrashingRedReward()
    report = evaluate_pairs(rerun, pairs, "jsonl", batch_size=1, progress=progress)
    assert rerun.scored == 2 * (len(pairs) - 1)  # every pair but the first, both images
    assert report["accuracy"] == clean["accuracy"]
    with pytest.raises(ValueError, match="appear more than once"):
        evaluate_pairs(RedReward(), [pairs[0], pairs[0]], "jsonl")


def test_command_resumes_into_output_dir_and_bad_input_is_one_line(tmp_path):
    base = [sys.executable, "-m", "eval.preference", "benchmark=jsonl", "reward=rubric",
            "judge=pixel", f"reward.rubric_set={FIX / 'red_rubric.json'}",
            f"hydra.run.dir={tmp_path / 'h'}"]  # fmt: skip
    cmd = [*base, f"data.path={FIX / 'pairs.jsonl'}", f"output_dir={tmp_path / 'o'}"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    results = (tmp_path / "o" / "results.json").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "3 of 3 pairs already scored" in again.stdout + again.stderr
    assert (tmp_path / "o" / "results.json").read_text() == results
    other = subprocess.run([*cmd, "benchmark.tie_policy=half"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "other ['benchmark'] settings" in other.stderr.strip().splitlines()[-1]
    missing = subprocess.run([*base, f"data.path={tmp_path / 'nope.jsonl'}"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("eval.preference: ") and "nope.jsonl" in last
