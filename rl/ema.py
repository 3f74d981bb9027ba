"""Exponential moving average of the trained parameters, with flow_grpo's warm-up and cadence.

As ``flow_grpo/ema.py`` (``EMAModuleWrapper``) is used by ``scripts/train_sd3.py`` and
``train_sd3_fast.py`` of yifan123/flow_grpo: :meth:`EMA.step` is called after every training
micro-batch with ``s`` = the number of optimizer steps done so far, and updates the shadows only
when ``(s + 1) % update_every == 0``, as ``ema += (1 - d) * (param - ema)`` with the warmed-up decay
``d = min((1 + s) / (10 + s), decay)``. With several micro-batches per optimizer step the same ``s``
is seen more than once, and every such call updates again (towards the same weights): that is the
reference's behaviour and it is kept. Shadows are float32 copies taken at start. The EMA weights are
what gets exported and evaluated when the option is on: :meth:`EMA.swapped_in` puts them into the
model for the duration of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class EMA:
    """Float32 shadow copies of ``params``, updated on flow_grpo's schedule (see the module)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float, update_every: int):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"ema.update_every must be >= 1, got {update_every}")
        self.params = list(params)
        self.decay = decay
        self.update_every = update_every
        self.shadow = [p.detach().float().clone() for p in self.params]

    def current_decay(self, optimizer_step: int) -> float:
        """The warmed-up decay after ``optimizer_step`` optimizer steps."""
        return min((1 + optimizer_step) / (10 + optimizer_step), self.decay)

    @torch.no_grad()
    def step(self, optimizer_step: int) -> bool:
        """Call after every training micro-batch with the optimizer steps done so far; returns
        whether the shadows were updated."""
        if (optimizer_step + 1) % self.update_every:
            return False
        weight = 1.0 - self.current_decay(optimizer_step)
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
