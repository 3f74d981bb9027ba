"""Qwen-Image: MM-DiT over a Qwen2.5-VL text encoder, true CFG with norm rescaling, 2x2-packed
latents of a video-style VAE normalised by per-channel mean/std.

What the family does, as ``QwenImagePipeline`` and flow_grpo's Qwen-Image trainer
(``scripts/train_qwenimage_edit_plus.py`` at 9dcdc35, the text-to-image config
``config/grpo.py:pickscore_qwenimage``) do it:
* prompts: the pipeline's ``encode_prompt`` (the chat template's system turn dropped, the last
  hidden states of the prompt's tokens); each prompt's embeddings are padded with zeros to
  ``max_sequence_length`` and ``pooled`` holds its token mask (1 = a prompt token), so prompts of
  any length share one cache record shape; the transformer gets the mask, and every batch is
  trimmed to its longest prompt;
* CFG with the negative prompt " " (flow_grpo's), both branches in one forward, combined as
  ``u + g (c - u)`` and rescaled to the conditional prediction's norm per token;
* latents: [B, (H/16)(W/16), 64] packed 2x2 patches; schedule as FLUX (``linspace(1, 1/T, T)``
  shifted by ``mu`` of the token count, with the scheduler's terminal shift);
* decode: unpack to one frame, ``latents * std + mean`` per channel, the VAE, the frame.

Not done: the frozen 20B transformer sharded across GPUs (FSDP / ZeRO-3), which the reference's
Qwen-Image recipe uses; this trainer keeps a whole copy per process.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from rl.families.base import (
    CONFIG_AND_WEIGHTS,
    PackedLatentFamily,
    weight_dtype,
)
from rl.tiny import WORDS


class QwenImageFamily(PackedLatentFamily):
    name = "qwen_image"
    pipeline_class = QwenImagePipeline
    transformer_class = QwenImageTransformer2DModel
    layout = {
        "transformer": CONFIG_AND_WEIGHTS,
        "vae": CONFIG_AND_WEIGHTS,
        "text_encoder": CONFIG_AND_WEIGHTS,
        "tokenizer": (("tokenizer.json", "vocab.json"),),
        "scheduler": (("scheduler_config.json",),),
    }
    text_encoders = ("text_encoder",)
    # yifan123/flow_grpo scripts/train_qwenimage_edit_plus.py (9dcdc35): attention of both
    # streams and both streams' feed-forwards
    lora_targets = (
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "img_mlp.net.0.proj",
        "img_mlp.net.2",
        "txt_mlp.net.0.proj",
        "txt_mlp.net.2",
    )
    negative_prompt = " "  # flow_grpo's negative_prompt=[" "] * len(prompts)
    release_text_encoders = True  # Qwen2.5-VL-7B: 16.6 GB in bf16 that sampling never uses
    # the last block's text stream (its to_add_out and txt_mlp) is computed and dropped
    unused_in_loss = True

    def build_tiny(self, seed: int = 0, **variant: Any) -> QwenImagePipeline:
        return build_tiny_qwen_image(seed=seed, **variant)

    def encode(
        self,
        pipe: QwenImagePipeline,
        prompts: list[str],
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = pipe.encode_prompt(
            prompt=prompts, device=device, max_sequence_length=max_sequence_length
        )
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], device=embeds.device)
        pad = max_sequence_length - embeds.shape[1]
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask.to(embeds.dtype), (0, pad))
        return embeds, mask

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1

    def pipeline_guidance(self, guidance_scale: float, batch: int) -> dict[str, Any]:
        # QwenImagePipeline's guidance_scale feeds a guidance embedding (which Qwen-Image lacks);
        # its CFG is true_cfg_scale, and runs only when a negative prompt is given
        if not self.uses_cfg(guidance_scale):
            return {"true_cfg_scale": 1.0}
        return {"true_cfg_scale": guidance_scale, "negative_prompt": [self.negative_prompt] * batch}

    def prepare_latents(
        self,
        pipe: QwenImagePipeline,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        channels = pipe.transformer.config.in_channels // 4
        return pipe.prepare_latents(
            batch, channels, height, width, torch.float32, device, generator, latents
        )

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
        """``pooled`` is the token mask. With CFG, [uncond; cond] rows in one forward, then
        ``u + g (c - u)`` rescaled per token to the norm of ``c`` (float32)."""
        batch, tokens = latents.shape[:2]
        dtype = weight_dtype(transformer)
        model_input, mask = latents.to(dtype), pooled
        cfg = self.uses_cfg(guidance_scale)
        if cfg:
            model_input = torch.cat([model_input, model_input])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([neg_embeds.expand(batch, -1, -1), embeds])
            mask = torch.cat([neg_pooled.expand(batch, -1), mask])
        length = int(mask.sum(dim=1).max())  # trim the padding no row needs
        embeds, mask = embeds[:, :length].to(dtype), mask[:, :length] > 0
        height, width = image_size
        factor = round(math.sqrt(height * width / tokens))  # pixels per packed patch side
        shapes = [[(1, height // factor, width // factor)]] * model_input.shape[0]
        velocity = transformer(
            hidden_states=model_input,
            timestep=timestep.to(dtype) / 1000,
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=shapes,
            return_dict=False,
        )[0].float()
        if not cfg:
            return velocity
        uncond, cond = velocity.chunk(2)
        if detach_uncond:
            uncond = uncond.detach()
        combined = uncond + guidance_scale * (cond - uncond)
        scale = torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        return combined * scale

    def decode(
        self, pipe: QwenImagePipeline, latents: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        height, width = image_size
        vae = pipe.vae
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents)
        latents = latents / inverse_std + mean  # the pipeline's own rounding
        with torch.autocast(latents.device.type, enabled=False):
            images = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(images, output_type="pt").float()


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE Qwen2 tokenizer over WORDS (space-prefixed whole words, bytes otherwise)
    with the chat-template special tokens."""
    tokens = sorted(ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    for word in sorted(WORDS, key=len, reverse=True):
        symbols = ["Ġ", *word]  # "Ġ" is the byte-level space
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
                tokens.append(left + right)
            left = left + right
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def build_tiny_qwen_image(seed: int = 0) -> QwenImagePipeline:
    """A tiny random-weight Qwen-Image pipeline (float32, CPU, deterministic per ``seed``).

    Qwen-Image's layout in miniature: one MM-DiT block (3-axis RoPE, no guidance embedding), a
    2-layer Qwen2.5-VL text encoder (with a 1-block vision tower, unused for text) and its chat
    template, the causal 3D VAE normalised by per-channel latents mean/std, and Qwen-Image's
    scheduler (dynamic exponential shift up to 8192 tokens, terminal shift 0.02). The VAE
    downsamples by 4, so 32 px is 16 packed tokens; sizes are multiples of 8 px. The template's
    system turn is dropped by its token count under the tiny tokenizer. The global torch RNG is
    left untouched.
    """
    hidden = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_qwen_tokenizer()
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config=dict(
                    vocab_size=len(tokenizer),
                    hidden_size=hidden,
                    intermediate_size=2 * hidden,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    max_position_embeddings=1024,
                    bos_token_id=tokenizer.eos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    rope_parameters={
                        "rope_type": "default",
                        "rope_theta": 10000.0,
                        "mrope_section": [1, 1, 2],
                    },
                ),
                vision_config=dict(
                    depth=1,
                    hidden_size=16,
                    intermediate_size=32,
                    num_heads=2,
                    out_hidden_size=hidden,
                    fullatt_block_indexes=[0],
                ),
            )
        )
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=hidden,
            axes_dims_rope=(4, 6, 6),
        )
        generator = torch.Generator().manual_seed(seed)
        vae = AutoencoderKLQwenImage(
            base_dim=16,
            z_dim=16,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True],
            latents_mean=(torch.randn(16, generator=generator) * 0.5).tolist(),
            latents_std=(1.5 + torch.rand(16, generator=generator) * 2).tolist(),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256,
            base_shift=0.5,
            max_image_seq_len=8192,
            max_shift=0.9,
            shift=1.0,
            shift_terminal=0.02,
            time_shift_type="exponential",
            use_dynamic_shifting=True,
        )
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    system_turn = pipe.prompt_template_encode.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tokenizer(system_turn).input_ids)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
