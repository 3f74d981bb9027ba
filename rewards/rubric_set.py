"""The rubric set file: what rubric learning writes and the rubric reward reads.

One JSON document::

    {
      "schema_version": 1,
      "judge_template": {"context": "... {prompt} ...", "question": "... {rubric} ..."},
      "scoring": "normalized",            # "normalized": p(yes)/(p(yes)+p(no)); "raw": p(yes)
      "rubrics": [
        {"id": "r0001", "text": "The sky is blue.", "weight": 0.8,
         "provenance": {"round": 0, "source": "seed", "pair_id": "..."}}
      ],
      "training": {...},                    # free-form statistics from rubric learning
      "judge": {"model": "Qwen3-VL-8B-Instruct", "fingerprint": "3f2a...",  # optional: the
                "yes_no_from": "top_k", "top_k": 20}          # judge the weights were learned with
    }

``judge`` (absent in files written before it existed, which still load) is
:meth:`rewards.judges.base.Judge.identity` of the judge the weights were learned with.

:func:`load_rubric_set` validates every field and names the field and the file in its error.
Weights must be finite where they are used: rewards are float32, so each weight, and the largest
score the set can give (the sum of ``|weight|``, every P(yes) being at most 1), must stay below
float32's largest value (``1e39`` is finite in float64 but infinite in float32).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rewards.base import FLOAT32_MAX
from rewards.judges.base import YES_NO_FROM

SCHEMA_VERSION = 1
SCORING_MODES = ("normalized", "raw")

DEFAULT_TEMPLATE = {
    "context": 'This image was generated from the prompt: "{prompt}".',
    "question": 'Does the image satisfy the following rule? Rule: "{rubric}" '
    "Answer with yes or no.",
}


class RubricSetError(ValueError):
    """A rubric set file that does not follow the schema."""


@dataclass
class Rubric:
    id: str
    text: str
    weight: float
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class RubricSet:
    rubrics: list[Rubric]
    judge_template: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATE))
    scoring: str = "normalized"
    training: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    judge: dict[str, Any] | None = None

    def context(self, prompt: str) -> str:
        """The text shared by every question about an image generated from ``prompt``."""
        return self.judge_template["context"].format(prompt=prompt)

    def question(self, rubric: Rubric | str) -> str:
        text = rubric.text if isinstance(rubric, Rubric) else rubric
        return self.judge_template["question"].format(rubric=text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the set as JSON (validated first, written to a temporary file then renamed)."""
        path = Path(path)
        data = self.to_dict()
        validate_rubric_set(data, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path


def check_scoring(scoring: str) -> str:
    """``scoring`` if it is one of :data:`SCORING_MODES`, else a ValueError naming the choices."""
    if scoring not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
    return scoring


def _fail(source: str, where: str, problem: str) -> RubricSetError:
    return RubricSetError(f"{source}: field {where!r} {problem}")


def validate_rubric_set(data: Any, source: str = "<rubric set>") -> RubricSet:
    """Check ``data`` against the schema and return it as a :class:`RubricSet`."""
    if not isinstance(data, dict):
        raise RubricSetError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(source, "schema_version", f"must be {SCHEMA_VERSION}, got {version!r}")
    template = data.get("judge_template", DEFAULT_TEMPLATE)
    if not isinstance(template, dict):
        raise _fail(source, "judge_template", "must be an object with 'context' and 'question'")
    for key, placeholder in (("context", "{prompt}"), ("question", "{rubric}")):
        value = template.get(key)
        if not isinstance(value, str):
            raise _fail(source, f"judge_template.{key}", "must be a string")
        if placeholder not in value:
            raise _fail(source, f"judge_template.{key}", f"must contain {placeholder}")
    scoring = data.get("scoring", "normalized")
    if scoring not in SCORING_MODES:
        raise _fail(source, "scoring", f"must be one of {SCORING_MODES}, got {scoring!r}")
    raw_rubrics = data.get("rubrics")
    if not isinstance(raw_rubrics, list) or not raw_rubrics:
        raise _fail(source, "rubrics", "must be a non-empty list")
    rubrics, seen = [], set()
    for i, item in enumerate(raw_rubrics):
        where = f"rubrics[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, where, "must be an object")
        rid, text, weight = item.get("id"), item.get("text"), item.get("weight")
        if not isinstance(rid, str) or not rid:
            raise _fail(source, f"{where}.id", "must be a non-empty string")
        if rid in seen:
            raise _fail(source, f"{where}.id", f"repeats id {rid!r}")
        seen.add(rid)
        if not isinstance(text, str) or not text.strip():
            raise _fail(source, f"{where}.text", "must be a non-empty string")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise _fail(source, f"{where}.weight", f"must be a number, got {weight!r}")
        if not math.isfinite(weight) or abs(weight) > FLOAT32_MAX:
            raise _fail(
                source, f"{where}.weight", f"must be finite in float32 (rewards), got {weight!r}"
            )
        provenance = item.get("provenance", {})
        if not isinstance(provenance, dict):
            raise _fail(source, f"{where}.provenance", "must be an object")
        rubrics.append(Rubric(rid, text.strip(), float(weight), provenance))
    largest = math.fsum(abs(r.weight) for r in rubrics)
    if largest > FLOAT32_MAX:
        raise _fail(
            source,
            "rubrics",
            f"weights sum to {largest:g} in absolute value: a score that large is infinite in "
            "float32 (rewards)",
        )
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise _fail(source, "training", "must be an object")
    judge = _check_judge_record(data.get("judge"), source)
    return RubricSet(rubrics, dict(template), scoring, training, version, judge)


def _check_judge_record(judge: Any, source: str) -> dict[str, Any] | None:
    """The optional ``judge`` record: model name, config fingerprint (or null), P(yes) rule."""
    if judge is None:
        return None
    if not isinstance(judge, dict):
        raise _fail(source, "judge", "must be an object")
    if not isinstance(judge.get("model"), str) or not judge["model"]:
        raise _fail(source, "judge.model", "must be a non-empty string")
    if not isinstance(judge.get("fingerprint"), (str, type(None))):
        raise _fail(source, "judge.fingerprint", "must be a string or null")
    if judge.get("yes_no_from") not in YES_NO_FROM:
        raise _fail(source, "judge.yes_no_from", f"must be one of {YES_NO_FROM}")
    top_k = judge.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise _fail(source, "judge.top_k", f"must be a positive integer or null, got {top_k!r}")
    return dict(judge)


def load_rubric_set(path: str | Path) -> RubricSet:
    """Read and validate a rubric set file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rubric set file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RubricSetError(f"{path}: not valid JSON ({err})") from err
    return validate_rubric_set(data, str(path))
