"""Run inside `unshare -n`: drive a real `capbot run` on a quiet `lo` through kill -9 and restarts.

Prints one JSON line: the kernel's lo counters and what `capbot usage --json` reports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path


def lo_counters() -> tuple[int, int]:
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() == "lo":
            cols = data.split()
            return int(cols[0]), int(cols[8])
    raise RuntimeError("no lo")


def send_bytes(n: int) -> None:
    """Push n bytes through a TCP connection on 127.0.0.1 and wait until all are received."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = 0

    def sink() -> None:
        nonlocal got
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                got += len(chunk)

    t = threading.Thread(target=sink)
    t.start()
    with socket.create_connection(srv.getsockname()) as c:
        payload = b"x" * 65536
        left = n
        while left > 0:
            left -= c.send(payload[: min(left, len(payload))])
    t.join(10)
    srv.close()
    assert got == n, (got, n)


def wait_flushed(db: Path, timeout: float = 10.0) -> None:
    """Wait until the service has written counter state once (journaled or committed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (db.parent / "usage.journal").exists():
            return
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    if conn.execute("select count(*) from counter_state").fetchone()[0]:
                        return
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    raise RuntimeError("service never flushed")


def start(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "capbot", "--log-level", "debug", "run", "--config", str(cfg)],
        stderr=open(cfg.parent / "service.log", "ab"),
    )


def main() -> None:
    work = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    assert lo_counters() == (0, 0), lo_counters()
    cfg = work / "config.yaml"
    cfg.write_text(
        "sampler:\n  interval: 0.2\n  interfaces: [lo]\n"
        f"storage:\n  flush_interval: 1\n  data_dir: {work}\n"
        "probe:\n  enabled: false\n"
    )
    db = work / "capbot.db"
    svc = start(cfg)
    wait_flushed(db)
    send_bytes(3_000_000)
    time.sleep(1.5)  # flushed at least once
    send_bytes(1_234_567)  # then killed before the next flush can write it
    svc.send_signal(signal.SIGKILL)
    svc.wait()
    send_bytes(2_000_000)  # while the service is down
    svc = start(cfg)
    time.sleep(1.0)
    send_bytes(777_777)
    time.sleep(0.5)
    svc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = svc.wait(timeout=10)
    stop_s = time.monotonic() - t0
    kernel = lo_counters()
    out = subprocess.run(
        [sys.executable, "-m", "capbot", "usage", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    print(
        json.dumps(
            {
                "kernel_rx": kernel[0],
                "kernel_tx": kernel[1],
                "report": report["interfaces"].get("lo"),
                "rc": rc,
                "stop_s": stop_s,
            }
        )
    )


if __name__ == "__main__":
    os.environ.pop("CAPBOT_CONFIG", None)
    main()
