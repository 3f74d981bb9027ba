"""bench.rollout runs end to end on the tiny model, eager and compiled side by side, and reports an
on-policy log ratio of 0 on CPU float32 (no timing is asserted). The compiled half runs on
dynamo's plain `eager` backend here (seconds: the trainer's compile test covers aot_eager's
backward, the `compile`-marked test_rl_compile.py inductor's numerics)."""

from bench.rollout import main

FIGURES = ("rollout_images_per_s", "train_step_s", "iteration_images_per_s")


def test_bench_rollout_reports_eager_and_compiled_side_by_side(capsys):
    report = main(["--steps", "2", "--repeats", "1", "--batch", "2", "--compile-backend",
                   "eager"])  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('{"bench": "rollout"')
    assert report["trained_steps_per_rollout"] == 1 and report["compile_backend"] == "eager"
    for mode in ("eager", "compiled"):
        figures = report[mode]
        assert all(figures[key] > 0 for key in FIGURES), figures
        assert 0 <= figures["outside_transformer_fraction"] < 1
        assert figures["max_abs_log_ratio"] == 0.0 and figures["claimed_ratio"] == 0.0
    speedup = (
        report["compiled"]["iteration_images_per_s"] / report["eager"]["iteration_images_per_s"]
    )
    assert report["compile_speedup"] == float(f"{speedup:.3g}")
    # the eager backend runs the very same kernels: the compiled rollout is the eager one
    assert report["compiled_vs_eager_max_abs_latent"] == 0.0
    assert report["compiled_vs_eager_max_abs_log_prob"] == 0.0
