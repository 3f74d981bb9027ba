"""JPEG (in)compressibility: the file size of an image saved as JPEG, the toy reward of DDPO that
Flow-GRPO keeps (yifan123/flow_grpo ``flow_grpo/rewards.py``, ``jpeg_incompressibility`` and
``jpeg_compressibility``, commit ac4c86e8).

Each image is saved with PIL as JPEG at quality 95 (PIL's defaults otherwise: 4:2:0 chroma
subsampling, no optimisation) and its size is taken in kilobytes of 1000 bytes.

- ``jpeg_incompressibility``: the size in kB (larger = more detail, more noise);
- ``jpeg_compressibility``: ``-size / 500`` (smaller files score higher).

``details["raw"]`` is the size in kB for both. A float image tensor is rounded to uint8 as the
reference does (``(x * 255).round().clamp(0, 255)``; :func:`rewards.images.to_pil` clamps first,
which gives the same bytes). The reward needs no model and no prompt.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

from rewards.base import Reward, RewardOutput

JPEG_QUALITY = 95
KILOBYTE = 1000
COMPRESSIBILITY_SCALE = 500.0


def jpeg_size_kb(image: Image.Image, quality: int = JPEG_QUALITY) -> float:
    """The size of ``image`` (RGB) saved as JPEG at ``quality``, in kB of 1000 bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / KILOBYTE


class JpegIncompressibilityReward(Reward):
    """Score = JPEG size in kB at quality 95 (Flow-GRPO's ``jpeg_incompressibility``)."""

    name = "jpeg_incompressibility"

    def __init__(self, quality: int = JPEG_QUALITY) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"{self.name}: quality must be in [1, 100], got {quality}")
        self.quality = int(quality)

    def transform(self, size_kb: torch.Tensor) -> torch.Tensor:
        """The score of a size in kB (the size itself here)."""
        return size_kb

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        sizes = torch.tensor(
            [jpeg_size_kb(image, self.quality) for image in images], dtype=torch.float64
        )
        return RewardOutput(scores=self.transform(sizes), details={"raw": sizes})


class JpegCompressibilityReward(JpegIncompressibilityReward):
    """Score = -(JPEG size in kB) / 500 (Flow-GRPO's ``jpeg_compressibility``)."""

    name = "jpeg_compressibility"

    def transform(self, size_kb: torch.Tensor) -> torch.Tensor:
        return -size_kb / COMPRESSIBILITY_SCALE
