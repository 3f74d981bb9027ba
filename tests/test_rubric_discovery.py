"""The discovery world: rounds of failure analysis find what seed synthesis cannot.

Acceptance (issue 11), checked here on world seed 0 with the default learner (the small round 0
of ``python -m rubric_learning.sweep --experiment synthetic_discovery --round0-small``;
``--round0`` adds round 0 at the loop's budget).
"""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rubric_learning.dedup import statement_key
from rubric_learning.learn import learn
from rubric_learning.synthesis import synthesis_requests
from rubric_learning.synthetic import build_world

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("learn", overrides=["experiment=synthetic_discovery", *overrides])


@pytest.fixture(scope="module")
def discovery(tmp_path_factory):
    """The full loop and the same world with rounds=1 (the preset's small round 0), sharing one
    judge cache."""
    out = tmp_path_factory.mktemp("discovery")
    cache = f"scoring.cache_path={out / 'cache.sqlite'}"
    full = learn(config(cache), out / "full")
    first = learn(config(cache, "rounds=1"), out / "round0")
    return out, full, first


def test_the_full_loop_reaches_the_hidden_set_and_round_0_alone_does_not(discovery):
    out, full, first = discovery
    assert full["test_accuracy"] >= 0.95 * full["oracle_accuracy"]
    assert first["test_accuracy"] <= 0.85 * first["oracle_accuracy"]
    assert first["oracle_accuracy"] == full["oracle_accuracy"]  # the same world and test pairs
    assert full["distractor_share"] <= 0.10
    assert full["hidden_kept"] == full["hidden_rules"] == 10
    assert first["hidden_offered"] < full["hidden_rules"]  # synthesis alone misses rules
    assert full["judge_budget_used"] <= 200 < 1104  # it could not score the whole grammar


def test_report_shows_per_round_test_accuracy_hidden_rules_found_and_budget(discovery):
    out, full, _ = discovery
    report = json.loads((out / "full" / "report.json").read_text())
    rounds = report["rounds"]
    found = [r["hidden"]["found"] for r in rounds]
    used = [r["judge_budget"]["used"] for r in rounds]
    assert found == sorted(found) and found[0] < found[-1] == 10
    assert used == sorted(used) and used[-1] <= 200 and rounds[0]["judge_budget"]["max"] == 200
    assert all(0 < r["test_accuracy"] <= 1 for r in rounds)
    # Choices are made on validation: the best round is the first with the best validation
    # accuracy, whatever the (reported) test accuracy says.
    val = [r["val_accuracy"] for r in rounds]
    assert full["best_round"] == int(np.argmax(val))
    assert (out / "full" / "accuracy.png").stat().st_size > 1000
    assert "hidden found" in (out / "full" / "report.md").read_text()


def test_hidden_rules_are_rarely_the_winners_strongest_lead():
    cfg = config()
    splits = instantiate(cfg.data, _convert_="all")
    proposer = instantiate(cfg.generator)
    hidden = {statement_key(r["text"]) for r in cfg.data.hidden_rules}
    pairs = splits.train[:120]
    first = [proposer.propose(*request)[0] for request in synthesis_requests(pairs)]
    share = np.mean([statement_key(s) in hidden for s in first])
    assert 0 < share < 0.5  # named first on some pairs, but not on most


def test_the_proposer_answers_from_the_request_alone():
    """Two worlds with the same images but different hidden rules: the same answers."""
    node = OmegaConf.to_container(config().data)
    node.update(num_train=6, num_val=0, num_test=0, min_gap=0.0)
    node.pop("_target_")
    other = [{"text": "The image is dark.", "weight": 1.0}]
    a, b = build_world(**node).train, build_world(**{**node, "hidden_rules": other}).train
    proposer = instantiate(config().generator)
    assert not {"hidden_rules", "data"} & set(vars(proposer))
    for pa, pb in zip(a, b):
        assert pa.image_a == pb.image_a and pa.image_b == pb.image_b
        requests = synthesis_requests([replace(pa, label=1.0), replace(pb, label=1.0)])
        assert proposer.propose(*requests[0]) == proposer.propose(*requests[1])


def test_a_pair_drawn_four_times_is_excluded_from_then_on(tmp_path):
    """Label noise keeps some pairs misranked whatever the rubrics; every misranked pair is drawn
    each round (per_round >= training pairs) until the cap holds it back."""
    cfg = config(
        "data.num_train=64",
        "data.num_val=16",
        "data.num_test=8",
        "data.noise=0.25",
        "rounds=7",
        "seeds.num=8",
        "refiner.C=0.3",
        "mining.per_round=64",
        "budget.max_new_per_round=8",
    )
    learn(cfg, tmp_path)
    rounds = json.loads((tmp_path / "report.json").read_text())["rounds"]
    drawn = Counter(pid for r in rounds for pid in r.get("hard_pairs", []))
    capped = [sum(b["capped"] for b in r["buckets"].values()) for r in rounds if "buckets" in r]
    assert max(drawn.values()) == cfg.mining.max_uses == 4  # never a fifth time
    assert capped[0] == 0 and max(capped) > 0  # misranked pairs held back once used up
