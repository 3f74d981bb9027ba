"""Which prompts each process samples: K images per prompt, groups spread over all ranks.

Every epoch draws ``groups_per_epoch`` distinct prompts, repeats each ``group_size`` (K) times,
shuffles the combined list with a generator seeded from ``seed + epoch`` (so every rank computes
the same permutation without communicating) and cuts it into ``batches_per_epoch`` batches of
``num_processes x batch_size`` images; each rank takes its own ``batch_size`` slice of every batch.
A group's K images may therefore land on different ranks and in different batches of the epoch;
advantages are computed only after all ranks' rewards of the epoch are gathered.

The arithmetic must close: ``groups_per_epoch * K == batches_per_epoch * num_processes *
batch_size``. ``batches_per_epoch`` is derived from the process count, so one preset scales from
one GPU to many; a combination that cannot work fails at start-up with one message naming the
numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class SamplerConfigError(ValueError):
    """The batch / group / process numbers cannot make whole prompt groups."""


@dataclass(frozen=True)
class GroupLayout:
    """The numbers that fix how an epoch's images are split into groups, batches and ranks."""

    num_prompts: int
    group_size: int
    groups_per_epoch: int
    batch_size: int
    num_processes: int

    @property
    def images_per_epoch(self) -> int:
        return self.groups_per_epoch * self.group_size

    @property
    def batches_per_epoch(self) -> int:
        return self.images_per_epoch // (self.num_processes * self.batch_size)

    def validate(self) -> None:
        """Raise one SamplerConfigError naming every number when the layout cannot work."""
        per_batch = self.num_processes * self.batch_size
        problems = []
        if min(self.group_size, self.groups_per_epoch, self.batch_size, self.num_processes) < 1:
            problems.append("group_size, groups_per_epoch, batch_size and processes must be >= 1")
        elif self.images_per_epoch % per_batch:
            problems.append(
                f"groups_per_epoch {self.groups_per_epoch} x group_size {self.group_size} = "
                f"{self.images_per_epoch} images per epoch is not a multiple of num_processes "
                f"{self.num_processes} x batch_size {self.batch_size} = {per_batch} images per "
                "batch"
            )
        if self.groups_per_epoch > self.num_prompts:
            problems.append(
                f"groups_per_epoch {self.groups_per_epoch} exceeds the {self.num_prompts} "
                "prompts available (each group needs a distinct prompt)"
            )
        if problems:
            raise SamplerConfigError(
                "impossible batch/group/process combination: " + "; ".join(problems)
            )


class GroupSampler:
    """Per-rank prompt indices for each epoch; a pure function of (seed, epoch, layout).

    The only state is the next epoch to draw, kept so that a resumed run continues the sequence;
    ``load_state_dict`` refuses a checkpoint taken with a different layout.
    """

    def __init__(self, layout: GroupLayout, rank: int, seed: int) -> None:
        layout.validate()
        if not 0 <= rank < layout.num_processes:
            raise ValueError(f"rank {rank} outside 0..{layout.num_processes - 1}")
        self.layout = layout
        self.rank = rank
        self.seed = seed
        self.next_epoch = 0

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All ranks' prompt indices of ``epoch``: ``[batches, num_processes, batch_size]``."""
        lay = self.layout
        gen = torch.Generator().manual_seed(self.seed + epoch)
        prompts = torch.randperm(lay.num_prompts, generator=gen)[: lay.groups_per_epoch]
        repeated = prompts.repeat_interleave(lay.group_size)
        shuffled = repeated[torch.randperm(repeated.numel(), generator=gen)]
        return shuffled.view(lay.batches_per_epoch, lay.num_processes, lay.batch_size)

    def next_epoch_batches(self) -> list[list[int]]:
        """This rank's batches for the next epoch (one list of prompt indices per batch)."""
        batches = self.epoch_indices(self.next_epoch)[:, self.rank].tolist()
        self.next_epoch += 1
        return batches

    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, "seed": self.seed, "layout": vars(self.layout)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = GroupLayout(**state["layout"])
        if saved != self.layout or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint sampler layout {saved} (seed {state['seed']}) differs from this "
                f"run's {self.layout} (seed {self.seed}); resume with the same settings and "
                "process count"
            )
        self.next_epoch = int(state["next_epoch"])


def load_prompts(
    prompts: list[str] | None, prompt_file: str | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The training prompts and their per-prompt metadata (for rewards that need it).

    Exactly one source: an inline list, a ``.txt`` file (one prompt per line, blank lines
    skipped) or a ``.jsonl`` file whose lines hold a ``"prompt"`` field; the other fields of a
    JSONL line become that prompt's metadata.
    """
    if (prompts is None) == (prompt_file is None):
        raise ValueError("set exactly one of data.prompts (a list) and data.prompt_file (a path)")
    if prompts is not None:
        texts = [str(p) for p in prompts]
        metadata: list[dict[str, Any]] = [{} for _ in texts]
    else:
        path = Path(prompt_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.prompt_file not found: {path}")
        numbered = [
            (number, line)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()
        ]
        if path.suffix == ".jsonl":
            rows = []
            for number, line in numbered:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not valid JSON ({err.msg})") from err
                if not isinstance(row, dict) or "prompt" not in row:
                    raise ValueError(f"{path}:{number} has no 'prompt' field")
                rows.append(row)
            texts = [row.pop("prompt") for row in rows]
            metadata = rows
        else:
            texts = [line.strip() for _, line in numbered]
            metadata = [{} for _ in texts]
    if not texts:
        raise ValueError(f"no prompts found in {prompt_file or 'data.prompts'}")
    return texts, metadata
