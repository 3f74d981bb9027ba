"""Conversions between the image forms the project passes around.

Rewards accept either a list of PIL images or a float tensor ``[B, 3, H, W]`` in ``[0, 1]`` (what
the trainer decodes) or a uint8 tensor ``[B, 3, H, W]``; judges and scalar models work on PIL.

:func:`read_images` also finds the images that cannot be scored (a file that does not decode, an
empty image, a tensor sample with NaN or inf pixels), so a reward can make exactly those samples
NaN with a counted reason instead of scoring a silently black or half-decoded picture.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

ImageBatch = torch.Tensor | Sequence[Image.Image]

# ITU-R BT.601 luma weights of R, G, B: ``pixels @ LUMA_WEIGHTS`` is an image's luma.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_pil(images: ImageBatch) -> list[Image.Image]:
    """Return the batch as a list of RGB PIL images."""
    if isinstance(images, torch.Tensor):
        _check_batch_shape(images)
        arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return [Image.fromarray(a) for a in arr]
    return [_rgb(_checked_pil(i, im)) for i, im in enumerate(images)]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """An image tensor as uint8 on its device: floats in ``[0, 1]`` are clamped and rounded."""
    if images.dtype == torch.uint8:
        return images
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def _checked_pil(index: int, image: object) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"image {index} is a {type(image).__name__}, expected a PIL image")
    return image


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_batch_shape(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected an image tensor [B, 3, H, W], got {tuple(images.shape)}")


def _tensor_batch_problems(images: torch.Tensor) -> dict[int, str]:
    """The rows of an image batch that cannot be scored, with why (one device read)."""
    if images.shape[-1] == 0 or images.shape[-2] == 0:
        return {i: "empty image" for i in range(images.shape[0])}
    if images.is_floating_point():
        finite = torch.isfinite(images.detach()).flatten(1).all(dim=1).tolist()
        return {i: "non-finite pixel values" for i, ok in enumerate(finite) if not ok}
    return {}


def _pil_problem(image: Image.Image) -> str | None:
    if image.width == 0 or image.height == 0:
        return "empty image"
    try:
        image.load()  # a lazily opened file decodes here; truncated or garbled data raises
    except (OSError, SyntaxError, ValueError) as err:
        return f"does not decode ({err})"
    return None


def read_images(
    images: ImageBatch, keep_mode: bool = False
) -> tuple[list[Image.Image | None], dict[int, str]]:
    """The batch as RGB PIL images, with ``None`` and a reason for each corrupt image.

    Returns ``(images, problems)``: ``problems`` maps the index of every image that cannot be
    scored to why (``"non-finite pixel values"``, ``"empty image"``, ``"does not decode (...)"``);
    those positions hold ``None``. Inputs of the wrong type or shape still raise at once.
    ``keep_mode=True`` leaves PIL inputs in their own mode (RGBA, L, P, ...) for a model whose
    official preprocessing converts them itself, at its own step and in its own way.
    """
    if isinstance(images, torch.Tensor):
        pil = to_pil(images)
        problems = _tensor_batch_problems(images)
    else:
        pil = [_checked_pil(i, im) for i, im in enumerate(images)]
        problems = {i: p for i, im in enumerate(pil) if (p := _pil_problem(im)) is not None}
    convert = (lambda im: im) if keep_mode else _rgb
    return [None if i in problems else convert(im) for i, im in enumerate(pil)], problems


def to_uint8_chw(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """One image as a uint8 ``[3, H, W]`` tensor (on the tensor's own device).

    A PIL image is converted to RGB; a float tensor in ``[0, 1]`` is rounded to uint8 exactly as
    :func:`to_pil` does, and a one-channel tensor repeated to three, so both paths see the same
    pixels.
    """
    if isinstance(image, Image.Image):
        with warnings.catch_warnings():  # read-only view of PIL's bytes: one copy, never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.asarray(_rgb(image))).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a PIL image or an image tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor [3, H, W], got {tuple(image.shape)}")
    image = to_uint8(image)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def read_tensor_batch(images: torch.Tensor) -> tuple[torch.Tensor, dict[int, str]]:
    """The batch as a uint8 ``[B, 3, H, W]`` tensor on its device, and the corrupt rows.

    Like :func:`read_images` for a tensor batch, without leaving the device: rows with non-finite
    values are reported (one device read for the whole batch) and the pixels are rounded as
    :func:`to_pil` rounds them; corrupt rows are still in the tensor (the caller drops them).
    """
    _check_batch_shape(images)
    problems = _tensor_batch_problems(images)
    pixels = to_uint8(images)
    return (pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels), problems


def to_float_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a float64 array ``[H, W, 3]`` in ``[0, 1]``."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def image_hash(image: Image.Image) -> str:
    """A hash of an image's content (pixels, mode and size): equal images, equal hashes."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()
