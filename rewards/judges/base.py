"""The judge interface: a vision-language model asked yes/no questions about images.

A judge answers a batch of :class:`JudgeItem` s with P("yes") for each, and writes free text for
rubric synthesis and generation benchmarks. Every item of a batch carries an image, a ``context``
(the text shared by all questions about that image, e.g. the generation prompt) and a ``question``
(one rubric). Backends that can, compute the image + context prefix once per image and score every
question against it.

An item that cannot be answered (a server that timed out, an answer without a yes/no token, a
statement the pixel judge does not understand) gets NaN and a short reason in
:attr:`JudgeResult.reasons`; the caller counts the reasons. Nothing is turned into 0.

One P(yes) rule for every backend (``yes_no_from``): the probability mass of the "yes" spellings
and of the "no" spellings is read either from the whole next-token distribution (``"full"``, only
a judge that has the logits can) or from its ``top_k`` most likely tokens (``"top_k"``, what an
OpenAI-compatible server or vLLM returns as ``top_logprobs``); ``scoring`` then gives
``yes / (yes + no)`` or the yes mass. Under ``top_k`` an answer with neither spelling among the
top tokens is NaN with reason :data:`NO_YES_NO_TOKEN` on every backend alike; under ``full`` it is
never NaN for that reason. A judge reports its rule and its model in :meth:`Judge.identity`, which
a rubric set records.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

YES_NO_FROM = ("full", "top_k")
DEFAULT_TOP_K = 20  # the servers' top_logprobs (vLLM's default cap of --max-logprobs)
NO_YES_NO_TOKEN = "no yes/no token"
# Config entries that say where or how a model was saved or loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
     "_attn_implementation_autoset", "attn_implementation", "use_cache"}
)  # fmt: skip


def check_yes_no_from(yes_no_from: str, top_k: int | None) -> int | None:
    """Validate a judge's P(yes) rule; returns the ``top_k`` it uses (None under ``full``)."""
    if yes_no_from not in YES_NO_FROM:
        raise ValueError(f"yes_no_from must be one of {YES_NO_FROM}, got {yes_no_from!r}")
    if yes_no_from == "full":
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"yes_no_from=top_k needs top_k >= 1, got {top_k!r}")
    return top_k


def config_fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a model's config (its ``config.json`` as transformers reads it), blind to
    where and in which dtype it was loaded: equal for the same model served locally or by vLLM."""

    def stable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stable(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(value, (list, tuple)):
            return [stable(v) for v in value]
        return value

    text = json.dumps(stable(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JudgeItem:
    """One yes/no question about one image (a PIL image, or an image tensor ``[3, H, W]`` for
    judges that accept tensors)."""

    image: Image.Image | torch.Tensor
    context: str
    question: str


@dataclass
class JudgeResult:
    """P(yes) per item (NaN = not answered) and, for each NaN, the reason."""

    probs: torch.Tensor
    reasons: list[str | None]

    @property
    def failures(self) -> Counter:
        return Counter(r for r in self.reasons if r is not None)


def judge_text(context: str, question: str) -> str:
    """The one text a judge reads after the image: the context and the question, each stripped,
    on two lines (only the question when there is no context).

    Every backend sends exactly this, as the single text part of one user turn that starts with
    the image, so a model scores the same tokens locally and behind an OpenAI-compatible server
    (chat templates join separate text parts with nothing between them).
    """
    context, question = context.strip(), question.strip()
    return f"{context}\n{question}" if context else question


def image_major(items: Sequence[JudgeItem]) -> tuple[dict[int, int], list[int]]:
    """Where each distinct image object first appears (``id(image)`` -> item index), and the
    item indices image-major: every question about an image together, images in first-seen
    order, so a server's prefix cache shares each image."""
    first_seen: dict[int, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(id(item.image), i)
    order = sorted(range(len(items)), key=lambda i: first_seen[id(items[i].image)])
    return first_seen, order


# Reasons for a NaN that say nothing about the item, only that the judge did not answer this time;
# asking again may succeed, so a cache must not keep them as the item's answer.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection error"
REQUEST_ERROR = "request error"


def retryable_status(status: int) -> bool:
    """Whether an HTTP error is worth asking again: 5xx but 501 (the server cannot do it), 408
    (request timeout) and 429 (too many requests). Any other 4xx is the request's own fault."""
    return status in (408, 429) or (status >= 500 and status != 501)


def is_transient(reason: str | None) -> bool:
    """Whether a NaN's ``reason`` is a transient failure: a timeout, a connection or transport
    error, or an HTTP answer the client retries (:func:`retryable_status`: a server that is
    busy or down), as opposed to an answer about the item (no yes/no token, a malformed or
    out-of-range answer, an unknown rule)."""
    if reason in (TIMEOUT, CONNECTION_ERROR, REQUEST_ERROR):
        return True
    status = reason.removeprefix("HTTP ") if reason and reason.startswith("HTTP ") else ""
    return len(status) == 3 and status.isdigit() and retryable_status(int(status))


class JudgeError(RuntimeError):
    """The judge cannot work at all (server down, model misconfigured): fail, don't NaN."""


class Judge(abc.ABC):
    """Base class of the judge backends: local VLM, OpenAI-compatible server, pixel rules."""

    name: str = "judge"
    accepts_tensors: bool = False  # True: items may carry uint8 / float image tensors
    # The P(yes) rule (module docstring): backends that read a server's top_logprobs set
    # "top_k" and their k; a judge that sees the whole distribution may read it all.
    yes_no_from: str = "full"
    top_k: int | None = None

    def model_identity(self) -> tuple[str, str | None]:
        """The name of the model behind the judge and its config fingerprint (None when the
        backend cannot see the config, e.g. a remote server)."""
        return self.name, None

    def identity(self) -> dict[str, Any]:
        """What a rubric set records about the judge its weights were learned with: the model
        (name + config fingerprint) and the P(yes) rule (``yes_no_from``, ``top_k``)."""
        model, fingerprint = self.model_identity()
        top_k = None if self.yes_no_from == "full" else self.top_k
        return {
            "model": model,
            "fingerprint": fingerprint,
            "yes_no_from": self.yes_no_from,
            "top_k": top_k,
        }

    @abc.abstractmethod
    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        """P("yes") for each item, in one batched call where the backend allows."""

    def generate(
        self,
        images: Sequence[Image.Image],
        text: str,
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> str:
        """Free-text answer to ``text`` about ``images`` (one conversation, images first), after
        the ``system`` message when given; temperature 0 decodes greedily, above 0 samples."""
        raise NotImplementedError(f"{type(self).__name__} does not generate free text")

    def generate_many(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> list[str]:
        """Free-text answers for several conversations; backends that batch override this.
        ``temperature`` and ``system`` reach :meth:`generate` only when set, so a judge that
        only decodes greedily may keep the three-argument ``generate``."""
        sampling = {"temperature": temperature, "system": system} if temperature or system else {}
        return [
            self.generate(images, text, max_new_tokens, **sampling) for images, text in requests
        ]

    def release(self) -> None:  # noqa: B027 - optional hook, default is a no-op
        """Free accelerator memory between phases (e.g. while the trainer samples)."""
