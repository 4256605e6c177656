"""One simulated year of usage for one interface: database size, `usage cycle` query time, CLI wall time.

Usage: python benchmarks/bench_year.py

The database is filled through the real Store.write_batch in the same shape the sampler writes
(15-minute rows for a year, minute rows for the retention), then queried through UsageService.
Reference in the same run: the same cycle total as one raw sqlite3 SUM, and `python -c pass`.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capbot.adapters.store.usage import Store
from capbot.app import usage_service
from capbot.config import load_settings
from capbot.core.model import UsageRow


def fill(store: Store, now: datetime, retention_days: int) -> None:
    rnd = random.Random(1)
    end = int(now.timestamp()) // 60 * 60
    start = end - 365 * 86400
    minute_floor = end - retention_days * 86400
    batch_m: list[UsageRow] = []
    batch_b: dict[int, list[int]] = {}
    for ts in range(start, end, 60):
        rx, tx = rnd.randint(0, 40_000_000), rnd.randint(0, 4_000_000)
        if ts >= minute_floor:
            batch_m.append(UsageRow("eth0", ts, rx, tx))
        acc = batch_b.setdefault(ts - ts % 900, [0, 0])
        acc[0] += rx
        acc[1] += tx
        if len(batch_b) >= 96 * 7:  # a week at a time keeps memory small
            store.write_batch(
                batch_m, [UsageRow("eth0", t, v[0], v[1]) for t, v in batch_b.items()], []
            )
            batch_m, batch_b = [], {}
    store.write_batch(batch_m, [UsageRow("eth0", t, v[0], v[1]) for t, v in batch_b.items()], [])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="capbot-year-"))
    cfg = work / "config.yaml"
    cfg.write_text(
        f"host: bench\nstorage:\n  data_dir: {work}\nplan:\n  cap: 1 TB\n  cycle_start_day: 1\n"
        "  timezone: Europe/Berlin\n"
    )
    settings = load_settings(str(cfg), env={})
    now = datetime.now(UTC)
    store = Store(settings.database_url, settings.host)
    store.open()
    t0 = time.perf_counter()
    fill(store, now, settings.storage.minute_retention_days)
    fill_s = time.perf_counter() - t0
    store.close()  # checkpoint the WAL so the file size is the database's
    size = os.path.getsize(work / "capbot.db")

    store = Store(settings.database_url, settings.host)
    store.open()
    service = usage_service(settings, store)
    period = service.cycle(now)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        summary = service.report(period, now)
        times.append(time.perf_counter() - t)
    q_ms = statistics.median(times) * 1000

    raw = sqlite3.connect(work / "capbot.db")
    ref = []
    for _ in range(30):
        t = time.perf_counter()
        raw.execute(
            "SELECT sum(rx_bytes), sum(tx_bytes) FROM usage_15m WHERE host='bench' AND ts >= ? AND ts < ?",
            (int(period.start.timestamp()), int(period.end.timestamp())),
        ).fetchone()
        ref.append(time.perf_counter() - t)
    ref_ms = statistics.median(ref) * 1000

    def wall(cmd: list[str]) -> float:
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
        return statistics.median(walls)

    cli_s = wall([sys.executable, "-m", "capbot", "usage", "cycle", "--config", str(cfg)])
    py_s = wall([sys.executable, "-c", "pass"])
    print(
        f"filled one year (15-min rows) + {settings.storage.minute_retention_days} days of minute rows "
        f"in {fill_s:.1f} s"
    )
    print(f"database file: {size / 2**20:.2f} MiB (limit 10 MiB)")
    print(
        f"usage cycle report (query + rules), median of 30: {q_ms:.2f} ms (limit 10 ms); "
        f"counted {summary.report.counted_bytes / 1e9:.1f} GB"
    )
    print(f"reference raw sqlite3 SUM of the cycle: {ref_ms:.3f} ms -> ratio {q_ms / ref_ms:.1f}")
    print(
        f"`capbot usage cycle` wall, median of 5: {cli_s:.2f} s (limit 1.5 s); "
        f"`python -c pass`: {py_s:.3f} s -> ratio {cli_s / py_s:.1f}"
    )


if __name__ == "__main__":
    main()
