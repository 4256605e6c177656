"""Render the README's example charts from a seeded database, through the same code the bots use.

Usage: python scripts/make_example_charts.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capbot.adapters.charts import ChartRenderer
from capbot.adapters.store.usage import Store
from capbot.core.charts import HourlyUsageChart
from capbot.core.model import ProbeResult, UsageRow
from capbot.core.report import PlanRules
from capbot.services.charts_for import daily_usage_chart, speed_history_chart
from capbot.services.usage import PlanView, UsageService

TZ = ZoneInfo("Europe/Berlin")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
NOW = datetime(2026, 11, 22, 20, 30, tzinfo=TZ).astimezone(UTC)


def seed(store: Store) -> None:
    """Three weeks of evening-heavy household traffic and hourly probes that sag after 700 GB."""
    rnd = random.Random(7)
    start = NOW - timedelta(days=40)
    buckets: list[UsageRow] = []
    ts = int(start.timestamp()) // 900 * 900
    end = int(NOW.timestamp())
    while ts < end:
        hour = datetime.fromtimestamp(ts, TZ).hour
        evening = 1 + 3 * math.exp(-((hour - 21) ** 2) / 6)
        rx = int(rnd.uniform(0.4, 1.6) * 90_000_000 * evening)
        buckets.append(UsageRow("eth0", ts, rx, rx // 12))
        ts += 900
    store.write_batch([], buckets, [])
    for h in range(0, 14 * 24, 3):
        at = NOW - timedelta(hours=h)
        slow = h < 60 and at.astimezone(TZ).hour in range(18, 24)
        down = rnd.gauss(38e6 if slow else 94e6, 2e6)
        store.add_probe(
            ProbeResult(
                started_at=at,
                server="cloudflare",
                mode="economy",
                download_bps=down,
                upload_bps=rnd.gauss(19e6, 0.6e6),
                latency_ms=rnd.gauss(14, 1.5),
                jitter_ms=abs(rnd.gauss(1.2, 0.4)),
                bytes_down=24_000_000,
                bytes_up=6_000_000,
            )
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a one-off script, nothing else runs
    store = Store(f"sqlite:///{tempfile.mkdtemp()}/example.db", "example")
    store.open()
    seed(store)
    usage = UsageService(
        store, PlanView(PlanRules(cap_bytes=1_000_000_000_000), 1, TZ), clock=lambda: NOW
    )
    summary = usage.report(usage.cycle(NOW), NOW)
    day = usage.period("today", NOW)
    probes = store.probes(200, NOW - timedelta(days=14), ("ok",))
    charts = {
        "usage": daily_usage_chart(summary, NOW.astimezone(TZ).date()),
        "speed": speed_history_chart(probes, "Europe/Berlin", 100e6, 20e6, 50, 60),
        "hourly": HourlyUsageChart(
            title=f"Usage by hour, {day.label}", hours=tuple(usage.hourly(day))
        ),
    }
    renderer = ChartRenderer(mode="thread")
    for name, spec in charts.items():
        for theme in ("light", "dark"):
            png = await renderer.render(spec, theme=theme)
            path = out / f"{name}-{theme}.png"
            path.write_bytes(png)
            print(f"wrote {path} ({len(png) // 1024} KiB)")
    await renderer.aclose()


if __name__ == "__main__":
    asyncio.run(main())
