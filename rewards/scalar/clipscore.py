"""CLIPScore: how well an image matches its prompt according to a CLIP model.

Raw score: the cosine between CLIP's image and text embeddings, in [-1, 1] (for matching pairs
with OpenAI CLIP ViT-L/14 typically 0.25-0.35). Normalisations (``normalize``):

- ``"none"``: the cosine.
- ``"clip_s"``: CLIP-S of Hessel et al. (2021), ``w * max(cos, 0)`` with ``w = 2.5``, in [0, 2.5].
- ``"percent"``: ``100 * max(cos, 0)``, in [0, 100] (torchmetrics' CLIPScore).
"""

from __future__ import annotations

from rewards.scalar.clip import ClipSimilarityReward

CLIP_S_WEIGHT = 2.5


class CLIPScoreReward(ClipSimilarityReward):
    """CLIPScore with any local transformers CLIP folder (e.g. openai/clip-vit-large-patch14)."""

    name = "clipscore"
    DEFAULT_NORMALIZE = "clip_s"
    NORMALIZATIONS = {
        "none": lambda cos: cos,
        "clip_s": lambda cos: CLIP_S_WEIGHT * cos.clamp(min=0),
        "percent": lambda cos: 100.0 * cos.clamp(min=0),
    }
