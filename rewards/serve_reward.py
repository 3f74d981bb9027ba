"""Serve any reward of the project over HTTP, so that a scorer whose dependencies clash with the
trainer's (PaddleOCR, mmdet for GenEval) runs in its own environment::

    python -m rewards.serve_reward reward=aesthetic reward.path=/models/clip-vit-large-patch14 \\
        reward.mlp_path=/models/sac+logos+ava1-l14-linearMSE.pth reward.device=cuda port=8100
    REWARD_API_KEY=secret python -m rewards.serve_reward reward=ocr reward.model_dir=... port=8101

The trainer's side is just another reward: ``reward=remote reward.url=http://127.0.0.1:8100``
(:class:`rewards.remote.RemoteReward`). It listens on 127.0.0.1 unless ``host`` says otherwise, and
refuses a non-loopback host without an API key unless ``allow_no_auth=true``.

Protocol (JSON both ways, never pickle):

- ``GET /health`` -> ``{"status": "ok", "reward": <name>, <counters>}`` (open without the key).
- ``POST /score`` with ``{"images": [<base64 PNG or JPEG>, ...], "prompts": [...],
  "metadata": [{...}, ...] (optional)}`` -> ``{"scores": [...], "details": {name: [...]},
  "failures": {reason: count}}``; a NaN (an unscorable sample) is ``null``. A refusal is
  ``{"error": {"message": ..., "type": ...}}`` with its 4xx/5xx status.

Every request is untrusted; the checks are those of the judge server, from
:mod:`rewards.http_limits` and in its order: connection cap, socket read timeout and whole-request
deadline; the API key (``Authorization: Bearer <key>`` when the variable named by ``api_key_env``
is set, else 401); the body size from ``Content-Length`` before a byte is read (411/413);
admission (503 + ``Retry-After`` beyond ``max_active`` requests); the JSON shape (400); the number
of images (``max_images``, 413) before any is opened; each image's format (PNG or JPEG, 400) and
pixel count (``max_image_pixels``, 413) from its header, before any image of the request is
decoded. Prompts the reward can never score (``Reward.check_prompts``) are a 400 naming the prompt.

One request is scored at a time (rewards hold one model and are not thread-safe): accepted requests
wait for one worker thread; a request whose client has left before its turn is never scored. Its
images are decoded there, one request's at a time, by the reward itself (a truncated image becomes
that sample's NaN with its reason).

A failure inside the reward (an exception: out of GPU memory, a crashed subprocess, a bug on some
input) is a 500 ``reward_error`` naming the exception: it is the server's fault, not the request's,
and may pass (memory freed by then), so the client retries it (``retryable_status``) a bounded
number of times and then makes the batch NaN with that reason; the trainer's failed-reward limit
stops a run whose reward keeps failing. It is never a 200 with made-up scores.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from rewards.base import Reward, RewardOutput
from rewards.http_limits import (
    MIB,
    ClientGone,
    HTTPService,
    LimitedHandler,
    LimitedHTTPServer,
    Limits,
    Rejected,
    check_exposure,
    limits_from_config,
    open_base64_image,
    resolve_api_key,
    wait_for_client,
)

log = logging.getLogger(__name__)

# The service's defaults (conf/serve_reward.yaml repeats them): a batch of 64 images (the client's
# batch_size) of up to 4096 x 4096, PNG or JPEG only, and few requests in at once since they are
# scored one by one anyway.
SERVICE_LIMITS = Limits(
    max_body_bytes=256 * MIB,
    max_images=64,
    image_formats=("PNG", "JPEG"),
    max_active=4,
    max_active_bytes=512 * MIB,
)


def parse_request(body: Any, limits: Limits) -> tuple[list[Image.Image], list[str], list[dict]]:
    """Images (headers read and checked, pixels not decoded), prompts and metadata of a
    ``/score`` body, or :class:`Rejected` (400 for its shape, 413 for its size)."""
    if not isinstance(body, dict):
        raise Rejected(400, "the body must be a JSON object")
    images, prompts = body.get("images"), body.get("prompts")
    if not isinstance(images, list) or not isinstance(prompts, list):
        raise Rejected(400, "'images' and 'prompts' must be lists")
    limits.check_image_count(len(images))
    metadata = body.get("metadata") or [{} for _ in prompts]
    if not isinstance(metadata, list):
        raise Rejected(400, "'metadata' must be a list")
    if not len(images) == len(prompts) == len(metadata):
        raise Rejected(
            400, f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata rows"
        )
    if not all(isinstance(p, str) for p in prompts) or not all(
        isinstance(m, dict) for m in metadata
    ):
        raise Rejected(400, "prompts must be strings and metadata rows objects")
    opened = []
    for index, data in enumerate(images):
        try:
            opened.append(open_base64_image(data, limits))
        except Rejected as err:
            raise Rejected(err.status, f"image {index}: {err.message}") from None
    return opened, prompts, metadata


def _json_floats(values: Any) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def answer(out: RewardOutput, name: str) -> dict[str, Any]:
    """The JSON answer of a reward output (NaN as null)."""
    return {
        "reward": name,
        "scores": _json_floats(out.scores),
        "details": {key: _json_floats(value) for key, value in out.details.items()},
        "failures": dict(out.failures),
    }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


class RewardServer(HTTPService):
    """HTTP front of one :class:`Reward` (see the module docstring). ``start()`` serves from a
    background thread; ``serve_forever()`` blocks. ``api_key=None`` accepts any request;
    ``limits`` default to :data:`SERVICE_LIMITS`."""

    def __init__(
        self,
        reward: Reward,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.reward = reward
        self.limits = limits or SERVICE_LIMITS
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="reward")  # one call at a time
        self.scored_requests = 0
        self.images_scored = 0
        self.cancelled_requests = 0
        self.refused: Counter = Counter()  # HTTP status -> requests refused with it
        self._count_lock = threading.Lock()
        self.httpd = LimitedHTTPServer(
            (host, port), self._handler_class(), self.limits, api_key or None
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stats(self) -> dict[str, Any]:
        """Counters for ``/health``: scored and refused requests, connections."""
        return {
            "scored_requests": self.scored_requests,
            "images_scored": self.images_scored,
            "cancelled_requests": self.cancelled_requests,
            "refused": {str(status): n for status, n in sorted(self.refused.items())},
            "refused_busy": self.httpd.gate.refused,
            "refused_connections": self.httpd.refused_connections,
            "expired_connections": self.httpd.expired_connections,
        }

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)

    def score(self, body: Any, client_gone: Callable[[], bool] | None = None) -> tuple[int, Any]:
        """(HTTP status, JSON answer) of one parsed ``/score`` body, or :class:`Rejected`.
        ``client_gone()``: the client has left (its request is then not scored)."""
        images, prompts, metadata = parse_request(body, self.limits)
        try:
            self.reward.check_prompts(prompts, metadata)
        except ValueError as err:  # a prompt or metadata row the reward can never score
            raise Rejected(400, str(err)) from None
        future = self.worker.submit(self._score, images, prompts, metadata)
        try:
            return wait_for_client(future, client_gone)
        except ClientGone:
            with self._count_lock:
                self.cancelled_requests += future.cancelled()
            raise

    def _score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict]
    ) -> tuple[int, Any]:
        """The worker's part: one reward call; an exception in it is a 500 (see the docstring)."""
        try:
            out = self.reward(images, prompts, metadata)
        except Exception as err:  # noqa: BLE001 - a reward failure is a 500, not a crash
            log.exception("reward failed")
            return 500, _error(f"{type(err).__name__}: {err}", "reward_error")
        with self._count_lock:
            self.scored_requests += 1
            self.images_scored += len(images)
        return 200, answer(out, self.reward.name)

    def _count_refusal(self, status: int) -> None:
        with self._count_lock:
            self.refused[status] += 1

    def _handler_class(self) -> type[LimitedHandler]:
        server = self

        class Handler(LimitedHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/health":
                    return self.send_json(404, _error(f"no route {self.path[:100]}", "not_found"))
                stats = server.stats()
                return self.send_json(200, {"status": "ok", "reward": server.reward.name, **stats})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/score":
                    self.close_connection = True  # the body is not read
                    return self.send_json(404, _error(f"no route {self.path[:100]}", "not_found"))
                self.serve_json(server.score)

            def send_rejection(self, rejected: Rejected) -> None:
                server._count_refusal(rejected.status)
                super().send_rejection(rejected)

        return Handler


@hydra.main(config_path="../conf", config_name="serve_reward", version_base=None)
def main(cfg: DictConfig) -> None:
    """``python -m rewards.serve_reward reward=NAME ...`` (conf/serve_reward.yaml)."""
    from rewards import build_reward

    api_key = resolve_api_key(None, cfg.api_key_env) if cfg.api_key_env else None
    try:
        limits = limits_from_config(OmegaConf.to_container(cfg.limits))
        check_exposure(
            cfg.host,
            api_key,
            cfg.allow_no_auth,
            f"set ${cfg.api_key_env}, or allow_no_auth=true on a network you trust",
        )
    except ValueError as err:
        sys.exit(f"error: {err}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    reward = build_reward(cfg.reward)
    server = RewardServer(reward, cfg.host, cfg.port, api_key, limits)
    key_note = f"API key from ${cfg.api_key_env}" if api_key else "no API key"
    print(f"serving reward {reward.name} on {server.url} ({key_note})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
