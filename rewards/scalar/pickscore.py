"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Raw score: ``exp(logit_scale) * cos(image, prompt)``, i.e. about ``100 * cos``; real images
and prompts give roughly 17-24. This is Flow-GRPO's ``PickScoreScorer`` formula
(yifan123/flow_grpo, ``flow_grpo/pickscore_scorer.py``): transformers' CLIP processor for both
inputs, projections L2-normalised, scaled by the exponentiated logit scale. Whatever ``dtype`` the
towers run in, the logit scale is read from the checkpoint in float32 and the normalisation, the
dot product and the scaling run in float32: a bf16 model would otherwise round ``logit_scale``
(4.6052 -> 4.59375) and shift every score by about 1%. Normalisations (``normalize``):

- ``"none"``: the raw score.
- ``"divide_26"``: raw / 26, roughly [0.65, 0.95]; the scale Flow-GRPO trains with.

Local files: the model folder (``yuvalkirstain/PickScore_v1``: config.json + weights) and the
processor folder of the CLIP it was fine-tuned from (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``:
preprocessor_config.json + tokenizer files), given as ``processor_path``.
"""

from __future__ import annotations

from rewards.scalar.clip import ClipSimilarityReward
from rewards.scalar.common import checkpoint_tensor

FLOW_GRPO_SCALE = 26.0


class PickScoreReward(ClipSimilarityReward):
    """PickScore from a local PickScore_v1 folder and a local CLIP-H processor folder."""

    name = "pickscore"
    DEFAULT_NORMALIZE = "divide_26"
    NORMALIZATIONS = {
        "none": lambda raw: raw,
        "divide_26": lambda raw: raw / FLOW_GRPO_SCALE,
    }

    def load(self) -> None:
        super().load()
        self.scale = checkpoint_tensor(self.path, "logit_scale").float().exp().to(self.device)

    def raw_scores(self, images, prompts):
        cos = self.cosine(images, prompts)
        return self.scale * cos, {"cosine": cos}, [None] * len(prompts)
