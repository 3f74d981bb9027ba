"""Secrets never reach a run folder, wandb or a log.

A config field is a secret when its name says so: a name part (split at ``_``, ``-`` and ``.``)
equal to ``token``, ``password``, ``passwd`` or ``secret``, or a name containing ``api_key`` /
``apikey`` (``judge.api_key``, ``hf_token``, ``db_password``; not ``max_new_tokens`` or
``tokenizer_path``). Three layers use that rule:

* :func:`redact` replaces such fields' values by :data:`REDACTED` in a config container (what
  goes to wandb as the run's config);
* :func:`secret_values` collects the resolved values (an ``${oc.env:JUDGE_API_KEY}`` or a
  ``judge.api_key=...`` override alike), and :func:`scrub_text` / :func:`scrub_files` /
  :func:`scrub_argv` replace them wherever they appear as text: Hydra's ``.hydra/*.yaml`` (the
  composed config and the command-line overrides), ``sys.argv`` (which wandb records);
* :class:`SecretFilter` scrubs them from every log record before a handler writes it.

Values shorter than :data:`MIN_SECRET_LENGTH` characters are not scrubbed as text (they would
mangle unrelated words); their fields are still redacted.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REDACTED = "***"
MIN_SECRET_LENGTH = 4
_SECRET_PARTS = {"token", "password", "passwd", "secret"}


def is_secret_key(name: str) -> bool:
    """Whether a config field called ``name`` holds a secret (see the module docstring)."""
    lowered = str(name).lower()
    if "api_key" in lowered or "apikey" in lowered:
        return True
    return bool(_SECRET_PARTS & set(re.split(r"[_\-.]", lowered)))


def redact(value: Any) -> Any:
    """A copy of a config container with every secret field's value replaced by REDACTED
    (null values stay null: nothing to hide, and it shows the field was unset)."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def secret_values(value: Any) -> set[str]:
    """The string form of every non-null secret field in a (resolved) config container."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_key(k) and v is not None and not isinstance(v, (dict, list)):
                found.add(str(v))
            else:
                found |= secret_values(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= secret_values(v)
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH and s != REDACTED}


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by REDACTED (longest first, so a
    secret that contains another is replaced whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def scrub_files(paths: Iterable[Path], secrets: set[str]) -> list[Path]:
    """Rewrite the text files among ``paths`` that contain a secret; returns those rewritten."""
    changed = []
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text(errors="surrogateescape")
        clean = scrub_text(text, secrets)
        if clean != text:
            path.write_text(clean, errors="surrogateescape")
            changed.append(path)
    return changed


def scrub_argv(secrets: set[str]) -> None:
    """Replace secrets in ``sys.argv`` (a ``judge.api_key=...`` override): wandb records the
    command line, and nothing reads the arguments once the config is composed."""
    sys.argv[:] = [scrub_text(arg, secrets) for arg in sys.argv]


class SecretFilter(logging.Filter):
    """Replaces the secrets in a record's message (and its traceback text) by REDACTED."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # formatters print exc_text when it is set instead of formatting exc_info again
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub_text(text, self.secrets)
        return True


def protect_run(config: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """Everything an entry point does once its config is composed and resolved: scrub the
    secrets from ``sys.argv``, from Hydra's files under ``run_dir/.hydra`` (only rank 0 has
    them) and from every log record from now on; return the redacted config (for wandb or a
    saved copy)."""
    secrets = secret_values(config)
    if secrets:
        scrub_argv(secrets)
        if run_dir is not None:
            scrub_files(sorted((run_dir / ".hydra").glob("*.yaml")), secrets)
        install_log_filter(secrets)
    return redact(config)


def install_log_filter(secrets: set[str]) -> None:
    """Put a :class:`SecretFilter` on every handler of the root logger (Hydra's console and
    ``train.log`` handlers), so a record is scrubbed whichever logger emitted it."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter(secrets))
