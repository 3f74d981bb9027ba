"""Exponential moving average of the trained parameters (the reference keeps one, off by default).

Every ``update_every`` optimizer steps, ``ema = decay * ema + (1 - decay) * param`` (float32
shadows). The EMA weights are what gets exported and evaluated when the option is on:
:meth:`EMA.swapped_in` puts them into the model for the duration of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class EMA:
    """Float32 shadow copies of ``params``, updated every ``update_every`` optimizer steps."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float, update_every: int):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"ema.update_every must be >= 1, got {update_every}")
        self.params = list(params)
        self.decay = decay
        self.update_every = update_every
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def step(self, optimizer_step: int) -> None:
        """Call after optimizer step number ``optimizer_step`` (counted from 1)."""
        if optimizer_step % self.update_every:
            return
        for shadow, param in zip(self.shadow, self.params):
            shadow.lerp_(param.detach().float(), 1.0 - self.decay)

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
