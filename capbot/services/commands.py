"""The platform-neutral command table: a CommandRequest in, a Reply (text + optional PNG) out."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from capbot import __version__
from capbot.core.charts import Chart, HourlyUsageChart
from capbot.core.model import CommandRequest, ProbeResult, Progress, Reply
from capbot.core.units import format_bps, format_bytes
from capbot.errors import CapbotError
from capbot.services.charts_for import daily_usage_chart, is_slow, speed_history_chart
from capbot.services.render_text import usage_table
from capbot.services.usage import UsageService, UsageSummary

log = logging.getLogger(__name__)


class ProbeRunner(Protocol):
    """Runs one probe now, sharing the single-probe lock with the scheduler."""

    @property
    def running(self) -> bool: ...
    async def run_now(
        self, trigger: str = "manual", progress: Progress | None = None
    ) -> ProbeResult: ...


class ProbeLog(Protocol):
    """Stored probes (sync; called in a worker thread)."""

    def probes(
        self, limit: int = 20, since: datetime | None = None, statuses: Any = None
    ) -> list[ProbeResult]: ...


class AlertLog(Protocol):
    """Stored alerts."""

    async def list_alerts(self, which: Any = "all", limit: int = 50) -> list[Any]: ...


class Renderer(Protocol):
    """Turns a chart spec into PNG bytes (off the event loop)."""

    async def render(self, chart: Chart) -> bytes: ...


@dataclass(frozen=True)
class PlanFacts:
    """What /plan, /history and /speedtest show of the configuration."""

    cap_bytes: int | None
    cycle_start_day: int
    timezone: str
    counted: str
    unmetered: tuple[tuple[int, int], ...] = ()
    calibration: float = 1.0
    cost_per_gb: float | None = None
    currency: str = ""
    download_bps: float | None = None
    upload_bps: float | None = None
    slow_plan_percent: float = 50.0
    slow_baseline_percent: float = 60.0
    probe_interval_s: float = 3600.0
    probe_mode: str = "economy"
    probe_max_bytes: int = 300_000_000  # a probe's byte budget, both directions


@dataclass
class StatusFacts:
    """Live facts for /status, filled by the composition root."""

    started_mono: float = field(default_factory=time.monotonic)
    interfaces: Callable[[], list[str]] = lambda: []
    last_sample_at: Callable[[], datetime | None] = lambda: None
    database_bytes: Callable[[], int | None] = lambda: None


COMMANDS: tuple[tuple[str, str], ...] = (
    ("usage", "Usage: today, week, month, cycle, last-cycle or YYYY-MM"),
    ("speedtest", "Run a speed test now (states its data cost first)"),
    ("history", "Recent speed tests: /history 10 or /history 7d"),
    ("status", "Service status: interfaces, last sample and probe, database"),
    ("alerts", "Recent alerts"),
    ("plan", "The configured internet plan"),
    ("help", "What I can do"),
)

_HISTORY_RE = re.compile(r"^(\d{1,3})(d?)$")


def _minutes(m: int) -> str:
    return f"{m // 60 % 24:02d}:{m % 60:02d}"


class Commands:
    """The command table the chat bots (and tests) talk to."""

    def __init__(
        self,
        *,
        usage: UsageService,
        probe_log: ProbeLog,
        plan: PlanFacts,
        status: StatusFacts | None = None,
        prober: ProbeRunner | None = None,
        alerts: AlertLog | None = None,
        charts: Renderer | None = None,
        speedtest_cooldown_s: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.usage = usage
        self.probe_log = probe_log
        self.plan = plan
        self.status = status or StatusFacts()
        self.prober = prober
        self.alerts = alerts
        self.charts = charts
        self.cooldown_s = speedtest_cooldown_s
        self.clock = clock
        self.mono = mono
        self.tz = ZoneInfo(plan.timezone)
        self._last_chat_probe: float | None = None
        self._handlers: dict[str, Callable[[tuple[str, ...], Progress], Awaitable[Reply]]] = {
            "usage": self._usage,
            "speedtest": self._speedtest,
            "history": self._history,
            "status": self._status,
            "alerts": self._alerts,
            "plan": self._plan,
            "help": self._help,
            "start": self._help,  # Telegram sends /start when a chat opens
        }

    def command_list(self) -> list[tuple[str, str]]:
        """(name, description) for setMyCommands and slash-command registration."""
        return list(COMMANDS)

    async def handle(self, request: CommandRequest, progress: Progress) -> Reply:
        """Answer one command; never raises for bad input or a failing dependency."""
        name = request.name.lower().lstrip("/")
        handler = self._handlers.get(name)
        if handler is None:
            return self._help_reply(f"Unknown command /{name}.")
        try:
            return await handler(tuple(request.args), progress)
        except _BadArgs as exc:
            return self._help_reply(str(exc))
        except CapbotError as exc:
            log.warning("/%s failed: %s", name, exc)
            return Reply(f"Sorry, /{name} failed: {exc}")

    # --- helpers ------------------------------------------------------------------------------

    def _help_reply(self, hint: str) -> Reply:
        return Reply(f"{hint}\n\n{self._help_text()}")

    def _help_text(self) -> str:
        lines = ["Commands:"]
        lines += [f"/{name} – {desc}" for name, desc in COMMANDS]
        return "\n".join(lines)

    async def _chart(self, chart: Chart) -> bytes | None:
        if self.charts is None:
            return None
        try:
            return await self.charts.render(chart)
        except CapbotError as exc:
            log.warning("chart failed: %s", exc)  # the text still answers the question
            return None

    # --- commands -----------------------------------------------------------------------------

    async def _help(self, args: tuple[str, ...], progress: Progress) -> Reply:
        return Reply(
            "capbot watches your internet line: usage against your cap, speed and alerts.\n\n"
            + self._help_text()
        )

    async def _usage(self, args: tuple[str, ...], progress: Progress) -> Reply:
        if len(args) > 1:
            raise _BadArgs(
                "Usage takes one period: /usage today|week|month|cycle|last-cycle|YYYY-MM"
            )
        spec = args[0].lower() if args else "cycle"
        try:
            period = self.usage.period(spec)
        except ValueError as exc:
            raise _BadArgs(f"/usage {spec}: {exc}") from None
        summary = await asyncio.to_thread(self.usage.report, period)
        text = usage_table(summary, self.plan.timezone, compact=True)
        png = await self._chart(self._usage_chart(summary, spec))
        return Reply(text, png, filename="usage.png")

    def _usage_chart(self, summary: UsageSummary, spec: str) -> Chart:
        r = summary.report
        if spec in ("today", "yesterday"):
            hours = self.usage.hourly(r.period)
            return HourlyUsageChart(title=f"Usage by hour, {r.period.label}", hours=tuple(hours))
        return daily_usage_chart(summary, self.clock().astimezone(self.tz).date())

    async def _speedtest(self, args: tuple[str, ...], progress: Progress) -> Reply:
        if args:
            raise _BadArgs("/speedtest takes no arguments.")
        if self.prober is None:
            return Reply("Speed tests are switched off (probe.enabled: false).")
        if self.prober.running:
            return Reply("A speed test is already running; try again in a minute.")
        now = self.mono()
        if self._last_chat_probe is not None and now - self._last_chat_probe < self.cooldown_s:
            wait = self.cooldown_s - (now - self._last_chat_probe)
            return Reply(
                f"Please wait {wait:.0f} s before the next speed test: each one costs data."
            )
        self._last_chat_probe = now
        await progress(
            f"Running a speed test ({self.plan.probe_mode} mode): it uses at most "
            f"{format_bytes(self.plan.probe_max_bytes)} of data, usually far less…"
        )
        result = await self.prober.run_now("chat", progress)
        return Reply(_probe_text(result, self.tz))

    async def _history(self, args: tuple[str, ...], progress: Progress) -> Reply:
        limit, since = 10, None
        if len(args) > 1:
            raise _BadArgs("/history takes one argument: a count (10) or days (7d).")
        if args:
            m = _HISTORY_RE.match(args[0].lower())
            if not m or int(m.group(1)) == 0:
                raise _BadArgs(f"/history {args[0]}: expected a count like 10 or days like 7d.")
            if m.group(2):
                since, limit = self.clock() - timedelta(days=int(m.group(1))), 500
            else:
                limit = min(int(m.group(1)), 200)
        probes = await asyncio.to_thread(self.probe_log.probes, limit, since, ("ok", "failed"))
        if not probes:
            return Reply("No speed tests yet. Run /speedtest to make one.")
        chart = speed_history_chart(
            probes,
            self.plan.timezone,
            self.plan.download_bps,
            self.plan.upload_bps,
            self.plan.slow_plan_percent,
            self.plan.slow_baseline_percent,
        )
        baseline = chart.baseline_down_bps
        lines = [f"Last {len(probes)} speed tests ({self.plan.timezone}):"]
        for p in probes[:15]:
            lines.append(_probe_line(p, self.tz, self._slow(p, baseline)))
        if len(probes) > 15:
            lines.append(f"… and {len(probes) - 15} more in the chart")
        if baseline:
            lines.append(f"Baseline (median download): {format_bps(baseline)}")
        return Reply("\n".join(lines), await self._chart(chart), filename="history.png")

    def _slow(self, p: ProbeResult, baseline: float | None) -> bool:
        return p.ok and is_slow(
            p.download_bps,
            self.plan.download_bps,
            baseline,
            self.plan.slow_plan_percent,
            self.plan.slow_baseline_percent,
        )

    async def _status(self, args: tuple[str, ...], progress: Progress) -> Reply:
        uptime = timedelta(seconds=int(self.mono() - self.status.started_mono))
        last_sample = self.status.last_sample_at()
        probes = await asyncio.to_thread(self.probe_log.probes, 1, None, ("ok", "failed"))
        summary = await asyncio.to_thread(self.usage.report, self.usage.period("cycle"))
        lines = [
            f"capbot {__version__}, up {uptime}",
            f"Counting: {', '.join(self.status.interfaces()) or 'nothing yet'}",
            f"Last sample: {_ago(last_sample, self.clock())}",
        ]
        if probes:
            lines.append(f"Last speed test: {_probe_line(probes[0], self.tz, False)}")
        else:
            lines.append("Last speed test: none yet")
        r = summary.report
        if r.cap_bytes:
            lines.append(
                f"Cycle: {format_bytes(r.counted_bytes)} of {format_bytes(r.cap_bytes)} ({r.percent_of_cap:.1f}%)"
            )
        else:
            lines.append(f"Cycle: {format_bytes(r.counted_bytes)} (no cap)")
        if self.alerts is not None:
            pending = await self.alerts.list_alerts("pending", 1000)
            lines.append(f"Pending alerts: {len(pending)}")
        size = self.status.database_bytes()
        if size is not None:
            lines.append(f"Database: {format_bytes(size)}")
        return Reply("\n".join(lines))

    async def _alerts(self, args: tuple[str, ...], progress: Progress) -> Reply:
        limit = 10
        if args:
            if len(args) > 1 or not args[0].isdigit() or int(args[0]) == 0:
                raise _BadArgs("/alerts takes an optional count, like /alerts 5.")
            limit = min(int(args[0]), 50)
        if self.alerts is None:
            return Reply("Alerts are not configured.")
        items = await self.alerts.list_alerts("all", limit)
        if not items:
            return Reply("No alerts yet.")
        lines = ["Recent alerts:"]
        for a in items:
            at = a.raised_at.astimezone(self.tz).strftime("%m-%d %H:%M")
            lines.append(f"{at} [{a.severity}] {a.title} ({alert_status(a)})")
        return Reply("\n".join(lines))

    async def _plan(self, args: tuple[str, ...], progress: Progress) -> Reply:
        p = self.plan
        lines = [
            f"Cap: {format_bytes(p.cap_bytes) if p.cap_bytes else 'none'} ({p.counted} counted)",
            f"Cycle starts on day {p.cycle_start_day} ({p.timezone})",
        ]
        if p.download_bps or p.upload_bps:
            lines.append(
                f"Advertised: ↓ {format_bps(p.download_bps)}  ↑ {format_bps(p.upload_bps)}"
            )
        if p.unmetered:
            lines.append(
                "Free hours: " + ", ".join(f"{_minutes(a)}-{_minutes(b)}" for a, b in p.unmetered)
            )
        if p.calibration != 1.0:
            lines.append(f"Calibration: x{p.calibration:g}")
        if p.cost_per_gb is not None:
            lines.append(f"Cost: {p.cost_per_gb:g} {p.currency}/GB".replace("  ", " "))
        lines.append(f"Speed tests: every {p.probe_interval_s / 60:.0f} min, {p.probe_mode} mode")
        return Reply("\n".join(lines))


class _BadArgs(Exception):
    """Bad command arguments; the message is the one-line hint."""


def alert_status(alert: Any) -> str:
    """One word for an alert's deliveries: delivered, pending, dead or "no targets"."""
    states = {d.status for d in getattr(alert, "deliveries", ())}
    if not states:
        return "no targets"
    if states == {"delivered"}:
        return "delivered"
    return "dead" if "dead" in states else "pending"


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    s = int((now - at).total_seconds())
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def _probe_line(p: ProbeResult, tz: ZoneInfo, slow: bool) -> str:
    at = p.started_at.astimezone(tz).strftime("%m-%d %H:%M")
    if not p.ok:
        return f"{at} failed ({p.error_kind}): {p.error}"
    flag = "  ← slow" if slow else ""
    lat = f", {p.latency_ms:.0f} ms" if p.latency_ms is not None else ""
    return f"{at} ↓ {format_bps(p.download_bps)} ↑ {format_bps(p.upload_bps)}{lat}{flag}"


def _probe_text(p: ProbeResult, tz: ZoneInfo) -> str:
    if p.status == "failed":
        return f"Speed test failed ({p.error_kind}): {p.error}"
    if p.status != "ok":
        return f"Speed test {p.status}: {p.error or p.error_kind}"
    lines = [
        f"↓ {format_bps(p.download_bps)}   ↑ {format_bps(p.upload_bps)}",
    ]
    if p.latency_ms is not None:
        lat = f"Latency {p.latency_ms:.1f} ms, jitter {p.jitter_ms or 0:.1f} ms"
        if p.loaded_latency_ms is not None:
            lat += f", under load {p.loaded_latency_ms:.0f} ms"
        lines.append(lat)
    lines.append(f"Used {format_bytes(p.bytes_down + p.bytes_up)} · server {p.server}")
    isp = p.meta.get("isp") or p.meta.get("asn")
    if isp:
        lines.append(f"ISP {isp}")
    return "\n".join(lines)
