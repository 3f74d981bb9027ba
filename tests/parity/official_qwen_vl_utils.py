"""Official side of the judge-pixel parity test; runs in the qwen_vl_utils environment
(qwen-vl-utils 0.0.14 from PyPI). For every image and patch size (14: Qwen2-VL / Qwen2.5-VL, hence
UnifiedReward-qwen; 16: Qwen3-VL), ``qwen_vl_utils.fetch_image`` (what ``process_vision_info``
calls for an image message) converts it to RGB and resizes it with PIL to its ``smart_resize``
size; the result is saved as PNG (lossless), the image the processor then sees."""

from __future__ import annotations

from pathlib import Path

from official_common import read_spec, write_result
from qwen_vl_utils import fetch_image


def main() -> None:
    spec = read_spec()
    out = Path(spec["out"])
    fetched = {}
    for patch in spec["patch_sizes"]:
        for path in spec["images"]:
            image = fetch_image({"image": path}, image_patch_size=patch)
            target = out / f"{Path(path).stem}_p{patch}.png"
            image.save(target)
            fetched[f"{patch}:{path}"] = str(target)
    write_result(spec, {"fetched": fetched})


if __name__ == "__main__":
    main()
