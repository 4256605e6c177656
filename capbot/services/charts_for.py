"""Chart specs built from stored data: shared by the chat commands and the alert attachments."""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime, timedelta
from typing import Any

from capbot.core.charts import Chart, DailyUsageChart, SpeedHistoryChart
from capbot.services.usage import UsageService, UsageSummary


def daily_usage_chart(
    summary: UsageSummary, today: date, title: str | None = None
) -> DailyUsageChart:
    """Daily bars of a period, with the cap's even daily budget and the projection."""
    r = summary.report
    idx = next((i for i, d in enumerate(r.days) if d.day == today), None)
    budget = r.cap_bytes / r.period_days if r.cap_bytes and r.period_days else None
    return DailyUsageChart(
        title=title or f"Daily usage, {r.period.label}",
        days=tuple((d.day.isoformat(), d.rx_bytes, d.tx_bytes) for d in r.days),
        counted_bytes=tuple(d.counted_bytes for d in r.days),
        daily_budget_bytes=budget,
        cap_bytes=r.cap_bytes,
        projected_total_bytes=r.projected_bytes,
        today_index=idx,
    )


def speed_history_chart(
    probes: list[Any],
    tz_name: str,
    plan_down_bps: float | None,
    plan_up_bps: float | None,
    plan_percent: float,
    baseline_percent: float,
) -> SpeedHistoryChart:
    """Download/upload over time with plan and baseline lines; slow probes flagged."""
    ok = [p for p in probes if p.ok]
    downs = [p.download_bps for p in ok if p.download_bps]
    baseline = statistics.median(downs) if len(downs) >= 3 else None
    return SpeedHistoryChart(
        title="Speed history",
        points=tuple(
            (
                p.started_at.isoformat(),
                p.download_bps,
                p.upload_bps,
                is_slow(p.download_bps, plan_down_bps, baseline, plan_percent, baseline_percent),
            )
            for p in sorted(ok, key=lambda p: p.started_at)
        ),
        tz=tz_name,
        plan_down_bps=plan_down_bps,
        plan_up_bps=plan_up_bps,
        baseline_down_bps=baseline,
    )


def is_slow(
    down_bps: float | None,
    plan_bps: float | None,
    baseline_bps: float | None,
    plan_percent: float,
    baseline_percent: float,
) -> bool:
    """Below the plan share or the baseline share (the chart's and /history's marker)."""
    if down_bps is None:
        return False
    if plan_bps and down_bps < plan_bps * plan_percent / 100:
        return True
    return bool(baseline_bps and down_bps < baseline_bps * baseline_percent / 100)


def chart_spec(kind: str, usage: UsageService, probe_log: Any, settings: Any) -> Chart | None:
    """The chart attached to an alert of `kind` ("usage" or "speed"), or None."""
    now = datetime.now(UTC)
    if kind == "usage":
        summary = usage.report(usage.cycle(now), now)
        return daily_usage_chart(summary, now.astimezone(usage.plan.tz).date())
    if kind == "speed":
        probes = probe_log.probes(200, now - timedelta(days=14), ("ok",))
        p = settings.plan
        t = settings.rules.throttle
        return speed_history_chart(
            probes,
            p.timezone,
            p.download_mbps * 1e6 if p.download_mbps else None,
            p.upload_mbps * 1e6 if p.upload_mbps else None,
            t.plan_percent,
            t.baseline_percent,
        )
    return None
