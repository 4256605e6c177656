"""Tests for the prober: schedule with jitter, quiet hours, busy-line deferral, cap skip, the lock."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from capbot.core.model import ProbeResult, Progress
from capbot.core.probe import ProbeSettings, ScheduleSettings, ServerSpec
from capbot.errors import StorageError
from capbot.services.prober import RUNNING_KIND, Prober

START = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
PRIMARY = ServerSpec.from_url("http://127.0.0.1:9/", name="primary")
BACKUP = ServerSpec.from_url("http://127.0.0.1:10/", name="backup")


class FakeClock:
    """A wall clock whose sleep advances time instantly."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


@dataclass
class FakeProbe:
    """Returns canned results; can hold a probe open until released."""

    clock: FakeClock
    fail: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(
        self,
        server: ServerSpec,
        settings: ProbeSettings,
        progress: Progress | None = None,
        trigger: str = "manual",
    ) -> ProbeResult:
        self.calls.append((server.name, trigger))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if progress is not None:
            await progress("done")
        if server.name in self.fail:
            return ProbeResult(
                started_at=self.clock(),
                server=server.name,
                mode=settings.mode,
                status="failed",
                error_kind="connect",
                error="cannot connect",
                trigger=trigger,
            )
        return ProbeResult(
            started_at=self.clock(),
            server=server.name,
            mode=settings.mode,
            download_bps=90e6,
            upload_bps=20e6,
            latency_ms=12.0,
            bytes_down=14_000_000,
            bytes_up=3_000_000,
            trigger=trigger,
        )


def make(
    clock: FakeClock,
    probe: FakeProbe,
    saved: list[ProbeResult],
    schedule: ScheduleSettings | None = None,
    rate: float | Callable[[], float | None] | None = None,
    cap: float | None = None,
    servers: tuple[ServerSpec, ...] = (PRIMARY,),
) -> Prober:
    """A prober wired to fakes."""

    async def save(result: ProbeResult) -> None:
        saved.append(result)

    async def cap_fraction() -> float | None:  # async on purpose: a store query
        return cap

    return Prober(
        probe,
        servers,
        ProbeSettings.for_mode("economy"),
        schedule or ScheduleSettings(),
        save,
        recent_rate_bps=rate if callable(rate) else (lambda: rate),
        cap_fraction=cap_fraction,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(1),
    )


async def run_loop_until(prober: Prober, saved: list[ProbeResult], count: int) -> None:
    """Run the scheduled loop until `count` results are saved."""
    stop = asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    for _ in range(10_000):
        if len(saved) >= count:
            break
        await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_schedule_gaps_within_jitter_bounds() -> None:
    """Scheduled probes start after the start delay and then every interval +/- jitter."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    schedule = ScheduleSettings(interval_s=3600, jitter_s=300, start_delay_s=60, min_gap_s=0)
    prober = make(clock, FakeProbe(clock), saved, schedule)
    await run_loop_until(prober, saved, 6)
    times = [r.started_at for r in saved[:6]]
    assert 60 <= (times[0] - START).total_seconds() <= 360
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(3300 <= g <= 3900 for g in gaps), gaps
    assert len(set(gaps)) > 1  # jittered, not a fixed beat
    assert all(r.trigger == "scheduled" and r.ok for r in saved)


async def test_busy_line_defers_and_retries() -> None:
    """Busy-line slots record deferred results, retry after busy_retry_s, then run when quiet."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock)
    schedule = ScheduleSettings(busy_threshold_bps=2e6, busy_retry_s=120, max_deferrals=5)
    rates = iter([8e6, 6e6, 1e5])
    prober = make(clock, probe, saved, schedule, rate=lambda: next(rates))
    recorded = await prober.run_slot()
    assert [r.status for r in recorded] == ["deferred", "deferred", "ok"]
    assert recorded[0].error_kind == "busy" and "8.0 Mbit/s" in (recorded[0].error or "")
    assert (recorded[2].started_at - recorded[0].started_at).total_seconds() == 240
    assert saved == recorded
    assert len(probe.calls) == 1


async def test_busy_line_gives_up_after_max_deferrals() -> None:
    """A line busy for the whole slot ends in one skipped result after max_deferrals."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock)
    schedule = ScheduleSettings(busy_retry_s=60, max_deferrals=2)
    prober = make(clock, probe, saved, schedule, rate=50e6)
    recorded = await prober.run_slot()
    assert [(r.status, r.error_kind) for r in recorded] == [
        ("deferred", "busy"),
        ("deferred", "busy"),
        ("skipped", "busy"),
    ]
    assert probe.calls == []


async def test_cap_nearly_spent_skips() -> None:
    """With 96 % of the cap used the slot records a skipped result and probes nothing."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock)
    prober = make(clock, probe, saved, cap=0.96)
    recorded = await prober.run_slot()
    assert [(r.status, r.error_kind) for r in recorded] == [("skipped", "cap")]
    assert probe.calls == []
    assert (await make(clock, probe, [], cap=0.5).run_slot())[0].ok


async def test_quiet_hours_push_the_schedule() -> None:
    """No scheduled probe starts inside quiet hours; slots due then move to the window's end."""
    clock = FakeClock(datetime(2025, 1, 6, 20, 0, tzinfo=UTC))
    saved: list[ProbeResult] = []
    schedule = ScheduleSettings(
        interval_s=3600, jitter_s=300, quiet_hours=((22 * 60, 6 * 60),), tz=UTC, min_gap_s=0
    )
    prober = make(clock, FakeProbe(clock), saved, schedule)
    await run_loop_until(prober, saved, 6)
    hours = [r.started_at.hour for r in saved]
    assert all(not (h >= 22 or h < 6) for h in hours), hours
    assert any(r.started_at.day == 7 and r.started_at.hour == 6 for r in saved)


async def test_quiet_slot_is_recorded_when_reached() -> None:
    """A slot that is reached inside quiet hours (clock jump) records a quiet skip."""
    clock = FakeClock(datetime(2025, 1, 6, 23, 0, tzinfo=UTC))
    saved: list[ProbeResult] = []
    schedule = ScheduleSettings(quiet_hours=((22 * 60, 6 * 60),), tz=UTC)
    recorded = await make(clock, FakeProbe(clock), saved, schedule).run_slot()
    assert [(r.status, r.error_kind) for r in recorded] == [("skipped", "quiet")]


async def test_run_now_while_running_answers_at_once() -> None:
    """A second request during a probe gets an immediate 'already running' answer, unsaved."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock, gate=asyncio.Event())
    prober = make(clock, probe, saved)
    first = asyncio.create_task(prober.run_now("chat"))
    await probe.started.wait()
    assert prober.running
    second = await prober.run_now("manual")
    assert (second.status, second.error_kind) == ("skipped", RUNNING_KIND)
    assert "already running" in (second.error or "")
    assert probe.gate is not None
    probe.gate.set()
    result = await first
    assert result.ok and result.trigger == "chat"
    assert saved == [result]
    assert not prober.running


async def test_scheduled_slot_waits_for_manual_probe_then_skips_as_recent() -> None:
    """A slot due during a manual probe waits for the lock, then counts that probe as its own."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock, gate=asyncio.Event())
    prober = make(clock, probe, saved)
    manual = asyncio.create_task(prober.run_now("manual"))
    await probe.started.wait()
    slot = asyncio.create_task(prober.run_slot())
    await asyncio.sleep(0)
    assert not slot.done()
    assert probe.gate is not None
    probe.gate.set()
    await manual
    assert await slot == []  # "recent": not recorded
    assert len(probe.calls) == 1


async def test_failover_to_next_server_records_both() -> None:
    """When the first server fails, the next one is tried in the same slot; both are saved."""
    clock = FakeClock()
    saved: list[ProbeResult] = []
    probe = FakeProbe(clock, fail={"primary"})
    prober = make(clock, probe, saved, servers=(PRIMARY, BACKUP))
    recorded = await prober.run_slot()
    assert [(r.server, r.status) for r in recorded] == [("backup", "ok")]
    assert [(r.server, r.status) for r in saved] == [("primary", "failed"), ("backup", "ok")]
    one = await prober.run_now(server=PRIMARY)
    assert one.status == "failed" and probe.calls[-1] == ("primary", "manual")


async def test_save_failure_does_not_stop_the_loop() -> None:
    """A store error is logged; the result stays available and the schedule goes on."""
    clock = FakeClock()
    attempts: list[ProbeResult] = []

    async def broken_save(result: ProbeResult) -> None:
        attempts.append(result)
        raise StorageError("disk full")

    probe = FakeProbe(clock)
    prober = Prober(
        probe,
        [PRIMARY],
        ProbeSettings.for_mode(),
        ScheduleSettings(min_gap_s=0),
        broken_save,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(3),
    )
    await run_loop_until(prober, attempts, 3)
    assert len(attempts) >= 3
    assert prober.last_result is not None and prober.last_result.ok
    assert prober.status().next_run_at is None  # the loop ended cleanly


async def test_progress_reaches_caller() -> None:
    """run_now passes the progress callback through to the probe."""
    clock = FakeClock()
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    await make(clock, FakeProbe(clock), []).run_now("chat", progress)
    assert lines == ["done"]
