"""PickScore against Flow-GRPO's scorer formula (yifan123/flow_grpo, ``pickscore_scorer.py``),
computed from its source with transformers 4.45.2 in the hpsv3 environment (Flow-GRPO is not a
package that could be installed and imported; see official_pickscore.py).

Both sides read the same model folder (a small CLIPModel with random weights, saved as
PickScore_v1 is) and processor folder (transformers' CLIP image processor and the OpenCLIP BPE
tokenizer, as the laion CLIP-H folder holds them); the scores, /26 included, must agree to 1e-4
relative in float32, and so must the pixels and token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from support import PROMPTS, max_relative_difference, run_official

from rewards.scalar import PickScoreReward

pytestmark = pytest.mark.parity

COMMON = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
              hidden_act="gelu", layer_norm_eps=1e-5)  # fmt: skip


@pytest.fixture(scope="module")
def official(real_images, clip_tokenizer_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pickscore")
    spec = {
        "seed": 0,
        "bpe_dir": str(clip_tokenizer_files),
        "model_dir": str(folder / "PickScore_v1"),
        "processor_dir": str(folder / "CLIP-ViT-H-14"),
        "text_config": {**COMMON, "vocab_size": 49408, "max_position_embeddings": 77,
                        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        "vision_config": {**COMMON, "image_size": 224, "patch_size": 32},
        "projection_dim": 32,
        "pixels": str(folder / "pixels.pt"),
        "images": [str(p) for p in real_images],
        "prompts": [PROMPTS[i % len(PROMPTS)] for i in range(len(real_images))],
    }  # fmt: skip
    return spec, run_official("hpsv3", "official_pickscore.py", spec, folder)


def test_pixels_and_tokens_equal_the_reference(official):
    """Our pixels (RGB first, then transformers 5's PIL backend) are transformers 4.45's, RGBA
    included (4.x drops alpha; 5's own conversion would composite onto white), and the tokenizer
    gives the same ids."""
    spec, result = official
    reward = PickScoreReward(path=spec["model_dir"], processor_path=spec["processor_dir"])
    reward._ensure_loaded()
    theirs = torch.load(spec["pixels"], weights_only=True)
    for path in spec["images"]:
        ours = reward.pixel_values([Image.open(path).convert("RGB")])[0]
        torch.testing.assert_close(ours, theirs[Path(path).name], atol=1e-6, rtol=0)
    tokens = reward.tokenizer(spec["prompts"], padding=True, truncation=True, max_length=77)
    assert tokens["input_ids"] == result["input_ids"]


def test_scores_equal_flow_grpo_formula(official):
    spec, result = official
    reward = PickScoreReward(
        path=spec["model_dir"], processor_path=spec["processor_dir"], batch_size=3
    )
    out = reward([Image.open(p) for p in spec["images"]], spec["prompts"])
    difference = max_relative_difference(out.scores.tolist(), result["scores"])
    print(json.dumps({"reward": "pickscore", "pairs": len(spec["images"]),
                      "max_rel_diff": difference}))  # fmt: skip
    assert difference < 1e-4
    assert len({round(s, 5) for s in out.scores.tolist()}) > 1
