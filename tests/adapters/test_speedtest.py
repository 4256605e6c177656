"""Tests for the speed probe against the local speed-test server: accuracy, bytes, metadata, faults."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from dataclasses import replace
from typing import Any

import aiohttp.abc
import pytest

from capbot.adapters.speedtest import ProbeSettings, ServerSpec, SpeedProbe
from capbot.core.model import ProbeResult
from tests.speedserver import ServerConfig, SpeedServer

MBIT = 1_000_000


def fast(**changes: Any) -> ProbeSettings:
    """Economy settings with test-friendly timeouts."""
    base: dict[str, Any] = dict(stall_timeout_s=0.5, connect_timeout_s=1.0, latency_samples=10)
    if "streams" in changes:
        base["auto_streams"] = False  # the count asked for, even on a sub-ms loopback path
    base.update(changes)
    return replace(ProbeSettings.for_mode("economy"), **base)


async def probe(srv: SpeedServer, settings: ProbeSettings | None = None, **kw: Any) -> ProbeResult:
    """Run one probe against the server as a Cloudflare-compatible base URL."""
    spec = kw.pop("spec", None) or ServerSpec.from_url(srv.base_url, name="local")
    return await SpeedProbe(**kw).run(spec, settings or fast(), trigger="manual")


# --- accuracy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate_mbps", [20, 100, 500])
async def test_measures_shaped_rate_within_5_percent(rate_mbps: int) -> None:
    """Download and upload land within +/-5 % of the server's token-bucket rate, cheaply."""
    rate = rate_mbps * MBIT
    async with SpeedServer(ServerConfig.shaped(rate)) as srv:
        result = await probe(srv)
    assert result.ok, result.error
    assert result.download_bps == pytest.approx(rate, rel=0.05)
    assert result.upload_bps == pytest.approx(rate, rel=0.05)
    assert result.download_end == "stable" and result.upload_end == "stable"
    # stable stop: about 1.2 s per direction, far below max_seconds
    per_direction_bytes = rate / 8 * 2.0
    assert result.bytes_down < per_direction_bytes and result.bytes_up < per_direction_bytes
    assert result.latency_ms is not None and result.jitter_ms is not None
    assert result.loaded_latency_ms is not None
    assert result.duration_s < 5


async def test_bytes_are_exact_when_every_request_completes() -> None:
    """With a budget that ends on request boundaries the counts equal the server's, byte for byte."""
    async with SpeedServer() as srv:
        settings = fast(max_bytes=3_000_000, request_bytes=500_000, streams=2)
        result = await probe(srv, settings)
        await asyncio.sleep(0.05)  # let the server account the last reads
        assert result.ok, result.error
        assert result.meta["streams"] == "2"
        assert result.download_end == "max_bytes" and result.upload_end == "max_bytes"
        assert result.meta["byte_count"] == "tcp"
        # HTTP heads and bodies, latency and metadata requests included
        assert result.bytes_down == srv.stats.bytes_sent
        assert result.bytes_up == srv.stats.bytes_received
        assert 3_000_000 < result.bytes_down < 3_100_000
        assert 3_000_000 < result.bytes_up < 3_100_000
        # 1 warm-up + 10 latency samples + 6 downloads; no loaded samples (done before the ramp)
        assert srv.stats.requests["/__down"] == 17 and srv.stats.requests["/__up"] == 6


async def test_stopped_streams_stop_moving_bytes() -> None:
    """After a stable stop nothing keeps flowing: the server sees no more bytes once run returns."""
    async with SpeedServer(ServerConfig.shaped(50 * MBIT)) as srv:
        result = await probe(srv)
        assert result.ok
        await asyncio.sleep(0.05)
        sent, received = srv.stats.bytes_sent, srv.stats.bytes_received
        await asyncio.sleep(0.5)
        assert (srv.stats.bytes_sent, srv.stats.bytes_received) == (sent, received)
        assert not srv.conns
        # what the server wrote but we never read is at most what sat in socket buffers
        assert 0 <= sent - result.bytes_down < 4_000_000
        assert result.bytes_up >= received


async def test_metadata_from_meta_json() -> None:
    """Cloudflare's /meta JSON gives ip, isp, AS number, colo, city and country."""
    async with SpeedServer(ServerConfig.shaped(100 * MBIT)) as srv:
        result = await probe(srv, fast(upload=False, max_bytes=2_000_000))
    assert result.ok
    assert {k: result.meta[k] for k in ("ip", "isp", "asn", "colo", "city", "country")} == {
        "ip": "127.0.0.1",
        "isp": "Loopback Test ISP",
        "asn": "AS64500",
        "colo": "LCL",
        "city": "Testville",
        "country": "ZZ",
    }
    assert result.upload_bps is None and result.upload_end is None
    assert result.server == "local" and result.trigger == "manual"


async def test_metadata_falls_back_to_trace() -> None:
    """Without /meta the probe reads /cdn-cgi/trace (ip, colo, loc)."""
    async with SpeedServer(ServerConfig(meta_json=False)) as srv:
        result = await probe(srv, fast(upload=False, max_bytes=1_000_000))
    assert result.ok
    assert result.meta["ip"] == "127.0.0.1"
    assert result.meta["colo"] == "LCL" and result.meta["country"] == "ZZ"
    assert "isp" not in result.meta


@pytest.mark.parametrize("range_support", [True, False])
async def test_generic_file_server(range_support: bool) -> None:
    """A generic large file (with or without Range) plus an upload URL is measured correctly."""
    config = ServerConfig.shaped(100 * MBIT, range_support=range_support)
    async with SpeedServer(config) as srv:
        spec = ServerSpec(
            name="mirror",
            kind="generic",
            download_url=f"{srv.base_url}/file.bin",
            upload_url=f"{srv.base_url}/upload",
        )
        # the Range-less variant skips the upload: it is the same code path, and time counts
        result = await probe(srv, fast(upload=range_support), spec=spec)
        assert srv.stats.requests.get("/__down", 0) == 0
    assert result.ok, result.error
    assert result.server == "mirror"
    assert result.download_bps == pytest.approx(100 * MBIT, rel=0.05)
    if range_support:
        assert result.upload_bps == pytest.approx(100 * MBIT, rel=0.05)
    assert result.meta.get("ip") is None  # generic servers have no metadata


async def test_progress_lines_and_a_broken_progress_callback() -> None:
    """Progress gets phase lines and a summary; a callback that raises does not fail the probe."""
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            raise RuntimeError("chat API down")

    async with SpeedServer(ServerConfig.shaped(100 * MBIT)) as srv:
        spec = ServerSpec.from_url(srv.base_url)
        result = await SpeedProbe().run(spec, fast(upload=False), progress)
    assert result.ok
    assert any("Latency" in line for line in lines)
    assert "↓" in lines[-1] and "used" in lines[-1]


async def test_upload_memory_stays_small() -> None:
    """Uploading 200 MB never holds the body in memory: the traced peak stays under 16 MB."""
    async with SpeedServer() as srv:
        settings = fast(max_bytes=200_000_000, request_bytes=100_000_000, streams=2)
        tracemalloc.start()
        try:
            result = await probe(srv, settings)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.ok, result.error
    assert result.bytes_up > 150_000_000
    assert peak < 16_000_000


# --- failures ----------------------------------------------------------------------------------
async def assert_failed(result: ProbeResult, kind: str, *words: str) -> None:
    """A failed result of `kind` whose message has `words`, and no numbers at all."""
    assert result.status == "failed"
    assert result.error_kind == kind, result.error
    assert result.error and all(w in result.error for w in words), result.error
    assert result.download_bps is None and result.upload_bps is None
    assert result.latency_ms is None and result.loaded_latency_ms is None


async def test_connection_refused() -> None:
    """A closed port gives a failed 'connect' result naming the address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    spec = ServerSpec.from_url(f"http://127.0.0.1:{port}", name="gone")
    result = await SpeedProbe().run(spec, fast())
    await assert_failed(result, "connect", f"127.0.0.1:{port}")
    assert result.server == "gone"


class FailingResolver(aiohttp.abc.AbstractResolver):
    """Fails every lookup the way getaddrinfo does for an unknown name."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> Any:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_dns_failure() -> None:
    """A name that does not resolve gives a failed 'connect' result saying DNS."""
    spec = ServerSpec.from_url("http://speed.invalid", name="nowhere")
    result = await SpeedProbe(resolver=FailingResolver()).run(spec, fast())
    await assert_failed(result, "connect", "DNS", "speed.invalid")


async def test_http_5xx() -> None:
    """A 503 from the speed endpoint gives a failed 'http' result with the status."""
    async with SpeedServer(ServerConfig(fault="5xx")) as srv:
        result = await probe(srv)
    await assert_failed(result, "http", "503")


async def test_http_5xx_on_upload_only() -> None:
    """An upload endpoint answering 503 fails the probe even though the download worked."""
    async with SpeedServer(
        ServerConfig.shaped(100 * MBIT, fault="5xx", fault_paths=("/__up",))
    ) as srv:
        result = await probe(srv)
    await assert_failed(result, "http", "503", "/__up")
    assert result.bytes_down > 1_000_000  # the bytes it did move are still recorded


async def test_stall_mid_body() -> None:
    """A body that stops after 256 KiB gives a failed 'timeout' result within the stall timeout."""
    config = ServerConfig(fault="stall", fault_skip_requests=11, fault_paths=("/__down",))
    async with SpeedServer(config) as srv:
        result = await probe(srv, fast(stall_timeout_s=0.4))
    await assert_failed(result, "timeout", "stalled")
    assert result.bytes_down >= 256 * 1024
    assert result.duration_s < 3


async def test_stall_mid_upload() -> None:
    """A server that stops reading an upload gives a failed 'timeout' result."""
    config = ServerConfig(fault="stall", fault_paths=("/__up",))
    async with SpeedServer(config) as srv:
        result = await probe(srv, fast(stall_timeout_s=0.4, max_bytes=20_000_000))
    await assert_failed(result, "timeout", "upload stalled")


async def test_truncated_body() -> None:
    """Content-Length longer than what is sent gives a failed 'protocol' result."""
    config = ServerConfig(fault="truncate", fault_paths=("/__down",), fault_skip_requests=11)
    async with SpeedServer(config) as srv:
        result = await probe(srv)
    await assert_failed(result, "protocol", "truncated")


async def test_garbage_response() -> None:
    """Bytes that are not HTTP give a failed 'protocol' result."""
    async with SpeedServer(ServerConfig(fault="garbage")) as srv:
        result = await probe(srv)
    await assert_failed(result, "protocol", "not a valid HTTP response")


async def test_captive_portal_page() -> None:
    """A 200 HTML page instead of N bytes is refused as not a speed-test endpoint."""
    config = ServerConfig(fault="html", fault_paths=("/__down",), fault_skip_requests=11)
    async with SpeedServer(config) as srv:
        result = await probe(srv)
    await assert_failed(result, "protocol", "not a speed-test endpoint")


async def test_garbage_meta_is_not_fatal() -> None:
    """Broken metadata endpoints are logged and skipped; the probe still measures."""
    config = ServerConfig.shaped(
        100 * MBIT, fault="garbage", fault_paths=("/meta", "/cdn-cgi/trace")
    )
    async with SpeedServer(config) as srv:
        result = await probe(srv, fast(upload=False))
    assert result.ok, result.error
    assert "ip" not in result.meta


async def test_default_probe_uses_one_stream_on_a_lan_path() -> None:
    """On loopback (sub-ms round trip) the default probe opens a single stream and says so."""
    async with SpeedServer(ServerConfig.shaped(50e6)) as srv:
        result = await probe(srv, fast(max_bytes=5_000_000))
        assert result.ok, result.error
        assert result.meta["streams"] == "1"
