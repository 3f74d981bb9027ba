"""The on-disk judge cache: every P(yes) and every generated answer, written as it arrives.

One SQLite file with two tables. ``scores`` maps a key built from the judge's identity, the exact
context and question sent (the template filled with the prompt and the rubric text) and the
image's content hash to P(yes) (NULL = NaN) and the failure reason. ``generations`` maps the
judge's identity, the request text and the images' hashes to the answer. Each batch is committed
as soon as the judge returns it, so an interrupted run loses at most the batch in flight and a
rerun pointed at the same file asks the judge only for what is missing. The database runs in
write-ahead-log mode with ``synchronous=NORMAL``: a commit survives the process being killed (the
case that matters here) without waiting for the disk on every batch.

Only answers are kept: a NaN whose reason is transient (a timeout, a connection error, an HTTP
429 or 5xx: :func:`rewards.judges.base.is_transient`) says nothing about the item, so it is not
stored, and one stored by an older version reads as missing; the next run asks again.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from rewards.judges.base import is_transient

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, prob REAL, reason TEXT);
CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, answer TEXT NOT NULL);
"""


def make_key(*parts: str) -> str:
    """A stable key for a tuple of strings (unambiguous: parts are length-prefixed)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class JudgeCache:
    """SQLite-backed store of judge answers, held in memory for lookups."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT key, prob, reason FROM scores").fetchall()
            answers = self._db.execute("SELECT key, answer FROM generations").fetchall()
        except sqlite3.DatabaseError as err:
            raise RuntimeError(
                f"judge cache {self.path} is not a readable SQLite file: {err}"
            ) from err
        self._scores = {k: (math.nan if p is None else p, r) for k, p, r in rows}
        self._answers = dict(answers)

    def __len__(self) -> int:
        return len(self._scores)

    def get_score(self, key: str) -> tuple[float, str | None] | None:
        """(P(yes), reason) stored under ``key``; None when missing or a transient failure."""
        hit = self._scores.get(key)
        return None if hit is not None and is_transient(hit[1]) else hit

    def put_scores(self, entries: Iterable[tuple[str, float, str | None]]) -> None:
        """Store (key, prob, reason) entries and commit them; transient failures are skipped."""
        rows = [
            (k, None if math.isnan(p) else float(p), r)
            for k, p, r in entries
            if not (math.isnan(p) and is_transient(r))
        ]
        self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", rows)
        self._db.commit()
        for k, p, r in rows:
            self._scores[k] = (math.nan if p is None else p, r)

    def get_answer(self, key: str) -> str | None:
        return self._answers.get(key)

    def put_answers(self, entries: Sequence[tuple[str, str]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?)", list(entries))
        self._db.commit()
        self._answers.update(entries)

    def close(self) -> None:
        self._db.close()
