"""Scalar reward models loaded from local files: CLIPScore, PickScore, HPSv2, ImageReward, HPSv3
and UnifiedReward. Each maps (image, prompt) to one number; see docs/scalar_rewards.md."""

from rewards.scalar.clipscore import CLIPScoreReward
from rewards.scalar.hpsv2 import HPSv2Reward
from rewards.scalar.hpsv3 import HPSv3Reward
from rewards.scalar.imagereward import ImageRewardReward
from rewards.scalar.pickscore import PickScoreReward
from rewards.scalar.unifiedreward import UnifiedRewardReward

__all__ = [
    "CLIPScoreReward",
    "HPSv2Reward",
    "HPSv3Reward",
    "ImageRewardReward",
    "PickScoreReward",
    "UnifiedRewardReward",
]
