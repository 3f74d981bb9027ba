"""Build the text-to-image pipeline a run uses: the tiny random model or SD3.5-Medium from disk.

Nothing is downloaded. ``model=sd35_medium`` reads a local diffusers folder (or a repo id whose
files are already in the Hugging Face cache), and the folder is checked for every component the
SD3 pipeline needs *before* any weights load, so a wrong path fails in a second with one message
naming the path and everything that is missing instead of minutes later inside diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline

from rewards.judges.transformers_judge import parse_dtype
from rl.tiny import build_tiny_sd3

# Subfolder -> files it must hold (any one of each tuple; "*" patterns are globbed).
SD3_LAYOUT: dict[str, tuple[tuple[str, ...], ...]] = {
    "transformer": (("config.json",), ("*.safetensors", "*.bin")),
    "vae": (("config.json",), ("*.safetensors", "*.bin")),
    "text_encoder": (("config.json",), ("*.safetensors", "*.bin")),
    "text_encoder_2": (("config.json",), ("*.safetensors", "*.bin")),
    "text_encoder_3": (("config.json",), ("*.safetensors", "*.bin")),
    "tokenizer": (("tokenizer.json", "vocab.json"),),
    "tokenizer_2": (("tokenizer.json", "vocab.json"),),
    "tokenizer_3": (("tokenizer.json", "spiece.model"),),
    "scheduler": (("scheduler_config.json",),),
}


class ModelFolderError(FileNotFoundError):
    """The SD3 model folder is missing or lacks components (raised before any weights load)."""


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name ("bf16", "float32", ...) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return parse_dtype(str(name).lower())
    except ValueError as err:
        raise ValueError(f"model.dtype={name!r}: {err}") from None


def missing_sd3_components(folder: Path) -> list[str]:
    """Everything a diffusers SD3 folder lacks, as readable entries (empty list = complete)."""
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    for sub, requirements in SD3_LAYOUT.items():
        if not (folder / sub).is_dir():
            missing.append(f"{sub}/")
            continue
        for alternatives in requirements:
            if not any(any((folder / sub).glob(pattern)) for pattern in alternatives):
                missing.append(f"{sub}/{' or '.join(alternatives)}")
    return missing


def locate_sd3_folder(path: str | Path) -> Path:
    """Return the complete local SD3 folder for ``path`` or raise one ModelFolderError.

    ``path`` is a local folder, or a hub repo id (``org/name``) already in the Hugging Face cache
    (looked up with ``local_files_only=True``, never downloaded).
    """
    if path in (None, "", "???"):
        raise ModelFolderError("model.path is not set: pass model.path=/local/sd3.5-medium/folder")
    folder = Path(str(path)).expanduser()
    if not folder.exists():
        folder = _from_hf_cache(str(path))
    missing = missing_sd3_components(folder)
    if missing:
        raise ModelFolderError(
            f"SD3 model folder {folder} is incomplete; missing: {', '.join(missing)}"
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


def load_pipeline(model_cfg: Mapping[str, Any]) -> StableDiffusion3Pipeline:
    """Build the pipeline named by ``model_cfg`` (fields: name, path, dtype, and seed for tiny).

    ``name="tiny"`` builds the random tiny SD3 of :mod:`rl.tiny`; ``name="sd35_medium"`` loads the
    folder at ``path``. All components come back in ``dtype`` on the CPU; the caller places them.
    """
    name = model_cfg.get("name")
    dtype = resolve_dtype(model_cfg.get("dtype", "float32"))
    if name == "tiny":
        pipe = build_tiny_sd3(seed=int(model_cfg.get("seed", 0)))
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if name == "sd35_medium":
        folder = locate_sd3_folder(model_cfg.get("path"))
        pipe = StableDiffusion3Pipeline.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
    raise ValueError(f"model.name={name!r} is unknown; use 'tiny' or 'sd35_medium'")
