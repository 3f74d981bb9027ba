"""The trainer end to end on the tiny SD3: files, on-policy sanity, learning, LoRA export,
multi-process launch, bad inputs, and that every experiment preset composes."""

import json
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
    from rl.lora import LORA_WEIGHTS_NAME, LoraSettings, load_lora_state_dict, make_trainable
    from rl.tiny import build_tiny_sd3

    run_dir, _ = short_run
    cfg = compose_train(TINY)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt=["a red apple", "a cat"], height=32, width=32, num_inference_steps=4,
                  latents=latents, output_type="pt")  # fmt: skip
    pipe = build_tiny_sd3(seed=cfg.model.seed)
    before = pipe(**kwargs).images
    pipe.load_lora_weights(run_dir / "lora", weight_name=LORA_WEIGHTS_NAME)  # as its card says
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
        ["experiment=demo", "train.epochs=6", "train.groups_per_epoch=4", "train.batch_size=8",
         "train.micro_batch_size=8", "checkpoint.every_n_epochs=6", "log.sample_every_n_epochs=0"],
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


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's mixed precision is process-wide: a fresh state before and after the test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_gradient_checkpointing_and_background_scoring_stay_on_policy(
    tmp_path, fresh_accelerate_state
):
    (row,) = run_training(
        tmp_path,
        [*TINY, "train.epochs=1", "log.sample_every_n_epochs=0",
         "train.mixed_precision=bf16", "train.gradient_checkpointing=true",
         "train.reward_in_background=true"],
    )  # fmt: skip
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
    cfg = compose_train(["experiment=demo", "train.beta=-1", "train.micro_batch_size=99",
                         "train.compile=true", "train.compile_backend=inductr"])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "train.beta=-1.0 must be >= 0" in str(err.value)
    assert "micro_batch_size=99" in str(err.value)
    assert "compile_backend='inductr' is not a torch.compile backend" in str(err.value)


def test_launcher_accumulation_that_contradicts_the_trainer_is_refused(tmp_path, monkeypatch):
    """accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS override the trainer's own value,
    which would silently change the optimizer steps per epoch."""
    from rl.distributed import LaunchError

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    cfg = compose_train(TINY)
    with pytest.raises(LaunchError, match=r"gradient accumulation to 3 .* derives it \(4\)"):
        FlowGRPOTrainer(parse_config(cfg), tmp_path, {}).setup()


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


def test_fast_window_with_two_optimizer_steps_end_to_end(tmp_path):
    """The fast variant as the reference runs it (beta 0, a random window per batch) with two
    optimizer steps per epoch: every batch draws its window and trains exactly it, the reference
    policy never runs, the EMA steps once per optimizer step (not per micro-batch: rl/ema.py) with
    the optimizer steps done so far, and the second step trains on log-probs moved by the first."""
    cfg = compose_train(
        [*TINY, "train.epochs=2", "log.sample_every_n_epochs=0", "rollout.sde_window=null",
         "rollout.sde_window_size=2", "rollout.sde_window_range=[0,4]", "rollout.sde_kind=cps",
         "train.beta=0", "train.batch_size=1", "train.micro_batch_size=1",
         "train.optimizer_steps_per_epoch=2", "ema.enabled=true", "ema.update_every=2"],
    )  # fmt: skip
    trainer = FlowGRPOTrainer(parse_config(cfg), tmp_path, raw_config={})
    trainer.setup()
    assert trainer.reference is None
    windows, ema_calls, forwards = [], [], []
    sample_epoch, ema_step = trainer.sample_epoch, trainer.ema.step

    def recording_sample_epoch():
        rollout, group_ids, scores = sample_epoch()
        windows.extend(tuple(steps) for steps in rollout.train_steps.tolist())
        return rollout, group_ids, scores

    trainer.sample_epoch = recording_sample_epoch
    trainer.ema.step = lambda s: ema_calls.append(s) or ema_step(s)
    trainer.pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    trainer.train()
    trainer.cleanup()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 4 batches of 1 image per epoch, each with its own window of 2 steps inside [0, 4)
    assert len(windows) == 8 and len(set(windows)) > 1
    assert all(w in [(0, 1), (1, 2), (2, 3)] for w in windows)
    # per epoch: 4 batches x 4 sampling steps + 4 micro-batches x 2 trained steps, no reference
    assert len(forwards) == 2 * (4 * 4 + 4 * 2)
    assert ema_calls == [1, 2, 3, 4]  # 2 micro-batches per optimizer step, one EMA event each
    assert [r["optimizer_step"] for r in rows] == [2, 4]
    for row in rows:
        assert row["onpolicy_log_ratio_abs_max"] == 0.0 and row["log_ratio_abs_max"] > 0
        assert row["kl"] != row["kl"]  # NaN: not computed at beta 0


def test_fp16_keeps_the_transformer_and_vae_in_float32(tmp_path, fresh_accelerate_state):
    """The reference's layout (scripts/train_sd3.py with mixed_precision fp16): float32 transformer,
    LoRA and VAE, fp16 text encoders. (The CPU has no fp16 autocast in accelerate; the layout and a
    whole epoch through fp16 text encoders are what is checked here.)"""
    cfg = compose_train([*TINY, "train.epochs=1", "log.sample_every_n_epochs=0",
                         "train.mixed_precision=fp16"])  # fmt: skip
    trainer = FlowGRPOTrainer(parse_config(cfg), tmp_path, raw_config={})
    trainer.run()
    pipe = trainer.pipe
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        assert {p.dtype for p in encoder.parameters()} == {torch.float16}
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["reward_nan"] == 0 and row["grad_norm"] > 0


def test_compiled_blocks_compile_once_per_shape_and_stay_on_policy(tmp_path):
    """train.compile=true with a counting wrapper around the aot_eager backend (inductor's numerics
    are checked by the `compile`-marked tests): the first epoch compiles each block's graphs
    (rollout, training, reference forward), the second compiles nothing new (static shapes, one
    module mode per phase), and the log-probs stay exact."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.registry import lookup_backend

    compiled = []

    @register_backend(name="counting_aot_eager")
    def counting_aot_eager(graph, example_inputs):
        compiled.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    torch._dynamo.reset()
    cfg = compose_train(
        [*TINY, "train.epochs=2", "log.sample_every_n_epochs=0", "checkpoint.every_n_epochs=2",
         "train.micro_batch_size=3", "train.compile=true",
         "train.compile_backend=counting_aot_eager"],
    )  # fmt: skip
    trainer = FlowGRPOTrainer(parse_config(cfg), tmp_path, raw_config={})
    per_epoch = []
    trainer.setup()
    log_epoch = trainer.logger.log_epoch
    trainer.logger.log_epoch = lambda row: per_epoch.append(len(compiled)) or log_epoch(row)
    trainer.train()
    trainer.cleanup()
    torch._dynamo.reset()
    # 2 distinct blocks (the first has attn2) x (rollout, training, reference forward) in epoch 1
    assert per_epoch == [6, 6]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["onpolicy_log_ratio_abs_max"] == 0.0 and r["grad_norm"] > 0 for r in rows)


def test_micro_batches_are_padded_with_weight_zero_stand_ins():
    from rl.train import micro_batch_chunks

    chunks = micro_batch_chunks(torch.tensor([5, 2, 7]), 2, pad_to=2)
    assert [(c.tolist(), w.tolist()) for c, w in chunks] == [([5, 2], [1, 1]), ([7, 0], [1, 0])]
    chunks = micro_batch_chunks(torch.tensor([4]), 2)
    assert [(c.tolist(), w.tolist()) for c, w in chunks] == [([4], [1]), ([0], [0])]


@pytest.mark.parametrize("processes", [1, 2, 4, 3])
def test_demo_preset_closes_its_epoch_on_1_2_and_4_processes(processes):
    """docs/training.md runs the demo on 1, 2 or 4 CPU processes: 48 images, batches of 6, two
    optimizer steps. Three processes cannot split it and say so before anything loads."""
    from rl.train import epoch_plan

    cfg = parse_config(compose_train(["experiment=demo"]))
    if processes == 3:
        with pytest.raises(SamplerConfigError, match="num_processes 3 x batch_size 6"):
            epoch_plan(cfg.train, len(cfg.data.prompts), processes)
        return
    layout, micro_batches = epoch_plan(cfg.train, len(cfg.data.prompts), processes)
    assert layout.batches_per_epoch * processes * 6 == 48
    assert micro_batches == 8 // processes and micro_batches % 2 == 0
