"""FLUX.1-dev: guidance-distilled MM-DiT with single-stream blocks, CLIP-L pooled + T5, 2x2 packed
latents, dynamic shift.

What the family does, as ``FluxPipeline`` and flow_grpo's FLUX sampler
(``flow_grpo/diffusers_patch/flux_pipeline_with_logprob.py``, used by ``scripts/train_flux.py`` at
74db691) do it:
* prompts: the pipeline's ``encode_prompt``: T5 hidden states (``embeds``) and CLIP-L's pooled
  output (``pooled``); text position ids are zeros;
* no CFG branch: the guidance scale enters through the transformer's guidance embedding (a
  ``[B]`` tensor of the scale), one forward per step;
* latents: 16 channels at 1/8 resolution, packed into 2x2 patches, [B, (H/16)(W/16), 64], with
  image position ids (row, column) per patch;
* schedule: sigmas ``linspace(1, 1/T, T)`` shifted with ``mu`` from the packed sequence length
  (``calculate_shift``: 0.5 at 256 tokens to 1.15 at 4096), the transformer reading t / 1000;
* decode: unpack, then latents / scaling_factor + shift_factor through the VAE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from rl.families.base import (
    CONFIG_AND_WEIGHTS,
    PackedLatentFamily,
    unwrap,
    vae_decode,
    weight_dtype,
)
from rl.tiny import (
    CLIP_MAX_LENGTH,
    build_clip_tokenizer,
    build_t5_encoder,
    build_t5_tokenizer,
    build_tiny_vae,
)


class FluxFamily(PackedLatentFamily):
    name = "flux"
    pipeline_class = FluxPipeline
    transformer_class = FluxTransformer2DModel
    layout = {
        "transformer": CONFIG_AND_WEIGHTS,
        "vae": CONFIG_AND_WEIGHTS,
        "text_encoder": CONFIG_AND_WEIGHTS,
        "text_encoder_2": CONFIG_AND_WEIGHTS,
        "tokenizer": (("tokenizer.json", "vocab.json"),),
        "tokenizer_2": (("tokenizer.json", "spiece.model"),),
        "scheduler": (("scheduler_config.json",),),
    }
    text_encoders = ("text_encoder", "text_encoder_2")
    # yifan123/flow_grpo scripts/train_flux.py (74db691): attention of both stream kinds and the
    # feed-forwards of the double-stream blocks
    lora_targets = (
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )
    negative_prompt = None  # guidance-distilled: the scale is an input, not a second branch
    release_text_encoders = True  # T5-XXL + CLIP-L: 9.5 GB in bf16 that sampling never uses

    def build_tiny(self, seed: int = 0, **variant: Any) -> FluxPipeline:
        return build_tiny_flux(seed=seed, **variant)

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def encode(
        self,
        pipe: FluxPipeline,
        prompts: list[str],
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=prompts,
            device=device,
            max_sequence_length=max_sequence_length,
        )
        return embeds, pooled

    def prepare_latents(
        self,
        pipe: FluxPipeline,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        channels = pipe.transformer.config.in_channels // 4
        packed, _ = pipe.prepare_latents(
            batch, channels, height, width, torch.float32, device, generator, latents
        )
        return packed

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
        """One forward; the guidance scale goes in as the guidance embedding's input, float32
        (no uncond branch, so ``detach_uncond`` changes nothing)."""
        batch, tokens, device = latents.shape[0], latents.shape[1], latents.device
        dtype = weight_dtype(transformer)
        guidance = None
        if unwrap(transformer).config.guidance_embeds:
            guidance = torch.full([batch], guidance_scale, device=device, dtype=torch.float32)
        height, width = image_size
        factor = round(math.sqrt(height * width / tokens))  # pixels per packed patch side
        image_ids = FluxPipeline._prepare_latent_image_ids(
            batch, height // factor, width // factor, device, dtype
        )
        text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=timestep.to(dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0].float()

    def decode(
        self, pipe: FluxPipeline, latents: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        height, width = image_size
        return vae_decode(pipe, pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor))


def build_tiny_flux(seed: int = 0) -> FluxPipeline:
    """A tiny random-weight FLUX.1-dev pipeline (float32, CPU, deterministic per ``seed``).

    FLUX.1-dev's layout in miniature: one double-stream and one single-stream block with a
    guidance embedding and 3-axis RoPE, 16 latent channels packed 2x2 (64 transformer channels),
    FLUX's VAE shift/scaling factors (0.1159 / 0.3611), a CLIP-L stand-in whose pooled output is
    the pooled projection and a T5 encoder, and the dynamic-shift scheduler of FLUX.1-dev. The
    VAE downsamples by 4, so 32 px is an 8x8 latent and 16 packed tokens; sizes are multiples of
    8 px. The global torch RNG is left untouched.
    """
    clip_dim, t5_dim, heads, head_dim = 32, 48, 2, 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=clip_dim,
                intermediate_size=2 * clip_dim,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=CLIP_MAX_LENGTH,
                hidden_act="quick_gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = build_t5_encoder(tokenizer_2, t5_dim)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=head_dim,
            num_attention_heads=heads,
            joint_attention_dim=t5_dim,
            pooled_projection_dim=clip_dim,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        vae = build_tiny_vae(sample_size=32, scaling_factor=0.3611, shift_factor=0.1159)
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
