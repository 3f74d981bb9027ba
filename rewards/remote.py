"""The client of the reward service (:mod:`rewards.serve_reward`): a reward scored by a server,
often one running in another virtual environment or on another machine.

    python -m rl.train ... reward=remote reward.url=http://127.0.0.1:8100

Images go as base64 PNG (lossless, the default) or JPEG (``image_format=jpeg``, at
``jpeg_quality``; Flow-GRPO sends its GenEval server PIL's default JPEG, quality 75), with the
prompts and each sample's metadata, ``batch_size`` samples per request. A request that gets a 5xx
answer is retried (``retries`` times, waiting ``backoff_s`` doubling each time); nothing else is
retried. A batch that still fails (a 4xx, a timeout after ``timeout_s``, a lost connection) makes
its samples NaN with the reason counted; it never becomes a 0. The constructor checks
``/health`` once, so a service that is not there fails at start-up with one line saying how to
start it. The API key is read from the environment variable ``api_key_env`` (never from a
config file that a run folder would keep) and sent as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import time
from collections import Counter
from typing import Any

import requests
import torch
from PIL import Image

from rewards.base import Reward, RewardOutput
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
        image_format: str = "png",
        jpeg_quality: int = 75,
        api_key_env: str | None = "REWARD_API_KEY",
        check_health: bool = True,
    ) -> None:
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"remote: image_format must be png or jpeg, got {image_format!r}")
        if retries < 0 or batch_size < 1 or timeout_s <= 0:
            raise ValueError("remote: need retries >= 0, batch_size >= 1 and timeout_s > 0")
        self.url = url.rstrip("/")
        self.batch_size = int(batch_size)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        key = os.environ.get(api_key_env) if api_key_env else None
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
        """(answer, None) or (None, why it failed), retrying 5xx answers only."""
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                reply = self.session.post(f"{self.url}/score", json=body, timeout=self.timeout_s)
            except requests.Timeout:
                return None, f"timeout after {self.timeout_s:g} s"
            except requests.RequestException as err:
                return None, f"connection failed ({type(err).__name__})"
            if reply.status_code < 500 or attempt == self.retries:
                break
            log.warning("%s: HTTP %d, retry %d in %.1f s", self.name, reply.status_code,
                        attempt + 1, wait)  # fmt: skip
            time.sleep(wait)
            wait *= 2
        if reply.status_code != 200:
            try:
                message = str(reply.json().get("error", ""))[:200]
            except ValueError:
                message = reply.text[:200]
            return None, f"HTTP {reply.status_code}: {message}"
        try:
            return reply.json(), None
        except ValueError:
            return None, "answer is not JSON"

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
