"""Speed of the local VLM judge: one forward per (image, rubric) against shared-prefix scoring.

    python -m bench.judge                                   # CPU, small random Qwen3-VL, ~1 min
    python -m bench.judge --full-size --device cuda --dtype bf16 --image-size 512 --images 16 \
        --out bench/results/judge_gpu.jsonl

Scores ``images x rubrics`` yes/no questions with a random-weight Qwen-VL judge in each mode of
:class:`rewards.judges.transformers_judge.TransformersJudge` (``none``: every (image, rubric) is
its own full prompt, batched; ``kv_cache`` and ``packed``: the image + prompt prefix is run once per
image). Compute cost depends on shapes, not weight values, so random weights time honestly;
``--full-size`` builds the Qwen3-VL-8B shapes from a config (nothing is downloaded). The prompt is
a generation prompt of about ``--prompt-tokens`` tokens and questions of about
``--question-tokens`` tokens, as in rubric scoring. Each mode runs once to warm up, then
``--repeats`` times; the median time counts. The shared-prefix answers are checked against the
one-forward-per-question answers (``max_abs_diff``). Time per call is split in three phases
(medians over the repeats): ``<mode>_forward_ms`` inside the model's forward,
``<mode>_device_prep_ms`` in the judge's device-side preparation outside the forward (pixel
preprocessing, packed masks, the kv_cache copies: kernels on a GPU, CPU time on the CPU) and
``<mode>_host_ms``, everything else
(grouping, fingerprints, tokenizing, positions, layouts, reading the answers).
``<mode>_outside_forward_ms`` is host + device prep, what the first version of this benchmark
called ``host_ms``. On CUDA the device is synchronised at each phase's start and end.

Prints one JSON line, last: scores/s and the phase times per mode; when ``none`` runs,
``speedup_<mode>`` = naive time / that mode's time and ``speedup`` = naive time / the faster
shared-prefix mode's time (named in ``best_shared_mode``); the token counts that set the ideal
speedup N (V + P + q) / (V + P + N q) (N rubrics, P prefix and q question tokens, V the vision
tower's cost in token equivalents).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewards.images import to_pil
from rewards.judges import image_prep, prefix_scoring
from rewards.judges.base import JudgeItem
from rewards.judges.prefix_scoring import ChatPrompt
from rewards.judges.tiny_vlm import SIZES, build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge, parse_dtype

MODES = ("none", "kv_cache", "packed")

# Words the locally trained tokenizer knows as whole tokens, so token counts stay realistic.
_WORDS = (
    "a photo of the cat dog sitting on sofa red apple wooden table sky blue watercolour landscape "
    "portrait old man main subject colours vivid lighting natural text image two people left right "
    "top bottom background foreground sharp well composed"
).split()


def text_of_tokens(processor, n_tokens: int, rng: np.random.Generator, start: str, end: str) -> str:
    """``start`` + random known words + ``end``, about ``n_tokens`` tokens in all."""
    words = [start]
    while len(processor.tokenizer(" ".join(words) + end)["input_ids"]) < n_tokens:
        words.append(str(rng.choice(_WORDS)))
    return " ".join(words) + end


def make_items(processor, args: argparse.Namespace) -> list[JudgeItem]:
    """``images x rubrics`` items, image-major as the rubric reward makes them. The images are
    rows of one uint8 tensor batch on ``--device`` (what the reward hands the judge when the
    trainer passes its decoded batch) or, with ``--input pil``, the same pixels as PIL images."""
    rng = np.random.default_rng(0)
    size = (args.image_size, args.image_size)
    pixels = rng.integers(0, 256, (args.images, *size, 3), dtype=np.uint8)
    if args.input == "pil":
        images = [Image.fromarray(array) for array in pixels]
    else:
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        images = list(batch.to(args.device))
    prompts = [
        text_of_tokens(processor, args.prompt_tokens, rng, "A photo of", ".") for _ in images
    ]
    rubrics = [
        text_of_tokens(processor, args.question_tokens, rng, "Is the", "?")
        for _ in range(args.rubrics)
    ]
    return [JudgeItem(im, p, r) for im, p in zip(images, prompts) for r in rubrics]


# Work the judge does on its device outside the model forward (pixels, masks, cache copies): on a
# GPU it is queued kernels, on the CPU it is CPU time, so it is reported apart from host_ms.
DEVICE_PREP = (
    (image_prep.DeviceImageProcessor, "__call__"),
    (prefix_scoring, "block_attention_mask"),
    (prefix_scoring, "repeated_cache"),
)


class PhaseTimer:
    """Wall time on the calling thread spent inside the model's forward (outermost call only:
    the model, its inner decoder model, its output projection) and inside the device-side
    preparation functions of :data:`DEVICE_PREP`."""

    def __init__(self, model: torch.nn.Module, sync) -> None:
        self.seconds = {"forward": 0.0, "device_prep": 0.0}
        self._depth = {"forward": 0, "device_prep": 0}
        self._start = {"forward": 0.0, "device_prep": 0.0}
        self._sync = sync
        self._thread = threading.get_ident()
        modules = {id(m): m for m in (model, getattr(model, "model", None))}
        modules[id(model.get_output_embeddings())] = model.get_output_embeddings()
        self._modules = [m for m in modules.values() if m is not None]

    def _enter(self, phase: str) -> None:
        if threading.get_ident() != self._thread:
            return
        if self._depth[phase] == 0:
            self._sync()
            self._start[phase] = time.perf_counter()
        self._depth[phase] += 1

    def _leave(self, phase: str) -> None:
        if threading.get_ident() != self._thread:
            return
        self._depth[phase] -= 1
        if self._depth[phase] == 0:
            self._sync()
            self.seconds[phase] += time.perf_counter() - self._start[phase]

    def _timed(self, function):
        def wrapper(*args, **kwargs):
            self._enter("device_prep")
            try:
                return function(*args, **kwargs)
            finally:
                self._leave("device_prep")

        return wrapper

    @contextmanager
    def hooked(self):
        handles = []
        for module in self._modules:
            handles.append(module.register_forward_pre_hook(lambda *_: self._enter("forward")))
            handles.append(
                module.register_forward_hook(lambda *_: self._leave("forward"), always_call=True)
            )
        originals = [(owner, name, getattr(owner, name)) for owner, name in DEVICE_PREP]
        for owner, name, function in originals:
            setattr(owner, name, self._timed(function))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for owner, name, function in originals:
                setattr(owner, name, function)


def time_modes(judges: dict[str, TransformersJudge], items: list[JudgeItem], repeats: int):
    """Per mode: median seconds per call, median seconds per call in each phase (``forward``,
    ``device_prep``, ``host`` = the rest, ``outside_forward`` = host + device prep) and the last
    probabilities.

    The modes take turns within each repeat, so a machine whose load drifts slows all of them
    alike and the ratios stay fair.
    """
    cuda = any(j.device.type == "cuda" for j in judges.values())
    sync = torch.cuda.synchronize if cuda else lambda: None
    times: dict[str, list[float]] = {mode: [] for mode in judges}
    phases: dict[str, list[dict[str, float]]] = {mode: [] for mode in judges}
    probs: dict[str, torch.Tensor] = {}
    for judge in judges.values():
        judge.yes_prob(items)  # warm-up
    for _ in range(repeats):
        for mode, judge in judges.items():
            timer = PhaseTimer(judge.model, sync)
            with timer.hooked():
                sync()
                start = time.perf_counter()
                probs[mode] = judge.yes_prob(items).probs
                sync()
                elapsed = time.perf_counter() - start
            times[mode].append(elapsed)
            inside = timer.seconds
            phases[mode].append(
                {
                    **inside,
                    "host": elapsed - inside["forward"] - inside["device_prep"],
                    "outside_forward": elapsed - inside["forward"],
                }
            )
    median = {mode: statistics.median(t) for mode, t in times.items()}
    phase_median = {
        mode: {k: statistics.median(p[k] for p in runs) for k in runs[0]}
        for mode, runs in phases.items()
    }
    return median, phase_median, probs


def token_counts(processor, item: JudgeItem) -> dict[str, int]:
    prompt = ChatPrompt(processor)
    image = item.image if isinstance(item.image, Image.Image) else to_pil(item.image[None])[0]
    prefix = processor(images=[image], text=[prompt.prefix_text(item.context)])
    merge = processor.image_processor.merge_size
    image_tokens = int(np.prod(prefix["image_grid_thw"][0])) // merge**2
    return {
        "image_tokens": image_tokens,
        "prefix_tokens": len(prefix["input_ids"][0]),
        "question_tokens": len(prompt.suffix_ids(item.question)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl"])
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="model shape")
    parser.add_argument("--full-size", action="store_true", help="Qwen3-VL-8B / Qwen2.5-VL-7B")
    parser.add_argument("--rubrics", type=int, default=10)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="pixels (square)")
    parser.add_argument("--prompt-tokens", type=int, default=30)
    parser.add_argument("--question-tokens", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=16, help="images (or naive rows)/forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--input",
        default="tensor",
        choices=["tensor", "pil"],
        help="images as rows of a uint8 tensor batch on --device (the trainer's path) or PIL",
    )
    parser.add_argument(
        "--out", help="also append the JSON line to this file, e.g. bench/results/judge_gpu.jsonl"
    )
    args = parser.parse_args(argv)
    if args.full_size:
        args.size = "qwen3_vl_8b" if args.arch == "qwen3_vl" else "qwen2_5_vl_7b"
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown --modes {sorted(unknown)}; choose from {MODES}")

    dtype = parse_dtype(args.dtype)
    model, processor = build_tiny_vlm(args.arch, size=args.size, dtype=dtype, device=args.device)
    items = make_items(processor, args)
    result: dict = {
        "bench": "judge",
        "arch": args.arch,
        "model": args.size,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "images": args.images,
        "rubrics": args.rubrics,
        "image_size": args.image_size,
        "input": args.input,
        "batch_size": args.batch_size,
        **token_counts(processor, items[0]),
    }
    judges = {
        mode: TransformersJudge(
            model=model,
            processor=processor,
            device=args.device,
            dtype=dtype,
            shared_prefix=mode,
            batch_size=args.batch_size,
            progress=False,
        )
        for mode in modes
    }
    seconds, phases, probs = time_modes(judges, items, args.repeats)
    for mode in modes:
        ms = {phase: round(1000 * value, 1) for phase, value in phases[mode].items()}
        result[f"{mode}_scores_per_s"] = round(len(items) / seconds[mode], 2)
        result[f"{mode}_host_ms"] = ms["host"]
        result[f"{mode}_device_prep_ms"] = ms["device_prep"]
        result[f"{mode}_forward_ms"] = ms["forward"]
        result[f"{mode}_outside_forward_ms"] = ms["outside_forward"]
        print(
            f"{mode:>8}: {seconds[mode]:.3f} s for {len(items)} scores (host {ms['host']} ms, "
            f"device prep {ms['device_prep']} ms, forward {ms['forward']} ms)",
            flush=True,
        )
        if mode != "none" and "none" in modes:
            diff = (probs[mode] - probs["none"]).abs().max().item()
            result[f"{mode}_max_abs_diff"] = float(f"{diff:.2e}")
    p, q, n = result["prefix_tokens"], result["question_tokens"], args.rubrics
    result["ideal_speedup_without_vision"] = round(n * (p + q) / (p + n * q), 2)
    shared = [mode for mode in modes if mode != "none" and "none" in modes]
    for mode in shared:
        result[f"speedup_{mode}"] = round(seconds["none"] / seconds[mode], 2)
    if shared:
        best = min(shared, key=seconds.get)
        result["best_shared_mode"] = best
        result["speedup"] = result[f"speedup_{best}"]
    line = json.dumps(result)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as file:
            file.write(line + "\n")
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
