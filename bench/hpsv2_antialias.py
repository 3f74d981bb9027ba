"""How much HPSv2's input changes between the two torchvision eras, on 1024 px images downscaled to
224 px (the resize HPSv2's float-tensor transform does, antialiased on torchvision >= 0.17, not
before; see rewards.scalar.hpsv2).

    python -m bench.hpsv2_antialias                  # pixel shift on the built-in images
    python -m bench.hpsv2_antialias --checkpoint /local/HPS_v2.1_compressed.pt \\
        --processor-path /local/CLIP-ViT-H-14-laion2B-s32B-b79K --images /local/sd_1024px/
                                                     # + the score shift of the real model

Prints one JSON line: per image, the largest and the root-mean-square difference of the model's
input between ``antialias=torchvision_0.16`` and ``torchvision_0.17`` (in normalised units, where
the CLIP mean/std make one unit about 0.27 of the [0, 1] range), and with a checkpoint the HPSv2
score (cosine) under each and their difference. The built-in images are 1024 x 1024: matplotlib's
sample photograph upscaled (smooth: a lower bound), a figure rendered by matplotlib at 1024 px
(text and thin lines, as in generated posters and diagrams) and a zone plate (every spatial
frequency up to Nyquist: the worst case for aliasing).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from rewards.scalar.hpsv2 import ANTIALIAS
from rewards.scalar.pixels import letterbox_pixels

SIZE = 1024


def builtin_images() -> dict[str, Image.Image]:
    """The three 1024 px images described in the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cbook

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    photo = photo.crop((0, 44, 512, 556)).resize((SIZE, SIZE), Image.LANCZOS)
    fig, ax = plt.subplots(figsize=(SIZE / 100, SIZE / 100), dpi=100)
    x = np.linspace(0, 20, 400)
    for k in range(12):
        ax.plot(x, np.sin(x + k / 2) + k, lw=0.8)
    ax.set_title("HPSv2 antialias check: thin lines and small text", fontsize=14)
    ax.text(0.5, 5, "The quick brown fox jumps over the lazy dog " * 2, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    figure = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize((SIZE, SIZE))
    r = np.hypot(*np.meshgrid(np.arange(SIZE) - SIZE / 2, np.arange(SIZE) - SIZE / 2))
    plate = (127.5 + 127.5 * np.cos(np.pi * r**2 / SIZE)).astype(np.uint8)
    zone = Image.fromarray(np.stack([plate] * 3, axis=-1))
    return {"photo_upscaled": photo, "rendered_figure": figure, "zone_plate": zone}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="HPS_v2(.1)_compressed.pt, to measure scores too")
    parser.add_argument("--processor-path", help="the laion CLIP-ViT-H-14 folder")
    parser.add_argument("--images", help="a folder of images to use instead of the built-in ones")
    parser.add_argument("--prompt", default="a high quality picture")
    args = parser.parse_args(argv)
    if args.images:
        files = sorted(
            p
            for p in Path(args.images).iterdir()
            if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}
        )
        images = {p.name: Image.open(p).convert("RGB") for p in files}
    else:
        images = builtin_images()
    result: dict = {"images": {}}
    for name, image in images.items():
        old, new = (letterbox_pixels(image, 224, antialias=ANTIALIAS[k]) for k in ANTIALIAS)
        diff = (old - new).double()
        result["images"][name] = {
            "size": list(image.size),
            "max_abs_pixel": round(diff.abs().max().item(), 4),
            "rms_pixel": round(diff.pow(2).mean().sqrt().item(), 4),
        }
    if args.checkpoint:
        from rewards.scalar import HPSv2Reward

        names, pictures = list(images), list(images.values())
        scores = {}
        for option in ANTIALIAS:
            reward = HPSv2Reward(
                path=args.checkpoint, processor_path=args.processor_path, antialias=option
            )
            scores[option] = reward(pictures, [args.prompt] * len(pictures)).scores
        shift = (scores["torchvision_0.17"] - scores["torchvision_0.16"]).double()
        for i, name in enumerate(names):
            result["images"][name] |= {k: round(v[i].item(), 5) for k, v in scores.items()}
        result["max_abs_score_shift"] = round(shift.abs().max().item(), 5)
        result["mean_score_shift"] = round(shift.mean().item(), 5)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
