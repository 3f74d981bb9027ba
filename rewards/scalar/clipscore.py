"""CLIPScore: how well an image matches its prompt according to a CLIP model.

By default this is CLIP-S as Hessel et al. (2021) define and compute it: the prompt is encoded as
``"A photo depicts " + prompt`` (their reference code's prefix, ``prefix=None`` or ``""`` turns it
off) and the image goes through OpenAI CLIP's evaluation transform (PIL bicubic resize of the
shorter side, centre crop with torchvision's rounding, RGB; see :mod:`rewards.scalar.pixels`).

Raw score: the cosine between CLIP's image and text embeddings, in [-1, 1] (for matching pairs
with OpenAI CLIP ViT-L/14 typically 0.25-0.35). Normalisations (``normalize``):

- ``"none"``: the cosine.
- ``"clip_s"``: CLIP-S, ``w * max(cos, 0)`` with ``w = 2.5``, in [0, 2.5].
- ``"percent"``: ``100 * max(cos, 0)``, in [0, 100] (torchmetrics' CLIPScore, which uses no
  prefix: set ``prefix=null`` to match it).
"""

from __future__ import annotations

import torch

from rewards.scalar.clip import ClipSimilarityReward
from rewards.scalar.common import model_text
from rewards.scalar.pixels import clip_eval_pixels

CLIP_S_WEIGHT = 2.5
CLIP_S_PREFIX = model_text("clip_s_prefix.txt")


class CLIPScoreReward(ClipSimilarityReward):
    """CLIPScore with any local transformers CLIP folder (e.g. openai/clip-vit-large-patch14)."""

    name = "clipscore"
    keeps_image_mode = True  # resized and cropped in its own mode, converted to RGB after
    DEFAULT_NORMALIZE = "clip_s"
    NORMALIZATIONS = {
        "none": lambda cos: cos,
        "clip_s": lambda cos: CLIP_S_WEIGHT * cos.clamp(min=0),
        "percent": lambda cos: 100.0 * cos.clamp(min=0),
    }

    def __init__(
        self,
        path: str,
        processor_path: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: str | None = None,
        prefix: str | None = CLIP_S_PREFIX,
    ) -> None:
        super().__init__(path, processor_path, device, dtype, batch_size, normalize)
        # As the reference code: a prefix not ending in a space gets one.
        self.prefix = prefix if not prefix or prefix.endswith(" ") else prefix + " "

    def texts(self, prompts: list[str]) -> list[str]:
        return [(self.prefix or "") + prompt for prompt in prompts]

    def pixel_values(self, images):
        processor = self.image_processor
        size = processor.crop_size["height"]
        return torch.stack(
            [clip_eval_pixels(im, size, processor.image_mean, processor.image_std) for im in images]
        )
