"""No evaluation on learned pairs: rubric sets record them, eval.preference leaves them out."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval.leakage import LeakageError, apply_leakage_policy, check_leakage, rubric_set_paths
from rewards.rubric_set import Rubric, RubricSet
from rubric_learning.learn import learn
from rubric_learning.pairs import load_jsonl, pair_hash
from rubric_learning.synthetic import build_world

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
RULES = [{"text": "The image is bright.", "weight": 1.0}]


def write_jsonl(pairs, folder: Path) -> Path:
    """The pairs as a JSONL file with PNG files beside it (the generic format)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in pairs:
        for side, data in (("a", p.image_a), ("b", p.image_b)):
            (folder / f"{p.id}_{side}.png").write_bytes(data)
        row = {"id": p.id, "prompt": p.prompt, "label": p.label}
        lines.append(json.dumps(row | {"image_a": f"{p.id}_a.png", "image_b": f"{p.id}_b.png"}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def rubric_set_with(tmp_path: Path, hashes: list[str] | None) -> Path:
    training = {} if hashes is None else {"pairs": {"source": {"path": "x"}, "train": hashes}}
    rubrics = [Rubric("r0", "The image is bright.", 1.0)]
    return RubricSet(rubrics, training=training).save(tmp_path / "set.json")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    world = build_world(RULES, num_train=12, num_val=0, num_test=0, min_gap=0.0, seed=3)
    return load_jsonl(str(write_jsonl(world.train, tmp_path_factory.mktemp("pairs"))))


def test_a_pair_is_the_same_pair_with_a_and_b_swapped_or_another_label(pairs):
    p = pairs[0]
    assert pair_hash(p) == pair_hash(p.swapped()) == pair_hash(replace(p, label=0.5))
    assert pair_hash(p) == pair_hash(replace(p, prompt=f"  {p.prompt.upper()} "))
    assert pair_hash(p) != pair_hash(replace(p, prompt="another prompt"))
    assert pair_hash(p) != pair_hash(replace(p, image_b=pairs[1].image_b))


def test_exclude_refuse_and_ignore(tmp_path, pairs):
    path = str(rubric_set_with(tmp_path, [pair_hash(p) for p in pairs[:5]]))
    kept, report = apply_leakage_policy(pairs, [path], "exclude")
    assert kept == pairs[5:] and report["excluded"] == 5 and "5 pairs left out" in report["summary"]
    with pytest.raises(LeakageError, match="5 of 12 pairs to evaluate were used to learn"):
        apply_leakage_policy(pairs, [path], "refuse")
    kept, report = apply_leakage_policy(pairs, [path], "ignore")
    assert kept == pairs and report["overlapping"] == 5 and report["excluded"] == 0
    kept, report = apply_leakage_policy(pairs[5:], [path], "refuse")  # disjoint: fine
    assert kept == pairs[5:] and report["overlapping"] == 0
    with pytest.raises(ValueError, match="leakage.policy must be one of"):
        apply_leakage_policy(pairs, [path], "warn")


def test_a_rubric_set_without_a_record_is_reported_unchecked(tmp_path, pairs):
    kept, report = apply_leakage_policy(pairs, [str(rubric_set_with(tmp_path, None))], "refuse")
    assert kept == pairs and "not checked" in report["summary"]


def test_rubric_sets_are_found_anywhere_in_the_reward_node():
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("preference", overrides=["reward=multi", "judge=pixel"])
    assert rubric_set_paths(cfg.reward) == ["conf/rubrics/demo_pixel.json"]
    assert rubric_set_paths(
        OmegaConf.create({"a": [{"rubric_set": "x"}, {"rubric_set": "x"}]})
    ) == ["x"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The documented flow on a small world: learn on a JSONL file's train/val split."""
    out = tmp_path_factory.mktemp("learned")
    world = build_world(RULES, num_train=40, num_val=0, num_test=0, min_gap=0.2, seed=4)
    data = write_jsonl(world.train, out / "data")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(
            "learn",
            overrides=[
                "data=jsonl",
                f"data.path={data}",
                "judge=pixel",
                "generator=synthetic_proposer",
                "rounds=1",
                "seeds.num=8",
                "refiner.C=1.0",
            ],
        )
    final = learn(cfg, out / "run")
    return data, Path(final["rubric_set"]), final


def test_evaluating_on_the_learning_file_leaves_the_learned_pairs_out(tmp_path, learned):
    data, rubric_set, _ = learned
    recorded = json.loads(rubric_set.read_text())["training"]
    n_learned = len(recorded["pairs"]["train"]) + len(recorded["pairs"]["val"])
    assert recorded["pairs"]["source"]["path"] == str(data) and n_learned == 32
    cmd = [
        sys.executable, "-m", "eval.preference", "benchmark=jsonl", f"data.path={data}",
        "reward=rubric", "judge=pixel", f"reward.rubric_set={rubric_set}",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["leakage"]["excluded"] == n_learned == 40 - results["num_pairs"]
    assert f"{n_learned} pairs left out" in (tmp_path / "results.md").read_text()


def test_refuse_names_the_overlap_and_the_fix(learned):
    data, rubric_set, _ = learned
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(
            "preference",
            overrides=[
                "benchmark=jsonl",
                "reward=rubric",
                "judge=pixel",
                f"reward.rubric_set={rubric_set}",
                "leakage.policy=refuse",
            ],
        )
    with pytest.raises(LeakageError, match="32 of 40 pairs to evaluate were used to learn"):
        check_leakage(load_jsonl(str(data)), cfg)
