"""HPSv3 against the official ``hpsv3`` package (1.0.0, PyPI), run in its own environment with
transformers 4.45.2.

The official side writes a small Qwen2-VL-Instruct folder (the published Qwen2-VL-7B-Instruct chat
template, a byte-level BPE tokenizer built here), builds ``Qwen2VLRewardModelBT`` through
``hpsv3.train.create_model_and_processor`` with random weights, saves ``HPSv3.safetensors`` as
released and scores real images with ``HPSv3RewardInferencer.reward`` (official instruction,
256*28*28 pixels, one right-padded batch). Here the folder and the file load through
``reward.path`` / ``reward.checkpoint`` with the defaults, and everything the model sees (token
ids, pixels, image grids) and the scores must agree, the scores to 1e-4 relative in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from support import PROMPTS, max_relative_difference, run_official

from rewards.judges.tiny_vlm import build_qwen_tokenizer
from rewards.scalar import HPSv3Reward

pytestmark = pytest.mark.parity

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"
BF16_TOLERANCE = 0.25  # of the scores' spread: a random tiny model in bf16 is mostly rounding


@pytest.fixture(scope="module")
def official(real_images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hpsv3")
    tokenizer = build_qwen_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    spec = {
        "seed": 0,
        "tokenizer_json": str(folder / "tokenizer" / "tokenizer.json"),
        "chat_template": str(TEMPLATES / "Qwen2-VL-7B-Instruct.jinja"),
        # Like Qwen2-VL-7B (152064 rows for 151657 tokens), more rows than tokens: HPSv3 resizes
        # the embeddings to the tokenizer plus <|Reward|>.
        "vocab_size": len(tokenizer) + 16,
        "base": str(folder / "Qwen2-VL-parity-Instruct"),
        "work": str(folder),
        "checkpoint": str(folder / "HPSv3.safetensors"),
        "inputs": str(folder / "inputs.pt"),
        "images": [str(p) for p in real_images],
        "prompts": [PROMPTS[i % len(PROMPTS)] for i in range(len(real_images))],
    }
    result = run_official("hpsv3", "official_hpsv3.py", spec, folder, timeout=1200)
    return spec, result, len(tokenizer)


def test_checkpoint_is_laid_out_as_released(official):
    spec, result, tokens = official
    with safe_open(spec["checkpoint"], framework="pt") as handle:
        keys = list(handle.keys())
        dtypes = {key: handle.get_slice(key).get_dtype() for key in keys}
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert any(k.startswith("visual.blocks.") for k in keys)
    assert {k for k in keys if k.startswith("rm_head.")} == {
        f"rm_head.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")
    }
    assert {dtypes[k] for k in keys if k.startswith("rm_head.")} == {"F32"}
    assert {dtypes[k] for k in keys if not k.startswith("rm_head.")} == {"BF16"}
    assert result["embedding_rows"] == tokens + 1 == result["reward_token_id"] + 1


@pytest.fixture(scope="module")
def reward(official):
    spec, _, _ = official
    return HPSv3Reward(path=spec["base"], checkpoint=spec["checkpoint"], dtype="float32")


def test_model_inputs_equal_the_official_ones(official, reward):
    """Token ids (chat template, official instruction, <|Reward|>), pixels and image grids."""
    spec, _, _ = official
    theirs = torch.load(spec["inputs"], weights_only=True)
    reward._ensure_loaded()
    images = [Image.open(p).convert("RGB") for p in spec["images"]]
    ours = reward.inputs(images, spec["prompts"])
    assert torch.equal(ours["input_ids"].cpu(), theirs["input_ids"])
    assert torch.equal(ours["attention_mask"].cpu(), theirs["attention_mask"])
    assert torch.equal(ours["image_grid_thw"].cpu(), theirs["image_grid_thw"])
    torch.testing.assert_close(
        ours["pixel_values"].cpu(), theirs["pixel_values"], atol=1e-5, rtol=0
    )


def test_scores_equal_the_official_package(official, reward):
    spec, result, _ = official
    images = [Image.open(p) for p in spec["images"]]
    reward.batch_size = 3
    out = reward(images, spec["prompts"])
    difference = max_relative_difference(out.scores.tolist(), result["scores"])
    sigma = max_relative_difference(out.details["log_sigma"].tolist(), result["log_sigma"])
    print(json.dumps({"reward": "hpsv3", "pairs": len(images), "max_rel_diff": difference,
                      "log_sigma_max_rel_diff": sigma}))  # fmt: skip
    assert difference < 1e-4 and sigma < 1e-4
    assert len({round(s, 5) for s in out.scores.tolist()}) > 1


def test_bf16_scores_against_the_official_bf16_inferencer(official):
    """The default dtype: both sides in bfloat16 (backbone bf16, head float32), on the CPU with
    sdpa attention. Not bit-equal (transformers 4.45 and 5 order some bf16 operations
    differently), so the difference is measured in units of the scores' spread, next to the
    official run's own bf16-vs-float32 shift: ours must be no further from the official bf16
    scores than bf16 rounding itself moves them."""
    spec, result, _ = official
    reward = HPSv3Reward(path=spec["base"], checkpoint=spec["checkpoint"], batch_size=7)
    assert reward.dtype == torch.bfloat16
    images = [Image.open(p) for p in spec["images"]]
    ours = reward(images, spec["prompts"]).scores.double()
    theirs, fp32 = torch.tensor(result["scores_bf16"]), torch.tensor(result["scores"])
    spread = fp32.std().item()
    difference = (ours - theirs).abs().max().item()
    rounding = (theirs - fp32).abs().max().item()
    ours_vs_fp32 = (ours - fp32).abs().max().item()
    print(json.dumps({"reward": "hpsv3_bf16", "pairs": len(images), "score_std_fp32": spread,
                      "max_abs_diff_vs_official_bf16": difference,
                      "official_bf16_vs_fp32_max_abs": rounding,
                      "ours_bf16_vs_official_fp32_max_abs": ours_vs_fp32}))  # fmt: skip
    assert difference <= rounding
    assert difference < BF16_TOLERANCE * spread
