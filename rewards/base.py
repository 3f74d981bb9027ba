"""The one interface every reward in the project implements.

A reward is a callable ``reward(images, prompts, metadata) -> RewardOutput``. ``scores`` is a
float32 tensor ``[B]`` in which NaN means "this sample could not be scored" (a judge answer that
did not parse, a server that timed out, a corrupt image). A NaN is never replaced by 0: the trainer
leaves it out of the group statistics and counts it. ``details`` holds named ``[B]`` tensors, for
example one per rubric, so a run can be read rule by rule. ``failures`` counts why samples became
NaN, keyed by a short reason.

Scores are float32, and only finite float32 numbers are scores: a value that is infinite, or that
only float64 can hold (1e39 becomes inf in float32), is NaN with the reason
:data:`NON_FINITE_SCORE`, so nothing non-finite reaches the advantages and the weights.
"""

from __future__ import annotations

import abc
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from rewards.images import ImageBatch, read_images, read_tensor_batch

log = logging.getLogger(__name__)

NON_FINITE_SCORE = "non-finite score (infinite in float32)"
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the largest score


@dataclass
class RewardOutput:
    """Scores ``[B]`` (NaN = unscorable), per-sample details, and counted failure reasons."""

    scores: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.scores, overflow = _float32_or_nan(self.scores)
        if overflow:
            self.failures = Counter(self.failures)
            self.failures[NON_FINITE_SCORE] += overflow
        batch = self.scores.shape[0]
        for name, value in list(self.details.items()):
            value, _ = _float32_or_nan(value)
            if value.shape[0] != batch:
                raise ValueError(
                    f"detail {name!r} has {value.shape[0]} entries but scores have {batch}"
                )
            self.details[name] = value

    @property
    def num_failed(self) -> int:
        return int(torch.isnan(self.scores).sum())


def _float32_or_nan(values: Any) -> tuple[torch.Tensor, int]:
    """``values`` as a flat float32 tensor with every infinity NaN, and how many there were."""
    values = torch.as_tensor(values).reshape(-1).to(torch.float32)
    infinite = torch.isinf(values)
    count = int(infinite.sum())
    if count:
        values = values.masked_fill(infinite, math.nan)
    return values, count


class Reward(abc.ABC):
    """Base class for rewards. Subclasses implement :meth:`score` on PIL images.

    ``__call__`` normalises the inputs (tensors or PIL images, a missing metadata list) and checks
    the output's shape, so each subclass only deals with the scoring itself. A reward whose
    :attr:`accepts_tensors` is true gets a tensor batch as a uint8 tensor ``[B, 3, H, W]`` on its
    own device (floats rounded as :func:`rewards.images.to_pil` rounds them) instead of PIL images,
    so a judge can preprocess the trainer's images where they already are.
    """

    name: str = "reward"
    # False: PIL inputs reach ``score`` converted to RGB. True: in the mode they came in, for a
    # reward that reproduces an official preprocessing which converts them itself (e.g. resizes
    # an RGBA image before dropping its alpha, or composites it onto white).
    keeps_image_mode: bool = False
    accepts_tensors: bool = False

    def __call__(
        self,
        images: ImageBatch,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> RewardOutput:
        if isinstance(images, torch.Tensor) and self.accepts_tensors:
            pil, corrupt = read_tensor_batch(images)
        else:
            pil, corrupt = read_images(images, keep_mode=self.keeps_image_mode)
        if len(pil) != len(prompts):
            raise ValueError(f"{self.name}: got {len(pil)} images but {len(prompts)} prompts")
        meta = list(metadata) if metadata is not None else [{} for _ in prompts]
        if len(meta) != len(prompts):
            raise ValueError(
                f"{self.name}: got {len(meta)} metadata entries for {len(prompts)} prompts"
            )
        for index, problem in corrupt.items():
            log.warning("%s: image %d is corrupt (%s); its score is NaN", self.name, index, problem)
        keep = [i for i in range(len(pil)) if i not in corrupt]
        if keep:
            kept = pil[keep] if isinstance(pil, torch.Tensor) else [pil[i] for i in keep]
            out = self.score(kept, [prompts[i] for i in keep], [meta[i] for i in keep])
            if out.scores.shape[0] != len(keep):
                raise RuntimeError(
                    f"{self.name}: returned {out.scores.shape[0]} scores for {len(keep)} samples"
                )
        else:
            out = RewardOutput(torch.zeros(0))
        if corrupt:
            out = _with_nan_rows(out, keep, len(pil))
            out.failures.update(f"corrupt image: {problem}" for problem in corrupt.values())
        if out.failures:
            log.warning(
                "%s: %d/%d samples unscored (%s)",
                self.name,
                out.num_failed,
                len(prompts),
                dict(out.failures),
            )
        return out

    @abc.abstractmethod
    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        """Score a batch of PIL images (a uint8 ``[B, 3, H, W]`` tensor where
        :attr:`accepts_tensors`) against their prompts."""

    def check_prompts(  # noqa: B027 - optional hook, default is a no-op
        self, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> None:
        """Refuse, with one line naming the first bad entry, prompts or metadata this reward can
        never score (OCR: no quoted text; GenEval: a row without its tag). The trainer and the
        evaluation commands call it once on the whole data set at start-up, before sampling."""

    def release(self) -> None:  # noqa: B027 - optional hook, default is a no-op
        """Free accelerator memory between phases (models that hold GPU weights override this)."""


def _with_nan_rows(out: RewardOutput, rows: list[int], batch: int) -> RewardOutput:
    """``out`` (one row per index in ``rows``) spread over ``batch`` rows, NaN everywhere else."""
    index = torch.tensor(rows, dtype=torch.long)

    def spread(values: torch.Tensor) -> torch.Tensor:
        full = torch.full((batch,), float("nan"), dtype=torch.float32)
        full[index] = values
        return full

    details = {name: spread(value) for name, value in out.details.items()}
    return RewardOutput(spread(out.scores), details, Counter(out.failures))
