"""Official side of the HPSv2 parity test; runs in the hpsv2 environment (hpsv2 1.2.0 from PyPI,
torchvision >= 0.17) and in hpsv2_torchvision016 (the same hpsv2 on torch 2.1.2 + torchvision
0.16.2, whose tensor resize does not antialias unless asked).

Builds the OpenCLIP model through hpsv2's own ``create_model_and_transforms`` with the arguments of
``hpsv2.img_score.initialize_model`` (only the architecture is a small one registered under a new
name, and no pretrained weights are fetched), gives it seeded random weights, saves them as the
released ``HPS_v2.1_compressed.pt`` is laid out (``{"state_dict": ...}``, OpenCLIP key names,
float16), and scores every image with ``hpsv2.img_score.score``, which reloads that file and
tokenizes with hpsv2's own OpenCLIP tokenizer. The preprocessed pixels are saved too, so a pixel
difference shows apart from a model difference. An image hpsv2 cannot score (RGBA) gets its error.
"""

from __future__ import annotations

from pathlib import Path

import hpsv2.img_score as img_score
import torch
import torchvision
from hpsv2.src.open_clip import factory
from official_common import randomize, read_spec, write_result
from PIL import Image

ARCH = "HPSv2-parity-small"


def build_model(spec):
    factory._MODEL_CONFIGS[ARCH] = spec["open_clip_config"]
    model, _, preprocess_val = factory.create_model_and_transforms(
        ARCH,
        None,  # initialize_model asks for 'laion2B-s32B-b79K': weights come from the checkpoint
        precision="amp",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )
    randomize(model, spec["seed"], keep=("logit_scale",))
    return model, preprocess_val


def main() -> None:
    spec = read_spec()
    model, preprocess_val = build_model(spec)
    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    checkpoint = Path(spec["checkpoint"])
    torch.save({"state_dict": state}, checkpoint)
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)

    scores, errors, pixels = [], [], {}
    for path, prompt in zip(spec["images"], spec["prompts"]):
        image = Image.open(path)
        try:
            scores.append(float(img_score.score([image], prompt, cp=str(checkpoint))[0]))
            errors.append(None)
        except RuntimeError as err:  # hpsv2 keeps RGBA's alpha as a 4th channel
            scores.append(None)
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
        if errors[-1] is None:
            pixels[Path(path).name] = preprocess_val(image)
    torch.save(pixels, spec["pixels"])
    write_result(spec, {"scores": scores, "errors": errors, "torchvision": torchvision.__version__})


if __name__ == "__main__":
    main()
