"""Tests for billing-period windows: cycles, days, weeks, months, DST and odd UTC offsets."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capbot.core.periods import (
    Period,
    custom_period,
    cycle_containing,
    day_period,
    local_days,
    local_midnight,
    month_period,
    parse_period,
    previous_cycle,
    week_period,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
UTC_TZ = ZoneInfo("UTC")
HOUR = timedelta(hours=1)


def utc(text: str) -> datetime:
    """An aware UTC datetime from an ISO string without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, tz: ZoneInfo) -> datetime:
    """An aware datetime in `tz` from an ISO string without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def d(text: str) -> date:
    """A date from an ISO string."""
    return date.fromisoformat(text)


CYCLE_CASES = [
    # start_day, local instant, expected first day, expected end day (exclusive)
    (1, "2026-02-10T12:00", "2026-02-01", "2026-03-01"),
    (1, "2026-03-01T00:00", "2026-03-01", "2026-04-01"),
    (15, "2026-02-14T23:59", "2026-01-15", "2026-02-15"),
    (15, "2026-02-15T00:00", "2026-02-15", "2026-03-15"),
    (15, "2026-01-10T08:00", "2025-12-15", "2026-01-15"),
    (28, "2026-02-27T12:00", "2026-01-28", "2026-02-28"),
    (28, "2026-02-28T00:00", "2026-02-28", "2026-03-28"),
    (29, "2026-02-27T12:00", "2026-01-29", "2026-02-28"),  # non-leap: clamped to Feb 28
    (29, "2026-03-01T12:00", "2026-02-28", "2026-03-29"),
    (29, "2028-02-28T12:00", "2028-01-29", "2028-02-29"),  # leap year
    (29, "2028-02-29T00:00", "2028-02-29", "2028-03-29"),
    (30, "2026-02-27T12:00", "2026-01-30", "2026-02-28"),
    (30, "2026-02-28T12:00", "2026-02-28", "2026-03-30"),
    (30, "2028-02-29T12:00", "2028-02-29", "2028-03-30"),
    (30, "2026-04-29T12:00", "2026-03-30", "2026-04-30"),
    (30, "2026-04-30T00:00", "2026-04-30", "2026-05-30"),
    (31, "2026-02-28T00:00", "2026-02-28", "2026-03-31"),
    (31, "2026-03-30T23:59", "2026-02-28", "2026-03-31"),
    (31, "2026-03-31T00:00", "2026-03-31", "2026-04-30"),
    (31, "2026-04-30T00:00", "2026-04-30", "2026-05-31"),
    (31, "2026-05-30T12:00", "2026-04-30", "2026-05-31"),
    (31, "2026-06-15T12:00", "2026-05-31", "2026-06-30"),
    (31, "2028-02-28T12:00", "2028-01-31", "2028-02-29"),
    (31, "2028-02-29T12:00", "2028-02-29", "2028-03-31"),
    (31, "2026-12-31T00:00", "2026-12-31", "2027-01-31"),
]


@pytest.mark.parametrize("tz", [UTC_TZ, BERLIN, KATHMANDU], ids=str)
@pytest.mark.parametrize(("start_day", "at", "first", "end"), CYCLE_CASES)
def test_cycle_boundaries(start_day: int, at: str, first: str, end: str, tz: ZoneInfo) -> None:
    """A cycle runs from local midnight of its (clamped) start day to that of the next cycle."""
    cycle = cycle_containing(local(at, tz), start_day, tz)
    assert cycle.kind == "cycle"
    assert cycle.start == local(f"{first}T00:00", tz)
    assert cycle.end == local(f"{end}T00:00", tz)
    assert cycle.start.tzinfo is UTC and cycle.end.tzinfo is UTC
    assert cycle.contains(local(at, tz))
    last_day = d(end) - timedelta(days=1)
    assert cycle.label == f"cycle {first} – {last_day}"


@pytest.mark.parametrize(
    ("start_day", "at", "prev_first", "prev_end"),
    [
        (31, "2026-04-10T12:00", "2026-02-28", "2026-03-31"),
        (31, "2026-03-31T00:00", "2026-02-28", "2026-03-31"),
        (29, "2026-03-01T00:00", "2026-01-29", "2026-02-28"),
        (15, "2026-01-20T00:00", "2025-12-15", "2026-01-15"),
        (1, "2026-01-01T00:00", "2025-12-01", "2026-01-01"),
    ],
)
def test_previous_cycle(start_day: int, at: str, prev_first: str, prev_end: str) -> None:
    """The previous cycle ends exactly where the current one starts, with clamped start days."""
    cycle = cycle_containing(local(at, BERLIN), start_day, BERLIN)
    prev = previous_cycle(cycle, start_day, BERLIN)
    assert prev.kind == "last-cycle"
    assert (prev.start, prev.end) == (
        local(f"{prev_first}T00:00", BERLIN),
        local(f"{prev_end}T00:00", BERLIN),
    )
    assert prev.end == cycle.start


PROPERTY_ZONES = [UTC_TZ, BERLIN, NEW_YORK, KOLKATA, KATHMANDU, ZoneInfo("Australia/Lord_Howe")]


@settings(max_examples=300, deadline=None)
@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    start_day=st.integers(1, 31),
    tz=st.sampled_from(PROPERTY_ZONES),
)
def test_cycles_tile_time(at: datetime, start_day: int, tz: ZoneInfo) -> None:
    """Cycles contain their instant, start and end on local midnights, and chain without gaps."""
    cycle = cycle_containing(at, start_day, tz)
    assert cycle.contains(at)
    for edge in (cycle.start, cycle.end):
        wall = edge.astimezone(tz)
        assert (wall.hour, wall.minute, wall.second) == (0, 0, 0)
        assert edge.timestamp() % 900 == 0  # edges fall on 15-minute storage buckets
    assert cycle_containing(cycle.end, start_day, tz).start == cycle.end
    assert previous_cycle(cycle, start_day, tz).end == cycle.start
    assert 27 <= (cycle.end - cycle.start) / timedelta(days=1) <= 32


DAY_CASES = [
    # zone, local day, expected UTC start, expected UTC end, hours
    (BERLIN, "2026-03-29", "2026-03-28T23:00", "2026-03-29T22:00", 23),
    (BERLIN, "2026-10-25", "2026-10-24T22:00", "2026-10-25T23:00", 25),
    (BERLIN, "2026-07-01", "2026-06-30T22:00", "2026-07-01T22:00", 24),
    (NEW_YORK, "2026-03-08", "2026-03-08T05:00", "2026-03-09T04:00", 23),
    (NEW_YORK, "2026-11-01", "2026-11-01T04:00", "2026-11-02T05:00", 25),
    (KOLKATA, "2026-11-22", "2026-11-21T18:30", "2026-11-22T18:30", 24),
    (KATHMANDU, "2026-11-22", "2026-11-21T18:15", "2026-11-22T18:15", 24),
]


@pytest.mark.parametrize(("tz", "day", "start", "end", "hours"), DAY_CASES)
def test_day_edges(tz: ZoneInfo, day: str, start: str, end: str, hours: int) -> None:
    """Local days are bounded by local midnights: 23 or 25 h across DST, half-hour zones exact."""
    noon = local(f"{day}T12:00", tz)
    period = day_period(noon, tz)
    assert (period.start, period.end) == (utc(start), utc(end))
    assert period.end - period.start == timedelta(hours=hours)
    assert period.label == f"today {day}"
    assert period.start.timestamp() % 900 == 0 and period.end.timestamp() % 900 == 0
    # One second before the edge belongs to the previous day, the edge itself to this one.
    assert day_period(period.start - timedelta(seconds=1), tz).end == period.start
    assert day_period(period.start, tz) == period


@pytest.mark.parametrize(
    ("tz", "at", "day"),
    [
        (KOLKATA, "2026-11-21T18:29:59", "2026-11-21"),
        (KOLKATA, "2026-11-21T18:30:00", "2026-11-22"),
        (KATHMANDU, "2026-11-21T18:14:59", "2026-11-21"),
        (KATHMANDU, "2026-11-21T18:15:00", "2026-11-22"),
    ],
)
def test_odd_offset_day_assignment(tz: ZoneInfo, at: str, day: str) -> None:
    """A UTC instant is assigned to the right local day in +05:30 and +05:45 zones."""
    assert day_period(utc(at), tz).label == f"today {day}"


@pytest.mark.parametrize(
    ("tz", "start_day", "at", "start", "end"),
    [
        # Cycle starting on the spring-forward day: starts at CET midnight, ends at CEST midnight.
        (BERLIN, 29, "2026-04-10T12:00", "2026-03-28T23:00", "2026-04-28T22:00"),
        # Cycle starting the day before fall-back.
        (BERLIN, 25, "2026-10-25T02:30", "2026-10-24T22:00", "2026-11-24T23:00"),
        (NEW_YORK, 8, "2026-03-08T08:30", "2026-03-08T05:00", "2026-04-08T04:00"),
        (NEW_YORK, 1, "2026-11-01T05:30", "2026-11-01T04:00", "2026-12-01T05:00"),
    ],
)
def test_cycle_across_dst(tz: ZoneInfo, start_day: int, at: str, start: str, end: str) -> None:
    """Cycle edges sit exactly on local midnight whichever side of a DST change they fall."""
    cycle = cycle_containing(utc(at), start_day, tz)
    assert (cycle.start, cycle.end) == (utc(start), utc(end))
    assert cycle_containing(cycle.start - timedelta(seconds=1), start_day, tz).end == cycle.start


def test_local_days_across_dst_month() -> None:
    """March 2026 in Berlin has 31 contiguous local days, the 29th only 23 hours long."""
    march = month_period(local("2026-03-15T12:00", BERLIN), BERLIN)
    days = local_days(march, BERLIN)
    assert len(days) == 31
    assert days[0][1] == march.start and days[-1][2] == march.end
    assert all(a[2] == b[1] for a, b in itertools.pairwise(days))
    lengths = {day.day: (end - start) / HOUR for day, start, end in days}
    assert lengths[29] == 23 and sum(lengths.values()) == 31 * 24 - 1


def test_local_days_midnight_gap_and_skipped_day() -> None:
    """Where DST skips midnight (Santiago) or a whole day (Samoa 2011) days stay contiguous."""
    santiago = ZoneInfo("America/Santiago")
    gap_day = day_period(local("2022-09-11T12:00", santiago), santiago)
    assert gap_day.start == utc("2022-09-11T04:00")  # 00:00 did not exist; the day starts at 01:00
    assert gap_day.end - gap_day.start == timedelta(hours=23)

    apia = ZoneInfo("Pacific/Apia")
    span = custom_period(d("2011-12-29"), d("2011-12-31"), apia)
    days = local_days(span, apia)
    assert [day for day, _, _ in days] == [d("2011-12-29"), d("2011-12-31")]
    assert days[0][2] == days[1][1]


def test_week_across_fall_back() -> None:
    """The ISO week ending on the fall-back Sunday runs Monday to Monday local and lasts 169 h."""
    week = week_period(local("2026-10-25T12:00", BERLIN), BERLIN)
    assert (week.start, week.end) == (utc("2026-10-18T22:00"), utc("2026-10-25T23:00"))
    assert week.end - week.start == timedelta(hours=169)
    assert week.label == "week 2026-W43 (2026-10-19 – 2026-10-25)"


NOW = utc("2026-11-22T10:00")  # a Sunday; 11:00 in Berlin

PARSE_CASES = [
    ("today", "today", "today 2026-11-22", "2026-11-22", "2026-11-23"),
    ("yesterday", "yesterday", "yesterday 2026-11-21", "2026-11-21", "2026-11-22"),
    ("week", "week", "week 2026-W47 (2026-11-16 – 2026-11-22)", "2026-11-16", "2026-11-23"),
    ("month", "month", "month 2026-11", "2026-11-01", "2026-12-01"),
    ("cycle", "cycle", "cycle 2026-11-15 – 2026-12-14", "2026-11-15", "2026-12-15"),
    ("last-cycle", "last-cycle", "cycle 2026-10-15 – 2026-11-14", "2026-10-15", "2026-11-15"),
    ("2026-02", "2026-02", "2026-02", "2026-02-01", "2026-03-01"),
    ("2025-12", "2025-12", "2025-12", "2025-12-01", "2026-01-01"),
    ("  Cycle ", "cycle", "cycle 2026-11-15 – 2026-12-14", "2026-11-15", "2026-12-15"),
]


@pytest.mark.parametrize(("spec", "kind", "label", "first", "end"), PARSE_CASES)
def test_parse_period(spec: str, kind: str, label: str, first: str, end: str) -> None:
    """Every period spec resolves relative to `now` in the plan's zone."""
    period = parse_period(spec, NOW, 15, BERLIN)
    assert period == Period(
        kind, label, local(f"{first}T00:00", BERLIN), local(f"{end}T00:00", BERLIN)
    )


@pytest.mark.parametrize(
    "spec", ["", "fortnight", "2026-13", "2026-00", "26-11", "2026-1", "0001-01", "last cycle"]
)
def test_parse_period_rejects_bad_spec(spec: str) -> None:
    """An unknown spec raises ValueError with a hint listing the accepted ones."""
    with pytest.raises(
        ValueError, match="today, yesterday, week, month, cycle, last-cycle or YYYY-MM"
    ):
        parse_period(spec, NOW, 15, BERLIN)


@pytest.mark.parametrize("start_day", [0, 32, -1])
def test_bad_start_day(start_day: int) -> None:
    """A cycle start day outside 1-31 is refused."""
    with pytest.raises(ValueError, match="between 1 and 31"):
        cycle_containing(NOW, start_day, BERLIN)


def test_naive_datetime_refused() -> None:
    """A naive datetime is refused rather than read in the host's zone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        day_period(datetime(2026, 11, 22, 12), BERLIN)


def test_custom_period() -> None:
    """A custom period covers its inclusive local dates; reversed dates are refused."""
    period = custom_period(d("2026-03-28"), d("2026-03-30"), BERLIN)
    assert period.kind == "custom" and period.label == "2026-03-28 – 2026-03-30"
    assert (period.start, period.end) == (utc("2026-03-27T23:00"), utc("2026-03-30T22:00"))
    assert [day for day, _, _ in local_days(period, BERLIN)] == [
        d("2026-03-28"),
        d("2026-03-29"),
        d("2026-03-30"),
    ]
    with pytest.raises(ValueError, match="before it starts"):
        custom_period(d("2026-03-30"), d("2026-03-28"), BERLIN)


def test_local_midnight_is_utc() -> None:
    """local_midnight returns the UTC instant of a local day's start."""
    assert local_midnight(d("2026-11-22"), KATHMANDU) == utc("2026-11-21T18:15")


@pytest.fixture
def restore_host_tz() -> Iterator[None]:
    """Re-read the host zone after a test that changed TZ (monkeypatch restores the variable)."""
    yield
    time.tzset()


def _snapshot() -> list[Period]:
    """Periods computed for fixed instants in several plan zones."""
    out = []
    for tz in (BERLIN, NEW_YORK, KATHMANDU):
        for spec in ("today", "yesterday", "week", "month", "cycle", "last-cycle", "2026-03"):
            out.append(parse_period(spec, utc("2026-03-29T01:30"), 31, tz))
            out.append(parse_period(spec, utc("2026-11-01T05:30"), 1, tz))
    return out


@pytest.mark.usefixtures("restore_host_tz")
def test_host_time_zone_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results depend on the plan's zone only, whatever zone the host runs in."""
    results = []
    host_offsets_s = set()
    for host_tz in ("UTC", "Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kathmandu"):
        monkeypatch.setenv("TZ", host_tz)
        time.tzset()
        host_offsets_s.add(time.localtime(1_800_000_000).tm_gmtoff)
        results.append(_snapshot())
    assert len(host_offsets_s) == 4  # the host zone really changed each time
    assert all(r == results[0] for r in results[1:])
    # And they are the plan zone's answers, not the host's: Berlin's today on its DST day.
    assert results[0][0] == Period(
        "today", "today 2026-03-29", utc("2026-03-28T23:00"), utc("2026-03-29T22:00")
    )
