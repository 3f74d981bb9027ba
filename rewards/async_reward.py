"""Run a reward in a background thread, so the trainer can sample the next batch meanwhile.

Judges spend most of their time waiting (on an HTTP server, or on a GPU kernel that releases the
GIL), so scoring batch ``k`` while the policy samples batch ``k + 1`` hides most of the reward's
latency::

    with AsyncReward(reward) as scorer:
        pending = scorer.submit(images, prompts, metadata)   # returns at once
        next_rollout = sample(...)                           # overlaps with the scoring
        out = pending.result()                               # RewardOutput

One worker thread runs the submitted batches in order. Tensors are copied to the CPU at
submission, so the caller may free or overwrite its (GPU) buffers right away. At most
``max_pending`` batches wait or run at once; ``submit`` blocks beyond that (back-pressure instead
of unbounded memory). An exception raised by the reward comes back from ``result()``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from rewards.base import Reward, RewardOutput
from rewards.images import ImageBatch


class AsyncReward:
    """Background scoring for ``reward`` (see the module docstring)."""

    def __init__(self, reward: Reward, max_pending: int = 2) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.reward = reward
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"reward-{reward.name}")

    def submit(
        self,
        images: ImageBatch,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> Future[RewardOutput]:
        """Queue one batch; its :class:`RewardOutput` comes from the returned future."""
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", copy=True)
        else:
            images = list(images)
        prompts = list(prompts)
        metadata = [dict(m) for m in metadata] if metadata is not None else None
        self._slots.acquire()
        try:
            future = self._pool.submit(self.reward, images, prompts, metadata)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        """Finish the queued batches and stop the worker thread."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> AsyncReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
