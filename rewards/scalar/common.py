"""What every scalar reward model shares: local-only loading checks, device/dtype handling,
batching, the ``normalize`` option, and ``release()``.

The models are loaded from folders or files the user already has on disk. Each reward checks
that every file it needs is there *before* any weights load, and fails with one message naming
the missing path, so a typo costs seconds rather than a minute of loading. Loaders only ever get
existing local folders and files, which transformers reads without contacting any hub.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rewards.base import Reward, RewardOutput

TEXTS_DIR = Path(__file__).with_name("texts")


def model_text(name: str) -> str:
    """A model's input text (an instruction, a question, a prefix) stored verbatim in
    ``rewards/scalar/texts/`` (its source is named in ``texts/SOURCES.md``)."""
    return (TEXTS_DIR / name).read_text(encoding="utf-8")


def checkpoint_tensor(folder: Path, name: str) -> torch.Tensor:
    """One tensor of a transformers model folder, as stored (``model.safetensors``, a sharded
    safetensors index, or ``pytorch_model.bin``), read without loading the model."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        shard = json.loads(index.read_text())["weight_map"].get(name)
        files = [folder / shard] if shard else []
    else:
        files = [folder / "model.safetensors"]
    for file in files:
        if file.is_file():
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                if name in handle.keys():
                    return handle.get_tensor(name)
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        state = torch.load(str(binary), map_location="cpu", weights_only=True, mmap=True)
        if name in state:
            return state[name].clone()
    raise KeyError(f"{folder} holds no tensor {name!r}")


def require_dir(path: str | os.PathLike | None, files: Sequence[str], what: str) -> Path:
    """Check that ``path`` is a local folder holding every name in ``files`` (one of several
    alternatives may be given as ``"a|b"``); return it as a Path. Raises FileNotFoundError naming
    the folder and everything missing."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no local path given (set it in the reward config)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: {folder} is not a local folder")
    missing = [
        name
        for name in files
        if not any((folder / alternative).is_file() for alternative in name.split("|"))
    ]
    if missing:
        missing = ", ".join(name.replace("|", " or ") for name in missing)
        raise FileNotFoundError(f"{what}: {folder} lacks {missing}")
    return folder


def require_file(path: str | os.PathLike | None, what: str) -> Path:
    """Check that ``path`` is an existing local file; return it as a Path."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no local file given (set it in the reward config)")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what}: {file} is not a local file")
    return file


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint file; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper (as HPSv2 and others save) is unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found a {type(state).__name__}")
    return state


def assign_exactly(
    module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str
) -> None:
    """Load ``state`` into ``module`` (built on the meta device) in ``dtype``, key for key.

    A checkpoint that does not fit fails naming ``what`` and up to eight missing and unexpected
    keys, so a wrong file or a renamed layer never loads partly.
    """
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"{what}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)


def score_mlp(width: int) -> torch.nn.Sequential:
    """The LAION aesthetic predictor's MLP head, which ImageReward reuses: Linear layers at the
    checkpoints' indices 0, 2, 4, 6 and 7, with dropouts between the first four."""
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(width, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(count)`` of at most ``batch_size`` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


class ScalarReward(Reward):
    """A reward model that maps (image, prompt) to one number.

    Subclasses set ``NORMALIZATIONS`` (name -> function of the raw score tensor; ``"none"`` is
    the identity) and ``DEFAULT_NORMALIZE`` (used when ``normalize`` is None), and implement
    :meth:`raw_scores` for one batch. ``score`` runs the batches under ``torch.no_grad``, reports
    the raw value in ``details["raw"]`` and the normalised one as ``scores``. ``release()`` drops
    the weights; the next call reloads them.
    """

    NORMALIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"none": lambda x: x}
    DEFAULT_NORMALIZE = "none"

    def __init__(
        self,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        normalize: str | None = None,
    ) -> None:
        normalize = normalize or self.DEFAULT_NORMALIZE
        if normalize not in self.NORMALIZATIONS:
            raise ValueError(
                f"{self.name}: unknown normalize={normalize!r}; "
                f"choose one of {sorted(self.NORMALIZATIONS)}"
            )
        self.device = torch.device(device)
        from rewards.judges.transformers_judge import parse_dtype  # keeps transformers lazy

        self.dtype = parse_dtype(dtype)
        self.batch_size = int(batch_size)
        self.normalize = normalize
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Load the weights onto ``self.device`` (called lazily on first use and after release)."""

    def unload(self) -> None:
        """Drop every reference to weights (subclasses set their model attributes to None)."""

    def raw_scores(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str | None]]:
        """Raw scores ``[b]`` for one batch, extra details, and a reason per NaN (else None)."""
        raise NotImplementedError

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        self._ensure_loaded()
        raws, extra, reasons = [], {}, []
        with torch.no_grad():
            for part in batches(len(prompts), self.batch_size):
                raw, details, why = self.raw_scores(images[part], prompts[part])
                raws.append(raw.detach().double().cpu())
                reasons.extend(why)
                for key, value in details.items():
                    extra.setdefault(key, []).append(value.detach().double().cpu())
        raw = torch.cat(raws) if raws else torch.zeros(0, dtype=torch.float64)
        details = {"raw": raw} | {key: torch.cat(vals) for key, vals in extra.items()}
        out = RewardOutput(scores=self.NORMALIZATIONS[self.normalize](raw), details=details)
        out.failures.update(r for r in reasons if r is not None)
        return out

    def release(self) -> None:
        """Free the model's memory (GPU included); the next call loads it again."""
        if self._loaded:
            self.unload()
            self._loaded = False
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
