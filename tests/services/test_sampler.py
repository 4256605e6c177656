"""The sampler against a real SQLite store and a scripted counter source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capbot.adapters.store.usage import Store
from capbot.errors import StorageError
from capbot.services.sampler import Sampler, SamplerConfig
from tests.fakes import Clock, FakeCounters

CFG = SamplerConfig(interval_s=5, flush_interval_s=60)
DAY = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def _store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'c.db'}", "h1")
    s.open()
    return s


def _total(store: Store) -> tuple[int, int]:
    rows = store.buckets(*DAY)
    return sum(r.rx_bytes for r in rows), sum(r.tx_bytes for r in rows)


def _sampler(src: FakeCounters, store: Store, clock: Clock) -> Sampler:
    return Sampler(src, store, CFG, wall_clock=clock.wall, mono_clock=clock.monotonic)


async def _tick(s: Sampler, src: FakeCounters, clock: Clock, seconds: float = 5) -> None:
    clock.advance(seconds)
    src.boot_s += seconds
    s.sample()


async def test_restart_in_same_boot_counts_downtime_once(tmp_path: Path) -> None:
    """Traffic before a crash, during the downtime and after restart is counted exactly once."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    src.add("eth0", 5_000, 1_000)  # before capbot ever ran: not counted
    s = _sampler(src, store, clock)
    await s.start()
    src.add("eth0", 100, 10)
    await _tick(s, src, clock)
    await s.flush()
    src.add("eth0", 7, 3)  # sampled but never flushed: the crash loses it from memory...
    await _tick(s, src, clock)
    src.add("eth0", 1_000, 200)  # ...and this flows while capbot is down
    clock.advance(30)
    src.boot_s += 30
    s2 = _sampler(src, store, clock)  # ...both come back from the stored raw counters
    await s2.start()
    await s2.flush()
    assert _total(store) == (1_107, 213)


async def test_reboot_counts_from_zero(tmp_path: Path) -> None:
    """After a reboot (new boot id) the counters' whole value since boot is traffic."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    src.add("eth0", 50_000, 5_000)
    s = _sampler(src, store, clock)
    await s.start()
    await s.flush()
    src.readings = {}
    src.boot, src.boot_s = "boot-2", 20.0
    src.add("eth0", 300, 30)
    s2 = _sampler(src, store, clock)
    await s2.start()
    await s2.flush()
    assert _total(store) == (300, 30)


async def test_storage_failure_keeps_samples_and_retries(tmp_path: Path) -> None:
    """When a write fails, nothing is lost: the next successful flush writes it all."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    s = _sampler(src, store, clock)
    await s.start()
    real = store.write_batch
    calls = {"n": 0}

    def flaky(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("database is locked")
        real(*args)  # type: ignore[arg-type]

    store.write_batch = flaky  # type: ignore[method-assign]
    src.add("eth0", 400, 40)
    await _tick(s, src, clock)
    assert await s.flush() is False
    src.add("eth0", 600, 60)
    await _tick(s, src, clock)
    assert await s.flush() is True
    assert _total(store) == (1_000, 100)


async def test_clock_behind_newest_row_holds_samples(tmp_path: Path) -> None:
    """A clock in the past (no RTC) writes nothing until it passes the newest stored row."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    s = _sampler(src, store, clock)
    await s.start()
    src.add("eth0", 10, 1)
    await _tick(s, src, clock)
    await s.flush()
    newest = store.newest_ts()
    # Restart with a clock one day behind.
    clock.now -= timedelta(days=1)
    s2 = _sampler(src, store, clock)
    await s2.start()
    src.add("eth0", 20, 2)
    await _tick(s2, src, clock)
    assert await s2.flush() is False
    assert s2.status.clock_held
    assert _total(store) == (10, 1)
    clock.now += timedelta(days=1, minutes=5)  # NTP steps the clock forward
    assert await s2.flush() is True
    assert _total(store) == (30, 3)
    assert store.newest_ts() >= newest  # type: ignore[operator]


async def test_spike_is_discarded_and_resynced(tmp_path: Path) -> None:
    """A delta above max rate x interval is dropped (not a phantom spike) and counting resumes."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    s = _sampler(src, store, clock)
    await s.start()
    src.add("eth0", 10**12, 0)  # 1 TB in 5 s on a 1 Gbit/s NIC
    await _tick(s, src, clock)
    src.add("eth0", 500, 0)
    await _tick(s, src, clock)
    await s.flush()
    assert _total(store) == (500, 0)


async def test_interface_that_vanishes_and_returns_is_resynced(tmp_path: Path) -> None:
    """An interface missing from a reading keeps its baseline; a recreated one counts from zero."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    src.add("eth0", 1_000, 100)
    s = _sampler(src, store, clock)
    await s.start()
    del src.readings["eth0"]
    await _tick(s, src, clock)
    src.readings["eth0"] = src.readings.get("eth0") or __import__(
        "capbot.core.counters"
    ).core.counters.Counters(70, 7)
    await _tick(s, src, clock)
    await s.flush()
    assert _total(store) == (70, 7)


async def test_run_flushes_on_stop(tmp_path: Path) -> None:
    """Stopping the loop writes what is pending."""
    import asyncio

    store, src = _store(tmp_path), FakeCounters()
    s = Sampler(src, store, SamplerConfig(interval_s=0.2, flush_interval_s=3600))
    await s.start()
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    src.add("eth0", 123, 45)
    src.boot_s += 1
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert _total(store) == (123, 45)


@pytest.mark.parametrize("include", ["auto", ("eth0",)])
async def test_selected_interfaces(tmp_path: Path, include: object) -> None:
    """auto counts the default-route interface only; docker and loopback are never counted."""
    store, src, clock = _store(tmp_path), FakeCounters(), Clock()
    for name in ("eth0", "lo", "docker0", "veth12"):
        src.add(name, 1, 1)
    s = Sampler(
        src,
        store,
        SamplerConfig(interfaces=include, exclude=("lo", "docker*", "veth*")),  # type: ignore[arg-type]
        wall_clock=clock.wall,
        mono_clock=clock.monotonic,
    )
    await s.start()
    assert s.status.interfaces == ["eth0"]


def _journaled_store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'c.db'}", "h1", tmp_path / "usage.journal")
    s.open()
    return s


JCFG = SamplerConfig(interval_s=5, flush_interval_s=60, commit_interval_s=600)


async def test_journal_between_commits_is_read_and_replayed_once(tmp_path: Path) -> None:
    """Flushes between commits go to the journal: readers see them, a restart applies them once."""
    store, src, clock = _journaled_store(tmp_path), FakeCounters(), Clock()
    s = Sampler(src, store, JCFG, wall_clock=clock.wall, mono_clock=clock.monotonic)
    await s.start()
    src.add("eth0", 700, 70)
    await _tick(s, src, clock, 60)
    await s.flush()
    assert (tmp_path / "usage.journal").exists()
    assert store.journal is not None and store.pending_journal() is not None  # not committed yet
    assert _total(store) == (700, 70)  # the journal is merged into reads
    src.add("eth0", 300, 30)  # flows after the last flush; the crash loses it from memory
    s2 = Sampler(src, store, JCFG, wall_clock=clock.wall, mono_clock=clock.monotonic)
    await s2.start()  # replays the journal, then counts the 300/30 from the kernel counters
    await s2.flush(final=True)
    assert _total(store) == (1_000, 100)
    assert not (tmp_path / "usage.journal").exists()
    s3 = Sampler(src, store, JCFG, wall_clock=clock.wall, mono_clock=clock.monotonic)
    await s3.start()
    await s3.flush(final=True)
    assert _total(store) == (1_000, 100)


async def test_journal_record_already_committed_is_not_applied_again(tmp_path: Path) -> None:
    """A crash after the commit but before the journal is cleared does not count twice."""
    store, src, clock = _journaled_store(tmp_path), FakeCounters(), Clock()
    s = Sampler(src, store, JCFG, wall_clock=clock.wall, mono_clock=clock.monotonic)
    await s.start()
    src.add("eth0", 500, 50)
    await _tick(s, src, clock, 60)
    await s.flush()  # journaled
    record = (tmp_path / "usage.journal").read_bytes()
    await s.flush(final=True)  # committed, journal cleared...
    (tmp_path / "usage.journal").write_bytes(record)  # ...but pretend the clear never happened
    s2 = Sampler(src, store, JCFG, wall_clock=clock.wall, mono_clock=clock.monotonic)
    await s2.start()
    await s2.flush(final=True)
    assert _total(store) == (500, 50)


def test_torn_journal_line_is_ignored(tmp_path: Path) -> None:
    """A half-written last line (power cut mid-append) leaves the previous record in force."""
    from capbot.adapters.store.journal import UsageJournal

    j = UsageJournal(tmp_path / "j")
    j.append({"token": "g:1", "n": 1})
    j.append({"token": "g:2", "n": 2})
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:-10])
    assert j.last() == {"token": "g:1", "n": 1}
    j.clear()
    assert j.last() is None
