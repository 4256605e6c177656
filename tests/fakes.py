"""Shared fakes: a scripted counter source and movable clocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from capbot.core.counters import Counters


@dataclass
class FakeCounters:
    """A counter source whose readings, boot id and boot clock the test moves by hand."""

    readings: dict[str, Counters] = field(default_factory=dict)
    boot: str = "boot-1"
    boot_s: float = 1000.0
    routes: set[str] = field(default_factory=lambda: {"eth0"})

    def add(self, iface: str, rx: int, tx: int) -> None:
        cur = self.readings.get(iface, Counters(0, 0))
        self.readings[iface] = Counters(cur.rx_bytes + rx, cur.tx_bytes + tx)

    def read(self) -> dict[str, Counters]:
        return dict(self.readings)

    def boot_id(self) -> str:
        return self.boot

    def boottime_s(self) -> float:
        return self.boot_s

    def default_route_interfaces(self) -> set[str]:
        return set(self.routes)

    def link_speed_mbps(self, iface: str) -> float | None:
        return 1000.0


@dataclass
class Clock:
    """A wall clock and a monotonic clock that advance together when the test says so."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    mono: float = 100.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds
