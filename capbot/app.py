"""The composition root: settings in, adapters and services built, one TaskGroup, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from zoneinfo import ZoneInfo

from capbot import __version__
from capbot.config import Settings
from capbot.core.report import PlanRules
from capbot.core.units import format_bytes
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


def open_store(settings: Settings):  # type: ignore[no-untyped-def]  # lazily imported type
    """The store for `settings` with its schema checked (imports SQLModel)."""
    from capbot.adapters.store.usage import Store

    store = Store(settings.database_url, settings.host)
    store.open()
    return store


def usage_service(settings: Settings, store: object):  # type: ignore[no-untyped-def]
    """A UsageService over `store` with the configured plan."""
    from capbot.services.usage import PlanView, UsageService

    view = PlanView(
        plan_rules(settings), settings.plan.cycle_start_day, ZoneInfo(settings.plan.timezone)
    )
    return UsageService(store, view)  # type: ignore[arg-type]


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
    )


def _plan_summary(settings: Settings) -> str:
    p = settings.plan
    cap = format_bytes(p.cap) if p.cap else "no cap"
    speeds = ""
    if p.download_mbps or p.upload_mbps:
        speeds = f", {p.download_mbps or '?'}/{p.upload_mbps or '?'} Mbit/s"
    return f"{cap}, cycle starts day {p.cycle_start_day}, {p.timezone}, counts {p.counted}{speeds}"


async def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    from capbot.adapters.netcounters import PsutilCounters
    from capbot.services.sampler import Sampler

    store = await asyncio.to_thread(open_store, settings)
    log.info(
        "capbot %s starting: config %s, database %s, host %s",
        __version__,
        settings.source,
        store.path or store.engine.url.render_as_string(hide_password=True),
        settings.host,
    )
    log.info("plan: %s", _plan_summary(settings))
    sampler = Sampler(PsutilCounters(), store, sampler_config(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sampler.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sampler.run(stop), name="sampler")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(store.close)
    log.info("capbot stopped")
    return 0
