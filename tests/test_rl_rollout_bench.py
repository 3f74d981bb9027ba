"""bench.rollout runs end to end on the tiny model and reports an on-policy log ratio of 0 on CPU
float32 (no timing is asserted)."""

from bench.rollout import main


def test_bench_rollout_reports_every_figure(capsys):
    report = main(["--steps", "2", "--repeats", "1", "--batch", "2"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith('{"bench": "rollout"')
    for key in ("rollout_images_per_s", "train_step_s", "outside_transformer_fraction"):
        assert report[key] > 0
    assert 0 <= report["outside_transformer_fraction"] < 1
    assert report["trained_steps_per_rollout"] == 1
    assert report["max_abs_log_ratio"] == 0.0 and report["claimed_ratio"] == 0.0
