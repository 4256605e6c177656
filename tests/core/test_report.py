"""Tests for usage reports: counting rules, free windows, per-day series, budget and projection."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from capbot.core.periods import cycle_containing, day_period, month_period
from capbot.core.report import (
    Bucket,
    PlanRules,
    counted_of,
    in_unmetered,
    summarize,
)

GB = 10**9
MB = 10**6
UTC_TZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
STEP = timedelta(seconds=900)
# A 30-day UTC cycle, 2026-11-15 to 2026-12-15.
CYCLE = cycle_containing(datetime(2026, 11, 20, tzinfo=UTC), 15, UTC_TZ)


def at(text: str, tz: ZoneInfo = UTC_TZ) -> datetime:
    """An aware datetime in `tz` from an ISO string without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def bucket(when: datetime, rx: int = 0, tx: int = 0, iface: str = "eth0") -> Bucket:
    """A 15-minute bucket starting at `when`."""
    return Bucket(int(when.timestamp()), 900, iface, rx, tx)


def series(
    start: datetime, end: datetime, rx: int, tx: int = 0, iface: str = "eth0"
) -> list[Bucket]:
    """One bucket of rx/tx bytes every 15 minutes in [start, end)."""
    out = []
    while start < end:
        out.append(bucket(start, rx, tx, iface))
        start += STEP
    return out


@pytest.mark.parametrize(
    ("counted", "calibration", "expected"),
    [
        ("both", 1.0, 4 * GB),
        ("download", 1.0, 3 * GB),
        ("upload", 1.0, 1 * GB),
        ("both", 1.05, 4_200_000_000),
        ("download", 0.5, 1_500_000_000),
    ],
)
def test_counted_of(counted: str, calibration: float, expected: int) -> None:
    """Counted bytes follow the plan's counted mode and meter calibration."""
    assert counted_of(3 * GB, 1 * GB, counted, calibration) == expected


def test_counted_of_rejects_unknown_mode() -> None:
    """An unknown counted mode is a ValueError naming the valid ones."""
    with pytest.raises(ValueError, match="both, download, upload"):
        counted_of(1, 1, "sideways", 1.0)


NIGHT = (23 * 60, 6 * 60)
LUNCH = (12 * 60, 13 * 60)


@pytest.mark.parametrize(
    ("minute", "windows", "free"),
    [
        (0, (), False),
        (12 * 60 - 1, (LUNCH,), False),
        (12 * 60, (LUNCH,), True),
        (13 * 60 - 1, (LUNCH,), True),
        (13 * 60, (LUNCH,), False),
        (23 * 60 - 1, (NIGHT,), False),
        (23 * 60, (NIGHT,), True),
        (1439, (NIGHT,), True),
        (0, (NIGHT,), True),
        (6 * 60 - 1, (NIGHT,), True),
        (6 * 60, (NIGHT,), False),
        (12 * 60 + 30, (NIGHT, LUNCH), True),
        (600, ((600, 600),), False),
        (0, ((0, 1440),), True),
    ],
)
def test_in_unmetered(minute: int, windows: tuple[tuple[int, int], ...], free: bool) -> None:
    """Free windows are half-open, may wrap midnight, and an empty window frees nothing."""
    assert in_unmetered(minute, windows) is free


@pytest.mark.parametrize(
    ("counted", "counted_bytes", "percent"),
    [("both", 4 * GB, 40.0), ("download", 3 * GB, 30.0), ("upload", 1 * GB, 10.0)],
)
def test_counted_modes(counted: str, counted_bytes: int, percent: float) -> None:
    """The report counts download, upload or both against the cap; raw totals stay complete."""
    report = summarize(
        [bucket(at("2026-11-16T10:00"), 3 * GB, 1 * GB)],
        CYCLE,
        at("2026-11-20T00:00"),
        PlanRules(cap_bytes=10 * GB, counted=counted),
        UTC_TZ,
    )
    assert (report.rx_bytes, report.tx_bytes, report.total_bytes) == (3 * GB, 1 * GB, 4 * GB)
    assert report.counted_bytes == counted_bytes
    assert report.percent_of_cap == pytest.approx(percent)
    assert report.remaining_bytes == 10 * GB - counted_bytes


def test_unmetered_windows_use_local_bucket_start() -> None:
    """Buckets in free windows (one wrapping midnight) are judged by local start time, not UTC."""
    plan = PlanRules(cap_bytes=None, unmetered=(NIGHT, LUNCH))
    period = cycle_containing(at("2026-11-20T12:00", BERLIN), 15, BERLIN)
    buckets = [
        bucket(at("2026-11-20T22:45", BERLIN), 1 * GB, 1 * MB),  # metered
        bucket(at("2026-11-20T23:00", BERLIN), 2 * GB, 1 * MB),  # free
        bucket(at("2026-11-21T00:30", BERLIN), 4 * GB),  # free, after midnight
        bucket(at("2026-11-21T05:45", BERLIN), 8 * GB),  # free, last slot
        bucket(at("2026-11-21T06:00", BERLIN), 16 * GB),  # metered again
        bucket(at("2026-11-21T12:00", BERLIN), 32 * GB),  # free lunch
        bucket(at("2026-11-21T13:00", BERLIN), 64 * GB),  # metered
    ]
    report = summarize(buckets, period, at("2026-11-22T00:00"), plan, BERLIN)
    assert report.unmetered_bytes == (2 + 4 + 8 + 32) * GB + 1 * MB
    assert report.counted_bytes == (1 + 16 + 64) * GB + 1 * MB
    assert report.total_bytes == 127 * GB + 2 * MB
    by_day = {d.day: d for d in report.days}
    assert by_day[date(2026, 11, 20)].counted_bytes == 1 * GB + 1 * MB
    assert by_day[date(2026, 11, 20)].rx_bytes == 3 * GB
    assert by_day[date(2026, 11, 21)].counted_bytes == 80 * GB
    assert by_day[date(2026, 11, 21)].rx_bytes == 124 * GB


def test_calibration_and_cost() -> None:
    """Calibration scales counted bytes and cost is counted GB times the price per GB."""
    plan = PlanRules(cap_bytes=200 * GB, calibration=1.1, cost_per_gb=0.5, currency="EUR")
    report = summarize(
        [bucket(at("2026-11-16T10:00"), 60 * GB, 40 * GB)],
        CYCLE,
        at("2026-11-20T00:00"),
        plan,
        UTC_TZ,
    )
    assert report.total_bytes == 100 * GB
    assert report.counted_bytes == 110 * GB
    assert report.cost == pytest.approx(55.0)
    assert report.currency == "EUR"
    assert report.percent_of_cap == pytest.approx(55.0)


def test_no_price_no_cost() -> None:
    """Without a price there is no cost, and without a cap no percentage, remainder or budget."""
    report = summarize([], CYCLE, at("2026-11-20T00:00"), PlanRules(cap_bytes=None), UTC_TZ)
    assert report.cost is None
    assert (report.percent_of_cap, report.remaining_bytes, report.daily_budget_bytes) == (
        None,
        None,
        None,
    )


def test_buckets_outside_period_ignored_and_interfaces_split() -> None:
    """Only buckets in [start, end) count, and totals are split per interface."""
    buckets = [
        bucket(CYCLE.start - STEP, 1 * GB),  # before
        bucket(CYCLE.start, 2 * MB, 1 * MB, "eth0"),  # first bucket: in
        bucket(CYCLE.start + STEP, 5 * MB, 3 * MB, "wlan0"),
        bucket(CYCLE.end - STEP, 7 * MB, 0, "eth0"),  # last bucket: in
        bucket(CYCLE.end, 1 * GB),  # at the end: out
    ]
    report = summarize(buckets, CYCLE, at("2026-12-20T00:00"), PlanRules(cap_bytes=None), UTC_TZ)
    assert report.interfaces == {"eth0": (9 * MB, 1 * MB), "wlan0": (5 * MB, 3 * MB)}
    assert report.total_bytes == 18 * MB


def test_days_zero_filled_with_peak() -> None:
    """Every local day of the period appears, zero-filled; the peak is the largest counted day."""
    buckets = [bucket(at("2026-11-17T09:00"), 2 * GB), bucket(at("2026-11-30T21:00"), 0, 5 * GB)]
    report = summarize(buckets, CYCLE, at("2026-12-01T00:00"), PlanRules(cap_bytes=None), UTC_TZ)
    assert [d.day for d in report.days] == [
        date(2026, 11, 15) + timedelta(days=i) for i in range(30)
    ]
    assert sum(1 for d in report.days if d.counted_bytes) == 2
    assert report.peak_day is not None
    assert (report.peak_day.day, report.peak_day.counted_bytes) == (date(2026, 11, 30), 5 * GB)


def test_no_usage_no_peak() -> None:
    """A period without traffic has zero days and no peak day."""
    report = summarize([], CYCLE, at("2026-11-20T00:00"), PlanRules(cap_bytes=None), UTC_TZ)
    assert len(report.days) == 30 and report.peak_day is None and report.counted_bytes == 0


def test_days_across_dst_in_local_time() -> None:
    """Per-day totals follow local days of 23 and 25 hours."""
    spring = month_period(at("2026-03-10T12:00", BERLIN), BERLIN)
    day = day_period(at("2026-03-29T12:00", BERLIN), BERLIN)
    report = summarize(series(day.start, day.end, 1 * MB), spring, day.end, PlanRules(None), BERLIN)
    assert len(report.days) == 31
    assert {d.day: d.rx_bytes for d in report.days if d.rx_bytes} == {date(2026, 3, 29): 92 * MB}

    autumn = day_period(at("2026-10-25T12:00", BERLIN), BERLIN)
    report = summarize(
        series(autumn.start, autumn.end, 1 * MB), autumn, autumn.end, PlanRules(None), BERLIN
    )
    assert [(d.day, d.rx_bytes) for d in report.days] == [(date(2026, 10, 25), 100 * MB)]


def test_half_hour_zone_day_assignment() -> None:
    """In +05:45 a bucket at 18:15 UTC belongs to the next local day."""
    period = cycle_containing(at("2026-11-20T12:00"), 15, KATHMANDU)
    buckets = [bucket(at("2026-11-21T18:00"), 1 * MB), bucket(at("2026-11-21T18:15"), 2 * MB)]
    report = summarize(buckets, period, at("2026-11-25T00:00"), PlanRules(None), KATHMANDU)
    by_day = {d.day: d.rx_bytes for d in report.days if d.rx_bytes}
    assert by_day == {date(2026, 11, 21): 1 * MB, date(2026, 11, 22): 2 * MB}


@pytest.mark.parametrize(
    ("now", "tz", "used", "budget"),
    [
        ("2026-11-24T12:00", UTC_TZ, 37 * GB, 3 * GB),  # 21 days left, today included
        ("2026-11-25T00:00", UTC_TZ, 40 * GB, 3 * GB),  # 20 days left
        ("2026-12-14T23:59", UTC_TZ, 90 * GB, 10 * GB),  # last day
        ("2026-11-24T12:00", UTC_TZ, 120 * GB, 0),  # over the cap: nothing left to spend
        ("2026-11-13T12:00", UTC_TZ, 0, 100 * GB / 30),  # before the period: all 30 days
        # 23:30 UTC is already the 25th in Berlin, so 20 local days are left.
        ("2026-11-24T23:30", BERLIN, 40 * GB, 3 * GB),
    ],
)
def test_daily_budget(now: str, tz: ZoneInfo, used: int, budget: float) -> None:
    """The budget spreads what is left over the local days still to come, today counted fully."""
    period = cycle_containing(at("2026-11-20T12:00", tz), 15, tz)
    report = summarize(
        [bucket(period.start, used)], period, at(now), PlanRules(cap_bytes=100 * GB), tz
    )
    assert report.daily_budget_bytes == pytest.approx(budget)


def test_daily_budget_none_when_over() -> None:
    """A finished period has no daily budget."""
    report = summarize([], CYCLE, CYCLE.end, PlanRules(cap_bytes=100 * GB), UTC_TZ)
    assert report.daily_budget_bytes is None and report.remaining_bytes == 100 * GB


def _first_hour() -> list[Bucket]:
    """2 GB in the first hour of the cycle."""
    return series(CYCLE.start, CYCLE.start + timedelta(hours=1), 500 * MB)


def test_day_one_without_history_does_not_project() -> None:
    """An hour-old cycle with 2 GB and no history projects nothing instead of 1.4 TB."""
    now = CYCLE.start + timedelta(hours=1)
    report = summarize(_first_hour(), CYCLE, now, PlanRules(cap_bytes=1000 * GB), UTC_TZ)
    assert report.projected_bytes is None
    assert report.projection_method == "not enough data yet (needs 24 h, have 1.0 h)"
    assert report.daily_average_bytes == 2 * GB  # not 48 GB/day
    assert report.elapsed_days == pytest.approx(1 / 24)
    assert report.period_days == 30


def test_almost_a_day_is_still_not_enough() -> None:
    """23 hours of data still give no projection."""
    now = CYCLE.start + timedelta(hours=23)
    report = summarize(series(CYCLE.start, now, 10 * MB), CYCLE, now, PlanRules(None), UTC_TZ)
    assert report.projected_bytes is None and "needs 24 h" in report.projection_method


def test_day_one_with_history_uses_trailing_week() -> None:
    """On day 1 the previous cycle's last week sets the rate, not the first hour's burst."""
    now = CYCLE.start + timedelta(hours=1)
    history = series(CYCLE.start - timedelta(days=10), CYCLE.start, 100 * MB)
    report = summarize(_first_hour(), CYCLE, now, PlanRules(cap_bytes=1000 * GB), UTC_TZ, history)
    # The last 7 x 24 h hold 668 history buckets of 100 MB plus the cycle's own 2 GB.
    rate_per_day = (668 * 100 * MB + 2 * GB) / 7
    days_left = 30 - 1 / 24
    assert report.projected_bytes == pytest.approx(2 * GB + rate_per_day * days_left, abs=1)
    assert report.projected_bytes is not None and report.projected_bytes < 300 * GB
    assert "last 7.0 days" in report.projection_method


def test_history_counts_with_plan_rules() -> None:
    """The trailing rate applies the plan's counting, free windows and calibration to history."""
    now = CYCLE.start + timedelta(hours=1)
    history = series(CYCLE.start - timedelta(days=7), CYCLE.start, 100 * MB, 50 * MB)
    own = series(CYCLE.start, now, 100 * MB, 50 * MB)
    plan = PlanRules(cap_bytes=None, counted="download", calibration=1.5, unmetered=((0, 12 * 60),))
    report = summarize(own, CYCLE, now, plan, UTC_TZ, history)
    # Half of each day is free; of the rest only rx counts, times 1.5: 48 buckets x 150 MB a day.
    assert report.counted_bytes == 0  # the first hour of the cycle is in the free window
    assert report.projected_bytes == pytest.approx(48 * 150 * MB * (30 - 1 / 24), abs=1)


def test_mid_cycle_projection() -> None:
    """Mid-cycle the projection is usage so far plus the last week's daily rate x days left."""
    now = CYCLE.start + timedelta(days=10)
    own = series(CYCLE.start, now, 50 * MB)  # 4.8 GB a day
    report = summarize(own, CYCLE, now, PlanRules(cap_bytes=None), UTC_TZ)
    assert report.counted_bytes == 48 * GB
    assert report.projected_bytes == pytest.approx(48 * GB + 4.8 * GB * 20, abs=1)
    assert report.daily_average_bytes == pytest.approx(4.8 * GB)
    # History that overlaps the period's own buckets is not counted twice.
    again = summarize(own, CYCLE, now, PlanRules(cap_bytes=None), UTC_TZ, history=own)
    assert again.projected_bytes == report.projected_bytes


def test_projection_with_two_days_of_data() -> None:
    """Between 24 h and 7 days of data the rate is taken over all the data there is."""
    now = CYCLE.start + timedelta(days=2)
    report = summarize(series(CYCLE.start, now, 50 * MB), CYCLE, now, PlanRules(None), UTC_TZ)
    assert report.projected_bytes == pytest.approx(9.6 * GB + 4.8 * GB * 28, abs=1)
    assert "last 2.0 days" in report.projection_method


def test_projection_forgets_old_spike() -> None:
    """A spike more than a week ago does not inflate the projection the way a linear one would."""
    now = CYCLE.start + timedelta(days=14)
    own = [*series(CYCLE.start, now, 50 * MB), bucket(CYCLE.start + timedelta(days=1), 100 * GB)]
    report = summarize(own, CYCLE, now, PlanRules(None), UTC_TZ)
    used = 14 * 4.8 * GB + 100 * GB
    assert report.projected_bytes == pytest.approx(used + 4.8 * GB * 16, abs=1)
    assert report.projected_bytes is not None and report.projected_bytes < used / 14 * 30


@pytest.mark.parametrize(
    ("now", "method"),
    [
        (CYCLE.end, "period is over: no projection"),
        (CYCLE.start - STEP, "period has not started: no projection"),
    ],
)
def test_no_projection_outside_period(now: datetime, method: str) -> None:
    """Only a period containing now is projected."""
    history = series(CYCLE.start - timedelta(days=7), CYCLE.start, 50 * MB)
    report = summarize(
        series(CYCLE.start, CYCLE.end, 50 * MB), CYCLE, now, PlanRules(None), UTC_TZ, history
    )
    assert (report.projected_bytes, report.projection_method) == (None, method)


def test_bad_counted_mode_rejected() -> None:
    """A plan with an unknown counted mode is refused."""
    with pytest.raises(ValueError, match="counted must be"):
        summarize([], CYCLE, at("2026-11-20T00:00"), PlanRules(None, counted="all"), UTC_TZ)


def test_naive_now_rejected() -> None:
    """A naive `now` is refused."""
    with pytest.raises(ValueError, match="timezone-aware"):
        summarize([], CYCLE, datetime(2026, 11, 20), PlanRules(None), UTC_TZ)


def test_to_json() -> None:
    """The JSON form serialises with ints for bytes and ISO strings for times."""
    now = CYCLE.start + timedelta(days=10, hours=6)
    plan = PlanRules(cap_bytes=100 * GB, calibration=1.03, cost_per_gb=0.2, currency="USD")
    report = summarize(series(CYCLE.start, now, 7 * MB, 1 * MB, "wan"), CYCLE, now, plan, UTC_TZ)
    data = json.loads(json.dumps(report.to_json()))
    assert data["period"] == {
        "kind": "cycle",
        "label": "cycle 2026-11-15 – 2026-12-14",
        "start": "2026-11-15T00:00:00+00:00",
        "end": "2026-12-15T00:00:00+00:00",
    }
    assert data["now"] == "2026-11-25T06:00:00+00:00"
    assert data["interfaces"] == {"wan": {"rx_bytes": report.rx_bytes, "tx_bytes": report.tx_bytes}}
    for key in ("counted_bytes", "daily_average_bytes", "daily_budget_bytes", "projected_bytes"):
        assert isinstance(data[key], int), key
    assert data["days"][0] == {
        "day": "2026-11-15",
        "rx_bytes": 96 * 7 * MB,
        "tx_bytes": 96 * MB,
        "counted_bytes": round(96 * 8 * MB * 1.03),
    }
    assert data["peak_day"]["day"] == "2026-11-15"
    assert data["currency"] == "USD" and data["cost"] == pytest.approx(report.cost)
    assert set(data) == set(report.__dataclass_fields__)
