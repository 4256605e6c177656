"""Delivery policy: backoff, quiet hours, repeat spacing and how held alerts are composed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo

from capbot.core.model import Alert
from capbot.core.rules.settings import DeliverySettings
from capbot.core.rules.text import duration, local_time

_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def backoff_s(attempts: int, settings: DeliverySettings) -> float:
    """Seconds before the next try after `attempts` failed ones: base * 2^(n-1), capped."""
    n = max(1, attempts)
    # min() before the power would overflow for absurd attempt counts.
    return min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** min(n - 1, 40))


def quiet_until(now: datetime, quiet: tuple[time, time] | None, tz: tzinfo) -> datetime | None:
    """The end of the quiet hours `now` falls in (aware UTC), or None outside them.

    `quiet` is a local (start, end) pair; start > end wraps midnight (22:00-07:00).
    """
    if quiet is None or quiet[0] == quiet[1]:
        return None
    start, end = quiet
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:
        inside = t >= start or t < end
        end_day = local.date() if t < end else local.date() + timedelta(days=1)
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(UTC)


def hold_until(
    alert: Alert,
    now: datetime,
    last_same_rule: datetime | None,
    settings: DeliverySettings,
    tz: tzinfo,
) -> datetime | None:
    """When a due alert may go out instead of now, or None to send it now.

    Critical alerts are never held. Others wait out the quiet hours, and alerts of the
    episode-like rules wait until `min_repeat_s` after the last one of their rule reached the
    same target. Held alerts stay pending: nothing is dropped.
    """
    if alert.severity == "critical":
        return None
    holds: list[datetime] = []
    quiet_end = quiet_until(now, settings.quiet_hours, tz)
    if quiet_end is not None:
        holds.append(quiet_end)
    if alert.rule in settings.repeat_rules and last_same_rule is not None:
        ready = last_same_rule + timedelta(seconds=settings.min_repeat_s)
        if ready > now:
            holds.append(ready)
    return max(holds) if holds else None


def _late(alert: Alert, now: datetime, settings: DeliverySettings, tz: tzinfo) -> str | None:
    late_s = (now - alert.raised_at).total_seconds()
    if late_s <= settings.late_after_s:
        return None
    return f"raised {local_time(alert.raised_at, tz, with_date=True)}, {duration(late_s)} ago"


def compose(
    alerts: Sequence[Alert], now: datetime, settings: DeliverySettings, tz: tzinfo
) -> tuple[str, str, str | None]:
    """(title, body, chart kind) of one message carrying `alerts` (oldest first).

    Several alerts due for one target at once (after quiet hours, an outage or a retry) go out
    as one message, most severe first, each saying when it was raised if that is a while ago.
    """
    if not alerts:
        raise ValueError("nothing to compose")
    ordered = sorted(alerts, key=lambda a: (_SEVERITY_RANK.get(a.severity, 3), a.raised_at))
    chart = next((a.chart for a in ordered if a.chart), None)
    if len(ordered) == 1:
        alert = ordered[0]
        late = _late(alert, now, settings, tz)
        body = alert.body + (f"\n\n(Delivered late: {late}.)" if late else "")
        return alert.title, body, chart
    title = f"{ordered[0].title} (+{len(ordered) - 1} more)"
    parts = []
    for alert in ordered:
        late = _late(alert, now, settings, tz)
        head = f"• {alert.title}" + (f" ({late})" if late else "")
        parts.append(f"{head}\n{alert.body}")
    return title, "\n\n".join(parts), chart
