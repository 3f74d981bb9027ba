"""What every official-side parity script shares. These scripts run inside the virtual environment
of an official package (built by ``tests/parity/make_envs.sh``), never in the project's own, so
they import nothing from the project: they read a JSON spec written by the test, build the official
model with seeded random weights, save it in the released checkpoint's layout, score with the
official function, and write the scores back as JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch


def read_spec() -> dict[str, Any]:
    """The JSON spec whose path is the script's only argument."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} SPEC.json")
    return json.loads(Path(sys.argv[1]).read_text())


def write_result(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """Write ``result`` to the spec's ``result`` path (the test reads it)."""
    Path(spec["result"]).write_text(json.dumps(result, indent=1))


def randomize(module: torch.nn.Module, seed: int, keep: tuple[str, ...] = ()) -> None:
    """Seeded random values for every parameter (names in ``keep`` untouched).

    Norm weights become ``1 + 0.1 * N(0, 1)`` and every other tensor ``N(0, 1) / sqrt(fan_in)``
    (biases and vectors: ``0.05 * N(0, 1)``), so no layer is an identity and a swapped or
    missing tensor shows in the scores, while activations stay in a sane range.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in keep:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(tag in name for tag in ("norm", "ln_", "LayerNorm"))
            if param.ndim == 1 and is_norm and leaf == "weight":
                value = 1.0 + 0.1 * noise
            elif param.ndim <= 1:
                value = 0.05 * noise
            else:
                value = noise / math.sqrt(math.prod(param.shape[1:]))
            param.copy_(value.to(param.dtype))
