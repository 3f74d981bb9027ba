"""AsyncReward: same output as a direct call, runs while the caller works, copies its inputs,
hands exceptions back, and holds back a submitter when max_pending batches are in flight."""

import threading
from pathlib import Path

import pytest
import torch

from rewards.async_reward import AsyncReward
from rewards.base import Reward, RewardOutput
from rewards.judges.pixel import PixelJudge
from rewards.rubric import RubricReward

ROOT = Path(__file__).resolve().parents[1]


class GatedReward(Reward):
    """Mean pixel value, computed only once ``gate`` is set; records that it started."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()

    def score(self, images, prompts, metadata):
        self.started.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        means = [torch.tensor(list(im.getdata()), dtype=torch.float32).mean() for im in images]
        return RewardOutput(torch.stack(means))


class FailingReward(Reward):
    name = "failing"

    def score(self, images, prompts, metadata):
        raise ValueError("judge exploded")


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_background_result_equals_a_direct_call():
    reward = RubricReward(ROOT / "conf/rubrics/demo_pixel.json", PixelJudge())
    images, prompts = _images(), ["a", "b", "c"]
    with AsyncReward(reward) as scorer:
        out = scorer.submit(images, prompts).result(timeout=60)
    direct = reward(images, prompts)
    torch.testing.assert_close(out.scores, direct.scores)
    assert out.details.keys() == direct.details.keys()


def test_scoring_overlaps_the_callers_work_and_uses_a_copy_of_the_images():
    reward = GatedReward()
    images = _images()
    want = GatedReward()
    want.gate.set()
    expected = want(images, ["p"] * 3).scores
    with AsyncReward(reward) as scorer:
        future = scorer.submit(images, ["p"] * 3)
        assert reward.started.wait(timeout=30)
        assert not future.done()  # the caller is free while the reward runs
        images.zero_()  # the trainer reuses its buffer; the queued batch must not change
        reward.gate.set()
        torch.testing.assert_close(future.result(timeout=30).scores, expected)


def test_exceptions_come_back_from_result():
    with AsyncReward(FailingReward()) as scorer:
        with pytest.raises(ValueError, match="judge exploded"):
            scorer.submit(_images(), ["p"] * 3).result(timeout=30)


def test_submit_waits_when_max_pending_batches_are_in_flight():
    reward = GatedReward()
    with AsyncReward(reward, max_pending=1) as scorer:
        first = scorer.submit(_images(), ["p"] * 3)
        second: list = []
        submitter = threading.Thread(
            target=lambda: second.append(scorer.submit(_images(1), ["p"] * 3))
        )
        submitter.start()
        assert reward.started.wait(timeout=30)
        submitter.join(timeout=0.2)  # a broken limit would let it finish; a working one never
        assert submitter.is_alive() and second == [] and not first.done()
        reward.gate.set()
        submitter.join(timeout=30)
        assert first.result(timeout=30) is not None and second[0].result(timeout=30) is not None
