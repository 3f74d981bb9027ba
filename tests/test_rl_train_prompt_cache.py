"""The trainer's prompt cache: mode "all" encodes each unique prompt of the data set once, then
moves the text encoders off the training device, and its rollouts equal mode "epoch"'s (with the
encoders released between epochs) bit for bit; the data set's embeddings written to
``rollout.prompt_cache_dir`` are read back by the next run, whose encoders never run."""

import json
import logging
from collections import Counter

import torch
from safetensors.torch import load_file
from test_rl_train import TINY, compose_train, timing_free

import rl.train
from rl.config import parse_config
from rl.families import SD3
from rl.train import FlowGRPOTrainer

TEXT_ENCODERS = SD3.text_encoders

DEMO_PROMPTS = 8  # unique prompts of experiment=demo
LOAD_PIPELINE, SAMPLE_EPOCH = rl.train.load_pipeline, FlowGRPOTrainer.sample_epoch


def run_recording(run_dir, monkeypatch, overrides):
    """Two epochs; returns the trainer, the rows each text encoder saw, and each epoch's rollout."""
    encoder_rows: Counter = Counter()

    def load_counting(model_cfg):
        pipe = LOAD_PIPELINE(model_cfg)
        for name in TEXT_ENCODERS:  # every encoder forward gets its input ids first
            getattr(pipe, name).register_forward_pre_hook(
                lambda module, args, name=name: encoder_rows.update({name: args[0].shape[0]})
            )
        return pipe

    rollouts = []

    def sample_recording(self):
        out = SAMPLE_EPOCH(self)
        rollouts.append(out[0])
        return out

    monkeypatch.setattr(rl.train, "load_pipeline", load_counting)
    monkeypatch.setattr(FlowGRPOTrainer, "sample_epoch", sample_recording)
    cfg = compose_train([*TINY, "train.epochs=2", "log.sample_every_n_epochs=0", *overrides])
    trainer = FlowGRPOTrainer(parse_config(cfg), run_dir, raw_config={})
    trainer.run()
    return trainer, encoder_rows, rollouts


def test_all_mode_encodes_once_offloads_encoders_and_matches_epoch_mode(
    tmp_path, monkeypatch, caplog
):
    disk = f"rollout.prompt_cache_dir={tmp_path / 'embeddings'}"
    with caplog.at_level(logging.INFO):
        everything, all_rows, all_rollouts = run_recording(
            tmp_path / "all", monkeypatch, ["rollout.prompt_cache=all", disk]
        )
    assert "prompt cache: all | 9 prompts (with the negative) encoded once and written" in (
        caplog.text
    )
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 1
    # every unique prompt and the CFG negative once, over both epochs, through each encoder
    assert all_rows == dict.fromkeys(TEXT_ENCODERS, DEMO_PROMPTS + 1)
    assert len(everything.cache) == DEMO_PROMPTS + 1
    assert everything.cache.offloaded and everything.cache.encoder_devices() == {
        torch.device("cpu")
    }

    caplog.clear()
    with caplog.at_level(logging.INFO):  # "auto" above its limit resolves to "epoch"
        per_epoch, epoch_rows, epoch_rollouts = run_recording(
            tmp_path / "epoch",
            monkeypatch,
            ["rollout.prompt_cache=auto", f"rollout.prompt_cache_max_prompts={DEMO_PROMPTS - 1}",
             "rollout.release_text_encoders=true"],
        )  # fmt: skip
    assert "prompt cache: epoch |" in caplog.text
    # released: on the accelerator only while each epoch's prompts are encoded
    assert per_epoch.cache_mode == "epoch" and per_epoch.cache.offloaded
    # each epoch re-encodes its prompts and the negative
    expected = sum(len(set(r.prompts)) + 1 for r in epoch_rollouts)
    assert epoch_rows == dict.fromkeys(TEXT_ENCODERS, expected)

    for a, b in zip(all_rollouts, epoch_rollouts, strict=True):
        assert a.prompts == b.prompts
        for name in ("embeds", "pooled", "latents", "log_probs", "timesteps", "images"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    metrics = [
        timing_free([json.loads(line) for line in path.read_text().splitlines()])
        for path in (tmp_path / "all/metrics.jsonl", tmp_path / "epoch/metrics.jsonl")
    ]
    assert metrics[0] == metrics[1]
    lora_all = load_file(tmp_path / "all/lora/pytorch_lora_weights.safetensors")
    lora_epoch = load_file(tmp_path / "epoch/lora/pytorch_lora_weights.safetensors")
    assert all(torch.equal(lora_all[k], lora_epoch[k]) for k in lora_all)


def test_embeddings_written_by_one_run_are_read_by_the_next(tmp_path, monkeypatch, caplog):
    disk = f"rollout.prompt_cache_dir={tmp_path / 'embeddings'}"
    overrides = ["rollout.prompt_cache=all", disk, "train.epochs=1"]
    _, first_rows, first = run_recording(tmp_path / "first", monkeypatch, overrides)
    assert first_rows == dict.fromkeys(TEXT_ENCODERS, DEMO_PROMPTS + 1)
    with caplog.at_level(logging.INFO):
        _, second_rows, second = run_recording(tmp_path / "second", monkeypatch, overrides)
    assert "read from rollout.prompt_cache_dir (no encoder ran)" in caplog.text
    assert not second_rows  # no text encoder ran
    for name in ("embeds", "pooled", "latents", "log_probs", "images"):
        assert torch.equal(getattr(first[0], name), getattr(second[0], name)), name
    # another sequence length is another fingerprint: encoded again, a second file
    run_recording(tmp_path / "third", monkeypatch, [*overrides, "rollout.max_sequence_length=16"])
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 2
