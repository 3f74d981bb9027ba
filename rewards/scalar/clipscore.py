"""CLIPScore: how well an image matches its prompt according to a CLIP model.

By default this is CLIP-S as Hessel et al. (2021) define and compute it (jmhessel/clipscore,
``clipscore.py``), with the model they define it with, OpenAI CLIP ViT-B/32 (a local copy of
``openai/clip-vit-base-patch32``): the prompt is encoded as ``"A photo depicts " + prompt`` (their
reference code's prefix, ``prefix=None`` or ``""`` turns it off), cleaned as OpenAI CLIP's
``clip.tokenize`` cleans it (:func:`~rewards.scalar.clip.clip_clean_text`: ftfy, HTML entities,
whitespace, lower case; ``clean_text=False`` leaves it to transformers' tokenizer, as torchmetrics
does), and the image goes through OpenAI CLIP's evaluation transform (PIL bicubic resize of the
shorter side, centre crop with torchvision's rounding, RGB; see :mod:`rewards.scalar.pixels`).

Raw score: the cosine between CLIP's image and text embeddings, in [-1, 1] (for matching pairs
typically 0.25-0.35). Normalisations (``normalize``):

- ``"none"``: the cosine.
- ``"clip_s"``: CLIP-S, ``w * max(cos, 0)`` with ``w = 2.5``, in [0, 2.5].
- ``"percent"``: ``100 * max(cos, 0)``, in [0, 100] (torchmetrics' CLIPScore, which uses no
  prefix and no cleaning: set ``prefix=null`` and ``clean_text=false`` to match it).
"""

from __future__ import annotations

import torch

from rewards.scalar.clip import ClipSimilarityReward, clip_clean_text
from rewards.scalar.common import model_text
from rewards.scalar.pixels import clip_eval_pixels

CLIP_S_WEIGHT = 2.5
CLIP_S_PREFIX = model_text("clip_s_prefix.txt")


class CLIPScoreReward(ClipSimilarityReward):
    """CLIPScore with a local transformers CLIP folder (CLIP-S: openai/clip-vit-base-patch32)."""

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
        clean_text: bool = True,
    ) -> None:
        super().__init__(path, processor_path, device, dtype, batch_size, normalize)
        # As the reference code: a prefix not ending in a space gets one.
        self.prefix = prefix if not prefix or prefix.endswith(" ") else prefix + " "
        self.clean_text = bool(clean_text)

    def texts(self, prompts: list[str]) -> list[str]:
        texts = [(self.prefix or "") + prompt for prompt in prompts]
        return [clip_clean_text(text) for text in texts] if self.clean_text else texts

    def pixel_values(self, images):
        processor = self.image_processor
        size = processor.crop_size["height"]
        return torch.stack(
            [clip_eval_pixels(im, size, processor.image_mean, processor.image_std) for im in images]
        )
