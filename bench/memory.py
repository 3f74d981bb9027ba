"""Per-GPU memory of a preset at full size, COMPUTED (not measured): ``python -m bench.memory``.

    python -m bench.memory --preset flux_dev_pickscore            # one JSON line per preset
    python -m bench.memory --preset all --processes 8 --zero 2
    python -m bench.memory --preset qwen_image_pickscore --zero 3     # its shipped launch
    python -m bench.memory --preset flux_dev_pickscore train.gradient_checkpointing=true

Every model is built on the meta device from its published config (no weights, nothing
downloaded), so parameter counts are exact. From them and the preset's settings it prints, per
GPU: the frozen weights in the dtypes of :func:`rl.models.precision_plan`; the text encoders while
prompts are encoded and after they are released (``rollout.prompt_cache=all`` moves them off the
GPU once the data set is encoded); the LoRA parameters (float32), their gradients and AdamW's two
moments (float32; divided by the process count under ZeRO-2 and -3), the EMA shadow; under ZeRO-3
the transformer's weights and the LoRA are divided too, plus the largest block gathered whole while
it runs (DeepSpeed's prefetch of the next one is not counted); and an ESTIMATE of
the activations kept for backward in one training micro-batch: per transformer block
``34 x tokens x hidden x rows`` bytes at 16-bit (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", eq. 1 without the attention-score term, which
PyTorch's fused attention does not store), ``2 x tokens x hidden x rows`` with gradient
checkpointing. Allocator fragmentation, the reward model, the CUDA context and temporary buffers
are not counted; ``fits_80gb`` leaves them ``headroom_gb`` (8 GB by default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from rl.config import register_resolvers
from rl.families import model_spec
from rl.models import precision_plan

CONF = str(Path(__file__).resolve().parents[1] / "conf")
PRESETS = (
    "sd35m_pickscore",
    "sd35m_fast_nocfg",
    "sd35l_pickscore",
    "flux_dev_pickscore",
    "qwen_image_pickscore",
)
GB = 1e9
# Published configs (transformer/config.json and vae/config.json of each model on the Hugging Face
# hub), e.g. stabilityai/stable-diffusion-3.5-medium:
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
SD35_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SD35_LARGE_TRANSFORMER = dict(
    SD35_MEDIUM_TRANSFORMER,
    num_layers=38,
    num_attention_heads=38,
    caption_projection_dim=2432,
    pos_embed_max_size=192,
    dual_attention_layers=(),
)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, vocab_size=49408)  # fmt: skip
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, projection_dim=1280, vocab_size=49408)  # fmt: skip
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
              feed_forward_proj="gated-gelu")  # fmt: skip
QWEN_IMAGE_TRANSFORMER = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
)
QWEN_IMAGE_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                      attn_scales=[], temperal_downsample=[False, True, True])  # fmt: skip
QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=3584),
)  # fmt: skip
CLIP_TOKENS = 77


def full_size_denoiser(
    family: str, large: bool, device: torch.device | str = "meta", layers: int | None = None
) -> dict[str, torch.nn.Module]:
    """The real model's transformer and VAE, random weights initialised on ``device`` (the meta
    device: shapes only); ``layers`` blocks of each kind instead of the real count (a smoke run)."""
    if family == "qwen_image":
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

        shape, transformer_class = QWEN_IMAGE_TRANSFORMER, QwenImageTransformer2DModel
        vae_class, vae = AutoencoderKLQwenImage, QWEN_IMAGE_VAE
    elif family == "flux":
        shape, transformer_class = FLUX_DEV_TRANSFORMER, FluxTransformer2DModel
        vae_class, vae = AutoencoderKL, dict(SD35_VAE, scaling_factor=0.3611, shift_factor=0.1159)
    else:
        shape = SD35_LARGE_TRANSFORMER if large else SD35_MEDIUM_TRANSFORMER
        transformer_class, vae_class, vae = SD3Transformer2DModel, AutoencoderKL, SD35_VAE
    if layers:
        shape = dict(shape, num_layers=layers)
        if "num_single_layers" in shape:
            shape["num_single_layers"] = layers
    with torch.device(device):
        return {"transformer": transformer_class(**shape), "vae": vae_class(**vae)}


def full_size_modules(
    family: str, large: bool, device: torch.device | str = "meta"
) -> dict[str, torch.nn.Module]:
    """Every component of the real model (:func:`full_size_denoiser` and the text encoders) on
    ``device``."""
    modules = full_size_denoiser(family, large, device)
    with torch.device(device):
        if family == "qwen_image":
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

            config = Qwen2_5_VLConfig(**QWEN25_VL_7B)
            return modules | {"text_encoder": Qwen2_5_VLForConditionalGeneration(config)}
        if family == "flux":
            return modules | {
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL)),
            }
        return modules | {
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
            "text_encoder_3": T5EncoderModel(T5Config(**T5_XXL)),
        }


def text_tokens(family: str, max_sequence_length: int) -> int:
    """Text tokens per prompt that the transformer attends to (SD3 adds CLIP's 77 to T5's)."""
    return max_sequence_length + (CLIP_TOKENS if family == "sd3" else 0)


def lora_parameters(transformer: torch.nn.Module, targets: list[str], rank: int) -> int:
    """LoRA parameters peft adds: rank x (in + out) per Linear its target rule matches."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=list(targets))
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)
    )


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def load_preset(name: str, overrides: list[str] = ()):
    """The composed train config of experiment ``name`` (its model path may stay unset)."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("train", overrides=[f"experiment={name}", *overrides])


def preset_memory(
    name: str,
    processes: int = 8,
    zero: int = 0,
    headroom_gb: float = 8.0,
    overrides: list[str] = (),
) -> dict:
    """The computed per-GPU memory table of preset ``name`` with Hydra ``overrides``
    (gigabytes, 1e9 bytes)."""
    cfg = load_preset(name, overrides)
    spec = model_spec(cfg.model.name)
    family, r, t, lora = spec.family.name, cfg.rollout, cfg.train, cfg.lora
    modules = full_size_modules(family, large="Large" in spec.label)
    plan = precision_plan(t.mixed_precision, cfg.model.dtype)
    transformer = modules["transformer"]
    targets = list(OmegaConf.to_container(lora, resolve=True)["target_modules"])
    trained = lora_parameters(transformer, targets, int(lora.rank))
    if zero not in (0, 2, 3):
        raise ValueError(f"zero must be 0 (DDP), 2 or 3, not {zero}")
    shard = processes if zero else 1  # ZeRO-2 and -3 shard gradients and AdamW's moments
    base = processes if zero == 3 else 1  # ZeRO-3 also shards the weights
    weight_bytes = dtype_bytes(plan.transformer)
    weights = numel(transformer) * weight_bytes // base
    vae = numel(modules["vae"]) * dtype_bytes(plan.vae)
    encoders = sum(
        numel(modules[n]) * dtype_bytes(plan.text_encoders) for n in modules if "text" in n
    )
    rows = int(t.micro_batch_size) * (2 if spec.family.uses_cfg(float(r.guidance_scale)) else 1)
    tokens = (int(r.height) // 16) * (int(r.width) // 16) + text_tokens(
        family, int(r.max_sequence_length)
    )
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    blocks = [
        *transformer.transformer_blocks,
        *getattr(transformer, "single_transformer_blocks", []),
    ]
    act_bytes = 2 if t.mixed_precision in ("bf16", "fp16") else dtype_bytes(plan.transformer)
    per_block = (2 if t.gradient_checkpointing else 34) * tokens * hidden * rows
    activations = len(blocks) * per_block * act_bytes // 2
    gathered = max(numel(b) for b in blocks) * weight_bytes if zero == 3 else 0
    table = {
        "transformer_weights": weights,
        "zero3_gathered_block": gathered,
        "vae_weights": vae,
        "lora_parameters": 4 * trained // base,
        "lora_gradients": 4 * trained // shard,
        "adamw_states": 8 * trained // shard,
        "ema_shadow": 4 * trained if cfg.ema.enabled else 0,
        "activations_estimate": activations,
    }
    steady = sum(table.values())
    return {
        "bench": "memory",
        "computed_not_measured": True,
        "preset": name,
        "overrides": list(overrides),
        "model": cfg.model.name,
        "processes": processes,
        "zero_stage": zero,
        "transformer_parameters": numel(transformer),
        "lora_trained_parameters": trained,
        "weight_dtypes": {k: str(v).removeprefix("torch.") for k, v in vars(plan).items()},
        "per_gpu_gb": {k: round(v / GB, 2) for k, v in table.items()},
        "text_encoders_while_encoding_gb": round(encoders / GB, 2),
        "steady_total_gb": round(steady / GB, 2),
        "peak_if_text_encoders_stay_gb": round((steady + encoders) / GB, 2),
        "fits_80gb": steady / GB + headroom_gb <= 80,
        "fits_80gb_text_encoders_kept": (steady + encoders) / GB + headroom_gb <= 80,
        "headroom_gb": headroom_gb,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", help=f"one of {PRESETS} or 'all'")
    parser.add_argument("--processes", type=int, default=8, help="GPUs (the shards under --zero)")
    parser.add_argument(
        "--zero", type=int, choices=(0, 2, 3), default=0,
        help="DeepSpeed ZeRO stage: 2 shards gradients and AdamW, 3 the weights too",
    )  # fmt: skip
    parser.add_argument("--headroom-gb", type=float, default=8.0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the preset")
    args = parser.parse_args(argv)
    names = args.preset or ["all"]
    names = list(PRESETS) if "all" in names else names
    for name in names:
        table = preset_memory(name, args.processes, args.zero, args.headroom_gb, args.overrides)
        print(json.dumps(table))


if __name__ == "__main__":
    main()
