"""Usage reports for a period: the store's buckets through the plan's rules, plus speed-test bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from capbot.core.periods import Period, custom_period, cycle_containing, parse_period
from capbot.core.report import TRAILING_WINDOW_S, Bucket, PlanRules, UsageReport, summarize
from capbot.core.rules import CapSnapshot


class UsageReader(Protocol):
    """What reports need of the store."""

    def buckets(self, start: datetime, end: datetime, host: str | None = None) -> list[Bucket]: ...
    def probe_bytes(self, start: datetime, end: datetime) -> int: ...


@dataclass(frozen=True)
class PlanView:
    """The plan facts reports need (from `plan.*`)."""

    rules: PlanRules
    cycle_start_day: int
    tz: ZoneInfo


@dataclass(frozen=True)
class UsageSummary:
    """A usage report plus the bytes speed tests used in the same period."""

    report: UsageReport
    probe_bytes: int

    def to_json(self) -> dict[str, Any]:
        """The report's JSON with `probe_bytes` added."""
        out = self.report.to_json()
        out["probe_bytes"] = self.probe_bytes
        return out


class UsageService:
    """Builds reports; pure rules from `core.report`, data from the store."""

    def __init__(
        self,
        store: UsageReader,
        plan: PlanView,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.plan = plan
        self.clock = clock

    def period(self, spec: str = "cycle", now: datetime | None = None) -> Period:
        """Parse a period name (`today`, `cycle`, `2026-11`, ...); raises ValueError with a hint."""
        now = now or self.clock()
        return parse_period(spec, now, self.plan.cycle_start_day, self.plan.tz)

    def custom(self, start: date, end: date) -> Period:
        """Inclusive local dates."""
        return custom_period(start, end, self.plan.tz)

    def cycle(self, now: datetime | None = None) -> Period:
        """The billing cycle containing `now`."""
        return cycle_containing(now or self.clock(), self.plan.cycle_start_day, self.plan.tz)

    def report(
        self, period: Period, now: datetime | None = None, host: str | None = None
    ) -> UsageSummary:
        """The usage report of `period` as of `now` (history before it feeds the projection)."""
        now = now or self.clock()
        history_start = min(period.start, now - timedelta(seconds=TRAILING_WINDOW_S))
        rows = self.store.buckets(history_start, period.end, host)
        start_ts = period.start.timestamp()
        inside = [b for b in rows if b.ts >= start_ts]
        before = [b for b in rows if b.ts < start_ts]
        report = summarize(inside, period, now, self.plan.rules, self.plan.tz, history=before)
        return UsageSummary(report, self.store.probe_bytes(period.start, period.end))

    def hourly(self, period: Period) -> list[tuple[int, int, int]]:
        """(local hour, rx, tx) of `period`, every hour 0-23 present (for the hourly chart)."""
        hours = [[h, 0, 0] for h in range(24)]
        for b in self.store.buckets(period.start, period.end):
            h = datetime.fromtimestamp(b.ts, self.plan.tz).hour
            hours[h][1] += b.rx_bytes
            hours[h][2] += b.tx_bytes
        return [(h, rx, tx) for h, rx, tx in hours]


class CycleUsage:
    """Feeds the cap rules: the current cycle's figures as a CapSnapshot."""

    def __init__(self, usage: UsageService) -> None:
        self.usage = usage

    def _snapshot(self, period: Any, now: datetime) -> Any:
        summary = self.usage.report(period, now)
        r = summary.report
        tz = self.usage.plan.tz
        today = now.astimezone(tz).date()
        today_counted = sum(d.counted_bytes for d in r.days if d.day == today)
        budget = None
        if r.cap_bytes is not None and now < period.end:
            left_days = sum(1 for d in r.days if d.day >= today) or 1
            budget = int(max(r.cap_bytes - (r.counted_bytes - today_counted), 0) / left_days)
        return CapSnapshot(
            cycle_id=period.start.astimezone(tz).date().isoformat(),
            cycle_start=period.start,
            cycle_end=period.end,
            now=min(now, period.end),
            counted_bytes=r.counted_bytes,
            cap_bytes=r.cap_bytes,
            projected_bytes=r.projected_bytes,
            projection_method=r.projection_method,
            today_counted_bytes=today_counted,
            daily_budget_bytes=budget,
            probe_bytes=summary.probe_bytes,
            peak_day=(r.peak_day.day, r.peak_day.counted_bytes) if r.peak_day else None,
        )

    async def snapshot(self, now: datetime) -> Any:
        """The current cycle at `now`."""
        return await asyncio.to_thread(self._snapshot, self.usage.cycle(now), now)

    async def ended_cycle(self, current: Any) -> Any:
        """The cycle that ended where `current` began, as of its end."""
        end = current.cycle_start
        period = self.usage.cycle(end - timedelta(seconds=1))
        return await asyncio.to_thread(self._snapshot, period, end)

    def cycle_counted(self, now: datetime) -> tuple[str, int]:
        """(cycle id, counted bytes so far), for the usage-at-onset of a slowdown."""
        period = self.usage.cycle(now)
        r = self.usage.report(period, now).report
        return period.start.astimezone(self.usage.plan.tz).date().isoformat(), r.counted_bytes
