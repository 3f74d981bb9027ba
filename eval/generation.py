"""Image generation for the generation benchmarks: seeded, batched, resumable.

Every image has a file name and a seed that depends only on the run's base seed and that name
(``seed = crc32(key) + base_seed``), never on batch composition or on which images already
exist; an interrupted run therefore resumes with the starting noise it would have used (pixels
can differ by float rounding, since batched kernels depend on the batch size). Files
that already exist and decode are kept and skipped; a file that does not decode is made again.
Images are written to a temporary name and renamed, so a crash never leaves half a PNG.
An image already there as ``.png``, ``.jpg``, ``.jpeg`` or ``.webp`` (the extensions the official
benchmark scripts accept) counts as made.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from eval.common import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings of a benchmark run (defaults: SD3.5-M evaluation as Flow-GRPO does)."""

    num_steps: int = 40
    guidance_scale: float = 4.5
    height: int = 512
    width: int = 512
    max_sequence_length: int = 128
    batch_size: int = 4
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> GenerationConfig:
        """Build from a config node, rejecting unknown keys with their names."""
        values = dict(cfg or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class ImageJob:
    """One image to make: its prompt, where it goes and the key its seed derives from."""

    prompt: str
    path: Path
    key: str


@dataclass
class GenerationStats:
    """What one call made (``generated``: the paths written now) and how many it kept."""

    generated: list[Path] = field(default_factory=list)
    skipped: int = 0


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def find_image(path: Path) -> Path | None:
    """``path`` or, failing that, the same name with another image extension (any case)."""
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            candidate = path.with_suffix(suffix)
            if candidate.is_file():
                return candidate
    return None


def image_seed(base_seed: int, key: str) -> int:
    """The seed of one image: a stable hash of its key plus the run's base seed."""
    return (zlib.crc32(key.encode("utf-8")) + base_seed) % (2**63)


def is_readable_image(path: Path) -> bool:
    """True when ``path`` exists and decodes as an image."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (UnidentifiedImageError, OSError):
        log.warning("existing image %s does not decode; generating it again", path)
        return False


def build_pipeline(model_cfg: Mapping[str, Any], lora_dir: str | Path | None, device: str):
    """The model of ``model_cfg`` (rl.models.load_pipeline) with an optional LoRA checkpoint
    (a folder written by ``save_lora_weights``) on ``device``."""
    from rl.models import load_pipeline

    pipe = load_pipeline(model_cfg)
    if lora_dir:
        load_lora(pipe, lora_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_lora(pipe, lora_dir: str | Path) -> None:
    """Load the LoRA checkpoint folder ``lora_dir`` into ``pipe``. The weights file is named
    when it is ours (diffusers 0.39 refuses to guess a name offline); any other folder
    is left to diffusers' own search."""
    from rl.lora import LORA_WEIGHTS_NAME

    lora_dir = Path(lora_dir)
    if not lora_dir.is_dir():
        raise FileNotFoundError(f"LoRA checkpoint folder not found: {lora_dir}")
    named = (lora_dir / LORA_WEIGHTS_NAME).is_file()
    pipe.load_lora_weights(str(lora_dir), **({"weight_name": LORA_WEIGHTS_NAME} if named else {}))


def model_name_for(cfg: Any) -> str:
    """The ``<model>`` folder name: ``model_name`` if set, else the model (+ LoRA folder) name."""
    if cfg.get("model_name"):
        return str(cfg.model_name)
    lora = cfg.get("lora")
    return cfg.model.name + (f"_lora-{Path(lora).name}" if lora else "")


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pipeline_device(pipe) -> torch.device:
    return getattr(pipe, "_execution_device", None) or pipe.device


@torch.no_grad()
def generate_images(
    pipe, jobs: Sequence[ImageJob], cfg: GenerationConfig, desc: str = "generating"
) -> GenerationStats:
    """Make every job's image that is not already on disk, ``cfg.batch_size`` at a time."""
    todo = [job for job in jobs if not is_readable_image(find_image(job.path) or job.path)]
    stats = GenerationStats(skipped=len(jobs) - len(todo))
    from rl.families import family_of

    family = family_of(pipe)
    device = _pipeline_device(pipe)
    gen_device = "cpu" if device.type == "mps" else device
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc=desc, unit="batch"):
        batch = todo[start : start + cfg.batch_size]
        generators = [
            torch.Generator(gen_device).manual_seed(image_seed(cfg.seed, job.key)) for job in batch
        ]
        images = pipe(
            prompt=[job.prompt for job in batch],
            num_inference_steps=cfg.num_steps,
            **family.pipeline_guidance(cfg.guidance_scale, len(batch)),
            height=cfg.height,
            width=cfg.width,
            max_sequence_length=cfg.max_sequence_length,
            generator=generators,
            output_type="pil",
        ).images
        for job, image in zip(batch, images, strict=True):
            with atomic_write(job.path) as tmp:
                image.save(tmp, format="PNG")
        stats.generated += [job.path for job in batch]
    log.info("%s: %d generated, %d already there", desc, len(stats.generated), stats.skipped)
    return stats


def prepare_images(
    pipe, jobs: Sequence[ImageJob], cfg: GenerationConfig, benchmark: str
) -> tuple[set[Path], list[Path | None]]:
    """Make the missing images of ``jobs`` (only look for them when ``pipe`` is None, i.e.
    ``skip_generation``). Returns the paths made by this call (a judgement stored for an
    earlier image at such a path is stale) and, per job, the image found (None: missing, e.g.
    a prompt the model refused; left out and counted as missing). No image at all fails."""
    made = []
    if pipe is not None:
        made = generate_images(pipe, jobs, cfg, f"{benchmark} images").generated
    found = [find_image(job.path) for job in jobs]
    missing = [job.path for job, path in zip(jobs, found) if path is None]
    if jobs and len(missing) == len(jobs):
        raise FileNotFoundError(
            f"no {benchmark} image found, e.g. {missing[0]} (with skip_generation=true the "
            "images must already be there)"
        )
    if missing:
        log.warning(
            "%d of %d %s images missing (left out, counted in the summary), e.g. %s",
            len(missing), len(jobs), benchmark, missing[0],
        )  # fmt: skip
    return set(made), found
