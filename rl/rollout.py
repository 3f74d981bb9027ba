"""Flow-GRPO rollouts for SD3: sample trajectories with per-step log-probs, and re-score them.

Kept from the reference implementation, because the algorithm needs them:
* the SD3 flow-matching schedule (diffusers' scheduler sigmas, shift 3.0) and SDE/CPS steps of
  :func:`rl.sde.sde_step` with log-probs of every stored transition;
* classifier-free guidance with the empty negative prompt, cond and uncond in one batched forward;
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
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Literal

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
from tqdm.auto import tqdm

from rl.sde import sde_step

if TYPE_CHECKING:
    from rl.algorithms.solvers import DPMSolver

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
PROMPT_CACHE_MODES = ("auto", "all", "epoch")


@dataclass
class RolloutConfig:
    """How rollouts are sampled and which of their steps are trained.

    Attributes:
        num_steps: denoising steps per rollout (10 in Flow-GRPO; evaluation uses 40 ODE steps).
        guidance_scale: CFG scale; <= 1 means no CFG (one forward, the fast variant's default).
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
    """

    num_steps: int = 10
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
        return self.guidance_scale > 1

    def cache_mode(self, num_unique_prompts: int) -> Literal["all", "epoch"]:
        """The prompt-cache mode for a data set of ``num_unique_prompts`` ("auto" resolved)."""
        if self.prompt_cache != "auto":
            return self.prompt_cache
        return "all" if num_unique_prompts <= self.prompt_cache_max_prompts else "epoch"


def move_text_encoders(pipe: StableDiffusion3Pipeline, device: torch.device | str) -> None:
    """Put the pipeline's three text encoders on ``device``."""
    for name in TEXT_ENCODERS:
        getattr(pipe, name).to(device)


class PromptCache:
    """Text embeddings of each unique prompt, computed once with the pipeline's three encoders.

    ``encode`` runs the encoders only on prompts it has not seen and returns embeddings on
    ``device`` (where sampling runs); they are stored on ``store_device`` (default: ``device``),
    in pinned memory when that is the CPU and ``device`` is CUDA, so that each batch copies its
    prompts asynchronously. The empty negative prompt is encoded once by ``negative``.
    Prompts go through the encoders ``chunk_size`` at a time; the default 1 makes a prompt's
    embedding a function of the prompt alone (a matmul's rounding depends on its row count),
    so it is bit-identical however prompts are grouped into batches, cache modes or ranks.
    Once every prompt of a data set is cached (:meth:`encode_all`),
    :meth:`offload_text_encoders` moves the encoders to the CPU to free accelerator memory.
    """

    def __init__(
        self,
        pipe: StableDiffusion3Pipeline,
        max_sequence_length: int = 128,
        device: torch.device | str = "cpu",
        chunk_size: int = 1,
        store_device: torch.device | str | None = None,
    ) -> None:
        self.pipe, self.max_sequence_length = pipe, max_sequence_length
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
        encoder_device = self.pipe.text_encoder.device
        chunks = range(0, len(new), self.chunk_size)
        for i in tqdm(chunks, desc="encoding prompts", leave=False, disable=not progress):
            chunk = new[i : i + self.chunk_size]
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=chunk,
                prompt_2=chunk,
                prompt_3=chunk,
                device=encoder_device,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
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
        """Embeddings [1, L, D] and pooled [1, P] of the empty negative prompt (cached)."""
        return self.encode([""])

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached embeddings."""
        return sum(t.nbytes for pair in self._cache.values() for t in pair)

    def __len__(self) -> int:
        return len(self._cache)

    def encoder_devices(self) -> set[torch.device]:
        """The devices that the three text encoders' weights are on now."""
        encoders = [getattr(self.pipe, name) for name in TEXT_ENCODERS]
        return {param.device for encoder in encoders for param in encoder.parameters()}

    def offload_text_encoders(self) -> None:
        """Move the three text encoders to the CPU (new prompts are then encoded there)."""
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
) -> torch.Tensor:
    """The (CFG-combined) velocity at ``latents`` [B, C, h, w] and ``timestep`` [B], float32.

    With ``guidance_scale > 1`` the uncond and cond rows go through ONE transformer forward
    ([uncond; cond], diffusers' order) and are combined as u + g (c - u) in float32; otherwise
    only the cond rows run. The negative embeddings may have batch size 1 (broadcast). Latents
    and embeddings enter in the transformer's weight dtype (float32 latents, fp16 text embeddings
    and a float32 transformer under the fp16 layout: float32 in, autocast decides the rest).
    """
    batch = latents.shape[0]
    dtype = next(transformer.parameters()).dtype  # the base weights' (LoRA's come later)
    model_input = latents.to(dtype)
    embeds, pooled = embeds.to(dtype), pooled.to(dtype)
    if neg_embeds is not None:
        neg_embeds, neg_pooled = neg_embeds.to(dtype), neg_pooled.to(dtype)
    if guidance_scale > 1:
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
    if guidance_scale > 1:
        uncond, cond = velocity.chunk(2)
        velocity = uncond + guidance_scale * (cond - uncond)
    return velocity


@dataclass
class Rollout:
    """A batch of sampled trajectories (all tensors indexed by sample first, except ``sigmas``).

    ``latents[:, 0]`` is the start noise and ``latents[:, i + 1]`` the outcome of step i, whose
    log-prob is ``log_probs[:, i]`` (0 for ODE steps) at transformer time ``timesteps[:, i]``.
    ``train_steps[:, j]`` is the denoising step that sample's j-th trained transition took: the
    same for every sample of a batch, but batches of the fast variant draw different windows.
    """

    prompts: list[str]
    embeds: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P]
    latents: torch.Tensor  # [B, T + 1, C, h, w] float32
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


def _schedule(
    pipe: StableDiffusion3Pipeline, cfg: RolloutConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformer timesteps [T] and sigmas [T + 1] of the pipeline's scheduler."""
    scheduler = pipe.scheduler
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", False):
        patch = pipe.transformer.config.patch_size * pipe.vae_scale_factor
        kwargs["mu"] = calculate_shift(
            (cfg.height // patch) * (cfg.width // patch),
            scheduler.config.base_image_seq_len,
            scheduler.config.max_image_seq_len,
            scheduler.config.base_shift,
            scheduler.config.max_shift,
        )
    scheduler.set_timesteps(cfg.num_steps, device=device, **kwargs)
    return scheduler.timesteps.clone(), scheduler.sigmas.clone()


def _negative(cache: PromptCache, cfg: RolloutConfig) -> tuple[torch.Tensor | None, ...]:
    return cache.negative() if cfg.uses_cfg else (None, None)


@torch.no_grad()
def decode_images(pipe: StableDiffusion3Pipeline, latents: torch.Tensor) -> torch.Tensor:
    """Decode final latents with the pipeline's VAE into float images [B, 3, H, W] in [0, 1].

    The VAE runs in its own weight dtype even inside an autocast region (a float32 VAE beside
    fp16 autocast decodes in float32, as in the reference)."""
    vae = pipe.vae
    latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    with torch.autocast(latents.device.type, enabled=False):
        images = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pt").float()


@torch.no_grad()
def sample(
    pipe: StableDiffusion3Pipeline,
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
    (peft, accelerate). ``generator`` draws the start noise (unless ``latents`` [B, C, h, w] is
    given) and every step's noise. ``window`` is this batch's SDE window: required when ``cfg``
    draws random windows (``cfg.draw_window(generator)``), else ``cfg``'s fixed window or none.
    ``record_means`` keeps every step's mean (GRPO-Guard); ``ode_solver`` takes the ODE steps from
    its start on instead of Euler, possibly on a re-spaced schedule (MixGRPO-Flash, DiffusionNFT).
    """
    window = cfg.check_window(window)
    device = cache.device
    embeds, pooled = cache.encode(prompts)
    neg_embeds, neg_pooled = _negative(cache, cfg)
    timesteps, sigmas = _schedule(pipe, cfg, device)
    solver = ode_solver.begin(timesteps, sigmas, window) if ode_solver is not None else None
    if solver is not None:
        timesteps, sigmas = solver.timesteps, solver.sigmas
    x = pipe.prepare_latents(
        len(prompts),
        pipe.transformer.config.in_channels,
        cfg.height,
        cfg.width,
        torch.float32,
        device,
        generator,
        latents,
    )
    sigma_max = sigmas[1].item()
    trajectory, log_probs, means = [x], [], []
    for i, t in enumerate(timesteps):
        velocity = predict_velocity(
            transformer, x, t.expand(len(prompts)), embeds, pooled, neg_embeds, neg_pooled,
            cfg.guidance_scale,
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
        images=decode_images(pipe, x),
        means=torch.stack(means, dim=1) if record_means else None,
    )


def step_log_prob(
    transformer: torch.nn.Module,
    rollout: Rollout,
    position: int,
    cache: PromptCache,
    cfg: RolloutConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-score each sample's ``position``-th trained transition under ``transformer`` (with grad).

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
        neg_embeds, neg_pooled, cfg.guidance_scale,
    )  # fmt: skip
    _, log_prob, mean, std = sde_step(
        x, velocity, sigmas[step], sigmas[step + 1], cfg.noise_level, prev_sample=x_next,
        kind=cfg.sde_kind, sigma_max=rollout.sigmas[1].item(),
    )  # fmt: skip
    return log_prob, mean, std
