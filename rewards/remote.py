"""The client of the reward service (:mod:`rewards.serve_reward`): a reward scored by a server,
often one running in another virtual environment or on another machine.

    python -m rl.train ... reward=remote reward.url=http://127.0.0.1:8100

Images go as base64 PNG (lossless, the default) or JPEG (``image_format=jpeg``, at
``jpeg_quality``; Flow-GRPO sends its GenEval server PIL's default JPEG, quality 75), with the
prompts and each sample's metadata, ``batch_size`` samples per request.

Retries follow the project's one rule, the judge client's
(:func:`rewards.judges.base.retryable_status`): a 5xx answer but 501, a 408 or a 429, and a lost
connection, are asked again ``retries`` times, waiting ``backoff_s * 2**attempt`` or the answer's
``Retry-After`` when longer, at most ``max_backoff_s``. Any other 4xx (a wrong key, a body or image
over the service's limits, a prompt the reward cannot score) is the request's own fault and is not
retried; nor is a timeout (the service is still scoring that batch: a resend would queue behind
it). A batch that still fails makes its samples NaN with the reason counted; it never becomes a 0.
The constructor checks ``/health`` once, so a service that is not there fails at start-up with one
line saying how to start it. The API key is read from the environment variable ``api_key_env``
(never from a config file that a run folder would keep) and sent as ``Authorization: Bearer
<key>``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections import Counter
from typing import Any

import requests
import torch
from PIL import Image

from rewards.base import Reward, RewardOutput
from rewards.http_limits import resolve_api_key
from rewards.judges.base import retryable_status
from rewards.judges.openai_server import retry_after_s
from rewards.scalar.common import batches

log = logging.getLogger(__name__)


class RemoteReward(Reward):
    """A reward served by ``python -m rewards.serve_reward`` at ``url``."""

    def __init__(
        self,
        url: str,
        batch_size: int = 64,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        image_format: str = "png",
        jpeg_quality: int = 75,
        api_key_env: str | None = "REWARD_API_KEY",
        check_health: bool = True,
    ) -> None:
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"remote: image_format must be png or jpeg, got {image_format!r}")
        if retries < 0 or batch_size < 1 or timeout_s <= 0 or not 0 <= backoff_s <= max_backoff_s:
            raise ValueError(
                "remote: need retries >= 0, batch_size >= 1, timeout_s > 0 and "
                "0 <= backoff_s <= max_backoff_s"
            )
        self.url = url.rstrip("/")
        self.batch_size = int(batch_size)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        key = resolve_api_key(None, api_key_env) if api_key_env else None
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.name = "remote"
        if check_health:
            self.name = f"remote:{self.health()['reward']}"

    def health(self) -> dict[str, Any]:
        """The service's ``/health`` answer; an unreachable service raises one clear line."""
        try:
            reply = self.session.get(f"{self.url}/health", timeout=min(self.timeout_s, 10.0))
            reply.raise_for_status()
            return reply.json()
        except (requests.RequestException, ValueError) as err:
            raise ConnectionError(
                f"reward service at {self.url} is unreachable ({type(err).__name__}): start it "
                "with `python -m rewards.serve_reward reward=<name> port=<port>` or fix reward.url"
            ) from None

    def encode(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        if self.image_format == "png":
            image.save(buffer, format="PNG")
        else:
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(answer, None) or (None, why it failed), retried as the module docstring says."""
        for attempt in range(self.retries + 1):
            wait_s = 0.0
            try:
                reply = self.session.post(f"{self.url}/score", json=body, timeout=self.timeout_s)
            except requests.Timeout:
                return None, f"timeout after {self.timeout_s:g} s"
            except requests.ConnectionError as err:
                problem = f"connection failed ({type(err).__name__})"
            except requests.RequestException as err:
                return None, f"request failed ({type(err).__name__})"
            else:
                if reply.status_code == 200:
                    try:
                        return reply.json(), None
                    except ValueError:
                        return None, "answer is not JSON"
                problem = f"HTTP {reply.status_code}: {_error_message(reply)}"
                if not retryable_status(reply.status_code):
                    return None, problem
                wait_s = retry_after_s(reply.headers.get("Retry-After"))
            if attempt < self.retries:
                wait_s = min(self.max_backoff_s, max(self.backoff_s * 2**attempt, wait_s))
                log.warning("%s: %s, retry %d in %.1f s", self.name, problem, attempt + 1, wait_s)
                time.sleep(wait_s)
        return None, problem

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        count = len(prompts)
        scores = torch.full((count,), float("nan"), dtype=torch.float64)
        details: dict[str, torch.Tensor] = {}
        failures: Counter = Counter()
        for part in batches(count, self.batch_size):
            body = {
                "images": [self.encode(image) for image in images[part]],
                "prompts": prompts[part],
                "metadata": metadata[part],
            }
            answer, problem = self._post(body)
            if answer is not None and len(answer.get("scores", [])) != len(body["prompts"]):
                answer, problem = None, "answer has the wrong number of scores"
            if answer is None:
                failures[f"remote: {problem}"] += len(body["prompts"])
                continue
            scores[part] = _tensor(answer["scores"])
            for key, values in (answer.get("details") or {}).items():
                if len(values) == len(body["prompts"]):
                    column = details.setdefault(key, torch.full((count,), float("nan")))
                    column[part] = _tensor(values)
            failures.update({str(k): int(v) for k, v in (answer.get("failures") or {}).items()})
        return RewardOutput(scores, {k: v.double() for k, v in details.items()}, failures)


def _tensor(values: list[float | None]) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


def _error_message(reply: requests.Response) -> str:
    """The one-line message of an error answer (the service's ``{"error": {"message": ...}}``)."""
    try:
        error = reply.json().get("error")
    except (ValueError, AttributeError):
        return reply.text[:200]
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:200]
