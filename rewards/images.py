"""Conversions between the image forms the project passes around.

Rewards accept either a list of PIL images or a float tensor ``[B, 3, H, W]`` in ``[0, 1]`` (what
the trainer decodes) or a uint8 tensor ``[B, 3, H, W]``; judges and scalar models work on PIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

ImageBatch = torch.Tensor | Sequence[Image.Image]


def to_pil(images: ImageBatch) -> list[Image.Image]:
    """Return the batch as a list of RGB PIL images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected an image tensor [B, 3, H, W], got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            arr = images.permute(0, 2, 3, 1).cpu().numpy()
        else:
            arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
            arr = arr.permute(0, 2, 3, 1).cpu().numpy()
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return [Image.fromarray(a) for a in arr]
    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"image {i} is a {type(im).__name__}, expected a PIL image")
        out.append(im if im.mode == "RGB" else im.convert("RGB"))
    return out


def to_float_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a float64 array ``[H, W, 3]`` in ``[0, 1]``."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
