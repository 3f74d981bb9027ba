"""Small helpers every evaluation entry shares: config checks, the run folder, result files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class BenchmarkInputError(ValueError):
    """Benchmark input a command cannot use (a wrong type name, a malformed file); the command
    line ends with this one message instead of a traceback (:func:`exit_on_input_error`)."""


class MissingInputError(BenchmarkInputError, FileNotFoundError):
    """A benchmark file or folder that is not there."""


def check_scoring(scoring: str, scorings: Mapping[str, str], needs: str | None = None) -> None:
    """Refuse a ``scoring`` policy not in ``scorings``, and ``strict`` when the expected images
    are unknown (``needs`` then names the setting that would list them; None: they are known)."""
    if scoring not in scorings:
        raise BenchmarkInputError(f"scoring must be one of {sorted(scorings)}, got {scoring!r}")
    if scoring == "strict" and needs is not None:
        raise BenchmarkInputError(f"scoring=strict needs {needs} (to know every image)")


@contextmanager
def exit_on_input_error(command: str, *known: type[Exception]) -> Iterator[None]:
    """End the command with one line (exit status 1) on a :class:`BenchmarkInputError`, a
    judge that cannot work at all (``JudgeError``: a server that is not up, a wrong URL), or one
    of the ``known`` error types the command raises for bad input (a malformed file, a wrong
    setting), instead of a traceback."""
    from rewards.judges.base import JudgeError

    try:
        yield
    except (BenchmarkInputError, JudgeError, *known) as err:
        raise SystemExit(f"{command}: {err}") from None


def protect_secrets(cfg: Any) -> None:
    """What every eval command does first (:func:`rl.redact.protect_run`): a key-like field's
    value (``judge.api_key``, a token) is scrubbed from the command line, from Hydra's
    ``.hydra/*.yaml`` in the run folder and from every log line of the run."""
    from omegaconf import OmegaConf

    from rl.redact import protect_run

    protect_run(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), run_dir())


def check_entry(cfg: Any, expected: str) -> None:
    """Fail with one message when an experiment preset meant for another entry was selected."""
    entry = cfg.get("entry")
    if entry != expected:
        raise BenchmarkInputError(
            f"this config is a preset for {entry!r}, not for eval.{expected} "
            f"(pick an experiment whose 'entry' is {expected!r})"
        )


def run_dir() -> Path:
    """The Hydra run folder of the current run (where every output of the run goes)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder made) to write to; renamed onto ``path``
    when the block ends without error, so a crash never leaves a half-written file there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (:func:`atomic_write`), NaN written as null."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(nan_to_none(data), indent=2, ensure_ascii=False) + "\n")


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN float (also inside dicts and lists) replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats rounded, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_report(markdown: Path, last_line: str) -> None:
    """Show the written markdown summary, then one line with the headline number."""
    print(markdown.read_text())
    print(last_line)


SETTINGS_FILE = "run_settings.json"
# Left out of the resume comparison: secrets, and knobs that change where, how fast or how
# robustly a run works, not its images or answers (a resume may well change them).
UNCOMPARED_KEYS = frozenset(
    {"api_key", "base_url", "device", "batch_size", "concurrency", "timeout_s",
     "connect_timeout_s", "max_retries", "retries", "backoff_s", "max_backoff_s", "on_error",
     "health_check", "health_timeout_s", "attn_implementation", "shared_prefix",
     "every_n_epochs"}
)  # fmt: skip


def _compared(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compared(v) for k, v in value.items() if k not in UNCOMPARED_KEYS}
    if isinstance(value, list):
        return [_compared(v) for v in value]
    return value


def holds_results(folder: Path, patterns: Sequence[str]) -> bool:
    """True when a file lies at, or under a folder at, any of the glob ``patterns``."""
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
                return True
    return False


def check_resume_settings(
    folder: Path, settings: dict[str, Any], hint: str, results: Sequence[str]
) -> None:
    """Resume guard: a run into ``folder`` records ``settings`` (what decides the images and
    judgements kept there, without :data:`UNCOMPARED_KEYS`); once the folder holds results
    (a file matching one of the ``results`` glob patterns), a later run with other settings
    fails instead of silently reusing results made under the old ones. A stamp without
    results (a run that stopped before making any) locks nothing and is replaced. ``hint``
    says what to do instead."""
    settings = json.loads(json.dumps(_compared(settings), default=str))
    path = folder / SETTINGS_FILE
    if path.is_file() and holds_results(folder, results):
        saved = json.loads(path.read_text())
        changed = sorted(
            k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k)
        )
        if changed:
            raise BenchmarkInputError(
                f"{folder} holds results made with other {changed} settings (see {path}); {hint}"
            )
        return
    write_json(path, settings)
