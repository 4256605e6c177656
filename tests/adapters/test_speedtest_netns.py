"""Probe accuracy on a kernel-shaped link: tbf on loopback in a fresh network namespace (root only).

The pytest side runs this module as a child under ``unshare -n``. The child brings ``lo`` up with
a 1500-byte MTU, shapes it with ``tc qdisc ... tbf rate R burst 64kb latency 100ms``, starts
tests/speedserver.py in a separate process (its own core), measures curl's goodput on the same
link, then runs the probe, and prints one JSON line per rate.

Why compare with curl and not with R: TCP/IP headers (66 of every 1514 bytes on the wire at
MTU 1500) and the ACKs, which share lo's single tbf queue, leave about 93.5-95.6 % of R as
goodput (curl measured 94.8 Mbit/s at 100 Mbit/s). Curl downloads ``R/8 * 2 s`` bytes, so its own
slow start costs it under 1 %.

Run the child by hand: ``unshare -n python -m tests.adapters.test_speedtest_netns --child 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATES_MBPS = (20, 100, 500)

pytestmark = pytest.mark.netns


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("tc"):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && tc qdisc add dev lo root tbf "
         "rate 10mbit burst 64kb latency 100ms"],
        capture_output=True,
        check=False,
    )  # fmt: skip
    return probe.returncode == 0


def run_child(
    rates_mbps: tuple[int, ...], *extra: str, timeout_s: float = 120
) -> list[dict[str, Any]]:
    """Run the namespace child for `rates_mbps`; one result dict per rate (and repeat)."""
    cmd = ["unshare", "-n", sys.executable, "-m", "tests.adapters.test_speedtest_netns", "--child"]
    cmd += [str(r) for r in rates_mbps] + list(extra)
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"namespace child failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def shaped_results() -> dict[int, dict[str, Any]]:
    """Probe results per rate, from one namespace child."""
    if not _can_unshare():
        pytest.skip("needs root with unshare and tc (tbf) to shape a namespace's loopback")
    return {r["rate_mbps"]: r for r in run_child(RATES_MBPS)}


@pytest.mark.parametrize("rate_mbps", RATES_MBPS)
def test_tc_shaped_rate_matches_curl(
    shaped_results: dict[int, dict[str, Any]], rate_mbps: int
) -> None:
    """Under tbf the probe's download and upload are within +/-5 % of curl's goodput."""
    r = shaped_results[rate_mbps]
    assert r["status"] == "ok", r["error"]
    reference = r["curl_down_bps"]
    assert 0.90 * rate_mbps * 1e6 <= reference <= 0.97 * rate_mbps * 1e6  # sane goodput
    assert r["download_bps"] == pytest.approx(reference, rel=0.05)
    assert r["upload_bps"] == pytest.approx(reference, rel=0.05)
    # cheap: far from what max_seconds would cost
    assert r["bytes_down"] + r["bytes_up"] < rate_mbps * 1e6 / 8 * 12


# --- the child (runs inside `unshare -n`) -------------------------------------------------------
def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def _curl_bps(url: str) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout) * 8


def _child(args: argparse.Namespace) -> None:
    from capbot.adapters.speedtest import ProbeSettings, ServerSpec, SpeedProbe

    _sh("ip link set lo up && ip link set lo mtu 1500")
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.speedserver"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        base = f"http://127.0.0.1:{port}"
        spec = ServerSpec.from_url(base, name="netns")
        for rate in args.rates:
            _sh(f"tc qdisc replace dev lo root tbf rate {rate}mbit burst 64kb latency 100ms")
            curl_bps = _curl_bps(f"{base}/__down?bytes={int(rate * 1e6 / 8 * 2)}")
            settings = ProbeSettings.for_mode(args.mode)
            if args.streams:
                settings = replace(settings, streams=args.streams, auto_streams=False)
            for _ in range(args.repeat):
                time.sleep(0.5)  # let the queue drain
                res = asyncio.run(SpeedProbe().run(spec, settings))
                line = {
                    "rate_mbps": rate,
                    "streams": res.meta.get("streams"),
                    "curl_down_bps": curl_bps,
                    **{k: getattr(res, k) for k in _FIELDS},
                }
                print(json.dumps(line), flush=True)
    finally:
        server.terminate()
        server.wait(5)


_FIELDS = (
    "status",
    "error",
    "download_bps",
    "upload_bps",
    "latency_ms",
    "jitter_ms",
    "loaded_latency_ms",
    "bytes_down",
    "bytes_up",
    "duration_s",
    "download_end",
    "upload_end",
)


def main() -> None:
    """Entry point of the namespace child."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("rates", nargs="+", type=int)
    parser.add_argument("--mode", default="economy")
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    _child(parser.parse_args())


if __name__ == "__main__":
    main()
