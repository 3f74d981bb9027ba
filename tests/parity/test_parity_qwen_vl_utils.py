"""The judge's and UnifiedReward's image pixels against qwen-vl-utils' PIL path (the official
Qwen2.5-VL / Qwen3-VL input helper, 0.0.14 from PyPI, run in its own environment).

Officially an image goes through ``qwen_vl_utils.fetch_image`` (RGB, then a PIL resize to the
``smart_resize`` size) and then the model's processor, which finds it already at that size. The
judge hands the image to its processor, pinned to transformers' PIL backend (``load_processor``),
which resizes it itself. Both must give the same ``pixel_values`` and ``image_grid_thw``, with the
image processor settings of Qwen2.5-VL-7B-Instruct (14 px patches, 3136..12845056 pixels) and of
Qwen3-VL (16 px patches, 65536..16777216 pixels).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from support import run_official

from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.judges.transformers_judge import load_processor

pytestmark = pytest.mark.parity

# arch -> (patch size, size bounds of the released preprocessor_config.json)
SETTINGS = {
    "qwen2_5_vl": (14, {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}),
    "qwen3_vl": (16, {"shortest_edge": 65536, "longest_edge": 16777216}),
}


@pytest.fixture(scope="module")
def fetched(real_images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen_vl_utils")
    spec = {
        "images": [str(p) for p in real_images],
        "patch_sizes": sorted({patch for patch, _ in SETTINGS.values()}),
        "out": str(folder),
    }
    return run_official("qwen_vl_utils", "official_qwen_vl_utils.py", spec, folder)["fetched"]


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_pixels_equal_qwen_vl_utils_then_the_processor(arch, fetched, real_images, tmp_path):
    patch, size = SETTINGS[arch]
    build_tiny_vlm(arch, seed=0, save_dir=tmp_path)
    config_file = tmp_path / "processor_config.json"  # transformers 5 nests the image processor
    config = json.loads(config_file.read_text())
    config["image_processor"].update(patch_size=patch, size=size)
    config_file.write_text(json.dumps(config))
    processor = load_processor(tmp_path).image_processor
    compared, rgba = 0, {}
    for path in real_images:
        original = Image.open(path)
        official = Image.open(fetched[f"{patch}:{path}"])
        ours = processor(images=[original.convert("RGB")], return_tensors="pt")
        theirs = processor(images=[official], return_tensors="pt")
        if min(official.size) * max(official.size) < size["shortest_edge"]:
            continue  # qwen-vl-utils' own minimum (4 tokens) is below Qwen3-VL's processor's
        assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
        if original.mode == "RGBA":  # qwen-vl-utils composites onto white; RGB drops alpha
            rgba[path.name] = (ours["pixel_values"] - theirs["pixel_values"]).abs().max().item()
            continue
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"]), path.name
        compared += 1
    print(json.dumps({"judge_pixels": arch, "equal_images": compared, "rgba_max_abs": rgba}))
    assert compared >= 3
