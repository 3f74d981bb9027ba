"""Scale-out that has run, on CPU processes over gloo: the demo preset on 2 processes with DDP
(Hydra's own timestamped run folder shared by both), DeepSpeed ZeRO-2 through the shipped
conf/accelerate/deepspeed_zero2.yaml (first epoch equal to DDP, resume exact) in float32 and in
DeepSpeed's bf16 mode (half weights in the engine, on-policy, resume exact), and two machines
(two `accelerate launch` with --machine_rank 0 and 1 meeting on 127.0.0.1, one shared run folder)
equal to the single-machine run. Each launch is shared by the tests that read it.

(``accelerate launch --cpu --num_processes 2`` starts ONE process unless mpirun is set up;
``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` starts two gloo processes through torchrun.
DeepSpeed needs no flag: without a GPU it takes its CPU accelerator and gloo.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from rl.checkpoint import ADAPTER_FILE, TRAINER_STATE
from rl.distributed import LaunchError, configure_deepspeed, distributed_state

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
# The demo preset as documented, shortened to 2 epochs with a checkpoint after each.
DEMO = ["experiment=demo", "train.epochs=2", "checkpoint.every_n_epochs=1",
        "checkpoint.keep_last=null", "log.sample_every_n_epochs=0"]  # fmt: skip


def launch(args: list[str], cwd: Path, cpu: bool = True) -> subprocess.Popen:
    """Start ``accelerate launch`` with one-thread processes (DeepSpeed: without the CPU flag)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return subprocess.Popen(
        [*LAUNCH, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timing_free(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in metrics]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The documented two-process CPU command, in Hydra's default (timestamped) run folder."""
    cwd = tmp_path_factory.mktemp("ddp")
    finish(launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rl.train",
                   *DEMO], cwd))  # fmt: skip
    runs = [p for p in (cwd / "outputs" / "train").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # rank 0's timestamp, shared: one folder for both processes
    return runs[0]


@pytest.fixture(scope="module")
def zero2_runs(tmp_path_factory) -> tuple[Path, Path]:
    """ZeRO-2 through the shipped config: 2 epochs straight, then epoch 2 again resumed from
    the straight run's epoch-1 checkpoint into a second folder."""
    base = tmp_path_factory.mktemp("zero2")
    config = ["--config_file", str(ROOT / "conf/accelerate/deepspeed_zero2.yaml"),
              "--num_processes", "2", "-m", "rl.train", *DEMO]  # fmt: skip
    straight, resumed = base / "straight", base / "resumed"
    finish(launch([*config, f"hydra.run.dir={straight}"], base, cpu=False))
    first = straight / "checkpoints" / "epoch_000001"
    finish(launch([*config, f"hydra.run.dir={resumed}", f"resume={first}"], base, cpu=False))
    return straight, resumed


@pytest.fixture(scope="module")
def zero2_bf16_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same two ZeRO-2 launches with train.mixed_precision=bf16: DeepSpeed's bf16 mode."""
    base = tmp_path_factory.mktemp("zero2_bf16")
    config = ["--config_file", str(ROOT / "conf/accelerate/deepspeed_zero2.yaml"),
              "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "rl.train",
              *DEMO, "train.mixed_precision=bf16"]  # fmt: skip
    straight, resumed = base / "straight", base / "resumed"
    finish(launch([*config, f"hydra.run.dir={straight}"], base, cpu=False))
    first = straight / "checkpoints" / "epoch_000001"
    finish(launch([*config, f"hydra.run.dir={resumed}", f"resume={first}"], base, cpu=False))
    return straight, resumed


def test_demo_runs_on_two_processes_sharing_one_folder_and_whole_groups(ddp_run):
    metrics = rows(ddp_run)
    assert [r["epoch"] for r in metrics] == [1, 2]
    for row in metrics:
        # each process holds 24 of the 48 images, yet all 6 groups are seen whole (8 each)
        assert row["num_groups"] == 6 and row["group_size_min"] == row["group_size_max"] == 8
        assert row["onpolicy_log_ratio_abs_max"] == 0.0 and row["optimizer_step"] % 2 == 0
    log = (ddp_run / "train.log").read_text()
    assert "| 2 processes |" in log and "in 4 batches of 6 per process" in log
    state = torch.load(ddp_run / "checkpoints/epoch_000002" / TRAINER_STATE, weights_only=False)
    noise = [rank["noise_gen"] for rank in state["per_rank"]]  # both ranks' generators, distinct
    assert len(noise) == 2 and not torch.equal(*noise)
    assert len(list(ddp_run.glob("*.log"))) == 1


def test_zero2_first_epoch_equals_ddp(ddp_run, zero2_runs):
    """Sampling and rewards of epoch 1 happen before any update: equal to the bit. The training
    statistics include the micro-batches after the epoch's first optimizer step, where ZeRO-2's
    reduce-scatter and DDP's all-reduce round the gradient differently: equal within 1e-6 (seen:
    7e-9 in policy_loss, the rest exact). After two Adam steps, whose first is nearly sign-sized
    and so carries rounding into the weights, epoch 2's rewards agree within 1e-5 (seen: 8e-7)."""
    (ddp, ddp_2), (zero2, zero2_2) = rows(ddp_run), rows(zero2_runs[0])
    assert "| 2 processes |" in (zero2_runs[0] / "train.log").read_text()
    assert (zero2_runs[0] / "checkpoints/epoch_000001/pytorch_model").is_dir()  # ZeRO shards
    for key, value in timing_free([ddp])[0].items():
        if key.startswith(("reward", "num_groups", "group_size", "zero_advantage", "prompts")):
            assert zero2[key] == value, key
        elif key != "images_per_s":
            assert zero2[key] == pytest.approx(value, abs=1e-6), key
    assert zero2_2["reward_mean"] == pytest.approx(ddp_2["reward_mean"], abs=1e-5)


def test_zero2_resume_is_exact(zero2_runs):
    straight, resumed = zero2_runs
    assert "resumed from" in (resumed / "train.log").read_text()
    assert timing_free(rows(resumed)) == timing_free(rows(straight))
    a = load_file(straight / "checkpoints/epoch_000002" / ADAPTER_FILE)
    b = load_file(resumed / "checkpoints/epoch_000002" / ADAPTER_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the frozen base weights stay out of DeepSpeed's model file (LoRA mode); buffers stay in
    saved = torch.load(
        straight / "checkpoints/epoch_000002/pytorch_model/mp_rank_00_model_states.pt",
        weights_only=False,
    )["module"]
    assert {name for name in saved if "lora_" not in name} == {"pos_embed.pos_embed"}


def test_zero2_bf16_keeps_half_weights_in_the_engine_and_stays_on_policy(
    zero2_runs, zero2_bf16_runs
):
    """DeepSpeed's bf16 mode: the engine holds the LoRA (and the frozen base) in bfloat16 and the
    ZeRO-2 optimizer float32 master partitions; sampling and training run the same bf16 weights,
    so the first trained step's ratio is exactly 1. Epoch 1 samples the base model (LoRA B = 0),
    so its reward is the fp32 run's up to bf16 rounding of the images."""
    straight = zero2_bf16_runs[0]
    checkpoint = straight / "checkpoints/epoch_000002/pytorch_model"
    module = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert {t.dtype for n, t in module.items() if "lora_" in n} == {torch.bfloat16}
    shards = sorted(checkpoint.glob("bf16_zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2  # one optimizer partition per process
    optim = torch.load(shards[0], weights_only=False)["optimizer_state_dict"]
    assert {t.dtype for t in optim["single_partition_of_fp32_groups"]} == {torch.float32}
    bf16, fp32 = rows(straight), rows(zero2_runs[0])
    assert all(r["onpolicy_log_ratio_abs_max"] == 0.0 and r["grad_norm"] > 0 for r in bf16)
    assert [r["optimizer_step"] for r in bf16] == [2, 4]
    assert bf16[0]["reward_mean"] == pytest.approx(fp32[0]["reward_mean"], abs=0.01)
    assert bf16[0]["reward_mean"] != fp32[0]["reward_mean"]  # it did run in bf16


def test_zero2_bf16_resume_is_exact(zero2_bf16_runs):
    straight, resumed = zero2_bf16_runs
    assert "resumed from" in (resumed / "train.log").read_text()
    assert timing_free(rows(resumed)) == timing_free(rows(straight))
    a = load_file(straight / "checkpoints/epoch_000002" / ADAPTER_FILE)
    b = load_file(resumed / "checkpoints/epoch_000002" / ADAPTER_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_machines_equal_one_machine_with_two_processes(ddp_run, tmp_path):
    """conf/accelerate/multi_node.yaml with its node and process counts overridden: one CPU
    process per "machine", rank 0 at 127.0.0.1, one run folder given to both (docs/training.md)."""
    port, run_dir = str(free_port()), tmp_path / "run"
    nodes = [
        launch(["--config_file", str(ROOT / "conf/accelerate/multi_node.yaml"),
                "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                "-m", "rl.train", *DEMO, f"hydra.run.dir={run_dir}"], tmp_path)
        for rank in (0, 1)
    ]  # fmt: skip
    for node in nodes:
        finish(node)
    assert timing_free(rows(run_dir)) == timing_free(rows(ddp_run))
    assert "| 2 processes |" in (run_dir / "train.log").read_text()


def test_deepspeed_with_the_cpu_flag_is_refused(monkeypatch):
    """ACCELERATE_USE_CPU makes accelerate silently run DDP instead of DeepSpeed."""
    for name, value in [("ACCELERATE_USE_DEEPSPEED", "true"), ("LOCAL_RANK", "0"),
                        ("ACCELERATE_USE_CPU", "1")]:  # fmt: skip
        monkeypatch.setenv(name, value)
    with pytest.raises(LaunchError, match="ignore DeepSpeed"):
        distributed_state()


def test_deepspeed_config_is_filled_from_the_trainer_and_conflicts_are_named():
    def accelerator(config):
        plugin = SimpleNamespace(deepspeed_config=config)
        return SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED,
            state=SimpleNamespace(deepspeed_plugin=plugin),
            gradient_accumulation_steps=12,
            num_processes=2,
        )

    config = {"gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}}
    configure_deepspeed(accelerator(config), micro_batch_size=6, max_grad_norm=0.5)
    assert config["train_micro_batch_size_per_gpu"] == 6 and config["gradient_clipping"] == 0.5
    assert config["gradient_accumulation_steps"] == 12 and config["train_batch_size"] == 144
    with pytest.raises(LaunchError, match=r"gradient_accumulation_steps=1 but .* is 12"):
        configure_deepspeed(accelerator({"gradient_accumulation_steps": 1}), 6, 0.5)
