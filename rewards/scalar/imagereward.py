"""ImageReward (Xu et al., NeurIPS 2023): BLIP (ViT-L/16 image encoder, BERT-base text encoder
with cross-attention to the image) and an MLP head, trained on ImageRewardDB preferences.

The ``image-reward`` package cannot serve here: it imports BERT helpers that transformers 5 no
longer has, pins timm 0.6.13, and downloads its config and the bert-base-uncased tokenizer from
the hub. Its checkpoint, however, uses the original BLIP module names, which transformers' own
BLIP port (``BlipVisionModel``, ``BlipTextModel``) kept almost unchanged, so the tensors are
loaded onto those (see :func:`to_transformers_blip`). The architecture sizes are read from the
checkpoint and ``med_config.json``.

Score, as the official ``ImageReward.score``: the prompt (BERT tokens, padded to 35) attends to
the image patches; the [CLS] output goes through the head (768-1024-128-64-16-1, no activations),
then is standardised with the official mean 0.16717 and std 1.03334. Images are preprocessed as
the official ``_transform(224)``: the image, in its own mode, resized (shorter side, PIL bicubic),
centre-cropped with torchvision's rounded offsets, then converted to RGB and normalised with
OpenAI CLIP's mean/std (:func:`rewards.scalar.pixels.clip_eval_pixels`). Raw range: unbounded,
roughly N(0, 1) on ImageRewardDB (mostly within -2.5 .. 2.5). Normalisations (``normalize``):
``"none"`` (the official standardised score) or ``"sigmoid"`` (mapped into (0, 1)).

Local files: ``path``, the ``ImageReward.pt`` checkpoint; ``med_config``, the BERT config
``med_config.json`` (default: next to the checkpoint); ``tokenizer_path``, a
``bert-base-uncased`` folder with ``vocab.txt``.
"""

from __future__ import annotations

import json
import re

import torch

from rewards.scalar.common import (
    ScalarReward,
    assign_exactly,
    load_state_dict_file,
    require_dir,
    require_file,
    score_mlp,
)
from rewards.scalar.pixels import clip_eval_pixels

SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
MAX_TEXT_TOKENS = 35

_VISION_KEYS = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def to_transformers_blip(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an ImageReward state dict into (vision, text, head) dicts with transformers keys.

    Keys outside the three parts the score uses (BLIP's contrastive projections) are dropped.
    """
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, replacement in _VISION_KEYS:
                name, hits = re.subn(pattern, replacement, name)
                if hits:
                    break
            else:
                raise KeyError(f"unexpected ImageReward vision key {key!r}")
            vision[name] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = value
    return vision, text, head


class ImageRewardReward(ScalarReward):
    """ImageReward from its local checkpoint, med_config.json and a bert-base-uncased folder."""

    name = "imagereward"
    keeps_image_mode = True  # resized and cropped in its own mode, converted to RGB after
    NORMALIZATIONS = {"none": lambda s: s, "sigmoid": torch.sigmoid}

    def __init__(
        self,
        path: str,
        tokenizer_path: str,
        med_config: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: str = "none",
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        self.path = require_file(path, "imagereward checkpoint")
        self.med_config = require_file(
            med_config or self.path.with_name("med_config.json"), "imagereward med_config.json"
        )
        self.tokenizer_path = require_dir(tokenizer_path, ("vocab.txt",), "imagereward tokenizer")
        self.vision = self.text = self.head = self.tokenizer = None
        self.image_size: int | None = None

    def load(self) -> None:
        from accelerate import init_empty_weights
        from transformers import (
            BertTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        vision_state, text_state, head_state = to_transformers_blip(load_state_dict_file(self.path))
        if not (vision_state and text_state and head_state):
            raise KeyError(f"{self.path} lacks the BLIP encoders or the MLP head of ImageReward")
        patch = vision_state["embeddings.patch_embedding.weight"]
        num_positions = vision_state["embeddings.position_embedding"].shape[1] - 1
        width = patch.shape[0]
        image_size = int(round(num_positions**0.5)) * patch.shape[-1]
        vision_config = BlipVisionConfig(
            hidden_size=width,
            intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=1
            + max(int(k.split(".")[2]) for k in vision_state if ".layers." in k),
            num_attention_heads=width // 64,  # 64-dim heads, as in ViT-B/16 and ViT-L/16
            image_size=image_size,
            patch_size=patch.shape[-1],
            layer_norm_eps=1e-6,
        )
        med = json.loads(self.med_config.read_text())
        text_config = BlipTextConfig(
            **{k: med[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                    "num_attention_heads", "intermediate_size", "hidden_act",
                                    "layer_norm_eps", "max_position_embeddings") if k in med},
            encoder_hidden_size=width,
            is_decoder=True,  # builds the cross-attention; forward runs it bidirectionally
        )  # fmt: skip
        with init_empty_weights():
            vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, False)
        assign_exactly(vision, vision_state, self.dtype, f"{self.path} (vision)")
        assign_exactly(text, text_state, self.dtype, f"{self.path} (text, {self.med_config})")
        head = score_mlp(text_config.hidden_size)
        assign_exactly(head, head_state, torch.float32, f"{self.path} (mlp head)")
        tokenizer = BertTokenizer.from_pretrained(str(self.tokenizer_path))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(tokenizer) != text_config.vocab_size:
            raise ValueError(
                f"tokenizer {self.tokenizer_path} has {len(tokenizer)} tokens with [DEC]/[ENC], "
                f"the text encoder {text_config.vocab_size}: not the bert-base-uncased vocabulary"
            )
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.vision = vision.to(self.device).eval()
        self.text = text.to(self.device).eval()
        self.head = head.to(self.device).eval()

    def unload(self) -> None:
        self.vision = self.text = self.head = self.tokenizer = None

    def raw_scores(self, images, prompts):
        pixels = torch.stack([clip_eval_pixels(image, self.image_size) for image in images])
        patches = self.vision(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
            return_tensors="pt",
        ).to(self.device)  # fmt: skip
        cls = self.text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(
                patches.shape[:2], dtype=torch.long, device=self.device
            ),
        ).last_hidden_state[:, 0]
        raw = self.head(cls.float())[:, 0]
        return (raw - SCORE_MEAN) / SCORE_STD, {}, [None] * len(prompts)
