"""Chart worker process: framed requests on stdin, PNG frames on stdout; exits when idle."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import select
import signal
import sys

from capbot.adapters.charts import (
    ERROR,
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    PNG,
    READY,
    REQUEST,
    decode_request,
)
from capbot.adapters.charts.render import preload, render_png
from capbot.errors import CapbotError

log = logging.getLogger(__name__)


def _read_exact(fd: int, size: int) -> bytes | None:
    """Read exactly `size` bytes, or None on EOF (the parent closed the pipe or died)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _write_frame(fd: int, kind: bytes, body: bytes) -> None:
    view = memoryview(FRAME_HEADER.pack(kind, len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def serve(in_fd: int, out_fd: int, idle_timeout_s: float) -> int:
    """Answer requests until EOF or `idle_timeout_s` without one; returns the exit status."""
    preload()
    _write_frame(out_fd, READY, b"")
    while True:
        # select, not a buffered reader: buffered bytes would hide from the idle check
        readable, _, _ = select.select([in_fd], [], [], idle_timeout_s)
        if not readable:
            log.debug("chart worker idle for %.0f s; exiting", idle_timeout_s)
            return 0
        header = _read_exact(in_fd, FRAME_HEADER.size)
        if header is None:
            return 0
        kind, size = FRAME_HEADER.unpack(header)
        if kind != REQUEST or size > MAX_FRAME_BYTES:
            log.error("chart worker got a bad frame (%r, %d bytes); exiting", kind, size)
            return 2
        payload = _read_exact(in_fd, size)
        if payload is None:
            return 0
        try:
            chart, theme = decode_request(payload)
            png = render_png(chart, theme)
        except CapbotError as exc:
            _write_frame(out_fd, ERROR, str(exc).encode())
        except Exception as exc:  # keep serving: one bad chart must not cost a restart
            log.exception("chart worker failed to render")
            _write_frame(out_fd, ERROR, f"{type(exc).__name__}: {exc}".encode())
        else:
            _write_frame(out_fd, PNG, png)
        # A render leaves megabytes of cyclic garbage; collected only by chance, it lets RSS
        # creep from ~75 to ~125 MiB. Collecting after the answer keeps it off the caller's clock.
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m capbot.adapters.charts.worker`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds (default 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="chart-worker: %(levelname)s %(message)s")
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        return serve(sys.stdin.fileno(), out_fd, args.idle_timeout)
    except BrokenPipeError:
        return 0  # the parent went away mid-answer


if __name__ == "__main__":
    sys.exit(main())
