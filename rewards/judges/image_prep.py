"""Qwen-VL image preprocessing on the judge's device, pixel for pixel what the PIL processor gives.

The Qwen2-VL image processor (used by Qwen2-VL, Qwen2.5-VL and Qwen3-VL) turns an RGB image into
``pixel_values [grid_h * grid_w, C * T * P * P]`` and ``image_grid_thw [1, 3]``: it resizes to a
multiple of ``patch_size * merge_size`` (``smart_resize``) with Pillow, rescales and normalises in
NumPy, and cuts the image into patches, repeated ``temporal_patch_size`` times. Done per image on
the CPU that costs 15-50 ms for a 512 px image, and the trainer's images, decoded on the GPU, would
first have to become PIL images. :class:`DeviceImageProcessor` does the same on a uint8 tensor
batch on any device:

- resize: Pillow's own separable convolution, reproduced exactly: the filter weights are computed
  as Pillow computes them (in double precision, normalised, then rounded to 22-bit fixed point),
  each pass sums ``pixel * weight`` in float64 (every term and sum is an integer below 2**53, so the
  sum is exact in any order) and rounds and clips to uint8 as Pillow does. A resize along one axis,
  or along both by the same scale (the usual square image), runs on the device, horizontal pass
  first as Pillow does; Pillow 13 picks the order of the two passes by its own rule when the two
  scales differ, so such an image is resized by Pillow itself (on the CPU) and only the rest runs
  on the device;
- rescale + normalise: a lookup table of the 256 possible values per channel, computed by the
  image processor's own ``rescale`` and ``normalize`` methods, so the float32 values are the ones
  NumPy gives;
- patchify: the processor's reshape and transpose.

The result equals the processor's output exactly (tests compare them on odd sizes, up- and
downscaling). Image processors without the Qwen2-VL attributes, or resampling filters other than
bilinear, bicubic and Lanczos, are not supported (:func:`unsupported_reason` says why).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers.image_transforms import normalize, rescale
from transformers.image_utils import ChannelDimension
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)
_REQUIRED = ("patch_size", "merge_size", "temporal_patch_size", "size", "image_mean", "image_std")


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


# Pillow's resampling filters: (support, function), as in its Resample.c.
FILTERS = {
    Image.Resampling.BILINEAR: (1.0, _bilinear),
    Image.Resampling.BICUBIC: (2.0, _bicubic),
    Image.Resampling.LANCZOS: (3.0, _lanczos),
}


@functools.lru_cache(maxsize=256)
def resample_taps(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's fixed-point filter taps for resizing ``in_size`` -> ``out_size`` pixels.

    Returns ``(index [out, K], weight [out, K])``: output pixel ``o`` is
    ``sum_k input[index[o, k]] * weight[o, k]`` before rounding; unused taps have weight 0.
    """
    support, kernel = FILTERS[Image.Resampling(resample)]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ss = 1.0 / filterscale
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        weights = [kernel((x + xmin - center + 0.5) * ss) for x in range(count)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        one = 1 << PRECISION_BITS
        fixed = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in weights]
        rows.append((xmin, fixed))
    width = max(len(fixed) for _, fixed in rows)
    index = np.zeros((out_size, width), dtype=np.int64)
    weight = np.zeros((out_size, width), dtype=np.float64)
    for o, (xmin, fixed) in enumerate(rows):
        index[o, : len(fixed)] = np.arange(xmin, xmin + len(fixed))
        index[o, len(fixed) :] = xmin  # weight 0: any valid index
        weight[o, : len(fixed)] = fixed
    return index, weight


def _resample_last_dim(images: torch.Tensor, out_size: int, resample: int) -> torch.Tensor:
    """One Pillow pass along the last dimension of a uint8 tensor, exactly as Pillow rounds."""
    index, weight = resample_taps(images.shape[-1], out_size, resample)
    index_t = torch.from_numpy(index).to(images.device)
    weight_t = torch.from_numpy(weight).to(images.device)
    pixels = images.to(torch.float64)
    # Pillow starts each sum at half a unit, so that the shift below rounds to nearest.
    total = torch.full(
        (*images.shape[:-1], out_size),
        float(1 << (PRECISION_BITS - 1)),
        dtype=torch.float64,
        device=images.device,
    )
    for k in range(index.shape[1]):
        total += pixels[..., index_t[:, k]] * weight_t[:, k]
    return torch.floor(total / (1 << PRECISION_BITS)).clamp_(0, 255).to(torch.uint8)


def pil_resize(images: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """``images`` (uint8 ``[N, 3, H, W]``) resized as ``PIL.Image.resize((width, height))`` does."""
    in_h, in_w = images.shape[-2:]
    if in_h != height and in_w != width and in_h * width != in_w * height:
        return _pillow_resize(images, height, width, resample)
    if images.shape[-1] != width:
        images = _resample_last_dim(images, width, resample)
    if images.shape[-2] != height:
        images = _resample_last_dim(images.transpose(-1, -2), height, resample).transpose(-1, -2)
    return images


def _pillow_resize(images: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Pillow's own resize of each image (on the CPU), back on the images' device."""
    out = []
    for image in images.permute(0, 2, 3, 1).cpu().numpy():
        resized = Image.fromarray(image).resize((width, height), resample=resample)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    return torch.stack(out).to(images.device)


def unsupported_reason(image_processor) -> str | None:
    """Why ``image_processor`` cannot be reproduced on the device, or ``None`` if it can."""
    missing = [name for name in _REQUIRED if getattr(image_processor, name, None) is None]
    if missing:
        return f"{type(image_processor).__name__} has no {', '.join(missing)}"
    size = image_processor.size
    if not size.get("shortest_edge") or not size.get("longest_edge"):
        return f"size {dict(size)} has no shortest_edge/longest_edge pixel bounds"
    resample = getattr(image_processor, "resample", Image.Resampling.BICUBIC)
    if getattr(image_processor, "do_resize", True) and int(resample) not in FILTERS:
        return f"resampling filter {resample!r} is not reproduced (bilinear, bicubic, lanczos are)"
    return None


class DeviceImageProcessor:
    """The Qwen2-VL image processor's output computed from uint8 tensors on their device."""

    def __init__(self, image_processor) -> None:
        reason = unsupported_reason(image_processor)
        if reason is not None:
            raise ValueError(f"device image preprocessing is not available: {reason}")
        ip = image_processor
        self.patch_size = int(ip.patch_size)
        self.merge_size = int(ip.merge_size)
        self.temporal_patch_size = int(ip.temporal_patch_size)
        self.min_pixels = int(ip.size["shortest_edge"])
        self.max_pixels = int(ip.size["longest_edge"])
        self.do_resize = bool(getattr(ip, "do_resize", True))
        self.resample = int(getattr(ip, "resample", Image.Resampling.BICUBIC))
        self._table = torch.from_numpy(_value_table(ip))  # float32 [3 * 256]
        self._tables: dict[torch.device, torch.Tensor] = {}

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The processor's (height, width) after ``smart_resize``."""
        if not self.do_resize:
            return height, width
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """``image_grid_thw`` of an image of this size (known on the host, no device work)."""
        out_h, out_w = self.output_size(height, width)
        return 1, out_h // self.patch_size, out_w // self.patch_size

    def _table_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = self._table.to(device)
        return self._tables[device]

    def __call__(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values, image_grid_thw)`` of uint8 ``[3, H, W]`` images, in their order.

        Images of one size are processed as one batch. ``image_grid_thw`` is a CPU tensor.
        """
        if not images:
            raise ValueError("no images to preprocess")
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {i}: expected uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}"
                )
            by_size.setdefault((image.shape[1], image.shape[2]), []).append(i)
        grids = [self.grid(*image.shape[1:]) for image in images]
        counts = [grid_h * grid_w for _, grid_h, grid_w in grids]
        starts = [0, *itertools.accumulate(counts)]
        pixel_values = None
        for (height, width), indices in by_size.items():
            batch = torch.stack([images[i] for i in indices])
            out_h, out_w = self.output_size(height, width)
            if (out_h, out_w) != (height, width):
                batch = pil_resize(batch, out_h, out_w, self.resample)
            flat = self._patchify(batch)  # [N, patches per image, patch dim]
            if len(by_size) == 1:  # one size: the patches are already in order, no copy
                pixel_values = flat.reshape(-1, flat.shape[-1])
                break
            if pixel_values is None:
                pixel_values = flat.new_empty((starts[-1], flat.shape[-1]))
            for k, i in enumerate(indices):
                pixel_values[starts[i] : starts[i + 1]] = flat[k]
        return pixel_values, torch.tensor(grids, dtype=torch.long)

    def _patchify(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` -> float32 ``[N, grid_h * grid_w, 3 * T * P * P]``.

        The processor's transpose is done on the uint8 pixels (4x less memory traffic), then the
        lookup table maps each (channel, value) to its normalised float32 and the temporal copies
        are written.
        """
        n, channels, height, width = batch.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = height // p, width // p
        patches = batch.reshape(n, channels, grid_h // m, m, p, grid_w // m, m, p)
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, m, m, c, p, p
        patches = patches.reshape(n, grid_h * grid_w, channels, 1, p * p)
        offsets = torch.arange(channels, dtype=torch.int32, device=batch.device) * 256
        index = patches.to(torch.int32).add_(offsets.view(1, 1, channels, 1, 1))
        values = self._table_on(batch.device).index_select(0, index.reshape(-1))
        values = values.view(n, grid_h * grid_w, channels, 1, p * p)
        values = values.expand(n, grid_h * grid_w, channels, t, p * p)
        return values.reshape(n, grid_h * grid_w, channels * t * p * p)


def _value_table(image_processor) -> np.ndarray:
    """float32 ``[3 * 256]``: every uint8 value of every channel through rescale and normalize.

    Runs the NumPy functions of the PIL image processor (``transformers.image_transforms``) on a
    ``[3, 1, 256]`` ramp with this processor's settings; both are elementwise, so the table holds
    exactly what they give for each pixel of a full image.
    """
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
    first = ChannelDimension.FIRST
    if getattr(image_processor, "do_rescale", True):
        values = rescale(values, image_processor.rescale_factor, first, input_data_format=first)
    if getattr(image_processor, "do_normalize", True):
        mean, std = image_processor.image_mean, image_processor.image_std
        values = normalize(values, mean, std, first, input_data_format=first)
    return np.asarray(values, dtype=np.float32).reshape(3 * 256)
