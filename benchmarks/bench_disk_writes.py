"""Bytes `capbot run` writes to disk per day at default settings, from /proc/<pid>/io.

Usage: python benchmarks/bench_disk_writes.py [--seconds 300] [--warmup 480]

The window starts after a warm-up that covers start-up's one-off writes (schema, the first
speed probe a few minutes in, rule states): a service runs for months, so a day is steady state.

Reference in the same run: the write volume of committing one row per sample (every 5 s)
into the same kind of SQLite database, the naive design capbot's batching replaces.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import io_bytes, start_capbot, wait_for

DAY_S = 86_400


def naive_reference(seconds: float) -> float:
    """Write bytes/day of one autocommitted row every 5 s (WAL, 4 KiB pages), measured in-process."""
    import os

    path = Path(tempfile.mkdtemp()) / "naive.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE u (iface TEXT, ts INTEGER, rx INTEGER, tx INTEGER, PRIMARY KEY (iface, ts))"
    )
    before = io_bytes(os.getpid())["write_bytes"]
    n = int(seconds / 5)
    for i in range(n):  # the same number of samples capbot takes, without waiting between them
        conn.execute("INSERT INTO u VALUES ('eth0', ?, 1000, 100)", (1_700_000_000 + 5 * i,))
    conn.close()
    written = io_bytes(os.getpid())["write_bytes"] - before
    return written / seconds * DAY_S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=480.0)
    args = parser.parse_args()
    proc, work = start_capbot("")
    wait_for(work / "capbot.db")
    time.sleep(args.warmup)
    before = io_bytes(proc.pid)
    t0 = time.monotonic()
    time.sleep(args.seconds)
    after = io_bytes(proc.pid)
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    write_day = (after["write_bytes"] - before["write_bytes"]) / elapsed * DAY_S
    wchar_day = (after["wchar"] - before["wchar"]) / elapsed * DAY_S
    ref_day = naive_reference(elapsed)
    print(f"window: {elapsed:.0f} s at defaults (sample every 5 s, flush every 60 s)")
    print(f"capbot write_bytes: {write_day / 1e6:.2f} MB/day (limit 20 MB/day)")
    print(f"capbot wchar (all write() calls): {wchar_day / 1e6:.2f} MB/day")
    print(f"reference, one commit per sample: {ref_day / 1e6:.2f} MB/day")
    if ref_day:
        print(f"ratio capbot / naive: {write_day / ref_day:.3f}")
    print(f"database: {work / 'capbot.db'}")


if __name__ == "__main__":
    main()
