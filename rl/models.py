"""Build the text-to-image pipeline a run uses: a tiny random model or a real one from disk.

Nothing is downloaded. A real ``model.name`` (``sd35_medium``, ``sd35_large``, ``flux_dev``) reads
a local diffusers folder (or a repo id whose files are already in the Hugging Face cache), and the
folder is checked for every component its family's pipeline needs, and for being of that family,
*before* any weights load, so a wrong path fails in a second with one message naming the path and
everything that is missing instead of minutes later inside diffusers. The families themselves
live in :mod:`rl.families`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from rewards.judges.transformers_judge import parse_dtype
from rl.families import ModelFolderError as ModelFolderError  # raised by load_pipeline
from rl.families import ModelSpec, family_of, model_spec


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name ("bf16", "float32", ...) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return parse_dtype(str(name).lower())
    except ValueError as err:
        raise ValueError(f"model.dtype={name!r}: {err}") from None


def locate_folder(path: str | Path | None, spec: ModelSpec) -> Path:
    """Return the complete local folder of ``spec``'s family for ``path`` or raise one
    ModelFolderError naming the path and everything missing.

    ``path`` is a local folder, or a hub repo id (``org/name``) already in the Hugging Face cache
    (looked up with ``local_files_only=True``, never downloaded).
    """
    if path in (None, "", "???"):
        raise ModelFolderError(
            f"model.path is not set: pass model.path=/local/{spec.label.lower()}/folder"
        )
    folder = Path(str(path)).expanduser()
    if not folder.exists():
        folder = _from_hf_cache(str(path))
    missing = spec.family.missing_components(folder)
    if missing:
        raise ModelFolderError(
            f"{spec.label} model folder {folder} is incomplete; missing: {', '.join(missing)}"
        )
    return folder


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:  # any hub error means: not a usable local copy
        raise ModelFolderError(
            f"model.path={repo_id} is neither an existing folder nor a repo in the local Hugging "
            f"Face cache ({type(err).__name__}); download the model once elsewhere and pass its "
            "folder"
        ) from None


def load_pipeline(model_cfg: Mapping[str, Any]) -> DiffusionPipeline:
    """Build the pipeline named by ``model_cfg`` (fields: name, path, dtype, and seed for tiny).

    A tiny name (``tiny``, ``tiny_sd35_large``, ``tiny_flux``) builds its family's random tiny
    model; a real one (``sd35_medium``, ``sd35_large``, ``flux_dev``) loads the folder at
    ``path``, checked first. All components come back in ``dtype`` on the CPU; the caller places
    them.
    """
    spec = model_spec(model_cfg.get("name"))
    dtype = resolve_dtype(model_cfg.get("dtype", "float32"))
    if spec.tiny is not None:
        pipe = spec.family.build_tiny(seed=int(model_cfg.get("seed", 0)), **spec.tiny)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    return spec.family.load(locate_folder(model_cfg.get("path"), spec), dtype)


@dataclass(frozen=True)
class PrecisionPlan:
    """The weight dtype of each pipeline component under one ``train.mixed_precision`` mode
    (trained parameters are float32 in every mode; see :func:`rl.lora.make_trainable`)."""

    transformer: torch.dtype
    vae: torch.dtype
    text_encoders: torch.dtype


def precision_plan(mixed_precision: str, model_dtype: str | torch.dtype) -> PrecisionPlan:
    """Weight dtypes for ``mixed_precision`` ("no", "bf16", "fp16") and ``model.dtype``.

    "fp16" is the layout of the reference's SD3 runs (yifan123/flow_grpo ``scripts/train_sd3.py``
    with ``config.mixed_precision="fp16"`` of ``config/base.py``): fp16 autocast over a float32
    transformer, a float32 VAE (decoding in fp16 overflows) and fp16 text encoders; it needs
    ``model.dtype=float32``. "no" and "bf16" keep every component in ``model.dtype`` (SD3.5-M's
    config: bfloat16, which halves the weights' memory; bf16 cannot overflow like fp16).
    """
    dtype = resolve_dtype(model_dtype)
    if mixed_precision == "fp16":
        if dtype != torch.float32:
            raise ValueError(
                f"train.mixed_precision=fp16 keeps the transformer and VAE in float32 (the "
                f"reference's layout); set model.dtype=float32, not {model_dtype}"
            )
        return PrecisionPlan(torch.float32, torch.float32, torch.float16)
    return PrecisionPlan(dtype, dtype, dtype)


def apply_precision(pipe: DiffusionPipeline, plan: PrecisionPlan) -> None:
    """Cast the pipeline's components to the dtypes of ``plan`` (in place; those already in
    their dtype are left alone)."""
    parts = [("transformer", plan.transformer), ("vae", plan.vae)]
    parts += [(name, plan.text_encoders) for name in family_of(pipe).text_encoders]
    for name, dtype in parts:
        module = getattr(pipe, name)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)


def compile_transformer_blocks(transformer: torch.nn.Module, backend: str = "inductor") -> int:
    """Regional compilation: ``torch.compile`` each transformer block in place; returns how many.

    The blocks are the repeated part of the transformer (24 MM-DiT blocks in SD3.5-M, 19 double-
    and 38 single-stream blocks in FLUX.1-dev: the family's ``blocks``); compiling each one
    instead of the whole model keeps compilation short (blocks of the same structure reuse one
    compiled graph) and leaves the module tree, its state-dict keys and peft's adapter switches
    untouched. Shapes are static (``dynamic=False``): the trainer keeps every batch's shape fixed
    for a run, so each block compiles once per (shape, grad mode, adapter state), a handful in all.
    """
    blocks = family_of(transformer).blocks(transformer)
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
    return len(blocks)
