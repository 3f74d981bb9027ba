"""Speed and numerics of one Flow-GRPO iteration's model work, eager and compiled; ONE JSON line.

    python -m bench.rollout                       # CPU: tiny random SD3, 64 px (about a minute)
    python -m bench.rollout --full-size --resolution 512 --dtype bf16 --device cuda
    python -m bench.rollout --model flux_dev --full-size --dtype bf16 --device cuda --no-compile

``--model`` picks the family and size (``sd35_medium``, the default, ``sd35_large``, ``flux_dev``,
``qwen_image``; :mod:`rl.families`): its tiny random pipeline, or with ``--full-size`` its
real-shaped one. Guidance, ``--max-seq``, the full-size per-GPU batches, the LoRA rank and
gradient checkpointing default to the model's preset (:data:`PRESETS`; the JSON names
it and reports each).
The same run measures the eager model, then compiles every transformer block (``train.compile``'s
regional compilation, :func:`rl.models.compile_transformer_blocks`) and measures again: the line
holds both (``eager``, ``compiled``) side by side, ``compile_speedup`` (compiled over eager
``iteration_images_per_s``) and how far the compiled rollout is from the eager one with the same
weights and noise (``compiled_vs_eager_max_abs_latent`` / ``..._log_prob``). ``--no-compile``
measures eager only. Measured in each mode, after one warm-up (and compilation) of each part:
* ``rollout_images_per_s``: :func:`rl.rollout.sample` (num_steps SDE steps with the family's
  guidance, VAE decode);
* ``train_step_s``: one trained denoising step on a ``--train-batch`` chunk with the trainer's LoRA
  (the preset's rank on the family's target modules, :func:`rl.lora.make_trainable`): forward
  through :func:`rl.rollout.step_log_prob`, a ratio loss, backward, AdamW step;
* ``outside_transformer_fraction``: share of ``train_step_s`` spent outside the transformer's own
  forward (timed with hooks) and the backward pass;
* ``max_abs_log_ratio``: |log p_train - log p_rollout| at the first trained step before any update,
  and ``claimed_ratio`` = that / the clip range (1e-4): far below 1 means the on-policy ratio
  stays inside the clip range because rollout and training share numerics.
``--full-size`` swaps in a random-weight transformer and VAE shaped exactly like the model's
(:func:`bench.memory.full_size_denoiser`; compute depends on shape, not weight values) and random
text embeddings of the family's true shapes (SD3: 77 CLIP + ``--max-seq`` T5 tokens; FLUX and
Qwen-Image: ``--max-seq`` tokens, Qwen-Image's token mask all ones), with the CFG negative where
the family has one, since rollouts read embeddings from the prompt cache anyway.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline
from torch.utils.flop_counter import FlopCounterMode

from bench.memory import full_size_denoiser, load_preset, text_tokens
from rl.families import MODELS, QWEN_IMAGE, ModelFamily, family_of, model_spec
from rl.lora import LoraSettings, make_trainable
from rl.models import compile_transformer_blocks, resolve_dtype
from rl.rollout import PromptCache, RolloutConfig, predict_velocity, sample, step_log_prob

# the preset (flow_grpo's; Flow-Factory's for SD3.5-L) whose rollout guidance, sequence length,
# per-GPU batches, LoRA rank and gradient checkpointing are each model's defaults here
PRESETS = {
    "sd35_medium": "sd35m_pickscore",
    "sd35_large": "sd35l_pickscore",
    "flux_dev": "flux_dev_pickscore",
    "qwen_image": "qwen_image_pickscore",
}
CLIP_RANGE = 1e-4
PROMPTS = ["a red cat", "a blue car on a street", "two dogs in a field", "a glass vase"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=tuple(PRESETS), default="sd35_medium", help="tiny without --full-size"
    )
    parser.add_argument("--full-size", action="store_true", help="real-shaped random model")
    parser.add_argument("--layers", type=int, default=None, help="blocks of each kind (smoke)")
    parser.add_argument("--resolution", type=int, default=None, help="px (64 tiny, 512 full)")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per rollout (4 tiny / preset's full size)"
    )
    parser.add_argument("--train-batch", type=int, default=None, help="images per train step")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per rollout")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (preset's)")
    parser.add_argument("--sde-kind", choices=("sde", "cps"), default="sde")
    parser.add_argument("--max-seq", type=int, default=None, help="text tokens (preset's)")
    parser.add_argument("--dtype", default="float32", help="float32 | bf16 (autocast + bf16 base)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager only, no compiled run")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def tiny_name(model: str) -> str:
    """The ``model.name`` of the tiny stand-in of ``model`` (same label in rl.families.MODELS)."""
    label = model_spec(model).label
    return next(n for n, s in MODELS.items() if s.tiny is not None and s.label == label)


def random_conditioning(
    pipe: DiffusionPipeline, count: int, max_seq: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(embeds, pooled)`` of the family's true shapes for ``count`` prompts: the text
    tokens x joint_attention_dim, and the pooled projection (Qwen-Image: the token mask, ones)."""
    family, config = family_of(pipe), pipe.transformer.config
    tokens = text_tokens(family.name, max_seq)
    embeds = torch.randn(count, tokens, config.joint_attention_dim, device=device, dtype=dtype)
    if family is QWEN_IMAGE:
        return embeds, torch.ones(count, tokens, device=device, dtype=dtype)
    pooled = torch.randn(count, config.pooled_projection_dim, device=device)
    return embeds, pooled.to(dtype)


def build(args: argparse.Namespace) -> tuple[DiffusionPipeline, PromptCache, list[str]]:
    """The pipeline on device (the family's tiny one, or its real-shaped transformer and VAE)
    and a filled prompt cache."""
    torch.manual_seed(args.seed)
    spec = model_spec(tiny_name(args.model))
    family: ModelFamily = spec.family
    pipe = family.build_tiny(args.seed, **spec.tiny)
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" {i}" for i in range(args.batch)]
    if args.full_size:  # initialised in place on the accelerator (fast)
        large = "Large" in spec.label
        parts = full_size_denoiser(family.name, large, device, args.layers)
        pipe = family.pipeline_class(**{**pipe.components, **parts})
    elif args.layers:
        raise SystemExit("--layers only applies with --full-size")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    cache = PromptCache(pipe, args.max_seq, device)
    if args.full_size:  # shape-true random embeddings: the text encoders never run in a rollout
        for names in filter(None, (prompts, cache.negative_prompts(args.guidance))):
            cache.add(names, *random_conditioning(pipe, len(names), args.max_seq, device, dtype))
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


def forward_flops(
    pipe: DiffusionPipeline,
    cache: PromptCache,
    prompts: list[str],
    rollout_cfg: RolloutConfig,
    device: torch.device,
) -> int:
    """FLOPs of one (CFG-batched) transformer forward for the whole rollout batch."""
    family, size = family_of(pipe), (rollout_cfg.height, rollout_cfg.width)
    embeds, pooled = cache.encode(prompts)
    neg = cache.negative() if family.uses_cfg(rollout_cfg.guidance_scale) else (None, None)
    x = torch.randn(len(prompts), *family.latent_shape(pipe, *size), device=device)
    t = torch.full((len(prompts),), 500.0, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        predict_velocity(
            pipe.transformer, x, t, embeds, pooled, *neg, rollout_cfg.guidance_scale, size
        )
    return counter.get_total_flops()


def measure(
    pipe: DiffusionPipeline,
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
    preset = load_preset(PRESETS[args.model])
    rollout, train = preset.rollout, preset.train
    args.resolution = args.resolution or (512 if args.full_size else 64)
    args.guidance = float(rollout.guidance_scale) if args.guidance is None else args.guidance
    args.max_seq = args.max_seq or int(rollout.max_sequence_length)
    args.batch = args.batch or (int(train.batch_size) if args.full_size else 4)  # per GPU
    args.train_batch = args.train_batch or min(int(train.micro_batch_size), args.batch)
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
    family, lora = family_of(pipe), preset.lora
    settings = LoraSettings(int(lora.rank), float(lora.alpha), list(family.lora_targets))
    params = make_trainable(transformer, settings)
    if train.gradient_checkpointing:  # as the preset trains (what makes its batch fit)
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    if not args.no_compile:  # what the compiled run starts from, and the rollout it must repeat
        initial = [p.detach().clone() for p in params]
        reference = fixed_noise_rollout(pipe, cache, prompts, rollout_cfg, args)
    layers = {"layers": transformer.config.num_layers}
    if "num_single_layers" in transformer.config:  # FLUX: double- and single-stream blocks
        layers["single_layers"] = transformer.config.num_single_layers
    eager = measure(pipe, cache, prompts, rollout_cfg, optimizer, flops, args)
    report = {
        "bench": "rollout",
        "model": f"{args.model}_shaped_random" if args.full_size else tiny_name(args.model),
        "preset": PRESETS[args.model],
        **layers,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": args.resolution,
        "batch": args.batch,
        "train_batch": args.train_batch,
        "num_steps": args.steps,
        "guidance_scale": args.guidance,
        "cfg": family.uses_cfg(args.guidance),
        "max_sequence_length": args.max_seq,
        "lora_rank": settings.rank,
        "gradient_checkpointing": bool(train.gradient_checkpointing),
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
