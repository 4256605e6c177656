"""A local Cloudflare-style speed-test server for tests and benchmarks: token-bucket shaped, with faults.

Endpoints (HTTP/1.1, keep-alive, 127.0.0.1 only):

- ``GET /__down?bytes=N``: N zero bytes (``Content-Length: N``).
- ``POST /__up``: consumes a ``Content-Length`` body and answers a small 200.
- ``GET /meta``: Cloudflare-style JSON (clientIp, asn, asOrganization, colo, city, country).
- ``GET /cdn-cgi/trace``: Cloudflare-style ``key=value`` lines (ip, colo, loc).
- ``GET|HEAD /file.bin``: a large "file" of ``file_bytes`` zeros, with ``Range: bytes=a-b`` support
  (206 + Content-Range) unless ``range_support`` is off.
- ``POST /upload``: like ``/__up`` (a generic upload target).

Shaping: one token bucket per direction shared by every connection, as on a real line. Downloads
are written in pieces of about 2 ms of line time, uploads are read with ``BufferedProtocol`` buffers
of the same size (pausing the transport between them), so the rate is smooth at 100 ms scales.
`ServerConfig.shaped` also sets a 1448-byte MSS (a real 1500-byte MTU), and shaped uploads get a
receive buffer of about 2 ms of line time: a slow reader behind a big buffer opens the TCP window
in buffer-sized lumps, which made 0.2 s windows swing +/-25 % at 20 Mbit/s.

Faults (``fault``, applied to the paths in ``fault_paths`` after ``fault_after_bytes`` of body):
``"5xx"`` answers 503, ``"stall"`` stops sending but keeps the connection open, ``"truncate"``
closes before ``Content-Length`` is reached, ``"garbage"`` answers bytes that are not HTTP,
``"html"`` answers a small 200 page (a captive portal).

Run standalone (benchmarks use a separate process so the server has its own core)::

    python -m tests.speedserver [--port 0] [--down-mbps X] [--up-mbps Y]

It prints ``READY <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Fault = Literal["5xx", "stall", "truncate", "garbage", "html"]

_ZEROS = bytes(1 << 20)
_HEAD_LIMIT = 64 * 1024

META = {
    "hostname": "speed.test.local",
    "clientIp": "127.0.0.1",
    "httpProtocol": "HTTP/1.1",
    "asn": 64500,
    "asOrganization": "Loopback Test ISP",
    "colo": "LCL",
    "city": "Testville",
    "country": "ZZ",
}


class TokenBucket:
    """A shared rate limiter: `delay_for(n)` reserves n bytes of line time and says how long to wait."""

    def __init__(self, rate_bps: float, burst_s: float = 0.002) -> None:
        self.rate_bps = rate_bps
        self._burst_s = burst_s
        self._next_free = time.monotonic()

    def piece_bytes(self) -> int:
        """Bytes per piece: about 2 ms of line time, so 100 ms windows see no lumps."""
        return max(4096, min(256 * 1024, int(self.rate_bps / 8 * 0.002)))

    def delay_for(self, n_bytes: int) -> float:
        """Reserve n bytes of line time and return the seconds until they may be moved."""
        now = time.monotonic()
        # Virtual-time bucket: reservations queue up, so the long-run rate is exact despite
        # timer jitter; idle time banks at most `burst_s` of credit.
        self._next_free = max(self._next_free, now - self._burst_s) + n_bytes * 8 / self.rate_bps
        return max(0.0, self._next_free - now)


@dataclass
class ServerConfig:
    """How the server behaves; mutate between requests to change it."""

    down_bps: float | None = None
    up_bps: float | None = None
    fault: Fault | None = None
    fault_paths: tuple[str, ...] = ("/__down", "/__up", "/file.bin", "/upload")
    fault_after_bytes: int = 256 * 1024
    fault_skip_requests: int = 0  # let this many matching requests through first
    file_bytes: int = 10**10
    range_support: bool = True
    meta_json: bool = True  # False: /meta answers 404 (clients must fall back to the trace)
    extra_down_headers: dict[str, str] = field(default_factory=dict)
    mss: int | None = None  # TCP_MAXSEG for every connection (1448: like a real 1500-byte MTU)
    rcvbuf_bytes: int | None = None  # SO_RCVBUF; None: automatic when uploads are shaped

    @classmethod
    def shaped(cls, rate_bps: float, **kwargs: Any) -> ServerConfig:
        """Both directions shaped to `rate_bps`, with a real link's segment size."""
        return cls(down_bps=rate_bps, up_bps=rate_bps, mss=1448, **kwargs)


@dataclass
class ServerStats:
    """What the server saw, counted at the application level (HTTP heads + bodies)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    upload_body_bytes: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    connections: int = 0


class _Conn(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: a tiny parser plus shaped body senders and readers."""

    def __init__(self, server: SpeedServer) -> None:
        self._srv = server
        self._buf = bytearray(1 << 20)
        self._head = bytearray()
        self._body_left = 0
        self._body_path = ""
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._faulty_body = False

    # -- asyncio protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        rcvbuf = self._srv.config.rcvbuf_bytes
        if rcvbuf is None and self._srv.up_bucket is not None:
            # A slow reader behind a big receive buffer opens the TCP window in lumps of the
            # buffer size (seen as +/-25 % swings in 0.2 s windows at 20 Mbit/s); a buffer of
            # about 2 ms of line time keeps the client's acknowledged bytes smooth.
            rcvbuf = max(8192, min(256 * 1024, int(self._srv.up_bucket.rate_bps / 8 * 0.002)))
        sock = transport.get_extra_info("socket")
        if rcvbuf and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._srv.stats.connections += 1
        self._srv.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._can_write.set()
        self._srv.conns.discard(self)
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        size = len(self._buf)
        bucket = self._srv.up_bucket
        if self._body_left and bucket is not None:
            size = bucket.piece_bytes()
        if self._body_left:
            size = min(size, self._body_left)
        return memoryview(self._buf)[:size]

    def buffer_updated(self, nbytes: int) -> None:
        self._srv.stats.bytes_received += nbytes
        data = memoryview(self._buf)[:nbytes]
        if self._body_left:
            self._consume_body(nbytes)
            return
        self._head += data
        self._parse_heads()

    def eof_received(self) -> bool:
        return False

    # -- request handling ------------------------------------------------------------------
    def _parse_heads(self) -> None:
        while not self._body_left and self._task is None:
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _HEAD_LIMIT:
                    self._close()
                return
            head = bytes(self._head[:end]).decode("latin-1")
            del self._head[: end + 4]
            self._dispatch(head)

    def _dispatch(self, head: str) -> None:
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._respond(400, b"bad request line\n")
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        path = url.path
        query = parse_qs(url.query)
        stats = self._srv.stats
        stats.requests[path] = stats.requests.get(path, 0) + 1
        cfg = self._srv.config
        fault = self._fault_for(path)

        if fault == "5xx":
            self._respond(503, b"service unavailable (test fault)\n")
            return
        if fault == "html":
            self._respond(200, b"<html><body>Please log in</body></html>", "text/html")
            return
        if fault == "garbage":
            self._write(b"\x00\x01 this is not HTTP at all \xff\xfe\r\n\r\n" * 4)
            self._close()
            return

        if method == "POST" and path in ("/__up", "/upload"):
            if "content-length" not in headers:
                self._respond(411, b"length required\n")
                return
            self._body_left = int(headers["content-length"])
            self._body_path = path
            self._faulty_body = fault is not None
            if self._body_left == 0:
                self._respond(200, b"ok\n")
            elif self._head:
                take = min(len(self._head), self._body_left)
                self._buf[:take] = self._head[:take]
                del self._head[:take]
                self._consume_body(take)
            return
        if method not in ("GET", "HEAD"):
            self._respond(405, b"method not allowed\n")
            return
        if path == "/__down":
            try:
                n = int(query.get("bytes", ["0"])[0])
            except ValueError:
                self._respond(400, b"bytes must be an integer\n")
                return
            self._send_zeros(200, n, method == "HEAD", fault, dict(cfg.extra_down_headers))
        elif path == "/file.bin":
            self._send_file(method, headers.get("range"), fault)
        elif path == "/meta":
            if not cfg.meta_json:
                self._respond(404, b"not found\n")
                return
            self._respond(200, json.dumps(META).encode(), "application/json")
        elif path == "/cdn-cgi/trace":
            body = f"fl=1\nh=speed.test.local\nip={META['clientIp']}\nts={time.time():.3f}\n"
            body += f"colo={META['colo']}\nhttp=http/1.1\nloc={META['country']}\nwarp=off\n"
            self._respond(200, body.encode(), "text/plain")
        else:
            self._respond(404, b"not found\n")

    def _fault_for(self, path: str) -> Fault | None:
        cfg = self._srv.config
        if cfg.fault is None or path not in cfg.fault_paths:
            return None
        self._srv.fault_seen += 1
        if self._srv.fault_seen <= cfg.fault_skip_requests:
            return None
        return cfg.fault

    def _send_file(self, method: str, range_header: str | None, fault: Fault | None) -> None:
        size = self._srv.config.file_bytes
        if range_header and self._srv.config.range_support and range_header.startswith("bytes="):
            first_s, _, last_s = range_header[6:].partition("-")
            first = int(first_s)
            last = min(int(last_s), size - 1) if last_s else size - 1
            if first >= size or last < first:
                self._respond(416, b"range not satisfiable\n")
                return
            extra = {"Content-Range": f"bytes {first}-{last}/{size}", "Accept-Ranges": "bytes"}
            self._send_zeros(206, last - first + 1, method == "HEAD", fault, extra)
            return
        extra = {"Accept-Ranges": "bytes"} if self._srv.config.range_support else {}
        self._send_zeros(200, size, method == "HEAD", fault, extra)

    def _consume_body(self, nbytes: int) -> None:
        self._body_left -= nbytes
        cfg = self._srv.config
        self._srv.stats.upload_body_bytes += nbytes
        if self._faulty_body and cfg.fault == "stall":
            # Stop reading: the client's upload stalls once the socket buffers fill.
            assert self._transport is not None
            self._transport.pause_reading()
            return
        bucket = self._srv.up_bucket
        if bucket is not None and self._transport is not None:
            delay = bucket.delay_for(nbytes)
            if delay > 0:
                self._transport.pause_reading()
                asyncio.get_running_loop().call_later(delay, self._resume_reading)
        if self._body_left == 0:
            if self._faulty_body and cfg.fault == "truncate":
                self._close()
                return
            self._respond(200, b"ok\n")

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def _respond(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        reason |= {411: "Length Required", 416: "Range Not Satisfiable", 503: "Service Unavailable"}
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Status')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Server-Timing: cfRequestDuration;dur=0.5\r\n\r\n"
        )
        self._write(head.encode() + body)

    def _send_zeros(
        self, status: int, n: int, head_only: bool, fault: Fault | None, extra: dict[str, str]
    ) -> None:
        reason = "OK" if status == 200 else "Partial Content"
        lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/octet-stream"]
        lines.append(f"Content-Length: {n}")
        lines += [f"{k}: {v}" for k, v in extra.items()]
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if head_only or n == 0:
            return
        self._task = asyncio.get_running_loop().create_task(self._body_task(n, fault))

    async def _body_task(self, n: int, fault: Fault | None) -> None:
        bucket = self._srv.down_bucket
        limit = n
        if fault in ("stall", "truncate"):
            limit = min(n, self._srv.config.fault_after_bytes)
        sent = 0
        try:
            while sent < limit and not self._closed:
                piece = min(limit - sent, bucket.piece_bytes() if bucket else len(_ZEROS))
                if bucket is not None:
                    delay = bucket.delay_for(piece)
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._can_write.wait()
                if self._closed:
                    return
                self._write(memoryview(_ZEROS)[:piece])
                sent += piece
            if fault == "stall":
                await asyncio.Event().wait()  # never set: the body stalls until the client leaves
            if fault == "truncate":
                await self._can_write.wait()
                self._close()
                return
        finally:
            self._task = None
        if not self._closed:
            self._parse_heads()  # a pipelined next request may be waiting

    def _write(self, data: bytes | memoryview) -> None:
        if self._transport is None or self._closed or self._transport.is_closing():
            return
        self._srv.stats.bytes_sent += len(data)
        self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._closed = True


class SpeedServer:
    """The server itself; use `async with SpeedServer(config) as srv:` and `srv.base_url`."""

    def __init__(self, config: ServerConfig | None = None, port: int = 0) -> None:
        self.config = config or ServerConfig()
        self.stats = ServerStats()
        self.conns: set[_Conn] = set()
        self.fault_seen = 0
        self._port = port
        self._server: asyncio.Server | None = None
        self.down_bucket: TokenBucket | None = None
        self.up_bucket: TokenBucket | None = None
        self.set_rates(self.config.down_bps, self.config.up_bps)

    def set_rates(self, down_bps: float | None, up_bps: float | None) -> None:
        """Change the shaped rates (None: unshaped)."""
        self.config.down_bps, self.config.up_bps = down_bps, up_bps
        self.down_bucket = TokenBucket(down_bps) if down_bps else None
        self.up_bucket = TokenBucket(up_bps) if up_bps else None

    @property
    def port(self) -> int:
        """The listening port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, the Cloudflare-compatible base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.mss:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.config.mss)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(128)
        sock.setblocking(False)
        self._server = await loop.create_server(lambda: _Conn(self), sock=sock)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn._close()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> SpeedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _serve(args: argparse.Namespace) -> None:
    down = args.down_mbps * 1e6 if args.down_mbps else None
    up = args.up_mbps * 1e6 if args.up_mbps else None
    server = SpeedServer(ServerConfig(down_bps=down, up_bps=up), port=args.port)
    await server.start()
    print(f"READY {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--down-mbps", type=float, default=0.0)
    parser.add_argument("--up-mbps", type=float, default=0.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
