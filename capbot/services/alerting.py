"""Alerting: runs the rules, commits alerts with their rule state (the outbox), and delivers them.

Delivery guarantees, and how they are kept:
- At least once: an alert and one delivery row per target are written in the same transaction as
  the rule state that raised them; rows stay pending until a send succeeds, across restarts.
- Never twice per key, as tightly as possible: the key is unique, a repeat is ignored; a row is
  claimed ("sending", attempt counted) in its own transaction before the send, and marked
  delivered in its own transaction right after it. Only a crash (or a failed write) in the
  milliseconds between a successful send and that mark can repeat a message; a failed mark is
  kept in memory and retried, so this process never re-sends it.
- Each target (every Apprise URL, every chat) has its own row, so one failing target never
  causes re-sends to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from urllib.parse import urlsplit

from capbot.core.model import Alert, ProbeResult, Severity
from capbot.core.rules import (
    CapSnapshot,
    CapState,
    Delivery,
    Event,
    JsonState,
    LineCheck,
    OutageState,
    Outcome,
    ProbeObservation,
    RuleSettings,
    SpeedState,
    backoff_s,
    check_from_probe,
    compose,
    cycle_summary,
    evaluate_cap,
    hold_until,
    observe_line,
    observe_speed,
    rolled_over,
)
from capbot.errors import CapbotError, NotifyError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ChartFn = Callable[[str], Awaitable[bytes | None]]
CheckFn = Callable[[], Awaitable[bool]]
SendFn = Callable[[str, str, bytes | None], Awaitable[None]]
Item = tuple[int, str]
_RANK = {"critical": 0, "warning": 1, "info": 2}


def utcnow() -> datetime:
    """The wall clock as an aware UTC datetime."""
    return datetime.now(UTC)


class Sender(Protocol):
    """One delivery target: an Apprise URL, a Telegram chat, a Discord channel."""

    @property
    def target(self) -> str:
        """Stable id stored with each delivery row, e.g. `apprise:3fa2b1c0d9e8`, `telegram:12345`."""
        ...

    @property
    def label(self) -> str:
        """A name safe for logs (never a raw URL or token)."""
        ...

    def accepts(self, alert: Alert) -> bool:
        """Whether `alert` is routed to this target."""
        ...

    async def send(
        self, title: str, body: str, png: bytes | None, severity: Severity = "info"
    ) -> None:
        """Deliver one message; raise NotifyError when it did not arrive."""
        ...


@dataclass(frozen=True)
class FuncSender:
    """Adapts a plain `async send(title, body, png)` (what the chat bots offer) to `Sender`.

    `tags` route like Apprise URL tags: empty -> every alert; else a severity or rule name.
    """

    target: str
    send_fn: SendFn
    label: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)

    def accepts(self, alert: Alert) -> bool:
        """Tag routing."""
        return not self.tags or alert.severity in self.tags or alert.rule in self.tags

    async def send(
        self, title: str, body: str, png: bytes | None, severity: Severity = "info"
    ) -> None:
        """Deliver through the wrapped function (severity is implied by the text)."""
        await self.send_fn(title, body, png)


class Outbox(Protocol):
    """What the service needs from the alert store (capbot.adapters.store.alerts.AlertStore)."""

    async def load_state(self, rule: str) -> dict[str, Any] | None: ...

    async def commit(
        self,
        rule: str,
        state: Mapping[str, Any] | None,
        alerts: Sequence[Alert] = (),
        targets_for: Callable[[Alert], Iterable[str]] = ...,
        events: Sequence[Event] = (),
        now: datetime | None = None,
    ) -> list[Alert]: ...

    async def due(self, now: datetime, limit: int = 200) -> list[Delivery]: ...

    async def next_due(self) -> datetime | None: ...

    async def last_delivered(
        self, rules: Sequence[str], since: datetime
    ) -> dict[tuple[str, str], datetime]: ...

    async def hold(self, items: Sequence[Item], until: datetime) -> None: ...

    async def claim(
        self, items: Sequence[Item], now: datetime, lease_until: datetime
    ) -> set[Item]: ...

    async def mark_delivered(self, items: Sequence[Item], now: datetime) -> None: ...

    async def mark_failed(
        self,
        items: Sequence[Item],
        error: str,
        now: datetime,
        backoff: Callable[[int], float],
        max_attempts: int,
        count_attempt: bool = True,
    ) -> list[Item]: ...

    async def recover_inflight(self, now: datetime) -> int: ...

    async def retry_now(self, now: datetime) -> int: ...

    async def events(
        self, since: datetime, until: datetime, kinds: Sequence[str] | None = None
    ) -> list[Event]: ...


class UsageSource(Protocol):
    """Cycle usage figures, filled from the usage report by the composition root."""

    async def snapshot(self, now: datetime) -> CapSnapshot:
        """The current cycle's figures at `now`."""
        ...

    async def ended_cycle(self, current: CapSnapshot) -> CapSnapshot:
        """Final figures of the cycle that ended at `current.cycle_start` (its `now` = its end)."""
        ...


def tcp_check(url: str, timeout_s: float = 3.0) -> CheckFn:
    """A cheap connectivity check: a TCP connect to the host and port of `url`, nothing sent."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    host = parts.hostname or ""
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 443)
    if not host:
        raise ValueError(f"connectivity check URL {url!r} has no host")

    async def check() -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return check


_STATE_TYPES: dict[str, type[JsonState]] = {
    "cap": CapState,
    "speed": SpeedState,
    "outage": OutageState,
}


class AlertingService:
    """Evaluates the cap, speed and outage rules and runs the delivery loop."""

    def __init__(
        self,
        outbox: Outbox,
        senders: Iterable[Sender] = (),
        *,
        settings: RuleSettings | None = None,
        tz: tzinfo = UTC,
        usage: UsageSource | None = None,
        connectivity: CheckFn | None = None,
        chart: ChartFn | None = None,
        clock: Clock = utcnow,
        usage_interval_s: float = 60.0,
        idle_poll_s: float = 300.0,
        min_poll_s: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._senders: dict[str, Sender] = {}
        for sender in senders:
            self.add_sender(sender)
        self._settings = settings or RuleSettings()
        self._tz = tz
        self._usage = usage
        self._connectivity = connectivity
        self._chart = chart
        self._clock = clock
        self._usage_interval_s = usage_interval_s
        self._idle_poll_s = idle_poll_s
        self._min_poll_s = min_poll_s
        self._states: dict[str, Any] = {}
        self._committed: dict[str, str] = {}
        self._locks = {rule: asyncio.Lock() for rule in _STATE_TYPES}
        self._start_lock = asyncio.Lock()
        self._started = False
        self._wake = asyncio.Event()
        self._unrecorded: set[Item] = set()

    # -- set-up --------------------------------------------------------------------------

    def add_sender(self, sender: Sender) -> None:
        """Register a delivery target (before `run`, so new alerts get a row for it)."""
        self._senders[sender.target] = sender

    @property
    def line_down(self) -> bool:
        """True while an outage is open."""
        state = self._states.get("outage")
        return isinstance(state, OutageState) and state.is_open

    async def start(self) -> None:
        """Load rule states and requeue deliveries a crash left in flight (idempotent)."""
        async with self._start_lock:
            if self._started:
                return
            for rule, kind in _STATE_TYPES.items():
                raw = await self._outbox.load_state(rule)
                self._states[rule] = kind.from_json(raw)
                self._committed[rule] = json.dumps(raw, sort_keys=True) if raw else ""
            recovered = await self._outbox.recover_inflight(self._clock())
            if recovered:
                log.info("retrying %d deliveries left in flight by the last run", recovered)
            self._started = True

    def _targets_for(self, alert: Alert) -> list[str]:
        return [target for target, sender in self._senders.items() if sender.accepts(alert)]

    async def _apply(
        self, rule: str, outcome: Outcome[Any], extra: Sequence[Alert] = ()
    ) -> list[Alert]:
        """Commit a rule's outcome (state + alerts + events) in one transaction, if anything changed."""
        state_json = outcome.state.to_json()
        dumped = json.dumps(state_json, sort_keys=True)
        alerts = (*outcome.alerts, *extra)
        if dumped == self._committed.get(rule) and not alerts and not outcome.events:
            self._states[rule] = outcome.state
            return []
        try:
            fresh = await self._outbox.commit(
                rule, state_json, alerts, self._targets_for, outcome.events, now=self._clock()
            )
        except CapbotError as exc:
            # The state is not advanced: the next observation re-derives what this one missed.
            log.warning("could not record the %s rule's outcome: %s", rule, exc)
            return []
        self._states[rule] = outcome.state
        self._committed[rule] = dumped
        for alert in fresh:
            log.info("alert %s (%s): %s", alert.key, alert.severity, alert.title)
        if fresh:
            self._wake.set()
        return fresh

    # -- rule inputs ---------------------------------------------------------------------

    async def check_usage(self) -> list[Alert]:
        """Evaluate the cap rules on a fresh snapshot from the usage source."""
        if self._usage is None:
            return []
        return await self.evaluate_usage(await self._usage.snapshot(self._clock()))

    async def evaluate_usage(
        self, snap: CapSnapshot, ended: CapSnapshot | None = None
    ) -> list[Alert]:
        """Cap thresholds, projection, daily budget; at a rollover also the summary of the ended
        cycle (from `ended`, or asked of the usage source). Returns the alerts newly raised."""
        await self.start()
        async with self._locks["cap"]:
            state: CapState = self._states["cap"]
            outcome = evaluate_cap(state, snap, self._settings.cap, self._tz)
            extra: list[Alert] = []
            if rolled_over(state, snap):
                if ended is None and self._usage is not None:
                    ended = await self._usage.ended_cycle(snap)
                if ended is not None:
                    extra.append(await self._summary(ended))
            return await self._apply("cap", outcome, extra)

    async def _summary(self, ended: CapSnapshot) -> Alert:
        events = await self._outbox.events(ended.cycle_start, ended.cycle_end)
        speed: SpeedState = self._states["speed"]
        hours = speed.hours_for_cycle(ended.cycle_id)
        return cycle_summary(
            ended, events, hours, self._tz, self._settings.throttle.pattern_min_hours
        )

    async def observe_probe(
        self, result: ProbeResult, cycle_id: str, cycle_counted_bytes: int
    ) -> list[Alert]:
        """Feed a probe result to the speed rules and the outage rule; returns new alerts."""
        await self.start()
        obs = ProbeObservation(result, cycle_id, cycle_counted_bytes)
        async with self._locks["speed"]:
            outcome = observe_speed(self._states["speed"], obs, self._settings, self._tz)
            fresh = await self._apply("speed", outcome)
        check = check_from_probe(result)
        if check is not None:
            fresh += await self._observe_line(check)
        return fresh

    async def observe_connectivity(
        self, up: bool, detail: str | None = None, at: datetime | None = None
    ) -> list[Alert]:
        """Feed a connectivity check result to the outage rule; returns new alerts."""
        await self.start()
        return await self._observe_line(LineCheck(at or self._clock(), up, "check", detail))

    async def check_connectivity(self) -> list[Alert]:
        """Run the injected connectivity check once and feed its result."""
        if self._connectivity is None:
            return []
        return await self.observe_connectivity(await self._connectivity())

    async def _observe_line(self, check: LineCheck) -> list[Alert]:
        async with self._locks["outage"]:
            was_down = self.line_down
            outcome = observe_line(self._states["outage"], check, self._settings.outage, self._tz)
            fresh = await self._apply("outage", outcome)
            now_down = self.line_down
        if now_down and not was_down:
            log.warning(
                "line down: %d connection failures in a row", self._settings.outage.failures_to_open
            )
        elif was_down and not now_down:
            log.info("line back up; retrying waiting deliveries now")
            with contextlib.suppress(CapbotError):
                await self._outbox.retry_now(self._clock())
            self._wake.set()
        return fresh

    # -- delivery ------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """One delivery pass over every target; returns how many alerts were delivered."""
        await self.start()
        now = self._clock()
        await self._flush_unrecorded(now)
        due = [
            d for d in await self._outbox.due(now) if (d.alert_id, d.target) not in self._unrecorded
        ]
        if not due:
            return 0
        d = self._settings.delivery
        last: dict[tuple[str, str], datetime] = {}
        if d.repeat_rules and d.min_repeat_s > 0:
            since = now - timedelta(seconds=d.min_repeat_s)
            last = await self._outbox.last_delivered(d.repeat_rules, since)
        by_target: dict[str, list[Delivery]] = {}
        for delivery in due:
            by_target.setdefault(delivery.target, []).append(delivery)
        charts: dict[str, asyncio.Task[bytes | None]] = {}
        async with asyncio.TaskGroup() as tg:  # targets in parallel: a slow one delays no other
            tasks = [
                tg.create_task(self._deliver_target(t, items, now, last, charts))
                for t, items in by_target.items()
            ]
        return sum(task.result() for task in tasks)

    async def _png(
        self, kind: str | None, charts: dict[str, asyncio.Task[bytes | None]]
    ) -> bytes | None:
        if kind is None or self._chart is None:
            return None
        if kind not in charts:  # one render per kind and pass, shared by every target
            charts[kind] = asyncio.ensure_future(self._render(kind))
        return await asyncio.shield(charts[kind])

    async def _render(self, kind: str) -> bytes | None:
        assert self._chart is not None
        try:
            return await self._chart(kind)
        except CapbotError as exc:
            log.warning("no %s chart for the alert: %s", kind, exc)
        except Exception:
            # A chart only decorates the alert: a renderer bug must not keep the alert from going out.
            log.exception("the %s chart failed; sending the alert without it", kind)
        return None

    async def _deliver_target(
        self,
        target: str,
        items: list[Delivery],
        now: datetime,
        last: Mapping[tuple[str, str], datetime],
        charts: dict[str, asyncio.Task[bytes | None]],
    ) -> int:
        d = self._settings.delivery
        sendable: list[Delivery] = []
        held: dict[datetime, list[Item]] = {}
        for delivery in items:
            until = hold_until(
                delivery.alert, now, last.get((target, delivery.alert.rule)), d, self._tz
            )
            if until is None:
                sendable.append(delivery)
            else:
                held.setdefault(until, []).append((delivery.alert_id, target))
        for until, held_items in held.items():
            await self._outbox.hold(held_items, until)
        if not sendable:
            return 0
        batch = sendable[: d.max_batch]
        lease = now + timedelta(seconds=d.send_timeout_s + backoff_s(1, d))
        won = await self._outbox.claim([(x.alert_id, target) for x in batch], now, lease)
        batch = [x for x in batch if (x.alert_id, target) in won]
        if not batch:
            return 0
        items_sent = [(x.alert_id, target) for x in batch]
        sender = self._senders.get(target)
        if sender is None:
            error = "no sender registered for this target (removed from the configuration?)"
            label = target
        else:
            label = sender.label or target
            title, body, chart = compose([x.alert for x in batch], now, d, self._tz)
            png = await self._png(chart, charts)
            severity = min((x.alert.severity for x in batch), key=lambda s: _RANK.get(s, 3))
            try:
                await asyncio.wait_for(sender.send(title, body, png, severity), d.send_timeout_s)
            except NotifyError as exc:
                error = str(exc) or exc.__class__.__name__
            except TimeoutError:
                error = f"no answer within {d.send_timeout_s:g} s"
            else:
                await self._record_delivered(items_sent, label)
                return len(batch)
        counted = not self.line_down
        dead = await self._outbox.mark_failed(
            items_sent, error, self._clock(), lambda n: backoff_s(n, d), d.max_attempts, counted
        )
        attempts = max(x.attempts for x in batch) + 1
        log.warning(
            "delivery to %s failed (attempt %d of %d%s): %s",
            label,
            attempts,
            d.max_attempts,
            "" if counted else ", not counted: the line is down",
            error,
        )
        for alert_id, _ in dead:
            key = next(x.alert.key for x in batch if x.alert_id == alert_id)
            log.error(
                "alert %s to %s is dead after %d attempts: %s", key, label, d.max_attempts, error
            )
        return 0

    async def _record_delivered(self, items: list[Item], label: str) -> None:
        try:
            await self._outbox.mark_delivered(items, self._clock())
        except CapbotError as exc:
            # Remember it: this process must not send it again while the store is unwritable.
            self._unrecorded.update(items)
            log.warning("delivered to %s but could not record it yet: %s", label, exc)
        else:
            log.info("delivered %d alert(s) to %s", len(items), label)

    async def _flush_unrecorded(self, now: datetime) -> None:
        if not self._unrecorded:
            return
        pending = sorted(self._unrecorded)
        with contextlib.suppress(CapbotError):
            await self._outbox.mark_delivered(pending, now)
            self._unrecorded.difference_update(pending)

    # -- loops ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The delivery loop, plus the usage and connectivity loops when their sources are given."""
        await self.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._delivery_loop())
            if self._usage is not None:
                tg.create_task(self._every(self._usage_interval_s, self.check_usage, "usage rules"))
            if self._connectivity is not None:
                interval = self._settings.outage.check_interval_s
                tg.create_task(self._every(interval, self.check_connectivity, "connectivity check"))

    async def _every(
        self, interval_s: float, step: Callable[[], Awaitable[Any]], what: str
    ) -> None:
        while True:
            try:
                await step()
            except CapbotError as exc:
                log.warning("%s failed: %s", what, exc)
            await asyncio.sleep(interval_s)

    async def _delivery_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.deliver_due()
                next_due = await self._outbox.next_due()
                if next_due is None:
                    delay = self._idle_poll_s
                else:
                    wait_s = (next_due - self._clock()).total_seconds()
                    delay = min(self._idle_poll_s, max(self._min_poll_s, wait_s))
            except CapbotError as exc:
                log.warning("delivery pass failed: %s", exc)
                delay = max(self._min_poll_s, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
