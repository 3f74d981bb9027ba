"""Speed and numerics of one Flow-GRPO iteration's model work, eager and compiled; ONE JSON line.

    python -m bench.rollout                       # CPU: tiny random SD3, 64 px (about a minute)
    python -m bench.rollout --full-size --resolution 512 --dtype bf16 --device cuda

The same run measures the eager model, then compiles every MM-DiT block (``train.compile``'s
regional compilation, :func:`rl.models.compile_transformer_blocks`) and measures again: the line
holds both (``eager``, ``compiled``) side by side, ``compile_speedup`` (compiled over eager
``iteration_images_per_s``) and how far the compiled rollout is from the eager one with the same
weights and noise (``compiled_vs_eager_max_abs_latent`` / ``..._log_prob``). ``--no-compile``
measures eager only. Measured in each mode, after one warm-up (and compilation) of each part:
* ``rollout_images_per_s``: :func:`rl.rollout.sample` (num_steps SDE steps with CFG, VAE decode);
* ``train_step_s``: one trained denoising step on a ``--train-batch`` chunk with the trainer's LoRA
  (r32/alpha64 on the reference target modules, :func:`rl.lora.make_trainable`): forward through
  :func:`rl.rollout.step_log_prob`, a ratio loss, backward, AdamW step;
* ``outside_transformer_fraction``: share of ``train_step_s`` spent outside the transformer's own
  forward (timed with hooks) and the backward pass;
* ``max_abs_log_ratio``: |log p_train - log p_rollout| at the first trained step before any update,
  and ``claimed_ratio`` = that / the clip range (1e-4): far below 1 means the on-policy ratio
  stays inside the clip range because rollout and training share numerics.
``--full-size`` swaps in a random-weight transformer and VAE shaped exactly like SD3.5-Medium's
(compute depends on shape, not weight values) and random text embeddings of the true shape
(77 CLIP + ``--max-seq`` T5 tokens), since rollouts read embeddings from the prompt cache anyway.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from torch.utils.flop_counter import FlopCounterMode

from rl.lora import LoraSettings, make_trainable
from rl.models import compile_transformer_blocks, resolve_dtype
from rl.rollout import PromptCache, RolloutConfig, predict_velocity, sample, step_log_prob
from rl.tiny import build_tiny_sd3

# stabilityai/stable-diffusion-3.5-medium transformer/config.json and vae/config.json
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
CLIP_TOKENS = 77
CLIP_RANGE = 1e-4
PROMPTS = ["a red cat", "a blue car on a street", "two dogs in a field", "a glass vase"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-size", action="store_true", help="SD3.5-M-shaped random model")
    parser.add_argument("--layers", type=int, default=None, help="override num_layers (smoke)")
    parser.add_argument("--resolution", type=int, default=None, help="px (64 tiny, 512 full)")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per rollout (4 tiny / 9 full size)"
    )
    parser.add_argument("--train-batch", type=int, default=None, help="images per train step")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per rollout")
    parser.add_argument("--guidance", type=float, default=4.5, help="CFG scale (1 = no CFG)")
    parser.add_argument("--sde-kind", choices=("sde", "cps"), default="sde")
    parser.add_argument("--max-seq", type=int, default=128, help="T5 tokens per prompt")
    parser.add_argument("--dtype", default="float32", help="float32 | bf16 (autocast + bf16 base)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager only, no compiled run")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[StableDiffusion3Pipeline, PromptCache, list[str]]:
    """The pipeline on device (tiny, or SD3.5-M-shaped) and a filled prompt cache."""
    torch.manual_seed(args.seed)
    pipe = build_tiny_sd3(args.seed)
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" {i}" for i in range(args.batch)]
    if args.full_size:
        shape = dict(SD35_MEDIUM_TRANSFORMER, num_layers=args.layers or 24)
        with device:  # initialise in place on the accelerator (fast)
            parts = dict(transformer=SD3Transformer2DModel(**shape), vae=AutoencoderKL(**SD35_VAE))
        pipe = StableDiffusion3Pipeline(**{**pipe.components, **parts})
    elif args.layers:
        raise SystemExit("--layers only applies with --full-size")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    cache = PromptCache(pipe, args.max_seq, device)
    if args.full_size:  # shape-true random embeddings: the text encoders never run in a rollout
        config = pipe.transformer.config
        for names in (prompts, [""]):
            tokens, width = CLIP_TOKENS + args.max_seq, config.joint_attention_dim
            embeds = torch.randn(len(names), tokens, width, device=device, dtype=dtype)
            pooled = torch.randn(len(names), config.pooled_projection_dim, device=device)
            cache.add(names, embeds, pooled.to(dtype))
    return pipe, cache, prompts


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


class ForwardTimer:
    """``with timer:`` adds up wall time spent inside ``module``'s forward (device synchronised)."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device, self.seconds, self._start = module, device, 0.0, 0.0

    def __enter__(self) -> ForwardTimer:
        self.seconds = 0.0
        self._hooks = [
            self.module.register_forward_pre_hook(lambda *_: self._begin()),
            self.module.register_forward_hook(lambda *_: self._end()),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()

    def _begin(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _end(self) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


def forward_flops(pipe, cache, prompts, rollout_cfg, device) -> int:
    """FLOPs of one CFG-batched transformer forward for the whole rollout batch."""
    embeds, pooled = cache.encode(prompts)
    neg = cache.negative()
    channels, scale = pipe.transformer.config.in_channels, pipe.vae_scale_factor
    x = torch.randn(
        len(prompts),
        channels,
        rollout_cfg.height // scale,
        rollout_cfg.width // scale,
        device=device,
    )
    t = torch.full((len(prompts),), 500.0, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predict_velocity(pipe.transformer, x, t, embeds, pooled, *neg, rollout_cfg.guidance_scale)
    return counter.get_total_flops()


def measure(
    pipe: StableDiffusion3Pipeline,
    cache: PromptCache,
    prompts: list[str],
    rollout_cfg: RolloutConfig,
    optimizer: torch.optim.Optimizer,
    flops: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Time rollouts and trained steps of the transformer as it is now (eager or compiled)."""
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    transformer = pipe.transformer
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    generator = torch.Generator(device).manual_seed(args.seed)

    def rollout():
        with autocast:
            return sample(pipe, transformer, cache, prompts, rollout_cfg, generator)

    def train_step(batch) -> tuple[float, float]:
        """One trained step; returns (seconds inside the transformer forward+backward, total)."""
        synchronize(device)
        start = time.perf_counter()
        with timer, autocast:
            log_prob, _, _ = step_log_prob(transformer, batch, 0, cache, rollout_cfg)
        ratio = torch.exp(log_prob - batch.old_log_prob(0))
        loss = -(advantages[: len(ratio)] * ratio).mean()
        _, backward_s = timed(loss.backward, device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return timer.seconds + backward_s, time.perf_counter() - start

    advantages = torch.randn(args.train_batch, device=device).sign()
    timer = ForwardTimer(transformer, device)
    warm = rollout()  # warm-up (and compilation) of sampling and training
    train_step(warm.select(slice(0, args.train_batch)))

    rollout_times = []
    for _ in range(args.repeats):
        result, seconds = timed(rollout, device)
        rollout_times.append(seconds)
    rollout_s = min(rollout_times)
    chunk = result.select(slice(0, args.train_batch))
    with torch.no_grad(), autocast:  # before any update: the on-policy log-prob
        train_log_prob, _, _ = step_log_prob(transformer, chunk, 0, cache, rollout_cfg)
    log_ratio = (train_log_prob - chunk.old_log_prob(0)).abs().max().item()
    with torch.no_grad(), timer, autocast:  # forward of the full rollout batch, LoRA unmerged
        step_log_prob(transformer, result, 0, cache, rollout_cfg)
    forward_s = timer.seconds

    steps = [train_step(chunk) for _ in range(args.repeats)]
    inside_s, train_s = min(steps, key=lambda pair: pair[1])
    n_train = rollout_cfg.num_train_steps * args.batch / args.train_batch
    figures = {
        "rollout_s": significant(rollout_s),
        "rollout_images_per_s": significant(args.batch / rollout_s),
        "train_step_s": significant(train_s),
        "outside_transformer_fraction": significant(1 - inside_s / train_s, 3),
        "iteration_images_per_s": significant(args.batch / (rollout_s + n_train * train_s)),
        "transformer_forward_tflops_per_s": significant(flops / forward_s / 1e12),
        "max_abs_log_ratio": log_ratio,
        "claimed_ratio": log_ratio / CLIP_RANGE,
    }
    if device.type == "cuda":
        figures["forward_peak_fraction"] = significant(flops / forward_s / 1e12 / args.peak_tflops)
        figures["peak_memory_gb"] = significant(torch.cuda.max_memory_allocated(device) / 2**30)
    return figures


def fixed_noise_rollout(pipe, cache, prompts, rollout_cfg, args):
    """One rollout with seeded noise, to compare eager and compiled numerics."""
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    generator = torch.Generator(device).manual_seed(args.seed + 1)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return sample(pipe, pipe.transformer, cache, prompts, rollout_cfg, generator)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.resolution = args.resolution or (512 if args.full_size else 64)
    args.batch = args.batch or (9 if args.full_size else 4)  # 9: the reference per GPU
    args.train_batch = args.train_batch or args.batch
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    pipe, cache, prompts = build(args)
    rollout_cfg = RolloutConfig(
        num_steps=args.steps,
        guidance_scale=args.guidance,
        sde_kind=args.sde_kind,
        height=args.resolution,
        width=args.resolution,
        max_sequence_length=args.max_seq,
    )
    transformer = pipe.transformer
    flops = forward_flops(pipe, cache, prompts, rollout_cfg, device)
    params = make_trainable(transformer, LoraSettings())
    optimizer = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    if not args.no_compile:  # what the compiled run starts from, and the rollout it must repeat
        initial = [p.detach().clone() for p in params]
        reference = fixed_noise_rollout(pipe, cache, prompts, rollout_cfg, args)
    eager = measure(pipe, cache, prompts, rollout_cfg, optimizer, flops, args)
    report = {
        "bench": "rollout",
        "model": "sd35_medium_shaped_random" if args.full_size else "tiny",
        "layers": transformer.config.num_layers,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": args.resolution,
        "batch": args.batch,
        "train_batch": args.train_batch,
        "num_steps": args.steps,
        "guidance_scale": args.guidance,
        "sde_kind": args.sde_kind,
        "trained_steps_per_rollout": rollout_cfg.num_train_steps,
        "transformer_forward_tflop": significant(flops / 1e12),
        "clip_range": CLIP_RANGE,
        "eager": eager,
    }
    if not args.no_compile:
        with torch.no_grad():  # the eager run's training changed the LoRA: back to the start
            for param, value in zip(params, initial):
                param.copy_(value)
        compile_transformer_blocks(transformer, args.compile_backend)
        compiled_rollout = fixed_noise_rollout(pipe, cache, prompts, rollout_cfg, args)
        compiled = measure(pipe, cache, prompts, rollout_cfg, optimizer, flops, args)
        report |= {
            "compile_backend": args.compile_backend,
            "compiled": compiled,
            "compile_speedup": significant(
                compiled["iteration_images_per_s"] / eager["iteration_images_per_s"], 3
            ),
            "compile_rollout_speedup": significant(
                compiled["rollout_images_per_s"] / eager["rollout_images_per_s"], 3
            ),
            "compiled_vs_eager_max_abs_latent": float(
                (compiled_rollout.latents - reference.latents).abs().max()
            ),
            "compiled_vs_eager_max_abs_log_prob": float(
                (compiled_rollout.log_probs - reference.log_probs).abs().max()
            ),
        }
    report |= {"torch": torch.__version__, "diffusers": diffusers.__version__}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
