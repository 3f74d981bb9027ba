"""Checkpoints that are whole or absent, and exact resume.

A checkpoint is ``<run>/checkpoints/epoch_NNNNNN/`` (the state after N epochs) holding
accelerate's state (optimizer, rank 0's RNG states, and the model: only the LoRA adapter in LoRA
mode, via save/load hooks, the full transformer otherwise), the trainer's own state in
``trainer_state.pt`` (epoch, optimizer step, sampler, stat tracker, EMA, and every rank's
generators and global RNG states, gathered to rank 0), anything the caller adds (the exported
LoRA) and a ``COMPLETE`` marker written last. Everything is written into
``.staging-epoch_NNNNNN/`` first and renamed into place once complete, so a crash leaves either
the previous checkpoints untouched or a folder that :meth:`CheckpointManager.complete_checkpoints`
ignores, as it ignores any folder without the marker. Clean-up (``keep_last``) never deletes the
checkpoint just written, even when older-numbered ones would sort after it.

A checkpoint is untrusted input: ``trainer_state.pt`` holds only tensors and plain Python data
and is loaded with ``torch.load(weights_only=True)``; a file that needs pickle to load (it could
run code) is refused with :class:`UntrustedCheckpointError`. accelerate loads its own files
(optimizer, RNG states) with ``weights_only=True`` too.

Assumes a file system shared by all processes (DeepSpeed writes per-rank files). Under DeepSpeed
the engine saves the model and its ZeRO optimizer shards itself; in LoRA mode it is told to leave
out the frozen base weights (``exclude_frozen_parameters``), which are not state of the run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from rl.distributed import gathered
from rl.lora import load_lora_state_dict, lora_state_dict

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
CHECKPOINT_DIR = re.compile(r"^epoch_(\d+)$")


class UntrustedCheckpointError(ValueError):
    """A checkpoint file that would need pickle (arbitrary code) to load."""


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / TRAINER_STATE).is_file()


def register_lora_hooks(accelerator: Accelerator) -> None:
    """Make ``save_state``/``load_state`` store only the adapter, not the frozen base weights
    (under ZeRO-3 gathered whole for the write). Under DeepSpeed accelerate hands the load hook
    no model: the engine restores the weights from its own checkpoint files."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for model in models:
            model = accelerator.unwrap_model(model)
            with gathered(accelerator, trained_parameters(model)):  # ZeRO-3: whole on rank 0
                if accelerator.is_main_process:
                    state = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
                    save_file(state, f"{output_dir}/{ADAPTER_FILE}")
            if weights:
                weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            model = accelerator.unwrap_model(models.pop())
            load_lora_state_dict(model, load_file(f"{input_dir}/{ADAPTER_FILE}"))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class CheckpointManager:
    """Writes, finds and loads the checkpoints under ``root`` (``<run>/checkpoints``)."""

    def __init__(
        self,
        accelerator: Accelerator,
        root: Path,
        keep_last: int | None,
        frozen_base: bool = False,
        trained: list[torch.nn.Parameter] = (),
    ) -> None:
        self.accelerator = accelerator
        self.trained = trained  # gathered whole for write_extra under ZeRO-3
        self.root = root
        self.keep_last = keep_last
        self.frozen_base = frozen_base  # LoRA: the model's frozen weights are not saved

    def _deepspeed_kwargs(self, saving: bool) -> dict[str, bool]:
        """DeepSpeed's save/load options that skip the frozen base weights in LoRA mode."""
        if not self.frozen_base or self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return {}
        return {"exclude_frozen_parameters": True} if saving else {"load_module_strict": False}

    def save(
        self,
        epoch: int,
        trainer_state: dict[str, Any],
        write_extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint for ``epoch`` (collective: every process must call it).

        ``trainer_state`` is rank 0's; values under ``"per_rank"`` are gathered from every rank
        into a list indexed by rank. ``write_extra(folder)`` runs on rank 0 before the marker.
        """
        acc = self.accelerator
        staging = self.root / f".staging-{checkpoint_name(epoch)}"
        final = self.root / checkpoint_name(epoch)
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging), **self._deepspeed_kwargs(saving=True))
        per_rank = gather_objects(acc, trainer_state.pop("per_rank", None))
        with gathered(acc, self.trained):  # collective under ZeRO-3 (DeepSpeed re-partitioned)
            if acc.is_main_process and write_extra is not None:
                write_extra(staging)
        if acc.is_main_process:
            torch.save({**trainer_state, "per_rank": per_rank}, staging / TRAINER_STATE)
            marker = {"epoch": epoch, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (staging / MARKER).write_text(json.dumps(marker) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._prune(keep=final)
        acc.wait_for_everyone()
        return final

    def _prune(self, keep: Path) -> None:
        """Delete the oldest complete checkpoints beyond ``keep_last``, never ``keep`` (the one
        just written: after resuming from an earlier checkpoint, later-numbered ones of the
        abandoned run would otherwise outrank it)."""
        if not self.keep_last:
            return
        others = [path for path in self.complete_checkpoints() if path != keep]
        for path in others[: max(0, len(others) + 1 - self.keep_last)]:
            shutil.rmtree(path)

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written folders are skipped)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = CHECKPOINT_DIR.match(path.name)
            if match and path.is_dir():
                if is_complete(path):
                    found.append((int(match.group(1)), path))
                else:
                    log.warning("ignoring half-written checkpoint %s (no %s marker)", path, MARKER)
        return [path for _, path in sorted(found)]

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint named by ``resume``: None, ``"latest"`` (None if there is none yet),
        or a path, which must be a complete checkpoint."""
        if resume in (None, "", "none"):
            return None
        if resume == "latest":
            complete = self.complete_checkpoints()
            if not complete:
                log.info("resume=latest: no complete checkpoint in %s; starting fresh", self.root)
                return None
            return complete[-1]
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint folder")
        if not is_complete(path):
            raise ValueError(
                f"resume={resume} is not a complete checkpoint (no {MARKER} marker or "
                f"{TRAINER_STATE}); it was probably interrupted while being written"
            )
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Restore accelerate's state from ``path`` and return the trainer state, with
        ``"per_rank"`` replaced by this rank's entry."""
        state = load_trainer_state(path / TRAINER_STATE)
        self.accelerator.load_state(str(path), **self._deepspeed_kwargs(saving=False))
        per_rank = state["per_rank"]
        if per_rank is not None:
            if len(per_rank) != self.accelerator.num_processes:
                raise ValueError(
                    f"checkpoint {path} was written by {len(per_rank)} processes; this run has "
                    f"{self.accelerator.num_processes}"
                )
            state["per_rank"] = per_rank[self.accelerator.process_index]
        return state


def load_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.pt`` loaded without running code: tensors and plain data only, else
    :class:`UntrustedCheckpointError` naming the file."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        # torch's message is a page of advice; keep the part that names what the file needs
        needs = re.search(r"Unsupported global: GLOBAL \S+", str(err))
        if needs:
            raise UntrustedCheckpointError(
                f"{path} needs pickle to load, which could run code from the file; refused "
                f"({needs.group(0)}). Resume only from checkpoints this trainer wrote"
            ) from None
        detail = re.search(r"Unsupported operand \S+|WeightsUnpickler error: [^\n]+", str(err))
        detail = detail.group(0) if detail else (str(err).strip().splitlines() or [""])[0]
        raise UntrustedCheckpointError(
            f"{path} is not a readable trainer state (corrupt or truncated: {detail[:120]})"
        ) from None
    if not isinstance(state, dict):
        raise UntrustedCheckpointError(f"{path} does not hold a trainer state (a dict)")
    return state


def gather_objects(accelerator: Accelerator, obj: Any) -> list[Any]:
    """``obj`` from every rank, as a list indexed by rank."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])
