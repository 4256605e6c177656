"""The command line: run on defaults, usage/export on a seeded database, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capbot.cli import main
from tests.builders import seeded_store


def _cfg(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"host: h1\nstorage:\n  data_dir: {tmp_path}\nplan:\n  cap: 100 GB\n  cycle_start_day: 15\n"
        f"  timezone: Europe/Berlin\n{extra}"
    )
    return cfg


def _seed(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    rows = []
    for days_ago in range(3):
        at = now - timedelta(days=days_ago, minutes=1)
        rows.append((at, "eth0", 2_000_000_000, 500_000_000))
        rows.append((at, "wlan0", 1_000_000, 0))
    seeded_store(tmp_path / "capbot.db", "h1", rows).close()


def test_run_without_any_config_samples_and_stops_cleanly(tmp_path: Path) -> None:
    """`capbot run` with no config file and no tokens starts, logs what it counts and exits 0 on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPBOT_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "capbot", "run"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "data" / "capbot" / "capbot.db"
    deadline = time.monotonic() + 20
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert time.monotonic() - t0 < 2.0
    assert "starting: config defaults" in err
    assert "counting interfaces" in err or "no interface to count" in err
    assert db.exists()


def test_usage_json_has_the_documented_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`usage --json` gives per-interface and total bytes, counted bytes, cap, percent and projection."""
    _seed(tmp_path)
    assert main(["usage", "--config", str(_cfg(tmp_path)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interfaces"]["eth0"]["rx_bytes"] >= 2_000_000_000
    for key in (
        "rx_bytes",
        "tx_bytes",
        "total_bytes",
        "counted_bytes",
        "cap_bytes",
        "percent_of_cap",
        "projected_bytes",
        "probe_bytes",
    ):
        assert key in out
    assert out["cap_bytes"] == 100 * 10**9
    assert out["total_bytes"] == out["rx_bytes"] + out["tx_bytes"]


def test_usage_table_and_periods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The readable table names the period and shows totals; every period spec works."""
    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    for spec in ("today", "yesterday", "week", "month", "cycle", "last-cycle", "2026-01"):
        assert main(["usage", spec, "--config", cfg]) == 0
    assert main(["usage", "--config", cfg, "--from", "2026-01-01", "--to", "2026-01-31"]) == 0
    text = capsys.readouterr().out
    assert "Usage" in text and "eth0" in text and "Speed tests used" in text


def test_bad_period_and_missing_database_exit_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad period is a usage error (2); a missing database says where it looked (1)."""
    cfg = str(_cfg(tmp_path))
    assert main(["usage", "--config", cfg]) == 1
    assert "no database at" in capsys.readouterr().err
    _seed(tmp_path)
    assert main(["usage", "fortnight", "--config", cfg]) == 2
    assert "period" in capsys.readouterr().err


def test_export_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export writes rows at each resolution whose bytes add up to the stored total."""
    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    today = datetime.now(UTC).date()
    span = [
        "--from",
        (today - timedelta(days=5)).isoformat(),
        "--to",
        (today + timedelta(days=1)).isoformat(),
    ]
    totals = {}
    for res in ("minute", "hour", "day"):
        assert main(["export", "--config", cfg, "--format", "csv", "--resolution", res, *span]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        totals[res] = sum(int(r["rx_bytes"]) for r in rows)
    assert totals["minute"] == totals["hour"] == totals["day"] == 3 * 2_001_000_000
    assert main(["export", "--config", cfg, "--format", "json", "--resolution", "day", *span]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["interface"] for r in rows} == {"eth0", "wlan0"}


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config prints the effective config with tokens and URLs masked."""
    cfg = _cfg(
        tmp_path,
        "telegram:\n  token: '123:VERYSECRET'\nnotify:\n  urls: ['json://u:pw@127.0.0.1/x']\n",
    )
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "VERYSECRET" not in out and "pw@" not in out
    assert "cycle_start_day: 15" in out


def test_config_error_exit_status_2_without_traceback(tmp_path: Path) -> None:
    """A broken config exits 2 with one line naming the key, and no traceback."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plan:\n  cycle_start_day: 32\n")
    proc = subprocess.run(
        [sys.executable, "-m", "capbot", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "plan.cycle_start_day: 32 is not a day of month (1-31)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_help() -> None:
    """--version and --help work for the tool and every subcommand."""
    for argv in (
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["usage", "--help"],
        ["export", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0


def test_check_config_warns_about_public_ntfy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ntfy URL without a host goes to public ntfy.sh: check-config says so; a hosted one is quiet."""
    cfg = _cfg(tmp_path, "notify:\n  urls: ['ntfy://my-alerts', 'ntfy://ntfy.example.net/t']\n")
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("public ntfy.sh") == 1


def test_alerts_and_history_on_empty_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`alerts` and `history` work on a fresh database, in text and JSON."""
    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    assert main(["alerts", "--config", cfg]) == 0
    assert main(["alerts", "--pending", "--json", "--config", cfg]) == 0
    assert main(["history", "--config", cfg]) == 0
    assert main(["history", "--json", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "no speed tests yet" in out and "[]" in out


@pytest.fixture
def speed_server() -> Iterator[str]:
    """The local Cloudflare-style speed server (tests/speedserver.py) at 200 Mbit/s, in a child."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.speedserver", "--down-mbps", "200", "--up-mbps", "200"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    yield f"http://127.0.0.1:{line.split()[1]}"
    proc.terminate()
    proc.wait(10)


def test_speedtest_json_is_stored_and_listed(
    tmp_path: Path, speed_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`speedtest --server URL --json` measures the local server, stores the probe, and `history` lists it."""
    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    assert main(["speedtest", "--config", cfg, "--server", speed_server, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "download_bps",
        "upload_bps",
        "latency_ms",
        "jitter_ms",
        "loaded_latency_ms",
        "bytes_down",
        "bytes_up",
        "server",
        "error",
    ):
        assert key in out
    assert out["stored"] is True and out["error"] is None
    assert 150e6 < out["download_bps"] < 210e6
    assert out["bytes_down"] > 0 and out["bytes_up"] > 0
    assert main(["history", "--config", cfg, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert len(history) == 1 and history[0]["download_bps"] == out["download_bps"]
    assert main(["usage", "--config", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["probe_bytes"] == out["bytes_down"] + out["bytes_up"]


def test_speedtest_failure_is_recorded_not_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused connection exits 1 with error_kind connect and no rates."""
    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    assert main(["speedtest", "--config", cfg, "--server", "http://127.0.0.1:9", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "failed" and out["error_kind"] == "connect"
    assert out["download_bps"] is None and out["upload_bps"] is None
    assert main(["speedtest", "--config", cfg, "--server", "nosuchname"]) == 2


def test_health_reads_committed_and_journaled_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health` is unhealthy with no counters, healthy once a flush reached the journal."""
    from capbot.adapters.store.usage import Store

    _seed(tmp_path)
    cfg = str(_cfg(tmp_path))
    assert main(["health", "--config", cfg]) == 1
    store = Store(f"sqlite:///{tmp_path / 'capbot.db'}", "h1", tmp_path / "usage.journal")
    store.append_journal(
        {
            "host": "h1",
            "token": "g:1",
            "minutes": [],
            "buckets": [],
            "states": [["eth0", "boot", 1, 2, 3.0, int(time.time())]],
        }
    )
    assert main(["health", "--config", cfg]) == 0
    assert "healthy" in capsys.readouterr().out
