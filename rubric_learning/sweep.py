"""``python -m rubric_learning.sweep``: the synthetic world over several seeds, as one table.

Each seed draws a new world (images, labels, proposer noise) and runs the full pipeline with the
``experiment=synthetic`` preset; the printed Markdown table shows, per seed, the held-out accuracy
against the hidden rule set's own, and how many hidden rules and offered distractors were kept.
Any further argument is a Hydra override applied to every run, e.g.
``python -m rubric_learning.sweep --seeds 0,1,2 rounds=5``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from rubric_learning.learn import learn

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run_seed(seed: int, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """One synthetic run whose world, proposer and learner all use ``seed``."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(
            "learn",
            overrides=[
                "experiment=synthetic",
                f"seed={seed}",
                f"data.seed={seed}",
                f"generator.seed={seed}",
                *overrides,
            ],
        )
    return learn(cfg, out_dir / f"seed{seed}")


def table(results: dict[int, dict[str, Any]]) -> str:
    """Markdown rows: test/oracle, their ratio, hidden and distractor counts, pass/fail."""
    lines = [
        "| seed | test / oracle | ratio | hidden kept / offered / total "
        "| distractors kept / offered | best round | passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in results.items():
        ratio = r["test_accuracy"] / r["oracle_accuracy"]
        ok = (
            ratio >= 0.9
            and r["hidden_kept"] == r["hidden_rules"]
            and r["distractors_kept"] <= 0.2 * r["distractors_offered"]
        )
        lines.append(
            f"| {seed} | {r['test_accuracy']:.3f} / {r['oracle_accuracy']:.3f} | {ratio:.3f} "
            f"| {r['hidden_kept']} / {r['hidden_offered']} / {r['hidden_rules']} "
            f"| {r['distractors_kept']} / {r['distractors_offered']} | {r['best_round']} "
            f"| {'yes' if ok else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated, e.g. 1,3")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        seeds = [int(seed) for seed in args.seeds.split(",")]
        results = {seed: run_seed(seed, overrides, out) for seed in seeds}
    text = table(results)
    print(text)
    return text


if __name__ == "__main__":
    main()
