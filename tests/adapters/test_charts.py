"""Tests for the chart renderer: PNG output of each chart, the worker process and lazy imports."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from capbot.adapters.charts import (
    Chart,
    ChartError,
    ChartRenderer,
    DailyUsageChart,
    HourlyUsageChart,
    SpeedHistoryChart,
    decode_request,
    encode_request,
    render_png,
)
from capbot.errors import CapbotError

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DAILY = DailyUsageChart(
    title="Usage · cycle Mar 12 – Apr 10",
    days=tuple((f"2025-03-{12 + i:02d}", (20 + i) * 10**9, 2 * 10**9) for i in range(20)),
    counted_bytes=tuple((18 + i) * 10**9 for i in range(20)),
    daily_budget_bytes=10**12 / 30,
    cap_bytes=10**12,
    projected_total_bytes=1_050 * 10**9,
    today_index=12,
)
SPEED = SpeedHistoryChart(
    title="Speed · last 24 h",
    points=tuple(
        (f"2025-03-20T{h:02d}:00:00+00:00", None if h == 5 else 9e7, 2e7, 10 <= h <= 12)
        for h in range(24)
    ),
    tz="Europe/Berlin",
    plan_down_bps=1e8,
    plan_up_bps=2e7,
    baseline_down_bps=9.2e7,
)
HOURLY = HourlyUsageChart(
    title="Usage by hour", hours=tuple((h, h * 50_000_000, 4_000_000) for h in range(24))
)
CHARTS: list[Chart] = [DAILY, SPEED, HOURLY]
EMPTY: list[Chart] = [
    DailyUsageChart("Usage", ()),
    SpeedHistoryChart("Speed", ()),
    SpeedHistoryChart("Speed", (("2025-03-20T10:00:00Z", None, None, True),)),
    HourlyUsageChart("Hourly", ()),
]


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def corner_luminance(png: bytes) -> float:
    """Mean luminance (0-255) of the top-left pixel, i.e. the theme's background."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        r, g, b = image.convert("RGB").getpixel((2, 2))  # type: ignore[misc]
    return (r + g + b) / 3


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: type(c).__name__)
def test_each_chart_renders_a_1200x700_png_in_both_themes(chart: Chart, theme: str) -> None:
    """Every chart type renders a decodable 1200x700 PNG whose background follows the theme."""
    png = render_png(chart, theme)  # type: ignore[arg-type]
    assert png_size(png) == (1200, 700)
    luminance = corner_luminance(png)
    assert luminance > 200 if theme == "light" else luminance < 60


@pytest.mark.parametrize("chart", EMPTY, ids=lambda c: f"{type(c).__name__}-{len(str(c))}")
def test_empty_or_all_none_data_renders_a_no_data_chart(chart: Chart) -> None:
    """Empty data (or only failed probes) gives a 'no data yet' PNG rather than an exception."""
    assert png_size(render_png(chart, "dark")) == (1200, 700)


def test_zero_usage_and_lone_probe_render() -> None:
    """A period with zero usage so far and a single probe both render without axis errors."""
    zero = DailyUsageChart("New cycle", (("2025-04-01", 0, 0), ("2025-04-02", 0, 0)), today_index=0)
    lone = SpeedHistoryChart("Speed", (("2025-03-20T10:00:00", 5e5, None, False),))
    assert png_size(render_png(zero)) == (1200, 700)
    assert png_size(render_png(lone)) == (1200, 700)


@pytest.mark.parametrize(
    "chart",
    [
        HourlyUsageChart("bad hour", ((24, 1, 1),)),
        DailyUsageChart("bad counted", (("2025-03-01", 1, 1),), counted_bytes=(1, 2)),
        DailyUsageChart("bad today", (("2025-03-01", 1, 1),), today_index=3),
        SpeedHistoryChart("bad tz", (("2025-03-20T10:00:00Z", 1e6, 1e6, False),), tz="Mars/Base"),
        SpeedHistoryChart("bad time", (("yesterday", 1e6, 1e6, False),)),
    ],
    ids=lambda c: c.title,
)
def test_bad_data_raises_chart_error(chart: Chart) -> None:
    """Data that cannot be drawn raises ChartError, a CapbotError, not a library exception."""
    with pytest.raises(ChartError):
        render_png(chart)
    assert issubclass(ChartError, CapbotError)


@pytest.mark.parametrize("chart", [*CHARTS, *EMPTY], ids=lambda c: type(c).__name__)
def test_request_encoding_round_trips(chart: Chart) -> None:
    """A chart survives the worker's JSON wire format unchanged (tuples stay tuples)."""
    assert decode_request(encode_request(chart, "dark")) == (chart, "dark")


def test_malformed_request_is_a_chart_error() -> None:
    """A garbage request payload is a ChartError, so the worker answers instead of dying."""
    with pytest.raises(ChartError):
        decode_request(b'{"type": "pie", "theme": "light", "chart": {}}')


async def test_thread_mode_renders_in_process() -> None:
    """Thread mode renders a PNG without starting a worker process."""
    renderer = ChartRenderer(mode="thread", theme="dark")
    png = await renderer.render(HOURLY)
    assert png_size(png) == (1200, 700)
    assert renderer.worker_pid is None
    await renderer.aclose()


async def test_process_worker_renders_serialises_and_reports_errors() -> None:
    """One worker serves concurrent requests in turn and answers a bad chart with ChartError."""
    renderer = ChartRenderer(theme="dark", idle_timeout_s=30)
    try:
        pngs = await asyncio.gather(*(renderer.render(c) for c in CHARTS))
        assert [png_size(p) for p in pngs] == [(1200, 700)] * 3
        pid = renderer.worker_pid
        assert pid is not None and pid != os.getpid()
        with pytest.raises(ChartError, match="outside 0-23"):
            await renderer.render(HourlyUsageChart("bad", ((30, 1, 1),)))
        assert renderer.worker_pid == pid  # a render error does not cost a restart
        assert png_size(await renderer.render(HOURLY, theme="light")) == (1200, 700)
    finally:
        await renderer.aclose()
    assert renderer.worker_pid is None
    assert not _alive(pid)
    with pytest.raises(ChartError, match="closed"):
        await renderer.render(HOURLY)


async def test_killed_worker_is_restarted_by_the_next_request() -> None:
    """After the worker is killed, the next render starts a fresh worker and succeeds."""
    renderer = ChartRenderer(idle_timeout_s=30)
    try:
        await renderer.render(HOURLY)
        first = renderer.worker_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await _until(lambda: not _alive(first))
        assert png_size(await renderer.render(DAILY)) == (1200, 700)
        assert renderer.worker_pid not in (None, first)
    finally:
        await renderer.aclose()


async def test_worker_exits_after_idle_timeout_and_comes_back() -> None:
    """The worker exits by itself after idle_timeout_s idle; the next render restarts it."""
    renderer = ChartRenderer(idle_timeout_s=0.5)
    try:
        await renderer.render(HOURLY)
        first = renderer.worker_pid
        assert first is not None
        await _until(lambda: renderer.worker_pid is None, timeout_s=10)
        assert not _alive(first)
        assert png_size(await renderer.render(HOURLY)) == (1200, 700)
        assert renderer.worker_pid not in (None, first)
    finally:
        await renderer.aclose()


async def test_cancelled_render_discards_the_worker_and_next_render_works() -> None:
    """Cancelling a render mid-flight kills that worker (its answer would be out of step)."""
    renderer = ChartRenderer(idle_timeout_s=30)
    try:
        await renderer.warm()
        first = renderer.worker_pid
        task = asyncio.create_task(renderer.render(DAILY))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert first is not None and not _alive(first)
        assert png_size(await renderer.render(DAILY)) == (1200, 700)
    finally:
        await renderer.aclose()


def test_service_process_never_imports_matplotlib() -> None:
    """Importing the package and rendering in process mode leave matplotlib out of the caller."""
    code = (
        "import asyncio, sys\n"
        "from capbot.adapters.charts import ChartRenderer, HourlyUsageChart\n"
        "assert 'matplotlib' not in sys.modules, 'imported at package import'\n"
        "async def main():\n"
        "    r = ChartRenderer()\n"
        "    png = await r.render(HourlyUsageChart('t', ((1, 2, 3),)))\n"
        "    await r.aclose()\n"
        "    return png\n"
        "assert asyncio.run(main())[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib' not in sys.modules, 'imported by a process-mode render'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _alive(pid: int | None) -> bool:
    """True while `pid` exists and is not a zombie."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition()` until it is true, failing after `timeout_s` (real processes take time)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
