"""Scheduled speed probes: interval with jitter, quiet hours, busy-line deferral, cap skip, one at a time.

Each slot asks `capbot.core.probe.decide` (inside the lock, so a manual probe that just ran
satisfies the slot): quiet hours and a nearly spent cap record a *skipped* result; other
traffic above the threshold records a *deferred* result and retries after ``busy_retry_s``
(``max_deferrals`` times, then the slot is skipped). A probe that runs tries the configured
servers in order until one answers; every result, failed ones included, is saved.

One `asyncio.Lock` means one probe at a time. `run_now` (CLI, chat) does not queue behind a
running probe: two back-to-back tests would double the bytes for no new information, so it
answers at once with a ``skipped`` result of kind ``"running"`` (not saved). Manual probes
ignore quiet hours, the cap and a busy line: the user asked for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from capbot.core.model import ProbeResult, Progress
from capbot.core.probe import (
    Decision,
    ProbeSettings,
    ScheduleSettings,
    ServerSpec,
    decide,
    next_run_at,
)
from capbot.core.units import format_bps, format_bytes
from capbot.errors import CapbotError

log = logging.getLogger(__name__)

RUNNING_KIND = "running"
_MAX_SLEEP_S = 300.0  # re-read the wall clock at least this often (NTP steps, suspend)

Reading = Callable[[], float | Awaitable[float | None] | None]


class ProbeRunner(Protocol):
    """What the prober needs of a speed probe (`capbot.adapters.speedtest.SpeedProbe`)."""

    async def run(
        self,
        server: ServerSpec,
        settings: ProbeSettings,
        progress: Progress | None = None,
        trigger: str = "manual",
    ) -> ProbeResult: ...


@dataclass(frozen=True)
class ProberStatus:
    """What ``/status`` shows of the prober."""

    running: bool
    next_run_at: datetime | None
    last_result: ProbeResult | None


class Prober:
    """Runs scheduled probes (`run`) and probes on request (`run_now`), never two at once.

    `recent_rate_bps` returns other traffic's rate over the last seconds (bit/s, None when
    unknown); `cap_fraction` the share of the data cap used (None: no cap). Either may be sync
    or async. `save` persists a result. `clock`, `sleep` and `rng` are injected for tests.
    """

    def __init__(
        self,
        probe: ProbeRunner,
        servers: Sequence[ServerSpec],
        settings: ProbeSettings,
        schedule: ScheduleSettings,
        save: Callable[[ProbeResult], Awaitable[object]],
        *,
        recent_rate_bps: Reading | None = None,
        cap_fraction: Reading | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not servers:
            raise ValueError("the prober needs at least one server")
        self.probe = probe
        self.servers = tuple(servers)
        self.settings = settings
        self.schedule = schedule
        self._save = save
        self._rate = recent_rate_bps
        self._cap = cap_fraction
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        self._last_ok_at: datetime | None = None
        self.next_run_at: datetime | None = None
        self.last_result: ProbeResult | None = None

    @property
    def running(self) -> bool:
        """True while a probe runs."""
        return self._lock.locked()

    def status(self) -> ProberStatus:
        """Running or not, when the next scheduled probe is due, and the last result."""
        return ProberStatus(self.running, self.next_run_at, self.last_result)

    # --- on request ---------------------------------------------------------------------------
    async def run_now(
        self,
        trigger: str = "manual",
        progress: Progress | None = None,
        *,
        server: ServerSpec | None = None,
        settings: ProbeSettings | None = None,
    ) -> ProbeResult:
        """Probe now (`server`: only that one; default: the configured ones in order).

        Returns the saved result, or at once a ``skipped`` result of kind ``"running"`` when a
        probe is already running.
        """
        settings = settings or self.settings
        if self._lock.locked():
            return ProbeResult(
                started_at=self._clock(),
                server=(server or self.servers[0]).name,
                mode=settings.mode,
                status="skipped",
                error_kind=RUNNING_KIND,
                error="a speed test is already running; try again in a minute",
                trigger=trigger,
            )
        async with self._lock:
            servers = (server,) if server else self.servers
            return await self._probe(servers, settings, trigger, progress)

    # --- the schedule -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """The scheduled loop, until `stop` is set."""
        self.next_run_at = next_run_at(self._clock(), self.schedule, self._rng.random(), first=True)
        log.info("first speed probe at %s", self.next_run_at.isoformat(timespec="seconds"))
        while not stop.is_set():
            if not await self._sleep_until(self.next_run_at, stop):
                break
            try:
                await self.run_slot(stop)
            except CapbotError as exc:  # a slot's trouble never ends the schedule
                log.error("scheduled probe failed: %s", exc)
            self.next_run_at = next_run_at(self._clock(), self.schedule, self._rng.random())
            log.debug("next speed probe at %s", self.next_run_at.isoformat(timespec="seconds"))
        self.next_run_at = None

    async def run_slot(self, stop: asyncio.Event | None = None) -> list[ProbeResult]:
        """One scheduled slot: decide, record deferrals/skips, probe; returns what it recorded."""
        stop = stop or asyncio.Event()
        recorded: list[ProbeResult] = []
        deferrals = 0
        while True:
            async with self._lock:
                decision = decide(
                    self._clock(),
                    self.schedule,
                    last_run=self._last_ok_at,
                    recent_rate_bps=await self._read(self._rate, "recent traffic rate"),
                    cap_fraction=await self._read(self._cap, "cap usage"),
                    deferrals=deferrals,
                )
                if decision.action == "run":
                    recorded.append(await self._probe(self.servers, self.settings, "scheduled"))
                    return recorded
                log.info("scheduled probe %s: %s", _past(decision), decision.reason)
                if decision.record:
                    recorded.append(await self._record(decision))
            if decision.action != "defer":
                return recorded
            deferrals += 1
            retry_at = self._clock() + timedelta(seconds=decision.retry_after_s)
            if not await self._sleep_until(retry_at, stop):
                return recorded

    # --- helpers ------------------------------------------------------------------------------
    async def _probe(
        self,
        servers: Sequence[ServerSpec],
        settings: ProbeSettings,
        trigger: str,
        progress: Progress | None = None,
    ) -> ProbeResult:
        result: ProbeResult | None = None
        for server in servers:
            result = await self.probe.run(server, settings, progress, trigger)
            await self._store(result)
            if result.ok:
                self._last_ok_at = result.started_at
                log.info(
                    "probe %s: down %s, up %s, latency %s ms, %s used",
                    server.name,
                    format_bps(result.download_bps),
                    format_bps(result.upload_bps),
                    "n/a" if result.latency_ms is None else f"{result.latency_ms:.1f}",
                    format_bytes(result.bytes_down + result.bytes_up),
                )
                break
            log.warning("probe %s failed (%s): %s", server.name, result.error_kind, result.error)
        assert result is not None
        return result

    async def _record(self, decision: Decision) -> ProbeResult:
        result = ProbeResult(
            started_at=self._clock(),
            server=self.servers[0].name,
            mode=self.settings.mode,
            status="deferred" if decision.action == "defer" else "skipped",
            error_kind=decision.kind,
            error=decision.reason,
            trigger="scheduled",
        )
        await self._store(result)
        return result

    async def _store(self, result: ProbeResult) -> None:
        self.last_result = result
        try:
            await self._save(result)
        except CapbotError as exc:
            log.error("cannot save the probe result: %s", exc)

    async def _read(self, source: Reading | None, what: str) -> float | None:
        if source is None:
            return None
        try:
            value = source()
            if inspect.isawaitable(value):
                value = await value
        except CapbotError as exc:
            log.warning("cannot read the %s (treated as unknown): %s", what, exc)
            return None
        return None if value is None else float(value)

    async def _sleep_until(self, at: datetime, stop: asyncio.Event) -> bool:
        """Sleep until `at` on the wall clock; False when `stop` was set first."""
        while not stop.is_set():
            delay_s = (at - self._clock()).total_seconds()
            if delay_s <= 0:
                return True
            sleeper = asyncio.ensure_future(self._sleep(min(delay_s, _MAX_SLEEP_S)))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return False


def _past(decision: Decision) -> str:
    return {"defer": "deferred", "skip": "skipped"}.get(decision.action, decision.action)
