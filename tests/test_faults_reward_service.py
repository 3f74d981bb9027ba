"""Faults against the reward service (``python -m rewards.serve_reward``) as a real process on
127.0.0.1, serving ``reward=jpeg_compressibility`` (no model) with an API key and small limits:
a decompression bomb, a body over the limit, too many images, a wrong or missing key, malformed
requests (and the client that does not retry them), stalled and trickling connections, a
non-loopback host without a key. Then, in a thread: a request whose client left before its turn is
never scored. docs/reliability.md ("Reward service") lists each with its before and after."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image

from bench.judge_server_load import png_bomb
from rewards.http_limits import Limits
from rewards.remote import RemoteReward
from rewards.serve_reward import RewardServer
from tests.test_faults_server import _raw
from tests.test_reward_service import Flaky, reward_service

ROOT = Path(__file__).resolve().parents[1]
KEY = "s3cret-reward-key"
LIMITS = [
    "limits.max_body_mb=0.1",
    "limits.max_active_mb=1",
    "limits.max_images=2",
    "limits.max_image_pixels=1000000",
    "limits.read_timeout_s=0.5",
    "limits.request_deadline_s=2",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("serve")
    overrides = ["reward=jpeg_compressibility", *LIMITS]
    with reward_service(overrides, run_dir, {"REWARD_API_KEY": KEY}) as (url, process):
        service = requests.Session()
        service.headers["Authorization"] = f"Bearer {KEY}"
        service.url, service.pid = url, process.pid
        service.port = int(url.rsplit(":", 1)[1])
        yield service
        service.close()


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _stats(service) -> dict:
    return requests.get(f"{service.url}/health", timeout=10).json()


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def _score(service, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return service.post(f"{service.url}/score", data=data, timeout=30, **kwargs)


def test_a_valid_request_is_scored(service):
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    answer = _score(service, {"images": [_b64_png(image)], "prompts": ["a"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["reward"] == "jpeg_compressibility"
    assert answer.json()["scores"][0] < 0  # -size/500


def test_a_decompression_bomb_is_refused_from_its_header(service):
    bomb = png_bomb(12000, 12000)  # 17 KB on the wire, 144 M pixels
    assert len(bomb) < 20_000
    before, peak_before = _stats(service), _peak_rss_kb(service.pid)
    body = {"images": [base64.b64encode(bomb).decode()], "prompts": ["a"]}
    start = time.monotonic()
    answer = _score(service, body)
    assert time.monotonic() - start < 10
    assert answer.status_code == 413, answer.text
    assert "image 0: image of 12000x12000 = 144000000 pixels" in answer.json()["error"]["message"]
    after = _stats(service)
    assert after["images_scored"] == before["images_scored"]  # nothing reached the reward
    assert after["refused"]["413"] == before["refused"].get("413", 0) + 1
    # Decoding it would take 144 MB in mode "1" alone (432 MB in RGB); the peak grows far less.
    assert _peak_rss_kb(service.pid) - peak_before < 50_000


def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    head = (
        "POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 1000000000\r\n\r\n"
    ).encode()
    start = time.monotonic()
    reply = _raw(service, head)  # the 1 GB body is never sent: the answer comes without it
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"body of 1000000000 bytes, the limit is 104857" in reply
    assert b"Connection: close" in reply  # and the server closed the connection (_raw returned)
    assert time.monotonic() - start < 5
    reply = _raw(service, head.replace(b"Content-Length: 1000000000\r\n", b""))
    assert reply.startswith(b"HTTP/1.1 411"), reply[:200]


def test_too_many_images_are_refused_before_any_is_opened(service):
    images = [_b64_png(Image.new("RGB", (8, 8), (i, 0, 0))) for i in range(3)]
    before = _stats(service)
    answer = _score(service, {"images": images, "prompts": ["a"] * 3})
    assert answer.status_code == 413
    assert answer.json()["error"]["message"] == "3 images in one request, the limit is 2"
    assert _stats(service)["images_scored"] == before["images_scored"]


def test_a_wrong_or_missing_key_is_401_and_the_client_does_not_retry(service, monkeypatch):
    body = json.dumps({"images": [_b64_png(Image.new("RGB", (8, 8)))], "prompts": ["a"]})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        answer = requests.post(f"{service.url}/score", data=body, headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200  # open to probes
    monkeypatch.setenv("REWARD_API_KEY", "wrong")
    before = _stats(service)["refused"]["401"]
    start = time.monotonic()
    out = RemoteReward(service.url, retries=3, backoff_s=5.0)([Image.new("RGB", (8, 8))], ["a"])
    assert time.monotonic() - start < 5  # no 5 s backoff: not retried
    assert torch.isnan(out.scores).all()
    assert out.failures == {
        "remote: HTTP 401: missing or wrong API key (Authorization: Bearer <key>)": 1
    }
    assert _stats(service)["refused"]["401"] == before + 1  # one request, no retry
    monkeypatch.setenv("REWARD_API_KEY", KEY)
    out = RemoteReward(service.url)([Image.new("RGB", (8, 8))], ["a"])
    assert torch.isfinite(out.scores).all()


def test_malformed_requests_get_a_4xx_and_the_client_does_not_retry_them(service, monkeypatch):
    small = _b64_png(Image.new("RGB", (8, 8)))
    truncated = base64.b64decode(small)[:40]  # a PNG header, no pixel data
    cases = [
        (b"not json", 400, "body is not JSON"),
        (b"[" * 100_000, 400, "body is not JSON"),  # nested too deeply to parse
        ([small], 400, "the body must be a JSON object"),
        ({"images": small, "prompts": ["a"]}, 400, "must be lists"),
        ({"images": [small], "prompts": ["a", "b"]}, 400, "1 images, 2 prompts, 2 metadata"),
        ({"images": [small], "prompts": [1]}, 400, "prompts must be strings"),
        ({"images": [small], "prompts": ["a"], "metadata": "x"}, 400, "'metadata' must be"),
        ({"images": ["@@@"], "prompts": ["a"]}, 400, "image 0: image is not valid base64"),
        ({"images": [7], "prompts": ["a"]}, 400, "image 0: an image must be a base64 string"),
        ({"images": [base64.b64encode(b"GIF89a....").decode()], "prompts": ["a"]}, 400,
         "image 0: not a PNG/JPEG image"),
        ({"images": [small, base64.b64encode(truncated).decode()], "prompts": ["a", "b"]}, 400,
         "image 1: not a PNG/JPEG image"),
        ({"images": [_b64_png(Image.new("RGB", (1001, 1000)))], "prompts": ["a"]}, 413,
         "image 0: image of 1001x1000"),
    ]  # fmt: skip
    for body, status, message in cases:
        answer = _score(service, body)
        assert answer.status_code == status and message in answer.json()["error"]["message"], (
            message,
            answer.text[:300],
        )
    assert _stats(service)["status"] == "ok"  # still up
    monkeypatch.setenv("REWARD_API_KEY", KEY)
    before = _stats(service)["refused"]
    client = RemoteReward(service.url, retries=3, backoff_s=5.0)
    out = client([Image.new("RGB", (1001, 1000))], ["a"])  # over the pixel limit: 413
    assert out.failures == {
        "remote: HTTP 413: image 0: image of 1001x1000 = 1001000 pixels, the limit is 1000000": 1
    }
    out = client([Image.new("RGB", (8, 8))], ["a"], [["not", "a", "row"]])  # 400
    assert torch.isnan(out.scores).all()
    assert out.failures == {
        "remote: HTTP 400: prompts must be strings and metadata rows objects": 1
    }
    after = _stats(service)["refused"]
    assert after["413"] == before["413"] + 1 and after["400"] == before["400"] + 1  # no retries


def test_stalled_and_trickling_connections_are_closed(service):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")  # half its headers, then nothing
        assert sock.recv(65536) == b""  # closed by the server
    assert time.monotonic() - start < 3  # the read timeout is 0.5 s
    before = _stats(service)["expired_connections"]
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\n")
        closed = False
        while not closed and time.monotonic() - start < 8:
            time.sleep(0.2)  # one byte per 0.2 s: each read is within the 0.5 s timeout
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            try:
                sock.setblocking(False)
                closed = sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            finally:
                sock.setblocking(True)
    assert closed and time.monotonic() - start < 5  # the request deadline is 2 s
    assert _stats(service)["expired_connections"] == before + 1


def test_a_non_loopback_host_without_a_key_is_refused_with_one_line(tmp_path):
    command = [sys.executable, "-m", "rewards.serve_reward", "reward=jpeg_compressibility",
               "host=0.0.0.0", "port=0", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "REWARD_API_KEY"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: refusing to serve on 0.0.0.0 without an API key: anyone who can reach it could "
        "use it; set $REWARD_API_KEY, or allow_no_auth=true on a network you trust"
    ]


def test_a_request_whose_client_left_before_its_turn_is_never_scored():
    """Scoring is one request at a time: a client that times out while waiting for its turn has
    its request cancelled, not scored after it left."""
    with RewardServer(Flaky(sleep_s=1.0)) as server:
        first = threading.Thread(
            target=RemoteReward(server.url), args=([Image.new("RGB", (4, 4))], ["a"])
        )
        first.start()
        time.sleep(0.3)  # the first request is being scored
        out = RemoteReward(server.url, timeout_s=0.3)([Image.new("RGB", (4, 4))], ["b"])
        assert out.failures == {"remote: timeout after 0.3 s": 1}
        first.join()
        time.sleep(0.3)
        assert server.reward.calls == 1 and server.stats()["cancelled_requests"] == 1


def test_a_full_service_answers_503_and_the_client_waits_its_retry_after():
    """Beyond ``max_active`` requests the service answers 503 + Retry-After before reading the
    body; the client waits that long (not its 0.01 s backoff) and then gets its scores."""
    limits = Limits(max_active=1, retry_after_s=1.0, image_formats=("PNG", "JPEG"))
    with RewardServer(Flaky(sleep_s=1.0), limits=limits) as server:
        first = threading.Thread(
            target=RemoteReward(server.url), args=([Image.new("RGB", (4, 4))], ["a"])
        )
        first.start()
        time.sleep(0.3)  # the first request is in
        start = time.monotonic()
        out = RemoteReward(server.url, retries=2, backoff_s=0.01)(
            [Image.new("RGB", (4, 4), (9, 0, 0))], ["b"]
        )
        assert time.monotonic() - start >= 1.0
        first.join()
        assert out.scores.tolist() == [9.0] and not out.failures
        assert server.stats()["refused_busy"] == 1 and server.reward.calls == 2


def test_a_refused_connection_is_retried_so_a_restarting_service_is_waited_for():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here until the timer starts the service
    servers: list[RewardServer] = []
    timer = threading.Timer(0.3, lambda: servers.append(RewardServer(Flaky(), port=port).start()))
    timer.start()
    try:
        client = RemoteReward(f"http://127.0.0.1:{port}", retries=3, backoff_s=0.4,
                              check_health=False)  # fmt: skip
        out = client([Image.new("RGB", (4, 4), (7, 0, 0))], ["a"])
        assert out.scores.tolist() == [7.0] and not out.failures
    finally:
        timer.join()
        for server in servers:
            server.stop()
