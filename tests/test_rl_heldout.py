"""Held-out rewards during training (eval_rewards): logged, plotted, and the divergence warning,
shown with a training reward made to rise and a held-out reward made to fall on purpose."""

import json
import logging

import torch
from omegaconf import OmegaConf
from test_rl_train import TINY, compose_train

from rewards.base import Reward, RewardOutput
from rl.config import parse_config
from rl.heldout import DivergenceMonitor
from rl.train import FlowGRPOTrainer


class DriftingReward(Reward):
    """Scores ``start + step x (calls so far)`` for every image, plus a per-image spread so that
    groups have advantages: a reward that rises (step > 0) or falls (step < 0) on purpose."""

    name = "drifting"

    def __init__(self, start: float, step: float) -> None:
        self.start, self.step, self.calls = start, step, 0

    def score(self, images, prompts, metadata) -> RewardOutput:
        value = self.start + self.step * self.calls
        self.calls += 1
        spread = torch.linspace(0, 0.01, len(images))
        return RewardOutput(torch.full((len(images),), value) + spread, {"part": spread})


def test_divergence_fires_after_patience_rising_train_and_falling_heldout():
    monitor = DivergenceMonitor(patience=2)
    seen = [
        monitor.update({"train_reward": t, "gold": g, "other": o})
        for t, g, o in [(0.1, 0.9, 0.5), (0.2, 0.8, 0.6), (0.3, 0.7, 0.4), (0.3, 0.6, 0.3)]
    ]
    # 2 intervals of rising train and falling gold by the 3rd evaluation; none when train is flat
    assert seen == [[], [], ["gold"], []]
    assert DivergenceMonitor(1).update({"train_reward": 0.0, "gold": 1.0}) == []


def test_eval_rewards_are_logged_plotted_and_a_falling_one_warns(tmp_path, caplog):
    target = f"{__name__}.DriftingReward"
    cfg = compose_train(
        [*TINY, "train.epochs=3", "log.sample_every_n_epochs=0", "checkpoint.every_n_epochs=3",
         f"+eval_rewards.rewards.gold._target_={target}", "+eval_rewards.rewards.gold.start=1.0",
         "+eval_rewards.rewards.gold.step=-0.1", "+reward@eval_rewards.rewards.pixel=pixel_target",
         "eval_rewards.every_n_epochs=1", "eval_rewards.patience=2", "eval_rewards.num_prompts=3"],
    )  # fmt: skip
    cfg.reward = OmegaConf.create({"_target_": target, "start": 0.0, "step": 0.1})  # rises
    trainer = FlowGRPOTrainer(parse_config(cfg), tmp_path, raw_config={})
    with caplog.at_level(logging.WARNING, logger="rl.heldout"):
        trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # beside the training reward, every epoch (every_n_epochs=1)
        assert {"reward_mean", "eval/train_reward", "eval/gold", "eval/pixel"} <= row.keys()
        assert {"eval/train/part", "eval/gold/part", "eval/pixel/colour"} <= row.keys()
    assert [r["eval/gold"] > s["eval/gold"] for s, r in zip(rows, rows[1:])] == [False, False]
    assert "eval/gold/diverging" not in rows[1] and rows[2]["eval/gold/diverging"] == 1.0
    assert any("gold fell at each of the last 2" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "heldout_curve.png").stat().st_size > 1000
    assert (tmp_path / "reward_curve.png").is_file()


def test_no_eval_rewards_builds_and_samples_nothing(tmp_path):
    cfg = parse_config(compose_train([*TINY, "train.epochs=1"]))
    assert cfg.eval_rewards.rewards == {}
    trainer = FlowGRPOTrainer(cfg, tmp_path, raw_config={})
    trainer.setup()
    assert trainer.heldout is None and trainer.heldout_rewards(1, checkpointed=True) == {}
