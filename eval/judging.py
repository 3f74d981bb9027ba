"""How the generation benchmarks ask a judge: free-text answers in a fixed format, or P(yes).

Both benchmarks show the judge one image and a list of checks about it. The wording is a
*prompt preset*, a data file in ``eval/judge_prompts/`` naming its source: ``official`` (the
benchmark's own judge prompt, verbatim, with its system message and temperature) or ``ours``.

With ``answer_mode="generate"`` the judge writes free text and the benchmark parses it with its
official rule. An answer that does not parse is asked again, up to ``retries`` times at
``retry_temperature`` (above 0, so a re-ask can differ; the official scripts also re-ask: TIIF
until it parses, UniGenBench up to 10 times); an image whose answers never parse is left out of
the scores, as the official scripts leave it out, and counted. A judge call that fails after the
judge's own retries (``judge.max_retries`` for a served judge) leaves its image without a result:
left out, counted, and asked again by a rerun. When :data:`FAILURE_STREAK` images in a row get
no answer, the judge is taken to be down and the command stops (results written so far are
kept; a rerun resumes).

With ``answer_mode="yes_prob"`` each check is asked as its own yes/no item and ``P(yes) > 0.5``
means yes; an image with an unanswered item (NaN) is left out like an unparseable answer. This
works with judges that cannot write free text, such as the pixel judge.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rewards.judges.base import Judge, JudgeError, JudgeItem

log = logging.getLogger(__name__)

ANSWER_MODES = ("generate", "yes_prob")
PROMPTS = ("official", "ours")
PROMPT_DIR = Path(__file__).parent / "judge_prompts"
YES_THRESHOLD = 0.5
FAILURE_STREAK = 16  # images in a row without an answer that stop a run (the judge is down)
DEFAULT_MAX_NEW_TOKENS = 512  # when neither judging.max_new_tokens nor the preset sets one


@dataclass(frozen=True)
class PromptPreset:
    """A stored judge wording: ``templates`` (one per image, picked by the image's key),
    the ``system`` message, the ``temperature`` and answer budget its source uses, and
    benchmark-specific fields in ``extra`` (placeholders, testpoint definitions, ...)."""

    name: str
    source: str
    templates: tuple[str, ...]
    system: str | None
    temperature: float
    max_new_tokens: int | None
    extra: Mapping[str, Any] = field(default_factory=dict)


def load_prompt(benchmark: str, name: str) -> PromptPreset:
    """``eval/judge_prompts/<benchmark>_<name>.json``."""
    if name not in PROMPTS:
        raise ValueError(f"judging.prompt must be one of {PROMPTS}, got {name!r}")
    data = json.loads((PROMPT_DIR / f"{benchmark}_{name}.json").read_text(encoding="utf-8"))
    known = ("benchmark", "source", "templates", "system", "temperature", "max_new_tokens")
    return PromptPreset(
        name=name,
        source=data["source"],
        templates=tuple(data["templates"]),
        system=data["system"],
        temperature=float(data["temperature"]),
        max_new_tokens=data["max_new_tokens"],
        extra={k: v for k, v in data.items() if k not in known},
    )


@dataclass(frozen=True)
class JudgeOptions:
    """The ``judging`` config node: answer mode, prompt preset and overrides, retries, batch.

    ``template`` (one wording or a list) replaces the preset's wordings; ``temperature`` and
    ``max_new_tokens`` left as None take the preset's. With several wordings each image gets
    the one picked by a hash of its key, so wordings vary across images (as the official TIIF
    script varies them at random) while a rerun asks every image exactly as before.
    """

    answer_mode: str = "generate"
    prompt: str = "official"
    template: str | tuple[str, ...] | None = None
    temperature: float | None = None
    retries: int = 3
    retry_temperature: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"judging.prompt must be one of {PROMPTS}, got {self.prompt!r}")
        if self.template is not None and not isinstance(self.template, str):
            object.__setattr__(self, "template", tuple(str(t) for t in self.template))
            if not self.template:
                raise ValueError("judging.template is an empty list")
        if self.retries < 0 or (self.retries and self.retry_temperature <= 0):
            raise ValueError(
                "judging.retries must be >= 0 and judging.retry_temperature > 0 (a re-ask at "
                "temperature 0 repeats the same answer)"
            )

    @classmethod
    def from_cfg(cls, cfg: Any) -> JudgeOptions:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def asking(self, benchmark: str) -> Asking:
        """What this run sends for ``benchmark``: the preset with these options applied."""
        preset = load_prompt(benchmark, self.prompt)
        if self.template is None:
            templates = preset.templates
        else:
            templates = (self.template,) if isinstance(self.template, str) else self.template
        return Asking(
            preset=preset,
            custom_template=self.template is not None,
            templates=templates,
            temperature=preset.temperature if self.temperature is None else self.temperature,
            retries=self.retries,
            retry_temperature=self.retry_temperature,
            max_new_tokens=self.max_new_tokens or preset.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            batch_size=self.batch_size,
            answer_mode=self.answer_mode,
        )


@dataclass(frozen=True)
class Asking:
    """The resolved judge request settings of a run (see :meth:`JudgeOptions.asking`)."""

    preset: PromptPreset
    custom_template: bool
    templates: tuple[str, ...]
    temperature: float
    retries: int
    retry_temperature: float
    max_new_tokens: int
    batch_size: int
    answer_mode: str

    @property
    def system(self) -> str | None:
        return self.preset.system

    def template_for(self, key: str) -> str:
        """The wording of the image with ``key``: a stable pick among :attr:`templates`."""
        return self.templates[zlib.crc32(key.encode("utf-8")) % len(self.templates)]

    def check_placeholders(self, required: Sequence[str], any_of: Sequence[str] = ()) -> None:
        """Fail before any judge call when a wording lacks a placeholder the benchmark fills
        (free-text mode only: ``yes_prob`` asks its own questions and uses no template)."""
        if self.answer_mode != "generate":
            return
        for template in self.templates:
            missing = [p for p in required if p not in template]
            if any_of and not any(p in template for p in any_of):
                missing.append(" or ".join(any_of))
            if missing:
                raise ValueError(f"judging.template lacks {missing}: {template[:80]!r}...")

    def describe(self) -> dict[str, Any]:
        """The settings as written into a summary."""
        if self.answer_mode == "yes_prob":
            return {"answer_mode": "yes_prob", "rule": f"yes when P(yes) > {YES_THRESHOLD}"}
        prompt = "custom judging.template" if self.custom_template else self.preset.name
        return {
            "answer_mode": "generate",
            "prompt": prompt,
            "prompt_source": None if self.custom_template else self.preset.source,
            "wordings": len(self.templates),
            "system": self.system,
            "temperature": self.temperature,
            "retries": self.retries,
            "retry_temperature": self.retry_temperature,
            "max_new_tokens": self.max_new_tokens,
        }


def resolve_judge(judge: Judge | Callable[[], Judge]) -> Judge:
    """A judge, or a factory called now (so a judge is built only once images exist and the
    generator's memory is free)."""
    return judge if isinstance(judge, Judge) else judge()


@dataclass
class Answer:
    """The outcome of asking about one image: the parse of the first answer that parsed, else
    the last answer (``text``) or, when no call succeeded, the judge's ``error``."""

    parsed: Any = None
    text: str | None = None
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.parsed is not None


def _ask_batch(
    judge: Judge, requests: Sequence[tuple[Image.Image, str]], asking: Asking, temperature: float
) -> list[str | JudgeError]:
    """One answer (or the judge's error) per request, ``asking.batch_size`` per judge call. A
    failed batch is asked again one request at a time, so one bad request fails alone."""

    def call(chunk: Sequence[tuple[Image.Image, str]]) -> list[str]:
        return judge.generate_many(
            [([image], text) for image, text in chunk],
            asking.max_new_tokens,
            temperature=temperature,
            system=asking.system,
        )

    out: list[str | JudgeError] = []
    for start in range(0, len(requests), asking.batch_size):
        chunk = requests[start : start + asking.batch_size]
        try:
            out += call(chunk)
        except JudgeError:
            for request in chunk:
                try:
                    out += call([request])
                except JudgeError as err:
                    out.append(err)
    return out


@dataclass
class FailureStreak:
    """Counts images in a row that got no answer; at ``limit`` the judge is taken to be down."""

    limit: int = FAILURE_STREAK
    count: int = 0

    def update(self, answers: Sequence[Answer]) -> None:
        for answer in answers:
            self.count = self.count + 1 if answer.text is None else 0
            if self.count >= self.limit:
                raise JudgeError(
                    f"the judge answered none of the last {self.count} images (last error: "
                    f"{answer.error}); is it down? Results so far are kept: rerun to resume"
                )


def ask_until_parsed(
    judge: Judge,
    requests: Sequence[tuple[Image.Image, str]],
    parse: Callable[[int, str], Any],
    asking: Asking,
    streak: FailureStreak | None = None,
) -> list[Answer]:
    """Ask every request; ``parse(i, text)`` returns None for an answer that does not parse.
    Unparsed answers are asked again, up to ``asking.retries`` times, at
    ``asking.retry_temperature`` (the first ask uses ``asking.temperature``); a failed call is
    not (the judge has retried it). ``streak`` stops the run when the judge seems down."""
    answers = [Answer() for _ in requests]
    pending = list(range(len(requests)))
    for attempt in range(asking.retries + 1):
        temperature = asking.temperature if attempt == 0 else asking.retry_temperature
        outputs = _ask_batch(judge, [requests[i] for i in pending], asking, temperature)
        still = []
        for i, output in zip(pending, outputs):
            answer = answers[i]
            answer.attempts += 1
            if isinstance(output, JudgeError):
                answer.error = str(output)
                continue
            answer.text, answer.error = output, None
            answer.parsed = parse(i, output)
            if not answer.ok:
                still.append(i)
        if attempt == 0 and streak is not None:
            streak.update(answers)
        pending = still
        if not pending:
            break
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
