"""A tiny OpenAI-compatible judge server on 127.0.0.1 for the fault suite (tests/test_faults_*).

A real HTTP server (``http.server``), deliberately independent of ``rewards.judges.serve``, whose
``/v1/chat/completions`` answer is chosen by ``mode``:

* ``"ok"``: one token with ``top_logprobs`` for " yes" and " no"; P(yes) is a fixed function of
  the request body (its CRC32), so different images and questions get different rewards;
* ``"status"``: HTTP :attr:`FaultServer.status` (503 by default) to the first
  :attr:`FaultServer.fail_first` chat requests (None: all), with a ``Retry-After`` header when
  :attr:`FaultServer.retry_after` is set, then ``"ok"`` answers (``/v1/models`` always answers,
  as a server whose model crashed behind a healthy front does);
* ``"hang"``: the chat request is read and never answered (until the server stops);
* ``"body"``: the JSON document in :attr:`FaultServer.body`, verbatim (malformed answers).

It runs in a thread (:class:`FaultServer` as a context manager) or as its own process
(``python tests/fault_server.py MODE PORT_FILE``: it writes its port to PORT_FILE and serves until
killed), so a test can really kill it mid-run.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("ok", "status", "hang", "body")


def ok_answer(body: bytes) -> dict[str, Any]:
    """A chat completion whose first token has P(yes) = 0.05 + 0.9 * (crc32(body) / 2**32)."""
    p_yes = 0.05 + 0.9 * zlib.crc32(body) / 2**32
    top = [
        {"token": " yes", "logprob": math.log(p_yes)},
        {"token": " no", "logprob": math.log(1.0 - p_yes)},
    ]
    content = [{"token": " yes", "logprob": top[0]["logprob"], "top_logprobs": top}]
    return {"choices": [{"message": {"content": "yes"}, "logprobs": {"content": content}}]}


class FaultServer:
    """The server in a background thread; ``mode`` and ``body`` may change while it runs."""

    def __init__(
        self,
        mode: str = "ok",
        body: Any = None,
        status: int = 503,
        fail_first: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.body = body
        self.status = status
        self.fail_first = fail_first
        self.retry_after = retry_after
        self.chat_requests = 0
        self.authorization: list[str | None] = []  # the Authorization header of each request
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

            def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"data": [{"id": "fault-judge", "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.chat_requests += 1
                server.authorization.append(self.headers.get("Authorization"))
                failing = server.fail_first is None or server.chat_requests <= server.fail_first
                if server.mode == "status" and failing:
                    retry = {"Retry-After": server.retry_after} if server.retry_after else {}
                    self._send(server.status, {"error": f"HTTP {server.status}"}, retry)
                elif server.mode == "hang":
                    server._stop.wait()
                elif server.mode == "body":
                    self._send(200, server.body)
                else:
                    self._send(200, ok_answer(body))

        return Handler

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def main(argv: list[str]) -> None:
    """``python tests/fault_server.py MODE PORT_FILE``: serve until killed."""
    mode, port_file = argv
    with FaultServer(mode) as server:
        Path(port_file).write_text(str(server.port))
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
