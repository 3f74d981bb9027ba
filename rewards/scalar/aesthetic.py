"""The LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor), as
Flow-GRPO scores it (yifan123/flow_grpo ``flow_grpo/aesthetic_scorer.py`` and ``aesthetic_score``
in ``flow_grpo/rewards.py``, commit ac4c86e8).

An MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between the first four layers, no
activations) maps the L2-normalised CLIP ViT-L/14 image embedding to a 1-10 aesthetic rating.
The embedding is ``CLIPModel.get_image_features`` of the image after the CLIP folder's image
processor (transformers' PIL backend, as transformers 4.x's processor that Flow-GRPO calls), divided
by its L2 norm. The score is the MLP's output itself (Flow-GRPO trains on it unscaled; real
images score about 4-7). The prompt is not used.

Local files: ``path``, a transformers CLIP folder (openai/clip-vit-large-patch14: config.json,
weights, preprocessor_config.json); ``mlp_path``, the predictor's state dict
(``sac+logos+ava1-l14-linearMSE.pth``: ``layers.{0,2,4,6,7}.{weight,bias}``, float32). The MLP
always runs in float32; ``dtype`` only sets the CLIP tower's.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from rewards.scalar.common import (
    ScalarReward,
    assign_exactly,
    load_state_dict_file,
    require_dir,
    require_file,
    score_mlp,
)

CLIP_FILES = (
    "config.json",
    "model.safetensors|pytorch_model.bin",
    "preprocessor_config.json|processor_config.json",
)
EMBED_DIM = 768  # CLIP ViT-L/14's projection, the predictor's input


class AestheticMLP(nn.Module):
    """The predictor's MLP, laid out as the released checkpoint (``layers.N`` of a Sequential)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = score_mlp(EMBED_DIM)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class AestheticReward(ScalarReward):
    """LAION aesthetic score of each image (1-10 scale) from local CLIP + MLP files."""

    name = "aesthetic"

    def __init__(
        self,
        path: str,
        mlp_path: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        self.path = require_dir(path, CLIP_FILES, f"{self.name} CLIP model")
        self.mlp_path = require_file(mlp_path, f"{self.name} MLP")
        self.clip = self.image_processor = self.mlp = None

    def load(self) -> None:
        from transformers import CLIPModel

        # imported here: the reward service's own environments (OCR) hold no transformers
        from rewards.judges.transformers_judge import pil_image_processor

        self.image_processor = pil_image_processor(self.path)
        self.clip = CLIPModel.from_pretrained(str(self.path), dtype=self.dtype)
        self.clip = self.clip.to(self.device).eval()
        if self.clip.config.projection_dim != EMBED_DIM:
            raise ValueError(
                f"{self.name}: {self.path} projects to {self.clip.config.projection_dim} "
                f"dimensions; the predictor takes CLIP ViT-L/14's {EMBED_DIM}"
            )
        with torch.device("meta"):
            mlp = AestheticMLP()
        assign_exactly(mlp, load_state_dict_file(self.mlp_path), torch.float32, str(self.mlp_path))
        self.mlp = mlp.to(self.device).eval()

    def unload(self) -> None:
        self.clip = self.image_processor = self.mlp = None

    def embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings ``[b, 768]`` in float32."""
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        embedding = self.clip.visual_projection(pooled).float()
        return embedding / torch.linalg.vector_norm(embedding, dim=-1, keepdim=True)

    def raw_scores(self, images, prompts):
        return self.mlp(self.embeddings(images)).squeeze(1), {}, [None] * len(prompts)
