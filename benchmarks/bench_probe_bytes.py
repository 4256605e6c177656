"""Benchmark the bytes one full probe moves on a shaped line, and how close its figures are.

Run: python benchmarks/bench_probe_bytes.py [--rates 100] [--runs 5] [--mode economy]
         [--streams 1,2,4,6,8]

Two shapers, the same probe:

- app: tests/speedserver.py's token bucket (both directions at the rate, 1448-byte segments);
  the reference is the shaped rate itself.
- tc (root only, skipped otherwise): ``tbf rate R burst 64kb latency 100ms`` on loopback in a
  fresh network namespace with a 1500-byte MTU (tests/adapters/test_speedtest_netns.py's child);
  the reference is curl's goodput on the same link, about 95 % of R (headers and ACKs).

Each row is one full test (latency, download, upload: everything on the wire counted by the
probe). The target at 100 Mbit/s in economy mode: <= 40 MB per test while within +/-5 % (a
LibreSpeed test moves about 80 MB at that rate). ``--streams`` sweeps the stream count on the tc
link: the measurement behind the default.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capbot.adapters.speedtest import ProbeSettings, ServerSpec, SpeedProbe  # noqa: E402
from tests.adapters.test_speedtest_netns import _can_unshare, run_child  # noqa: E402
from tests.speedserver import ServerConfig, SpeedServer  # noqa: E402

BUDGET_BYTES = 40_000_000


async def app_runs(rate_mbps: int, runs: int, settings: ProbeSettings) -> list[dict[str, Any]]:
    """Probe results against the token-bucket server at `rate_mbps`."""
    out = []
    async with SpeedServer(ServerConfig.shaped(rate_mbps * 1e6)) as srv:
        spec = ServerSpec.from_url(srv.base_url, name="app")
        for _ in range(runs):
            res = await SpeedProbe().run(spec, settings)
            out.append(
                {
                    **res.__dict__,
                    "reference_bps": rate_mbps * 1e6,
                    "streams": res.meta.get("streams"),
                }
            )
            await asyncio.sleep(0.3)
    return out


def row(shaper: str, r: dict[str, Any]) -> tuple[str, bool, int]:
    """One printed line, whether both directions are within 5 %, and the bytes moved."""
    ref = r["reference_bps"]
    if r["status"] != "ok":
        return f"{shaper:4s} failed: {r['error']}", False, 0
    down_err = r["download_bps"] / ref - 1
    up_err = r["upload_bps"] / ref - 1
    total = r["bytes_down"] + r["bytes_up"]
    ok = abs(down_err) <= 0.05 and abs(up_err) <= 0.05
    text = (
        f"{shaper:4s} streams {r['streams']}  down {r['download_bps'] / 1e6:7.2f} ({down_err:+5.1%}, "
        f"{r['download_end']:11s})  up {r['upload_bps'] / 1e6:7.2f} ({up_err:+5.1%}, "
        f"{r['upload_end']:11s})  bytes {r['bytes_down'] / 1e6:5.1f} + {r['bytes_up'] / 1e6:5.1f}"
        f" = {total / 1e6:5.1f} MB  {r['duration_s']:4.1f} s  loaded {r['loaded_latency_ms'] or 0:5.1f} ms"
    )
    return text, ok, total


def summarise(label: str, rows: list[tuple[str, bool, int]], economy: bool) -> None:
    """Print the rows and the budget verdict."""
    for text, _, _ in rows:
        print(text)
    totals = [t for _, ok, t in rows if t]
    accurate = all(ok for _, ok, _ in rows)
    worst = max(totals) if totals else 0
    verdict = "PASS" if accurate and worst <= BUDGET_BYTES else "FAIL"
    target = f"  [economy target <= 40 MB and +/-5 %: {verdict}; LibreSpeed ~80 MB]"
    print(
        f"  {label}: median {statistics.median(totals) / 1e6 if totals else 0:.1f} MB, worst "
        f"{worst / 1e6:.1f} MB per test, all within +/-5 %: {accurate}"
        + (target if economy else "")
    )


def main() -> None:
    """Run the app-shaped and (with root) tc-shaped measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100", help="comma-separated Mbit/s")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", default="economy")
    parser.add_argument("--streams", default="", help="comma-separated stream counts (tc sweep)")
    args = parser.parse_args()
    settings = ProbeSettings.for_mode(args.mode)
    # No --streams: the default probe, which picks its own count from the round trip.
    sweep: list[int | None] = [int(s) for s in args.streams.split(",") if s] or [None]
    tc = _can_unshare()
    for rate in (int(r) for r in args.rates.split(",")):
        print(f"== {rate} Mbit/s, {args.mode} mode, {args.runs} runs per row set")
        for streams in sweep:
            s = (
                settings
                if streams is None
                else replace(settings, streams=streams, auto_streams=False)
            )
            label = "default" if streams is None else str(streams)
            app = asyncio.run(app_runs(rate, args.runs, s))
            economy = args.mode == "economy"
            summarise(f"app, {label} streams", [row("app", r) for r in app], economy)
            if not tc:
                print("  tc: skipped (needs root with unshare and tc)")
                continue
            extra = ["--mode", args.mode, "--repeat", str(args.runs)]
            if streams is not None:
                extra += ["--streams", str(streams)]
            shaped = run_child((rate,), *extra, timeout_s=600)
            for r in shaped:
                r["reference_bps"] = r["curl_down_bps"]
            summarise(f"tc, {label} streams (curl {shaped[0]['curl_down_bps'] / 1e6:.1f} Mbit/s)",
                      [row("tc", r) for r in shaped], economy)  # fmt: skip


if __name__ == "__main__":
    main()
