"""MultiReward: weighted total against the components called alone, prefixed details and
failures, NaN propagation, and the Hydra config composed from the real conf tree."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from rewards import build_reward
from rewards.base import Reward, RewardOutput
from rewards.judges.pixel import PixelJudge
from rewards.multi import MultiReward
from rewards.pixel_target import PixelTargetReward
from rewards.rubric import RubricReward

ROOT = Path(__file__).resolve().parents[1]


class HalfNanReward(Reward):
    """Scores 1.0 for even samples and NaN ("flaky") for odd ones."""

    name = "half"

    def score(self, images, prompts, metadata):
        scores = torch.tensor([1.0 if i % 2 == 0 else float("nan") for i in range(len(images))])
        return RewardOutput(scores, {"seen": torch.ones(len(images))}, {"flaky": len(images) // 2})


def _images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_total_is_weighted_sum_of_components_with_prefixed_details():
    rubric = RubricReward(ROOT / "conf/rubrics/demo_pixel.json", PixelJudge())
    target = PixelTargetReward()
    mix = MultiReward(
        {"rub": {"reward": rubric, "weight": 1.5}, "tgt": {"reward": target, "weight": -0.25}}
    )
    images, prompts = _images(), ["p"] * 4
    out = mix(images, prompts)
    alone_r, alone_t = rubric(images, prompts), target(images, prompts)
    want = 1.5 * alone_r.scores.double() - 0.25 * alone_t.scores.double()
    torch.testing.assert_close(out.scores, want.float())
    torch.testing.assert_close(out.details["rub"], alone_r.scores)
    torch.testing.assert_close(out.details["tgt"], alone_t.scores)
    for key, value in alone_r.details.items():
        torch.testing.assert_close(out.details[f"rub/{key}"], value, equal_nan=True)
    assert set(out.details) == (
        {"rub", "tgt"}
        | {f"rub/{k}" for k in alone_r.details}
        | {f"tgt/{k}" for k in alone_t.details}
    )


def test_nan_in_one_component_makes_the_total_nan_and_is_counted_by_name():
    mix = MultiReward(
        {
            "ok": {"reward": PixelTargetReward(), "weight": 1.0},
            "half": {"reward": HalfNanReward(), "weight": 0.0},
        }
    )
    out = mix(_images(), ["p"] * 4)
    assert torch.isnan(out.scores).tolist() == [False, True, False, True]
    assert out.failures == {"half: flaky": 2}
    assert out.num_failed == 2


def test_bad_component_specs_are_named():
    with pytest.raises(ValueError, match="'x' needs a 'reward'"):
        MultiReward({"x": {"weight": 1.0}})
    with pytest.raises(ValueError, match="'x' weight must be a number"):
        MultiReward({"x": {"reward": PixelTargetReward(), "weight": "lots"}})
    with pytest.raises(ValueError, match=r"'x' has unknown fields \['wieght'\]"):
        MultiReward({"x": {"reward": PixelTargetReward(), "wieght": 1.0}})


def test_hydra_config_composes_and_builds_each_component():
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose(
            overrides=["+judge=pixel", "+reward=multi", "reward.components.rubric.weight=2.0"]
        )
    mix = build_reward(cfg.reward)
    assert isinstance(mix, MultiReward)
    assert isinstance(mix.rewards["rubric"], RubricReward)
    assert isinstance(mix.rewards["rubric"].judge, PixelJudge)
    assert mix.weights == {"rubric": 2.0, "pixel_target": 0.5}
    out = mix(_images(), ["p"] * 4)
    assert not torch.isnan(out.scores).any() and "rubric/rubric/bright" in out.details
