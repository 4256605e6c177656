"""Builders for test data: settings files and seeded databases."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from capbot.adapters.store.usage import Store
from capbot.core.model import UsageRow


def write_config(path: Path, text: str) -> Path:
    """Write a YAML config file and return its path."""
    path.write_text(text)
    return path


def seeded_store(db: Path, host: str, hours: list[tuple[datetime, str, int, int]]) -> Store:
    """A store whose usage holds `rx`/`tx` bytes in the 15-minute bucket and minute of each time."""
    store = Store(f"sqlite:///{db}", host)
    store.open()
    minutes, buckets = [], []
    for at, iface, rx, tx in hours:
        ts = int(at.astimezone(UTC).timestamp())
        minutes.append(UsageRow(iface, ts - ts % 60, rx, tx))
        buckets.append(UsageRow(iface, ts - ts % 900, rx, tx))
    store.write_batch(minutes, buckets, [])
    return store
