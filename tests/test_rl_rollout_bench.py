"""bench.rollout runs end to end on every family's tiny model, eager and compiled side by side,
and reports an on-policy log ratio of 0 on CPU float32 (no timing is asserted). The compiled half
runs on dynamo's plain `eager` backend here (seconds: the trainer's compile test covers
aot_eager's backward, the `compile`-marked test_rl_compile.py inductor's numerics). The full-size
code path of the packed-latent families runs as a one-block smoke run at 32 px."""

import pytest

from bench.rollout import main

FIGURES = ("rollout_images_per_s", "train_step_s", "iteration_images_per_s")
TINY = ["--steps", "2", "--repeats", "1", "--batch", "2", "--compile-backend", "eager"]


def check_eager_and_compiled(report: dict) -> None:
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


def test_bench_rollout_reports_eager_and_compiled_side_by_side(capsys):
    report = main(TINY)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('{"bench": "rollout", "model": "tiny"')
    assert (report["guidance_scale"], report["max_sequence_length"]) == (4.5, 128)
    check_eager_and_compiled(report)


@pytest.mark.parametrize(
    "model, tiny, guidance, cfg",
    [
        ("sd35_large", "tiny_sd35_large", 4.5, True),
        ("flux_dev", "tiny_flux", 3.5, False),  # the guidance embedding, no CFG branch
        ("qwen_image", "tiny_qwen_image", 4.0, True),
    ],
)
def test_bench_rollout_runs_every_family_tiny(model, tiny, guidance, cfg):
    report = main(["--model", model, *TINY])
    assert report["model"] == tiny and report["guidance_scale"] == guidance
    assert report["cfg"] is cfg
    check_eager_and_compiled(report)


@pytest.mark.parametrize("model", ["flux_dev", "qwen_image"])
def test_bench_rollout_full_size_shapes_run_with_one_block(model):
    """The real transformer and VAE widths (one block of each kind), random embeddings of the
    family's true shapes, on the CPU (about 15 s each)."""
    report = main(["--model", model, "--full-size", "--layers", "1", "--resolution", "32",
                   "--batch", "1", "--steps", "2", "--no-compile", "--max-seq", "8"])  # fmt: skip
    assert report["model"] == f"{model}_shaped_random" and report["layers"] == 1
    assert report.get("single_layers") == (1 if model == "flux_dev" else None)
    assert "compiled" not in report and report["eager"]["max_abs_log_ratio"] == 0.0
    assert report["transformer_forward_tflop"] > 0
