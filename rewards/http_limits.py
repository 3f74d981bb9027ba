"""Limits, authentication and admission control for the project's small HTTP servers.

The judge server (:mod:`rewards.judges.serve`) and the reward service (:mod:`rewards.serve_reward`)
are built on this layer, and any other server of the project that takes requests from the network
should be too: every input is untrusted, so what a request may cost is bounded BEFORE it is paid
for. Standard library only
(``http.server``), no framework.

What a request goes through, in order, and what it gets when it fails:

1. **Connections.** At most ``max_connections`` are open at once, each with its own handler
   thread; one more is answered ``503`` with ``Retry-After`` by the accepting thread and closed,
   without a thread. Every socket read and write times out after ``read_timeout_s``, and a request
   must arrive whole (headers and body) within ``request_deadline_s`` of the connection's previous
   answer (or of its opening): a connection that trickles bytes is shut down by the server loop.
   So a connection that never finishes holds its thread for at most ``request_deadline_s``.
2. **Authentication.** With an API key, every route but ``GET /health`` needs
   ``Authorization: Bearer <key>`` (compared in constant time), else ``401``.
3. **Body size.** ``Content-Length`` is required (``411``) and at most ``max_body_bytes``
   (``413``), checked before a byte of the body is read.
4. **Admission.** At most ``max_active`` requests, holding at most ``max_active_bytes`` of bodies
   together, are read and worked on at once; beyond that ``503`` with ``Retry-After``, before the
   body is read (and the connection is closed, the unread body with it).
5. **Content.** The body must be JSON (``400``, also for nesting too deep to parse); the server
   counts the images of a request before decoding any (``max_images``, ``413``), and
   :func:`decode_image_data_url` (:func:`open_base64_image` for a bare base64 image, which a
   server decodes later) reads each image's header (its size) before decoding it: more than
   ``max_image_pixels`` is ``413`` (a decompression bomb costs its compressed bytes, not its
   pixels); only ``image_formats`` are opened (``400`` otherwise, also for bytes that are no such
   image or are truncated). At most ``max_decodes`` images are decoded at once.
6. **Cache.** :class:`ImageCache` keys decoded images by the hash of their data URL (a client's
   ``uuid`` is a hint that must equal that hash, else it is ignored), shares one decode between
   concurrent requests for the same content, and keeps an image only when the request that carried
   it was accepted whole: nothing from a rejected request is cached. It is bounded in bytes.
7. **Abandoned requests.** :func:`wait_for_client` waits for a request's result while watching its
   socket; when the client has gone, the pending work is cancelled.

Worst-case memory held by requests (:meth:`Limits.request_memory_bytes`): the admitted bodies about
three times over (raw bytes, parsed JSON string, decoded base64), the images being decoded (up to
8 bytes per pixel: the decoded mode plus its RGB copy) and the cache. What the backing model needs
for its own batch comes on top.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from PIL import Image

log = logging.getLogger(__name__)

MIB = 2**20


class Rejected(Exception):
    """A request refused with an HTTP status (4xx/5xx), a one-line message and an error kind.

    ``retry_after``: seconds for a ``Retry-After`` header (a busy server says when to come back).
    ``close``: close the connection after answering (the body was not read).
    """

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        retry_after: float | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.close = close


@dataclass(frozen=True)
class Limits:
    """What one request and all of them together may cost (see the module docstring)."""

    max_body_bytes: int = 16 * MIB
    max_images: int = 8
    max_image_pixels: int = 4096 * 4096
    image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    read_timeout_s: float = 10.0
    request_deadline_s: float = 60.0
    max_connections: int = 256
    max_active: int = 128
    max_active_bytes: int = 256 * MIB
    max_decodes: int = 2
    cache_bytes: int = 256 * MIB
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not value > 0:
                raise ValueError(f"limit {f.name} must be > 0, got {value}")
        if self.max_active_bytes < self.max_body_bytes:
            raise ValueError(
                "max_active_bytes must be >= max_body_bytes (else a largest body never fits)"
            )

    def request_memory_bytes(self) -> int:
        """Worst-case bytes held by requests: bodies x3, decodes in progress, the cache."""
        return (
            3 * self.max_active_bytes
            + 8 * self.max_decodes * self.max_image_pixels
            + self.cache_bytes
        )

    def check_image_count(self, count: int) -> None:
        """Refuse a request with more than ``max_images`` images (before decoding any)."""
        if count > self.max_images:
            raise Rejected(413, f"{count} images in one request, the limit is {self.max_images}")


# ------------------------------------------------------------------------------------- API key
def resolve_api_key(given: str | None, env_var: str) -> str | None:
    """The API key: ``given`` (a ``--api-key`` option) else the environment variable, else None."""
    return given or os.environ.get(env_var) or None


def check_bearer(authorization: str | None, api_key: str | None) -> None:
    """Refuse (401) a request whose ``Authorization`` header is not ``Bearer <api_key>``.

    The comparison takes the same time however much of the key matches (``hmac.compare_digest``).
    """
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        raise Rejected(
            401, "missing or wrong API key (Authorization: Bearer <key>)", "unauthorized"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(
    host: str,
    api_key: str | None,
    allow_no_auth: bool,
    remedy: str = "give --api-key (or its environment variable), or --allow-no-auth on a network "
    "you trust",
) -> None:
    """Refuse to listen beyond this machine without an API key unless explicitly allowed;
    ``remedy`` says how, in the words of the server's command line."""
    if not is_loopback(host) and api_key is None and not allow_no_auth:
        raise ValueError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use "
            f"it; {remedy}"
        )


# ------------------------------------------------------------------------------------- images
def content_key(data_url: str) -> str:
    """An image's cache key: a hash of its data URL (what the judge client sends as ``uuid``)."""
    return hashlib.blake2b(data_url.encode(), digest_size=16).hexdigest()


def decode_image_data_url(url: str, limits: Limits) -> Image.Image:
    """The RGB image in a base64 data URL, its size checked from its header before decoding.

    Raises :class:`Rejected`: 400 for a URL that is not a base64 image, bytes that are not an image
    of ``limits.image_formats`` or are truncated; 413 for more than ``limits.max_image_pixels``.
    """
    if not isinstance(url, str):
        raise Rejected(400, "an image URL must be a string")
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or ";base64" not in header:
        raise Rejected(400, f"not a base64 image data URL: {url[:40]!r}")
    return _load_rgb(open_base64_image(payload, limits))


def open_base64_image(payload: Any, limits: Limits) -> Image.Image:
    """The image in base64 ``payload`` with only its header read: its format is one of
    ``limits.image_formats`` and its size at most ``limits.max_image_pixels`` (else
    :class:`Rejected`, 400 / 413); its pixels are not decoded yet, so a server can check every
    image of a request before it decodes any."""
    if not isinstance(payload, str):
        raise Rejected(400, "an image must be a base64 string")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise Rejected(400, f"image is not valid base64 ({err})") from None
    try:
        image = Image.open(io.BytesIO(data), formats=list(limits.image_formats))
    except Image.DecompressionBombError as err:
        raise Rejected(413, f"image too large: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise Rejected(
            400, f"not a {'/'.join(limits.image_formats)} image ({type(err).__name__})"
        ) from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise Rejected(
            413,
            f"image of {width}x{height} = {width * height} pixels, the limit is "
            f"{limits.max_image_pixels}",
        )
    return image


def _load_rgb(image: Image.Image) -> Image.Image:
    """Decode an image opened by :func:`open_base64_image` to RGB (400 if its data is truncated or
    corrupt)."""
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise Rejected(400, f"image data cannot be decoded ({err})") from None


def _image_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


class ImageCache:
    """Decoded images by content key, least recently used first out, at most ``max_bytes`` and
    ``max_items``; concurrent requests for one key share one decode (see the module docstring).

    ``get(key, decode)`` returns the image (cached, being decoded for another request, or decoded
    now, at most ``max_decodes`` at once); it caches nothing. ``commit(key, image)`` keeps it, and
    is called once the request that carried it has been accepted whole.
    """

    def __init__(self, max_bytes: int, max_items: int, max_decodes: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.decoded = 0  # decodes actually run
        self.bytes = 0
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._decodes = threading.BoundedSemaphore(max_decodes)

    def __len__(self) -> int:
        return len(self._images)

    def get(self, key: str, decode: Callable[[], Image.Image]) -> Image.Image:
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Future()
                mine = True
            else:
                mine = False
        if not mine:
            return pending.result()  # raises the decoder's Rejected too: the bytes are the same
        try:
            with self._decodes:
                image = decode()
            with self._lock:
                self.decoded += 1
            pending.set_result(image)
            return image
        except BaseException as err:
            pending.set_exception(err)
            raise
        finally:
            with self._lock:
                del self._pending[key]

    def commit(self, key: str, image: Image.Image) -> None:
        size = _image_bytes(image)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return
            if size > self.max_bytes:
                return
            self._images[key] = image
            self.bytes += size
            while self.bytes > self.max_bytes or len(self._images) > self.max_items:
                _, old = self._images.popitem(last=False)
                self.bytes -= _image_bytes(old)


# ------------------------------------------------------------------------------------- admission
class AdmissionGate:
    """Counts the requests being read and worked on, and their bodies' bytes; one more than
    ``max_active`` (or one whose body would pass ``max_active_bytes``) is refused with 503."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = 0
        self.active_bytes = 0
        self.refused = 0
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, body_bytes: int) -> Iterator[None]:
        with self._lock:
            busy = (
                self.active >= self.limits.max_active
                or self.active_bytes + body_bytes > self.limits.max_active_bytes
            )
            if busy:
                self.refused += 1
            else:
                self.active += 1
                self.active_bytes += body_bytes
        if busy:
            raise Rejected(
                503, "server busy, retry later", "server_busy", self.limits.retry_after_s, True
            )
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
                self.active_bytes -= body_bytes


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has closed it (readable, and a peek reads end of stream)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_for_client(future: Future, gone: Callable[[], bool] | None, poll_s: float = 0.1) -> Any:
    """``future``'s result, or :class:`ClientGone` after cancelling it once ``gone()`` says the
    client left (work not yet started is then never run; work already running ends unread)."""
    while True:
        try:
            return future.result(timeout=poll_s if gone is not None else None)
        except FutureTimeout:
            if gone is not None and gone():
                future.cancel()
                raise ClientGone from None


# ------------------------------------------------------------------------------------- server
class LimitedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a connection cap and a per-request deadline (steps 1 and 4).

    ``api_key``: the key :meth:`LimitedHandler.check_auth` wants (None: no authentication).
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: type[BaseHTTPRequestHandler],
        limits: Limits,
        api_key: str | None = None,
    ) -> None:
        self.limits = limits
        self.api_key = api_key
        self.gate = AdmissionGate(limits)
        self.refused_connections = 0
        self.expired_connections = 0
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        super().__init__(address, handler_class)

    @property
    def open_connections(self) -> int:
        return len(self._deadlines)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._deadline_lock:
            full = len(self._deadlines) >= self.limits.max_connections
            if not full:
                self._deadlines[request] = time.monotonic() + self.limits.request_deadline_s
        if not full:
            try:
                return super().process_request(request, client_address)
            except BaseException:  # no thread started: the connection is not open any more
                with self._deadline_lock:
                    self._deadlines.pop(request, None)
                raise
        self.refused_connections += 1
        _refuse_connection(request, self.limits.retry_after_s)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._deadline_lock:
                self._deadlines.pop(request, None)

    def set_deadline(self, request: socket.socket, running: bool) -> None:
        """Suspend the connection's deadline while its request is worked on (``running``), or
        start the next one (the next request must arrive within ``request_deadline_s``)."""
        with self._deadline_lock:
            if request in self._deadlines:
                self._deadlines[request] = (
                    float("inf") if running else time.monotonic() + self.limits.request_deadline_s
                )

    def service_actions(self) -> None:
        """Run by ``serve_forever`` each poll: shut down connections past their deadline."""
        now = time.monotonic()
        with self._deadline_lock:
            expired = [sock for sock, deadline in self._deadlines.items() if deadline < now]
            for sock in expired:
                self._deadlines[sock] = float("inf")  # shut down once
        for sock in expired:
            self.expired_connections += 1
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class HTTPService:
    """Running a :class:`LimitedHTTPServer` (``self.httpd``, set by the subclass): ``start()``
    serves from a background thread (tests), ``serve_forever()`` blocks (command line), ``stop()``
    or leaving a ``with`` block ends it and calls :meth:`close`."""

    httpd: LimitedHTTPServer
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.25)
        finally:
            self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook, default is a no-op
        """Release what the service holds besides its server (its worker thread)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _refuse_connection(sock: socket.socket, retry_after_s: float) -> None:
    """Answer 503 on a connection over the cap without blocking the accepting thread."""
    body = json.dumps(_error_body("too many connections, retry later", "server_busy")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {_retry_after(retry_after_s)}\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        sock.setblocking(False)
        sock.send(head.encode() + body)
        sock.recv(65536)  # drop what the client already sent, so closing does not reset
    except OSError:
        pass


def _retry_after(seconds: float) -> str:
    return str(max(0, round(seconds)))


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


class LimitedHandler(BaseHTTPRequestHandler):
    """Request handler with the layer's checks; subclasses write ``do_GET`` / ``do_POST`` with
    :meth:`check_auth`, :meth:`read_json` (inside ``server.gate.admit``) and :meth:`send_json`,
    or simply :meth:`serve_json`."""

    server: LimitedHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout_s  # every socket read and write
        super().setup()

    def handle_one_request(self) -> None:
        """One request; then the connection's next one must arrive within the deadline."""
        try:
            super().handle_one_request()
        finally:
            self.server.set_deadline(self.connection, running=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("%s - %s", self.address_string(), format % args)

    def send_json(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``answer`` (JSON-able, or raw ``bytes``); a client gone by now is ignored."""
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the answer")

    def send_rejection(self, rejected: Rejected) -> None:
        headers = {}
        if rejected.retry_after is not None:
            headers["Retry-After"] = _retry_after(rejected.retry_after)
        if rejected.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if rejected.close:
            self.close_connection = True
        self.send_json(rejected.status, _error_body(rejected.message, rejected.kind), headers)

    def check_auth(self) -> None:
        check_bearer(self.headers.get("Authorization"), self.server.api_key)

    def body_length(self) -> int:
        """The body's declared length, checked against ``max_body_bytes`` (nothing read yet)."""
        if self.headers.get("Transfer-Encoding"):
            raise Rejected(411, "chunked bodies are not accepted; send Content-Length", close=True)
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise Rejected(411, "Content-Length is required", close=True)
        try:
            length = int(declared)
        except ValueError:
            raise Rejected(400, f"bad Content-Length {declared[:20]!r}", close=True) from None
        if length < 0:
            raise Rejected(400, f"bad Content-Length {length}", close=True)
        if length > self.server.limits.max_body_bytes:
            raise Rejected(
                413,
                f"body of {length} bytes, the limit is {self.server.limits.max_body_bytes}",
                close=True,
            )
        return length

    def read_json(self, length: int) -> Any:
        """Read ``length`` body bytes (the socket timeouts and deadline apply) and parse them."""
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise ClientGone
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise Rejected(400, "body is not JSON (or nested too deeply)") from None

    def serve_json(self, answer: Callable[[Any, Callable[[], bool]], tuple[int, Any]]) -> None:
        """The whole POST path: auth, body size, admission, body, then ``answer(body, gone)``
        (``gone()``: the client has left) -> (status, JSON-able or bytes), or its Rejected."""
        try:
            self.check_auth()
            length = self.body_length()
            with self.server.gate.admit(length):
                body = self.read_json(length)
                self.server.set_deadline(self.connection, running=True)
                status, result = answer(body, lambda: client_gone(self.connection))
            self.send_json(status, result)
        except Rejected as rejected:
            self.send_rejection(rejected)
        except ClientGone:
            self.close_connection = True
            log.debug("client %s left before its answer", self.address_string())


# ------------------------------------------------------------------------------------- CLI
def add_limit_arguments(parser: argparse.ArgumentParser, env_var: str) -> None:
    """``--api-key``, ``--allow-no-auth`` and one option per limit (defaults: :class:`Limits`)."""
    d = Limits()
    group = parser.add_argument_group("limits and access")
    group.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${env_var}; prefer the variable, "
        "a command line is visible to other users)",
    )
    group.add_argument(
        "--allow-no-auth",
        action="store_true",
        help="allow a non-loopback --host without an API key",
    )
    group.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / MIB)
    group.add_argument("--max-images", type=int, default=d.max_images)
    group.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    group.add_argument("--read-timeout-s", type=float, default=d.read_timeout_s)
    group.add_argument("--request-deadline-s", type=float, default=d.request_deadline_s)
    group.add_argument("--max-connections", type=int, default=d.max_connections)
    group.add_argument("--max-active", type=int, default=d.max_active)
    group.add_argument("--max-active-mb", type=float, default=d.max_active_bytes / MIB)
    group.add_argument("--max-decodes", type=int, default=d.max_decodes)
    group.add_argument("--cache-mb", type=float, default=d.cache_bytes / MIB)


# config names in megabytes -> the Limits fields in bytes
_MB_FIELDS = {
    "max_body_mb": "max_body_bytes",
    "max_active_mb": "max_active_bytes",
    "cache_mb": "cache_bytes",
}


def limits_from_config(values: Mapping[str, Any]) -> Limits:
    """The :class:`Limits` of a config block (a Hydra ``limits:`` mapping) in the command-line
    options' names and units (``max_body_mb``, ``max_images``, ``read_timeout_s``, ...); a limit
    it leaves out keeps its default, an unknown name is a ValueError naming it."""
    plain = {f.name for f in fields(Limits)} - set(_MB_FIELDS.values())
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in _MB_FIELDS:
            kwargs[_MB_FIELDS[name]] = int(float(value) * MIB)
        elif name in plain:
            kwargs[name] = tuple(value) if name == "image_formats" else value
        else:
            raise ValueError(
                f"unknown limit {name!r} (known: {', '.join(sorted({*plain, *_MB_FIELDS}))})"
            )
    return Limits(**kwargs)


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` that :func:`add_limit_arguments`' options describe."""
    names = ("max_body_mb", "max_images", "max_image_pixels", "read_timeout_s",
             "request_deadline_s", "max_connections", "max_active", "max_active_mb",
             "max_decodes", "cache_mb")  # fmt: skip
    return limits_from_config({name: getattr(args, name) for name in names})
