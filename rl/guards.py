"""What stops a run loudly instead of letting it train on nothing or save NaN weights.

* :class:`TimeLimitedReward`: one reward call takes at most ``train.reward_timeout_s`` of wall
  time; past it the batch is NaN (reason counted) and the call goes on in the background, where
  it is the only one: while it runs, the next batches are NaN at once instead of queueing behind
  a hung judge. A :class:`~rewards.judges.base.JudgeError` (server down, no logprobs) also makes
  the batch NaN with its reason, so the epoch check below decides, not a traceback.
* :class:`RewardGuard`: an epoch in which more than ``train.max_failed_reward_share`` of the
  rewards are NaN is a failed epoch: it is not trained on and not checkpointed. After
  ``train.max_failed_epochs`` failed epochs in a row the run stops with :class:`TrainingStopped`,
  whose one-line message names the reward, the failure reasons counted and the last good
  checkpoint.
* :class:`StepGuard`: an optimizer step whose loss or gradient is not finite is skipped (counted
  as ``nonfinite_steps``); ``train.max_nonfinite_steps`` such steps in a row stop the run.
* :func:`check_finite`: weights that are not finite are never checkpointed nor exported.

Every decision is taken on values that all processes share (gathered rewards, all-reduced
gradients, or a gathered flag), so the processes of a launch stop together.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import torch

from rewards.base import RewardOutput
from rewards.judges.base import JudgeError

log = logging.getLogger(__name__)

REWARD_CALL_TIMEOUT = "reward call over its time limit"
REWARD_STILL_BUSY = "reward still busy with a call over its time limit"
JUDGE_ERROR = "judge error"


class TrainingStopped(RuntimeError):
    """The run stopped itself; the message is one line saying why and what is left."""


def failed_output(batch: int, reason: str) -> RewardOutput:
    """A batch of ``batch`` NaN scores, all counted under ``reason``."""
    return RewardOutput(torch.full((batch,), math.nan), failures=Counter({reason: batch}))


class TimeLimitedReward:
    """``reward`` with a total wall-time limit per call (see the module docstring).

    ``timeout_s=None`` calls the reward directly (no limit) but still turns a JudgeError into a
    NaN batch. Calls come from one thread at a time (the trainer, or AsyncReward's worker).
    """

    def __init__(self, reward: Any, timeout_s: float | None) -> None:
        self.reward = reward
        self.name = reward.name
        self.timeout_s = timeout_s
        self._overdue: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        """Anything else (its judge, ``release``, ``check_prompts``) is the wrapped reward's."""
        if name == "reward":  # not set yet (copy, unpickling): no recursion through here
            raise AttributeError(name)
        return getattr(self.reward, name)

    def __call__(
        self,
        images: Any,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> RewardOutput:
        batch = len(prompts)
        if self.timeout_s is None:
            return self._guarded(images, prompts, metadata)
        if self.overdue:
            return failed_output(batch, REWARD_STILL_BUSY)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["out"] = self._guarded(images, prompts, metadata)
            except BaseException as err:  # handed to the caller's thread below
                box["err"] = err

        thread = threading.Thread(target=run, name=f"reward-{self.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._overdue = thread
            log.warning(
                "%s: a reward call took longer than %g s; its %d samples are NaN and the next "
                "batches are NaN until it returns",
                self.name,
                self.timeout_s,
                batch,
            )
            return failed_output(batch, REWARD_CALL_TIMEOUT)
        if "err" in box:
            raise box["err"]
        return box["out"]

    @property
    def overdue(self) -> bool:
        """Whether a call that ran past its limit is still running (it cannot be cancelled)."""
        return self._overdue is not None and self._overdue.is_alive()

    def _guarded(self, images: Any, prompts: Sequence[str], metadata: Any) -> RewardOutput:
        try:
            return self.reward(images, prompts, metadata)
        except JudgeError as err:
            log.warning("%s: %s; the batch's %d samples are NaN", self.name, err, len(prompts))
            return failed_output(len(prompts), f"{JUDGE_ERROR}: {str(err)[:120]}")

    def release(self) -> None:
        self.reward.release()


def describe_failures(failures: Counter, most: int = 4) -> str:
    """``"timeout x40, HTTP 503 x8"``: the most frequent reasons, then how many others."""
    if not failures:
        return "no reason counted"
    common = failures.most_common(most)
    text = ", ".join(f"{reason} x{count}" for reason, count in common)
    rest = len(failures) - len(common)
    return text + (f", {rest} other reasons" if rest > 0 else "")


class RewardGuard:
    """Counts failed epochs (more than ``max_share`` NaN rewards) and stops the run at the
    ``max_failed_epochs``-th in a row."""

    def __init__(self, reward_name: str, max_share: float, max_failed_epochs: int) -> None:
        self.reward_name = reward_name
        self.max_share = max_share
        self.max_failed_epochs = max_failed_epochs
        self.in_a_row = 0
        self.reasons: Counter = Counter()

    def check(self, epoch: int, failed: int, total: int, failures: Counter, last_good: str) -> bool:
        """True when epoch ``epoch``'s rewards may be trained on; False for a failed epoch below
        the limit; raises TrainingStopped at the limit. ``last_good`` names the last good
        checkpoint for the message."""
        share = failed / total if total else 1.0
        if share <= self.max_share:
            self.in_a_row, self.reasons = 0, Counter()
            return True
        self.in_a_row += 1
        self.reasons.update(failures)
        summary = (
            f"reward {self.reward_name!r} failed: {failed}/{total} samples unscored in epoch "
            f"{epoch} (train.max_failed_reward_share={self.max_share:g}; {self.in_a_row} failed "
            f"epoch(s) in a row, limit {self.max_failed_epochs}); reasons: "
            f"{describe_failures(self.reasons)}; last good checkpoint: {last_good}"
        )
        if self.in_a_row >= self.max_failed_epochs:
            raise TrainingStopped(summary)
        log.warning("%s; this epoch is not trained on nor checkpointed", summary)
        return False


class StepGuard:
    """Skips optimizer steps whose loss or gradient is not finite; stops at ``limit`` in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self._losses_finite = True

    def saw_loss(self, loss: torch.Tensor) -> None:
        """Record one micro-step's loss (before its backward)."""
        self._losses_finite &= bool(torch.isfinite(loss.detach()).all())

    def step_ok(
        self, accelerator: Any, grad_norm: torch.Tensor | float | None, last_good: str
    ) -> bool:
        """At an optimizer step: whether every process saw finite losses since the last step
        and a finite gradient norm (None: not known here, as under DeepSpeed). A False is
        counted; the ``limit``-th in a row raises TrainingStopped."""
        finite = self._losses_finite and (grad_norm is None or math.isfinite(float(grad_norm)))
        self._losses_finite = True
        flags = accelerator.gather(torch.tensor([float(finite)], device=accelerator.device))
        if bool(flags.min() > 0):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise TrainingStopped(
                f"non-finite loss or gradient in {self.in_a_row} optimizer steps in a row "
                f"(train.max_nonfinite_steps={self.limit}); those steps were skipped, nothing "
                f"non-finite was saved; last good checkpoint: {last_good}"
            )
        log.warning(
            "non-finite loss or gradient: optimizer step skipped (%d in a row, limit %d)",
            self.in_a_row,
            self.limit,
        )
        return False


def check_finite(tensors: Iterable[torch.Tensor], what: str, last_good: str) -> None:
    """Raise TrainingStopped when any of ``tensors`` holds a NaN or an infinity."""
    bad = sum(int((~torch.isfinite(t.detach())).sum()) for t in tensors)
    if bad:
        raise TrainingStopped(
            f"{what}: {bad} trained weights are not finite; not written; last good "
            f"checkpoint: {last_good}"
        )


def exit_with(message: str, reward: Any = None) -> NoReturn:
    """``sys.exit(message)`` (exit status 1). When a reward call is still running past its time
    limit, the interpreter would wait at exit for the judge's threads (a hung server: minutes),
    so the message is printed and the process ends at once instead."""
    if isinstance(reward, TimeLimitedReward) and reward.overdue:
        print(message, file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(1)
    sys.exit(message)
