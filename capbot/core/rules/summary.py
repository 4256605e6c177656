"""The cycle rollover summary: usage, cap, peak day, speed-test bytes, throttle and outage events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta, tzinfo

from capbot.core.model import Alert
from capbot.core.rules.pattern import classify_hours
from capbot.core.rules.text import duration, local_day, percent
from capbot.core.rules.types import CapSnapshot, Event
from capbot.core.units import format_bytes


def cycle_summary(
    ended: CapSnapshot,
    events: Sequence[Event],
    hours: Sequence[Sequence[int]] | None,
    tz: tzinfo,
    min_hours: int = 8,
) -> Alert:
    """The summary of the cycle `ended` describes (its final figures), keyed once per cycle.

    `events` are the throttle, outage and bufferbloat events that began in that cycle; `hours`
    the 24 [probes, slow] pairs of its probes, for the congestion/throttling verdict.
    """
    first = local_day(ended.cycle_start, tz)
    last = local_day(ended.cycle_end - timedelta(seconds=1), tz)  # the end is exclusive
    title = f"Cycle summary: {format_bytes(ended.counted_bytes)} used"
    lines = [f"Billing cycle {first} – {last}."]
    if ended.cap_bytes:
        used = ended.counted_bytes * 100 / ended.cap_bytes
        title += f" ({percent(used)} of {format_bytes(ended.cap_bytes)})"
        lines.append(
            f"Used {format_bytes(ended.counted_bytes)} of {format_bytes(ended.cap_bytes)} ({percent(used)})."
        )
    else:
        lines.append(f"Used {format_bytes(ended.counted_bytes)} (no cap set).")
    if ended.peak_day is not None:
        day, peak_bytes = ended.peak_day
        lines.append(f"Peak day: {day:%a %Y-%m-%d}, {format_bytes(peak_bytes)}.")
    lines.append(f"Speed tests used {format_bytes(ended.probe_bytes)}.")
    throttle = _episodes(events, "throttle", "Throttling episodes", ended, tz)
    pattern = classify_hours(hours, min_hours) if hours is not None else None
    if pattern is not None and pattern.kind in ("congestion", "persistent", "mixed"):
        throttle += f" Slow probes: {pattern.describe()}."
    lines.append(throttle)
    lines.append(_episodes(events, "outage", "Outages", ended, tz))
    lines.append(_episodes(events, "bufferbloat", "Bufferbloat episodes", ended, tz))
    return Alert(
        key=f"summary:{ended.cycle_id}",
        rule="cycle_summary",
        severity="info",
        title=title,
        body="\n".join(lines),
        raised_at=ended.now,
        chart="usage",
    )


def _episodes(
    events: Sequence[Event], kind: str, label: str, ended: CapSnapshot, tz: tzinfo
) -> str:
    mine = [e for e in events if e.kind == kind]
    if not mine:
        return f"{label}: none."
    spans = [((e.end or ended.cycle_end) - e.start).total_seconds() for e in mine]
    longest = max(range(len(mine)), key=lambda i: spans[i])
    return (
        f"{label}: {len(mine)}, {duration(sum(spans))} in total "
        f"(longest {duration(spans[longest])}, on {local_day(mine[longest].start, tz)})."
    )
