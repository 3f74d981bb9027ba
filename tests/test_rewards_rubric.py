"""RubricReward: weighted sum checked against per-item judge calls in float64, one batched call,
NaN policies, scoring hand-over, file validation and the Hydra config."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rewards import build_reward
from rewards.judges.base import Judge, JudgeItem
from rewards.judges.pixel import UNKNOWN_STATEMENT, PixelJudge
from rewards.rubric import RubricReward, judge_differences
from rewards.rubric_set import Rubric, RubricSet, RubricSetError, load_rubric_set

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "conf" / "rubrics" / "demo_pixel.json"


class CountingJudge(Judge):
    """Wraps a judge and records every batch it is asked."""

    def __init__(self, inner: Judge) -> None:
        self.inner = inner
        self.calls: list[list[JudgeItem]] = []
        self.scoring = "normalized"

    def yes_prob(self, items):
        self.calls.append(list(items))
        return self.inner.yes_prob(items)


def _images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8).clip(c * 40, 255))
        for c in range(n)
    ]


def _rubric_set(texts_weights, scoring="normalized") -> RubricSet:
    rubrics = [Rubric(f"r{i}", t, w) for i, (t, w) in enumerate(texts_weights)]
    return RubricSet(rubrics, scoring=scoring)


def test_score_is_weighted_sum_of_single_item_answers_in_one_batched_call():
    images, prompts = _images(3), ["a red car", "a dog", "a cat"]
    judge = CountingJudge(PixelJudge())
    reward = RubricReward(str(DEMO), judge)
    out = reward(images, prompts)
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 3 * len(reward.rubric_set.rubrics)
    # image-major order, context built from each image's prompt
    first = judge.calls[0][: len(reward.rubric_set.rubrics)]
    assert all(item.image is images[0] and "a red car" in item.context for item in first)
    raw = json.loads(DEMO.read_text())
    single = PixelJudge()
    for b, (image, prompt) in enumerate(zip(images, prompts)):
        total = 0.0
        for rubric in raw["rubrics"]:
            question = raw["judge_template"]["question"].format(rubric=rubric["text"])
            context = raw["judge_template"]["context"].format(prompt=prompt)
            p = single.yes_prob([JudgeItem(image, context, question)]).probs.item()
            assert out.details[f"rubric/{rubric['id']}"][b].item() == pytest.approx(p, abs=1e-7)
            total += rubric["weight"] * p
        assert out.scores[b].item() == pytest.approx(total, abs=1e-5)
    assert out.failures == {} and torch.all(out.details["rubric_answered_fraction"] == 1)


def test_unanswered_rubric_gives_nan_with_counted_reason_by_default():
    rs = _rubric_set([("The image is bright.", 1.0), ("The image shows a cat.", 2.0)])
    out = RubricReward(rs, PixelJudge())(_images(2), ["x", "y"])
    assert torch.isnan(out.scores).all()
    assert out.failures == {f"rubric unanswered: {UNKNOWN_STATEMENT}": 2}
    assert torch.isnan(out.details["rubric/r1"]).all()
    assert not torch.isnan(out.details["rubric/r0"]).any()
    torch.testing.assert_close(out.details["rubric_answered_fraction"], torch.full((2,), 0.5))


def test_renormalize_rescales_answered_rubrics_and_keeps_all_nan_samples_nan():
    texts = [("The image is bright.", 1.0), ("The image is dark.", -0.5), ("A cat.", 2.5)]
    images = _images(2)
    out = RubricReward(_rubric_set(texts), PixelJudge(), on_unanswered="renormalize")(
        images, ["x", "y"]
    )
    judge = PixelJudge()
    for b, image in enumerate(images):
        p = [judge.yes_prob([JudgeItem(image, "", t)]).probs.item() for t, _ in texts[:2]]
        want = (1.0 * p[0] - 0.5 * p[1]) * (4.0 / 1.5)
        assert out.scores[b].item() == pytest.approx(want, abs=1e-5)
    assert out.failures == {}
    none_answered = RubricReward(
        _rubric_set([("A cat.", 1.0)]), PixelJudge(), on_unanswered="renormalize"
    )(images, ["x", "y"])
    assert torch.isnan(none_answered.scores).all()
    assert none_answered.failures == {f"no rubric answered: {UNKNOWN_STATEMENT}": 2}


def test_scoring_mode_is_handed_to_the_judge():
    judge = CountingJudge(PixelJudge())
    RubricReward(_rubric_set([("The image is bright.", 1.0)], scoring="raw"), judge)
    assert judge.scoring == "raw"
    RubricReward(
        _rubric_set([("The image is bright.", 1.0)], scoring="raw"), judge, scoring="normalized"
    )
    assert judge.scoring == "normalized"


def test_bad_inputs_fail_with_clear_messages(tmp_path):
    bad = json.loads(DEMO.read_text())
    bad["rubrics"][2]["weight"] = "heavy"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(RubricSetError, match=r"bad\.json.*rubrics\[2\]\.weight"):
        RubricReward(str(path), PixelJudge())
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        RubricReward("nowhere.json", PixelJudge())
    with pytest.raises(ValueError, match="on_unanswered"):
        RubricReward(str(DEMO), PixelJudge(), on_unanswered="zero")
    with pytest.raises(ValueError, match="needs a judge"):
        RubricReward(str(DEMO), None)


def test_hydra_config_builds_with_the_root_judge_node(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the relative rubric_set path falls back to the project root
    cfg = OmegaConf.create(
        {
            "judge": OmegaConf.load(ROOT / "conf/judge/pixel.yaml"),
            "reward": OmegaConf.load(ROOT / "conf/reward/rubric.yaml"),
        }
    )
    reward = build_reward(cfg.reward)
    assert isinstance(reward, RubricReward) and isinstance(reward.judge, PixelJudge)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = reward(images, ["a", "b"])
    assert not torch.isnan(out.scores).any()
    assert set(out.details) == {f"rubric/{r.id}" for r in reward.rubric_set.rubrics} | {
        "rubric_answered_fraction"
    }
    assert math.isfinite(out.scores.sum().item())


def _learned_with(judge: dict | None) -> RubricSet:
    rubrics = _rubric_set([("The image is mostly red.", 1.0)])
    rubrics.judge = judge
    return rubrics


def test_rubric_set_records_its_judge_and_old_files_still_load(tmp_path):
    record = PixelJudge().identity()
    assert record == {"model": "pixel", "fingerprint": None, "yes_no_from": "full", "top_k": None}
    path = _learned_with(record).save(tmp_path / "set.json")
    assert json.loads(path.read_text())["judge"] == record
    assert load_rubric_set(path).judge == record
    assert load_rubric_set(DEMO).judge is None  # written before the record existed
    bad = json.loads(path.read_text())
    bad["judge"]["yes_no_from"] = "top20"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RubricSetError, match="judge.yes_no_from"):
        load_rubric_set(tmp_path / "bad.json")


SERVED_QWEN = {"model": "Qwen3-VL-8B-Instruct", "fingerprint": None, "yes_no_from": "top_k",
               "top_k": 20}  # fmt: skip


@pytest.mark.parametrize(
    "recorded, differs",
    [
        (None, None),  # no record: any judge serves it
        ({"model": "pixel", "fingerprint": None, "yes_no_from": "full", "top_k": None}, None),
        (SERVED_QWEN, "model 'Qwen3-VL-8B-Instruct'"),
        (
            {"model": "pixel", "fingerprint": None, "yes_no_from": "top_k", "top_k": 20},
            "yes_no_from",
        ),
    ],
)
def test_a_different_judge_warns_once_and_refuses_only_when_asked(recorded, differs, caplog):
    with caplog.at_level("WARNING", logger="rewards.rubric"):
        reward = RubricReward(_learned_with(recorded), PixelJudge())
        reward(_images(2), ["a", "b"])
        reward(_images(2), ["a", "b"])
    warnings = [r.getMessage() for r in caplog.records if "another judge" in r.getMessage()]
    if differs is None:
        assert warnings == []
        RubricReward(_learned_with(recorded), PixelJudge(), on_judge_mismatch="raise")
        return
    assert len(warnings) == 1 and differs in warnings[0]
    with pytest.raises(ValueError, match=f"another judge.*{differs}"):
        RubricReward(_learned_with(recorded), PixelJudge(), on_judge_mismatch="raise")


def test_judge_differences_compare_fingerprints_where_both_sides_have_one():
    local = {"model": "Qwen3-VL-8B-Instruct", "fingerprint": "abc", "yes_no_from": "top_k",
             "top_k": 20}  # fmt: skip
    renamed = dict(local, model="qwen3-vl-8b")  # same config, another folder name
    assert judge_differences(local, renamed) == []
    assert judge_differences(local, dict(local, fingerprint="def"))[0].startswith("model")
    assert judge_differences(local, SERVED_QWEN) == []  # a server shows no config: by name
    assert judge_differences(local, dict(local, top_k=5)) == ["top_k 20 -> 5"]
