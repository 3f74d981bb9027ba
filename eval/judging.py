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

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from rewards.judges.base import Judge, JudgeItem

ANSWER_MODES = ("generate", "yes_prob")
YES_THRESHOLD = 0.5


@dataclass(frozen=True)
class JudgeOptions:
    """How to ask: answer mode, the prompt template(s), generation budget and batch size.

    ``template`` is None (the benchmark's default wording), one template, or a list of
    templates; with a list each image gets the one picked by a hash of the image's key, so
    wordings vary across images (as the official TIIF script varies them at random) while a
    rerun asks every image exactly as before.
    """

    answer_mode: str = "generate"
    template: str | tuple[str, ...] | None = None
    max_new_tokens: int = 512
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")
        if self.template is not None and not isinstance(self.template, str):
            object.__setattr__(self, "template", tuple(str(t) for t in self.template))
            if not self.template:
                raise ValueError("judging.template is an empty list")

    @classmethod
    def from_cfg(cls, cfg: Any) -> JudgeOptions:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def templates(self, default: str) -> tuple[str, ...]:
        """Every template this run may use (``default`` when none is set)."""
        if self.template is None:
            return (default,)
        return (self.template,) if isinstance(self.template, str) else self.template

    def template_for(self, key: str, default: str) -> str:
        """The template of the image with ``key``: a stable pick among :meth:`templates`."""
        choices = self.templates(default)
        return choices[zlib.crc32(key.encode("utf-8")) % len(choices)]

    def check_placeholders(self, default: str, *placeholders: str) -> None:
        """Fail before any judge call when a template lacks a placeholder the benchmark fills
        (free-text mode only: ``yes_prob`` asks its own questions and uses no template)."""
        if self.answer_mode != "generate":
            return
        for template in self.templates(default):
            missing = [p for p in placeholders if p not in template]
            if missing:
                raise ValueError(f"judging.template lacks {missing}: {template[:80]!r}...")


def resolve_judge(judge: Judge | Callable[[], Judge]) -> Judge:
    """A judge, or a factory called now (so a judge is built only once images exist and the
    generator's memory is free)."""
    return judge if isinstance(judge, Judge) else judge()


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
