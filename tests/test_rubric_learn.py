"""rubric_learning.learn end to end: synthetic world learns, reruns are free, bad input fails."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rewards.judges.base import Judge
from rewards.rubric_set import load_rubric_set
from rubric_learning.learn import EmptyWorkingSetError, learn
from rubric_learning.pairs import PairDataError

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SYNTHETIC_PROPOSER_KEYS = (
    "grammar",
    "rules_per_answer",
    "random_per_answer",
    "min_lead",
    "comparison_penalty",
    "tie_jitter",
    "seed",
)


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
    """The paper's literal procedure (``refiner=paper``) on the first world, seed 0."""
    out = tmp_path_factory.mktemp("synthetic")
    cache = f"scoring.cache_path={out / 'cache.sqlite'}"
    cfg = config("experiment=synthetic", "refiner=paper", cache)
    return cfg, out, learn(cfg, out / "run1")


def test_synthetic_world_recovers_the_hidden_rules(synthetic_run):
    """The paper's procedure on the first world (seed 0; docs/rubric_learning.md has seeds 0-3)."""
    cfg, out, final = synthetic_run
    assert cfg.data.num_train == 256 and not cfg.refiner.nonnegative
    assert cfg.refiner.selection == "one_se" and not cfg.working_set.readmit
    assert final["test_accuracy"] >= 0.85 * final["oracle_accuracy"]
    assert final["hidden_kept"] == final["hidden_rules"] == len(cfg.data.hidden_rules)
    assert final["distractors_kept"] <= 0.2 * final["distractors_offered"]
    assert final["distractors_offered"] >= 20  # the proposer really offered many wrong rules

    report = json.loads((out / "run1" / "report.json").read_text())
    rounds = report["rounds"]
    assert 2 <= len(rounds) <= cfg.rounds
    assert rounds[0]["judge"]["score_cache_hits"] == 0
    assert rounds[1]["judge"]["cache_hit_rate"] > 0.25  # only new rubrics are scored
    # The working set is pruned after each fit: the next round scores what the L1 fit kept
    # (non-zero weights) plus the rubrics admitted from the failure analysis.
    for before, after in zip(rounds, rounds[1:]):
        assert after["readmitted"] == 0  # the paper never brings a pruned rubric back
        assert after["working_set_size"] == before["nonzero_weights"] + before["admitted"]
        assert before["pruned"] == before["working_set_size"] - before["nonzero_weights"]
    assert report["stopped"] == "no new rubrics"  # the 45-statement grammar is used up
    for key in ("test_accuracy", "oracle_accuracy", "hidden_kept", "distractors_kept"):
        assert key in report
    assert all(0 < r["test_accuracy"] <= 1 and r["hidden"]["total"] == 4 for r in rounds)
    assert {"small_margin", "large_margin", "high_reward"} == set(rounds[0]["buckets"])
    assert (out / "run1" / "accuracy.png").stat().st_size > 1000
    assert "| round | train acc |" in (out / "run1" / "report.md").read_text()
    rubric_set = load_rubric_set(out / "run1" / "rubric_set.json")
    assert [r.text for r in rubric_set.rubrics] == [
        k["text"] for k in rounds[final["best_round"]]["kept"]
    ]
    assert all(r.weight > 0 for r in rubric_set.rubrics)
    pairs = rubric_set.training["pairs"]
    assert pairs["source"]["_target_"] == "rubric_learning.synthetic.build_world"
    assert len(set(pairs["train"])) == 256 and len(set(pairs["val"])) == 256


@pytest.mark.parametrize("seed", [0, 1])
def test_the_default_learner_keeps_the_good_rubrics_on_the_first_world(tmp_path, seed):
    """Issue 19: the default (non-negative refit, C by the one-SE rule, re-admission, small
    weights dropped)
    reaches 0.95 of the hidden set's accuracy; docs/rubric_learning.md has seeds 0-3."""
    cfg = config(
        "experiment=synthetic", f"seed={seed}", f"data.seed={seed}", f"generator.seed={seed}"
    )
    assert cfg.refiner.nonnegative and cfg.refiner.selection == "one_se"
    assert cfg.refiner.min_weight_ratio == 0.25
    assert cfg.working_set.readmit
    final = learn(cfg, tmp_path)
    assert final["test_accuracy"] >= 0.95 * final["oracle_accuracy"]
    assert final["hidden_kept"] >= final["hidden_rules"] - 1


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
        *(f"~generator.{key}" for key in SYNTHETIC_PROPOSER_KEYS),
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
        "synthesis.retry_max_new_tokens=12",
        "refiner.C=1.0",
        "+synthesis.initial_rubrics=[The image is bright.,A red square is visible.]",
    )
    final = learn(cfg, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    # Random weights give the rubrics no signal: the fit zeroes them, the working set is pruned
    # empty and the garbage answers add nothing, so the loop ends after round 0 and says why.
    assert len(report["rounds"]) == 1 and report["stopped"] == "no new rubrics"
    assert report["rounds"][0]["pruned"] == 2
    first = report["rounds"][0]["judge"]
    assert first["generate_calls"] >= 1 and first["items_scored"] > 0
    assert final["judge_totals"]["failures"] == {}  # a real VLM always yields P(yes)
    assert final["rejected_statements"]["unparseable answer"] >= 1  # garbage text, counted
    assert final["cut_answers"]["re-asked"] >= 1  # asked again with 12 tokens first
    assert 0 <= final["test_accuracy"] <= 1


def test_the_generator_group_picks_the_rubric_writer(tmp_path):
    from rubric_learning.learn import RubricLearner

    small = ["data=synthetic", "data.num_train=4", "data.num_val=2", "data.num_test=2"]
    learner = RubricLearner(config(*small, "judge=pixel"), tmp_path / "a")
    assert learner.generator is learner.judge  # generator=scorer, the default
    learner = RubricLearner(
        config(*small, "judge=pixel", "generator=synthetic_proposer"), tmp_path / "b"
    )
    assert type(learner.generator).__name__ == "SyntheticProposer"
    served = config(*small, "judge=qwen3_vl", "generator=openai", "generator.base_url=http://h/v1")
    assert served.generator._target_ == "rewards.judges.openai_server.OpenAIJudge"
    assert served.generator.base_url == "http://h/v1" and served.generator.timeout_s == 300.0
    local = config(*small, "judge=qwen3_vl", "generator=qwen3_vl", "generator.model_path=/m/32b")
    assert local.generator.model_path == "/m/32b" and OmegaConf.is_missing(
        local.judge, "model_path"
    )


@pytest.mark.parametrize("preset", ["learn_pickapic", "learn_hpdv3"])
def test_real_data_presets_select_seeds_by_a_proxy_reward_margin(preset):
    cfg = config(f"experiment={preset}")
    assert cfg.entry == "learn" and cfg.seeds.num == 256 and cfg.refiner.top_n == 20
    assert cfg.seeds.proxy_reward._target_ == "rewards.scalar.PickScoreReward"
    assert cfg.generator._target_ == "rewards.judges.openai_server.OpenAIJudge"
    assert cfg.refiner.nonnegative and cfg.working_set.prune == "nonzero"  # the default learner
