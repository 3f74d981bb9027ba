"""Image-text cosine similarity with a transformers ``CLIPModel``: the shared core of CLIPScore,
PickScore and HPSv2.

All three embed the image and the prompt with a CLIP model, L2-normalise both embeddings and
take their dot product (the cosine). They differ in the weights, in how the image is preprocessed
and in how the cosine is scaled: see each reward's module. The projections come out in the model's
dtype; the normalisation and the dot product always run in float32, so a bf16 or fp16 model only
rounds inside the towers.
"""

from __future__ import annotations

import contextlib
import html
import re
from pathlib import Path

import torch
from PIL import Image

from rewards.scalar.common import ScalarReward, require_dir

MODEL_FILES = ("config.json", "model.safetensors|pytorch_model.bin")
PROCESSOR_FILES = ("preprocessor_config.json|processor_config.json", "tokenizer.json|vocab.json")


def clip_clean_text(text: str) -> str:
    """A prompt as OpenAI CLIP's ``SimpleTokenizer`` (and OpenCLIP's copy of it) sees it before
    BPE: ftfy-fixed (curly quotes straightened, mojibake repaired, NFC), HTML entities unescaped
    twice, whitespace runs collapsed to one space, stripped, lower-cased.

    transformers' CLIP tokenizer only normalises whitespace and case, so without this a prompt
    like ``an astronaut’s glove`` or ``salt &amp; pepper`` tokenizes differently from what
    ``clip.tokenize`` gives CLIP-S and from what HPSv2 was trained on.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class ClipSimilarityReward(ScalarReward):
    """Cosine similarity of CLIP image and text embeddings, in ``details["cosine"]``.

    ``path`` is a local ``CLIPModel`` folder; ``processor_path`` the folder with the matching
    image processor and tokenizer, by default ``path`` itself. Prompts longer than the text
    encoder's context (77 tokens) are truncated, as CLIP was trained. By default images are
    converted to RGB (alpha dropped, as transformers 4.x's processor did; transformers 5 would
    composite RGBA onto white) and go through the folder's image processor on transformers' PIL
    backend, as the transformers-based official scorers (Flow-GRPO's PickScore) do.
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
        self.model = self.tokenizer = self.image_processor = None

    def check_model_path(self, path: str) -> Path:
        """The local weights location, checked before loading (a CLIPModel folder here)."""
        return require_dir(path, MODEL_FILES, f"{self.name} model")

    def load(self) -> None:
        from transformers import AutoTokenizer  # here: the OCR service's environment has none

        from rewards.judges.transformers_judge import pil_image_processor

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.processor_path))
        self.image_processor = pil_image_processor(self.processor_path)
        self.model = self.build_model(self.path).to(self.device, self.dtype).eval()

    def build_model(self, path: Path) -> torch.nn.Module:
        """The ``CLIPModel`` with this reward's weights (HPSv2 overrides to convert its file)."""
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(str(path), dtype=self.dtype)

    def unload(self) -> None:
        self.model = self.tokenizer = self.image_processor = None

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """``[b, 3, H, W]`` model input (default: the folder's image processor, PIL backend)."""
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def texts(self, prompts: list[str]) -> list[str]:
        """The text each prompt is encoded as (default: the prompt itself)."""
        return list(prompts)

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Context the towers run in (default: none; HPSv2 offers fp16 autocast)."""
        return contextlib.nullcontext()

    def cosine(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt, ``[b]`` float32."""
        pixels = self.pixel_values(images).to(self.device, self.dtype)
        tokens = self.tokenizer(
            self.texts(prompts),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k != "token_type_ids"}
        with self.forward_context():
            vision = self.model.vision_model(pixel_values=pixels).pooler_output
            image = self.model.visual_projection(vision)
            text = self.model.text_projection(self.model.text_model(**tokens).pooler_output)
        image, text = image.float(), text.float()
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        text = text / text.norm(p=2, dim=-1, keepdim=True)
        return (image * text).sum(-1)

    def raw_scores(self, images, prompts):
        cos = self.cosine(images, prompts)
        return cos, {"cosine": cos}, [None] * len(prompts)
