"""The composition root: settings in, adapters and services built, one TaskGroup, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from capbot import __version__
from capbot.config import Settings
from capbot.core.report import PlanRules
from capbot.core.units import format_bytes
from capbot.errors import CapbotError
from capbot.services.sampler import SamplerConfig

log = logging.getLogger(__name__)


def plan_rules(settings: Settings) -> PlanRules:
    """The core's view of `plan.*`."""
    p = settings.plan
    return PlanRules(
        cap_bytes=p.cap,
        counted=p.counted,
        unmetered=p.unmetered,
        calibration=p.calibration,
        cost_per_gb=p.cost_per_gb,
        currency=p.currency,
    )


def open_store(settings: Settings) -> Any:
    """The store for `settings` with its schema checked (imports SQLModel)."""
    from capbot.adapters.store.usage import Store

    store = Store(settings.database_url, settings.host, settings.data_dir / "usage.journal")
    store.open()
    return store


def usage_service(settings: Settings, store: Any) -> Any:
    """A UsageService over `store` with the configured plan."""
    from capbot.services.usage import PlanView, UsageService

    view = PlanView(
        plan_rules(settings), settings.plan.cycle_start_day, ZoneInfo(settings.plan.timezone)
    )
    return UsageService(store, view)


def sampler_config(settings: Settings) -> SamplerConfig:
    """The sampler's view of `sampler.*` and `storage.*`."""
    s = settings.sampler
    return SamplerConfig(
        interval_s=s.interval,
        interfaces=s.interfaces,
        exclude=s.exclude,
        max_rate_mbps=s.max_rate_mbps,
        flush_interval_s=settings.storage.flush_interval,
        minute_retention_days=settings.storage.minute_retention_days,
        commit_interval_s=settings.storage.commit_interval,
    )


def rule_settings(settings: Settings) -> Any:
    """The rules' view of `rules.*`, `notify.*` and the plan speeds."""
    from capbot.core.rules import (
        CapRuleSettings,
        DeliverySettings,
        OutageSettings,
        PlanSpeeds,
        RuleSettings,
        ThrottleSettings,
    )
    from capbot.core.rules.settings import BufferbloatSettings

    r, p, n = settings.rules, settings.plan, settings.notify
    m, of = r.throttle.slow_of_last
    quiet = None
    if n.quiet_hours:
        a, b = n.quiet_hours[0]
        quiet = (dtime(a // 60, a % 60), dtime(b // 60 % 24, b % 60))
    return RuleSettings(
        plan=PlanSpeeds(
            download_bps=p.download_mbps * 1e6 if p.download_mbps else None,
            upload_bps=p.upload_mbps * 1e6 if p.upload_mbps else None,
        ),
        cap=CapRuleSettings(
            thresholds_percent=r.cap.thresholds,
            projection_warning=r.cap.projection_warning,
            daily_budget=r.cap.daily_budget,
        ),
        throttle=ThrottleSettings(
            plan_percent=r.throttle.plan_percent,
            baseline_percent=r.throttle.baseline_percent,
            basis=r.throttle.basis,  # type: ignore[arg-type]
            m=m,
            n=of,
            baseline_window=r.throttle.baseline_window,
        ),
        bufferbloat=BufferbloatSettings(threshold_ms=r.throttle.bufferbloat_ms),
        outage=OutageSettings(
            failures_to_open=r.outage.failures,
            check_interval_s=r.outage.check_interval,
            check_url=r.outage.check_url,
        ),
        delivery=DeliverySettings(
            max_attempts=n.max_attempts,
            quiet_hours=quiet,
            min_repeat_s=n.min_repeat_interval,
        ),
    )


def probe_settings(settings: Settings, mode: str | None = None) -> Any:
    """The probe preset for the configured (or given) mode, with the configured overrides."""
    from capbot.core.probe import ProbeSettings

    p = settings.probe
    return ProbeSettings.for_mode(
        mode or p.mode, streams=p.streams, max_seconds=p.max_seconds, max_bytes=p.max_bytes
    )


def probe_cost_bytes(settings: Settings) -> int:
    """The most one probe can move (both directions at their byte budget), stated before /speedtest."""
    ps = probe_settings(settings)
    return int(ps.max_bytes * (2 if ps.upload else 1))


def probe_servers(settings: Settings) -> list[Any]:
    """`probe.servers` as core ServerSpecs."""
    from capbot.core.probe import ServerSpec

    return [
        ServerSpec(
            name=s.name,
            kind=s.kind,  # type: ignore[arg-type]
            base_url=s.base_url,
            download_url=s.download_url,
            upload_url=s.upload_url,
        )
        for s in settings.probe.servers
    ]


def _plan_summary(settings: Settings) -> str:
    p = settings.plan
    cap = format_bytes(p.cap) if p.cap else "no cap"
    speeds = ""
    if p.download_mbps or p.upload_mbps:
        speeds = f", {p.download_mbps or '?'}/{p.upload_mbps or '?'} Mbit/s"
    return f"{cap}, cycle starts day {p.cycle_start_day}, {p.timezone}, counts {p.counted}{speeds}"


@dataclass
class Service:
    """Everything `capbot run` wires together; tests build it too."""

    settings: Settings
    store: Any
    sampler: Any
    usage: Any
    alerting: Any
    alert_store: Any
    commands: Any
    prober: Any = None
    charts: Any = None
    bots: list[Any] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Run every loop until `stop` is set; then flush and close."""
        await self.sampler.start()
        # A restart is often a fix (a new notify URL, the network back): retry waiting alerts now.
        retried = await self.alert_store.retry_now(datetime.now(UTC))
        if retried:
            log.info("retrying %d pending alert deliveries now", retried)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.sampler.run(self.stop), name="sampler")
                # Alerting and the prober loop until cancelled; a crash in either escalates.
                endless = [tg.create_task(self.alerting.run(), name="alerting")]
                if self.prober is not None:
                    endless.append(tg.create_task(self.prober.run(self.stop), name="prober"))
                for bot in self.bots:
                    tg.create_task(bot.run(self.stop), name=type(bot).__name__)
                await self.stop.wait()
                for task in endless:
                    task.cancel()
        finally:
            if self.charts is not None:
                await self.charts.aclose()
            await asyncio.to_thread(self.store.close)


def build_service(settings: Settings, *, counters: Any = None, probe: Any = None) -> Service:
    """Build the whole service from settings (adapters may be swapped for tests)."""
    from capbot.adapters.charts import ChartRenderer
    from capbot.adapters.netcounters import PsutilCounters
    from capbot.adapters.store.alerts import AlertStore
    from capbot.services.alerting import AlertingService, tcp_check
    from capbot.services.commands import Commands, PlanFacts, StatusFacts
    from capbot.services.sampler import Sampler
    from capbot.services.usage import CycleUsage

    store = open_store(settings)
    usage = usage_service(settings, store)
    tz = ZoneInfo(settings.plan.timezone)
    sampler = Sampler(counters or PsutilCounters(), store, sampler_config(settings))
    charts = ChartRenderer(mode="process", theme=settings.chat.chart_theme)  # type: ignore[arg-type]
    cycle = CycleUsage(usage)
    rules = rule_settings(settings)

    async def chart_for_alert(kind: str) -> bytes | None:
        from capbot.services.charts_for import chart_spec

        spec = await asyncio.to_thread(chart_spec, kind, usage, store, settings)
        return await charts.render(spec) if spec is not None else None

    senders: list[Any] = []
    if settings.notify.urls:
        from capbot.adapters.notifier import NotifyUrl, SubprocessNotifier

        # Apprise is loaded only in a short-lived child per send: ~18 MiB less resident.
        urls = [NotifyUrl(t.url, frozenset(t.tags)) for t in settings.notify.urls]
        notifier = asyncio.run(SubprocessNotifier.create(urls))
        senders.extend(notifier.senders())
    alert_store = AlertStore(store.engine, settings.host)
    alerting = AlertingService(
        alert_store,
        senders,
        settings=rules,
        tz=tz,
        usage=cycle,
        connectivity=tcp_check(settings.rules.outage.check_url),
        chart=chart_for_alert,
        usage_interval_s=settings.storage.flush_interval,  # judge the cap right after fresh data
    )

    prober = None
    if settings.probe.enabled:
        prober = build_prober(settings, store, sampler, cycle, alerting, probe)

    status = StatusFacts(
        interfaces=lambda: list(sampler.status.interfaces),
        last_sample_at=lambda: sampler.status.last_sample_at,
        database_bytes=store.size_bytes,
    )
    p = settings.plan
    commands = Commands(
        usage=usage,
        probe_log=store,
        plan=PlanFacts(
            cap_bytes=p.cap,
            cycle_start_day=p.cycle_start_day,
            timezone=p.timezone,
            counted=p.counted,
            unmetered=p.unmetered,
            calibration=p.calibration,
            cost_per_gb=p.cost_per_gb,
            currency=p.currency,
            download_bps=p.download_mbps * 1e6 if p.download_mbps else None,
            upload_bps=p.upload_mbps * 1e6 if p.upload_mbps else None,
            slow_plan_percent=settings.rules.throttle.plan_percent,
            slow_baseline_percent=settings.rules.throttle.baseline_percent,
            probe_interval_s=settings.probe.interval,
            probe_mode=settings.probe.mode,
            probe_max_bytes=probe_cost_bytes(settings),
        ),
        status=status,
        prober=prober,
        alerts=alert_store,
        charts=charts,
        speedtest_cooldown_s=settings.chat.speedtest_cooldown,
    )

    bots: list[Any] = []
    if settings.telegram.token:
        from capbot.bots.telegram import TelegramBot, TelegramSettings

        t = settings.telegram
        tg_bot = TelegramBot(
            TelegramSettings(
                token=t.token,
                allowed_chat_ids=frozenset(t.allowed_chat_ids),
                allowed_user_ids=frozenset(t.allowed_user_ids),
                alert_chat_ids=t.alert_chat_ids,
                api_base_url=t.api_base_url,
                file_base_url=t.file_base_url,
            ),
            commands,
        )
        bots.append(tg_bot)
        for sender in _chat_senders("telegram", "chat", tg_bot.send_alert, t.alert_chat_ids):
            alerting.add_sender(sender)
    if settings.discord.token:
        from capbot.bots.discord import DiscordBot, DiscordSettings

        d = settings.discord
        dc_bot = DiscordBot(
            DiscordSettings(
                token=d.token,
                guild_ids=d.guild_ids,
                allowed_user_ids=frozenset(d.allowed_user_ids),
                allowed_guild_ids=frozenset(d.allowed_guild_ids),
                allowed_channel_ids=frozenset(d.allowed_channel_ids),
                alert_channel_ids=d.alert_channel_ids,
            ),
            commands,
        )
        bots.append(dc_bot)
        for sender in _chat_senders("discord", "channel", dc_bot.send_alert, d.alert_channel_ids):
            alerting.add_sender(sender)
    return Service(
        settings, store, sampler, usage, alerting, alert_store, commands, prober, charts, bots
    )


class _LazySpeedProbe:
    """Imports the speed-test adapter (aiohttp, ~8 MiB) at the first probe, not at start-up."""

    def __init__(self) -> None:
        self._probe: Any = None

    async def run(
        self, server: Any, settings: Any, progress: Any = None, trigger: str = "manual"
    ) -> Any:
        if self._probe is None:
            from capbot.adapters.speedtest import SpeedProbe

            self._probe = SpeedProbe()
        return await self._probe.run(server, settings, progress, trigger)


def _chat_senders(
    platform: str,
    kind: str,
    send_alert: Callable[[int, str, bytes | None], Awaitable[None]],
    ids: tuple[int, ...],
) -> list[Any]:
    """One alert delivery target per configured chat or channel, through the bot's send_alert."""
    from capbot.services.alerting import FuncSender

    def sender(chat: int) -> Any:
        async def send(title: str, body: str, png: bytes | None) -> None:
            await send_alert(chat, f"{title}\n\n{body}", png)

        return FuncSender(f"{platform}:{chat}", send, f"{platform} {kind} {chat}")

    return [sender(chat) for chat in ids]


def build_prober(
    settings: Settings, store: Any, sampler: Any, cycle: Any, alerting: Any, probe: Any
) -> Any:
    """The scheduled prober: probes saved, fed to the rules; deferred when busy, skipped near the cap."""
    from capbot.core.probe import ScheduleSettings
    from capbot.services.prober import Prober

    async def save(result: Any) -> None:
        await asyncio.to_thread(store.add_probe, result)
        if result.status in ("ok", "failed"):
            try:
                cycle_id, counted = await asyncio.to_thread(cycle.cycle_counted, result.started_at)
                await alerting.observe_probe(result, cycle_id, counted)
            except CapbotError as exc:
                log.warning("rules could not judge the probe: %s", exc)

    async def cap_fraction() -> float | None:
        if not settings.plan.cap:
            return None
        snap = await cycle.snapshot(datetime.now(UTC))
        return snap.counted_bytes / settings.plan.cap

    p = settings.probe
    schedule = ScheduleSettings(
        interval_s=p.interval,
        jitter_s=p.jitter,
        quiet_hours=p.quiet_hours,
        tz=ZoneInfo(settings.plan.timezone),
        busy_threshold_bps=p.busy_threshold_mbps * 1e6,
        cap_skip_fraction=p.skip_above_cap_percent / 100,
    )
    return Prober(
        probe or _LazySpeedProbe(),
        probe_servers(settings),
        probe_settings(settings),
        schedule,
        save,
        recent_rate_bps=sampler.recent_rate_bps,
        cap_fraction=cap_fraction,
    )


def _release_startup_memory() -> None:
    """Hand the import-time garbage back to the OS: on a 512 MB Pi every MiB of RSS counts."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()  # long-lived module objects: keep later collections short
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_service(settings: Settings) -> int:
    """Build the service, then run it until SIGTERM/SIGINT; returns the exit status."""
    _limit_malloc_arenas()
    # Built on the main thread before the loop starts: import-time objects then share one
    # malloc arena instead of fragmenting a worker thread's (measured: ~2 MiB of RSS).
    service = build_service(settings)
    return asyncio.run(_run(service, settings))


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own arena; a mostly idle service needs two at most."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


async def _run(service: Service, settings: Settings) -> int:
    from concurrent.futures import ThreadPoolExecutor

    # Blocking work (SQLite, psutil, Apprise) is short and rare: a few threads are plenty, and
    # each one costs stack and allocator memory on a Pi.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=3))
    log.info(
        "capbot %s starting: config %s, database %s, host %s",
        __version__,
        settings.source,
        service.store.path or service.store.engine.url.render_as_string(hide_password=True),
        settings.host,
    )
    log.info("plan: %s", _plan_summary(settings))
    extras = []
    if service.prober is not None:
        extras.append(
            f"speed tests every {settings.probe.interval / 60:.0f} min ({settings.probe.mode})"
        )
    if settings.notify.urls:
        extras.append(f"{len(settings.notify.urls)} notification URL(s)")
    extras += [type(b).__name__ for b in service.bots]
    log.info("features: %s", ", ".join(extras) or "sampling only")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop.set)
    t0 = time.monotonic()
    _release_startup_memory()
    try:
        await service.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("capbot stopped after %.0f s", time.monotonic() - t0)
    return 0
