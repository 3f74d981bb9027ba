"""Every command ends a known bad input (a wrong name, a missing or malformed file or folder)
with one line naming it and exit status 1, never with a traceback. Each case runs the real
command line in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval"


def write_inputs(tmp: Path) -> None:
    """A malformed rubric set (no weights, no ids) and a training run folder as
    eval.checkpoints reads it (saved config, one marked LoRA folder; the command fails before
    it loads the LoRA, so the folder may stay empty)."""
    (tmp / "bad_rubric.json").write_text(
        json.dumps({"schema_version": 1, "rubrics": [{"text": "x"}]})
    )
    run = tmp / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": {"name": "tiny"}}), run / ".hydra" / "config.yaml")
    checkpoint = run / "checkpoints" / "epoch_000001"
    (checkpoint / "lora").mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("{}")


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """command line -> (its arguments, a text its one line must hold)."""
    bad_rubric = tmp / "bad_rubric.json"
    pixel_tiif = f"eval_hook.tiif.prompt_dir={FIX / 'tiif_pixel' / 'prompts'}"
    return {
        "train: malformed rubric set": (
            ["rl.train", "experiment=demo", f"reward.rubric_set={bad_rubric}"],
            "bad_rubric.json",
        ),
        "learn: missing pairs file": (
            ["rubric_learning.learn", "experiment=learn_hpdv3", "judge=pixel",
             f"data.path={tmp / 'none.json'}"],
            "preference file not found",
        ),
        "checkpoints: unknown TIIF type": (
            ["eval.checkpoints", f"run_dir={tmp / 'run'}", "judge=pixel",
             pixel_tiif, f"eval_hook.tiif.eval_dir={FIX / 'tiif_pixel' / 'eval_prompts'}",
             "eval_hook.tiif.types=[nonsense]"],
            "unknown TIIF type",
        ),
        "tiif: missing model folder": (
            ["eval.tiif", f"data.prompt_dir={FIX / 'tiif' / 'prompts'}",
             f"data.eval_dir={FIX / 'tiif' / 'eval_prompts'}", "model=sd35_medium",
             f"model.path={tmp / 'no_model'}", "judge=pixel", f"output_dir={tmp / 'tiif'}"],
            "no_model",
        ),
        "preference: judge server not up": (
            ["eval.preference", "benchmark=jsonl",
             f"data.path={FIX / 'preference' / 'pairs.jsonl'}", "reward=rubric", "judge=openai",
             "judge.base_url=http://127.0.0.1:9/v1", "judge.health_timeout_s=2",
             f"reward.rubric_set={FIX / 'preference' / 'red_rubric.json'}"],
            "is not healthy",
        ),
        "preference: malformed pairs file": (
            ["eval.preference", "benchmark=hpdv3", f"data.path={bad_rubric}", "reward=rubric",
             "judge=pixel", f"reward.rubric_set={FIX / 'preference' / 'red_rubric.json'}"],
            "bad_rubric.json",
        ),
    }  # fmt: skip


NAMES = list(cases(Path("/unused")))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_ends_in_one_line(name, tmp_path):
    write_inputs(tmp_path)
    args, expected = cases(tmp_path)[name]
    cmd = [sys.executable, "-m", *args, f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert expected in last, proc.stderr[-2000:]


def test_an_eval_command_writes_no_secret(tmp_path):
    """A key-like field given on the command line (here a stand-in ``+hf_token``; a
    ``judge.api_key`` is the same rule) reaches no file of the run folder: Hydra's
    ``.hydra/*.yaml`` are scrubbed as soon as the command starts, and no log line holds it."""
    secret = "s3cret-token-value-4711"
    cmd = [sys.executable, "-m", "eval.preference", "benchmark=jsonl", "reward=rubric",
           "judge=pixel", f"reward.rubric_set={FIX / 'preference' / 'red_rubric.json'}",
           f"data.path={FIX / 'preference' / 'pairs.jsonl'}", f"+hf_token={secret}",
           f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written) and (tmp_path / "results.json").is_file()
    assert not [p for p in written if secret in p.read_text(errors="replace")]
