"""Load test of the judge server on loopback: valid clients, decompression bombs and stalled
connections all at once, against a real ``python -m rewards.judges.serve`` process.

    python -m bench.judge_server_load                                # 60 s, 200 / 10 / 20
    python -m bench.judge_server_load --duration 5 --clients 20 --bombs 2 --stalled 4

The server backs onto the pixel judge (exact answers to check against) with the limits given here
(defaults: the server's, except a 64 MiB admission budget and a 64 MiB cache, which keep the
memory bound small). For ``--duration`` seconds:

- ``--clients`` threads each ask yes/no questions about small random images, one request at a
  time, as fast as answered; a 503 (server full) waits its ``Retry-After`` and asks again. Every
  200 answer is checked against the local pixel judge.
- ``--bombs`` threads each send, again and again, a 17 KB PNG that declares a 12000 x 12000 image
  (144 M pixels, 16.8 GB at the peak when the unhardened server decoded it and judged it).
- ``--stalled`` threads each open a connection, send half a request's headers and wait until the
  server closes it, then open the next.

Prints one JSON line: whether the server is still up (``/health`` answers, process alive), valid
requests answered (in total, per second, and in the worst tenth of the run: they keep being
answered), wrong answers, busy refusals, bombs refused, stalled connections the server closed,
the server's peak RSS (``VmHWM``) and the bound it must stay under: its RSS once started plus
:meth:`rewards.http_limits.Limits.request_memory_bytes` for the limits in use plus ``--slack-mb``
(threads, the judge's own batch). ``ok`` is true when all of that holds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from rewards.http_limits import MIB, Limits
from rewards.judges.base import JudgeItem, judge_text
from rewards.judges.openai_server import image_data_url
from rewards.judges.pixel import PixelJudge

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ("The image is bright.", "The image is predominantly red.", "The top half is blue.")
_URL_LINE = re.compile(r"serving \S+ judge at (http://\S+/v1)")


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of ``width x height`` black 1-bit pixels: a few KB that decode to
    ``width * height`` bytes (and three times that in RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def chat_body(data_url: str, question: str, uuid: str | None = None) -> dict:
    """A yes/no chat request as the judge client sends it."""
    part: dict = {"type": "image_url", "image_url": {"url": data_url}}
    if uuid is not None:
        part["uuid"] = uuid
    text = {"type": "text", "text": judge_text("a prompt", question)}
    return {
        "model": "pixel",
        "messages": [{"role": "user", "content": [part, text]}],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 5,
    }


def p_yes_of(answer: dict) -> float:
    """P(yes) from the server's answer (its top tokens give Yes and No)."""
    top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    masses = {entry["token"]: float(np.exp(entry["logprob"])) for entry in top}
    return masses.get("Yes", 0.0) / max(masses.get("Yes", 0.0) + masses.get("No", 0.0), 1e-30)


class ServerProcess:
    """``python -m rewards.judges.serve --port 0 ARGS`` in its own process; ``url`` is read from
    its log. ``env`` adds environment variables (e.g. ``JUDGE_API_KEY``)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, wait_s: float = 60):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="judge-server-", suffix=".log")
        command = [sys.executable, "-m", "rewards.judges.serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + wait_s
        while (match := _URL_LINE.search(Path(self.log.name).read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"judge server did not start: {self.log_text()[-2000:]}")
            time.sleep(0.1)
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def log_text(self) -> str:
        return Path(self.log.name).read_text()

    def memory_kb(self) -> dict[str, int]:
        """The process's current (``VmRSS``) and peak (``VmHWM``) resident set, in kB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=200, help="concurrent valid clients")
    parser.add_argument("--bombs", type=int, default=10, help="concurrent bomb senders")
    parser.add_argument("--stalled", type=int, default=20, help="concurrent stalled connections")
    parser.add_argument("--images", type=int, default=16, help="distinct valid images")
    parser.add_argument("--max-active-mb", type=float, default=64.0)
    parser.add_argument("--cache-mb", type=float, default=64.0)
    parser.add_argument("--slack-mb", type=float, default=64.0, help="allowance over the bound")
    parser.add_argument("--server-arg", action="append", default=[], help="more server options")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    limits = Limits(
        max_active_bytes=int(args.max_active_mb * MIB), cache_bytes=int(args.cache_mb * MIB)
    )
    server_args = [
        "--judge",
        "pixel",
        "--max-active-mb",
        str(args.max_active_mb),
        "--cache-mb",
        str(args.cache_mb),
        *args.server_arg,
    ]
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    urls = [image_data_url(image) for image in images]
    pairs = [(i, q) for i in range(len(images)) for q in QUESTIONS]
    expected = PixelJudge().yes_prob([JudgeItem(images[i], "a prompt", q) for i, q in pairs])
    want = dict(zip(pairs, expected.probs.tolist()))
    bomb_url = "data:image/png;base64," + base64.b64encode(png_bomb(12000, 12000)).decode()
    bomb = json.dumps(chat_body(bomb_url, QUESTIONS[0])).encode()

    counts = {
        "answered": 0,
        "wrong": 0,
        "busy": 0,
        "client_errors": 0,
        "bombs_sent": 0,
        "bombs_refused": 0,
        "bombs_accepted": 0,
        "stalled_opened": 0,
        "stalled_closed": 0,
    }
    lock = threading.Lock()
    answer_times: list[float] = []
    stop = threading.Event()

    errors: dict[str, int] = {}

    def add(name: str, n: int = 1) -> None:
        with lock:
            counts[name] += n

    def error(kind: str) -> None:
        with lock:
            counts["client_errors"] += 1
            errors[kind] = errors.get(kind, 0) + 1

    with ServerProcess(server_args) as server:
        endpoint = f"{server.url}/chat/completions"
        base_rss_kb = server.memory_kb()["VmRSS"]

        def client(seed: int) -> None:
            session = requests.Session()
            k = seed
            while not stop.is_set():
                i, q = pairs[k % len(pairs)]
                k += 7
                try:
                    answer = session.post(endpoint, json=chat_body(urls[i], q), timeout=60)
                except requests.RequestException as err:
                    error(type(err).__name__)
                    session = requests.Session()
                    stop.wait(0.5)
                    continue
                if answer.status_code == 503:
                    add("busy")
                    stop.wait(float(answer.headers.get("Retry-After") or 1))
                elif answer.status_code != 200:
                    error(f"HTTP {answer.status_code}")
                elif abs(p_yes_of(answer.json()) - want[(i, q)]) > 1e-5:
                    add("wrong")
                else:
                    with lock:
                        counts["answered"] += 1
                        answer_times.append(time.monotonic())

        def bomber() -> None:
            session = requests.Session()
            while not stop.is_set():
                add("bombs_sent")
                try:
                    answer = session.post(
                        endpoint,
                        data=bomb,
                        headers={"Content-Type": "application/json"},
                        timeout=60,
                    )
                except requests.RequestException:
                    session = requests.Session()
                    stop.wait(0.5)
                    continue
                if answer.status_code == 413:
                    add("bombs_refused")
                elif answer.status_code == 200:
                    add("bombs_accepted")
                elif answer.status_code == 503:
                    stop.wait(float(answer.headers.get("Retry-After") or 1))

        def staller() -> None:
            while not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    stop.wait(0.5)
                    continue
                add("stalled_opened")
                sock.settimeout(0.5)
                while not stop.is_set():
                    try:
                        if sock.recv(4096) == b"":
                            add("stalled_closed")
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        add("stalled_closed")
                        break
                sock.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        threads += [threading.Thread(target=bomber) for _ in range(args.bombs)]
        threads += [threading.Thread(target=staller) for _ in range(args.stalled)]
        start = time.monotonic()
        for thread in threads:
            thread.daemon = True
            thread.start()
        stop.wait(max(0.0, start + args.duration - time.monotonic()))
        stop.set()
        elapsed = time.monotonic() - start
        for thread in threads:
            thread.join(timeout=65)
        alive = server.proc.poll() is None
        try:
            stats = server.stats()
        except (requests.RequestException, ValueError):
            stats = None
        memory = server.memory_kb() if alive else {"VmHWM": 0}

    bins = [0] * 10
    for t in answer_times:
        if t - start < args.duration:
            bins[min(9, int(10 * (t - start) / args.duration))] += 1
    peak_mb = memory["VmHWM"] / 1024
    bound_mb = base_rss_kb / 1024 + limits.request_memory_bytes() / MIB + args.slack_mb
    server_up = alive and stats is not None
    result = {
        "bench": "judge_server_load",
        "server_up": server_up,
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "bombs": args.bombs,
        "stalled": args.stalled,
        "valid_answered": counts["answered"],
        "valid_answered_per_s": round(counts["answered"] / elapsed, 1),
        "valid_answered_worst_tenth": min(bins),
        "wrong_answers": counts["wrong"],
        "busy_503": counts["busy"],
        "client_errors": counts["client_errors"],
        "client_error_kinds": errors,
        "bombs_sent": counts["bombs_sent"],
        "bombs_refused_413": counts["bombs_refused"],
        "bombs_accepted": counts["bombs_accepted"],
        "stalled_opened": counts["stalled_opened"],
        "stalled_closed_by_server": counts["stalled_closed"],
        "server_rss_start_mb": round(base_rss_kb / 1024, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_bound_mb": round(bound_mb, 1),
        "rss_bound": "RSS at start + Limits.request_memory_bytes() + slack",
        "server_stats": stats,
    }
    result["ok"] = bool(
        server_up
        and counts["answered"] > 0
        and min(bins) > 0
        and counts["wrong"] == 0
        and peak_mb <= bound_mb
        and counts["bombs_refused"] > 0
        and counts["bombs_accepted"] == 0
    )
    return result


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv))))


if __name__ == "__main__":
    main()
