"""Fixtures of the parity tests: the real images both sides score and the CLIP tokenizer files
hpsv2 ships (helpers: support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib import cbook
from PIL import Image
from support import run_official


def _sample(name: str) -> Image.Image:
    image = Image.open(cbook.get_sample_data(name))
    image.load()
    return image


@pytest.fixture(scope="session")
def real_images(tmp_path_factory) -> list[Path]:
    """Real pictures (matplotlib's sample photo and logos) at odd, non-square sizes and in the
    modes users pass: RGB, RGBA with real transparency, greyscale, palette. Saved as PNG (lossless,
    modes kept), so both sides read the very same pixels."""
    folder = tmp_path_factory.mktemp("parity_images")
    hopper = _sample("grace_hopper.jpg")  # 512 x 600 RGB photograph
    logo = _sample("logo2.png")  # 542 x 130 RGBA, transparent background
    present = _sample("Minduka_Present_Blue_Pack.png")
    images = {
        "hopper_portrait.png": hopper.crop((37, 11, 370, 528)),  # 333 x 517
        "hopper_landscape.png": hopper.crop((0, 200, 511, 459)),  # 511 x 259
        "hopper_grey.png": hopper.convert("L").resize((301, 403), Image.BICUBIC),
        "logo_rgba.png": logo,
        "hopper_small.png": hopper.resize((97, 61), Image.BICUBIC),  # upscaled by every model
        "present.png": present,
        "hopper_palette.png": hopper.crop((100, 100, 327, 260)).convert("P"),
    }
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="session")
def clip_tokenizer_files(tmp_path_factory) -> Path:
    """vocab.json + merges.txt of the OpenCLIP BPE vocabulary hpsv2 ships (the files a laion
    CLIP-ViT-H-14 folder holds), written in the hpsv2 environment."""
    folder = tmp_path_factory.mktemp("clip_bpe")
    run_official("hpsv2", "official_clip_bpe.py", {"folder": str(folder)}, folder)
    return folder
