"""Checkpoints are whole or ignored, and resuming reproduces an uninterrupted run exactly."""

import logging

import pytest
import torch
from safetensors.torch import load_file
from test_rl_train import TINY, run_training, timing_free

from rl.checkpoint import ADAPTER_FILE, MARKER, TRAINER_STATE, CheckpointManager


def checkpoint_contents(folder):
    state = torch.load(folder / TRAINER_STATE, weights_only=True)
    optimizer = torch.load(folder / "optimizer.bin", weights_only=False)
    return load_file(folder / ADAPTER_FILE), optimizer, state


def test_resume_from_latest_equals_the_straight_run_and_skips_half_written(tmp_path, caplog):
    overrides = [*TINY, "train.learning_rate=1e-2", "log.sample_every_n_epochs=0",
                 "ema.enabled=true", "ema.update_every=1", "rollout.sde_window=null",
                 "rollout.sde_window_size=2", "rollout.sde_window_range=[0,4]",
                 "train.batch_size=2", "train.micro_batch_size=2"]  # fmt: skip
    straight = run_training(tmp_path / "straight", [*overrides, "train.epochs=3"])

    resumed_dir = tmp_path / "resumed"
    run_training(resumed_dir, [*overrides, "train.epochs=2"])
    half = resumed_dir / "checkpoints" / "epoch_000003"  # a crash while writing epoch 3
    half.mkdir()
    (half / TRAINER_STATE).write_bytes(b"truncated")
    (resumed_dir / "checkpoints" / ".staging-epoch_000004").mkdir()
    with caplog.at_level(logging.INFO):
        resumed = run_training(resumed_dir, [*overrides, "train.epochs=3", "resume=latest"])
    assert "ignoring half-written checkpoint" in caplog.text
    assert "after 2 epochs" in caplog.text

    assert timing_free(resumed) == timing_free(straight)
    a_lora, a_opt, a_state = checkpoint_contents(tmp_path / "straight/checkpoints/epoch_000003")
    b_lora, b_opt, b_state = checkpoint_contents(resumed_dir / "checkpoints/epoch_000003")
    assert a_lora.keys() == b_lora.keys()
    for key in a_lora:
        assert torch.equal(a_lora[key], b_lora[key]), key
    for pa, pb in zip(a_opt["state"].values(), b_opt["state"].values()):
        for name in pa:
            assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name
    # the next noise draw, shuffle and SDE window (drawn per batch) would be the same
    for gen in ("noise_gen", "shuffle_gen", "window_gen"):
        assert torch.equal(a_state["per_rank"][0][gen], b_state["per_rank"][0][gen])
    assert a_state["sampler"] == b_state["sampler"]
    for ema_a, ema_b in zip(a_state["ema"]["shadow"], b_state["ema"]["shadow"]):
        assert torch.equal(ema_a, ema_b)


def test_resume_path_must_be_a_complete_checkpoint(tmp_path):
    manager = CheckpointManager(accelerator=None, root=tmp_path, keep_last=None)
    (tmp_path / "epoch_000001").mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        manager.resolve(str(tmp_path / "epoch_000001"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        manager.resolve(str(tmp_path / "epoch_000009"))
    assert manager.resolve("latest") is None
    (tmp_path / "epoch_000001" / MARKER).write_text("{}")
    (tmp_path / "epoch_000001" / TRAINER_STATE).write_bytes(b"")
    assert manager.resolve("latest") == tmp_path / "epoch_000001"
