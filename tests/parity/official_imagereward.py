"""Official side of the ImageReward parity test; runs in the imagereward environment
(image-reward 1.5 from PyPI).

Builds the package's own ``ImageReward`` class (its ViT-L/16 image encoder is fixed by the class;
the BERT text encoder's size comes from ``med_config.json``, a 2-layer one here, 768 wide as the
class's MLP head needs) with seeded random weights, saves its state dict as the released
``ImageReward.pt`` is laid out (``torch.save`` of the module's state dict, float32), loads that
file back with the package's ``ImageReward.load`` and scores every image with ``model.score``.

BLIP's tokenizer is ``BertTokenizer.from_pretrained("bert-base-uncased")``, which the package does
not ship: the test's locally written vocabulary is put into a Hugging Face cache under that name,
so the official code runs unchanged and offline.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from official_common import read_spec, write_result

SNAPSHOT = "0" * 40


def offline_bert_cache(hf_home: Path, vocab: Path) -> None:
    """A Hugging Face cache in which ``bert-base-uncased`` resolves to ``vocab``."""
    repo = hf_home / "hub" / "models--bert-base-uncased"
    (repo / "snapshots" / SNAPSHOT).mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    (repo / "snapshots" / SNAPSHOT / "vocab.txt").write_bytes(vocab.read_bytes())
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    spec = read_spec()
    offline_bert_cache(Path(spec["hf_home"]), Path(spec["vocab"]))

    import ImageReward as RM
    import torch
    from ImageReward.ImageReward import ImageReward
    from official_common import randomize
    from PIL import Image

    torch.manual_seed(spec["seed"])
    model = ImageReward(med_config=spec["med_config"], device="cpu")
    randomize(model, spec["seed"])
    torch.save(model.state_dict(), spec["checkpoint"])
    del model
    gc.collect()

    model = RM.load(spec["checkpoint"], device="cpu", med_config=spec["med_config"])
    scores, pixels = [], {}
    with torch.no_grad():
        for path, prompt in zip(spec["images"], spec["prompts"]):
            image = Image.open(path)
            scores.append(float(model.score(prompt, image)))
            pixels[Path(path).name] = model.preprocess(image)
    tokens = [model.blip.tokenizer.tokenize(p) for p in spec["prompts"]]
    torch.save(pixels, spec["pixels"])
    write_result(spec, {"scores": scores, "tokens": tokens})


if __name__ == "__main__":
    main()
