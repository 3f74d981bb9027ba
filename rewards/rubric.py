"""The rubric reward: a weighted sum of a judge's P(yes) over a learned set of rules.

``score(prompt, image) = sum_k w_k * P(yes | prompt, image, rubric k)`` (AutoRubric-T2I). The
rubric set file (see :mod:`rewards.rubric_set`) gives the rules, their weights, the question
template and the scoring mode the weights were learned with. Every image x rubric question of a
batch goes to the judge in ONE ``yes_prob`` call, image-major (all questions about image 0, then
image 1, ...), so judges with shared-prefix scoring see each image's questions together.

Unanswered rubrics (NaN from the judge, e.g. a timeout or an unknown statement) follow
``on_unanswered``:

* ``"nan"`` (default): the sample's score is NaN and its failure is counted under
  ``"rubric unanswered: <judge reason>"`` (the first unanswered rubric's reason);
* ``"renormalize"``: the sum runs over the answered rubrics and is scaled by
  ``sum_k |w_k| / sum_answered |w_k|`` so that it stays on the full set's scale; a sample with no
  answered rubric is still NaN (reason ``"no rubric answered: <judge reason>"``).

The weights belong to the judge they were learned with. When the rubric set records that judge
(``judge``: model name + config fingerprint, and the P(yes) rule), a reward served by another one
logs one warning at construction naming what differs; ``on_judge_mismatch="raise"`` refuses
instead. A set without the record (written before it existed) is served by any judge.

Details: ``"rubric/<id>"`` holds each rubric's probability (NaN where unanswered) and
``"rubric_answered_fraction"`` the share of rubrics answered per sample.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rewards.base import Reward, RewardOutput
from rewards.judges.base import Judge, JudgeItem
from rewards.rubric_set import RubricSet, check_scoring, load_rubric_set

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
UNANSWERED_POLICIES = ("nan", "renormalize")
JUDGE_MISMATCH_POLICIES = ("warn", "raise")


def judge_differences(recorded: dict[str, Any], serving: dict[str, Any]) -> list[str]:
    """What differs between the judge a rubric set was learned with and the one serving it:
    the P(yes) rule, and the model: by config fingerprint where both sides know it, else by
    name (a server shows no config)."""
    differences = [
        f"{key} {recorded.get(key)!r} -> {serving.get(key)!r}"
        for key in ("yes_no_from", "top_k")
        if recorded.get(key) != serving.get(key)
    ]
    if recorded.get("fingerprint") and serving.get("fingerprint"):
        same_model = recorded["fingerprint"] == serving["fingerprint"]
    else:
        same_model = recorded.get("model") == serving.get("model")
    if not same_model:
        differences.insert(
            0,
            f"model {recorded.get('model')!r} ({recorded.get('fingerprint')}) -> "
            f"{serving.get('model')!r} ({serving.get('fingerprint')})",
        )
    return differences


def resolve_rubric_set_path(path: str | Path) -> Path:
    """``path`` as given if it exists, else relative to the project root (for ``conf/rubrics``)."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    from_root = PROJECT_ROOT / given
    if from_root.is_file():
        return from_root
    raise FileNotFoundError(
        f"rubric set file not found: {path} (looked in {Path.cwd()} and {PROJECT_ROOT})"
    )


class RubricReward(Reward):
    """Weighted sum of judge probabilities over a rubric set.

    Args:
        rubric_set: a :class:`RubricSet` or the path of a rubric set JSON file (validated on load;
            a relative path is looked up in the working directory, then the project root).
        judge: any :class:`Judge`. ``None`` only to give a clear error when a Hydra config has no
            ``judge`` node.
        on_unanswered: ``"nan"`` or ``"renormalize"`` (see the module docstring).
        on_judge_mismatch: ``"warn"`` (one warning) or ``"raise"`` when the rubric set records
            a different judge (model or P(yes) rule) than ``judge``.
        scoring: ``"normalized"`` or ``"raw"``; ``None`` takes the rubric set's mode. Judges that
            have a ``scoring`` attribute are switched to it, so the weights are applied to the same
            kind of probability they were learned on.
        name: the reward's name in logs and in :class:`rewards.multi.MultiReward`.
    """

    def __init__(
        self,
        rubric_set: str | Path | RubricSet,
        judge: Judge | None,
        on_unanswered: str = "nan",
        scoring: str | None = None,
        name: str = "rubric",
        on_judge_mismatch: str = "warn",
    ) -> None:
        if judge is None:
            raise ValueError(
                "reward=rubric needs a judge: pick one on the command line, e.g. judge=pixel "
                "(+judge=pixel if the primary config's defaults have no judge entry)"
            )
        if not isinstance(judge, Judge):
            raise TypeError(f"judge must be a rewards.judges.base.Judge, got {type(judge)}")
        if on_unanswered not in UNANSWERED_POLICIES:
            raise ValueError(
                f"on_unanswered must be one of {UNANSWERED_POLICIES}, got {on_unanswered!r}"
            )
        if on_judge_mismatch not in JUDGE_MISMATCH_POLICIES:
            raise ValueError(
                f"on_judge_mismatch must be one of {JUDGE_MISMATCH_POLICIES}, "
                f"got {on_judge_mismatch!r}"
            )
        if not isinstance(rubric_set, RubricSet):
            rubric_set = load_rubric_set(resolve_rubric_set_path(rubric_set))
        scoring = check_scoring(scoring or rubric_set.scoring)
        self.rubric_set = rubric_set
        self.judge = judge
        self.on_unanswered = on_unanswered
        self.scoring = scoring
        self.name = name
        self.weights = torch.tensor([r.weight for r in rubric_set.rubrics], dtype=torch.float64)
        self._questions = [rubric_set.question(r) for r in rubric_set.rubrics]
        self._apply_scoring()
        self._check_judge(on_judge_mismatch)

    def _check_judge(self, policy: str) -> None:
        if self.rubric_set.judge is None:
            return
        differences = judge_differences(self.rubric_set.judge, self.judge.identity())
        if not differences:
            return
        message = (
            f"{self.name}: the rubric set's weights were learned with another judge than the one "
            f"serving it ({'; '.join(differences)})"
        )
        if policy == "raise":
            raise ValueError(message + "; on_judge_mismatch=warn serves it anyway")
        log.warning("%s; its scores are on another judge's scale", message)

    def _apply_scoring(self) -> None:
        current = getattr(self.judge, "scoring", None)
        if current is None:
            if self.scoring != "normalized":
                log.warning(
                    "%s: judge %s has no scoring option; rubric set asks for %r",
                    self.name,
                    type(self.judge).__name__,
                    self.scoring,
                )
        elif current != self.scoring:
            log.info("%s: switching judge scoring from %r to %r", self.name, current, self.scoring)
            self.judge.scoring = self.scoring

    @property
    def accepts_tensors(self) -> bool:
        """Tensor batches go to judges that take image tensors (the local VLM judge)."""
        return bool(getattr(self.judge, "accepts_tensors", False))

    def score(
        self,
        images: list[Image.Image] | torch.Tensor,
        prompts: list[str],
        metadata: list[dict[str, Any]],
    ) -> RewardOutput:
        num_rubrics = len(self._questions)
        items = [
            JudgeItem(image, self.rubric_set.context(prompt), question)
            for image, prompt in zip(images, prompts)
            for question in self._questions
        ]
        result = self.judge.yes_prob(items)
        if result.probs.numel() != len(items) or len(result.reasons) != len(items):
            raise RuntimeError(
                f"{self.name}: judge {type(self.judge).__name__} answered "
                f"{result.probs.numel()} of {len(items)} questions"
            )
        probs = result.probs.to(torch.float64).reshape(len(images), num_rubrics)
        reasons = [result.reasons[i : i + num_rubrics] for i in range(0, len(items), num_rubrics)]
        answered = ~torch.isnan(probs)
        contributions = torch.where(answered, probs * self.weights, torch.zeros_like(probs))
        scores = contributions.sum(dim=1)
        failures: Counter = Counter()
        for b in torch.nonzero(~answered.all(dim=1)).flatten().tolist():
            reason = next((r for r in reasons[b] if r is not None), "no reason given")
            if self.on_unanswered == "nan":
                scores[b] = float("nan")
                failures[f"rubric unanswered: {reason}"] += 1
            elif not answered[b].any():
                scores[b] = float("nan")
                failures[f"no rubric answered: {reason}"] += 1
            else:
                answered_weight = self.weights.abs()[answered[b]].sum()
                if answered_weight > 0:
                    scores[b] *= self.weights.abs().sum() / answered_weight
        details = {
            f"rubric/{rubric.id}": probs[:, k] for k, rubric in enumerate(self.rubric_set.rubrics)
        }
        details["rubric_answered_fraction"] = answered.to(torch.float64).mean(dim=1)
        return RewardOutput(scores, details, failures)

    def release(self) -> None:
        self.judge.release()
