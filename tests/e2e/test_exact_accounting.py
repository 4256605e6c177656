"""Exact accounting end to end: a real `capbot run` in a private network namespace, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("netns_scenario.py")
ALERTS = Path(__file__).with_name("alert_scenario.py")


def _run_in_netns(script: Path, work: Path, timeout: float = 150) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, str(script), str(work)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    log = (work / "service.log").read_text() if (work / "service.log").exists() else ""
    assert proc.returncode == 0, proc.stderr + log
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[type-arg]
    result["log"] = log
    return result


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.netns
@pytest.mark.skipif(not _netns_available(), reason="needs root and unshare -n")
def test_usage_equals_kernel_counters_across_kill_and_restart(tmp_path: Path) -> None:
    """kill -9 mid-run, traffic while down, restart, SIGTERM: usage equals the kernel's lo counters exactly."""
    result = _run_in_netns(SCENARIO, tmp_path, timeout=90)
    log = result["log"]
    assert result["rc"] == 0, log
    assert result["stop_s"] < 2.0, result
    assert result["report"] == {"rx_bytes": result["kernel_rx"], "tx_bytes": result["kernel_tx"]}, (
        log
    )
    assert result["kernel_rx"] > 7_000_000


@pytest.mark.netns
@pytest.mark.skipif(not _netns_available(), reason="needs root and unshare -n")
def test_cap_threshold_from_real_traffic_is_delivered_exactly_once(tmp_path: Path) -> None:
    """Real lo traffic crosses 50% of the cap while the receiver is down; after a restart it gets one alert."""
    result = _run_in_netns(ALERTS, tmp_path)
    assert result["rc"] == [0, 0], result["log"]
    assert result["pending_before_restart"] == 1
    assert len(result["received"]) == 1, result
    alert = result["received"][0]
    assert "50%" in alert["title"]
    assert alert["attachments"] == 1  # the usage chart
    assert not result["secret_in_log"]
