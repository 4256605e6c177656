"""A local HTTP receiver for Apprise `json://127.0.0.1:PORT/path` URLs, with modes ok / error / down.

- ok: answers 200 and records the JSON payload;
- error: answers 500 (the request is counted in `attempts`, not recorded as received);
- down: the listening socket is closed, so connections are refused; switching back to ok or
  error listens again on the same port.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Mode = Literal["ok", "error", "down"]


@dataclass(frozen=True)
class Received:
    """One notification the receiver accepted."""

    path: str
    query: dict[str, list[str]]
    authorization: str | None
    payload: dict[str, Any]

    @property
    def title(self) -> str:
        """The notification title."""
        return str(self.payload.get("title", ""))

    @property
    def message(self) -> str:
        """The notification body."""
        return str(self.payload.get("message", ""))

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """Apprise's attachments: [{filename, base64, mimetype}]."""
        return list(self.payload.get("attachments") or [])

    def attachment_bytes(self, index: int = 0) -> bytes:
        """The decoded bytes of one attachment."""
        return base64.b64decode(self.attachments[index]["base64"])


@dataclass
class JsonReceiver:
    """The receiver; use `json_receiver()` to run one for a test."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0  # every request that reached the server, whatever it answered
    _mode: Mode = "ok"
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str = "/notify", *, auth: str = "", query: str = "cto=1&rto=1") -> str:
        """An Apprise json:// URL for this receiver; `auth` like `user:pass`."""
        at = f"{auth}@" if auth else ""
        return f"json://{at}{self.host}:{self.port}{path}" + (f"?{query}" if query else "")

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; "down" closes the listening socket, leaving it reopens the same port."""
        if mode == "down":
            self._stop_server()
        elif self._server is None:
            self._start_server()
        self._mode = mode

    def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._start_server()

    def stop(self) -> None:
        """Stop listening."""
        self._stop_server()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Block until `count` notifications were received (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.received)

    def _start_server(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._cond:
                    receiver.attempts += 1
                if receiver._mode == "error":
                    self._answer(500)
                    return
                parts = urlsplit(self.path)
                item = Received(
                    path=parts.path,
                    query=parse_qs(parts.query),
                    authorization=self.headers.get("Authorization"),
                    payload=json.loads(raw or b"{}"),
                )
                with receiver._cond:
                    receiver.received.append(item)
                    receiver._cond.notify_all()
                self._answer(200)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def _stop_server(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


@contextmanager
def json_receiver(mode: Mode = "ok") -> Iterator[JsonReceiver]:
    """Run a receiver on 127.0.0.1 for the duration of the block."""
    receiver = JsonReceiver()
    receiver.start()
    try:
        receiver.set_mode(mode)
        yield receiver
    finally:
        receiver.stop()
