"""Run inside `unshare -n`: real sampled lo traffic crosses a cap threshold; Apprise delivers once.

Phases: the receiver is down when the threshold is crossed, the service is restarted while the
alert is pending, the receiver comes back, then more traffic flows. Prints one JSON line.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.netns_scenario import send_bytes, start, wait_flushed
from tests.receivers import JsonReceiver


def main() -> None:
    work = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    receiver = JsonReceiver()
    receiver.start()
    receiver.set_mode("down")
    # Something always listening, for the outage rule's connectivity check.
    alive = socket.socket()
    alive.bind(("127.0.0.1", 0))
    alive.listen(16)
    cfg = work / "config.yaml"
    cfg.write_text(
        "sampler:\n  interval: 0.2\n  interfaces: [lo]\n"
        f"storage:\n  flush_interval: 1\n  data_dir: {work}\n"
        "plan:\n  cap: 10 MB\n  timezone: UTC\n"
        "probe:\n  enabled: false\n"
        "rules:\n  cap:\n    thresholds: [50]\n    projection_warning: false\n    daily_budget: false\n"
        f"  outage:\n    check_url: http://127.0.0.1:{alive.getsockname()[1]}/\n    check_interval: 5\n"
        f"notify:\n  urls: ['{receiver.url('/alerts', auth='user:s3cretpass')}']\n"
    )
    svc = start(cfg)
    wait_flushed(work / "capbot.db")
    send_bytes(3_000_000)  # lo counts rx and tx: 6 MB of a 10 MB cap
    time.sleep(4)  # the threshold is crossed; deliveries fail (receiver down)
    attempts_while_down = receiver.attempts if hasattr(receiver, "attempts") else None
    svc.send_signal(signal.SIGTERM)
    rc1 = svc.wait(10)
    pending = subprocess.run(
        [sys.executable, "-m", "capbot", "alerts", "--pending", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    receiver.set_mode("ok")
    svc = start(cfg)
    deadline = time.monotonic() + 90  # first retry backs off 30 s at most
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.2)
    send_bytes(1_000_000)  # more traffic: 8 MB, still only the 50% threshold configured
    time.sleep(3)
    svc.send_signal(signal.SIGTERM)
    rc2 = svc.wait(10)
    log = (work / "service.log").read_text()
    print(
        json.dumps(
            {
                "rc": [rc1, rc2],
                "pending_before_restart": len(json.loads(pending.stdout)),
                "received": [
                    {"title": r.title, "message": r.message, "attachments": len(r.attachments)}
                    for r in receiver.received
                ],
                "attempts_while_down": attempts_while_down,
                "secret_in_log": "s3cretpass" in log,
            }
        )
    )
    receiver.stop()


if __name__ == "__main__":
    main()
