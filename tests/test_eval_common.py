"""eval.common: atomic writes (the target is replaced whole or left as it was) and the
settings stamp that guards a resumed run folder."""

from __future__ import annotations

import json

import pytest

from eval.common import (
    SETTINGS_FILE,
    BenchmarkInputError,
    atomic_write,
    check_resume_settings,
    check_scoring,
    write_json,
)


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


def test_settings_stamp_locks_only_a_folder_that_holds_results(tmp_path):
    """A run that stopped before writing any result leaves a stamp that locks nothing; once a
    result exists, a run with other settings is refused and the same settings resume."""
    results = ("images", "eval_results")
    check_resume_settings(tmp_path, {"judge": "a"}, "pick another folder", results)
    assert json.loads((tmp_path / SETTINGS_FILE).read_text()) == {"judge": "a"}
    (tmp_path / "images").mkdir()  # an empty folder is not a result
    check_resume_settings(tmp_path, {"judge": "b"}, "pick another folder", results)
    (tmp_path / "images" / "0.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=r"other \['judge'\] settings.*pick another folder"):
        check_resume_settings(tmp_path, {"judge": "a"}, "pick another folder", results)
    check_resume_settings(tmp_path, {"judge": "b", "batch_size": 3}, "-", results)


def test_scoring_policy_checks_name_the_choices_and_what_strict_needs():
    policies = {"official": "left out", "strict": "counted wrong"}
    check_scoring("official", policies, "data.csv")  # official needs no list of images
    check_scoring("strict", policies)  # the expected images are known
    with pytest.raises(BenchmarkInputError, match=r"\['official', 'strict'\], got 'lenient'"):
        check_scoring("lenient", policies)
    with pytest.raises(BenchmarkInputError, match="scoring=strict needs data.csv"):
        check_scoring("strict", policies, "data.csv")
