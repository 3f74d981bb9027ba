"""ImageReward on tiny random BLIP encoders saved in the official checkpoint layout, with a
locally written BERT vocabulary: the score equals a float64 recomputation that preprocesses the
image by hand (PIL bicubic resize, centre crop at rounded offsets, CLIP mean/std), runs the
encoders and the head, and standardises with the official constants. (Parity with the official
``image-reward`` package itself: tests/parity.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
)

from rewards.scalar.common import score_mlp
from rewards.scalar.imagereward import SCORE_MEAN, SCORE_STD, ImageRewardReward
from rewards.scalar.pixels import CLIP_MEAN, CLIP_STD
from rl.tiny import WORDS

PROMPTS = ["a red apple on a wooden table", "two dogs", "a small house next to a river at night"]


def _official_layout(vision, text, head) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in vision.state_dict().items():
        key = (
            key.replace("embeddings.class_embedding", "cls_token")
            .replace("embeddings.position_embedding", "pos_embed")
            .replace("embeddings.patch_embedding", "patch_embed.proj")
            .replace("encoder.layers.", "blocks.")
            .replace("layer_norm1", "norm1")
            .replace("layer_norm2", "norm2")
            .replace("self_attn.qkv", "attn.qkv")
            .replace("self_attn.projection", "attn.proj")
            .replace("post_layernorm", "norm")
        )
        out[f"blip.visual_encoder.{key}"] = value
    out |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    out |= {f"mlp.layers.{k}": v for k, v in head.state_dict().items()}
    out["blip.vision_proj.weight"] = torch.zeros(4, 4)  # unused by the score: ignored
    return {k: v.detach().clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_imagereward")
    bert = folder / "bert-base-uncased"
    bert.mkdir()
    (bert / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    vocab = len(WORDS) + 5 + 2  # + [DEC] and [ENC]
    torch.manual_seed(0)
    vision = BlipVisionModel(
        BlipVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=1, image_size=32, patch_size=8, layer_norm_eps=1e-6)
    ).eval()  # fmt: skip
    med = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-12,
               max_position_embeddings=64, add_cross_attention=True, encoder_width=768)  # fmt: skip
    text = BlipTextModel(
        BlipTextConfig(**{k: v for k, v in med.items() if k not in ("add_cross_attention",
                                                                      "encoder_width")},
                       encoder_hidden_size=64, is_decoder=True),
        add_pooling_layer=False,
    ).eval()  # fmt: skip
    head = score_mlp(32).eval()
    with torch.no_grad():  # layer norms start as identities: make every mapping error visible
        for module in (vision, text):
            for param in module.parameters():
                param.add_(0.1 * torch.randn_like(param))
    torch.save(_official_layout(vision, text, head), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med))
    return folder, bert, vision, text, head


def _preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """torchvision's Resize(size) + CenterCrop(size) on a PIL image, written out: the longer side
    is truncated, the crop offset rounded half to even (an overhang of 3 starts the crop at 2)."""
    w, h = image.size
    new = (size, size * h // w) if w <= h else (size * w // h, size)
    image = image.resize(new, Image.BICUBIC)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64) / 255
    arr = (arr - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_score_matches_float64_recomputation(imagereward_files):
    folder, bert, vision, text, head = imagereward_files
    rng = np.random.default_rng(0)
    # 40 x 44 -> 32 x 35: an overhang of 3, where a floored crop offset would be 1, not 2.
    images = [Image.fromarray(rng.integers(0, 256, (44, 40, 3), dtype=np.uint8)) for _ in range(3)]
    reward = ImageRewardReward(path=str(folder / "ImageReward.pt"), tokenizer_path=str(bert),
                               batch_size=2)  # fmt: skip
    out = reward(images, PROMPTS)

    tokenizer = BertTokenizer.from_pretrained(str(bert))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    vision64, text64, head64 = vision.double(), text.double(), head.double()
    expected = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS):
            patches = vision64(pixel_values=_preprocess(image, 32)).last_hidden_state
            ids = tokenizer(prompt, padding="max_length", max_length=35, return_tensors="pt")
            cls = text64(
                input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                encoder_hidden_states=patches,
            ).last_hidden_state[:, 0]  # fmt: skip
            expected.append((float(head64(cls)) - SCORE_MEAN) / SCORE_STD)
    torch.testing.assert_close(out.scores.double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # fmt: skip
    sig = ImageRewardReward(path=str(folder / "ImageReward.pt"), tokenizer_path=str(bert),
                            normalize="sigmoid")(images, PROMPTS).scores  # fmt: skip
    torch.testing.assert_close(sig, torch.sigmoid(out.scores), atol=1e-6, rtol=0)


def test_missing_files_and_wrong_tokenizer(imagereward_files, tmp_path):
    folder, bert, *_ = imagereward_files
    with pytest.raises(FileNotFoundError, match="imagereward checkpoint.*ImageReward.pt"):
        ImageRewardReward(path=str(tmp_path / "ImageReward.pt"), tokenizer_path=str(bert))
    (tmp_path / "ImageReward.pt").write_bytes((folder / "ImageReward.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="med_config.json"):
        ImageRewardReward(path=str(tmp_path / "ImageReward.pt"), tokenizer_path=str(bert))
    with pytest.raises(FileNotFoundError, match="imagereward tokenizer.*lacks vocab.txt"):
        ImageRewardReward(path=str(folder / "ImageReward.pt"), tokenizer_path=str(tmp_path))
    short = tmp_path / "short_vocab"
    short.mkdir()
    (short / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncat\n")
    reward = ImageRewardReward(path=str(folder / "ImageReward.pt"), tokenizer_path=str(short))
    with pytest.raises(ValueError, match="bert-base-uncased"):
        reward([Image.new("RGB", (32, 32))], ["a cat"])
