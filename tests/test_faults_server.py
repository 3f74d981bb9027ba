"""Faults against the judge server: a real ``python -m rewards.judges.serve`` process on
127.0.0.1 (started once for the module, with small limits), raw sockets where a client misbehaves.

Two cases need to reach into the server and run it in a thread instead (still real HTTP on
127.0.0.1): the cancelled work of a client that left (the judge must block on cue) and the client's
retry of an injected 429. Time bounds are generous "ends instead of hanging" bounds, not speed.
"""

import base64
import json
import socket
import threading
import time

import pytest
import requests
import torch
from PIL import Image

from bench.judge_server_load import ServerProcess, chat_body, p_yes_of, png_bomb
from rewards.http_limits import Limits, Rejected, check_bearer
from rewards.judges.base import JudgeItem, JudgeResult
from rewards.judges.openai_server import OpenAIJudge, image_data_url, retryable_status
from rewards.judges.pixel import PixelJudge
from rewards.judges.serve import Faults, JudgeServer, main

KEY = "s3cret-test-key"
RED_Q = "The image is predominantly red."
LIMITS = [
    "--max-images=2",
    "--max-image-pixels=1000000",
    "--max-body-mb=1",
    "--max-active-mb=4",
    "--max-active=4",
    "--max-connections=24",
    "--read-timeout-s=1",
    "--request-deadline-s=3",
]


def _url(color: tuple[int, int, int], size: int = 16) -> str:
    return image_data_url(Image.new("RGB", (size, size), color))


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--judge", "pixel", *LIMITS], env={"JUDGE_API_KEY": KEY}) as proc:
        proc.endpoint = f"{proc.url}/chat/completions"
        proc.auth = {"Authorization": f"Bearer {KEY}"}
        yield proc


def _post(server, body, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", server.auth)
    return requests.post(server.endpoint, json=body, headers=headers, timeout=30, **kwargs)


def _raw(server, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; everything the server sends back before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def _wait_until(condition, wait_s: float = 10.0) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _closed_within(sock: socket.socket, wait_s: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``wait_s``)."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < wait_s:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def test_the_api_key_is_required_and_the_client_sends_it(server):
    body = chat_body(_url((255, 0, 0)), RED_Q)
    assert _post(server, body, headers={}).status_code == 401
    wrong = _post(server, body, headers={"Authorization": "Bearer s3cret-test-kex"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{server.url}/models", timeout=10).status_code == 401
    assert requests.get(f"http://127.0.0.1:{server.port}/health", timeout=10).status_code == 200
    items = [
        JudgeItem(Image.new("RGB", (16, 16), color), "p", RED_Q)
        for color in ((255, 0, 0), (0, 0, 255))
    ]
    got = OpenAIJudge(server.url, api_key=KEY, timeout_s=10).yes_prob(items)
    torch.testing.assert_close(got.probs, PixelJudge().yes_prob(items).probs, atol=1e-6, rtol=0)
    no_key = OpenAIJudge(server.url, model="pixel", max_retries=3, backoff_s=0.01)
    before = server.stats()["chat_requests"]
    refused = no_key.yes_prob(items[:1])
    assert refused.failures == {"HTTP 401": 1}  # a 4xx: not retried
    assert server.stats()["chat_requests"] == before  # refused before the judge saw it


def test_bearer_check_refuses_near_misses():
    check_bearer(f"Bearer {KEY}", KEY)
    check_bearer(None, None)  # no key configured: open
    for header in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}"):
        with pytest.raises(Rejected) as refused:
            check_bearer(header, KEY)
        assert refused.value.status == 401


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 1000000000\r\n\r\n"
    )
    answer = _raw(server, head.encode())  # no body sent: the answer cannot wait for it
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert b"limit is 1048576" in answer
    chunked = _raw(
        server,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {KEY}\r\n\r\n".encode(),
    )
    assert chunked.startswith(b"HTTP/1.1 411")


def test_a_decompression_bomb_is_refused_from_its_header(server):
    bomb = png_bomb(12000, 12000)  # 17 KB on the wire, 144 M pixels
    assert len(bomb) < 20_000
    before, peak_before = server.stats(), server.memory_kb()["VmHWM"]
    start = time.monotonic()
    answer = _post(
        server, chat_body("data:image/png;base64," + base64.b64encode(bomb).decode(), RED_Q)
    )
    assert time.monotonic() - start < 20
    assert answer.status_code == 413 and "144000000 pixels" in answer.json()["error"]["message"]
    after = server.stats()
    assert after["images_decoded"] == before["images_decoded"]
    assert after["images_cached"] == before["images_cached"]
    # Decoding it would have taken 144 MB in mode "1" alone; the peak grows by far less.
    assert server.memory_kb()["VmHWM"] - peak_before < 50_000


def test_too_many_images_are_refused_before_any_is_decoded(server):
    parts = [{"type": "image_url", "image_url": {"url": _url((i, 10, 10))}} for i in range(3)]
    body = {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]}
    before = server.stats()
    answer = _post(server, body)
    assert answer.status_code == 413 and "3 images" in answer.text
    assert server.stats()["images_decoded"] == before["images_decoded"]


def test_nothing_from_a_rejected_request_is_cached(server):
    fresh = _url((1, 2, 3))
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot an image").decode()
    content = [
        {"type": "image_url", "image_url": {"url": fresh}},
        {"type": "image_url", "image_url": {"url": broken}},
        {"type": "text", "text": "Describe."},
    ]
    before = server.stats()
    answer = _post(server, {"messages": [{"role": "user", "content": content}]})
    assert answer.status_code == 400 and "not a PNG/JPEG/WEBP image" in answer.text
    after = server.stats()
    assert after["images_decoded"] == before["images_decoded"] + 1  # the good one was decoded
    assert after["images_cached"] == before["images_cached"]  # ... and not kept
    two = chat_body(fresh, RED_Q)
    two["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": fresh}})
    assert _post(server, two).status_code == 400  # a yes/no question about two images
    assert server.stats()["images_decoded"] == after["images_decoded"]  # refused before decoding


def test_the_uuid_is_a_hint_checked_against_the_content(server):
    red, blue = _url((255, 0, 0)), _url((0, 0, 255))
    before = server.stats()["uuid_mismatches"]
    p_red = p_yes_of(_post(server, chat_body(red, RED_Q, uuid="one-uuid")).json())
    p_blue = p_yes_of(_post(server, chat_body(blue, RED_Q, uuid="one-uuid")).json())
    assert p_red > 0.99 and p_blue < 0.01
    assert server.stats()["uuid_mismatches"] == before + 2


MALFORMED = {
    "a JSON list": [],
    "no messages": {"model": "m"},
    "messages not a list": {"messages": "hi"},
    "part not a dict": {"messages": [{"role": "user", "content": [1]}]},
    "text not a string": {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
    "image_url not a dict": {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]
    },
    "not a data URL": chat_body("http://example.com/a.png", RED_Q),
    "bad base64": chat_body("data:image/png;base64,@@@@", RED_Q),
    "not an image": chat_body(
        "data:image/png;base64," + base64.b64encode(b"hello").decode(), RED_Q
    ),
    "max_tokens a string": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"},
    "max_tokens huge": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9},
    "top_logprobs negative": {**chat_body(_url((9, 9, 9)), RED_Q), "top_logprobs": -1},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_get_a_4xx_and_the_server_stays_up(server, name):
    answer = _post(server, MALFORMED[name])
    assert 400 <= answer.status_code < 500 and not retryable_status(answer.status_code)
    assert answer.json()["error"]["message"]
    assert _post(server, chat_body(_url((255, 0, 0)), RED_Q)).status_code == 200


def test_bad_json_and_deep_nesting_are_400(server):
    for raw in (b"{not json", b"[" * 100_000 + b"]" * 100_000):
        answer = requests.post(
            server.endpoint,
            data=raw,
            headers={**server.auth, "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 400


def test_the_client_does_not_retry_a_refused_request(server):
    big = Image.new("RGB", (1200, 1000), (255, 0, 0))  # 1.2 M pixels, over the 1 M limit
    judge = OpenAIJudge(server.url, api_key=KEY, max_retries=3, backoff_s=0.01)
    before = server.stats()["chat_requests"]
    result = judge.yes_prob([JudgeItem(big, "p", RED_Q)])
    assert result.failures == {"HTTP 413": 1} and torch.isnan(result.probs).all()
    assert server.stats()["chat_requests"] == before + 1


def test_stalled_and_trickling_connections_are_closed(server):
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # then nothing
    after = _closed_within(stalled, 15)
    assert after is not None  # the 1 s read timeout closed it
    stalled.close()
    # One byte every 0.5 s never trips the read timeout; the 3 s request deadline ends it.
    trickle = socket.create_connection(("127.0.0.1", server.port))
    trickle.settimeout(0.5)
    start, closed = time.monotonic(), False
    while time.monotonic() - start < 20 and not closed:
        try:
            trickle.sendall(b"X")
            closed = trickle.recv(1) == b""
        except TimeoutError:
            continue
        except OSError:
            closed = True
    trickle.close()
    assert closed
    assert server.stats()["expired_connections"] >= 1


def test_over_the_connection_cap_a_503_with_retry_after_then_service_resumes():
    # In a thread with its own small cap, so that the count of open connections is exact.
    limits = Limits(max_connections=4, read_timeout_s=2.0)
    with JudgeServer(PixelJudge(), limits=limits) as server:
        port = server.httpd.server_address[1]
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
        _wait_until(lambda: server.httpd.open_connections == 4)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        for sock in socks:
            assert _closed_within(sock, 15) is not None  # each ended by its read timeout
            sock.close()
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["refused_connections"] == 1


def test_a_full_server_answers_503_with_retry_after_and_the_client_waits_for_it(server):
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
    )
    holders = []
    for _ in range(4):  # admitted, then never send their body: they hold the 4 places
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(head.encode())
        holders.append(sock)
    deadline = time.monotonic() + 10
    while server.stats()["active_requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = _post(server, chat_body(_url((255, 0, 0)), RED_Q))
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    # The client honours Retry-After (1 s) over its own 0.01 s backoff; the places free up
    # when the read timeout (1 s) drops the holders, so a retry gets through.
    judge = OpenAIJudge(server.url, api_key=KEY, max_retries=3, backoff_s=0.01, max_backoff_s=2)
    item = JudgeItem(Image.new("RGB", (8, 8), (255, 0, 0)), "p", RED_Q)
    assert judge.yes_prob([item]).failures == {}
    for sock in holders:
        sock.close()


def test_the_host_is_loopback_by_default_and_exposure_needs_a_key(monkeypatch, capsys):
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        main(["--host", "0.0.0.0"])
    assert "refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--max-images", "0"])
    assert "max_images must be > 0" in capsys.readouterr().err
    with JudgeServer(PixelJudge()) as default:
        assert default.httpd.server_address[0] == "127.0.0.1"
    with pytest.raises(ValueError, match="max_active_bytes"):
        Limits(max_body_bytes=10, max_active_bytes=5)


class _BlockingJudge(PixelJudge):
    """A pixel judge whose calls wait for ``release`` and record the questions they got."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release, self.calls = threading.Event(), threading.Event(), []

    def yes_prob(self, items) -> JudgeResult:
        self.calls.append([item.question for item in items])
        self.started.set()
        self.release.wait(30)
        return super().yes_prob(items)


def test_a_question_whose_client_left_is_cancelled_before_its_batch():
    judge = _BlockingJudge()
    with JudgeServer(judge, batch_wait_s=0.0) as server:
        endpoint = f"{server.url}/chat/completions"
        first = threading.Thread(
            target=requests.post,
            args=(endpoint,),
            kwargs={"json": chat_body(_url((255, 0, 0)), RED_Q), "timeout": 30},
        )
        first.start()
        assert judge.started.wait(10)  # the worker is busy with the first question
        body = json.dumps(chat_body(_url((0, 0, 255)), "The image is bright.")).encode()
        port = server.httpd.server_address[1]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            _wait_until(lambda: server.worker.tasks.qsize() == 1)  # queued behind the batch
        queued = server.worker.tasks.queue[0]
        _wait_until(queued.future.cancelled)  # its client has gone
        judge.release.set()
        first.join(10)
        _wait_until(lambda: server.worker.cancelled == 1)
    assert judge.calls == [[RED_Q]]  # the abandoned question never reached the judge


def test_429_and_503_are_retried_after_their_retry_after():
    assert [retryable_status(s) for s in (400, 401, 404, 413, 501)] == [False] * 5
    assert [retryable_status(s) for s in (408, 429, 500, 502, 503)] == [True] * 5
    item = JudgeItem(Image.new("RGB", (8, 8), (255, 0, 0)), "p", RED_Q)
    faults = Faults(fail_first=2, fail_status=429, retry_after_s=0)
    with JudgeServer(PixelJudge(), faults=faults) as server:
        judge = OpenAIJudge(server.url, max_retries=3, backoff_s=0.01)
        assert judge.yes_prob([item]).failures == {}
        assert server.chat_requests == 3


@pytest.mark.load
def test_the_load_script_holds_its_bound_on_a_short_run():
    from bench.judge_server_load import parse_args, run

    args = ["--duration=3", "--clients=20", "--bombs=2", "--stalled=4"]
    result = run(parse_args([*args, "--server-arg=--read-timeout-s=1"]))
    assert result["ok"], result
    assert result["bombs_accepted"] == 0 and result["bombs_refused_413"] > 0
    assert result["stalled_closed_by_server"] > 0 and result["wrong_answers"] == 0
    assert result["peak_rss_mb"] <= result["rss_bound_mb"]
