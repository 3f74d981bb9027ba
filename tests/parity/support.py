"""Helpers of the parity tests (``pytest -m parity``, ``make parity``): the prompts both sides
score, and the runner of the official-side scripts in their own environments.

The official packages run in the virtual environments ``tests/parity/make_envs.sh`` builds
(default ``.venv-parity/<name>``, or ``$PARITY_ENVS/<name>``). A missing environment fails the test
with the command that builds it: these tests are selected on purpose, so they never skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENVS = Path(os.environ.get("PARITY_ENVS", ROOT / ".venv-parity")).resolve()

# Prompts with capitals, punctuation, digits, an accent and one past CLIP's 77-token context.
PROMPTS = [
    "a portrait of a woman in uniform, black and white photo",
    "A LOGO with the word matplotlib in blue letters!",
    "an old photograph of a computer scientist, 1950s style, film grain, 35mm",
    "a grey cat on a sofa next to a caf\u00e9 window, salt &amp; pepper fur",
    'A astronaut’s glove floating in zero-g with "NASA 2049" on the wrist',  # flow_grpo's example
    "a small blue present box with a ribbon on top",
    " ".join(["a very long prompt about a red bicycle leaning on a wall"] * 8),
]


def official_env(name: str) -> Path:
    """The Python of the environment built for an official package, or a clear failure."""
    python = ENVS / name / "bin" / "python"
    if not (ENVS / name / ".installed").is_file():
        pytest.fail(
            f"no parity environment {ENVS / name}: build it with "
            f"`bash tests/parity/make_envs.sh {ENVS}` (or `make parity`)"
        )
    return python


def run_official(name: str, script: str, spec: dict, folder: Path, timeout: int = 900) -> dict:
    """Run ``tests/parity/<script>`` in environment ``name`` on ``spec``; return its result."""
    spec = {**spec, "result": str(folder / f"{name}_result.json")}
    spec_file = folder / f"{name}_spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(official_env(name)), str(HERE / script), str(spec_file)],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(f"{script} failed in {name}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(Path(spec["result"]).read_text())


def max_relative_difference(ours, theirs) -> float:
    """max |ours - theirs| / max(|theirs|, 1e-6) over paired scores; both sides must hold the
    same number of scores (a missing score would otherwise vanish from the comparison)."""
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs), f"{len(ours)} scores here, {len(theirs)} official ones"
    assert ours, "no scores to compare"
    return max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, theirs))
