"""Idle RSS and CPU of `capbot run` sampling every 1 s, no bots.

Usage: python benchmarks/bench_idle.py [--seconds 60]

Reference in the same run: a bare Python interpreter's RSS, and a minimal psutil loop
that reads the same counters every second (the floor any Python sampler pays).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from _common import cpu_seconds, rss_mib, start_capbot, wait_for

REF_LOOP = (
    "import psutil, time\n"
    "while True:\n"
    "    psutil.net_io_counters(pernic=True, nowrap=False)\n"
    "    time.sleep(1)\n"
)


def measure(pids: list[int], seconds: float) -> list[tuple[float, float, float]]:
    """(RSS, peak RSS, CPU % of one core) of each process over the same window."""
    c0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    time.sleep(seconds)
    c1, t1 = [cpu_seconds(p) for p in pids], time.monotonic()
    return [(*rss_mib(p), (b - a) / (t1 - t0) * 100) for p, a, b in zip(pids, c0, c1, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1)
    bare_rss, _ = rss_mib(bare.pid)
    bare.kill()

    ref = subprocess.Popen([sys.executable, "-c", REF_LOOP])
    proc, work = start_capbot("sampler:\n  interval: 1\nprobe:\n  enabled: false\n")
    wait_for(work / "capbot.db")
    time.sleep(5)  # past start-up
    (rss, hwm, cpu), (ref_rss, _, ref_cpu) = measure([proc.pid, ref.pid], args.seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    ref.kill()
    print(f"capbot run, interval 1 s, {args.seconds:.0f} s window, no bots:")
    print(
        f"  RSS {rss:.1f} MiB (peak {hwm:.1f}; limit 60)   CPU {cpu:.3f}% of one core (limit 0.3%)"
    )
    print(
        f"reference bare interpreter: RSS {bare_rss:.1f} MiB -> capbot/bare = {rss / bare_rss:.2f}"
    )
    print(
        f"reference psutil loop: RSS {ref_rss:.1f} MiB, CPU {ref_cpu:.3f}% -> capbot/loop CPU = "
        f"{cpu / ref_cpu if ref_cpu else float('nan'):.2f}"
    )


if __name__ == "__main__":
    main()
