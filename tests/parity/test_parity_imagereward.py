"""ImageReward against the official ``image-reward`` package (1.5, PyPI), run in its own
environment.

The official side builds the package's ``ImageReward`` model (the real ViT-L/16 image encoder, a
2-layer BERT text encoder) with random weights, saves it as ``ImageReward.pt`` is laid out and
scores real images with ``ImageReward.load(...).score``. Here that file loads through
``reward.path`` with the same ``med_config.json`` and vocabulary, and the scores must agree to
1e-4 relative in float32. Its preprocessed pixels must equal ours (the OpenAI CLIP transform that
CLIPScore's CLIP-S default shares).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from support import PROMPTS, max_relative_difference, run_official

from rewards.scalar import ImageRewardReward
from rewards.scalar.pixels import clip_eval_pixels

pytestmark = pytest.mark.parity

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocabulary() -> list[str]:
    """A small uncased WordPiece vocabulary: the prompts' words except a few, which must then be
    split into '##' pieces, plus every letter, digit and punctuation mark."""
    words = sorted({w for p in PROMPTS for w in re.findall(r"[a-z]+", p.lower())})
    whole = [w for w in words if w not in {"astronaut", "photograph", "matplotlib", "bicycle"}]
    pieces = list("abcdefghijklmnopqrstuvwxyz0123456789")
    marks = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return list(dict.fromkeys(SPECIALS + marks + pieces + [f"##{c}" for c in pieces] + whole))


@pytest.fixture(scope="module")
def official(real_images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    vocab = _vocabulary()
    (folder / "bert").mkdir()
    (folder / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    med_config = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
        "intermediate_size": 1024, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 2,
        "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,  # + [DEC], [ENC]
        "encoder_width": 768, "add_cross_attention": True,
    }  # fmt: skip
    (folder / "med_config.json").write_text(json.dumps(med_config, indent=1))
    spec = {
        "seed": 0,
        "vocab": str(folder / "bert" / "vocab.txt"),
        "hf_home": str(folder / "hf_home"),
        "med_config": str(folder / "med_config.json"),
        "checkpoint": str(folder / "ImageReward.pt"),
        "pixels": str(folder / "pixels.pt"),
        "images": [str(p) for p in real_images],
        "prompts": [PROMPTS[i % len(PROMPTS)] for i in range(len(real_images))],
    }
    return spec, run_official("imagereward", "official_imagereward.py", spec, folder)


def test_pixels_equal_the_official_transform(official):
    spec, _ = official
    theirs = torch.load(spec["pixels"], weights_only=True)
    for path in spec["images"]:
        ours = clip_eval_pixels(Image.open(path), 224)
        torch.testing.assert_close(ours, theirs[path.rsplit("/", 1)[-1]], atol=2e-6, rtol=0)


def test_scores_equal_the_official_package(official):
    spec, result = official
    reward = ImageRewardReward(
        path=spec["checkpoint"], tokenizer_path=str(spec["vocab"]).rsplit("/", 1)[0], batch_size=3
    )
    images = [Image.open(p) for p in spec["images"]]
    out = reward(images, spec["prompts"])
    assert [reward.tokenizer.tokenize(p) for p in spec["prompts"]] == result["tokens"]
    assert any("##" in t for tokens in result["tokens"] for t in tokens)  # WordPiece was used
    difference = max_relative_difference(out.scores.tolist(), result["scores"])
    print(json.dumps({"reward": "imagereward", "pairs": len(images), "max_rel_diff": difference}))
    assert difference < 1e-4
    assert len({round(s, 5) for s in out.scores.tolist()}) > 1
