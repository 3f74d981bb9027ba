"""Reference side of the PickScore parity test; runs in the hpsv3 environment for its
transformers 4.45.2, the transformers of Flow-GRPO's time.

Flow-GRPO (yifan123/flow_grpo, ``flow_grpo/pickscore_scorer.py``) is not a package, so its scorer
is not imported: this script computes the same formula from its source, with transformers' own
classes as it uses them. ``AutoProcessor`` on the CLIP-H processor folder prepares the images and,
in a separate call, the prompts (padding, truncation to 77 tokens); ``get_image_features`` and
``get_text_features`` of ``AutoModel`` on the PickScore folder give the projections, each divided
by its L2 norm; the score is ``logit_scale.exp()`` times the diagonal of ``text @ image.T``,
divided by 26. The model is a small ``CLIPModel`` with seeded random weights, saved with
``save_pretrained`` as PickScore_v1 is (float32); the processor folder holds transformers' CLIP
image processor (224 px, bicubic, OpenAI mean/std) and the OpenCLIP BPE tokenizer, as the laion
CLIP-ViT-H-14 folder does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from official_common import randomize, read_spec, write_result
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
)

FLOW_GRPO_SCALE = 26


def write_folders(spec) -> None:
    tokenizer = CLIPTokenizerFast.from_pretrained(spec["bpe_dir"], model_max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        spec["processor_dir"]
    )
    config = CLIPConfig(
        text_config=spec["text_config"],
        vision_config=spec["vision_config"],
        projection_dim=spec["projection_dim"],
        logit_scale_init_value=math.log(100),  # PickScore's scale, ~100
    )
    model = CLIPModel(config)
    randomize(model, spec["seed"], keep=("logit_scale",))
    model.save_pretrained(spec["model_dir"])


def main() -> None:
    spec = read_spec()
    write_folders(spec)
    processor = AutoProcessor.from_pretrained(spec["processor_dir"])
    model = AutoModel.from_pretrained(spec["model_dir"]).eval()
    images = [Image.open(path) for path in spec["images"]]
    with torch.no_grad():
        image_inputs = processor(
            images=images, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        text_inputs = processor(
            text=spec["prompts"], padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        image_embs = model.get_image_features(**image_inputs)
        image_embs = image_embs / image_embs.norm(p=2, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs)
        text_embs = text_embs / text_embs.norm(p=2, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T).diag() / FLOW_GRPO_SCALE
    pixels = {Path(p).name: v for p, v in zip(spec["images"], image_inputs["pixel_values"])}
    torch.save(pixels, spec["pixels"])
    write_result(
        spec,
        {"scores": scores.tolist(), "input_ids": text_inputs["input_ids"].tolist()},
    )


if __name__ == "__main__":
    main()
