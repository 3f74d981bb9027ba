"""DeepSpeed ZeRO-3, the launch that shards a frozen base too large to copy on every GPU
(Qwen-Image's 20B transformer: conf/accelerate/deepspeed_zero3.yaml), run on 2 CPU processes over
gloo with the tiny Qwen-Image: each process holds half of the transformer, the first epoch equals
DDP's, resume is exact and the exported LoRA is whole (marker ``families``: ``make
test-families``). The settings ZeRO-3 refuses, and the model loading it must leave whole, are
checked without a launch.

DeepSpeed keeps tensors under ``stage3_param_persistence_threshold`` (default 1e5 elements) whole
on every process; every tensor of the tiny model is under it, so the launches use the shipped
config's settings in a DeepSpeed JSON with the threshold at 0: the tiny model is then partitioned
as a full-size model's large tensors are."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_rl_scale import ROOT, finish, free_port, launch, rows

from rl.config import parse_config
from rl.distributed import LaunchError, keep_zero3_to_the_engine
from rl.train import refuse_under_zero3

SMALL = ["experiment=demo", "model=tiny_qwen_image", "train.epochs=2",
         "checkpoint.every_n_epochs=1", "checkpoint.keep_last=null",
         "log.sample_every_n_epochs=0", "train.batch_size=4", "train.micro_batch_size=4",
         "train.group_size=4", "train.groups_per_epoch=2",
         "train.optimizer_steps_per_epoch=1"]  # fmt: skip
LORA = "lora/pytorch_lora_weights.safetensors"


def zero3_json(path: Path) -> Path:
    """The shipped accelerate config's DeepSpeed settings, with every tensor partitioned."""
    shipped = yaml.safe_load((ROOT / "conf/accelerate/deepspeed_zero3.yaml").read_text())
    ds = shipped["deepspeed_config"]
    assert shipped["distributed_type"] == "DEEPSPEED" and ds["zero_stage"] == 3
    assert ds["zero3_init_flag"] is False
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": ds["zero_stage"],
            "offload_optimizer": {"device": ds["offload_optimizer_device"]},
            "offload_param": {"device": ds["offload_param_device"]},
            "stage3_param_persistence_threshold": 0,
        },
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """2 epochs straight and epoch 2 resumed, under ZeRO-3; the same 2 epochs under DDP."""
    base = tmp_path_factory.mktemp("zero3")
    config = ["--use_deepspeed", "--deepspeed_config_file", str(zero3_json(base / "zero3.json")),
              "--zero3_init_flag", "false", "--num_processes", "2",
              "--main_process_port", str(free_port()), "-m", "rl.train", *SMALL]  # fmt: skip
    straight, resumed, ddp = base / "straight", base / "resumed", base / "ddp"
    finish(launch([*config, f"hydra.run.dir={straight}"], base, cpu=False))
    first = straight / "checkpoints" / "epoch_000001"
    finish(launch([*config, f"hydra.run.dir={resumed}", f"resume={first}"], base, cpu=False))
    finish(launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), "-m", "rl.train", *SMALL,
                   f"hydra.run.dir={ddp}"], base))  # fmt: skip
    return straight, resumed, ddp


@pytest.mark.families
def test_zero3_shards_the_frozen_base_and_its_first_epoch_equals_ddp(zero3_runs):
    straight, _, ddp = zero3_runs
    log = (straight / "train.log").read_text()
    held = [line for line in log.splitlines() if "ZeRO-3: this process holds" in line]
    assert len(held) == 1 and "(50.0%)" in held[0], held  # rank 0 holds half, frozen base too

    def trainable(run: Path) -> int:  # the plan line counts whole tensors, not the partitions
        plan = (run / "train.log").read_text()
        return int(re.search(r"\| (\d+) trainable parameters \|", plan)[1])

    assert trainable(straight) == trainable(ddp) > 0
    shards = sorted((straight / "checkpoints/epoch_000001/pytorch_model").glob("zero_pp_rank_*"))
    assert len(shards) == 4  # model and optimizer states of each of the 2 processes
    (z1, z2), (d1, d2) = rows(straight), rows(ddp)
    for key, value in d1.items():
        if key.endswith("_s") or key == "images_per_s":
            continue
        # same images, same rewards; the loss and gradient up to the collectives' float order
        assert z1[key] == pytest.approx(value, abs=1e-5), key
    assert z1["onpolicy_log_ratio_abs_max"] == 0.0  # sampling ran the weights it trained
    assert z2["reward_mean"] == pytest.approx(d2["reward_mean"], abs=1e-5)


@pytest.mark.families
def test_zero3_exports_the_whole_lora_and_resumes_exactly(zero3_runs):
    straight, resumed, ddp = zero3_runs
    exported, reference = load_file(straight / LORA), load_file(ddp / LORA)
    assert exported.keys() == reference.keys()
    for key, tensor in reference.items():  # whole tensors, not a process's partition
        assert exported[key].shape == tensor.shape, key
        torch.testing.assert_close(exported[key], tensor, atol=1e-5, rtol=0)
    in_checkpoint = load_file(straight / "checkpoints/epoch_000001" / LORA)
    assert all(t.numel() > 0 for t in in_checkpoint.values())
    for key, tensor in load_file(resumed / LORA).items():
        assert torch.equal(tensor, exported[key]), key
    last_straight, last_resumed = rows(straight)[-1], rows(resumed)[-1]
    for key, value in last_straight.items():
        if not key.endswith("_s") and key != "images_per_s":
            assert last_resumed[key] == value, key


def demo_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    from rl.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return parse_config(compose("train", overrides=["experiment=demo", *overrides]))


def test_zero3_refuses_what_needs_the_whole_weights_on_one_process():
    refuse_under_zero3(demo_config())  # the demo's settings run
    with pytest.raises(LaunchError, match=r"cannot run ema\.enabled=true, eval_hook"):
        refuse_under_zero3(demo_config("ema.enabled=true", "eval_hook=tiif_mini",
                                       "eval_hook.every_n_epochs=5"))  # fmt: skip
    with pytest.raises(LaunchError, match="algorithm=diffusion_nft"):
        refuse_under_zero3(demo_config("experiment=demo_nft"))


def test_zero3_leaves_models_loaded_outside_the_engine_whole():
    """accelerate registers its ZeRO-3 config with transformers, which would then partition every
    model built afterwards (text encoders, reward models) with no engine to gather them."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}
    plugin = SimpleNamespace(zero3_init_flag=False, dschf=HfDeepSpeedConfig(config))
    assert is_deepspeed_zero3_enabled()
    keep_zero3_to_the_engine(plugin)
    assert not is_deepspeed_zero3_enabled()  # what from_pretrained asks before zero.Init
    with pytest.raises(LaunchError, match="zero3_init_flag: false"):
        keep_zero3_to_the_engine(SimpleNamespace(zero3_init_flag=True))
