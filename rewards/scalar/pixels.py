"""The image preprocessing of the official reward implementations, step for step, without
torchvision (whose wheels are tied to one torch build).

Each official pipeline is a torchvision ``Compose``; these functions do the same operations in the
same order on the same types, so the pixels match to float32 rounding:

- :func:`clip_eval_pixels`: OpenAI CLIP's evaluation transform, used by CLIP-S (Hessel et al.) and
  ImageReward: ``Resize(n)`` on the PIL image (shorter side to ``n``, bicubic), ``CenterCrop(n)``
  with torchvision's *rounded* offsets, then RGB, ``ToTensor``, ``Normalize``.
- :func:`letterbox_pixels`: HPSv2's evaluation transform: RGB, ``ToTensor``, then its
  ``ResizeMaxSize`` on the *float tensor* (longer side to ``n``, bicubic, no clamping, black
  padding to a square), then ``Normalize``. Its ``F.resize`` passes no ``antialias``, so the
  tensor is antialiased on torchvision >= 0.17 and not before (``antialias=False``).

transformers' CLIP image processor differs from both: it crops at floored offsets (one pixel off
whenever the overhang is 3 mod 4) and resizes uint8 images, not float tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP's image mean/std, which CLIP-S, ImageReward, HPSv2 and PickScore all normalise with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as float32 ``[3, H, W]`` in ``[0, 1]`` (torchvision's ``ToTensor``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255)


def normalize(
    pixels: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """``(pixels - mean) / std`` per channel in float32 (torchvision's ``Normalize``)."""
    mean_t = torch.as_tensor(mean, dtype=pixels.dtype)[:, None, None]
    std_t = torch.as_tensor(std, dtype=pixels.dtype)[:, None, None]
    return (pixels - mean_t) / std_t


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shorter side is ``size``; the longer one is truncated, not rounded
    (torchvision ``Resize(size)`` on a PIL image). The image keeps its mode, so an RGBA image is
    resized with premultiplied alpha, as PIL does."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square, offsets rounded half to even as torchvision's
    ``CenterCrop`` does (``round((h - size) / 2)``), not floored. Needs both sides >= ``size``."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def clip_eval_pixels(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """OpenAI CLIP's evaluation transform: ``[3, size, size]`` float32, normalised."""
    cropped = center_crop(resize_shorter_side(image, size), size)
    return normalize(to_unit_tensor(cropped.convert("RGB")), mean, std)


def letterbox_pixels(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    antialias: bool = True,
) -> torch.Tensor:
    """HPSv2's evaluation transform: ``[3, size, size]`` float32, normalised.

    The float tensor's longer side is resized to ``size`` (``round`` of each scaled side,
    bicubic, values not clamped; with ``antialias`` torch's antialiased bicubic, as torchvision
    >= 0.17 resizes tensors by default, else the plain one, as torchvision <= 0.16 did) and the
    shorter one padded with zeros (black),
    the odd pixel going right/bottom. Unlike HPSv2's own transform, an image whose longer side is
    already ``size`` but is not square is still padded (HPSv2 would pass it on unpadded and fail
    in the vision tower).
    """
    pixels = to_unit_tensor(image)
    height, width = pixels.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)
        pixels = torch.nn.functional.interpolate(
            pixels[None],
            size=(new_h, new_w),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )[0]
        height, width = new_h, new_w
    pad_h, pad_w = size - height, size - width
    if pad_h or pad_w:
        pixels = torch.nn.functional.pad(
            pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0
        )
    return normalize(pixels, mean, std)
