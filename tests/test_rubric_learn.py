"""rubric_learning.learn end to end: synthetic world learns, reruns are free, bad input fails."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rewards.judges.base import Judge
from rewards.rubric_set import load_rubric_set
from rubric_learning.learn import EmptyWorkingSetError, learn
from rubric_learning.pairs import PairDataError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("learn", overrides=list(overrides))


class NotAListGenerator(Judge):
    """A generator whose every answer is a JSON object instead of a list of statements."""

    def yes_prob(self, items):
        raise NotImplementedError

    def generate(self, images, text, max_new_tokens=512):
        return '{"rubric": "The image is bright."}'


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    cfg = config("experiment=synthetic", f"scoring.cache_path={out / 'cache.sqlite'}")
    return cfg, out, learn(cfg, out / "run1")


def test_synthetic_world_recovers_the_hidden_rules(synthetic_run):
    cfg, out, final = synthetic_run
    assert cfg.data.num_train == 256
    assert final["test_accuracy"] >= 0.9 * final["oracle_accuracy"]
    assert final["hidden_kept"] == final["hidden_rules"] == len(cfg.data.hidden_rules)
    assert final["distractors_kept"] <= 0.2 * final["distractors_offered"]
    assert final["distractors_offered"] >= 20  # the proposer really offered many wrong rules

    report = json.loads((out / "run1" / "report.json").read_text())
    assert len(report["rounds"]) == cfg.rounds
    assert report["rounds"][0]["judge"]["score_cache_hits"] == 0
    assert report["rounds"][1]["judge"]["cache_hit_rate"] > 0.5  # only new rubrics are scored
    for key in ("test_accuracy", "oracle_accuracy", "hidden_kept", "distractors_kept"):
        assert key in report
    assert {"small_margin", "large_margin", "high_reward"} == set(report["rounds"][0]["buckets"])
    assert (out / "run1" / "accuracy.png").stat().st_size > 1000
    assert "| round | train acc |" in (out / "run1" / "report.md").read_text()
    rubric_set = load_rubric_set(out / "run1" / "rubric_set.json")
    assert [r.text for r in rubric_set.rubrics] == [
        k["text"] for k in report["rounds"][final["best_round"]]["kept"]
    ]
    assert all(r.weight > 0 for r in rubric_set.rubrics)


def test_synthetic_acceptance_holds_on_a_second_world(tmp_path):
    """Seed 2: another world, proposer and split (docs/rubric_learning.md has seeds 0-7)."""
    cfg = config("experiment=synthetic", "seed=2", "data.seed=2", "generator.seed=2")
    final = learn(cfg, tmp_path)
    assert final["test_accuracy"] >= 0.9 * final["oracle_accuracy"]
    assert final["hidden_kept"] == final["hidden_rules"] == len(cfg.data.hidden_rules)
    assert final["distractors_kept"] <= 0.2 * final["distractors_offered"]


def test_a_second_run_on_the_same_cache_asks_the_judges_nothing(synthetic_run):
    cfg, out, first = synthetic_run
    second = learn(cfg, out / "run2")
    assert second["judge_totals"]["judge_calls"] == 0
    assert second["judge_totals"]["cache_hit_rate"] == 1.0
    assert second["test_accuracy"] == first["test_accuracy"]


def test_a_generator_that_answers_no_list_fails_clearly_and_keeps_its_answers(tmp_path):
    cfg = config(
        "experiment=synthetic",
        "data.num_train=8",
        "data.num_val=4",
        "data.num_test=4",
        f"generator._target_={__name__}.NotAListGenerator",
        "~generator.rules_per_answer",
        "~generator.random_per_answer",
        "~generator.min_lead",
        "~generator.seed",
    )
    with pytest.raises(EmptyWorkingSetError, match="8 generator answers gave no rubric statement"):
        learn(cfg, tmp_path)
    assert (tmp_path / "judge_cache.sqlite").stat().st_size > 0


def test_all_tied_pairs_are_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [
        {"prompt": f"p{i}", "image_a": "a.png", "image_b": "a.png", "label": "tie"}
        for i in range(10)
    ]
    (tmp_path / "ties.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = config("data=jsonl", f"data.path={tmp_path / 'ties.jsonl'}", "judge=pixel")
    with pytest.raises(PairDataError, match="pairs are ties"):
        learn(cfg, tmp_path / "run")


def test_a_preset_for_another_entry_is_refused_by_the_cli(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rubric_learning.learn",
            "experiment=synthetic",
            "entry=train",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=Path(CONF).parent,
    )
    assert result.returncode != 0
    assert "experiment=synthetic is a preset for train, not rubric_learning.learn" in result.stderr


def test_one_round_with_a_tiny_random_qwen3_vl_judging_and_generating(tmp_path):
    cfg = config(
        "data=synthetic",
        "judge=tiny_qwen3_vl",
        "rounds=2",
        "data.num_train=4",
        "data.num_val=2",
        "data.num_test=2",
        "seeds.num=2",
        "mining.per_round=1",
        "synthesis.max_new_tokens=6",
        "refiner.C=1.0",
        "+synthesis.initial_rubrics=[The image is bright.,A red square is visible.]",
    )
    final = learn(cfg, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["rounds"]) == 2
    first = report["rounds"][0]["judge"]
    assert first["generate_calls"] >= 1 and first["items_scored"] > 0
    assert final["judge_totals"]["failures"] == {}  # a real VLM always yields P(yes)
    assert final["rejected_statements"]["unparseable answer"] >= 1  # garbage text, counted
    assert 0 <= final["test_accuracy"] <= 1
