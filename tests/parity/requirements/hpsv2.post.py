"""Run by make_envs.sh in the hpsv2 environment after installing: hpsv2 1.2.0's wheel lacks
``hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz``, which its tokenizer opens at import time;
open_clip ships the same OpenAI BPE file, so it is copied into place."""

import shutil
from importlib.util import find_spec
from pathlib import Path

NAME = "bpe_simple_vocab_16e6.txt.gz"
source = Path(find_spec("open_clip").origin).parent / NAME
target = Path(find_spec("hpsv2").origin).parent / "src" / "open_clip" / NAME
if not target.exists():
    shutil.copyfile(source, target)
print(f"hpsv2 BPE vocabulary: {target}")
