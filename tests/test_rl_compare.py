"""rl.compare and bench.algorithms run end to end on a shrunken demo (2 epochs, one group of 4):
the PNG, the markdown table and the JSON line exist and hold what they say (no timing asserted)."""

import json

from bench.algorithms import main as bench_main
from rl.compare import main as compare_main

SMALL = ["train.batch_size=4", "train.micro_batch_size=4", "train.group_size=4",
         "train.groups_per_epoch=1", "train.optimizer_steps_per_epoch=1",
         "log.sample_every_n_epochs=0"]  # fmt: skip


def test_compare_writes_the_plot_and_the_table(tmp_path):
    compare_main(["algorithms=flow_grpo,mixgrpo", "epochs=2", f"out={tmp_path}", *SMALL])
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert table[0].startswith("| algorithm |") and len(table) == 4
    rows = {r["algorithm"]: r for r in json.loads((tmp_path / "compare.json").read_text())}
    assert rows["flow_grpo"]["ratio"] == 1.0 and rows["mixgrpo"]["ratio"] > 0
    # 2 epochs x 4 images; the rubric demo asks the judge one question per rule and image
    assert rows["mixgrpo"]["images"] == 8 and rows["mixgrpo"]["judge_calls"] == 8 * 5
    # the run's minutes hold its epochs' phases and the model building before them
    assert rows["mixgrpo"]["run_min"] * 60 > rows["mixgrpo"]["s_per_epoch"] * 2
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert (tmp_path / "mixgrpo" / "metrics.jsonl").is_file()


def test_bench_algorithms_reports_ratios_to_flow_grpo(capsys):
    report = bench_main(["--epochs", "2", "--algorithms", "flow_grpo,diffusion_nft",
                         "--flow-grpo-trains-all-steps", *SMALL])  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == report and report["bench"] == "algorithms"
    assert report["algorithms"]["flow_grpo"]["ratio_to_flow_grpo"] == 1.0
    assert report["algorithms"]["diffusion_nft"]["epoch_s"] > 0
    assert report["flow_grpo_overrides"] == ["rollout.sde_window=null"]
