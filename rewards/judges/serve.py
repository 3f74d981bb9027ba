"""Serve any :class:`Judge` behind a small OpenAI-compatible chat-completions HTTP API.

Run it to put a local judge (e.g. a transformers VLM on a second GPU) behind the same HTTP schema
that vLLM and SGLang speak, so the trainer can use :class:`rewards.judges.openai_server.OpenAIJudge`
either way::

    python -m rewards.judges.serve --judge pixel --port 8000
    python -m rewards.judges.serve --judge qwen3_vl --set model_path=/models/Qwen3-VL-8B --port 8000

``--judge`` names a ``conf/judge/<name>.yaml`` entry (or a YAML file path); ``--set key=value``
overrides its fields. The tests start it in a thread on a free port, with injected faults.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``. A chat request
with ``logprobs: true`` is a yes/no question: its image is the first ``image_url`` part, its text
the text parts joined by newlines (the judge clients send one, ``judge_text(context, question)``),
split at its last newline into context and question (system messages are ignored); the answer
is ONE token whose ``top_logprobs`` give ``"Yes"`` the log of the backing judge's P(yes) and
``"No"`` the log of 1 - P(yes) (scaled by ``1 - other_mass``, the rest going to a ``"Maybe"``
token when ``other_mass > 0``). An item the judge cannot answer (NaN) is answered with
the token ``"Unknown"`` alone, which clients read as "no yes/no token". Any other request is free
text from ``judge.generate`` (HTTP 501 for judges that do not generate).

Requests from all connections go through ONE worker thread that batches waiting yes/no questions
(up to ``max_batch``, waiting at most ``batch_wait_s`` for more) into one ``yes_prob`` call, so a
batched local judge keeps its batching and is never called from two threads at once. ``max_batch``
defaults to the number of requests :class:`~rewards.judges.openai_server.OpenAIJudge` keeps in
flight, so one client call of up to that many questions becomes one batch. Each distinct image is
decoded once: by the part's ``uuid`` when the client sends one, else by a hash of its data URL;
the questions about one image then share one image object, which the local judge's shared-prefix
scoring groups by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from rewards.judges.base import Judge, JudgeItem
from rewards.judges.openai_server import DEFAULT_CONCURRENCY, decode_data_url

log = logging.getLogger(__name__)
CONF_JUDGE = Path(__file__).resolve().parents[2] / "conf" / "judge"
MAX_CACHED_IMAGES = 256  # decoded images kept for the questions still to come about them


@dataclass
class Faults:
    """Faults to inject, by the 1-based number of the chat-completions request (for tests).

    Requests ``1..fail_first`` get HTTP ``fail_status``; requests ``1..slow_first`` are answered
    after ``slow_s`` seconds; requests ``1..malformed_first`` get a 200 whose body is not JSON;
    ``drop_logprobs`` answers every request without logprobs; ``unhealthy`` makes ``/health`` and
    ``/v1/models`` answer 503.
    """

    fail_first: int = 0
    fail_status: int = 503
    slow_first: int = 0
    slow_s: float = 0.0
    malformed_first: int = 0
    drop_logprobs: bool = False
    unhealthy: bool = False


@dataclass
class _Task:
    kind: str  # "yes" or "generate"
    payload: Any
    future: Future = field(default_factory=Future)


class _Worker:
    """The one thread that calls the judge: batches yes/no items, runs generations one by one."""

    def __init__(self, judge: Judge, max_batch: int, batch_wait_s: float) -> None:
        self.judge = judge
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.tasks: queue.Queue[_Task | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._run, name="judge-worker", daemon=True)
        self.thread.start()

    def submit(self, kind: str, payload: Any) -> Future:
        task = _Task(kind, payload)
        self.tasks.put(task)
        return task.future

    def stop(self) -> None:
        self.tasks.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self.tasks.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    task = self.tasks.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if task is None:
                    self.tasks.put(None)
                    break
                batch.append(task)
            self._answer_yes([t for t in batch if t.kind == "yes"])
            for task in batch:
                if task.kind == "generate":
                    self._generate(task)

    def _answer_yes(self, tasks: list[_Task]) -> None:
        if not tasks:
            return
        self.batch_sizes.append(len(tasks))
        try:
            result = self.judge.yes_prob([t.payload for t in tasks])
        except Exception as err:  # noqa: BLE001 - handed to every waiting request
            for task in tasks:
                task.future.set_exception(err)
            return
        for task, prob in zip(tasks, result.probs.tolist()):
            task.future.set_result(prob)

    def _generate(self, task: _Task) -> None:
        try:
            task.future.set_result(self.judge.generate(*task.payload))
        except Exception as err:  # noqa: BLE001 - handed to the waiting request
            task.future.set_exception(err)


def _top_logprobs(p_yes: float, other_mass: float) -> list[dict[str, Any]]:
    """The answer's top tokens, most likely first (see the module docstring)."""
    if math.isnan(p_yes):
        return [{"token": "Unknown", "logprob": 0.0}]
    masses = {"Yes": p_yes * (1 - other_mass), "No": (1 - p_yes) * (1 - other_mass)}
    masses["Maybe"] = other_mass
    entries = [
        {"token": token, "logprob": math.log(mass), "bytes": list(token.encode())}
        for token, mass in masses.items()
        if mass > 0
    ]
    return sorted(entries, key=lambda e: -e["logprob"])


def _parse_messages(
    messages: Any, decode: Callable[[dict], Image.Image]
) -> tuple[list[Image.Image], list[str]]:
    """Images (each ``image_url`` part through ``decode``) and texts of the LAST user message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("no user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        return [], [content]
    if not isinstance(content, list):
        raise ValueError("user content must be a string or a list of parts")
    images, texts = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            images.append(decode(part))
        elif kind == "text":
            texts.append(str(part["text"]))
        else:
            raise ValueError(f"unsupported content part {kind!r}")
    return images, texts


class JudgeServer:
    """An OpenAI-compatible HTTP front for ``judge`` (see the module docstring).

    ``start()`` serves from a background thread (tests); ``serve_forever()`` blocks (CLI).
    ``url`` is the API root to give :class:`OpenAIJudge` as ``base_url``.
    """

    def __init__(
        self,
        judge: Judge,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str = "judge",
        faults: Faults | None = None,
        max_batch: int = DEFAULT_CONCURRENCY,
        batch_wait_s: float = 0.005,
        other_mass: float = 0.0,
    ) -> None:
        if not 0.0 <= other_mass < 1.0:
            raise ValueError(f"other_mass must be in [0, 1), got {other_mass}")
        self.model_name = model_name
        self.faults = faults or Faults()
        self.other_mass = other_mass
        self.worker = _Worker(judge, max_batch, batch_wait_s)
        self.chat_requests = 0
        self.images_decoded = 0
        self._count_lock = threading.Lock()
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._images_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()
        self.worker.stop()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_request_number(self) -> int:
        with self._count_lock:
            self.chat_requests += 1
            return self.chat_requests

    def chat_completion(self, body: dict[str, Any]) -> tuple[int, Any]:
        """(HTTP status, JSON-able answer or raw ``bytes``) for one chat-completions request."""
        number = self._next_request_number()
        faults = self.faults
        if number <= faults.fail_first:
            return faults.fail_status, _error(f"injected failure {number}", "server_error")
        if number <= faults.slow_first:
            time.sleep(faults.slow_s)
        if number <= faults.malformed_first:
            return 200, b'{"choices": [ this is not json'
        try:
            images, texts = _parse_messages(body.get("messages"), self._decode_image)
        except (ValueError, KeyError, TypeError) as err:
            return 400, _error(f"bad request: {err}", "invalid_request_error")
        if body.get("logprobs"):
            if len(images) != 1 or not texts:
                return 400, _error("a yes/no request needs one image and a question", "invalid")
            context, _, question = "\n".join(texts).rpartition("\n")
            item = JudgeItem(images[0], context, question)
            p_yes = self.worker.submit("yes", item).result()
            top = _top_logprobs(p_yes, self.other_mass)
            wanted = max(1, int(body.get("top_logprobs") or 1))
            token = {**top[0], "top_logprobs": top[:wanted]}
            logprobs = None if faults.drop_logprobs else {"content": [token]}
            return 200, self._completion(top[0]["token"], logprobs)
        max_tokens = int(body.get("max_tokens") or 512)
        try:
            text = self.worker.submit("generate", (images, "\n".join(texts), max_tokens)).result()
        except NotImplementedError as err:
            return 501, _error(str(err), "not_implemented")
        return 200, self._completion(text, None)

    def _decode_image(self, part: dict) -> Image.Image:
        """The image of an ``image_url`` part, decoded once per distinct image (under a lock, so
        concurrent questions about one image wait for one decode); recent images are kept."""
        url = part["image_url"]["url"]
        key = str(part.get("uuid") or hashlib.blake2b(url.encode(), digest_size=16).hexdigest())
        with self._images_lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
            image = self._images[key] = decode_data_url(url)
            self.images_decoded += 1
            while len(self._images) > MAX_CACHED_IMAGES:
                self._images.popitem(last=False)
            return image

    def _completion(self, content: str, logprobs: dict | None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.chat_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s - %s", self.address_string(), format % args)

            def _send(self, status: int, answer: Any) -> None:
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("client went away before the answer")

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") not in ("/health", "/v1/models"):
                    return self._send(404, _error(f"no route {self.path}", "not_found"))
                if server.faults.unhealthy:
                    return self._send(503, _error("unhealthy", "server_error"))
                if self.path.startswith("/health"):
                    return self._send(200, {"status": "ok"})
                model = {"id": server.model_name, "object": "model", "owned_by": "rewards"}
                return self._send(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, _error(f"no route {self.path}", "not_found"))
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._send(400, _error("body is not JSON", "invalid_request_error"))
                try:
                    status, answer = server.chat_completion(body)
                except Exception as err:  # noqa: BLE001 - a judge failure is a 500, not a crash
                    log.exception("judge failed")
                    status, answer = 500, _error(f"{type(err).__name__}: {err}", "server_error")
                return self._send(status, answer)

        return Handler


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


def load_judge(name_or_path: str, overrides: list[str]) -> Judge:
    """A judge from ``conf/judge/<name>.yaml`` (or a YAML path) with ``key=value`` overrides."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_JUDGE / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF_JUDGE.glob("*.yaml"))
        raise FileNotFoundError(f"judge config not found: {path} (conf/judge has {known})")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    judge = instantiate(cfg, _convert_="all")
    if not isinstance(judge, Judge):
        raise TypeError(f"{path} built a {type(judge).__name__}, not a Judge")
    return judge


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="pixel", help="conf/judge entry name or YAML path")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the judge config's fields",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="name listed by /v1/models")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    judge = load_judge(args.judge, args.set)
    server = JudgeServer(
        judge,
        host=args.host,
        port=args.port,
        model_name=args.model_name or Path(args.judge).stem,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s,
    )
    log.info("serving %s judge at %s", type(judge).__name__, server.url)
    server.serve_forever()


if __name__ == "__main__":
    main()
