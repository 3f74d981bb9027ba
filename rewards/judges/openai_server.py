"""A judge that asks an OpenAI-compatible chat-completions server (vLLM, SGLang, ...).

Each (image, context, question) item is one request: one user message holding the image as a
base64 data URL, then one text part, :func:`rewards.judges.base.judge_text` (context and question
on two lines), exactly what the local judge scores; ``max_tokens=1``,
``temperature=0``, ``logprobs=true`` and ``top_logprobs``. P(yes) is read from the first token's
``top_logprobs``: the probabilities of every spelling of "yes" (``"Yes"``, ``" yes"``, ``"YES"``,
... -- any token that is "yes" after stripping spaces and lower-casing) are summed, likewise for
"no"; ``scoring="normalized"`` gives ``p_yes / (p_yes + p_no)``, ``"raw"`` gives ``p_yes``. When
neither appears among the top tokens, the item is NaN (reason ``"no yes/no token"``).

A server's answer is untrusted: a body of the wrong shape (``choices`` or ``logprobs`` not what the
API says) is NaN with reason ``"malformed response"``, and values no distribution can have (a
logprob that is NaN, not a number or above 0, yes and no masses that add up to more than 1, hence
any P(yes) outside [0, 1]) are NaN with reason ``"out-of-range answer"``; neither is retried, and
nothing raises except a server that sends no logprobs at all (below).

Reliability:

* each distinct image of a call is encoded once (not once per question), the requests are sent
  image-major (all questions about one image together, so a server's prefix cache shares the
  image) and up to ``min(images x questions, concurrency)`` of them are in flight; with
  ``image_ids`` each image part also carries a ``uuid`` derived from its content, which vLLM uses
  to cache the image's processing across requests (``None``: on when ``/models`` says the server
  is vLLM or ``rewards.judges.serve``);
* requests run on a thread pool of ``concurrency`` workers, each with ``timeout_s`` (read) and
  ``connect_timeout_s``;
* 5xx answers (but 501), 408, 429, timeouts, connection and other transport errors are retried
  ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, or the answer's
  ``Retry-After`` when longer, capped at ``max_backoff_s``); other 4xx answers (the request's
  own fault: malformed, too large, unauthorized) and malformed bodies are not retried; the
  retried reasons are :func:`~rewards.judges.base.is_transient` (rubric learning does not cache
  them);
* once retries run out, ``on_error="nan"`` gives NaN with a counted reason (``"timeout"``,
  ``"HTTP 503"``, ``"connection error"``, ``"malformed response"``, ...) and ``"raise"`` raises
  :class:`JudgeError`; if EVERY item of a call failed to connect, the server is down and a
  :class:`JudgeError` is raised whatever ``on_error`` says;
* a server that answers without logprobs raises :class:`JudgeError` (the scores would be
  meaningless; vLLM needs ``--max-logprobs`` >= ``top_logprobs``);
* at start-up ``GET {base_url}/models`` (then ``GET /health`` at the server root) must answer
  within ``health_timeout_s``; the model name is taken from ``/models`` when not given.

The worst-case wall time of one ``yes_prob`` call is bounded by
``ceil(N / concurrency) * (max_retries + 1) * (connect_timeout_s + timeout_s + max_backoff_s)``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import torch
from PIL import Image

from rewards.judges.base import (
    CONNECTION_ERROR,
    NO_YES_NO_TOKEN,
    REQUEST_ERROR,
    TIMEOUT,
    Judge,
    JudgeError,
    JudgeItem,
    JudgeResult,
    image_major,
    judge_text,
    retryable_status,
)
from rewards.rubric_set import check_scoring

log = logging.getLogger(__name__)

ON_ERROR = ("nan", "raise")
MALFORMED = "malformed response"
OUT_OF_RANGE = "out-of-range answer"
LOGPROB_TOLERANCE = 1e-4  # rounding a server may leave above log(1) = 0
DEFAULT_CONCURRENCY = 64  # rewards.judges.serve batches up to this many questions by default
IMAGE_ID_SERVERS = ("vllm", "rewards")  # /models owners known to read an image part's uuid


def image_data_url(image: Image.Image, image_format: str = "PNG") -> str:
    """``data:image/<fmt>;base64,...`` of an RGB image (PNG is lossless, JPEG is smaller)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=image_format)
    mime = "jpeg" if image_format.upper() in ("JPG", "JPEG") else image_format.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def decode_data_url(url: str) -> Image.Image:
    """The image in a base64 data URL (inverse of :func:`image_data_url`)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image.convert("RGB")


def chat_content(images: Sequence[Image.Image], text: str, image_format: str = "PNG") -> list:
    """One user message's content parts: the images first, then the text as one part (never
    split: chat templates would join the parts with no separator)."""
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(im, image_format)}}
        for im in images
    ]
    return parts + [{"type": "text", "text": text}]


class BadAnswer(ValueError):
    """A logprobs answer that cannot be read (``reason``: MALFORMED or OUT_OF_RANGE)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _logprob(entry: dict[str, Any]) -> float:
    """An entry's logprob: a number in [-inf, 0] (up to rounding), else BadAnswer."""
    value = entry["logprob"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadAnswer(MALFORMED, f"logprob {value!r} of {entry.get('token')!r} is not a number")
    if math.isnan(value) or value > LOGPROB_TOLERANCE:
        raise BadAnswer(OUT_OF_RANGE, f"logprob {value!r} of {entry.get('token')!r}")
    return min(float(value), 0.0)


def yes_no_mass(top_logprobs: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Summed probability of the "yes" and of the "no" spellings among the top tokens.

    Raises BadAnswer for entries that are not ``{"token", "logprob"}`` objects, logprobs that are
    not numbers in [-inf, 0], or masses that sum to more than 1."""
    if not isinstance(top_logprobs, (list, tuple)):
        raise BadAnswer(MALFORMED, f"top_logprobs is a {type(top_logprobs).__name__}, not a list")
    p_yes = p_no = 0.0
    for entry in top_logprobs:
        if not isinstance(entry, dict) or "token" not in entry or "logprob" not in entry:
            raise BadAnswer(MALFORMED, f"top_logprobs entry {str(entry)[:80]!r}")
        word = str(entry["token"]).strip().lower()
        if word == "yes":
            p_yes += math.exp(_logprob(entry))
        elif word == "no":
            p_no += math.exp(_logprob(entry))
    if p_yes + p_no > 1.0 + LOGPROB_TOLERANCE:
        raise BadAnswer(OUT_OF_RANGE, f"P(yes) {p_yes:.4g} + P(no) {p_no:.4g} exceeds 1")
    return p_yes, p_no


def yes_prob_from_top(top_logprobs: Sequence[dict[str, Any]], scoring: str) -> float | None:
    """P(yes) in [0, 1] from the top tokens by ``scoring`` (``normalized``: yes / (yes + no);
    ``raw``: the yes mass); None when neither spelling is among them; BadAnswer when the
    answer is malformed or out of range (see :func:`yes_no_mass`)."""
    p_yes, p_no = yes_no_mass(top_logprobs)
    if p_yes + p_no == 0.0:
        return None
    p = p_yes / (p_yes + p_no) if scoring == "normalized" else p_yes
    return min(p, 1.0)  # within LOGPROB_TOLERANCE of 1 (checked above)


def retry_after_s(header: str | None) -> float:
    """The seconds of a ``Retry-After: <seconds>`` header (0 when absent or a date)."""
    try:
        return max(0.0, float(header)) if header else 0.0
    except ValueError:
        return 0.0


class _Failure(Exception):
    """One request that failed for good (after any retries); ``reason`` is what gets counted."""

    def __init__(self, reason: str, detail: str, connection: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.connection = connection


class OpenAIJudge(Judge):
    """Judge backed by an OpenAI-compatible chat-completions endpoint (see the module docstring).

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name; ``None`` takes the first one ``/models`` lists.
        scoring: ``"normalized"`` or ``"raw"``.
        top_logprobs: how many top tokens to ask for (vLLM's default cap is 20).
        concurrency: most requests in flight at once; a call keeps
            ``min(images x questions, concurrency)`` in flight.
        timeout_s / connect_timeout_s: per-request read and connect timeouts.
        max_retries / backoff_s / max_backoff_s: retry policy for 5xx, timeouts, connection errors.
        on_error: ``"nan"`` (NaN with a counted reason) or ``"raise"`` once retries run out.
        health_check / health_timeout_s: check the server at start-up, waiting up to this long.
        image_format: ``"PNG"`` or ``"JPEG"`` for the data URLs.
        image_ids: send a content-derived ``uuid`` with each image part (vLLM's image cache key);
            ``None``: on for servers whose ``/models`` entry is owned by vLLM or this project.
        system_prompt: optional system message put before every request.
        api_key: sent as ``Authorization: Bearer`` when given.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        scoring: str = "normalized",
        top_logprobs: int = 20,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        on_error: str = "nan",
        health_check: bool = True,
        health_timeout_s: float = 30.0,
        image_format: str = "PNG",
        image_ids: bool | None = None,
        system_prompt: str | None = None,
        api_key: str | None = None,
    ) -> None:
        check_scoring(scoring)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if concurrency < 1 or max_retries < 0 or top_logprobs < 1:
            raise ValueError("concurrency and top_logprobs must be >= 1, max_retries >= 0")
        self.base_url = base_url.rstrip("/")
        self.scoring = scoring
        self.top_logprobs = top_logprobs
        self.yes_no_from, self.top_k = "top_k", top_logprobs  # all a server returns
        self.timeout = (connect_timeout_s, timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_error = on_error
        self.image_format = image_format
        self.system_prompt = system_prompt
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="openai-judge")
        self.model = model
        if health_check:
            self.check_health(health_timeout_s)
        self.image_ids = image_ids
        if self.model is None or self.image_ids is None:
            self._read_models()

    def model_identity(self) -> tuple[str, str | None]:
        """The served model's name (its last path part); a server shows no config."""
        return Path(str(self.model)).name, None

    # ----------------------------------------------------------------- HTTP plumbing
    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def check_health(self, wait_s: float) -> None:
        """Wait until ``/models`` or ``/health`` answers 200, or raise :class:`JudgeError`."""
        parts = urlsplit(self.base_url)
        root = f"{parts.scheme}://{parts.netloc}"
        deadline = time.monotonic() + wait_s
        last = "no answer"
        while True:
            for url in (f"{self.base_url}/models", f"{root}/health"):
                try:
                    answer = self._session().get(url, timeout=self.timeout)
                    if answer.status_code == 200:
                        return
                    last = f"GET {url} -> HTTP {answer.status_code}"
                except requests.RequestException as err:
                    last = f"GET {url} -> {type(err).__name__}"
            if time.monotonic() >= deadline:
                raise JudgeError(
                    f"judge server at {self.base_url} is not healthy after {wait_s:.0f} s ({last})"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _read_models(self) -> None:
        """The model name (when not given) and whether to send image ids (when ``None``)."""
        try:
            answer = self._session().get(f"{self.base_url}/models", timeout=self.timeout)
            first = answer.json()["data"][0]
            name, owner = first["id"], first.get("owned_by")
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as err:
            if self.model is not None:  # only the image-id check failed: send none
                self.image_ids = bool(self.image_ids)
                return
            raise JudgeError(
                f"no model given and {self.base_url}/models does not list one ({err}); "
                "set judge.model"
            ) from err
        if self.model is None:
            self.model = name
        if self.image_ids is None:
            self.image_ids = owner in IMAGE_ID_SERVERS

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a chat completion with retries; returns the parsed JSON or raises _Failure."""
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            wait_s = 0.0
            try:
                answer = self._session().post(url, json=body, timeout=self.timeout)
            except requests.Timeout as err:
                failure = _Failure(TIMEOUT, f"{url}: {err}")
            except requests.ConnectionError as err:
                failure = _Failure(CONNECTION_ERROR, f"{url}: {err}", connection=True)
            except requests.RequestException as err:
                failure = _Failure(REQUEST_ERROR, f"{url}: {type(err).__name__}: {err}")
            else:
                if answer.status_code == 200:
                    try:
                        return answer.json()
                    except ValueError as err:
                        raise _Failure(
                            MALFORMED, f"body is not JSON: {answer.text[:200]!r}"
                        ) from err
                failure = _Failure(f"HTTP {answer.status_code}", answer.text[:300])
                if not retryable_status(answer.status_code):
                    raise failure
                wait_s = retry_after_s(answer.headers.get("Retry-After"))
            if attempt < self.max_retries:
                backoff = max(self.backoff_s * 2**attempt, wait_s)
                time.sleep(min(self.max_backoff_s, backoff))
        raise failure

    def _messages(
        self, content: list[dict[str, Any]], system: str | None = None
    ) -> list[dict[str, Any]]:
        """The chat: ``system`` (else the judge's ``system_prompt``) if any, then the user turn."""
        system = system or self.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": content}]

    # ----------------------------------------------------------------- yes/no scoring
    def _image_part(self, image: Image.Image) -> dict[str, Any]:
        """The image's content part, encoded once; with ``image_ids`` it carries a ``uuid``."""
        url = image_data_url(image, self.image_format)
        part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
        if self.image_ids:
            part["uuid"] = hashlib.blake2b(url.encode("ascii"), digest_size=16).hexdigest()
        return part

    def _ask(self, item: JudgeItem, image_part: dict[str, Any]) -> float:
        content = [image_part, *chat_content([], judge_text(item.context, item.question))]
        body = {
            "model": self.model,
            "messages": self._messages(content),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        data = self._post(body)
        try:
            choice = data["choices"][0]
            logprobs = choice.get("logprobs")
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Failure(MALFORMED, f"no choices in {str(data)[:200]!r}") from err
        if not logprobs or (isinstance(logprobs, dict) and not logprobs.get("content")):
            raise JudgeError(
                f"judge server {self.base_url} answered without logprobs; P(yes) needs a server "
                "that returns logprobs/top_logprobs (vLLM: --max-logprobs >= top_logprobs)"
            )
        try:
            first = logprobs["content"][0]
            p = yes_prob_from_top(first["top_logprobs"], self.scoring)
        except BadAnswer as err:
            raise _Failure(err.reason, str(err)) from None
        except (KeyError, IndexError, TypeError) as err:
            detail = f"unreadable logprobs ({type(err).__name__}: {err}): {str(logprobs)[:120]!r}"
            raise _Failure(MALFORMED, detail) from None
        if p is None:
            raise _Failure(NO_YES_NO_TOKEN, f"top tokens: {str(first)[:200]}")
        return p

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        first_seen, order = image_major(items)
        distinct = [items[i].image for i in first_seen.values()]
        parts = dict(zip(first_seen, self._pool.map(self._image_part, distinct)))
        submitted = {
            i: self._pool.submit(self._ask, items[i], parts[id(items[i].image)]) for i in order
        }
        futures = [submitted[i] for i in range(len(items))]
        probs, reasons, failures = [], [], []
        for future in futures:
            try:
                probs.append(future.result())
                reasons.append(None)
            except _Failure as failure:
                probs.append(float("nan"))
                reasons.append(failure.reason)
                failures.append(failure)
        if failures:
            self._report(failures, len(items))
        return JudgeResult(torch.tensor(probs, dtype=torch.float32), reasons)

    def _report(self, failures: list[_Failure], total: int) -> None:
        first = failures[0]
        if all(f.connection for f in failures) and len(failures) == total:
            raise JudgeError(f"judge server {self.base_url} is down: {first.detail}")
        if self.on_error == "raise":
            raise JudgeError(
                f"{len(failures)}/{total} judge requests failed ({first.reason}: {first.detail})"
            )
        log.warning(
            "%d/%d judge requests failed, e.g. %s: %s",
            len(failures),
            total,
            first.reason,
            first.detail,
        )

    # ----------------------------------------------------------------- free text
    def generate(
        self,
        images: Sequence[Image.Image],
        text: str,
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> str:
        content = chat_content(images, text, image_format=self.image_format)
        body = {
            "model": self.model,
            "messages": self._messages(content, system),
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        try:
            data = self._post(body)
            return str(data["choices"][0]["message"]["content"])
        except _Failure as failure:
            raise JudgeError(f"generation failed: {failure.reason} ({failure.detail})") from None
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeError(f"generation answer has no message content ({err})") from err

    def generate_many(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> list[str]:
        futures = [
            self._pool.submit(
                self.generate, images, text, max_new_tokens, temperature=temperature, system=system
            )
            for images, text in requests
        ]
        return [future.result() for future in futures]

    def release(self) -> None:
        """Nothing to free locally: the model lives in the server process."""

    def close(self) -> None:
        """Stop the worker threads (the judge cannot be used afterwards)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
