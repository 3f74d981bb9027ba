"""What the trainer trains: a LoRA adapter on the transformer (default) or all of its weights.

LoRA follows the reference recipe: Gaussian init (so the adapted model starts identical to the
base) on the target modules of the model's family (``rl/families/``; the FLUX and Qwen-Image
presets use rank 64, alpha 128 as flow_grpo's scripts do). For SD3 (yifan123/flow_grpo
``scripts/train_sd3.py``): rank 32, alpha 64, on the joint-attention
projections of every MM-DiT block, named ``attn.to_q`` etc. The ``attn.`` prefix matters: peft
matches a bare ``to_q`` against every module path ending in it, which in SD3.5-Medium's
dual-attention (MMDiT-X) blocks also adapts the second, image-only attention ``attn2`` (243
instead of 191 adapted layers, about 27% more LoRA parameters); that wider set
(:data:`ALL_ATTENTION_TARGET_MODULES`) stays available as an option. The adapter is
added with diffusers' own ``add_adapter`` so the transformer keeps its class, the KL reference is
the same module with the adapter switched off, and the export is a
``pytorch_lora_weights.safetensors`` that the family's pipeline (``StableDiffusion3Pipeline``,
``FluxPipeline``, ``QwenImagePipeline``) reads with ``load_lora_weights(dir)`` (alpha travels in
the adapter metadata, so the loaded scale matches the trained one).
Full fine-tuning keeps a frozen copy of the original transformer as the reference instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from rl.families import SD3, family_of

# The reference's list for SD3 (scripts/train_sd3.py of yifan123/flow_grpo): the joint attention
# only. Each family declares its own (rl/families/); the config's default is the model's family's.
TARGET_MODULES = SD3.lora_targets
# Bare names also adapt attn2 of dual-attention blocks (option: lora.target_modules=[to_q, ...]).
ALL_ATTENTION_TARGET_MODULES = tuple(name.removeprefix("attn.") for name in TARGET_MODULES)
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; ``full_finetune`` trains every transformer weight instead."""

    rank: int = 32
    alpha: float = 64.0
    target_modules: list[str] = field(default_factory=lambda: list(TARGET_MODULES))
    full_finetune: bool = False


def make_trainable(
    transformer: torch.nn.Module, settings: LoraSettings
) -> list[torch.nn.Parameter]:
    """Freeze the base, add the adapter (or unfreeze all); return the trained parameters (fp32).

    Trained parameters are float32 whatever the base dtype, so a bf16 base model still gets
    full-precision updates under mixed precision.
    """
    if settings.full_finetune:
        transformer.requires_grad_(True)
    else:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                init_lora_weights="gaussian",
                target_modules=list(settings.target_modules),
            )
        )
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


class ReferencePolicy:
    """The KL reference model: the transformer with its adapter off, or a frozen copy.

    ``with reference.active() as model:`` yields the module to run the reference forward with.
    """

    def __init__(self, transformer: torch.nn.Module, settings: LoraSettings) -> None:
        self.transformer = transformer
        self.frozen = None
        if settings.full_finetune:
            self.frozen = copy.deepcopy(transformer).requires_grad_(False).eval()

    @contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        if self.frozen is not None:
            yield self.frozen
            return
        self.transformer.disable_adapters()
        try:
            yield self.transformer
        finally:
            self.transformer.enable_adapters()


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's key format (what ``save_lora_weights`` expects)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def load_lora_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by :func:`lora_state_dict` (every key must match)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"LoRA state has keys the model lacks: {unexpected[:5]}")


def export_lora(
    transformer: torch.nn.Module,
    pipe: DiffusionPipeline,
    out_dir: Path,
    base_model: str,
    reward: str,
    epoch: int,
    settings: LoraSettings,
) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (in the format that ``pipe``'s class reads with
    ``load_lora_weights``) and a model card ``README.md`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline_class = family_of(pipe).pipeline_class
    pipeline_class.save_lora_weights(
        out_dir,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    (out_dir / "README.md").write_text(
        model_card(base_model, reward, epoch, settings, pipeline_class.__name__), encoding="utf-8"
    )
    return out_dir / LORA_WEIGHTS_NAME


def model_card(
    base_model: str,
    reward: str,
    epoch: int,
    settings: LoraSettings,
    pipeline: str = "StableDiffusion3Pipeline",
) -> str:
    """A short model card: what was trained, how, and how to load it with ``pipeline``."""
    targets = ", ".join(settings.target_modules)
    return f"""---
library_name: diffusers
base_model: {base_model}
tags: [lora, text-to-image, flow-grpo]
---
# Flow-GRPO LoRA for {base_model}

A LoRA adapter (rank {settings.rank}, alpha {settings.alpha:g}; modules: {targets}) trained with
Flow-GRPO online reinforcement learning against the reward `{reward}` for {epoch} epochs, by
`python -m rl.train` of autorubric-rl.

## Use

```python
from diffusers import {pipeline}

pipe = {pipeline}.from_pretrained("<local {base_model} folder>")
pipe.load_lora_weights("<this folder>", weight_name="{LORA_WEIGHTS_NAME}")
image = pipe("a photo of a red apple").images[0]
```

Rewards can be hacked: look at samples, not only at the reward curve.
"""


def base_model_name(model_cfg: Mapping) -> str:
    """A readable name of the base model for the card (its path when it has one)."""
    return str(model_cfg.get("path") or model_cfg.get("name"))
