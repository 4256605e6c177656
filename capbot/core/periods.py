"""Billing periods (days, ISO weeks, months, billing cycles) as aware-UTC [start, end) windows."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

PERIOD_SPECS = ("today", "yesterday", "week", "month", "cycle", "last-cycle", "YYYY-MM")
_SPEC_HINT = "use today, yesterday, week, month, cycle, last-cycle or YYYY-MM (e.g. 2026-11)"
_MONTH_SPEC_RE = re.compile(r"(\d{4})-(\d{2})")
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Period:
    """A half-open window [start, end) in aware UTC; `kind` is the spec that built it."""

    kind: str  # today | yesterday | week | month | cycle | last-cycle | custom | the YYYY-MM spec
    label: str  # human, e.g. "cycle 2026-11-15 - 2026-12-14" (with an en dash)
    start: datetime  # aware UTC, inclusive
    end: datetime  # aware UTC, exclusive

    def contains(self, at: datetime) -> bool:
        """True when `at` (aware) falls inside [start, end)."""
        return self.start <= at < self.end


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which local `day` begins in `tz`.

    fold=0 is right in both odd cases: where DST skips midnight it maps to the transition instant
    (the first moment of the day that exists), and where midnight repeats it picks the first one.
    """
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def day_period(at: datetime, tz: ZoneInfo, kind: str = "today") -> Period:
    """The local day of `tz` containing `at` (23, 24 or 25 hours long)."""
    return _day(_local_date(at, tz), tz, kind)


def week_period(at: datetime, tz: ZoneInfo) -> Period:
    """The ISO week (Monday 00:00 local to the next Monday) containing `at`."""
    today = _local_date(at, tz)
    monday = today - timedelta(days=today.weekday())
    iso_year, iso_week, _ = monday.isocalendar()
    sunday = monday + timedelta(days=6)
    label = f"week {iso_year}-W{iso_week:02d} ({monday} – {sunday})"
    return _span("week", label, monday, monday + timedelta(days=7), tz)


def month_period(at: datetime, tz: ZoneInfo) -> Period:
    """The calendar month in `tz` containing `at`."""
    first = _local_date(at, tz).replace(day=1)
    return _span("month", f"month {first:%Y-%m}", first, _add_months(first, 1), tz)


def cycle_containing(at: datetime, start_day: int, tz: ZoneInfo) -> Period:
    """The billing cycle containing `at`; cycles start at local midnight of `start_day` (1-31).

    A start day past the end of a month is clamped to its last day: with start_day 31 the February
    cycle starts on the 28th (29th in leap years) and runs to March 31.
    """
    _check_start_day(start_day)
    today = _local_date(at, tz)
    start = _cycle_start(today.year, today.month, start_day)
    if today < start:
        start = _cycle_start_after(start, start_day, months=-1)
    return _cycle("cycle", start, _cycle_start_after(start, start_day, months=1), tz)


def previous_cycle(cycle: Period, start_day: int, tz: ZoneInfo) -> Period:
    """The cycle that ends where `cycle` starts (kind "last-cycle")."""
    _check_start_day(start_day)
    start = _cycle_start_after(_local_date(cycle.start, tz), start_day, months=-1)
    return _cycle("last-cycle", start, _local_date(cycle.start, tz), tz)


def custom_period(from_date: date, to_date: date, tz: ZoneInfo) -> Period:
    """Local dates `from_date` to `to_date`, both inclusive."""
    if to_date < from_date:
        raise ValueError(f"period ends ({to_date}) before it starts ({from_date})")
    return _span("custom", f"{from_date} – {to_date}", from_date, to_date + _ONE_DAY, tz)


def parse_period(spec: str, now: datetime, start_day: int, tz: ZoneInfo) -> Period:
    """Turn a user's period spec (see PERIOD_SPECS) into a Period relative to `now`.

    Raises ValueError naming the accepted specs when `spec` is not one of them.
    """
    key = spec.strip().lower()
    if key == "today":
        return day_period(now, tz)
    if key == "yesterday":
        return _day(_local_date(now, tz) - _ONE_DAY, tz, "yesterday")
    if key == "week":
        return week_period(now, tz)
    if key == "month":
        return month_period(now, tz)
    if key == "cycle":
        return cycle_containing(now, start_day, tz)
    if key == "last-cycle":
        return previous_cycle(cycle_containing(now, start_day, tz), start_day, tz)
    match = _MONTH_SPEC_RE.fullmatch(key)
    # The year bound keeps date arithmetic and UTC conversion away from datetime's limits.
    if match and 1970 <= int(match[1]) <= 9998 and 1 <= int(match[2]) <= 12:
        first = date(int(match[1]), int(match[2]), 1)
        return _span(key, key, first, _add_months(first, 1), tz)
    raise ValueError(f"unknown period {spec!r}: {_SPEC_HINT}")


def local_days(period: Period, tz: ZoneInfo) -> list[tuple[date, datetime, datetime]]:
    """Each local day overlapping `period` as (date, UTC start, UTC end), clipped to the period.

    Days a time zone skipped entirely (Samoa, 2011-12-30) have no length and are left out.
    """
    days: list[tuple[date, datetime, datetime]] = []
    day = _local_date(period.start, tz)
    while True:
        start = max(period.start, local_midnight(day, tz))
        if start >= period.end:
            return days
        end = min(period.end, local_midnight(day + _ONE_DAY, tz))
        if end > start:
            days.append((day, start, end))
        day += _ONE_DAY


def _local_date(at: datetime, tz: ZoneInfo) -> date:
    if at.tzinfo is None or at.utcoffset() is None:
        # A naive time would silently be read in the host's zone, which is what we must never do.
        raise ValueError(f"datetime {at.isoformat()} must be timezone-aware")
    return at.astimezone(tz).date()


def _check_start_day(start_day: int) -> None:
    if not 1 <= start_day <= 31:
        raise ValueError(f"cycle start day {start_day} must be between 1 and 31")


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _cycle_start(year: int, month: int, start_day: int) -> date:
    return date(year, month, min(start_day, calendar.monthrange(year, month)[1]))


def _cycle_start_after(start: date, start_day: int, months: int) -> date:
    other = _add_months(start, months)
    return _cycle_start(other.year, other.month, start_day)


def _day(day: date, tz: ZoneInfo, kind: str) -> Period:
    return _span(kind, f"{kind} {day}", day, day + _ONE_DAY, tz)


def _cycle(kind: str, start: date, end: date, tz: ZoneInfo) -> Period:
    return _span(kind, f"cycle {start} – {end - _ONE_DAY}", start, end, tz)


def _span(kind: str, label: str, first: date, end: date, tz: ZoneInfo) -> Period:
    return Period(kind, label, local_midnight(first, tz), local_midnight(end, tz))
