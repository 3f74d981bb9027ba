"""The trainer end to end on the tiny SD3: files, on-policy sanity, learning, LoRA export,
multi-process launch, bad inputs, and that every experiment preset composes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from rewards.base import Reward, RewardOutput
from rl.config import ConfigError, parse_config
from rl.models import ModelFolderError
from rl.sampler import SamplerConfigError
from rl.train import FlowGRPOTrainer

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# 32 px, 4 steps, one group of 4 images per epoch in one batch, one optimizer step per epoch.
TINY = [
    "experiment=demo",
    "rollout.num_steps=4",
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "train.group_size=4",
    "train.groups_per_epoch=1",
    "train.optimizer_steps_per_epoch=1",
    "checkpoint.every_n_epochs=1",
    "checkpoint.keep_last=null",
    "log.sample_every_n_epochs=1",
    "log.num_sample_images=4",
]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("train", overrides=overrides)


def run_training(run_dir: Path, overrides: list[str]) -> list[dict]:
    """Run the recipe in-process (as ``python -m rl.train`` does) and return metrics rows."""
    cfg = compose_train(overrides)
    FlowGRPOTrainer(parse_config(cfg), run_dir, raw_config={}).run()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timing_free(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short_run")
    rows = run_training(run_dir, [*TINY, "train.epochs=2", "train.learning_rate=1e-2"])
    return run_dir, rows


def test_run_folder_holds_metrics_checkpoints_lora_samples_and_curve(short_run):
    run_dir, rows = short_run
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("reward_mean", "reward_std", "reward/rubric/red", "kl", "clipfrac", "approx_kl",
                "policy_loss", "grad_norm", "sample_s", "train_s", "images_per_s"):  # fmt: skip
        assert all(key in r for r in rows), key
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000001",
        "epoch_000002",
    ]
    assert (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "Flow-GRPO" in (run_dir / "lora" / "README.md").read_text()
    assert len(list((run_dir / "samples").glob("*.png"))) == 2
    assert (run_dir / "reward_curve.png").stat().st_size > 1000


def test_on_policy_first_ratio_is_exactly_one(short_run):
    """One batch, one micro-batch, one optimizer step per epoch: nothing changes the weights
    between the rollout and its training forwards, so every ratio is exactly 1."""
    _, rows = short_run
    for row in rows:
        assert row["onpolicy_log_ratio_abs_max"] == 0.0
        assert row["log_ratio_abs_max"] == 0.0
        assert row["clipfrac"] == 0.0


def test_exported_lora_loads_in_diffusers_and_changes_the_images(short_run):
    from safetensors.torch import load_file

    from rl.checkpoint import ADAPTER_FILE
    from rl.lora import LoraSettings, load_lora_state_dict, make_trainable
    from rl.tiny import build_tiny_sd3

    run_dir, _ = short_run
    cfg = compose_train(TINY)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt=["a red apple", "a cat"], height=32, width=32, num_inference_steps=4,
                  latents=latents, output_type="pt")  # fmt: skip
    pipe = build_tiny_sd3(seed=cfg.model.seed)
    before = pipe(**kwargs).images
    pipe.load_lora_weights(run_dir / "lora")
    after = pipe(**kwargs).images
    assert (after - before).abs().max() > 1e-3

    # the loaded adapter (with its alpha) equals the trained one, checkpointed by peft
    trained = build_tiny_sd3(seed=cfg.model.seed).transformer
    make_trainable(trained, LoraSettings(**cfg.lora))
    last = run_dir / "checkpoints" / "epoch_000002"
    load_lora_state_dict(trained, load_file(last / ADAPTER_FILE))
    inputs = dict(hidden_states=latents, timestep=torch.tensor([500.0, 200.0]),
                  encoder_hidden_states=torch.randn(2, 109, 96),
                  pooled_projections=torch.randn(2, 80), return_dict=False)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**inputs)[0], trained(**inputs)[0])


def test_demo_learns_its_rubric_reward(tmp_path):
    """The demo (rubric reward, pixel judge) shortened to 6 epochs of 32 images: the reward of the
    last two epochs beats the first two by 0.015, about three standard errors of an epoch's mean
    (per-image std ~0.03 over 32 images; seeds 0-2 rise by 0.017-0.030)."""
    rows = run_training(
        tmp_path,
        ["experiment=demo", "train.epochs=6", "train.groups_per_epoch=4",
         "checkpoint.every_n_epochs=6", "log.sample_every_n_epochs=0"],
    )  # fmt: skip
    rewards = [r["reward_mean"] for r in rows]
    assert all(r["reward_nan"] == 0 for r in rows)
    assert 0.02 < rows[0]["reward_std"] < 0.05
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last - first > 0.015, rewards


class NanEveryThirdReward(Reward):
    """Scores the image's mean red value, except every third sample, which is unscorable."""

    name = "nan_every_third"

    def score(self, images, prompts, metadata):
        scores = torch.tensor([float(np.asarray(img)[..., 0].mean()) / 255 for img in images])
        scores[::3] = float("nan")
        return RewardOutput(scores, failures={"test failure": len(scores[::3])})


def test_nan_rewards_are_excluded_counted_and_training_goes_on(tmp_path):
    rows = run_training(
        tmp_path,
        [*TINY, "train.epochs=1", "log.sample_every_n_epochs=0", "train.micro_batch_size=1",
         "~reward", f"+reward._target_={__name__}.NanEveryThirdReward"],
    )  # fmt: skip
    (row,) = rows
    assert row["reward_nan"] == 2  # samples 0 and 3 of 4
    assert row["reward_failures/test failure"] == 2
    # 2 samples kept for 4 micro-batches: two weight-0 stand-ins, and still a real update
    assert row["kept_samples"] == 2 and row["reward_mean"] == row["reward_mean"]  # not NaN
    assert row["grad_norm"] > 0


def test_bf16_gradient_checkpointing_and_background_scoring_stay_on_policy(tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision is process-wide
    try:
        (row,) = run_training(
            tmp_path,
            [*TINY, "train.epochs=1", "log.sample_every_n_epochs=0",
             "train.mixed_precision=bf16", "train.gradient_checkpointing=true",
             "train.reward_in_background=true"],
        )  # fmt: skip
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert row["onpolicy_log_ratio_abs_max"] == 0.0 and row["grad_norm"] > 0


def test_full_finetune_trains_every_weight_and_exports_the_transformer(tmp_path):
    (row,) = run_training(
        tmp_path,
        [*TINY, "train.epochs=1", "log.sample_every_n_epochs=0", "lora.full_finetune=true"],
    )
    assert row["grad_norm"] > 0 and row["onpolicy_log_ratio_abs_max"] == 0.0
    assert (tmp_path / "transformer" / "config.json").is_file()
    assert (tmp_path / "checkpoints" / "epoch_000001" / "model.safetensors").is_file()


def test_impossible_batch_group_combination_fails_with_the_numbers(tmp_path):
    cfg = compose_train([*TINY, "train.group_size=3"])
    with pytest.raises(SamplerConfigError, match="group_size 3 = 3 images per epoch"):
        FlowGRPOTrainer(parse_config(cfg), tmp_path, {}).setup()


def test_unknown_reward_names_the_available_ones():
    with pytest.raises(MissingConfigException, match="reward/nope") as err:
        compose_train(["reward=nope"])
    assert "pixel_target" in str(err.value)


def test_config_mistakes_are_listed_in_one_message():
    cfg = compose_train(["experiment=demo", "train.beta=-1", "+train.lerning_rate=1"])
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "lerning_rate" in str(err.value)
    cfg = compose_train(["experiment=demo", "train.beta=-1", "train.micro_batch_size=99"])
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "train.beta=-1.0 must be >= 0" in str(err.value)
    assert "micro_batch_size=99" in str(err.value)


def test_missing_model_folder_fails_clearly_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rl.train", "experiment=demo", "model=sd35_medium",
         "model.path=/nonexistent/sd35m", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "ModelFolderError" in result.stderr and "/nonexistent/sd35m" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_experiment_preset_composes():
    """Each preset composes with its entry's primary config; train presets also pass the schema,
    and a preset of another entry is refused by rl.train with one clear message."""
    from rl.config import check_entry

    presets = sorted((ROOT / "conf" / "experiment").glob("*.yaml"))
    names = {p.stem for p in presets}
    assert {"demo", "sd35m_pickscore", "sd35m_fast_nocfg", "sd35m_single_gpu_80gb"} <= names
    for path in presets:
        entry = OmegaConf.load(path).entry
        primary = {"train": "train", "learn": "learn"}.get(entry, entry)
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose(primary, overrides=[f"experiment={path.stem}"])
        if entry != "train":
            with pytest.raises(ConfigError, match=f"experiment={path.stem} is a preset for"):
                check_entry(compose_train([f"experiment={path.stem}"]), path.stem)
            continue
        for key in OmegaConf.missing_keys(cfg):  # paths the user must give
            OmegaConf.update(cfg, key, "/given/by/user")
        if cfg.data.prompts is None and cfg.data.prompt_file is None:
            cfg.data.prompt_file = "/given/by/user/prompts.txt"
        parse_config(cfg)  # schema and value checks pass (nothing is loaded)


def test_model_folder_error_is_raised_before_loading(tmp_path):
    cfg = compose_train(["experiment=demo", "model=sd35_medium", f"model.path={tmp_path}"])
    with pytest.raises(ModelFolderError, match="model_index.json"):
        FlowGRPOTrainer(parse_config(cfg), tmp_path / "run", {}).setup()


def test_two_processes_share_one_run_folder_and_gather_whole_groups(tmp_path):
    """accelerate launch with 2 CPU processes and Hydra's default (timestamped) run folder.

    (``accelerate launch --cpu --num_processes 2`` starts ONE process unless mpirun is set up;
    ``--multi_gpu`` with ``ACCELERATE_USE_CPU`` starts two gloo processes through torchrun.)"""
    overrides = [
        *TINY,
        "train.epochs=2",
        "train.batch_size=2",
        "train.micro_batch_size=2",
        "train.groups_per_epoch=2",  # 2 groups x 4 images = 2 batches x 2 processes x 2 images
        "log.sample_every_n_epochs=0",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "rl.train", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs" / "train").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        # each process holds 4 of the 8 images, yet both groups are seen whole (4 members each)
        assert row["num_groups"] == 2 and row["group_size_min"] == row["group_size_max"] == 4
        assert row["kept_samples"] == 8 and row["onpolicy_log_ratio_abs_max"] == 0.0
    assert "| 2 processes |" in (runs[0] / "train.log").read_text()
    state = torch.load(runs[0] / "checkpoints/epoch_000002/trainer_state.pt", weights_only=False)
    noise = [rank["noise_gen"] for rank in state["per_rank"]]  # both ranks' generators, distinct
    assert len(noise) == 2 and not torch.equal(*noise)
    assert len(list(runs[0].glob("*.log"))) == 1
