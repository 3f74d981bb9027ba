"""Group advantages against a float64 NumPy recomputation; NaN rewards excluded and counted."""

import logging

import numpy as np
import torch

from rl.advantages import PromptStatTracker, group_advantages


def reference(rewards, groups, global_std, eps=1e-4):
    rewards, groups = np.asarray(rewards, np.float64), np.asarray(groups)
    out = np.zeros_like(rewards)
    scale_all = np.std(rewards)
    for g in np.unique(groups):
        m = groups == g
        scale = scale_all if global_std else np.std(rewards[m])
        out[m] = (rewards[m] - rewards[m].mean()) / (scale + eps)
    return out


def test_matches_numpy_per_group_and_global_std():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=gen)
    groups = torch.arange(4).repeat_interleave(6)[torch.randperm(24, generator=gen)]
    for global_std in (False, True):
        adv, stats = group_advantages(rewards, groups, global_std)
        expected = reference(rewards.numpy(), groups.numpy(), global_std)
        np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert stats["num_groups"] == 4 and stats["group_size_min"] == 6


def test_nan_rewards_are_left_out_and_counted(caplog):
    rewards = torch.tensor([0.1, 0.5, float("nan"), 0.9, 0.2, 0.4, 0.4, float("nan")])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    with caplog.at_level(logging.WARNING, logger="rl.advantages"):
        adv, stats = group_advantages(rewards, groups, global_std=False)
    assert stats["reward_nan"] == 2
    assert "2 of 8 rewards are NaN" in caplog.text
    valid = ~torch.isnan(rewards)
    expected = reference(rewards[valid].numpy(), groups[valid].numpy(), global_std=False)
    np.testing.assert_allclose(adv[valid].numpy(), expected, rtol=1e-5)
    assert adv[~valid].tolist() == [0.0, 0.0]
    assert not torch.isnan(adv).any()


def test_equal_rewards_give_zero_advantages_to_filter():
    adv, stats = group_advantages(
        torch.tensor([0.3, 0.3, 0.3, 0.1, 0.9, 0.5]), torch.tensor([0, 0, 0, 1, 1, 1]), False
    )
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert stats["zero_advantage"] == 3


def test_tracker_counts_prompts_and_round_trips():
    tracker = PromptStatTracker(global_std=True)
    _, stats = tracker.advantages(torch.rand(6), torch.tensor([3, 3, 3, 5, 5, 5]))
    assert stats["prompts_seen"] == 2
    other = PromptStatTracker(global_std=True)
    other.load_state_dict(tracker.state_dict())
    _, stats = other.advantages(torch.rand(3), torch.tensor([7, 7, 7]))
    assert stats["prompts_seen"] == 3
