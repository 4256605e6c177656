"""Benchmark the chart renderer: cold/warm render times and RSS in process and thread mode.

Run: python benchmarks/bench_charts.py [--renders 20]
Each mode is measured in a fresh interpreter so one mode's imports do not colour the other's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from capbot.adapters.charts import ChartRenderer, DailyUsageChart  # noqa: E402

MIB = 2**20


def usage_chart() -> DailyUsageChart:
    """A /usage chart as the bot sends it: a 30-day cycle, 18 days in, with budget and cap."""
    days = tuple(
        (
            f"2025-04-{i + 1:02d}",
            (20 + i % 7 * 4) * 10**9 if i <= 17 else 0,
            3 * 10**9 if i <= 17 else 0,
        )
        for i in range(30)
    )
    counted = tuple(int((d + u) * 0.9) for _, d, u in days)
    return DailyUsageChart(
        title="Usage · cycle Apr 1 – Apr 30",
        days=days,
        counted_bytes=counted,
        daily_budget_bytes=10**12 / 30,
        cap_bytes=10**12,
        projected_total_bytes=1_020 * 10**9,
        today_index=17,
    )


def rss_mib(pid: int | None = None) -> float:
    """Resident set size of a process in MiB."""
    return psutil.Process(pid).memory_info().rss / MIB


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def measure(mode: str, renders: int) -> dict[str, Any]:
    """Time one cold and `renders` warm renders; sample RSS of this process and of the worker."""
    chart = usage_chart()
    renderer = ChartRenderer(mode=mode)  # type: ignore[arg-type]
    result: dict[str, Any] = {"mode": mode, "rss_before_mib": rss_mib()}
    started = time.perf_counter()
    png = await renderer.render(chart)
    result["cold_ms"] = (time.perf_counter() - started) * 1000
    result["png_bytes"] = len(png)
    result["rss_after_first_mib"] = rss_mib()
    # Back to back (a burst), then spaced like chat commands (the worker collects garbage
    # after each answer, so a burst pays for the previous request's collection).
    for label, gap_s in (("burst", 0.0), ("spaced", 0.3)):
        warm = []
        for _ in range(renders):
            await asyncio.sleep(gap_s)
            started = time.perf_counter()
            await renderer.render(chart)
            warm.append((time.perf_counter() - started) * 1000)
        warm.sort()
        result[f"{label}_p50_ms"] = statistics.median(warm)
        result[f"{label}_p95_ms"] = warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))]
    result["rss_after_mib"] = rss_mib()
    result["matplotlib_in_caller"] = "matplotlib" in sys.modules
    pid = renderer.worker_pid
    if pid is not None:
        result["worker_rss_mib"] = rss_mib(pid)
        result["worker_peak_mib"] = peak_rss_mib(pid)
        result["worker_uss_mib"] = psutil.Process(pid).memory_full_info().uss / MIB
    await renderer.aclose()
    result["rss_after_close_mib"] = rss_mib()
    return result


def run_child(mode: str, renders: int) -> dict[str, Any]:
    """Measure one mode in a fresh interpreter and return its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--renders", str(renders)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def main() -> None:
    """Print the figures for process and thread mode."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--child", choices=["process", "thread"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child, args.renders))))
        return
    print(f"chart benchmark: 2 x {args.renders} warm renders of a 30-day /usage chart")
    proc, thread = run_child("process", args.renders), run_child("thread", args.renders)
    for r in (proc, thread):
        print(f"\n[{r['mode']} mode]  PNG {r['png_bytes'] / 1000:.0f} kB")
        print(f"  first render (cold{', incl. worker start' * (r['mode'] == 'process')}): "
              f"{r['cold_ms']:.0f} ms")  # fmt: skip
        for label in ("burst", "spaced"):
            print(
                f"  warm render p50 / p95 ({label}): "
                f"{r[f'{label}_p50_ms']:.0f} / {r[f'{label}_p95_ms']:.0f} ms"
            )
        print(
            f"  caller RSS before / after first / after {2 * args.renders} / after close: "
            f"{r['rss_before_mib']:.1f} / {r['rss_after_first_mib']:.1f} / "
            f"{r['rss_after_mib']:.1f} / {r['rss_after_close_mib']:.1f} MiB"
        )
        print(f"  matplotlib imported in caller: {r['matplotlib_in_caller']}")
        if "worker_rss_mib" in r:
            print(
                f"  worker RSS: {r['worker_rss_mib']:.1f} MiB (peak {r['worker_peak_mib']:.1f}, "
                f"unique {r['worker_uss_mib']:.1f} MiB)"
            )
    resident = thread["rss_after_mib"] - thread["rss_before_mib"]
    growth = proc["rss_after_mib"] - proc["rss_before_mib"]
    print(f"\nresident cost of thread mode: +{resident:.1f} MiB for as long as the service runs")
    print(f"caller growth in process mode: {growth:+.1f} MiB; worker gone after idle timeout")


if __name__ == "__main__":
    main()
