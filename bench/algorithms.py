"""Each RL algorithm's time per epoch on the same shapes, as a ratio to flow_grpo; ONE JSON line.

    python -m bench.algorithms                                   # CPU: the tiny demo model
    python -m bench.algorithms --epochs 4 --out bench/results/algorithms_cpu.json
    python -m bench.algorithms --flow-grpo-trains-all-steps   # against the recipes' Flow-GRPO

Runs every algorithm's demo (:data:`rl.compare.DEMOS`, the same prompts, batch, group, 8 steps at
32 px, one thread) for ``--epochs`` epochs in this process and reports, per algorithm, the median
over the epochs after the first (warm-up) of the sampling, training and whole-epoch seconds, and
``ratio_to_flow_grpo`` of the whole epoch. What each algorithm does within those shapes is its own:
MixGRPO trains its 4-step window, DiffusionNFT samples without CFG (one forward per step, as its
recipe) but trains 7 forward-process timesteps with three forwards each (old, current, reference
policies). Reward scoring (the pixel judge) is inside the epoch time, the same for all. Timings
depend on the machine and its load (the demos run one torch thread, ``train.num_threads=1``).

The demo's Flow-GRPO already trains only a 4-step window (``rollout.sde_window=[0, 4]``, the fast
variant), MixGRPO's own window size, so on the demo's shapes MixGRPO has nothing to save.
``--flow-grpo-trains-all-steps`` unsets that window for flow_grpo and grpo_guard, which then
sample with SDE noise at and train every step, as the SD3.5-M recipe trains 9 of its 10 steps:
the comparison MixGRPO's saving is claimed against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rl.compare import DEMOS, run_demo
from rl.config import register_resolvers

PHASES = ("sample_s", "advantages_s", "train_s", "checkpoint_s", "eval_s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per algorithm (>= 2)")
    parser.add_argument("--algorithms", default=",".join(DEMOS))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--flow-grpo-trains-all-steps", action="store_true",
        help="flow_grpo and grpo_guard without the demo's 4-step SDE window (every step trained)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    register_resolvers()
    overrides = [f"train.epochs={args.epochs}", "log.sample_every_n_epochs=0",
                 f"checkpoint.every_n_epochs={args.epochs}", *args.overrides]  # fmt: skip
    every_step = ["rollout.sde_window=null"] if args.flow_grpo_trains_all_steps else []
    report: dict = {"bench": "algorithms", "epochs": args.epochs, "overrides": overrides,
                    "flow_grpo_overrides": every_step, "device": "cpu",
                    "algorithms": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.algorithms.split(","):
            own = every_step if name in ("flow_grpo", "grpo_guard") else []
            rows = run_demo(name, Path(tmp) / name, [*overrides, *own])[1:]

            def median(key: str) -> float:
                return statistics.median(r[key] for r in rows)  # noqa: B023

            report["algorithms"][name] = {
                "sample_s": median("sample_s"),
                "train_s": median("train_s"),
                "epoch_s": statistics.median(sum(r.get(k, 0.0) for k in PHASES) for r in rows),
            }
    base = report["algorithms"].get("flow_grpo", {}).get("epoch_s")
    for figures in report["algorithms"].values():
        figures["ratio_to_flow_grpo"] = round(figures["epoch_s"] / base, 3) if base else None
    line = json.dumps(report)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return report


if __name__ == "__main__":
    main()
