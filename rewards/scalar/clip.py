"""Image-text cosine similarity with a transformers ``CLIPModel``: the shared core of CLIPScore,
PickScore and HPSv2.

All three embed the image and the prompt with a CLIP model, L2-normalise both embeddings and
take their dot product (the cosine). They differ only in the weights and in how the cosine is
scaled: see each reward's module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from rewards.scalar.common import ScalarReward, require_dir

MODEL_FILES = ("config.json", "model.safetensors|pytorch_model.bin")
PROCESSOR_FILES = ("preprocessor_config.json|processor_config.json", "tokenizer.json|vocab.json")


class ClipSimilarityReward(ScalarReward):
    """Cosine similarity of CLIP image and text embeddings, in ``details["cosine"]``.

    ``path`` is a local ``CLIPModel`` folder; ``processor_path`` the folder with the matching
    ``CLIPProcessor`` (image processor + tokenizer), by default ``path`` itself. Prompts longer
    than the text encoder's context (77 tokens) are truncated, as CLIP was trained.
    ``normalize=None`` takes the class's ``DEFAULT_NORMALIZE``.
    """

    name = "clip"

    def __init__(
        self,
        path: str,
        processor_path: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        self.path = self.check_model_path(path)
        self.processor_path = require_dir(
            processor_path or path, PROCESSOR_FILES, f"{self.name} processor"
        )
        self.model = None
        self.processor = None

    def check_model_path(self, path: str) -> Path:
        """The local weights location, checked before loading (a CLIPModel folder here)."""
        return require_dir(path, MODEL_FILES, f"{self.name} model")

    def load(self) -> None:
        from transformers import CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(str(self.processor_path))
        self.model = self.build_model(self.path).to(self.device, self.dtype).eval()

    def build_model(self, path: Path) -> torch.nn.Module:
        """The ``CLIPModel`` with this reward's weights (HPSv2 overrides to convert its file)."""
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(str(path), dtype=self.dtype)

    def unload(self) -> None:
        self.model = None
        self.processor = None

    def prepare_images(self, images: list[Image.Image]) -> list[Image.Image]:
        """Hook for a model-specific step before the CLIP image processor (default: none)."""
        return images

    def cosine(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt, ``[b]`` float32."""
        inputs = self.processor(
            text=prompts,
            images=self.prepare_images(images),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model(**inputs)
        # CLIPModel returns both embeddings already L2-normalised.
        return (out.image_embeds.float() * out.text_embeds.float()).sum(-1)

    def raw_scores(self, images, prompts):
        cos = self.cosine(images, prompts)
        return cos, {"cosine": cos}, [None] * len(prompts)
