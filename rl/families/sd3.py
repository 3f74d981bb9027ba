"""Stable Diffusion 3 / 3.5 (Medium and Large): MM-DiT, CLIP-L + CLIP-G + T5, CFG.

What the family does, as ``StableDiffusion3Pipeline`` does it (the rollout of SD3.5-M is bit-equal
to flow_grpo's ``sd3_pipeline_with_logprob``, tests/test_rl_rollout.py):
* prompts: the pipeline's ``encode_prompt`` (CLIP-L and CLIP-G hidden states beside T5's, the
  two pooled vectors concatenated); CFG with the empty negative prompt;
* latents: unpacked [B, 16, H/8, W/8] (the transformer patchifies by itself), drawn by
  ``pipe.prepare_latents``;
* velocity: one forward of [uncond; cond] rows (diffusers' order), combined u + g (c - u) in
  float32;
* schedule: the scheduler's own sigmas (shift 3.0 for SD3.5), with ``mu`` from the image token
  count when its config asks for dynamic shifting;
* decode: latents / scaling_factor + shift_factor through the VAE.
SD3.5-Large is the same family with another transformer config (no dual-attention blocks, RMS
qk-norm, 38 blocks); its tiny stand-in is ``build_tiny_sd3(large=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from rl.families.base import CONFIG_AND_WEIGHTS, ModelFamily, vae_decode, weight_dtype
from rl.tiny import build_tiny_sd3

TOKENIZER = (("tokenizer.json", "vocab.json"),)


class SD3Family(ModelFamily):
    name = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    transformer_class = SD3Transformer2DModel
    layout = {
        "transformer": CONFIG_AND_WEIGHTS,
        "vae": CONFIG_AND_WEIGHTS,
        "text_encoder": CONFIG_AND_WEIGHTS,
        "text_encoder_2": CONFIG_AND_WEIGHTS,
        "text_encoder_3": CONFIG_AND_WEIGHTS,
        "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER,
        "tokenizer_3": (("tokenizer.json", "spiece.model"),),
        "scheduler": (("scheduler_config.json",),),
    }
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    # yifan123/flow_grpo scripts/train_sd3.py (74db691): the joint attention only; the "attn."
    # prefix keeps attn2 of SD3.5-M's dual-attention blocks out (see rl/lora.py)
    lora_targets = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
    )
    negative_prompt = ""
    release_text_encoders = False  # an option (rollout.release_text_encoders=true)

    def build_tiny(self, seed: int = 0, **variant: Any) -> StableDiffusion3Pipeline:
        return build_tiny_sd3(seed=seed, **variant)

    def encode(
        self,
        pipe: StableDiffusion3Pipeline,
        prompts: list[str],
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=prompts,
            prompt_3=prompts,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        return embeds, pooled

    def latent_shape(self, pipe: StableDiffusion3Pipeline, height: int, width: int) -> tuple:
        scale = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels, height // scale, width // scale)

    def prepare_latents(
        self,
        pipe: StableDiffusion3Pipeline,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        channels = pipe.transformer.config.in_channels
        return pipe.prepare_latents(
            batch, channels, height, width, torch.float32, device, generator, latents
        )

    def schedule(
        self,
        pipe: StableDiffusion3Pipeline,
        num_steps: int,
        height: int,
        width: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = pipe.scheduler
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            patch = pipe.transformer.config.patch_size * pipe.vae_scale_factor
            kwargs["mu"] = calculate_shift(
                (height // patch) * (width // patch),
                scheduler.config.base_image_seq_len,
                scheduler.config.max_image_seq_len,
                scheduler.config.base_shift,
                scheduler.config.max_shift,
            )
        scheduler.set_timesteps(num_steps, device=device, **kwargs)
        return scheduler.timesteps.clone(), scheduler.sigmas.clone()

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
        """Latents and embeddings enter in the transformer's weight dtype (float32 latents, fp16
        text embeddings and a float32 transformer under the fp16 layout: float32 in, autocast
        decides the rest)."""
        batch = latents.shape[0]
        dtype = weight_dtype(transformer)
        model_input = latents.to(dtype)
        embeds, pooled = embeds.to(dtype), pooled.to(dtype)
        cfg = self.uses_cfg(guidance_scale)
        if cfg:
            neg_embeds, neg_pooled = neg_embeds.to(dtype), neg_pooled.to(dtype)
            model_input = torch.cat([model_input, model_input])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([neg_embeds.expand(batch, -1, -1), embeds])
            pooled = torch.cat([neg_pooled.expand(batch, -1), pooled])
        velocity = transformer(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0].float()
        if cfg:
            uncond, cond = velocity.chunk(2)
            if detach_uncond:
                uncond = uncond.detach()
            velocity = uncond + guidance_scale * (cond - uncond)
        return velocity

    def decode(
        self,
        pipe: StableDiffusion3Pipeline,
        latents: torch.Tensor,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        return vae_decode(pipe, latents)
