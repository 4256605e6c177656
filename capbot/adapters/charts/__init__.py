"""Chart renderer: plain chart data in, PNG bytes out, via a short-lived matplotlib worker process.

The service process never imports matplotlib (~0.5 s, ~50 MiB RSS): in "process" mode a worker
(`python -m capbot.adapters.charts.worker`) is started on first use, renders requests one at a
time over its stdin/stdout pipes and exits by itself after `idle_timeout_s` without requests.
"thread" mode renders in-process with `asyncio.to_thread`, for the CLI and scripts.

Wire protocol (both directions): frames of a 1-byte kind + 4-byte big-endian length + payload.
The worker announces READY once matplotlib is loaded; a REQUEST carries JSON
`{"type", "theme", "chart"}`; the answer is PNG (the image) or ERROR (a UTF-8 message).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import struct
import sys
import time
from typing import Any, Literal

from capbot.adapters.charts.render import (
    Chart,
    ChartError,
    DailyUsageChart,
    HourlyUsageChart,
    SpeedHistoryChart,
    Theme,
    render_png,
)

__all__ = [
    "Chart",
    "ChartError",
    "ChartRenderer",
    "DailyUsageChart",
    "HourlyUsageChart",
    "SpeedHistoryChart",
    "Theme",
    "render_png",
]

log = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct(">cI")
READY, REQUEST, PNG, ERROR = b"R", b"Q", b"P", b"E"
MAX_FRAME_BYTES = 32 * 2**20  # a 1200x700 PNG is < 0.2 MB; anything bigger is a broken stream

# The worker must import this very capbot even when it is not installed (tests, checkouts).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

_TYPES: dict[str, type[Chart]] = {
    "daily": DailyUsageChart,
    "speed": SpeedHistoryChart,
    "hourly": HourlyUsageChart,
}
_TYPE_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode_request(chart: Chart, theme: Theme) -> bytes:
    """Serialise a chart and theme to the worker's JSON request payload."""
    name = _TYPE_NAMES.get(type(chart))
    if name is None:
        raise ChartError(f"unknown chart type {type(chart).__name__}")
    body = {"type": name, "theme": theme, "chart": dataclasses.asdict(chart)}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_request(payload: bytes) -> tuple[Chart, Theme]:
    """Rebuild (chart, theme) from a request payload; raises ChartError when it is malformed."""
    try:
        body = json.loads(payload)
        cls = _TYPES[body["type"]]
        fields = {key: _tuples(value) for key, value in body["chart"].items()}
        return cls(**fields), body["theme"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ChartError(f"malformed chart request: {exc}") from exc


def _tuples(value: Any) -> Any:
    """JSON turns tuples into lists; every sequence in the chart types is a tuple."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _render_and_collect(chart: Chart, theme: Theme) -> bytes:
    """Render, then free the render's cyclic garbage now (~20 ms) rather than let RSS creep."""
    try:
        return render_png(chart, theme)
    finally:
        gc.collect()


class _WorkerGone(Exception):
    """The worker exited or its pipe broke; the request may be retried on a fresh worker."""


class ChartRenderer:
    """Renders charts off the event loop; one render at a time; see the module docstring."""

    def __init__(
        self,
        mode: Literal["process", "thread"] = "process",
        idle_timeout_s: float = 300.0,
        theme: Theme = "light",
        *,
        render_timeout_s: float = 60.0,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ChartError(f"unknown chart renderer mode {mode!r}")
        self.mode = mode
        self.idle_timeout_s = idle_timeout_s
        self.theme: Theme = theme
        self.render_timeout_s = render_timeout_s  # a Pi's cold start plus render is a few seconds
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._closed = False

    @property
    def worker_pid(self) -> int | None:
        """The live worker's process id, or None when no worker is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def render(self, chart: Chart, theme: Theme | None = None) -> bytes:
        """Render `chart` to PNG bytes in the renderer's (or the given) theme; raises ChartError."""
        theme = theme or self.theme
        if self.mode == "thread":
            async with self._lock:
                return await asyncio.to_thread(_render_and_collect, chart, theme)
        payload = encode_request(chart, theme)
        async with self._lock:
            if self._closed:
                raise ChartError("chart renderer is closed")
            # A worker can exit on its idle timeout just as we write to it: retry once.
            for attempt in (1, 2):
                try:
                    proc = await self._ensure_worker()
                    return await self._round_trip(proc, payload)
                except _WorkerGone as exc:
                    await self._discard_worker()
                    if attempt == 2:
                        raise ChartError(f"chart worker failed: {exc}") from exc
                    log.info("chart worker gone (%s); starting a new one", exc)
        raise AssertionError("unreachable")

    async def warm(self) -> None:
        """Start the worker now (e.g. while a command queries the database) to hide start-up."""
        if self.mode == "thread":
            return
        async with self._lock:
            if self._closed:
                raise ChartError("chart renderer is closed")
            try:
                await self._ensure_worker()
            except _WorkerGone as exc:
                await self._discard_worker()
                raise ChartError(f"chart worker failed to start: {exc}") from exc

    async def aclose(self) -> None:
        """Stop the worker (if any); later renders raise ChartError."""
        async with self._lock:
            self._closed = True
            await self._discard_worker(graceful=True)

    async def _ensure_worker(self) -> asyncio.subprocess.Process:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            return proc
        if proc is not None:
            await self._discard_worker()
        started = time.monotonic()
        env = dict(os.environ, MPLBACKEND="Agg")
        pythonpath = (_PACKAGE_ROOT, env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "capbot.adapters.charts.worker",
            "--idle-timeout",
            repr(self.idle_timeout_s),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._proc = proc
        kind, _ = await self._exchange(proc, None)
        if kind != READY:
            raise _WorkerGone(f"unexpected {kind!r} frame instead of READY")
        log.info("chart worker %d ready in %.0f ms", proc.pid, (time.monotonic() - started) * 1000)
        return proc

    async def _round_trip(self, proc: asyncio.subprocess.Process, payload: bytes) -> bytes:
        kind, body = await self._exchange(proc, payload)
        if kind == PNG:
            return body
        if kind == ERROR:
            raise ChartError(body.decode(errors="replace"))
        raise _WorkerGone(f"unexpected {kind!r} frame")

    async def _exchange(
        self, proc: asyncio.subprocess.Process, payload: bytes | None
    ) -> tuple[bytes, bytes]:
        """Send one request (if any) and read one frame; a worker left out of step is discarded."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(self.render_timeout_s):
                if payload is not None:
                    proc.stdin.write(FRAME_HEADER.pack(REQUEST, len(payload)) + payload)
                    await proc.stdin.drain()
                kind, size = FRAME_HEADER.unpack(await proc.stdout.readexactly(FRAME_HEADER.size))
                if size > MAX_FRAME_BYTES:
                    raise _WorkerGone(f"frame of {size} bytes")
                return kind, await proc.stdout.readexactly(size)
        except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
            raise _WorkerGone(f"worker exited ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            await self._discard_worker()  # a stuck worker is killed, not left to answer late
            raise ChartError(f"chart worker did not answer in {self.render_timeout_s:g} s") from exc
        except BaseException:
            # Cancelled mid-request: the stream is out of step, so this worker cannot be reused.
            await asyncio.shield(self._discard_worker())
            raise

    async def _discard_worker(self, graceful: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            if graceful and proc.stdin is not None:
                proc.stdin.close()  # EOF: the worker exits on its own
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        log.debug("chart worker %d stopped (exit status %s)", proc.pid, proc.returncode)
