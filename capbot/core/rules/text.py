"""Small text helpers for alert messages: durations, local times and hour ranges."""

from __future__ import annotations

from datetime import datetime, tzinfo


def duration(seconds: float) -> str:
    """`35 min`, `5 h 20 min`, `2 d 3 h`; under a minute reads `<1 min`."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "<1 min"
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min"


def local_time(at: datetime, tz: tzinfo, with_date: bool = False) -> str:
    """`14:02`, or `Fri 2026-11-20 14:02` with the date."""
    local = at.astimezone(tz)
    return local.strftime("%a %Y-%m-%d %H:%M") if with_date else local.strftime("%H:%M")


def local_day(at: datetime, tz: tzinfo) -> str:
    """`Fri 2026-11-20`."""
    return at.astimezone(tz).strftime("%a %Y-%m-%d")


def span(start: datetime, end: datetime, tz: tzinfo) -> str:
    """`14:02–14:37`, or with dates when the span crosses local midnight."""
    if start.astimezone(tz).date() == end.astimezone(tz).date():
        return f"{local_time(start, tz)}–{local_time(end, tz)}"
    return f"{local_time(start, tz, True)} – {local_time(end, tz, True)}"


def hour_ranges(hours: list[int] | tuple[int, ...]) -> str:
    """Compress local hours into ranges: [19, 20, 21, 23] -> `19:00–22:00, 23:00–00:00`.

    Runs wrap around midnight: [22, 23, 0, 1] -> `22:00–02:00`.
    """
    wanted = sorted(set(h % 24 for h in hours))
    if not wanted:
        return ""
    if len(wanted) == 24:
        return "00:00–24:00"
    runs: list[list[int]] = []
    for h in wanted:
        if runs and runs[-1][-1] == h - 1:
            runs[-1].append(h)
        else:
            runs.append([h])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 23:
        runs[0] = runs.pop() + runs[0]
    return ", ".join(f"{run[0]:02d}:00–{(run[-1] + 1) % 24:02d}:00" for run in runs)


def percent(value: float) -> str:
    """`81%`, or `0.4%` below one percent."""
    return f"{value:.1f}%" if 0 < value < 1 else f"{value:.0f}%"
