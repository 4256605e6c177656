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


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.netns
@pytest.mark.skipif(not _netns_available(), reason="needs root and unshare -n")
def test_usage_equals_kernel_counters_across_kill_and_restart(tmp_path: Path) -> None:
    """kill -9 mid-run, traffic while down, restart, SIGTERM: usage equals the kernel's lo counters exactly."""
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, str(SCENARIO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    log = (tmp_path / "service.log").read_text() if (tmp_path / "service.log").exists() else ""
    assert proc.returncode == 0, proc.stderr + log
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, log
    assert result["stop_s"] < 2.0, result
    assert result["report"] == {"rx_bytes": result["kernel_rx"], "tx_bytes": result["kernel_tx"]}, (
        log
    )
    assert result["kernel_rx"] > 7_000_000
