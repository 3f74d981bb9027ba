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
flight, so one client call of up to that many questions becomes one batch.

Every request is untrusted (:mod:`rewards.http_limits` does the checks, in this order): connection
cap, socket read timeouts and a whole-request deadline; the API key (``--api-key`` or
``$JUDGE_API_KEY``, the variable the client config reads); body size from ``Content-Length``;
admission (503 + ``Retry-After`` when ``max_active`` requests are in); then the request's shape and
image count, all checked before any image is decoded; then each image's pixel count from its header
before it is decoded. A malformed request gets a 4xx, never a 500 (500 means the judge failed).
Each distinct image is decoded once: the cache is keyed by a hash of its data URL (a part's
``uuid`` is only a hint, ignored unless it equals that hash), concurrent questions about one image
wait for one decode and share one image object, which the local judge's shared-prefix scoring
groups by, and an image is cached only once its request has been accepted whole. A client that
disconnects while its question waits for the worker has its question cancelled: a question not yet
in a batch is never judged; a batch already running finishes and the answer is dropped.

The server listens on 127.0.0.1 unless ``--host`` says otherwise, and refuses a non-loopback host
without an API key unless ``--allow-no-auth`` is given.
"""

from __future__ import annotations

import argparse
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rewards.http_limits import (
    ClientGone,
    HTTPService,
    ImageCache,
    LimitedHandler,
    LimitedHTTPServer,
    Limits,
    Rejected,
    add_limit_arguments,
    check_exposure,
    content_key,
    decode_image_data_url,
    limits_from_args,
    resolve_api_key,
    wait_for_client,
)
from rewards.judges.base import Judge, JudgeItem
from rewards.judges.openai_server import DEFAULT_CONCURRENCY

log = logging.getLogger(__name__)
CONF_JUDGE = Path(__file__).resolve().parents[2] / "conf" / "judge"
API_KEY_ENV = "JUDGE_API_KEY"  # the variable conf/judge/openai.yaml reads for the client
MAX_CACHED_IMAGES = 256  # decoded images kept for the questions still to come about them
MAX_TOKENS = 1 << 16  # largest max_tokens a free-text request may ask for


@dataclass
class Faults:
    """Faults to inject, by the 1-based number of the chat-completions request (for tests).

    Requests ``1..fail_first`` get HTTP ``fail_status`` (with ``Retry-After: retry_after_s`` when
    that is not None); requests ``1..slow_first`` are answered after ``slow_s`` seconds; requests
    ``1..malformed_first`` get a 200 whose body is not JSON; ``drop_logprobs`` answers every
    request without logprobs; ``unhealthy`` makes ``/health`` and ``/v1/models`` answer 503.
    """

    fail_first: int = 0
    fail_status: int = 503
    retry_after_s: float | None = None
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
    """The one thread that calls the judge: batches yes/no items, runs generations one by one.

    A task whose future was cancelled (its client left) before the worker took it is skipped
    (counted in ``cancelled``); ``set_running_or_notify_cancel`` makes that race-free.
    """

    def __init__(self, judge: Judge, max_batch: int, batch_wait_s: float) -> None:
        self.judge = judge
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.tasks: queue.Queue[_Task | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self.cancelled = 0
        self.thread = threading.Thread(target=self._run, name="judge-worker", daemon=True)
        self.thread.start()

    def submit(self, kind: str, payload: Any) -> Future:
        task = _Task(kind, payload)
        self.tasks.put(task)
        return task.future

    def stop(self) -> None:
        self.tasks.put(None)
        self.thread.join(timeout=10)

    def _take(self, task: _Task) -> bool:
        if task.future.set_running_or_notify_cancel():
            return True
        self.cancelled += 1
        return False

    def _run(self) -> None:
        while True:
            first = self.tasks.get()
            if first is None:
                return
            batch = [first] if self._take(first) else []
            deadline = time.monotonic() + self.batch_wait_s
            while batch and len(batch) < self.max_batch:
                try:
                    task = self.tasks.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if task is None:
                    self.tasks.put(None)
                    break
                if self._take(task):
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


def _parse_messages(messages: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``image_url`` parts (not decoded) and the texts of the LAST user message; a malformed
    message is :class:`Rejected` (400)."""
    if not isinstance(messages, list) or not messages:
        raise Rejected(400, "'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise Rejected(400, "no user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        return [], [content]
    if not isinstance(content, list):
        raise Rejected(400, "user content must be a string or a list of parts")
    images, texts = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            image_url = part.get("image_url")
            if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                raise Rejected(400, "an image_url part needs image_url.url, a string")
            images.append(part)
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise Rejected(
                400, f"unsupported content part {str(kind)[:40]!r} (or text not a string)"
            )
    return images, texts


def _int_field(body: dict[str, Any], name: str, default: int, least: int, most: int) -> int:
    """An optional integer field of the request in ``[least, most]`` (400 otherwise)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise Rejected(
            400, f"{name} must be an integer in [{least}, {most}], got {str(value)[:40]!r}"
        )
    return value


class JudgeServer(HTTPService):
    """An OpenAI-compatible HTTP front for ``judge`` (see the module docstring).

    ``start()`` serves from a background thread (tests); ``serve_forever()`` blocks (CLI).
    ``url`` is the API root to give :class:`OpenAIJudge` as ``base_url``. ``limits`` and
    ``api_key`` are those of :mod:`rewards.http_limits`.
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
        limits: Limits | None = None,
        api_key: str | None = None,
    ) -> None:
        if not 0.0 <= other_mass < 1.0:
            raise ValueError(f"other_mass must be in [0, 1), got {other_mass}")
        self.model_name = model_name
        self.faults = faults or Faults()
        self.other_mass = other_mass
        self.limits = limits or Limits()
        self.worker = _Worker(judge, max_batch, batch_wait_s)
        self.chat_requests = 0
        self.uuid_mismatches = 0
        self._count_lock = threading.Lock()
        self.images = ImageCache(
            self.limits.cache_bytes, MAX_CACHED_IMAGES, self.limits.max_decodes
        )
        self.httpd = LimitedHTTPServer((host, port), self._handler_class(), self.limits, api_key)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def images_decoded(self) -> int:
        return self.images.decoded

    def stats(self) -> dict[str, int]:
        """Counters for ``/health``: requests, decodes, cache, refusals and cancellations."""
        httpd = self.httpd
        return {
            "chat_requests": self.chat_requests,
            "images_decoded": self.images.decoded,
            "images_cached": len(self.images),
            "uuid_mismatches": self.uuid_mismatches,
            "active_requests": httpd.gate.active,
            "refused_busy": httpd.gate.refused,
            "open_connections": httpd.open_connections,
            "refused_connections": httpd.refused_connections,
            "expired_connections": httpd.expired_connections,
            "cancelled_questions": self.worker.cancelled,
        }

    def close(self) -> None:
        self.worker.stop()

    def _next_request_number(self) -> int:
        with self._count_lock:
            self.chat_requests += 1
            return self.chat_requests

    def chat_completion(
        self, body: Any, client_gone: Callable[[], bool] | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, JSON-able answer or raw ``bytes``) for one chat-completions request;
        :class:`Rejected` for a malformed or too large one. ``client_gone()`` says whether the
        client has left (its question is then cancelled, see the module docstring)."""
        number = self._next_request_number()
        faults = self.faults
        if number <= faults.fail_first:
            raise Rejected(
                faults.fail_status,
                f"injected failure {number}",
                "server_error",
                faults.retry_after_s,
            )
        if number <= faults.slow_first:
            time.sleep(faults.slow_s)
        if number <= faults.malformed_first:
            return 200, b'{"choices": [ this is not json'
        if not isinstance(body, dict):
            raise Rejected(400, "the body must be a JSON object")
        parts, texts = _parse_messages(body.get("messages"))
        self.limits.check_image_count(len(parts))
        yes_no = bool(body.get("logprobs"))
        if yes_no and (len(parts) != 1 or not texts):
            raise Rejected(400, "a yes/no request needs one image and a question")
        wanted = max(1, _int_field(body, "top_logprobs", 1, 0, 100))
        max_tokens = _int_field(body, "max_tokens", 512, 1, MAX_TOKENS)
        images = self._decode_images(parts)
        if yes_no:
            context, _, question = "\n".join(texts).rpartition("\n")
            item = JudgeItem(images[0], context, question)
            p_yes = wait_for_client(self.worker.submit("yes", item), client_gone)
            top = _top_logprobs(p_yes, self.other_mass)
            token = {**top[0], "top_logprobs": top[:wanted]}
            logprobs = None if faults.drop_logprobs else {"content": [token]}
            return 200, self._completion(top[0]["token"], logprobs)
        task = self.worker.submit("generate", (images, "\n".join(texts), max_tokens))
        try:
            text = wait_for_client(task, client_gone)
        except NotImplementedError as err:
            return 501, _error(str(err), "not_implemented")
        return 200, self._completion(text, None)

    def _decode_images(self, parts: list[dict[str, Any]]) -> list[Image.Image]:
        """The images of a request, each decoded once across requests (see the module
        docstring); they enter the cache only when all of them decoded."""
        keys = [content_key(part["image_url"]["url"]) for part in parts]
        for part, key in zip(parts, keys):
            hint = part.get("uuid")
            if hint is not None and hint != key:
                with self._count_lock:
                    self.uuid_mismatches += 1
                log.debug("image uuid %r is not its content hash; ignored", str(hint)[:40])
        images = [
            self.images.get(key, lambda url=part["image_url"]["url"]: self._decode(url))
            for part, key in zip(parts, keys)
        ]
        for key, image in zip(keys, images):
            self.images.commit(key, image)
        return images

    def _decode(self, url: str) -> Image.Image:
        return decode_image_data_url(url, self.limits)

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

    def _handler_class(self) -> type[LimitedHandler]:
        server = self

        class Handler(LimitedHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = self.path.rstrip("/")
                if route not in ("/health", "/v1/models"):
                    return self.send_json(404, _error(f"no route {self.path[:100]}", "not_found"))
                if server.faults.unhealthy:
                    return self.send_json(503, _error("unhealthy", "server_error"))
                if route == "/health":  # open to probes: says nothing but counters
                    return self.send_json(200, {"status": "ok", **server.stats()})
                try:
                    self.check_auth()
                except Rejected as rejected:
                    return self.send_rejection(rejected)
                model = {"id": server.model_name, "object": "model", "owned_by": "rewards"}
                return self.send_json(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.close_connection = True  # the body is not read
                    return self.send_json(404, _error(f"no route {self.path[:100]}", "not_found"))
                self.serve_json(self._answer)

            def _answer(self, body: Any, gone: Callable[[], bool]) -> tuple[int, Any]:
                try:
                    return server.chat_completion(body, client_gone=gone)
                except (Rejected, ClientGone):
                    raise
                except Exception as err:  # noqa: BLE001 - a judge failure is a 500, not a crash
                    log.exception("judge failed")
                    return 500, _error(f"{type(err).__name__}: {err}", "server_error")

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
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (only this machine by default)"
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (logged)")
    parser.add_argument("--model-name", default=None, help="name listed by /v1/models")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    add_limit_arguments(parser, API_KEY_ENV)
    args = parser.parse_args(argv)
    api_key = resolve_api_key(args.api_key, API_KEY_ENV)
    try:
        limits = limits_from_args(args)
        check_exposure(args.host, api_key, args.allow_no_auth)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    judge = load_judge(args.judge, args.set)
    server = JudgeServer(
        judge,
        host=args.host,
        port=args.port,
        model_name=args.model_name or Path(args.judge).stem,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s,
        limits=limits,
        api_key=api_key,
    )
    log.info(
        "serving %s judge at %s (%s)",
        type(judge).__name__,
        server.url,
        "API key required" if api_key else "no API key",
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
