"""Scalar rewards: CLIPScore, PickScore, HPSv2, ImageReward, HPSv3, UnifiedReward and the LAION
aesthetic predictor (loaded from local files), JPEG (in)compressibility and the OCR reward. Each
maps (image, prompt) to one number; see docs/scalar_rewards.md."""

from rewards.scalar.aesthetic import AestheticReward
from rewards.scalar.clipscore import CLIPScoreReward
from rewards.scalar.hpsv2 import HPSv2Reward
from rewards.scalar.hpsv3 import HPSv3Reward
from rewards.scalar.imagereward import ImageRewardReward
from rewards.scalar.jpeg import JpegCompressibilityReward, JpegIncompressibilityReward
from rewards.scalar.ocr import OcrReward
from rewards.scalar.pickscore import PickScoreReward
from rewards.scalar.unifiedreward import UnifiedRewardReward

__all__ = [
    "AestheticReward",
    "CLIPScoreReward",
    "HPSv2Reward",
    "HPSv3Reward",
    "ImageRewardReward",
    "JpegCompressibilityReward",
    "JpegIncompressibilityReward",
    "OcrReward",
    "PickScoreReward",
    "UnifiedRewardReward",
]
