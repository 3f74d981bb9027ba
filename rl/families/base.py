"""The model-family interface: what the trainer needs to know about one kind of diffusers pipeline.

A family (SD3/SD3.5, FLUX, ...) is one subclass of :class:`ModelFamily` in its own module. Its
members are the handful of places where families differ: which folder layout and pipeline class
a real model has, how prompts become conditioning tensors, how start noise is laid out (packing,
position ids), the velocity at (latents, timestep) with CFG or a guidance embedding, the sigma
schedule (with dynamic shift where the family uses it), VAE decoding, the default LoRA targets and
the tiny random-weight builder. Everything else in ``rl/`` (rollouts, the SDE step and its
log-prob, the loss, LoRA, EMA, checkpoints, distribution) calls these members and never asks which
family it has.

Conditioning is two tensors per prompt, ``embeds`` [B, L, D] (the sequence the transformer
attends to) and ``pooled`` [B, P] (the family's second input: CLIP's pooled vector for SD3 and
FLUX), so that caches, rollouts and checkpoints hold one shape of record for every family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline

WEIGHTS = ("*.safetensors", "*.bin")
CONFIG_AND_WEIGHTS = (("config.json",), WEIGHTS)


class ModelFolderError(FileNotFoundError):
    """A model folder is missing, incomplete or of another family (raised before weights load)."""


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model under accelerate/DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


class ModelFamily:
    """One kind of text-to-image flow-matching pipeline (a subclass per family).

    Class attributes:
        name: the family's short name (``sd3``, ``flux``).
        pipeline_class: the diffusers pipeline of a real model folder.
        transformer_class: the denoiser class (how a bare transformer finds its family).
        layout: subfolder -> files it must hold (any one pattern of each tuple).
        text_encoders: the pipeline attributes that encode prompts (released after caching).
        lora_targets: the reference recipe's LoRA target modules for this family.
        negative_prompt: the CFG negative prompt; None when the family has no CFG branch (a
            guidance-distilled model reads the guidance scale through an embedding instead).
        release_text_encoders: whether the text encoders leave the accelerator between
            encodings by default even when prompts are encoded per epoch (large encoders).
        unused_in_loss: whether some of the LoRA targets never reach the loss (the output of a
            stream that the last block computes and the model drops), so that DDP must look
            for parameters without a gradient in every backward.
    """

    name: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    transformer_class: ClassVar[type[torch.nn.Module]]
    layout: ClassVar[dict[str, tuple[tuple[str, ...], ...]]]
    text_encoders: ClassVar[tuple[str, ...]]
    lora_targets: ClassVar[tuple[str, ...]]
    negative_prompt: ClassVar[str | None] = ""
    release_text_encoders: ClassVar[bool] = False
    unused_in_loss: ClassVar[bool] = False

    # ------------------------------------------------------------------ models
    def build_tiny(self, seed: int = 0, **variant: Any) -> DiffusionPipeline:
        """The tiny random-weight pipeline of this family (float32, CPU, fixed by ``seed``)."""
        raise NotImplementedError

    def missing_components(self, folder: Path) -> list[str]:
        """Everything ``folder`` lacks for this family, as readable entries (empty = complete).

        A folder whose ``model_index.json`` names another pipeline class is refused here, so a
        FLUX folder given to an SD3 model fails in a second, not inside diffusers."""
        index = folder / "model_index.json"
        if not index.is_file():
            missing = ["model_index.json"]
        else:
            try:
                found = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
            except (ValueError, AttributeError):
                found = "an unreadable model_index.json"
            expected = self.pipeline_class.__name__
            if found != expected:
                return [f"a {expected} folder (model_index.json names {found})"]
            missing = []
        for sub, requirements in self.layout.items():
            if not (folder / sub).is_dir():
                missing.append(f"{sub}/")
                continue
            for alternatives in requirements:
                if not any(any((folder / sub).glob(pattern)) for pattern in alternatives):
                    missing.append(f"{sub}/{' or '.join(alternatives)}")
        return missing

    def load(self, folder: Path, dtype: torch.dtype) -> DiffusionPipeline:
        """The pipeline of a checked local folder, every component in ``dtype`` on the CPU."""
        pipe = self.pipeline_class.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """The transformer's repeated blocks (what regional compilation compiles one by one)."""
        return list(transformer.transformer_blocks)

    # ------------------------------------------------------------------ prompts
    def encode(
        self,
        pipe: DiffusionPipeline,
        prompts: list[str],
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeds [B, L, D], pooled [B, P])`` of ``prompts`` through the pipeline's encoders."""
        raise NotImplementedError

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether sampling at ``guidance_scale`` runs a negative (uncond) branch."""
        return self.negative_prompt is not None and guidance_scale > 1

    def pipeline_guidance(self, guidance_scale: float, batch: int) -> dict[str, Any]:
        """The keyword arguments with which the family's diffusers pipeline guides as the
        rollout does at ``guidance_scale`` (for evaluation, which calls the pipeline)."""
        return {"guidance_scale": guidance_scale}

    # ------------------------------------------------------------------ latents and schedule
    def latent_shape(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, ...]:
        """The shape of one sample's start noise as the transformer reads it (packed if so)."""
        raise NotImplementedError

    def prepare_latents(
        self,
        pipe: DiffusionPipeline,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 start noise [B, *latent_shape] drawn as the family's pipeline draws it
        (``latents``, when given, is used as is)."""
        raise NotImplementedError

    def schedule(
        self, pipe: DiffusionPipeline, num_steps: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer timesteps [T] and sigmas [T + 1] as the family's pipeline sets them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ denoiser and decoder
    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        pooled: torch.Tensor,
        neg_embeds: torch.Tensor | None,
        neg_pooled: torch.Tensor | None,
        guidance_scale: float,
        image_size: tuple[int, int],
        detach_uncond: bool = False,
    ) -> torch.Tensor:
        """The float32 (guided) velocity at ``latents`` and ``timestep`` [B]; the negative
        embeddings (batch 1, broadcast) are given exactly when :meth:`uses_cfg` holds.
        ``detach_uncond`` cuts the gradient through the uncond branch (same value), as flow_grpo's
        ``compute_log_prob`` at ac4c86e (``scripts/train_sd3.py`` line 190; 74db691 does not)."""
        raise NotImplementedError

    def decode(
        self, pipe: DiffusionPipeline, latents: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Final latents -> float images [B, 3, H, W] in [0, 1], with the VAE in its own dtype
        even inside an autocast region (a float32 VAE beside fp16 autocast decodes in float32,
        as in the reference)."""
        raise NotImplementedError


class PackedLatentFamily(ModelFamily):
    """A family whose latents are 2x2 patches of the VAE latent packed into tokens [B, N, C]
    (FLUX, Qwen-Image): one shape rule for both."""

    @staticmethod
    def packed_grid(pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of 2x2 latent patches (the unpacked latent is twice that)."""
        factor = pipe.vae_scale_factor * 2
        return height // factor, width // factor

    def latent_shape(self, pipe: DiffusionPipeline, height: int, width: int) -> tuple[int, int]:
        rows, cols = self.packed_grid(pipe, height, width)
        return (rows * cols, pipe.transformer.config.in_channels)

    def schedule(
        self, pipe: DiffusionPipeline, num_steps: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipelines' shifted schedule, its shift set by the number of packed tokens."""
        rows, cols = self.packed_grid(pipe, height, width)
        return shifted_schedule(pipe.scheduler, num_steps, rows * cols, device)


def weight_dtype(transformer: torch.nn.Module) -> torch.dtype:
    """The dtype of the base weights (LoRA's float32 parameters come later in the list)."""
    return next(transformer.parameters()).dtype


def shifted_schedule(
    scheduler: Any, num_steps: int, image_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps [T] and sigmas [T + 1] as the FLUX and Qwen-Image pipelines set them: sigmas
    ``linspace(1, 1/T, T)`` (unless the scheduler makes its own flow sigmas), shifted with ``mu``
    interpolated from ``image_tokens`` between the scheduler's base and max sequence lengths."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    if scheduler.config.get("use_flow_sigmas", False):
        sigmas = None
    mu = calculate_shift(
        image_tokens,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    retrieve_timesteps(scheduler, num_steps, device, sigmas=sigmas, mu=mu)
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def vae_decode(pipe: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Decode unpacked latents with a VAE that has ``scaling_factor`` and ``shift_factor``."""
    vae = pipe.vae
    latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    with torch.autocast(latents.device.type, enabled=False):
        images = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pt").float()
