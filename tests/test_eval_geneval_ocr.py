"""eval.geneval and eval.ocr: the official summary of a hand-made results.jsonl worked out by hand
(the same file runs through the official summary_scores.py in tests/parity), the official folder
layout, scoring through a reward (a served one included), bad input in one line, the tiny model
end to end, and both benchmarks in the trainer's eval hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from eval.after_checkpoint import evaluate_pipeline
from eval.common import BenchmarkInputError
from eval.generation import GenerationConfig
from eval.geneval import evaluate as evaluate_geneval
from eval.geneval import image_jobs, load_geneval, run_geneval, summarize_results
from eval.ocr import evaluate as evaluate_ocr
from eval.ocr import load_ocr_prompts
from rewards.scalar import OcrReward
from rewards.scalar.geneval import GenevalReward
from rewards.serve_reward import RewardServer
from tests.parity.geneval_cases import CASES, colour_fn, detector_output

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures_eval"
RESULTS = FIXTURES / "geneval" / "results.jsonl"
OCR_PROMPTS = FIXTURES / "ocr_prompts.txt"

# summary_scores.py's output for RESULTS, worked out by hand: 9 images of 6 prompts, 5 correct;
# 5 of 6 prompts have a correct image; per tag in order of first appearance; overall = mean of
# (1/3, 2/3, 1, 1/2).
EXPECTED_TEXT = """Summary
=======
Total images: 9
Total prompts: 6
% correct images: 55.56%
% correct prompts: 83.33%

Task breakdown
==============
two_object       = 33.33% (1 / 3)
single_object    = 66.67% (2 / 3)
counting         = 100.00% (1 / 1)
colors           = 50.00% (1 / 2)

Overall score (avg. over tasks): 0.62500
"""


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose(name, overrides=overrides)


def test_summary_of_hand_made_results(tmp_path, capsys):
    summary = summarize_results(RESULTS)
    assert summary["text"] == EXPECTED_TEXT
    assert summary["overall"] == pytest.approx(0.625)
    cfg = compose_cfg("geneval", ["summarize_only=true", f"results={RESULTS}"])
    evaluate_geneval(cfg, tmp_path)  # what `python -m eval.geneval summarize_only=true` runs
    assert capsys.readouterr().out.startswith(EXPECTED_TEXT)
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"]["counting"]["total"] == 1


def test_metadata_row_without_tag_is_one_line(tmp_path):
    bad = tmp_path / "meta.jsonl"
    bad.write_text(json.dumps(CASES[0][1]) + "\n" + json.dumps({"include": [], "prompt": "x"}))
    with pytest.raises(BenchmarkInputError, match=r"meta.jsonl:2 has tag None"):
        load_geneval(bad)
    cfg = compose_cfg("geneval", [f"data.metadata={bad}", "model=tiny"])
    with pytest.raises(BenchmarkInputError, match="has tag None"):
        evaluate_geneval(cfg, tmp_path / "out")


class CaseDetector:
    """Detections and colours of the hand-written case whose prompt the image was made for
    (the image's red channel holds the case number)."""

    def __call__(self, image):
        return detector_output(CASES[image.getpixel((0, 0))[0]][2]), None

    @staticmethod
    def colours(image, objects, name):
        return colour_fn(CASES[image.getpixel((0, 0))[0]][3])(image, objects, name)


def test_official_layout_and_scores_through_the_reward(tmp_path):
    picked = [0, 8, 5]  # single found, colour wrong, counting too many
    rows = [CASES[i][1] for i in picked]
    for (_, job), case in zip(image_jobs(rows, tmp_path / "images", 2), [0, 0, 8, 8, 5, 5]):
        Image.new("RGB", (16, 16), (case, 0, 0)).save(job.path)  # "made elsewhere"
    reward = GenevalReward(CaseDetector(), CaseDetector.colours, only_strict=False)
    summary = run_geneval(None, reward, rows, tmp_path, GenerationConfig(), images_per_prompt=2)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00000", "00001", "00002"]
    assert json.loads((tmp_path / "images" / "00001" / "metadata.jsonl").read_text()) == rows[1]
    assert (tmp_path / "images" / "00002" / "samples" / "00001.png").is_file()
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in results] == [True, True, False, False, False, False]
    assert [r["score"] for r in results] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert summary["overall"] == pytest.approx(1 / 3) and summary["strict_accuracy"] == 1 / 3
    assert (tmp_path / "summary.txt").read_text() == summarize_results(results)["text"]
    strict_only = GenevalReward(CaseDetector(), CaseDetector.colours)
    with pytest.raises(BenchmarkInputError, match="only_strict=false"):
        run_geneval(None, strict_only, rows, tmp_path, GenerationConfig(), images_per_prompt=2)


def test_ocr_prompts_checked_in_one_line(tmp_path):
    assert len(load_ocr_prompts(OCR_PROMPTS)) == 2
    bad = tmp_path / "p.txt"
    bad.write_text('fine "text"\nno quote here\n')
    with pytest.raises(BenchmarkInputError, match='no quoted text to read: "no quote here"'):
        load_ocr_prompts(bad)


def test_ocr_command_tiny_model_served_reward(tmp_path, capsys):
    """`python -m eval.ocr` offline: tiny SD3 makes the images, the OCR reward (a recogniser that
    reads "OPEN LATE" everywhere) is scored behind the reward service."""
    ocr = OcrReward(recognizer=lambda image: [("OPEN", 0.9), ("LATE", 0.8)])
    with RewardServer(ocr) as server:
        cfg = compose_cfg("ocr", [
            "model=tiny", f"data.prompts={OCR_PROMPTS}", f"reward.url={server.url}",
            "images_per_prompt=2", "generation.num_steps=1", "generation.height=32",
            "generation.width=32",
        ])  # fmt: skip
        summary = evaluate_ocr(cfg, tmp_path)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "00000_0.png",
        "00000_1.png",
        "00001_0.png",
        "00001_1.png",
    ]
    # "openlate" contains "openlate": 1; "flowgrpo" vs "openlate": distance 8 of 8: 0
    assert summary["ocr_mean"] == 0.5 and summary["exact"] == 0.5
    assert "OCR mean reward 0.5000, exact 0.5000" in capsys.readouterr().out


def test_eval_hook_runs_geneval_and_ocr_without_a_judge(tmp_path):
    from rl.models import load_pipeline

    rows = tmp_path / "meta.jsonl"
    rows.write_text(json.dumps(CASES[0][1]) + "\n")
    hook = OmegaConf.create({
        "every_n_epochs": 1,
        "generation": {"num_steps": 1, "height": 32, "width": 32, "batch_size": 2},
        "geneval": {"metadata": str(rows), "images_per_prompt": 1, "reward": {
            "_target_": "rewards.scalar.geneval.GenevalReward", "only_strict": False,
            "detector": {"_target_": "hydra.utils.get_method",
                         "path": "tests.test_eval_geneval_ocr.one_bench"},
            "colours": {"_target_": "hydra.utils.get_method",
                        "path": "tests.test_eval_geneval_ocr.CaseDetector.colours"}}},
        "ocr": {"prompts": str(OCR_PROMPTS), "limit": 1, "reward": {
            "_target_": "rewards.scalar.OcrReward",
            "recognizer": {"_target_": "hydra.utils.get_method",
                           "path": "tests.test_eval_geneval_ocr.read_open_late"}}},
    })  # fmt: skip
    pipe = load_pipeline(OmegaConf.create({"name": "tiny", "path": None, "dtype": "float32"}))
    metrics = evaluate_pipeline(pipe, hook, tmp_path, epoch=3)
    assert metrics == {
        "eval/geneval_overall": 1.0, "eval/geneval_strict_accuracy": 1.0,
        "eval/geneval_reward": 1.0, "eval/geneval_coverage": 1.0,
        "eval/ocr_mean": 1.0, "eval/ocr_exact": 1.0, "eval/ocr_coverage": 1.0,
    }  # fmt: skip
    assert (tmp_path / "geneval" / "epoch_000003" / "results.jsonl").is_file()


def read_open_late(image):
    """A recogniser that reads "OPEN LATE" in every image."""
    return [("OPEN LATE", 0.9)]


def one_bench(image):
    """A detector that finds one bench (the first hand-written case) in every image."""
    return detector_output(CASES[0][2]), None


def test_configs_compose():
    for name, extra in [
        ("geneval", ["data.metadata=x"]),
        ("ocr", ["data.prompts=x"]),
        ("checkpoints", ["run_dir=x", "eval_hook=geneval"]),
        ("checkpoints", ["run_dir=x", "eval_hook=ocr"]),
    ]:
        assert compose_cfg(name, extra).entry == name
    served = compose_cfg("serve_reward", ["reward=geneval"])
    assert served.reward.only_strict and served.host == "127.0.0.1"
    assert OmegaConf.is_missing(served.reward.detector, "checkpoint")
