"""The speed probe: latency, download and upload against one server, with aiohttp.

Why aiohttp and not httpx (benchmarks/bench_probe.py, unshaped loopback, same server and run):
httpx ``aiter_raw`` streamed 14 Gbit/s at 0.62 CPU-s/GiB, 8 % of curl's ceiling at 14x its CPU
per GiB (forcing 1 MiB reads into httpcore still left 0.33 CPU-s/GiB); aiohttp ``iter_any``
reached 65 % of curl at 1.7x. On a Raspberry Pi the CPU per byte decides whether a fast line can
be measured at all, so the whole probe uses aiohttp: one library, one error translation, one way
of counting bytes. Proxies from the environment are ignored (``trust_env=False``): a speed test
through a proxy would measure the proxy.

A probe, in order:

1. Idle latency: one warm-up request (it opens the connection), then ``latency_samples``
   requests of ``/__down?bytes=0`` (generic servers: ``HEAD`` of the download URL) on that
   connection; median and jitter, minus the server time a ``Server-Timing`` header reports.
2. Metadata (Cloudflare kind): ``/meta`` JSON, else ``/cdn-cgi/trace``; missing metadata is
   logged, never fatal.
3. Download, then upload, each with ``streams`` connections making back-to-back requests of
   ``request_bytes`` from an even share of ``max_bytes`` (`ByteBudget`), sampled every
   ``window_s`` into a `StableEstimator` until stable, ``max_seconds`` or ``max_bytes``. While
   downloading, latency is sampled every ``loaded_interval_s`` after the ramp (bufferbloat).
   Uploads are streamed from an async generator of 1 MiB memoryviews of one zero buffer.

Bytes are counted by `ByteMeter` (TCP payload per direction from the kernel, see ``_meter``).
Any failure becomes a ``ProbeResult(status="failed")`` carrying the bytes moved until then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from capbot.adapters.speedtest._errors import redact, translate
from capbot.adapters.speedtest._meter import ByteMeter
from capbot.core.model import ProbeResult, Progress
from capbot.core.probe import (
    ByteBudget,
    DirectionEnd,
    ProbeSettings,
    ServerSpec,
    StableEstimator,
    latency_stats,
    server_time_ms,
    streams_for,
)
from capbot.core.units import format_bps, format_bytes
from capbot.errors import ProbeError, ProbeHTTPError, ProbeProtocolError, ProbeTimeoutError

log = logging.getLogger(__name__)

Direction = Literal["download", "upload"]

_CHUNK = memoryview(bytes(1 << 20))  # the one upload buffer, shared by every stream
_PROGRESS_EVERY_S = 1.0
_PROGRESS_FLUSH_S = 5.0
_META_TIMEOUT_S = 5.0
_USER_AGENT = "capbot-speedprobe"


@dataclass
class _DirectionResult:
    bps: float | None
    end: DirectionEnd
    moved_bytes: int
    seconds: float


@dataclass
class _Run:
    """What a probe has gathered so far (a failure reports the bytes moved until then)."""

    meta: dict[str, str] = field(default_factory=dict)
    latency_ms: float | None = None
    jitter_ms: float | None = None
    loaded_ms: list[float] = field(default_factory=list)
    down: _DirectionResult | None = None
    up: _DirectionResult | None = None


class _ProgressPump:
    """Delivers progress lines without ever making the probe wait for a slow chat API."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task: asyncio.Task[None] | None = None
        self._pending: str | None = None

    def send(self, line: str) -> None:
        if self._progress is None:
            return
        self._pending = line
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        while self._pending is not None and self._progress is not None:
            line, self._pending = self._pending, None
            try:
                await self._progress(line)
            except Exception:  # cosmetic: a failing progress display must not fail the probe
                log.warning("progress callback failed", exc_info=True)

    async def flush(self, timeout_s: float = _PROGRESS_FLUSH_S) -> None:
        """Wait (a bounded time) for the last line to be delivered."""
        if self._task is not None and not self._task.done():
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                log.warning("progress callback still busy after %.0f s; not waiting", timeout_s)
                self._task.cancel()


class SpeedProbe:
    """Runs speed probes; `run` never raises for network trouble, it returns a failed result.

    `resolver` (an ``aiohttp.abc.AbstractResolver``) replaces DNS, for tests.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        resolver: Any = None,
    ) -> None:
        self._clock = clock
        self._mono = monotonic
        self._resolver = resolver

    async def run(
        self,
        server: ServerSpec,
        settings: ProbeSettings,
        progress: Progress | None = None,
        trigger: str = "manual",
    ) -> ProbeResult:
        """Measure latency, download and upload against `server`; see the module docstring."""
        started_at = self._clock()
        t0 = self._mono()
        meter = ByteMeter()
        run = _Run()
        pump = _ProgressPump(progress)
        error: ProbeError | None = None
        try:
            await self._measure(server, settings, meter, run, pump)
        except ProbeError as exc:
            error = exc
        finally:
            meter.snapshot()
        duration_s = self._mono() - t0
        loaded = latency_stats(run.loaded_ms)
        result = ProbeResult(
            started_at=started_at,
            server=server.name,
            mode=settings.mode,
            status="failed" if error else "ok",
            download_bps=None if error or not run.down else run.down.bps,
            upload_bps=None if error or not run.up else run.up.bps,
            latency_ms=None if error else run.latency_ms,
            jitter_ms=None if error else run.jitter_ms,
            loaded_latency_ms=None if error or loaded is None else loaded.median_ms,
            bytes_down=meter.down_bytes,
            bytes_up=meter.up_bytes,
            duration_s=duration_s,
            download_end=None if error or not run.down else run.down.end,
            upload_end=None if error or not run.up else run.up.end,
            meta=dict(run.meta),
            error_kind=error.kind if error else None,
            error=str(error) if error else None,
            trigger=trigger,
        )
        pump.send(_summary(result))
        await pump.flush()
        if error:
            log.info("probe of %s failed (%s): %s", server.name, error.kind, error)
        return result

    # --- phases -------------------------------------------------------------------------------
    async def _measure(
        self,
        server: ServerSpec,
        settings: ProbeSettings,
        meter: ByteMeter,
        run: _Run,
        pump: _ProgressPump,
    ) -> None:
        run.meta["url"] = redact(
            server.base_url if server.kind == "cloudflare" else server.download_url
        )
        async with (
            self._session(settings, meter, "latency", 1) as lat_s,
            self._session(settings, meter, "bulk", 0) as bulk_s,
        ):
            pump.send(f"Measuring latency to {server.name}…")
            samples = await self._latency(lat_s, server, settings.latency_samples + 1)
            stats = latency_stats(samples[1:])  # the first one paid for the connection
            if stats is not None:
                run.latency_ms, run.jitter_ms = stats.median_ms, stats.jitter_ms
                pump.send(f"Latency {stats.median_ms:.1f} ms, jitter {stats.jitter_ms:.1f} ms")
            if server.kind == "cloudflare":
                run.meta.update(await self._meta(lat_s, server))
            streams = streams_for(settings, run.latency_ms)
            if streams != settings.streams:
                settings = replace(settings, streams=streams)
            run.meta["streams"] = str(streams)
            run.down = await self._direction(
                "download", bulk_s, lat_s, server, settings, meter, run, pump
            )
            if settings.upload and server.up_url:
                run.up = await self._direction(
                    "upload", bulk_s, lat_s, server, settings, meter, run, pump
                )
        run.meta["byte_count"] = "tcp" if meter.exact else "body"

    def _session(
        self, settings: ProbeSettings, meter: ByteMeter, group: str, limit: int
    ) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limit,
            socket_factory=meter.socket_factory(group),
            resolver=self._resolver,
            enable_cleanup_closed=False,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_s,
            sock_read=settings.stall_timeout_s,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            read_bufsize=1 << 20,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
            raise_for_status=False,
            trust_env=False,
        )

    async def _latency(
        self, session: aiohttp.ClientSession, server: ServerSpec, count: int
    ) -> list[float]:
        samples = []
        for _ in range(count):
            samples.append(await self._one_latency(session, server))
        return samples

    async def _one_latency(self, session: aiohttp.ClientSession, server: ServerSpec) -> float:
        method = "HEAD" if server.uses_range else "GET"
        url = server.latency_url
        t0 = self._mono()
        try:
            async with session.request(method, url) as resp:
                _check_status(resp, url)
                await resp.read()
                elapsed_ms = (self._mono() - t0) * 1000
                server_ms = server_time_ms(resp.headers.get("Server-Timing"))
        except ProbeError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise translate(exc, url) from exc
        return max(0.0, elapsed_ms - server_ms)

    async def _meta(self, session: aiohttp.ClientSession, server: ServerSpec) -> dict[str, str]:
        base = server.base_url.rstrip("/")
        timeout = aiohttp.ClientTimeout(total=_META_TIMEOUT_S)
        try:
            async with session.get(f"{base}/meta", timeout=timeout) as resp:
                if resp.status == 200:
                    return _parse_meta(await resp.read())
            async with session.get(f"{base}/cdn-cgi/trace", timeout=timeout) as resp:
                if resp.status == 200:
                    return _parse_trace(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("no metadata from %s: %s", server.name, translate(exc, base))
            return {}
        log.warning("no metadata from %s: neither /meta nor /cdn-cgi/trace answered", server.name)
        return {}

    async def _direction(
        self,
        direction: Direction,
        bulk: aiohttp.ClientSession,
        lat: aiohttp.ClientSession,
        server: ServerSpec,
        settings: ProbeSettings,
        meter: ByteMeter,
        run: _Run,
        pump: _ProgressPump,
    ) -> _DirectionResult:
        budget = ByteBudget(settings.max_bytes, settings.streams, settings.request_bytes)
        if direction == "download":
            workers = [
                self._download(bulk, server, budget, i, meter) for i in range(settings.streams)
            ]
        else:
            workers = [
                self._upload(bulk, server, budget, i, meter) for i in range(settings.streams)
            ]

        def counted() -> int:
            return meter.down_bytes if direction == "download" else meter.up_acked_bytes

        est = StableEstimator.from_settings(settings)
        meter.snapshot()
        base = counted()
        t_start = last_t = last_move = self._mono()
        last_b = base
        tasks = [asyncio.create_task(w) for w in workers]
        sampler = None
        if direction == "download":
            sampler = asyncio.create_task(self._loaded(lat, server, settings, run))
        pump.send(f"Testing {direction}…")
        next_progress = t_start + _PROGRESS_EVERY_S
        end: DirectionEnd
        try:
            tick = 1
            while True:
                await asyncio.sleep(max(0.0, t_start + tick * settings.window_s - self._mono()))
                tick += 1
                meter.snapshot()
                now, b = self._mono(), counted()
                est.add(now - last_t, b - last_b)
                if b > last_b:
                    last_move = now
                last_t, last_b = now, b
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if est.stable:
                    end = "stable"
                    break
                if now - t_start >= settings.max_seconds:
                    end = "max_seconds"
                    break
                if b - base >= settings.max_bytes or all(t.done() for t in tasks):
                    end = "max_bytes"
                    break
                if now - last_move >= settings.stall_timeout_s:
                    raise ProbeTimeoutError(
                        f"{direction} stalled: no data for {now - last_move:.1f} s"
                    )
                if now >= next_progress:
                    next_progress = now + _PROGRESS_EVERY_S
                    pump.send(f"{direction.capitalize()} {format_bps(est.estimate_bps)}…")
        finally:
            meter.snapshot()
            meter.abort("bulk")  # nothing may keep moving once the direction has ended
            for task in [*tasks, *([sampler] if sampler else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([sampler] if sampler else []), return_exceptions=True)
        result = _DirectionResult(est.estimate_bps, end, counted() - base, self._mono() - t_start)
        pump.send(
            f"{direction.capitalize()} {format_bps(result.bps)} "
            f"({end.replace('_', ' ')}, {format_bytes(result.moved_bytes)} in {result.seconds:.1f} s)"
        )
        log.debug(
            "%s: %s, ended by %s after %.2f s, %d windows",
            direction,
            format_bps(result.bps),
            end,
            result.seconds,
            len(est.windows),
        )
        return result

    async def _loaded(
        self, session: aiohttp.ClientSession, server: ServerSpec, settings: ProbeSettings, run: _Run
    ) -> None:
        await asyncio.sleep(settings.ramp_s)
        while True:
            t0 = self._mono()
            try:
                run.loaded_ms.append(await self._one_latency(session, server))
            except ProbeError as exc:  # the download itself reports real trouble
                log.debug("loaded latency sample failed: %s", exc)
            await asyncio.sleep(max(0.0, t0 + settings.loaded_interval_s - self._mono()))

    # --- streams ------------------------------------------------------------------------------
    async def _download(
        self,
        session: aiohttp.ClientSession,
        server: ServerSpec,
        budget: ByteBudget,
        stream: int,
        meter: ByteMeter,
    ) -> None:
        while (want := budget.next_request(stream)) > 0:
            url = server.down_url(want)
            headers = {"Range": f"bytes=0-{want - 1}"} if server.uses_range else {}
            got = 0
            try:
                async with session.get(url, headers=headers) as resp:
                    _check_status(resp, url)
                    length = resp.content_length
                    if not server.uses_range and length is not None and length != want:
                        raise ProbeProtocolError(
                            f"{redact(url)} announced {length} bytes, not the {want} asked for"
                            " (not a speed-test endpoint?)"
                        )
                    async for chunk in resp.content.iter_any():
                        got += len(chunk)
                        meter.app_down += len(chunk)
                        if got >= want:  # a server ignoring Range sends the whole file
                            break
            except ProbeError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                raise translate(exc, url) from exc
            if got == 0:
                raise ProbeProtocolError(f"{redact(url)} answered with an empty body")
            budget.refund(stream, want - got)

    async def _upload(
        self,
        session: aiohttp.ClientSession,
        server: ServerSpec,
        budget: ByteBudget,
        stream: int,
        meter: ByteMeter,
    ) -> None:
        url = server.up_url
        assert url is not None
        while (want := budget.next_request(stream)) > 0:
            headers = {"Content-Length": str(want), "Content-Type": "application/octet-stream"}
            try:
                async with session.post(url, data=_zeros(want, meter), headers=headers) as resp:
                    _check_status(resp, url)
                    await resp.read()
            except ProbeError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                raise translate(exc, url) from exc


async def _zeros(n_bytes: int, meter: ByteMeter) -> AsyncIterator[memoryview]:
    """An upload body of `n_bytes` zeros, 1 MiB at a time, without ever holding more."""
    left = n_bytes
    while left > 0:
        piece = _CHUNK[: min(left, len(_CHUNK))]
        meter.app_up += len(piece)
        left -= len(piece)
        yield piece


def _check_status(resp: aiohttp.ClientResponse, url: str) -> None:
    if resp.status >= 400:
        raise ProbeHTTPError(f"HTTP {resp.status} {resp.reason or ''} from {redact(url)}".strip())
    if resp.status >= 300:
        raise ProbeHTTPError(f"HTTP {resp.status} redirect from {redact(url)} (use the final URL)")


def _parse_meta(raw: bytes) -> dict[str, str]:
    """Cloudflare's ``/meta`` JSON -> ip, isp, asn, colo, city, country."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("/meta is not a JSON object")
    keys = {
        "clientIp": "ip",
        "asOrganization": "isp",
        "asn": "asn",
        "colo": "colo",
        "city": "city",
        "country": "country",
    }
    out = {ours: str(data[theirs]) for theirs, ours in keys.items() if data.get(theirs)}
    if "asn" in out and out["asn"].isdigit():
        out["asn"] = f"AS{out['asn']}"
    return out


def _parse_trace(raw: bytes) -> dict[str, str]:
    """Cloudflare's ``/cdn-cgi/trace`` ``key=value`` lines -> ip, colo, country."""
    pairs = dict(
        line.split("=", 1) for line in raw.decode("utf-8", "replace").splitlines() if "=" in line
    )
    keys = {"ip": "ip", "colo": "colo", "loc": "country"}
    return {ours: pairs[theirs].strip() for theirs, ours in keys.items() if pairs.get(theirs)}


def _summary(result: ProbeResult) -> str:
    if not result.ok:
        return f"Speed test failed ({result.error_kind}): {result.error}"
    lat = f"{result.latency_ms:.1f} ms" if result.latency_ms is not None else "n/a"
    return (
        f"↓ {format_bps(result.download_bps)}  ↑ {format_bps(result.upload_bps)}  "
        f"latency {lat}  ({format_bytes(result.bytes_down + result.bytes_up)} used)"
    )
