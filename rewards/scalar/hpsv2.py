"""HPSv2 (Wu et al., 2023): OpenCLIP ViT-H/14 fine-tuned on Human Preference Dataset v2.

The official checkpoint (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``) is an OpenCLIP
state dict. Rather than depending on open_clip (which pulls torchvision and timm and pins them to
particular torch builds), its tensors are mapped onto a transformers ``CLIPModel`` with the same
architecture, the one of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, whose local folder supplies
the config and the tokenizer. The weight mapping is exact: OpenCLIP's fused attention input
projection is split into q/k/v, and its ``x @ proj`` projections become ``Linear`` weights
(transposed). Images are preprocessed as ``hpsv2.score`` does (:func:`letterbox_pixels`: the float
tensor's longer side resized to 224, black padding to a square, nothing cropped). HPSv2 itself
cannot score an RGBA image (it keeps the alpha as a fourth channel and its vision tower fails);
here every image is converted to RGB first (alpha dropped), which is what hpsv2 does to every other
mode. ``autocast=True`` runs both towers under float16 autocast, as ``hpsv2.score`` does on a GPU:
the setting to use there.

hpsv2 resizes the float tensor with torchvision's ``F.resize`` and no ``antialias`` argument, so
what it computes depends on the torchvision installed beside it: from 0.17 on, tensors are
antialiased by default; before, they were not (HPSv2's 2023 training and benchmark runs). The
``antialias`` option picks one, named after the torchvision behaviour it reproduces:
``"torchvision_0.17"`` (default, what ``pip install hpsv2`` gives today) or ``"torchvision_0.16"``
(every torchvision before 0.17).

Raw score: the cosine of the normalised image and text embeddings (what the official
``score.py`` prints), in [-1, 1]; typically 0.20-0.35. Normalisations (``normalize``):
``"none"``, or ``"percent"`` = 100 * cosine, the scale of the HPSv2 benchmark tables.

Prompts are cleaned as OpenCLIP's tokenizer cleans them
(:func:`~rewards.scalar.clip.clip_clean_text`) before transformers' CLIP tokenizer, which shares
OpenCLIP's BPE vocabulary, encodes them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rewards.scalar.clip import ClipSimilarityReward, clip_clean_text
from rewards.scalar.common import (
    assign_exactly,
    load_state_dict_file,
    require_dir,
    require_file,
)
from rewards.scalar.pixels import letterbox_pixels

# torchvision's tensor resize without an ``antialias`` argument: antialiased from 0.17 on.
ANTIALIAS = {"torchvision_0.17": True, "torchvision_0.16": False}

_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _tower(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """The transformer blocks ``{src}transformer.resblocks.*`` as ``{dst}encoder.layers.*``."""
    out = {}
    prefix = f"{src}transformer.resblocks."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        layer = f"{dst}encoder.layers.{index}."
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}.{kind}"] = part
            continue
        module, kind = rest.rsplit(".", 1)
        if module not in _LAYER:
            raise KeyError(f"unexpected OpenCLIP key {key!r}")
        out[f"{layer}{_LAYER[module]}.{kind}"] = value
    return out


def openclip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and reshape an OpenCLIP ViT state dict to transformers ``CLIPModel`` keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out = _tower(state, "visual.", "vision_model.") | _tower(state, "", "text_model.")
    direct = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    transposed = {
        "visual.proj": "visual_projection.weight",
        "text_projection": "text_projection.weight",
    }
    for src, dst in direct.items():
        if src in state:
            out[dst] = state[src]
    for src, dst in transposed.items():
        if src in state:
            out[dst] = state[src].t().contiguous()
    used = set(direct) | set(transposed)
    leftover = [
        k
        for k in state
        if k not in used and not k.startswith(("transformer.", "visual.transformer."))
    ]
    if leftover:
        raise KeyError(
            f"OpenCLIP checkpoint has keys with no CLIPModel counterpart: {leftover[:8]}"
        )
    return out


class HPSv2Reward(ClipSimilarityReward):
    """HPSv2 / HPSv2.1 from the local checkpoint file and a local CLIP-ViT-H-14 folder."""

    name = "hpsv2"
    keeps_image_mode = False  # RGB first, as hpsv2 converts every mode it can score
    NORMALIZATIONS = {"none": lambda cos: cos, "percent": lambda cos: 100.0 * cos}

    def __init__(
        self,
        path: str,
        processor_path: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        normalize: str | None = None,
        autocast: bool = False,
        antialias: str = "torchvision_0.17",
    ) -> None:
        if antialias not in ANTIALIAS:
            choices = tuple(ANTIALIAS)
            raise ValueError(f"hpsv2 antialias must be one of {choices}, got {antialias!r}")
        require_dir(processor_path, ("config.json",), "hpsv2 CLIP-ViT-H-14 config")
        super().__init__(path, processor_path, device, dtype, batch_size, normalize)
        self.autocast = bool(autocast)
        self.antialias = antialias

    def check_model_path(self, path: str) -> Path:
        return require_file(path, "hpsv2 checkpoint")

    def texts(self, prompts: list[str]) -> list[str]:
        return [clip_clean_text(prompt) for prompt in prompts]

    def pixel_values(self, images):
        size = self.model.config.vision_config.image_size
        antialias = ANTIALIAS[self.antialias]
        return torch.stack([letterbox_pixels(im, size, antialias=antialias) for im in images])

    def forward_context(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def build_model(self, path: Path) -> torch.nn.Module:
        from accelerate import init_empty_weights
        from transformers import CLIPConfig, CLIPModel

        config = CLIPConfig.from_pretrained(str(self.processor_path))
        with init_empty_weights():
            model = CLIPModel(config)
        state = openclip_to_transformers(load_state_dict_file(path))
        what = f"{path} does not fit the CLIPModel of {self.processor_path}"
        assign_exactly(model, state, self.dtype, what)
        return model
