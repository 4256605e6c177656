"""Helpers shared by the benchmarks: run capbot as a subprocess and read /proc figures."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    cols = stat[stat.rindex(")") + 2 :].split()
    return (int(cols[11]) + int(cols[12])) / CLK_TCK


def io_bytes(pid: int) -> dict[str, int]:
    """The /proc/<pid>/io counters."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def start_capbot(
    config_text: str, workdir: Path | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `capbot run` on a fresh data dir with the given extra config."""
    work = workdir or Path(tempfile.mkdtemp(prefix="capbot-bench-"))
    cfg = work / "config.yaml"
    cfg.write_text(f"storage:\n  data_dir: {work}\n" + config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPBOT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "capbot", "--log-level", "warning", "run", "--config", str(cfg)],
        env=env,
        stderr=open(work / "service.log", "wb"),  # noqa: SIM115
    )
    return proc, work


def wait_for(path: Path, timeout_s: float = 30) -> None:
    """Wait until a file exists."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.1)
