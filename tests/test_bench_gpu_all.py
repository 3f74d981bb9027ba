"""bench/gpu_all.sh, the one script a lent GPU runs first: every step runs at tiny shapes on the
CPU, each writes its JSON line to the results file, and a failing step makes the script fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(out: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TINY": "1", "DEVICE": "cpu", "OUT": str(out),
                   "PY": sys.executable, **env}  # fmt: skip
    return subprocess.run(["bash", "bench/gpu_all.sh"], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_every_step_writes_its_json_line(tmp_path):
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (results,) = tmp_path.glob("gpu_all_*.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["bench"] for row in rows] == ["rollout"] * 4 + ["judge"]
    models = ["tiny", "tiny_sd35_large", "tiny_flux", "tiny_qwen_image"]  # every family, tiny
    assert [row["model"] for row in rows[:4]] == models
    assert "compiled" not in rows[1] and all(row["device"] == "cpu" for row in rows)


def test_a_failing_step_fails_the_script_and_the_others_still_run(tmp_path):
    proc = run_script(tmp_path, DEVICE="no-such-device")
    assert proc.returncode != 0
    assert "gpu_all: rollout failed" in proc.stderr and "gpu_all: judge_2_rubrics" in proc.stderr
    assert "gpu_all: rollout_qwen_image failed" in proc.stderr
