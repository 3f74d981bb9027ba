"""Serve any reward of the project over HTTP, so that a scorer whose dependencies clash with the
trainer's (PaddleOCR, mmdet for GenEval) runs in its own environment::

    python -m rewards.serve_reward reward=aesthetic reward.path=/models/clip-vit-large-patch14 \\
        reward.mlp_path=/models/sac+logos+ava1-l14-linearMSE.pth reward.device=cuda port=8100
    REWARD_API_KEY=secret python -m rewards.serve_reward reward=ocr reward.model_dir=... port=8101

The trainer's side is just another reward: ``reward=remote reward.url=http://127.0.0.1:8100``
(:class:`rewards.remote.RemoteReward`). It listens on 127.0.0.1 unless ``host`` says otherwise.

Protocol (JSON both ways, never pickle):

- ``GET /health`` -> ``{"status": "ok", "reward": <name>}``.
- ``POST /score`` with ``{"images": [<base64 PNG or JPEG>, ...], "prompts": [...],
  "metadata": [{...}, ...] (optional)}`` -> ``{"scores": [...], "details": {name: [...]},
  "failures": {reason: count}}``; a NaN (an unscorable sample) is ``null``.

Every request is untrusted. Before anything is decoded: the body size (``max_body_bytes``,
else 413), the API key (``Authorization: Bearer <key>`` when the environment variable named by
``api_key_env`` is set, else 401), the JSON shape (400), the number of images (``max_images``,
413), each image's format from its first bytes (PNG or JPEG only, 400) and its size from its
header (``max_image_pixels``, 413). Prompts the reward can never score (``Reward.check_prompts``)
are a 400 naming the prompt; a failure inside the reward is a 500 (the client retries those).
One request is scored at a time: rewards hold one model and are not thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hydra
from omegaconf import DictConfig
from PIL import Image

from rewards.base import Reward, RewardOutput

log = logging.getLogger(__name__)

FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry; checked before any image is decoded."""

    max_body_bytes: int = 256 * 1024 * 1024
    max_images: int = 512
    max_image_pixels: int = 4096 * 4096


class RequestError(Exception):
    """A request refused with an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: str, index: int, limits: ServiceLimits) -> Image.Image:
    """One base64 PNG/JPEG, its format and pixel count checked before its pixels decode."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as err:
        raise RequestError(400, f"image {index} is not valid base64 ({err})") from err
    kind = next((name for magic, name in FORMATS.items() if raw.startswith(magic)), None)
    if kind is None:
        raise RequestError(400, f"image {index} is neither PNG nor JPEG")
    try:
        image = Image.open(io.BytesIO(raw), formats=[kind])
    except OSError as err:
        raise RequestError(400, f"image {index}: unreadable {kind} header ({err})") from err
    if image.width * image.height > limits.max_image_pixels:
        raise RequestError(
            413, f"image {index} has {image.width}x{image.height} pixels, over the "
            f"limit of {limits.max_image_pixels}",
        )  # fmt: skip
    return image  # decoded lazily by the reward; a truncated file becomes a NaN there


def parse_request(body: bytes, limits: ServiceLimits) -> tuple[list, list[str], list[dict]]:
    """Images, prompts and metadata of a ``/score`` body, or a :class:`RequestError`."""
    try:
        request = json.loads(body)
    except ValueError as err:
        raise RequestError(400, f"body is not JSON ({err})") from err
    if not isinstance(request, dict):
        raise RequestError(400, "body must be a JSON object")
    images, prompts = request.get("images"), request.get("prompts")
    metadata = request.get("metadata") or [{} for _ in prompts or []]
    if not isinstance(images, list) or not isinstance(prompts, list):
        raise RequestError(400, "'images' and 'prompts' must be lists")
    if len(images) > limits.max_images:
        raise RequestError(413, f"{len(images)} images, over the limit of {limits.max_images}")
    if not (len(images) == len(prompts) == len(metadata)):
        raise RequestError(
            400, f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata rows"
        )
    if not all(isinstance(p, str) for p in prompts) or not all(
        isinstance(m, dict) for m in metadata
    ):
        raise RequestError(400, "prompts must be strings and metadata rows objects")
    if not all(isinstance(d, str) for d in images):
        raise RequestError(400, "images must be base64 strings")
    return [decode_image(d, i, limits) for i, d in enumerate(images)], prompts, metadata


def _json_floats(values) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def answer(out: RewardOutput, name: str) -> dict[str, Any]:
    """The JSON answer of a reward output (NaN as null)."""
    return {
        "reward": name,
        "scores": _json_floats(out.scores),
        "details": {key: _json_floats(value) for key, value in out.details.items()},
        "failures": dict(out.failures),
    }


class RewardServer:
    """HTTP front of one :class:`Reward` (see the module docstring). ``start()`` serves from a
    background thread; ``serve_forever()`` blocks. ``api_key=None`` accepts any request."""

    def __init__(
        self,
        reward: Reward,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.reward = reward
        self.api_key = api_key or None
        self.limits = limits or ServiceLimits()
        self.gate = threading.Lock()  # one reward call at a time
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RewardServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorised(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        expected = f"Bearer {self.api_key}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def score(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) of one ``/score`` body."""
        try:
            images, prompts, metadata = parse_request(body, self.limits)
            self.reward.check_prompts(prompts, metadata)
        except RequestError as err:
            return err.status, {"error": str(err)}
        except ValueError as err:  # a prompt or metadata row the reward can never score
            return 400, {"error": str(err)}
        try:
            with self.gate:
                out = self.reward(images, prompts, metadata)
        except Exception as err:  # noqa: BLE001 - a reward failure is a 500, not a crash
            log.exception("reward failed")
            return 500, {"error": f"{type(err).__name__}: {err}"}
        return 200, answer(out, self.reward.name)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s - %s", self.address_string(), format % args)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("client went away before the answer")

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/health":
                    return self._send(404, {"error": f"no route {self.path}"})
                return self._send(200, {"status": "ok", "reward": server.reward.name})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/score":
                    self.close_connection = True
                    return self._send(404, {"error": f"no route {self.path}"})
                try:
                    length = int(self.headers.get("Content-Length") or -1)
                except ValueError:
                    length = -1
                if length < 0:
                    self.close_connection = True
                    return self._send(411, {"error": "a Content-Length is required"})
                if length > server.limits.max_body_bytes:
                    self.close_connection = True  # the body is never read
                    return self._send(
                        413, {"error": f"body of {length} bytes, over the limit of "
                              f"{server.limits.max_body_bytes}"},
                    )  # fmt: skip
                if not server.authorised(self.headers.get("Authorization")):
                    self.close_connection = True
                    return self._send(401, {"error": "missing or wrong API key"})
                status, payload = server.score(self.rfile.read(length))
                return self._send(status, payload)

        return Handler


@hydra.main(config_path="../conf", config_name="serve_reward", version_base=None)
def main(cfg: DictConfig) -> None:
    """``python -m rewards.serve_reward reward=NAME ...`` (conf/serve_reward.yaml)."""
    from rewards import build_reward

    reward = build_reward(cfg.reward)
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    server = RewardServer(reward, cfg.host, cfg.port, api_key, ServiceLimits(**cfg.limits))
    key_note = f"API key from ${cfg.api_key_env}" if api_key else "no API key"
    print(f"serving reward {reward.name} on {server.url} ({key_note})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
