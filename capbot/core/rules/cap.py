"""Data-cap rules: thresholds once per cycle, the "you will reach your cap on" warning, the daily budget."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, timedelta, tzinfo

from capbot.core.model import Alert, Severity
from capbot.core.rules.settings import CapRuleSettings
from capbot.core.rules.text import local_day, percent
from capbot.core.rules.types import CapSnapshot, JsonState, Outcome
from capbot.core.units import format_bytes

RULE_STATE = "cap"


@dataclass(frozen=True)
class CapState(JsonState):
    """Which cap alerts the current cycle has raised."""

    cycle_id: str | None = None
    fired_percent: list[float] = field(default_factory=list)
    projection_date: str | None = None  # reach date of the last projection warning (ISO)
    budget_date: str | None = None  # local date of the last daily-budget alert (ISO)


def rolled_over(state: CapState | None, snap: CapSnapshot) -> bool:
    """True when `snap` belongs to a later cycle than the one the state last saw."""
    return state is not None and state.cycle_id is not None and state.cycle_id != snap.cycle_id


def evaluate_cap(
    state: CapState | None, snap: CapSnapshot, settings: CapRuleSettings, tz: tzinfo
) -> Outcome[CapState]:
    """Raise the cap alerts `snap` calls for; a new cycle re-arms every threshold."""
    cur = (
        state if state is not None and state.cycle_id == snap.cycle_id else CapState(snap.cycle_id)
    )
    alerts: list[Alert] = []
    if snap.cap_bytes and snap.cap_bytes > 0:
        for step in (_thresholds, _projection, _daily_budget):
            cur, alert = step(cur, snap, snap.cap_bytes, settings, tz)
            if alert is not None:
                alerts.append(alert)
    return Outcome(cur, tuple(alerts))


def _context(snap: CapSnapshot, cap_bytes: int, tz: tzinfo) -> str:
    left_s = max(0.0, (snap.cycle_end - snap.now).total_seconds())
    used = snap.counted_bytes * 100 / cap_bytes
    lines = [
        f"Used {format_bytes(snap.counted_bytes)} of {format_bytes(cap_bytes)} ({percent(used)}) "
        f"this cycle; {left_s / 86400:.1f} days left (the cycle ends with "
        f"{local_day(snap.cycle_end - timedelta(seconds=1), tz)})."
    ]
    if snap.projected_bytes is not None:
        method = f" ({snap.projection_method})" if snap.projection_method else ""
        lines.append(f"Projected by cycle end: {format_bytes(snap.projected_bytes)}{method}.")
    if snap.daily_budget_bytes is not None and snap.counted_bytes < cap_bytes:
        lines.append(
            f"Daily budget to stay under the cap: {format_bytes(snap.daily_budget_bytes)}."
        )
    return "\n".join(lines)


def _severity(pct: float) -> Severity:
    if pct >= 100:
        return "critical"
    return "warning" if pct >= 80 else "info"


def _thresholds(
    cur: CapState, snap: CapSnapshot, cap_bytes: int, settings: CapRuleSettings, tz: tzinfo
) -> tuple[CapState, Alert | None]:
    used = snap.counted_bytes * 100 / cap_bytes
    crossed = [p for p in settings.thresholds_percent if used >= p and p not in cur.fired_percent]
    if not crossed:
        return cur, None
    # Several thresholds crossed at once (first run mid-cycle, a long downtime): one alert for the
    # highest, the lower ones count as fired; three messages at once would only be noise.
    top = max(crossed)
    fired = sorted({*cur.fired_percent, *(p for p in settings.thresholds_percent if p <= top)})
    title = (
        f"Data cap reached: {format_bytes(snap.counted_bytes)} of {format_bytes(cap_bytes)}"
        if top >= 100
        else f"Data cap: over {percent(top)} used ({format_bytes(snap.counted_bytes)} of {format_bytes(cap_bytes)})"
    )
    alert = Alert(
        key=f"cap:{snap.cycle_id}:{top:g}",
        rule="cap",
        severity=_severity(top),
        title=title,
        body=_context(snap, cap_bytes, tz),
        raised_at=snap.now,
        chart="usage",
    )
    return replace(cur, fired_percent=fired), alert


def reach_date(snap: CapSnapshot, cap_bytes: int, tz: tzinfo) -> date | None:
    """The local date the projection reaches the cap, None when it does not within the cycle.

    The pace is the projection's own: (projected - counted) spread over the time left.
    """
    if snap.projected_bytes is None or snap.projected_bytes <= cap_bytes:
        return None
    if snap.counted_bytes >= cap_bytes:
        return None
    left_s = (snap.cycle_end - snap.now).total_seconds()
    if left_s <= 0:
        return None
    pace_bps = (snap.projected_bytes - snap.counted_bytes) / left_s  # bytes per second
    if pace_bps <= 0:
        return None
    reach = snap.now + timedelta(seconds=(cap_bytes - snap.counted_bytes) / pace_bps)
    return reach.astimezone(tz).date() if reach < snap.cycle_end else None


def _projection(
    cur: CapState, snap: CapSnapshot, cap_bytes: int, settings: CapRuleSettings, tz: tzinfo
) -> tuple[CapState, Alert | None]:
    if not settings.projection_warning:
        return cur, None
    elapsed_s = (snap.now - snap.cycle_start).total_seconds()
    used = snap.counted_bytes * 100 / cap_bytes
    if elapsed_s < settings.projection_min_elapsed_s or used < settings.projection_min_used_percent:
        return cur, None
    when = reach_date(snap, cap_bytes, tz)
    if when is None:
        return cur, None
    if cur.projection_date is not None:
        last = date.fromisoformat(cur.projection_date)
        if when > last - timedelta(days=settings.projection_rewarn_days):
            return cur, None
    earlier = " (earlier than last warned)" if cur.projection_date else ""
    alert = Alert(
        key=f"projection:{snap.cycle_id}:{when.isoformat()}",
        rule="projection",
        severity="warning",
        title=f"At this pace you will reach your cap on {when:%a %Y-%m-%d}{earlier}",
        body=_context(snap, cap_bytes, tz),
        raised_at=snap.now,
        chart="usage",
    )
    return replace(cur, projection_date=when.isoformat()), alert


def _daily_budget(
    cur: CapState, snap: CapSnapshot, cap_bytes: int, settings: CapRuleSettings, tz: tzinfo
) -> tuple[CapState, Alert | None]:
    budget = snap.daily_budget_bytes
    if not settings.daily_budget or budget is None or budget <= 0:
        return cur, None
    # Past the cap the 100% alert has said it all; a daily reminder would be nagging.
    if snap.counted_bytes >= cap_bytes or snap.today_counted_bytes <= budget:
        return cur, None
    today = snap.now.astimezone(tz).date().isoformat()
    if cur.budget_date == today:
        return cur, None
    alert = Alert(
        key=f"budget:{snap.cycle_id}:{today}",
        rule="daily_budget",
        severity="info",
        title=(
            f"Daily budget exceeded: {format_bytes(snap.today_counted_bytes)} today "
            f"(budget {format_bytes(budget)})"
        ),
        body=_context(snap, cap_bytes, tz),
        raised_at=snap.now,
        chart="usage",
    )
    return replace(cur, budget_date=today), alert
