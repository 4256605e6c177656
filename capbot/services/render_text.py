"""Plain-text renderings of reports, shared by the CLI and the chat commands."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from capbot.core.units import format_bytes
from capbot.services.usage import UsageSummary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def usage_table(summary: UsageSummary, tz_name: str, *, compact: bool = False) -> str:
    """A usage report as aligned text (compact: fewer lines for chat)."""
    r = summary.report
    tz = ZoneInfo(tz_name)
    lines = [f"Usage {r.period.label}"]
    if not compact:
        lines.append(
            f"  {r.period.start.astimezone(tz):%Y-%m-%d %H:%M} – {r.period.end.astimezone(tz):%Y-%m-%d %H:%M} {tz_name}"
        )
        lines.append("")
        lines.append(f"  {'interface':<16}{'download':>12}{'upload':>12}{'total':>12}")
        for iface, (rx, tx) in sorted(r.interfaces.items()):
            lines.append(
                f"  {iface:<16}{format_bytes(rx):>12}{format_bytes(tx):>12}{format_bytes(rx + tx):>12}"
            )
        lines.append(
            f"  {'all':<16}{format_bytes(r.rx_bytes):>12}{format_bytes(r.tx_bytes):>12}"
            f"{format_bytes(r.total_bytes):>12}"
        )
        lines.append("")
    else:
        lines.append(
            f"↓ {format_bytes(r.rx_bytes)}  ↑ {format_bytes(r.tx_bytes)}  = {format_bytes(r.total_bytes)}"
        )
    counted = f"Counted: {format_bytes(r.counted_bytes)}"
    if r.unmetered_bytes:
        counted += f" ({format_bytes(r.unmetered_bytes)} in free hours)"
    if r.cap_bytes:
        counted += f" of {format_bytes(r.cap_bytes)} cap ({_pct(r.percent_of_cap)})"
    lines.append(("  " if not compact else "") + counted)
    pad = "  " if not compact else ""
    if r.cap_bytes and r.projected_bytes is not None:
        lines.append(
            f"{pad}Projected at period end: {format_bytes(r.projected_bytes)} ({r.projection_method})"
        )
    elif r.cap_bytes:
        lines.append(f"{pad}Projection: {r.projection_method}")
    if r.daily_budget_bytes is not None:
        lines.append(f"{pad}Daily budget left: {format_bytes(r.daily_budget_bytes)}/day")
    if r.daily_average_bytes is not None:
        lines.append(f"{pad}Daily average: {format_bytes(r.daily_average_bytes)}")
    if r.peak_day is not None and not compact:
        lines.append(
            f"{pad}Peak day: {r.peak_day.day.isoformat()} ({format_bytes(r.peak_day.counted_bytes)})"
        )
    if r.cost is not None:
        lines.append(f"{pad}Cost: {r.cost:.2f} {r.currency}".rstrip())
    lines.append(f"{pad}Speed tests used {format_bytes(summary.probe_bytes)} this period")
    return "\n".join(lines)
