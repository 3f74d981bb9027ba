"""eval.common.atomic_write: the target is replaced whole or left as it was."""

from __future__ import annotations

import pytest

from eval.common import atomic_write, write_json


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "scores.json"
    write_json(path, {"overall": float("nan")})
    assert path.read_text() == '{\n  "overall": null\n}\n'
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == '{\n  "overall": null\n}\n'
    with atomic_write(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]
