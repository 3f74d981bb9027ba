"""Flow-GRPO rollouts: sample trajectories with per-step log-probs, and re-score them.

Family-agnostic: what differs between SD3, FLUX, ... (prompt encoding, latent layout, velocity
with CFG or a guidance embedding, schedule, decoding) is asked of the pipeline's family
(:func:`rl.families.family_of`); this module never names one.

Kept from the reference implementation, because the algorithm needs them:
* the family pipeline's flow-matching schedule (SD3.5: the scheduler's sigmas, shift 3.0; FLUX:
  dynamic shift) and SDE/CPS steps of :func:`rl.sde.sde_step` with log-probs of every stored
  transition;
* classifier-free guidance with the family's negative prompt, cond and uncond in one batched
  forward (or, for a guidance-distilled family, the scale as the transformer's input);
* trained steps = the first ``int(train_fraction * num_steps)`` steps (the last, nearly noise-free
  step is left out), or, for the fast variant, only the SDE steps of a window (ODE elsewhere): as
  in flow_grpo's ``sd3_pipeline_with_logprob_fast.py``, a window of ``sde_window_size`` steps whose
  start is drawn afresh for every sampling batch inside ``sde_window_range``, so that every step
  of the range gets trained; ``sde_window`` fixes one window instead (an option). Each rollout
  stores its samples' trained step indices, so training evaluates exactly the sampled window.

Changed, for speed or exactness: each unique prompt (and "") is encoded once and cached, alone in
its forward (so its embedding never depends on which prompts share a batch, a mode or a rank);
with a data set small enough to cache whole, the text encoders then leave the accelerator. The
training forward (:func:`step_log_prob`) goes through the
same :func:`predict_velocity` and :func:`rl.sde.sde_step` as the rollout, so an unchanged policy
reproduces the rollout's log-probs (the on-policy ratio is 1). Latents are kept in float32 and cast
to the transformer's weight dtype only at its input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from rl.families import ModelFamily, family_of
from rl.sde import sde_step

if TYPE_CHECKING:
    from rl.algorithms.solvers import DPMSolver

PROMPT_CACHE_MODES = ("auto", "all", "epoch")


@dataclass
class RolloutConfig:
    """How rollouts are sampled and which of their steps are trained.

    Attributes:
        num_steps: denoising steps per rollout (10 in Flow-GRPO; evaluation uses 40 ODE steps).
        eval_num_steps: ODE steps of the eval hook's images unless the hook sets its own (40:
            flow_grpo ``config/grpo.py`` ``sample.eval_num_steps`` of every SD3 config).
        guidance_scale: CFG scale; <= 1 means no CFG (one forward, the fast variant's default).
            A guidance-distilled family (FLUX) reads it as the guidance embedding's input.
        noise_level: a in the SDE/CPS std; 0 makes every step a deterministic Euler step.
        sde_kind: "sde" (Flow-GRPO) or "cps" (coefficient-preserving sampling).
        sde_window_size: > 0: the fast variant's random window; each sampling batch draws a
            window of this many steps (SDE noise, trained) whose start is uniform over the
            positions that keep it inside ``sde_window_range``; ODE elsewhere.
        sde_window_range: [low, high) that a random window must lie in (None: every step).
        sde_window: [start, end): one fixed window instead of random ones (an option).
        train_fraction: without a window, the first int(train_fraction * num_steps) steps train.
        height, width: image size in pixels.
        max_sequence_length: T5 tokens per prompt.
        prompt_cache: "all" encodes every unique prompt of the data set once at start-up and
            moves the text encoders off the accelerator; "epoch" encodes each epoch's prompts
            in a cache dropped after the epoch (bounded memory, encoders stay); "auto" is
            "all" for at most ``prompt_cache_max_prompts`` unique prompts, else "epoch".
        prompt_cache_max_prompts: the "auto" limit (SD3.5-M in bf16: (77 + T5 tokens) x 4096
            x 2 bytes per prompt, 1.7 MB at 128 tokens, so 2048 prompts take ~3.4 GB).
        prompt_cache_on_device: with "all", keep the embeddings on the accelerator instead of
            in (pinned) CPU memory, from which each batch's prompts are copied.
        prompt_cache_dir: with "all", a folder where the data set's embeddings are written once
            (``<fingerprint>.safetensors``) and read back by every later run whose fingerprint
            (model, text encoders, dtype, sequence length and the prompts) matches, so that the
            text encoders never run again (None: no disk cache).
        release_text_encoders: with "epoch", keep the text encoders off the accelerator except
            while an epoch's prompts are encoded (None: the family's default, on for FLUX, off
            for SD3). Mode "all" always releases them once the data set is encoded.
    """

    num_steps: int = 10
    eval_num_steps: int = 40
    guidance_scale: float = 4.5
    noise_level: float = 0.7
    sde_kind: Literal["sde", "cps"] = "sde"
    sde_window_size: int = 0
    sde_window_range: tuple[int, int] | None = None
    sde_window: tuple[int, int] | None = None
    train_fraction: float = 0.99
    height: int = 512
    width: int = 512
    max_sequence_length: int = 128
    prompt_cache: Literal["auto", "all", "epoch"] = "auto"
    prompt_cache_max_prompts: int = 2048
    prompt_cache_on_device: bool = False
    prompt_cache_dir: str | None = None
    release_text_encoders: bool | None = None

    def __post_init__(self) -> None:
        if self.prompt_cache not in PROMPT_CACHE_MODES:
            raise ValueError(
                f"rollout.prompt_cache={self.prompt_cache!r} is not one of {PROMPT_CACHE_MODES}"
            )
        if self.prompt_cache_max_prompts < 0:
            raise ValueError(
                f"rollout.prompt_cache_max_prompts={self.prompt_cache_max_prompts} must be >= 0"
            )
        if self.sde_kind not in ("sde", "cps"):
            raise ValueError(f"rollout.sde_kind={self.sde_kind!r} is not 'sde' or 'cps'")
        if self.eval_num_steps < 1:
            raise ValueError(f"rollout.eval_num_steps={self.eval_num_steps} must be >= 1")
        self.sde_window = self._steps_range("sde_window", self.sde_window)
        self.sde_window_range = self._steps_range("sde_window_range", self.sde_window_range)
        if self.sde_window_size < 0:
            raise ValueError(f"rollout.sde_window_size={self.sde_window_size} must be >= 0")
        if self.sde_window_range is not None and not self.sde_window_size:
            raise ValueError("rollout.sde_window_range needs rollout.sde_window_size > 0")
        if self.sde_window_size and self.sde_window is not None:
            raise ValueError(
                "set either rollout.sde_window (one fixed window) or rollout.sde_window_size "
                "(a random window per batch), not both"
            )
        low, high = self.window_bounds
        if self.sde_window_size > high - low:
            raise ValueError(
                f"rollout.sde_window_size={self.sde_window_size} does not fit in "
                f"sde_window_range=[{low}, {high}) ({high - low} steps)"
            )
        if not self.num_train_steps:
            raise ValueError(
                f"rollout trains no step: train_fraction={self.train_fraction} x "
                f"num_steps={self.num_steps} rounds down to 0"
            )

    def _steps_range(self, name: str, value) -> tuple[int, int] | None:
        """``value`` as a ``(start, end)`` tuple with 0 <= start < end <= num_steps."""
        if value is None:
            return None
        value = tuple(int(s) for s in value)
        start, end = (value + (-1, -1))[:2]
        if len(value) != 2 or not 0 <= start < end <= self.num_steps:
            raise ValueError(
                f"rollout.{name}={list(value)} must be [start, end) with "
                f"0 <= start < end <= num_steps={self.num_steps}"
            )
        return value

    @property
    def random_window(self) -> bool:
        """Whether each sampling batch draws its own window (the reference's fast variant)."""
        return self.sde_window_size > 0

    @property
    def window_bounds(self) -> tuple[int, int]:
        """``[low, high)``: the steps a random window is drawn in (all of them by default)."""
        return self.sde_window_range or (0, self.num_steps)

    @property
    def num_train_steps(self) -> int:
        """How many denoising steps of each rollout are trained."""
        if self.random_window:
            return self.sde_window_size
        if self.sde_window is not None:
            return self.sde_window[1] - self.sde_window[0]
        return int(self.train_fraction * self.num_steps)

    def draw_window(self, generator: torch.Generator | None) -> tuple[int, int] | None:
        """The SDE window of one sampling batch: a random one drawn from ``generator`` (start
        uniform over ``[low, high - size]``, as ``random.randint`` in the reference), the fixed
        ``sde_window``, or None (no window: every step is SDE)."""
        if not self.random_window:
            return self.sde_window
        low, high = self.window_bounds
        choices = high - self.sde_window_size - low + 1
        start = low + int(torch.randint(choices, (1,), generator=generator))
        return start, start + self.sde_window_size

    def check_window(self, window: tuple[int, int] | None) -> tuple[int, int] | None:
        """The window a rollout uses: ``window`` if it is one this config can draw, the fixed
        window if ``window`` is None; raises ValueError otherwise."""
        if window is None and not self.random_window:
            return self.sde_window
        if window is None:
            raise ValueError(
                "rollout.sde_window_size > 0 draws a window per batch: pass "
                "window=cfg.draw_window(generator) to sample()"
            )
        window = tuple(int(s) for s in window)
        if self.random_window:
            low, high = self.window_bounds
            drawable = low <= window[0] and window[1] <= high
            drawable = drawable and window[1] - window[0] == self.sde_window_size
        else:
            drawable = window == self.sde_window
        if not drawable:
            raise ValueError(f"window {list(window)} is not one that this rollout config draws")
        return window

    def train_steps(self, window: tuple[int, int] | None) -> list[int]:
        """Indices of the denoising steps trained for a rollout sampled with ``window``."""
        if window is not None:
            return list(range(*window))
        return list(range(self.num_train_steps))

    def step_noise_level(self, step: int, window: tuple[int, int] | None) -> float:
        """The SDE noise level of ``step`` (0 = ODE step outside ``window``)."""
        inside = window is None or window[0] <= step < window[1]
        return self.noise_level if inside else 0.0

    @property
    def uses_cfg(self) -> bool:
        """Whether CFG is asked for (a family without a negative branch ignores it)."""
        return self.guidance_scale > 1

    def cache_mode(self, num_unique_prompts: int) -> Literal["all", "epoch"]:
        """The prompt-cache mode for a data set of ``num_unique_prompts`` ("auto" resolved)."""
        if self.prompt_cache != "auto":
            return self.prompt_cache
        return "all" if num_unique_prompts <= self.prompt_cache_max_prompts else "epoch"


def move_text_encoders(pipe: DiffusionPipeline, device: torch.device | str) -> None:
    """Put the pipeline's text encoders on ``device``."""
    for name in family_of(pipe).text_encoders:
        getattr(pipe, name).to(device)


class PromptCache:
    """Text embeddings of each unique prompt, computed once with the pipeline's text encoders.

    ``encode`` runs the encoders only on prompts it has not seen and returns embeddings on
    ``device`` (where sampling runs); they are stored on ``store_device`` (default: ``device``),
    in pinned memory when that is the CPU and ``device`` is CUDA, so that each batch copies its
    prompts asynchronously. The family's CFG negative prompt is encoded once by ``negative``.
    Prompts go through the encoders ``chunk_size`` at a time; the default 1 makes a prompt's
    embedding a function of the prompt alone (a matmul's rounding depends on its row count),
    so it is bit-identical however prompts are grouped into batches, cache modes or ranks.
    Once every prompt of a data set is cached (:meth:`encode_all`),
    :meth:`offload_text_encoders` moves the encoders to the CPU to free accelerator memory.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        max_sequence_length: int = 128,
        device: torch.device | str = "cpu",
        chunk_size: int = 1,
        store_device: torch.device | str | None = None,
    ) -> None:
        self.pipe, self.max_sequence_length = pipe, max_sequence_length
        self.family: ModelFamily = family_of(pipe)
        self.device, self.chunk_size = torch.device(device), chunk_size
        self.store_device = self.device if store_device is None else torch.device(store_device)
        self.pin = self.store_device.type == "cpu" and self.device.type == "cuda"
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.num_encoded = 0
        self.offloaded = False

    @torch.no_grad()
    def encode_all(self, prompts: list[str], progress: bool = False) -> None:
        """Encode the prompts not cached yet (e.g. a whole data set; tqdm if ``progress``)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        encoder_device = getattr(self.pipe, self.family.text_encoders[0]).device
        chunks = range(0, len(new), self.chunk_size)
        for i in tqdm(chunks, desc="encoding prompts", leave=False, disable=not progress):
            chunk = new[i : i + self.chunk_size]
            embeds, pooled = self.family.encode(
                self.pipe, chunk, self.max_sequence_length, encoder_device
            )
            self.add(chunk, embeds, pooled)
            self.num_encoded += len(chunk)

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.store_device)
        return tensor.pin_memory() if self.pin else tensor

    def add(self, prompts: list[str], embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        """Store embeddings computed elsewhere (e.g. shape-true random ones in ``bench/``)."""
        for prompt, e, p in zip(prompts, embeds, pooled):
            self._cache[prompt] = (self._store(e), self._store(p))

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, L, D] and pooled embeddings [B, P] for ``prompts`` on ``device``."""
        self.encode_all(prompts)
        moved = {
            p: tuple(t.to(self.device, non_blocking=self.pin) for t in self._cache[p])
            for p in dict.fromkeys(prompts)
        }  # each distinct prompt crosses to the device once
        embeds, pooled = zip(*(moved[p] for p in prompts))
        return torch.stack(embeds), torch.stack(pooled)

    def negative(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [1, L, D] and pooled [1, P] of the family's negative prompt (cached)."""
        if self.family.negative_prompt is None:
            raise ValueError(f"the {self.family.name} family has no CFG negative prompt")
        return self.encode([self.family.negative_prompt])

    def negative_prompts(self, guidance_scale: float) -> list[str]:
        """The negative prompt that sampling at ``guidance_scale`` needs encoded (or none)."""
        return [self.family.negative_prompt] if self.family.uses_cfg(guidance_scale) else []

    def fingerprint(self, prompts: list[str], model_cfg: Mapping[str, Any]) -> str:
        """A key for the embeddings of ``prompts``: the model (name, path, seed, dtype), each
        text encoder's config and dtype, the sequence length and the prompts themselves."""
        identity = {
            "family": self.family.name,
            "model": {k: str(model_cfg.get(k)) for k in ("name", "path", "seed", "dtype")},
            "max_sequence_length": self.max_sequence_length,
            "encoders": [
                [getattr(self.pipe, n).config.to_json_string(), str(getattr(self.pipe, n).dtype)]
                for n in self.family.text_encoders
            ],
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
        for prompt in sorted(set(prompts)):
            digest.update(prompt.encode() + b"\0")
        return digest.hexdigest()[:20]

    def save(self, path: Path, prompts: list[str]) -> None:
        """Write the embeddings of ``prompts`` (all cached) to ``path`` atomically."""
        unique = list(dict.fromkeys(prompts))
        tensors = {}
        for i, prompt in enumerate(unique):
            embeds, pooled = self._cache[prompt]
            tensors[f"{i}.embeds"], tensors[f"{i}.pooled"] = embeds.cpu(), pooled.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        save_file(tensors, partial, metadata={"prompts": json.dumps(unique)})
        partial.replace(path)  # readers see the whole file or none

    def load(self, path: Path, prompts: list[str]) -> bool:
        """Fill the cache from ``path`` if it holds exactly the embeddings of ``prompts``;
        False (nothing loaded) when it is absent or holds anything else."""
        if not path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(path, "pt") as handle:
            stored = json.loads((handle.metadata() or {}).get("prompts", "[]"))
        if sorted(stored) != sorted(set(prompts)):
            return False
        tensors = load_file(path)
        if set(tensors) != {f"{i}.{k}" for i in range(len(stored)) for k in ("embeds", "pooled")}:
            return False
        for i, prompt in enumerate(stored):
            self.add([prompt], tensors[f"{i}.embeds"][None], tensors[f"{i}.pooled"][None])
        return True

    def fill(
        self,
        prompts: list[str],
        cache_dir: str | Path | None = None,
        model_cfg: Mapping[str, Any] | None = None,
        write: bool = True,
        progress: bool = False,
    ) -> str:
        """Cache every prompt of ``prompts``: from ``cache_dir`` when it holds this
        fingerprint's file, else with the text encoders (and then written there if ``write``).
        Returns how: "disk", "encoded" or "encoded+written"."""
        if cache_dir is None:
            self.encode_all(prompts, progress=progress)
            return "encoded"
        path = Path(cache_dir) / f"{self.fingerprint(prompts, model_cfg or {})}.safetensors"
        if self.load(path, prompts):
            return "disk"
        self.encode_all(prompts, progress=progress)
        if write:
            self.save(path, prompts)
            return "encoded+written"
        return "encoded"

    def encode_released(self, prompts: list[str]) -> None:
        """Bring the text encoders to ``device``, encode the new ``prompts``, release them."""
        move_text_encoders(self.pipe, self.device)
        self.encode_all(prompts)
        self.offload_text_encoders()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached embeddings."""
        return sum(t.nbytes for pair in self._cache.values() for t in pair)

    def __len__(self) -> int:
        return len(self._cache)

    def encoder_devices(self) -> set[torch.device]:
        """The devices that the text encoders' weights are on now."""
        encoders = [getattr(self.pipe, name) for name in self.family.text_encoders]
        return {param.device for encoder in encoders for param in encoder.parameters()}

    def offload_text_encoders(self) -> None:
        """Move the text encoders to the CPU (new prompts are then encoded there)."""
        move_text_encoders(self.pipe, "cpu")
        self.offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the freed blocks back, not just to torch's pool

    @contextlib.contextmanager
    def text_encoders_on_device(self) -> Iterator[None]:
        """Bring offloaded text encoders back to ``device`` for a while (e.g. an evaluation
        that runs the whole pipeline), and offload them again afterwards."""
        if not self.offloaded:
            yield
            return
        move_text_encoders(self.pipe, self.device)
        try:
            yield
        finally:
            self.offload_text_encoders()


def predict_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    neg_embeds: torch.Tensor | None,
    neg_pooled: torch.Tensor | None,
    guidance_scale: float,
    image_size: tuple[int, int] | None = None,
    detach_uncond: bool = False,
) -> torch.Tensor:
    """The (guided) velocity at ``latents`` and ``timestep`` [B], float32, by the family of
    ``transformer`` (:meth:`rl.families.base.ModelFamily.velocity`).

    With CFG (SD3 at ``guidance_scale > 1``) the uncond and cond rows go through ONE transformer
    forward ([uncond; cond], diffusers' order) and are combined as u + g (c - u) in float32;
    otherwise only the cond rows run. The negative embeddings may have batch size 1 (broadcast).
    ``image_size`` (pixels) is needed by families with packed latents (FLUX's position ids).
    ``detach_uncond`` cuts the gradient through u (same value), as flow_grpo's
    ``compute_log_prob`` at ac4c86e (``scripts/train_sd3.py`` line 190; 74db691 does not).
    """
    family = family_of(transformer)
    if not family.uses_cfg(guidance_scale):
        neg_embeds = neg_pooled = None
    return family.velocity(
        transformer, latents, timestep, embeds, pooled, neg_embeds, neg_pooled,
        guidance_scale, image_size, detach_uncond,
    )  # fmt: skip


@dataclass
class Rollout:
    """A batch of sampled trajectories (all tensors indexed by sample first, except ``sigmas``).

    ``latents[:, 0]`` is the start noise and ``latents[:, i + 1]`` the outcome of step i (in the
    family's layout: [C, h, w] for SD3, packed [tokens, channels] for FLUX), whose
    log-prob is ``log_probs[:, i]`` (0 for ODE steps) at transformer time ``timesteps[:, i]``.
    ``train_steps[:, j]`` is the denoising step that sample's j-th trained transition took: the
    same for every sample of a batch, but batches of the fast variant draw different windows.
    """

    prompts: list[str]
    embeds: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P]
    latents: torch.Tensor  # [B, T + 1, *latent_shape] float32
    log_probs: torch.Tensor  # [B, T] float32
    timesteps: torch.Tensor  # [B, T]
    sigmas: torch.Tensor  # [T + 1]
    train_steps: torch.Tensor  # [B, S] int64
    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    means: torch.Tensor | None = None  # [B, T, C, h, w] each step's mean, if an algorithm asks

    _PER_SAMPLE = (
        "embeds", "pooled", "latents", "log_probs", "timesteps", "train_steps", "images",
    )  # fmt: skip

    def _per_sample(self) -> tuple[str, ...]:
        return self._PER_SAMPLE + (("means",) if self.means is not None else ())

    def old_mean(self, position: int) -> torch.Tensor:
        """The rollout's step mean [B, ...] of each sample's ``position``-th trained transition."""
        step = self.step_index(position).to(self.means.device)
        return self.means[torch.arange(step.numel(), device=step.device), step]

    @property
    def num_train_steps(self) -> int:
        return self.train_steps.shape[1]

    def step_index(self, position: int) -> torch.Tensor:
        """The denoising step [B] of every sample's ``position``-th trained transition."""
        return self.train_steps[:, position]

    def old_log_prob(self, position: int) -> torch.Tensor:
        """The rollout's log-prob [B] of each sample's ``position``-th trained transition."""
        step = self.step_index(position).to(self.log_probs.device)
        return self.log_probs.gather(1, step[:, None])[:, 0]

    def step_dt(self, position: int) -> torch.Tensor:
        """sigma_next - sigma [B] (< 0) of each sample's ``position``-th trained transition."""
        step = self.step_index(position).to(self.sigmas.device)
        return self.sigmas[step + 1] - self.sigmas[step]

    def select(self, index: torch.Tensor | list[int] | slice) -> Rollout:
        """The samples at ``index`` (a slice, index list or boolean mask)."""
        if isinstance(index, slice):
            positions = list(range(len(self.prompts)))[index]
        else:
            index = torch.as_tensor(index)
            positions = (index.nonzero().flatten() if index.dtype == torch.bool else index).tolist()
        chosen = {name: getattr(self, name)[positions] for name in self._per_sample()}
        return replace(self, prompts=[self.prompts[i] for i in positions], **chosen)

    def to(self, device: torch.device | str) -> Rollout:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    @classmethod
    def cat(cls, rollouts: list[Rollout]) -> Rollout:
        """Join rollouts sampled with the same schedule along the sample dimension (their
        windows may differ; their number of trained steps may not)."""
        first = rollouts[0]
        for other in rollouts[1:]:
            if (
                not torch.equal(other.sigmas, first.sigmas)
                or other.num_train_steps != first.num_train_steps
            ):
                raise ValueError(
                    "Rollout.cat needs rollouts with the same sigmas and number of trained steps"
                )
        names = first._per_sample()
        joined = {name: torch.cat([getattr(r, name) for r in rollouts]) for name in names}
        return replace(first, prompts=[p for r in rollouts for p in r.prompts], **joined)


def _negative(cache: PromptCache, cfg: RolloutConfig) -> tuple[torch.Tensor | None, ...]:
    return cache.negative() if cache.family.uses_cfg(cfg.guidance_scale) else (None, None)


@torch.no_grad()
def decode_images(
    pipe: DiffusionPipeline, latents: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Decode final latents with the pipeline's VAE into float images [B, 3, H, W] in [0, 1].

    The VAE runs in its own weight dtype even inside an autocast region (a float32 VAE beside
    fp16 autocast decodes in float32, as in the reference)."""
    return family_of(pipe).decode(pipe, latents, image_size)


@torch.no_grad()
def sample(
    pipe: DiffusionPipeline,
    transformer: torch.nn.Module,
    cache: PromptCache,
    prompts: list[str],
    cfg: RolloutConfig,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    window: tuple[int, int] | None = None,
    record_means: bool = False,
    ode_solver: DPMSolver | None = None,
) -> Rollout:
    """Sample one image per prompt along the SDE/ODE schedule of ``cfg`` and record the trajectory.

    ``transformer`` is passed separately from ``pipe`` because the trainer's copy may be wrapped
    (peft, accelerate). ``generator`` draws the start noise (unless ``latents`` [B, *latent_shape]
    of the family is given) and every step's noise. ``window`` is this batch's SDE window:
    required when ``cfg`` draws random windows (``cfg.draw_window(generator)``), else ``cfg``'s
    fixed window or none. ``record_means`` keeps every step's mean (GRPO-Guard); ``ode_solver``
    takes the ODE steps from its start on instead of Euler, possibly on a re-spaced schedule
    (MixGRPO-Flash, DiffusionNFT).
    """
    window = cfg.check_window(window)
    device, family, size = cache.device, family_of(pipe), (cfg.height, cfg.width)
    embeds, pooled = cache.encode(prompts)
    neg_embeds, neg_pooled = _negative(cache, cfg)
    timesteps, sigmas = family.schedule(pipe, cfg.num_steps, cfg.height, cfg.width, device)
    solver = ode_solver.begin(timesteps, sigmas, window) if ode_solver is not None else None
    if solver is not None:
        timesteps, sigmas = solver.timesteps, solver.sigmas
    x = family.prepare_latents(
        pipe, len(prompts), cfg.height, cfg.width, device, generator, latents
    )
    sigma_max = sigmas[1].item()
    trajectory, log_probs, means = [x], [], []
    for i, t in enumerate(timesteps):
        velocity = predict_velocity(
            transformer, x, t.expand(len(prompts)), embeds, pooled, neg_embeds, neg_pooled,
            cfg.guidance_scale, size,
        )  # fmt: skip
        if solver is not None and solver.solves(i):
            x = mean = solver.step(i, x, velocity)
            log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        else:
            if solver is not None:
                solver.observe(i, x, velocity)
            x, log_prob, mean, _ = sde_step(
                x, velocity, sigmas[i], sigmas[i + 1], cfg.step_noise_level(i, window),
                generator=generator, kind=cfg.sde_kind, sigma_max=sigma_max,
            )  # fmt: skip
        trajectory.append(x)
        log_probs.append(log_prob)
        if record_means:
            means.append(mean)
    train_steps = torch.tensor(cfg.train_steps(window), dtype=torch.long)
    return Rollout(
        prompts=list(prompts),
        embeds=embeds,
        pooled=pooled,
        latents=torch.stack(trajectory, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=timesteps.expand(len(prompts), -1).clone(),
        sigmas=sigmas,
        train_steps=train_steps.expand(len(prompts), -1).clone(),
        images=decode_images(pipe, x, size),
        means=torch.stack(means, dim=1) if record_means else None,
    )


def step_log_prob(
    transformer: torch.nn.Module,
    rollout: Rollout,
    position: int,
    cache: PromptCache,
    cfg: RolloutConfig,
    detach_uncond: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-score each sample's ``position``-th trained transition under ``transformer`` (with grad;
    ``detach_uncond``: none through the CFG uncond branch, see :func:`predict_velocity`).

    Returns ``(log_prob [B], mean, std)`` of the step's outcome given its input, through the same
    velocity and step code as :func:`sample`; each sample uses its own stored step (windows
    differ between batches). Trained steps are always SDE steps (noise level ``cfg.noise_level``).
    With the LoRA adapter disabled, ``mean`` is the reference policy's mean for the KL term.
    """
    step = rollout.step_index(position).to(rollout.latents.device)
    rows = torch.arange(step.numel(), device=step.device)
    x, x_next = rollout.latents[rows, step], rollout.latents[rows, step + 1]
    sigmas = rollout.sigmas.to(step.device)
    neg_embeds, neg_pooled = _negative(cache, cfg)
    velocity = predict_velocity(
        transformer, x, rollout.timesteps[rows, step], rollout.embeds, rollout.pooled,
        neg_embeds, neg_pooled, cfg.guidance_scale, (cfg.height, cfg.width), detach_uncond,
    )  # fmt: skip
    _, log_prob, mean, std = sde_step(
        x, velocity, sigmas[step], sigmas[step + 1], cfg.noise_level, prev_sample=x_next,
        kind=cfg.sde_kind, sigma_max=rollout.sigmas[1].item(),
    )  # fmt: skip
    return log_prob, mean, std
