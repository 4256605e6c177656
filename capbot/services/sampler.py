"""The sampler: read counters, count every byte once, batch the usage and commit it with its counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from capbot.core.counters import Counters, interface_step
from capbot.core.interfaces import select_interfaces
from capbot.core.model import StoredCounter, UsageRow
from capbot.errors import CapbotError, StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_RATE_MBPS = 10_000.0  # when neither config nor the driver tells the line's top speed
MINUTE_S = 60
BUCKET_S = 900
MAX_PENDING = 20_000  # samples held in memory while the database or the clock is unusable
RECENT_WINDOW_S = 120.0
HEARTBEAT_S = 600.0  # commit unchanged counters this often anyway: `capbot health` reads it


class CounterSource(Protocol):
    """Where raw counters come from (psutil in production, a script in tests)."""

    def read(self) -> dict[str, Counters]: ...
    def boot_id(self) -> str: ...
    def boottime_s(self) -> float: ...
    def default_route_interfaces(self) -> set[str]: ...
    def link_speed_mbps(self, iface: str) -> float | None: ...


class UsageSink(Protocol):
    """What the sampler needs of the store (called from a worker thread)."""

    def counter_states(self) -> dict[str, StoredCounter]: ...
    def newest_ts(self) -> int | None: ...
    def write_batch(
        self,
        minutes: list[UsageRow],
        buckets: list[UsageRow],
        states: list[StoredCounter],
        journal_token: str | None = None,
    ) -> None: ...
    def prune_minutes(self, before_ts: int) -> int: ...
    def replay_journal(self) -> bool: ...
    def append_journal(self, record: dict[str, Any]) -> None: ...
    def clear_journal(self) -> None: ...


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler's knobs (from `sampler.*` and `storage.*`)."""

    interval_s: float = 5.0
    interfaces: Collection[str] | str = "auto"
    exclude: Collection[str] = ()
    max_rate_mbps: float | None = None
    flush_interval_s: float = 60.0
    minute_retention_days: int = 35
    reselect_interval_s: float = 60.0
    # Commit to the database this often and journal the flushes in between (0: every flush).
    commit_interval_s: float = 0.0


@dataclass
class _Iface:
    baseline: Counters | None
    boottime_s: float  # when the baseline was read (CLOCK_BOOTTIME)
    max_rate_bps: float


@dataclass
class _Sample:
    mono: float
    iface: str
    rx_bytes: int
    tx_bytes: int


@dataclass
class SamplerStatus:
    """What /status shows of the sampler."""

    interfaces: list[str] = field(default_factory=list)
    last_sample_at: datetime | None = None
    last_flush_at: datetime | None = None
    pending_samples: int = 0
    clock_held: bool = False


class Sampler:
    """Counts traffic on the selected interfaces and flushes it in batches.

    Crash safety follows vnStat: each batch is committed together with the raw counters it was
    computed from, so a restart within the same boot resumes from them and counts the traffic
    that flowed while capbot was down exactly once; a new boot id means counters restarted at 0.
    """

    def __init__(
        self,
        source: CounterSource,
        store: UsageSink,
        config: SamplerConfig,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.store = store
        self.config = config
        self.wall_clock = wall_clock
        self.mono_clock = mono_clock
        self.status = SamplerStatus()
        self._ifaces: dict[str, _Iface] = {}
        self._stored: dict[str, StoredCounter] = {}
        self._boot_id = ""
        self._pending: list[_Sample] = []
        self._newest_ts: int | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (mono, total bytes) for busy detection
        self._last_select = -math.inf
        self._last_prune = -math.inf
        self._selected: list[str] = []
        self._last_boot_s: float | None = None  # CLOCK_BOOTTIME of the previous reading
        self._flush_lock = asyncio.Lock()
        self._written: set[tuple[str, str, int, int]] = set()  # counters as last committed
        self._written_mono = -math.inf
        self._uncommitted_minutes: dict[tuple[str, int], list[int]] = {}
        self._uncommitted_buckets: dict[tuple[str, int], list[int]] = {}
        self._gen = uuid.uuid4().hex[:12]  # this process's journal generation
        self._seq = 0
        self._last_commit_mono = -math.inf

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored counters and take the first reading (which counts any downtime)."""
        self._boot_id = self.source.boot_id()
        # A crash between commits leaves its last journal record: apply it exactly once.
        if self._journaling and await asyncio.to_thread(self.store.replay_journal):
            log.info("applied the usage journal left by the previous run")
        self._last_commit_mono = self.mono_clock()
        self._stored = dict(await asyncio.to_thread(self.store.counter_states))
        self._newest_ts = await asyncio.to_thread(self.store.newest_ts)
        self.sample()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every `interval` and flush every `flush_interval` until stop; then flush once more."""
        next_flush = self.mono_clock() + self.config.flush_interval_s
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.interval_s)
                try:
                    self.sample()
                except CapbotError as exc:
                    log.warning("sampling failed: %s", exc)
                if self.mono_clock() >= next_flush:
                    await self.flush()
                    next_flush = self.mono_clock() + self.config.flush_interval_s
        finally:
            await self.flush(final=True)

    # --- sampling ---------------------------------------------------------------------------

    def _select(self, available: Collection[str]) -> None:
        chosen = select_interfaces(
            available,
            self.config.interfaces,
            self.config.exclude,
            self.source.default_route_interfaces(),
        )
        if chosen != self._selected:
            if chosen:
                log.info("counting interfaces: %s", ", ".join(chosen))
            else:
                log.warning("no interface to count (sampler.interfaces=%s)", self.config.interfaces)
            self._selected = chosen
            self.status.interfaces = list(chosen)

    def _max_rate_bps(self, iface: str) -> float:
        mbps = (
            self.config.max_rate_mbps or self.source.link_speed_mbps(iface) or DEFAULT_MAX_RATE_MBPS
        )
        return mbps * 1_000_000

    def _new_iface(self, iface: str, now_boot: float) -> _Iface:
        stored = self._stored.get(iface)
        rate = self._max_rate_bps(iface)
        if stored is None:
            # Never seen: start counting from now, not from whatever happened before capbot.
            return _Iface(None, now_boot, rate)
        if stored.boot_id == self._boot_id:
            # Same boot: the counters are monotonic, so the downtime delta is real traffic.
            return _Iface(Counters(stored.rx_raw, stored.tx_raw), stored.boottime_s, rate)
        # Rebooted since: the counters restarted at zero at boot.
        log.info("%s: new boot since the last run; counting from zero at boot", iface)
        return _Iface(Counters(0, 0), 0.0, rate)

    def sample(self) -> None:
        """Take one reading and turn it into counted bytes (pure core rules)."""
        readings = self.source.read()
        mono = self.mono_clock()
        now_boot = self.source.boottime_s()
        if mono - self._last_select >= self.config.reselect_interval_s or not self._selected:
            self._select(readings.keys())
            self._last_select = mono
        total = 0
        for iface in self._selected:
            cur = readings.get(iface)
            if cur is None:
                continue  # vanished: keep its baseline; the step on return resyncs it
            state = self._ifaces.get(iface)
            if state is None:
                if self._last_boot_s is None or iface in self._stored:
                    state = self._new_iface(iface, now_boot)
                else:
                    # Appeared while we were running (a modem plugged in, PPPoE redialled): its
                    # counters started at zero since our previous reading.
                    state = _Iface(Counters(0, 0), self._last_boot_s, self._max_rate_bps(iface))
                self._ifaces[iface] = state
            step = interface_step(
                state.baseline, cur, now_boot - state.boottime_s, state.max_rate_bps
            )
            for event in step.events:
                if event.endswith(("spike", "reset")):
                    log.warning("%s: counter %s (raw %s -> %s)", iface, event, state.baseline, cur)
                else:
                    log.info("%s: counter %s", iface, event)
            state.baseline = step.baseline
            if not step.held:
                state.boottime_s = now_boot
            if step.rx_bytes or step.tx_bytes:
                self._pending.append(_Sample(mono, iface, step.rx_bytes, step.tx_bytes))
                total += step.rx_bytes + step.tx_bytes
        self._last_boot_s = now_boot
        self._recent.append((mono, total))
        while self._recent and self._recent[0][0] < mono - RECENT_WINDOW_S:
            self._recent.popleft()
        if len(self._pending) > MAX_PENDING:
            self._compact()
        self.status.last_sample_at = self.wall_clock()
        self.status.pending_samples = len(self._pending)

    def recent_rate_bps(self, window_s: float = 10.0) -> float:
        """Average traffic rate on the counted interfaces over the last `window_s` (busy-line check)."""
        now = self.mono_clock()
        recent = [(m, b) for m, b in self._recent if m >= now - window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0][0], self.config.interval_s)
        return sum(b for _, b in recent[1:]) * 8 / span

    def _compact(self) -> None:
        """Merge held samples per interface and minute so a long outage of the DB can't eat memory."""
        merged: dict[tuple[str, int], _Sample] = {}
        for s in self._pending:
            key = (s.iface, int(s.mono // MINUTE_S))
            m = merged.get(key)
            if m is None:
                merged[key] = _Sample(s.mono, s.iface, s.rx_bytes, s.tx_bytes)
            else:
                m.mono = s.mono
                m.rx_bytes += s.rx_bytes
                m.tx_bytes += s.tx_bytes
        self._pending = list(merged.values())

    # --- flushing ---------------------------------------------------------------------------

    async def flush(self, final: bool = False) -> bool:
        """Write pending usage and the counters behind it; on failure keep everything and retry later."""
        async with self._flush_lock:
            now = self.wall_clock()
            now_ts = int(now.timestamp())
            mono_now = self.mono_clock()
            floor = self._newest_ts
            if floor is not None and now_ts < floor:
                if not self.status.clock_held:
                    log.warning(
                        "the clock (%s) is behind the newest stored usage (%s): holding samples in "
                        "memory until the time is synced",
                        now.isoformat(timespec="seconds"),
                        datetime.fromtimestamp(floor, UTC).isoformat(timespec="seconds"),
                    )
                self.status.clock_held = True
                return False
            if self.status.clock_held:
                log.info("the clock is sane again; writing held samples")
                self.status.clock_held = False
            batch = list(self._pending)
            states = self._states(now_ts)
            heartbeat = mono_now - self._written_mono >= HEARTBEAT_S
            if not heartbeat:
                # Rows of counters that did not move would only cost SD-card writes.
                states = [
                    c
                    for c in states
                    if (c.iface, c.boot_id, c.rx_raw, c.tx_raw) not in self._written
                ]
            commit_due = mono_now - self._last_commit_mono >= self.config.commit_interval_s
            if (
                not batch
                and not states
                and not (self._uncommitted_minutes and (final or commit_due))
            ):
                return True  # nothing new (and the journal already holds what is uncommitted)
            for s in batch:
                ts = now_ts - int(mono_now - s.mono)
                if floor is not None:
                    ts = max(ts, floor)  # never write a row earlier than the newest stored one
                for agg, size in (
                    (self._uncommitted_minutes, MINUTE_S),
                    (self._uncommitted_buckets, BUCKET_S),
                ):
                    acc = agg.setdefault((s.iface, ts - ts % size), [0, 0])
                    acc[0] += s.rx_bytes
                    acc[1] += s.tx_bytes
            del self._pending[: len(batch)]  # from here on they live in the uncommitted rows
            minutes, buckets = self._uncommitted_minutes, self._uncommitted_buckets
            minute_rows = [UsageRow(i, t, v[0], v[1]) for (i, t), v in sorted(minutes.items())]
            bucket_rows = [UsageRow(i, t, v[0], v[1]) for (i, t), v in sorted(buckets.items())]
            all_states = self._states(now_ts)
            self._seq += 1
            token = f"{self._gen}:{self._seq}"
            commit = final or not self._journaling or commit_due
            if not commit:
                record = {
                    "host": getattr(self.store, "host", ""),
                    "token": token,
                    "minutes": [[r.iface, r.ts, r.rx_bytes, r.tx_bytes] for r in minute_rows],
                    "buckets": [[r.iface, r.ts, r.rx_bytes, r.tx_bytes] for r in bucket_rows],
                    "states": [
                        [c.iface, c.boot_id, c.rx_raw, c.tx_raw, c.boottime_s, c.wall_ts]
                        for c in all_states
                    ],
                }
                try:
                    await asyncio.to_thread(self.store.append_journal, record)
                except StorageError as exc:
                    log.warning("journal write failed, committing instead: %s", exc)
                    commit = True
            if commit:
                try:
                    await asyncio.to_thread(
                        self.store.write_batch,
                        minute_rows,
                        bucket_rows,
                        all_states,
                        token if self._journaling else None,
                    )
                except StorageError as exc:
                    log.error(
                        "could not write %d minute rows (kept in memory, will retry): %s",
                        len(minute_rows),
                        exc,
                    )
                    return False
                self._uncommitted_minutes, self._uncommitted_buckets = {}, {}
                self._last_commit_mono = mono_now
                if self._journaling:
                    try:
                        await asyncio.to_thread(self.store.clear_journal)
                    except StorageError as exc:  # harmless: the commit's mark covers it
                        log.warning("could not clear the usage journal: %s", exc)
            written = {c.iface for c in states}
            self._written = {k for k in self._written if k[0] not in written}
            self._written |= {(c.iface, c.boot_id, c.rx_raw, c.tx_raw) for c in states}
            if heartbeat:
                self._written_mono = mono_now
            newest = max((r.ts for r in minute_rows), default=None)
            if newest is not None:
                self._newest_ts = max(newest, self._newest_ts or newest)
            self.status.last_flush_at = now
            self.status.pending_samples = len(self._pending)
            log.debug(
                "flushed %d samples (%d minute rows %s)%s",
                len(batch),
                len(minute_rows),
                "committed" if commit else "journaled",
                " (final)" if final else "",
            )
            if commit:
                await self._maybe_prune(now_ts, mono_now)
            return True

    @property
    def _journaling(self) -> bool:
        return (
            self.config.commit_interval_s > 0 and getattr(self.store, "journal", None) is not None
        )

    def _states(self, now_ts: int) -> list[StoredCounter]:
        return [
            StoredCounter(
                iface,
                self._boot_id,
                st.baseline.rx_bytes,
                st.baseline.tx_bytes,
                st.boottime_s,
                now_ts,
            )
            for iface, st in sorted(self._ifaces.items())
            if st.baseline is not None
        ]

    async def _maybe_prune(self, now_ts: int, mono_now: float) -> None:
        if mono_now - self._last_prune < 3600:
            return
        self._last_prune = mono_now
        cutoff = now_ts - self.config.minute_retention_days * 86400
        try:
            n = await asyncio.to_thread(self.store.prune_minutes, cutoff)
            if n:
                log.debug(
                    "pruned %d minute rows older than %d days", n, self.config.minute_retention_days
                )
        except StorageError as exc:
            log.warning("pruning minute rows failed: %s", exc)
