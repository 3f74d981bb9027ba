"""How the generation benchmarks ask a judge: free-text answers in a fixed format, or P(yes).

Both benchmarks show the judge one image and a list of checks about it. With
``answer_mode="generate"`` the judge writes free text (greedy, i.e. temperature 0, for a local
model; ``judge.temperature=0`` for a served one) and the benchmark parses it with its official
rule; an answer that does not parse makes every check of that image wrong, as the official scripts
count it. With ``answer_mode="yes_prob"`` each check is asked as its own yes/no question and
``P(yes) > 0.5`` means yes (NaN: unanswered, wrong); this works with judges that cannot write free
text, such as the pixel judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from rewards.judges.base import Judge, JudgeItem

ANSWER_MODES = ("generate", "yes_prob")
YES_THRESHOLD = 0.5


@dataclass(frozen=True)
class JudgeOptions:
    """How to ask: answer mode, the prompt template, generation budget and batch size."""

    answer_mode: str = "generate"
    template: str | None = None
    max_new_tokens: int = 512
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> JudgeOptions:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def generate_answers(
    judge: Judge, requests: Sequence[tuple[Image.Image, str]], opts: JudgeOptions
) -> list[str]:
    """Free-text answers, one per (image, text) request, ``opts.batch_size`` per judge call."""
    answers: list[str] = []
    for start in range(0, len(requests), opts.batch_size):
        chunk = requests[start : start + opts.batch_size]
        answers += judge.generate_many([([im], text) for im, text in chunk], opts.max_new_tokens)
    return answers


def yes_no_by_prob(
    judge: Judge, image: Image.Image, context: str, questions: Sequence[str]
) -> tuple[list[str], list[float], list[str | None]]:
    """Each question as its own yes/no item: ``"yes"`` when P(yes) > 0.5, ``"no"`` below,
    ``"invalid"`` when the judge could not answer (NaN, with its reason)."""
    result = judge.yes_prob([JudgeItem(image, context, q) for q in questions])
    probs = [float(p) for p in result.probs]
    answers = [
        "invalid" if p != p else ("yes" if p > YES_THRESHOLD else "no")  # p != p: NaN
        for p in probs
    ]
    return answers, probs, list(result.reasons)
