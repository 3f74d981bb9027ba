"""Official side of the CLIPScore parity test; runs in the clipscore environment (openai-clip 1.0.1
from PyPI, the ``clip`` package jmhessel/clipscore imports).

1. Builds OpenAI CLIP's ``clip.model.CLIP`` (a small ViT-B/32-shaped model: 32 px patches at
   224 px, QuickGELU, the real 49408-token BPE vocabulary), gives it seeded random weights and
   saves its state dict in float16, the precision of the released ViT-B/32 weights.
2. Rebuilds the model from that file as ``clip.load(path, device="cpu", jit=False)`` does for a
   state dict (``clip.model.build_model`` then ``.float()`` on the CPU). clip.load itself cannot
   read a plain state dict on this torch: after its ``torch.jit.load`` attempt fails it calls
   ``torch.load`` on the same, already consumed file handle (EOFError); the released ViT-B/32 is a
   TorchScript archive, which takes the other branch to the same ``build_model``.
3. Scores as jmhessel/clipscore's clipscore.py does (commit d200b56): each caption is
   ``clip.tokenize("A photo depicts " + caption, truncate=True)`` (``CLIPCapDataset``), each image
   goes through its ``_transform_test(224)`` (``Resize(224, BICUBIC)``, ``CenterCrop(224)``, RGB,
   ``ToTensor``, ``Normalize`` with CLIP's mean/std; ``CLIPImageDataset``), features come from
   ``encode_image`` / ``encode_text``, rows are L2-normalised with numpy (its path for numpy >=
   1.21) and the score is ``w * np.clip(np.sum(images * candidates, axis=1), 0, None)``, w = 2.5
   (``get_clip_score``).
4. Writes CLIP's BPE vocabulary as the vocab.json / merges.txt pair of a transformers CLIP
   tokenizer (the files openai/clip-vit-base-patch32 holds).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import clip
import numpy as np
import torch
from clip import simple_tokenizer
from official_common import randomize, read_spec, write_result
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

PREFIX = "A photo depicts"  # CLIPCapDataset's default prefix; a space is added after it
W = 2.5


def transform_test(n_px: int) -> Compose:
    """clipscore.py's CLIPImageDataset._transform_test, step for step."""
    return Compose([
        Resize(n_px, interpolation=Image.BICUBIC),
        CenterCrop(n_px),
        lambda image: image.convert("RGB"),
        ToTensor(),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip


def write_tokenizer_files(folder: Path) -> None:
    bpe = simple_tokenizer.SimpleTokenizer()
    lines = gzip.open(simple_tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the rows SimpleTokenizer reads
    (folder / "vocab.json").write_text(json.dumps(bpe.encoder, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def main() -> None:
    spec = read_spec()
    dims = spec["dims"]
    torch.manual_seed(spec["seed"])
    model = clip.model.CLIP(
        embed_dim=dims["embed"], image_resolution=224, vision_layers=dims["layers"],
        vision_width=dims["width"], vision_patch_size=32, context_length=77, vocab_size=49408,
        transformer_width=dims["width"], transformer_heads=dims["width"] // 64,
        transformer_layers=dims["layers"],
    )  # fmt: skip
    randomize(model, spec["seed"], keep=("logit_scale",))
    state = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    torch.save(state, spec["checkpoint"])
    loaded = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    model = clip.model.build_model(loaded).to("cpu").float().eval()

    prefix = PREFIX if PREFIX.endswith(" ") else PREFIX + " "
    tokens = torch.cat([clip.tokenize(prefix + c, truncate=True) for c in spec["prompts"]])
    preprocess = transform_test(224)
    pixels = torch.stack([preprocess(Image.open(path)) for path in spec["images"]])
    with torch.no_grad():
        images = model.encode_image(pixels).cpu().numpy()
        candidates = model.encode_text(tokens).cpu().numpy()
    images = images / np.sqrt(np.sum(images**2, axis=1, keepdims=True))
    candidates = candidates / np.sqrt(np.sum(candidates**2, axis=1, keepdims=True))
    cosine = np.sum(images * candidates, axis=1)
    per = W * np.clip(cosine, 0, None)

    write_tokenizer_files(Path(spec["tokenizer_folder"]))
    torch.save({"pixels": pixels, "tokens": tokens}, spec["inputs"])
    write_result(spec, {"scores": per.tolist(), "cosine": cosine.tolist()})


if __name__ == "__main__":
    main()
