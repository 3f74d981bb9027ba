"""Exponential moving average of the trained parameters, with flow_grpo's warm-up and cadence.

The reference (yifan123/flow_grpo ``flow_grpo/ema.py`` ``EMAModuleWrapper``, driven by
``scripts/train_sd3.py`` lines 444-445 and 954-955 at commit ac4c86e, and ``train_sd3_fast.py`` at
74db691) calls ``ema.step`` after every training micro-batch with ``s`` = the optimizer steps done
so far, and updates when ``(s + 1) % update_every == 0`` as ``ema += (1 - d) * (param - ema)`` with
the warmed-up decay ``d = min((1 + s) / (10 + s), decay)``. A given ``s`` is seen by M consecutive
micro-batches (the one that completes step ``s`` and the M - 1 that accumulate after it), all with
the same weights, so each update event moves the shadow by ``1 - d**M`` towards them, where M is
the micro-batches per optimizer step on one GPU. In its 32-GPU SD3.5-M recipes (``config/grpo.py``
``pickscore_sd3``, ``general_ocr_sd3``, ``geneval_sd3``, ``pickscore_sd3_fast_nocfg``: 4 sampling
batches per epoch, gradient accumulation 2) M = 2: at the capped decay 0.9 the shadow moves 19%.

Here the EMA steps once per optimizer step (:meth:`EMA.step`, called with the steps done) and an
update event applies ``d**repeat``, the same as ``repeat`` reference updates in a row. The trainer
passes ``ema.repeat``, by default the reference recipe's M = 2, whatever the number of processes.
(Stepping per micro-batch, as before, repeated it micro-batches-per-step times: 96 / P with the
PickScore preset's former batches of 12 in micro-batches of 6 on P GPUs, so the shadow moved about
100% on one GPU and 72% on eight.) One timing difference: the reference may spread an event's
repeats over an epoch boundary, so an export between them sees part of it; here an event is whole.
Shadows are float32 copies taken at start. The EMA weights are what gets exported and evaluated
when the option is on: :meth:`EMA.swapped_in` puts them into the model for a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class EMA:
    """Float32 shadow copies of ``params``, updated on flow_grpo's schedule (see the module)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        decay: float,
        update_every: int,
        repeat: int = 1,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"ema.update_every must be >= 1, got {update_every}")
        if repeat < 1:
            raise ValueError(f"ema.repeat must be >= 1, got {repeat}")
        self.params = list(params)
        self.decay = decay
        self.update_every = update_every
        self.repeat = repeat
        self.shadow = [p.detach().float().clone() for p in self.params]

    def current_decay(self, optimizer_step: int) -> float:
        """The warmed-up decay after ``optimizer_step`` optimizer steps."""
        return min((1 + optimizer_step) / (10 + optimizer_step), self.decay)

    @torch.no_grad()
    def step(self, optimizer_step: int) -> bool:
        """Call once after every optimizer step with the optimizer steps done so far; returns
        whether the shadows were updated (``repeat`` updates towards the current weights)."""
        if (optimizer_step + 1) % self.update_every:
            return False
        weight = 1.0 - self.current_decay(optimizer_step) ** self.repeat
        for shadow, param in zip(self.shadow, self.params):
            shadow.add_(weight * (param.detach().float() - shadow))
        return True

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily replace the parameters by their EMA values."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for shadow, param in zip(self.shadow, self.params):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, param in zip(backup, self.params):
                    param.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state holds a different number of parameters than the model")
        self.shadow = [s.to(p.device).float() for s, p in zip(state["shadow"], self.params)]
