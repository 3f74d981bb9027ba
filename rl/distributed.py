"""The process group and DeepSpeed settings of a launch, set up as the trainer needs them.

accelerate creates its process state in the first ``PartialState()``; the trainer creates it early
(to share the run folder's timestamp and to count processes before the models load), and must
create it exactly as ``Accelerator`` would. Two gaps of accelerate are closed here:

* ``accelerate launch --use_deepspeed`` on a machine without a GPU: accelerate finds no backend,
  counts ONE process although DeepSpeed has joined all of them, and collectives then fail. DeepSpeed
  itself runs there on its CPU accelerator over gloo, so the state is created with that backend.
* DeepSpeed wants its micro-batch size, gradient accumulation and clipping in its config, which
  accelerate can only fill from a data loader (the trainer has none). :func:`configure_deepspeed`
  fills every ``auto`` or missing entry from the trainer's own numbers and refuses a config that
  sets them to something else, naming both values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, parse_flag_from_env


class LaunchError(ValueError):
    """The launch settings contradict the training config; the message names both values."""


def deepspeed_requested() -> bool:
    """Whether this process was started by ``accelerate launch`` with DeepSpeed."""
    return (
        parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
        and int(os.environ.get("LOCAL_RANK", -1)) != -1
    )


def deepspeed_cpu_backend() -> str | None:
    """The collective backend DeepSpeed uses when it runs on its CPU accelerator, else None."""
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError as err:
        raise LaunchError(
            f"accelerate launch asked for DeepSpeed, which does not import ({err}): "
            'pip install -e ".[deepspeed]"'
        ) from None

    accelerator = get_accelerator()
    return accelerator.communication_backend_name() if accelerator.device_name() == "cpu" else None


def distributed_state() -> PartialState:
    """accelerate's process state, created as ``Accelerator`` would create it (CPU processes
    when ``ACCELERATE_USE_CPU`` is set), so that creating it early does not fix a wrong one."""
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    kwargs: dict[str, Any] = {}
    if deepspeed_requested():
        if cpu:
            raise LaunchError(
                "ACCELERATE_USE_CPU=1 makes accelerate ignore DeepSpeed (it would run plain DDP); "
                "launch DeepSpeed without it (on a machine without a GPU it uses its CPU "
                "accelerator and gloo)"
            )
        backend = deepspeed_cpu_backend()
        if backend is not None:
            kwargs["backend"] = backend
    return PartialState(cpu=cpu, **kwargs)


def configure_deepspeed(accelerator: Accelerator, micro_batch_size: int, max_grad_norm: float):
    """Fill DeepSpeed's batch, accumulation and clipping entries before ``accelerator.prepare``.

    ``micro_batch_size`` is the images of one training forward, the accumulation is the
    accelerator's (micro-batches per optimizer step x trained denoising steps), and clipping is
    ``train.max_grad_norm``. No-op without DeepSpeed.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": (micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (
            accelerator.gradient_accumulation_steps,
            "the trainer's accumulation (micro-batches per optimizer step x trained steps)",
        ),
        "gradient_clipping": (max_grad_norm, "train.max_grad_norm"),
    }
    problems = []
    for key, (value, source) in wanted.items():
        current = config.get(key, "auto")
        if current in ("auto", None):
            config[key] = value
        elif float(current) != float(value):
            problems.append(f"{key}={current} but {source} is {value}")
    if problems:
        raise LaunchError(
            "the DeepSpeed config contradicts the training config: "
            + "; ".join(problems)
            + ' (write "auto" in the DeepSpeed config and the trainer fills them in)'
        )
    config["train_batch_size"] = (
        micro_batch_size * config["gradient_accumulation_steps"] * accelerator.num_processes
    )
    if zero_stage(accelerator) == 3:
        keep_zero3_to_the_engine(accelerator.state.deepspeed_plugin)


def zero_stage(accelerator: Accelerator) -> int:
    """The launch's ZeRO stage (0 without DeepSpeed)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    return int(config.get("zero_optimization", {}).get("stage", 0))


def keep_zero3_to_the_engine(plugin: Any) -> None:
    """Under ZeRO-3 only the engine's module (the transformer) is partitioned.

    accelerate registers its DeepSpeed config with transformers whatever ``zero3_init_flag`` says,
    and transformers then partitions every model it builds afterwards (``deepspeed.zero.Init``):
    the text encoders and a reward model would come out partitioned with no engine to gather them
    back, and their first forward fails. The registration is undone here; the flag itself is
    refused, for the same reason.
    """
    if plugin.zero3_init_flag:
        raise LaunchError(
            "zero3_init_flag: true partitions the text encoders and the reward model while they "
            "load, and only the trained transformer is gathered by the DeepSpeed engine: set "
            "zero3_init_flag: false (conf/accelerate/deepspeed_zero3.yaml)"
        )
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    plugin.dschf = None


@contextlib.contextmanager
def gathered(accelerator: Accelerator, params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Under ZeRO-3, ``params`` whole on every process inside the block, to read (collective:
    every process must enter it). Elsewhere they are whole already and this does nothing."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params)):
        yield


def whole_numel(param: torch.nn.Parameter) -> int:
    """Elements of the whole tensor, also where ZeRO-3 left this process an empty placeholder."""
    return getattr(param, "ds_numel", param.numel())


def held_share(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters this process holds, parameters of ``module``): under ZeRO-3 each holds its
    partition (``ds_tensor``) of every partitioned tensor; elsewhere it holds them all."""
    held = total = 0
    for param in module.parameters():
        numel = whole_numel(param)
        partition = getattr(param, "ds_tensor", None)
        total += numel
        # tensors under stage3_param_persistence_threshold stay whole on every process
        whole = partition is None or getattr(param, "ds_persist", False)
        held += numel if whole else partition.numel()
    return held, total
