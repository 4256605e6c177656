"""Usage reports: totals, counted bytes, a per-day series, daily budget and a sane projection."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from capbot.core.periods import Period, local_days
from capbot.core.units import format_bytes

DAY_S = 86_400
TRAILING_WINDOW_S = 7 * DAY_S  # a full week smooths out weekday/weekend habits
MIN_PROJECTION_DATA_S = DAY_S  # less than one daily cycle of data says little about the rest
COUNTED_MODES = ("both", "download", "upload")


@dataclass(frozen=True)
class Bucket:
    """Traffic of one interface in one storage bucket (UTC epoch aligned)."""

    ts: int  # UTC epoch seconds, bucket start
    seconds: int  # bucket length, 900
    iface: str
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class PlanRules:
    """How the ISP meters a plan: what counts, free windows, meter calibration and price."""

    cap_bytes: int | None
    counted: str = "both"  # "both" | "download" | "upload"
    # Local windows in minutes since midnight, (start, end); end < start wraps midnight.
    unmetered: tuple[tuple[int, int], ...] = ()
    calibration: float = 1.0  # counted bytes are multiplied by it (ISP meters differ)
    cost_per_gb: float | None = None  # currency per GB (10^9 B) of counted usage
    currency: str = ""


@dataclass(frozen=True)
class DayUsage:
    """One local day's raw traffic and its counted bytes."""

    day: date
    rx_bytes: int
    tx_bytes: int
    counted_bytes: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form with the day as an ISO date."""
        return {
            "day": self.day.isoformat(),
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "counted_bytes": self.counted_bytes,
        }


@dataclass(frozen=True)
class UsageReport:
    """Everything known about usage in one period as of `now`."""

    period: Period
    now: datetime
    interfaces: dict[str, tuple[int, int]]  # iface -> (rx_bytes, tx_bytes)
    rx_bytes: int
    tx_bytes: int
    total_bytes: int
    counted_bytes: int  # after counted/unmetered/calibration
    unmetered_bytes: int  # raw bytes that fell into free windows
    cap_bytes: int | None
    percent_of_cap: float | None
    cost: float | None
    currency: str
    days: list[DayUsage]  # every local day of the period, zero-filled
    peak_day: DayUsage | None
    elapsed_days: float
    period_days: float
    daily_average_bytes: float | None
    remaining_bytes: int | None
    daily_budget_bytes: float | None
    projected_bytes: int | None
    projection_method: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ints for bytes, ISO 8601 strings for times and days."""
        return {
            "period": {
                "kind": self.period.kind,
                "label": self.period.label,
                "start": self.period.start.isoformat(),
                "end": self.period.end.isoformat(),
            },
            "now": self.now.isoformat(),
            "interfaces": {
                iface: {"rx_bytes": rx, "tx_bytes": tx}
                for iface, (rx, tx) in sorted(self.interfaces.items())
            },
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "total_bytes": self.total_bytes,
            "counted_bytes": self.counted_bytes,
            "unmetered_bytes": self.unmetered_bytes,
            "cap_bytes": self.cap_bytes,
            "percent_of_cap": self.percent_of_cap,
            "cost": self.cost,
            "currency": self.currency,
            "days": [day.to_json() for day in self.days],
            "peak_day": self.peak_day.to_json() if self.peak_day else None,
            "elapsed_days": self.elapsed_days,
            "period_days": self.period_days,
            "daily_average_bytes": _int_or_none(self.daily_average_bytes),
            "remaining_bytes": self.remaining_bytes,
            "daily_budget_bytes": _int_or_none(self.daily_budget_bytes),
            "projected_bytes": self.projected_bytes,
            "projection_method": self.projection_method,
        }


def counted_of(rx: int, tx: int, counted: str, calibration: float) -> int:
    """Bytes the ISP counts from raw rx/tx under a plan's `counted` mode and meter calibration."""
    if counted == "both":
        raw = rx + tx
    elif counted == "download":
        raw = rx
    elif counted == "upload":
        raw = tx
    else:
        raise ValueError(f"counted must be one of {', '.join(COUNTED_MODES)}, not {counted!r}")
    return round(raw * calibration)


def in_unmetered(local_minute: int, windows: Iterable[tuple[int, int]]) -> bool:
    """True when a local minute of the day (0-1439) falls in a free window [start, end).

    A window whose end is before its start wraps midnight; one whose end equals its start is empty.
    """
    for start, end in windows:
        if start < end:
            if start <= local_minute < end:
                return True
        elif start > end and (local_minute >= start or local_minute < end):
            return True
    return False


def summarize(
    buckets: Iterable[Bucket],
    period: Period,
    now: datetime,
    plan: PlanRules,
    tz: ZoneInfo,
    history: Iterable[Bucket] = (),
) -> UsageReport:
    """Build the usage report of `period` as of `now` from storage buckets.

    Buckets outside the period are ignored; each bucket is free or metered by its local start time.
    `history` (buckets before or overlapping the period, e.g. the previous cycle) feeds only the
    projection; see `_project` for how and why it projects the way it does.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    start_ts, end_ts = _epoch(period.start), _epoch(period.end)
    local_slot = _local_slot_lookup(tz)
    free = plan.unmetered

    own: list[Bucket] = []
    iface_totals: dict[str, list[int]] = {}
    # Per local day: [raw rx, raw tx, metered rx, metered tx].
    day_spans = local_days(period, tz)
    day_tally: dict[date, list[int]] = {day: [0, 0, 0, 0] for day, _, _ in day_spans}
    unmetered_bytes = 0
    for bucket in buckets:
        if not start_ts <= bucket.ts < end_ts:
            continue
        own.append(bucket)
        totals = iface_totals.setdefault(bucket.iface, [0, 0])
        totals[0] += bucket.rx_bytes
        totals[1] += bucket.tx_bytes
        day, minute = local_slot(bucket.ts)
        tally = day_tally[day]
        tally[0] += bucket.rx_bytes
        tally[1] += bucket.tx_bytes
        if in_unmetered(minute, free):
            unmetered_bytes += bucket.rx_bytes + bucket.tx_bytes
        else:
            tally[2] += bucket.rx_bytes
            tally[3] += bucket.tx_bytes

    rx_bytes = sum(t[0] for t in day_tally.values())
    tx_bytes = sum(t[1] for t in day_tally.values())
    counted = counted_of(
        sum(t[2] for t in day_tally.values()),
        sum(t[3] for t in day_tally.values()),
        plan.counted,
        plan.calibration,
    )
    days = [
        DayUsage(day, t[0], t[1], counted_of(t[2], t[3], plan.counted, plan.calibration))
        for day, t in day_tally.items()
    ]
    peak_day = max(days, key=lambda d: d.counted_bytes, default=None)
    if peak_day is not None and peak_day.counted_bytes == 0:
        peak_day = None

    period_days = (end_ts - start_ts) / DAY_S
    elapsed_days = min(max((now - period.start).total_seconds() / DAY_S, 0.0), period_days)
    cap = plan.cap_bytes
    remaining = None if cap is None else cap - counted
    projected, method = _project(own, history, period, now, plan, local_slot, counted)
    return UsageReport(
        period=period,
        now=now,
        interfaces={iface: (t[0], t[1]) for iface, t in sorted(iface_totals.items())},
        rx_bytes=rx_bytes,
        tx_bytes=tx_bytes,
        total_bytes=rx_bytes + tx_bytes,
        counted_bytes=counted,
        unmetered_bytes=unmetered_bytes,
        cap_bytes=cap,
        percent_of_cap=counted / cap * 100 if cap else None,
        cost=None if plan.cost_per_gb is None else counted / 1e9 * plan.cost_per_gb,
        currency=plan.currency,
        days=days,
        peak_day=peak_day,
        elapsed_days=elapsed_days,
        period_days=period_days,
        # At least one day in the denominator: an hour-old cycle must not report 24x its usage.
        daily_average_bytes=counted / max(elapsed_days, 1.0) if elapsed_days > 0 else None,
        remaining_bytes=remaining,
        daily_budget_bytes=_daily_budget(remaining, day_spans, now),
        projected_bytes=projected,
        projection_method=method,
    )


def _daily_budget(
    remaining: int | None, day_spans: list[tuple[date, datetime, datetime]], now: datetime
) -> float | None:
    """What is left per local day still to come, today included; 0 once the cap is used up."""
    days_left = sum(1 for _, _, end in day_spans if end > now)
    if remaining is None or not days_left:
        return None  # no cap, or the period is over
    return max(remaining, 0) / days_left


def _project(
    own: list[Bucket],
    history: Iterable[Bucket],
    period: Period,
    now: datetime,
    plan: PlanRules,
    local_slot: Callable[[int], tuple[date, int]],
    counted_so_far: int,
) -> tuple[int | None, str]:
    """Projected counted bytes at period end: counted so far + trailing daily rate x days left.

    The rate is counted bytes per day over the last 7 x 24 h before `now`, from `history` and the
    period's own buckets together, so on day 1 of a cycle the previous cycle's habits carry the
    projection instead of a few hours' burst (the linear "used / elapsed x length" projection
    turns 2 GB in the first hour into 1.4 TB, vnstat#87/#113). With less than 7 days of data the
    window shrinks to what exists, measured from the first bucket. With less than 24 h of data
    there is no projection at all: a few hours sample one part of the daily rhythm (an evening
    of streaming or a quiet night), which misleads by a factor of several either way, and any cap
    on such a guess would be arbitrary. Only a period containing `now` is projected.
    """
    if now < period.start:
        return None, "period has not started: no projection"
    if now >= period.end:
        return None, "period is over: no projection"
    now_ts = _epoch(now)
    merged = {(b.ts, b.iface): b for b in history if b.ts < now_ts}
    # The period's own buckets win where history overlaps them, so nothing counts twice.
    merged.update({(b.ts, b.iface): b for b in own if b.ts < now_ts})
    first_ts = min((ts for ts, _ in merged), default=None)
    data_s = 0 if first_ts is None else now_ts - first_ts
    if first_ts is None or data_s < MIN_PROJECTION_DATA_S:
        return None, f"not enough data yet (needs 24 h, have {data_s / 3600:.1f} h)"

    window_s = min(data_s, TRAILING_WINDOW_S)
    window_start_ts = now_ts - window_s
    metered_rx = metered_tx = 0
    for bucket in merged.values():
        if bucket.ts >= window_start_ts and not in_unmetered(
            local_slot(bucket.ts)[1], plan.unmetered
        ):
            metered_rx += bucket.rx_bytes
            metered_tx += bucket.tx_bytes
    rate_per_day = (
        counted_of(metered_rx, metered_tx, plan.counted, plan.calibration) * DAY_S / window_s
    )
    days_left = (period.end - now).total_seconds() / DAY_S
    projected = counted_so_far + round(rate_per_day * days_left)
    method = (
        f"used so far + {format_bytes(rate_per_day)}/day (average of the last "
        f"{window_s / DAY_S:.1f} days) x {days_left:.1f} days left"
    )
    return projected, method


def _local_slot_lookup(tz: ZoneInfo) -> Callable[[int], tuple[date, int]]:
    """A cached ts -> (local date, local minute of day); interfaces share timestamps."""
    cache: dict[int, tuple[date, int]] = {}

    def lookup(ts: int) -> tuple[date, int]:
        slot = cache.get(ts)
        if slot is None:
            local = datetime.fromtimestamp(ts, tz)
            slot = cache[ts] = (local.date(), local.hour * 60 + local.minute)
        return slot

    return lookup


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else round(value)
