"""Export usage rows at minute, hour or day resolution (hours and days in the plan's time zone)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo

from capbot.core.model import UsageRow
from capbot.core.periods import Period
from capbot.core.report import Bucket

FIELDS = ("time", "interface", "rx_bytes", "tx_bytes")


class ExportSource(Protocol):
    """What export needs of the store."""

    def minutes(
        self, start: datetime, end: datetime, host: str | None = None
    ) -> list[UsageRow]: ...
    def buckets(self, start: datetime, end: datetime, host: str | None = None) -> list[Bucket]: ...


def export_rows(
    source: ExportSource, period: Period, resolution: str, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Rows of {time (ISO, local offset), interface, rx_bytes, tx_bytes}, oldest first."""
    rows: Iterable[UsageRow | Bucket]
    if resolution == "minute":
        rows = source.minutes(period.start, period.end)
    else:
        rows = source.buckets(period.start, period.end)
    out: dict[tuple[datetime, str], list[int]] = {}
    for r in rows:
        local = datetime.fromtimestamp(r.ts, UTC).astimezone(tz)
        if resolution == "hour":
            local = local.replace(minute=0, second=0)
        elif resolution == "day":
            # Re-localise midnight: on DST days the offset at 00:00 differs from the row's.
            local = datetime(local.year, local.month, local.day, tzinfo=tz)
        acc = out.setdefault((local, r.iface), [0, 0])
        acc[0] += r.rx_bytes
        acc[1] += r.tx_bytes
    return [
        {"time": t.isoformat(), "interface": iface, "rx_bytes": v[0], "tx_bytes": v[1]}
        for (t, iface), v in sorted(out.items(), key=lambda kv: (kv[0][0].timestamp(), kv[0][1]))
    ]


def write_csv(rows: list[dict[str, Any]], stream: TextIO) -> None:
    """Write export rows as CSV with a header."""
    writer = csv.DictWriter(stream, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
