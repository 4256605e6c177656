"""/usage round trip through Telegram with a chart, and the RSS of the service with every bot configured.

Usage: python benchmarks/bench_bots.py [--requests 20]

A real `capbot run` subprocess talks to the fake Telegram Bot API (tests/fake_telegram.py) on
loopback; Discord is configured too (its gateway is unreachable here, so discord.py is loaded and
keeps retrying, as on a box whose Discord is down) and so is an Apprise URL. Reference in the same
run: the RSS of the same service with no bots, and the fake server's own answer time for getMe.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from _common import rss_mib, start_capbot, wait_for

from tests.builders import seeded_store
from tests.fake_telegram import FakeTelegram

TOKEN = "777:BENCH-token"
OWNER = 4242


def _seed(work: Path) -> None:
    now = datetime.now(UTC)
    rows = [
        (now - timedelta(minutes=15 * i), "eth0", 40_000_000, 4_000_000) for i in range(96 * 25)
    ]
    seeded_store(work / "capbot.db", "bench", rows).close()


def _children_rss(pid: int) -> float:
    total = 0.0
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += rss_mib(int(child))[0]
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    async with FakeTelegram(TOKEN) as fake:
        base = (
            "host: bench\nplan:\n  cap: 1 TB\n  timezone: UTC\nprobe:\n  enabled: false\n"
            "rules:\n  outage:\n    check_url: http://127.0.0.1:9/\n    check_interval: 3600\n"
        )
        bots = (
            f"telegram:\n  token: '{TOKEN}'\n  allowed_user_ids: [{OWNER}]\n"
            f"  api_base_url: {fake.api_base_url}\n  file_base_url: {fake.file_base_url}\n"
            "discord:\n  token: 'MTIz.bench.token'\n  allowed_user_ids: [1]\n"
            "notify:\n  urls: ['json://127.0.0.1:9/bench?cto=1&rto=1']\n"
        )
        ref, ref_work = start_capbot(base)
        wait_for(ref_work / "capbot.db")
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="capbot-bots-"))
        _seed(work)
        proc, work = start_capbot(base + bots, work)
        await fake.wait_for_call("setMyCommands", timeout_s=60)
        await asyncio.sleep(5)
        idle_rss, _ = rss_mib(proc.pid)
        ref_rss, _ = rss_mib(ref.pid)

        times: list[float] = []
        for i in range(args.requests + 1):
            if i:
                # A person asks now and then; Telegram allows ~1 message/s per chat, and the bot
                # paces itself to that, so back-to-back requests would measure the pacing.
                await asyncio.sleep(1.1)
            before = len(fake.calls_of("sendPhoto"))
            t0 = time.perf_counter()
            fake.push_message(OWNER, OWNER, "/usage")
            await fake.wait_for(
                lambda _c, n=before: len(fake.calls_of("sendPhoto")) > n, timeout_s=60
            )
            times.append(time.perf_counter() - t0)
            if i == 0:
                worker_rss = _children_rss(proc.pid)
        first, warm = times[0], sorted(times[1:])
        _, peak = rss_mib(proc.pid)
        after_rss, _ = rss_mib(proc.pid)
        for p in (proc, ref):
            p.send_signal(signal.SIGTERM)
            p.wait(20)

    p50 = statistics.median(warm) * 1000
    p95 = warm[int(len(warm) * 0.95) - 1] * 1000
    print(f"/usage round trip with chart, fake Telegram on loopback ({len(warm)} warm requests):")
    print(f"  first (chart worker cold start): {first * 1000:.0f} ms")
    print(f"  warm p50 {p50:.0f} ms (limit 300), p95 {p95:.0f} ms")
    print("RSS of `capbot run` with Telegram + Discord + Apprise configured:")
    print(
        f"  idle {idle_rss:.1f} MiB (limit 110), after {len(times)} charts {after_rss:.1f} MiB, peak {peak:.1f} MiB"
    )
    print(f"  chart worker process while alive: {worker_rss:.1f} MiB (exits after 5 idle minutes)")
    print(
        f"reference, same service without bots: {ref_rss:.1f} MiB -> bots add {idle_rss - ref_rss:.1f} MiB"
    )


if __name__ == "__main__":
    asyncio.run(main())
