"""Chart data types and their matplotlib (Agg, object-oriented API) rendering to PNG bytes."""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from capbot.core.charts import Chart, DailyUsageChart, HourlyUsageChart, SpeedHistoryChart, Theme
from capbot.core.units import format_bps, format_bytes
from capbot.errors import CapbotError

if TYPE_CHECKING:  # matplotlib is imported lazily: it costs ~0.5 s and ~50 MiB RSS
    from matplotlib.axes import Axes


WIDTH_PX = 1200
HEIGHT_PX = 700
_DPI = 100


class ChartError(CapbotError):
    """A chart could not be rendered (bad data, or the render worker failed)."""


_PALETTES: dict[str, dict[str, str]] = {
    "light": {
        "bg": "#ffffff",
        "fg": "#1d1d1f",
        "muted": "#6e6e73",
        "grid": "#e3e3e8",
        "down": "#1f6fd1",
        "up": "#f08c00",
        "counted": "#1d1d1f",
        "slow": "#d62828",
        "budget": "#2a9d4b",
        "future": "#f2f2f5",
        "over": "#d62828",
    },
    "dark": {
        "bg": "#17212b",  # Telegram's dark chat background, so the image blends in
        "fg": "#eef1f4",
        "muted": "#9aa5b1",
        "grid": "#2c3a47",
        "down": "#5aa9ff",
        "up": "#ffb347",
        "counted": "#eef1f4",
        "slow": "#ff5c5c",
        "budget": "#5fd38d",
        "future": "#1e2a36",
        "over": "#ff6b6b",
    },
}

# matplotlib keeps global state (rcParams, font cache); one render at a time is safe.
_RENDER_LOCK = threading.Lock()
_MIN_AXIS_BYTES = 1e6  # an idle day still gets a readable 0-1 MB axis
_LEGEND_ORDER = {"download": 0, "upload": 1, "counted": 2}


def preload() -> None:
    """Import matplotlib and load the font cache so the first render is warm."""
    from matplotlib import font_manager
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    font_manager.findfont("DejaVu Sans")


def render_png(chart: Chart, theme: Theme = "light") -> bytes:
    """Render a chart to a 1200x700 PNG; raises ChartError when the data cannot be drawn."""
    if theme not in _PALETTES:
        raise ChartError(f"unknown theme {theme!r} (use 'light' or 'dark')")
    try:
        with _RENDER_LOCK:
            return _render_locked(chart, theme)
    except CapbotError:
        raise
    except Exception as exc:  # matplotlib/numpy/zoneinfo errors become ours at the edge
        raise ChartError(f"cannot render {type(chart).__name__}: {exc}") from exc


def _render_locked(chart: Chart, theme: Theme) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    pal = _PALETTES[theme]
    with matplotlib.rc_context(_rc(pal)):
        layout = ConstrainedLayoutEngine(h_pad=0.12, w_pad=0.15)  # inches of margin
        fig = Figure(figsize=(WIDTH_PX / _DPI, HEIGHT_PX / _DPI), dpi=_DPI, layout=layout)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        fig.suptitle(chart.title, fontsize=24, fontweight="bold", x=0.015, ha="left")
        if isinstance(chart, DailyUsageChart):
            _draw_daily(ax, chart, pal)
        elif isinstance(chart, SpeedHistoryChart):
            _draw_speed(ax, chart, pal)
        elif isinstance(chart, HourlyUsageChart):
            _draw_hourly(ax, chart, pal)
        else:
            raise ChartError(f"unknown chart type {type(chart).__name__}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _rc(pal: dict[str, str]) -> dict[Any, Any]:
    return {
        "font.family": "DejaVu Sans",
        "font.size": 17,
        "axes.titlesize": 18,
        "axes.labelsize": 18,
        "xtick.labelsize": 16,
        "ytick.labelsize": 16,
        "legend.fontsize": 16,
        "figure.facecolor": pal["bg"],
        "savefig.facecolor": pal["bg"],
        "axes.facecolor": pal["bg"],
        "axes.edgecolor": pal["muted"],
        "axes.labelcolor": pal["fg"],
        "axes.titlecolor": pal["fg"],
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.grid.axis": "y",
        "axes.axisbelow": True,
        "grid.color": pal["grid"],
        "grid.linewidth": 1.2,
        "text.color": pal["fg"],
        "xtick.color": pal["muted"],
        "ytick.color": pal["muted"],
        "xtick.labelcolor": pal["fg"],
        "ytick.labelcolor": pal["fg"],
        "legend.frameon": False,
        "legend.labelcolor": pal["fg"],
        "lines.linewidth": 2.8,
    }


def _no_data(ax: Axes, pal: dict[str, str], hint: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.56, "No data yet", ha="center", va="center", fontsize=40, color=pal["fg"])
    ax.text(0.5, 0.40, hint, ha="center", va="center", fontsize=20, color=pal["muted"])


def _byte_unit(max_bytes: float) -> tuple[str, float]:
    """The SI unit that keeps axis numbers short: (name, bytes per unit)."""
    for name, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if max_bytes >= factor:
            return name, factor
    return ("kB", 1e3) if max_bytes >= 1e3 else ("MB", 1e6)


def _rate_unit(max_bps: float) -> tuple[str, float]:
    """Mbit/s for broadband (even gigabit lines read best as 940 Mbit/s), kbit/s when tiny."""
    if max_bps >= 1e10:
        return "Gbit/s", 1e9
    if max_bps >= 1e6 or max_bps <= 0:
        return "Mbit/s", 1e6
    return "kbit/s", 1e3


def _number(value: float) -> str:
    """A short axis-unit number for labels: 100, 92.5, 1.25."""
    text = f"{value:.{0 if value >= 100 else (1 if value >= 10 else 2)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _stacked_bars(
    ax: Axes, x: Sequence[float], down: Sequence[float], up: Sequence[float], pal: dict[str, str]
) -> None:
    ax.bar(x, down, width=0.78, color=pal["down"], label="download", zorder=2)
    ax.bar(x, up, width=0.78, bottom=down, color=pal["up"], label="upload", zorder=2)


def _draw_daily(ax: Axes, chart: DailyUsageChart, pal: dict[str, str]) -> None:
    days = chart.days
    if not days:
        _no_data(ax, pal, "usage appears after the first day of sampling")
        return
    n = len(days)
    if chart.counted_bytes and len(chart.counted_bytes) != n:
        raise ChartError(f"counted_bytes has {len(chart.counted_bytes)} values for {n} days")
    today = chart.today_index
    if today is not None and not 0 <= today < n:
        raise ChartError(f"today_index {today} is outside the {n} days")
    totals = [d + u for _, d, u in days]
    top = max([*totals, *chart.counted_bytes, chart.daily_budget_bytes or 0.0, _MIN_AXIS_BYTES])
    unit, factor = _byte_unit(top)
    x = list(range(n))
    down = [d / factor for _, d, _ in days]
    up = [u / factor for _, _, u in days]

    if today is not None and today < n - 1:
        ax.axvspan(today + 0.5, n - 0.5, color=pal["future"], zorder=0, lw=0)
    _stacked_bars(ax, x, down, up, pal)
    if today is not None:
        ax.bar(
            [today],
            [totals[today] / factor],
            width=0.78,
            fill=False,
            edgecolor=pal["fg"],
            linewidth=2.5,
            zorder=3,
        )
    if chart.counted_bytes:
        last = n if today is None else today + 1  # future days have nothing counted yet
        counted = [c / factor for c in chart.counted_bytes[:last]]
        bar_px = 0.78 * (WIDTH_PX * 0.85) / n  # the axes span ~85% of the width
        ax.plot(
            x[:last],
            counted,
            linestyle="none",
            marker="_",
            markersize=bar_px * 0.72,  # points are 72 per inch, pixels 100
            markeredgewidth=3.5,
            color=pal["counted"],
            label="counted",
            zorder=4,
        )
    if chart.daily_budget_bytes:
        ax.axhline(
            chart.daily_budget_bytes / factor,
            color=pal["budget"],
            linestyle=(0, (6, 4)),
            linewidth=2.5,
            zorder=3,
            label=f"daily budget {format_bytes(chart.daily_budget_bytes)}",
        )

    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, top / factor * 1.22)  # headroom for the legend
    ax.set_ylabel(f"Data per day ({unit})")
    step = max(1, math.ceil(n / 10))
    ticks = [i for i in x if i % step == 0]
    if today is not None and today not in ticks:
        ticks = [t for t in ticks if abs(t - today) >= step / 2] + [today]
    ticks.sort()
    ax.set_xticks(ticks, _day_labels(days, ticks, today))
    for label, tick in zip(ax.get_xticklabels(), ticks, strict=True):
        if tick == today:
            label.set_fontweight("bold")
    ax.tick_params(axis="x", length=0, pad=8)
    # matplotlib lists lines before bars; keep the reading order download, upload, counted, budget.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: _LEGEND_ORDER.get(labels[i], 9))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        ncols=4,
        handlelength=1.4,
        columnspacing=1.2,
    )
    ax.set_title(_daily_summary(chart), loc="left", fontsize=18, color=pal["muted"], pad=10)
    projected = chart.projected_total_bytes
    if chart.cap_bytes and projected is not None and projected > chart.cap_bytes:
        ax.set_title("over cap", loc="right", fontsize=18, color=pal["over"], fontweight="bold")


def _day_labels(
    days: Sequence[tuple[str, int, int]], ticks: Sequence[int], today: int | None
) -> list[str]:
    """Day-of-month labels, with the month name on the first tick and wherever it changes."""
    labels: list[str] = []
    month = 0
    for i in ticks:
        date = datetime.fromisoformat(days[i][0])
        if i == today:
            labels.append("today")
            continue
        labels.append(date.strftime("%b %-d") if date.month != month else str(date.day))
        month = date.month
    return labels


def _daily_summary(chart: DailyUsageChart) -> str:
    counted = chart.counted_bytes
    used = sum(counted) if counted else sum(d + u for _, d, u in chart.days)
    parts = [f"Used {format_bytes(used)}"]
    if chart.cap_bytes:
        share = used / chart.cap_bytes
        parts[0] += f" of {format_bytes(chart.cap_bytes)} ({share:.{1 if share < 0.1 else 0}%})"
    if chart.projected_total_bytes is not None:
        parts.append(f"projected {format_bytes(chart.projected_total_bytes)} by period end")
    return "  ·  ".join(parts)


def _draw_speed(ax: Axes, chart: SpeedHistoryChart, pal: dict[str, str]) -> None:
    from zoneinfo import ZoneInfo

    from matplotlib import dates as mdates

    zone = ZoneInfo(chart.tz)
    points = sorted((_parse_utc(t), d, u, s) for t, d, u, s in chart.points)
    if not any(d is not None or u is not None for _, d, u, _ in points):
        _no_data(ax, pal, "speed history appears after the first probe")
        return
    refs = [chart.plan_down_bps, chart.plan_up_bps, chart.baseline_down_bps]
    values = [v for _, d, u, _ in points for v in (d, u) if v is not None]
    top = max([*values, *(r for r in refs if r)])
    unit, factor = _rate_unit(top)
    times = [float(mdates.date2num(t)) for t, _, _, _ in points]

    def scaled(v: float | None) -> float:
        return math.nan if v is None else v / factor  # NaN leaves a gap in the line

    down = [scaled(d) for _, d, _, _ in points]
    up = [scaled(u) for _, _, u, _ in points]
    dot_px = 6 if len(points) <= 60 else 0  # dots show isolated probes; dense history needs none
    ax.plot(
        times, down, color=pal["down"], label="download", marker="o", markersize=dot_px, zorder=3
    )
    ax.plot(times, up, color=pal["up"], label="upload", marker="o", markersize=dot_px, zorder=3)
    # A slow probe is marked on its download value; with none, on upload; with neither, on 0.
    slow = [
        (t, next((v for v in (d, u) if not math.isnan(v)), 0.0))
        for t, d, u, point in zip(times, down, up, points, strict=True)
        if point[3]
    ]
    if slow:
        ax.plot(
            [t for t, _ in slow],
            [v for _, v in slow],
            linestyle="none",
            marker="o",
            markersize=13,
            markerfacecolor="none",
            markeredgewidth=3,
            color=pal["slow"],
            label="slow",
            zorder=4,
        )

    ax.set_ylim(0, top / factor * 1.2)
    for value, color, style, text in (
        (chart.plan_down_bps, pal["down"], (0, (7, 4)), "plan ↓"),
        (chart.plan_up_bps, pal["up"], (0, (7, 4)), "plan ↑"),
        (chart.baseline_down_bps, pal["muted"], (0, (2, 3)), "baseline ↓"),
    ):
        if value:
            ax.axhline(value / factor, color=color, linestyle=style, linewidth=2.2, zorder=2)
            ax.annotate(
                f"{text} {_number(value / factor)} {unit}",
                xy=(1.0, value / factor),
                xycoords=("axes fraction", "data"),
                xytext=(-6, 5),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=15,
                color=pal["fg"],
                bbox=dict(boxstyle="round,pad=0.2", fc=pal["bg"], ec="none", alpha=0.8),
            )
    locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator, tz=zone, show_offset=False)
    formatter.formats = ["%Y", "%b", "%b %-d", "%H:%M", "%H:%M", "%S.%f"]
    formatter.zero_formats = ["", "%Y", "%b %-d", "%b %-d", "%H:%M", "%H:%M"]
    ax.xaxis.set_major_formatter(formatter)
    if len(times) == 1:
        span = 1 / 24  # one hour either side of a lone probe
        ax.set_xlim(times[0] - span, times[0] + span)
    ax.set_ylabel(f"Speed ({unit})")
    ax.set_xlabel(f"Time ({chart.tz})")
    ax.grid(True, axis="x", color=pal["grid"], linewidth=1.0)
    ax.legend(loc="upper left", ncols=3)
    ax.set_title(_speed_summary(points), loc="left", fontsize=18, color=pal["muted"], pad=10)


def _speed_summary(points: Sequence[tuple[datetime, float | None, float | None, bool]]) -> str:
    downs = [d for _, d, _, _ in points if d is not None]
    ups = [u for _, _, u, _ in points if u is not None]
    parts = [f"{len(points)} probe{'' if len(points) == 1 else 's'}"]
    if downs:
        parts.append(f"↓ median {format_bps(sorted(downs)[len(downs) // 2])}")
    if ups:
        parts.append(f"↑ median {format_bps(sorted(ups)[len(ups) // 2])}")
    slow = sum(1 for *_, s in points if s)
    if slow:
        parts.append(f"{slow} slow")
    return "  ·  ".join(parts)


def _draw_hourly(ax: Axes, chart: HourlyUsageChart, pal: dict[str, str]) -> None:
    if not chart.hours:
        _no_data(ax, pal, "usage appears after the first hour of sampling")
        return
    down_bytes = [0] * 24
    up_bytes = [0] * 24
    for hour, d, u in chart.hours:
        if not 0 <= hour <= 23:
            raise ChartError(f"hour {hour} is outside 0-23")
        down_bytes[hour] += d  # repeated hours (e.g. a DST fold) add up
        up_bytes[hour] += u
    totals = [d + u for d, u in zip(down_bytes, up_bytes, strict=True)]
    top = max([*totals, _MIN_AXIS_BYTES])
    unit, factor = _byte_unit(top)
    x = list(range(24))
    _stacked_bars(ax, x, [d / factor for d in down_bytes], [u / factor for u in up_bytes], pal)
    ax.set_xlim(-0.6, 23.6)
    ax.set_ylim(0, top / factor * 1.2)
    ax.set_xticks(list(range(0, 24, 3)), [f"{h:02d}:00" for h in range(0, 24, 3)])
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(f"Data per hour ({unit})")
    ax.set_xlabel("Hour of day (local time)")
    ax.legend(loc="upper left", ncols=2)
    total = sum(totals)
    peak = max(range(24), key=lambda h: totals[h])
    summary = f"Total {format_bytes(total)}"
    if total:
        summary += f"  ·  busiest hour {peak:02d}:00 ({format_bytes(totals[peak])})"
    ax.set_title(summary, loc="left", fontsize=18, color=pal["muted"], pad=10)
