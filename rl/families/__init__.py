"""The model families and the ``model.name`` values that pick them.

Each ``model.name`` is one family plus either a local folder (a real model: ``model.path``) or a
tiny random-weight variant built in-process. :func:`family_of` finds the family of a built
pipeline or transformer, which is how the rest of ``rl/`` reaches the family's members without
naming it. Adding a family: one module beside ``sd3.py``, ``flux.py`` and ``qwen_image.py``, its
entries in :data:`MODELS`, a ``conf/model/`` file per name, and its parity test (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rl.families.base import ModelFamily, ModelFolderError, unwrap
from rl.families.flux import FluxFamily
from rl.families.qwen_image import QwenImageFamily
from rl.families.sd3 import SD3Family

FAMILIES: tuple[ModelFamily, ...] = (SD3Family(), FluxFamily(), QwenImageFamily())
SD3, FLUX, QWEN_IMAGE = FAMILIES


@dataclass(frozen=True)
class ModelSpec:
    """What one ``model.name`` means: its family, and for a tiny model the builder's options."""

    family: ModelFamily
    label: str  # the real model it is or stands in for
    tiny: dict[str, Any] | None = field(default=None)  # None: a real folder at model.path


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(SD3, "SD3.5-Medium", tiny={}),
    "sd35_medium": ModelSpec(SD3, "SD3.5-Medium"),
    "tiny_sd35_large": ModelSpec(SD3, "SD3.5-Large", tiny={"large": True}),
    "sd35_large": ModelSpec(SD3, "SD3.5-Large"),
    "tiny_flux": ModelSpec(FLUX, "FLUX.1-dev", tiny={}),
    "flux_dev": ModelSpec(FLUX, "FLUX.1-dev"),
    "tiny_qwen_image": ModelSpec(QWEN_IMAGE, "Qwen-Image", tiny={}),
    "qwen_image": ModelSpec(QWEN_IMAGE, "Qwen-Image"),
}


def model_spec(name: Any) -> ModelSpec:
    """The spec of ``model.name``; ValueError naming the known names otherwise."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; use one of {', '.join(MODELS)}")
    return MODELS[name]


def family_of(obj: Any) -> ModelFamily:
    """The family of a pipeline, or of a transformer (possibly wrapped by accelerate, DDP or
    torch.compile)."""
    if isinstance(obj, torch.nn.Module):
        obj = unwrap(obj)
    for family in FAMILIES:
        if isinstance(obj, (family.pipeline_class, family.transformer_class)):
            return family
    raise TypeError(f"{type(obj).__name__} belongs to no model family of rl.families")


def lora_targets(model_name: str) -> list[str]:
    """The family's default LoRA target modules for ``model.name`` (the ``rl_lora_targets``
    config resolver)."""
    return list(model_spec(model_name).family.lora_targets)


__all__ = [
    "FAMILIES",
    "MODELS",
    "ModelFamily",
    "ModelFolderError",
    "ModelSpec",
    "family_of",
    "lora_targets",
    "model_spec",
]
