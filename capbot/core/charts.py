"""Chart specifications: plain data describing a chart; the renderer adapter turns them into PNG."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Theme = Literal["light", "dark"]


@dataclass(frozen=True)
class DailyUsageChart:
    """Daily usage bars for a billing cycle or period; future days are present with zero bytes."""

    title: str
    days: tuple[tuple[str, int, int], ...]  # (ISO date, download_bytes, upload_bytes) per day
    counted_bytes: tuple[int, ...] = ()  # per day counted after plan rules, optional
    daily_budget_bytes: float | None = None  # cap / days in period
    cap_bytes: int | None = None
    projected_total_bytes: int | None = None  # projection for the period end
    today_index: int | None = None  # which bar is today; bars after it are the future


@dataclass(frozen=True)
class SpeedHistoryChart:
    """Speed probe history: download/upload lines, slow probes marked, plan/baseline references."""

    title: str
    points: tuple[tuple[str, float | None, float | None, bool], ...]  # (ISO UTC, down, up, slow)
    tz: str = "UTC"  # display time zone (IANA)
    plan_down_bps: float | None = None
    plan_up_bps: float | None = None
    baseline_down_bps: float | None = None


@dataclass(frozen=True)
class HourlyUsageChart:
    """Usage per local hour of the day (0-23)."""

    title: str
    hours: tuple[tuple[int, int, int], ...]  # (hour 0-23 local, download_bytes, upload_bytes)


Chart = DailyUsageChart | SpeedHistoryChart | HourlyUsageChart
