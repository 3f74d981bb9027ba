"""Writes the OpenCLIP BPE vocabulary that hpsv2 ships (``bpe_simple_vocab_16e6.txt.gz``) as the
``vocab.json`` / ``merges.txt`` pair of a transformers CLIP tokenizer, as the laion
CLIP-ViT-H-14 folder holds it: same tokens and ids, the two special tokens under transformers'
names. Runs in the hpsv2 environment."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from hpsv2.src.open_clip import tokenizer
from official_common import read_spec, write_result


def main() -> None:
    spec = read_spec()
    folder = Path(spec["folder"])
    bpe = tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): index for token, index in bpe.encoder.items()}
    lines = gzip.open(tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the rows SimpleTokenizer reads
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    write_result(spec, {"vocab_size": len(vocab), "merges": len(merges)})


if __name__ == "__main__":
    main()
