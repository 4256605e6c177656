"""The alerting service with real Apprise, a local json:// receiver and the outbox on a SQLite file."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from capbot.adapters.notifier import AppriseNotifier, NotifyUrl
from capbot.adapters.store.alerts import AlertStore
from capbot.adapters.store.db import init_schema, make_engine, sqlite_url
from capbot.core.model import ProbeResult
from capbot.core.rules import (
    CapRuleSettings,
    CapSnapshot,
    DeliverySettings,
    PlanSpeeds,
    RuleSettings,
)
from capbot.errors import NotifyError, StorageError
from capbot.services.alerting import AlertingService, FuncSender, Sender, tcp_check
from tests.receivers import JsonReceiver, json_receiver

TZ = ZoneInfo("Europe/Berlin")
GB = 10**9
C1 = datetime(2026, 11, 15, tzinfo=UTC)
C2 = datetime(2026, 12, 15, tzinfo=UTC)
T0 = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # 12:00 in Berlin, day 10 of cycle C1
PNG = b"\x89PNG\r\n\x1a\n" + b"chart" * 50
SECRETS = ("s3cretpass", "abc123")
QUIET_NOTHING = CapRuleSettings(projection_warning=False, daily_budget=False)


@dataclass
class Clock:
    """A wall clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def snap(counted_gb: float, now: datetime, cycle_start: datetime = C1, **kw: Any) -> CapSnapshot:
    """A cycle snapshot with a 1 TB cap."""
    return CapSnapshot(
        cycle_id=cycle_start.date().isoformat(),
        cycle_start=cycle_start,
        cycle_end=cycle_start + timedelta(days=30),
        now=now,
        counted_bytes=int(counted_gb * GB),
        cap_bytes=1000 * GB,
        **kw,
    )


@dataclass
class World:
    """A database file shared by every service the test builds (to simulate restarts)."""

    db: Path
    clock: Clock = field(default_factory=Clock)
    engines: list[Engine] = field(default_factory=list)

    def store(self) -> AlertStore:
        engine = make_engine(sqlite_url(self.db))
        init_schema(engine)
        self.engines.append(engine)
        return AlertStore(engine, "pi")

    def service(
        self,
        senders: list[Sender],
        delivery: DeliverySettings | None = None,
        store: AlertStore | None = None,
        clock: Any = None,
        **kw: Any,
    ) -> AlertingService:
        rules = RuleSettings(
            plan=PlanSpeeds(100e6, 20e6),
            cap=QUIET_NOTHING,
            delivery=delivery or DeliverySettings(backoff_base_s=30, backoff_cap_s=600),
        )
        return AlertingService(
            store or self.store(), senders, settings=rules, tz=TZ, clock=clock or self.clock, **kw
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh database and clock."""
    w = World(tmp_path / "capbot.db")
    yield w
    for engine in w.engines:
        engine.dispose()


@pytest.fixture
def receiver() -> Iterator[JsonReceiver]:
    """A json:// receiver on 127.0.0.1."""
    with json_receiver() as r:
        yield r


def apprise_senders(*urls: str) -> list[Sender]:
    """Delivery targets for Apprise URLs."""
    return list(AppriseNotifier([NotifyUrl(u) for u in urls]).senders())


def secret_url(r: JsonReceiver) -> str:
    """A receiver URL with a password and a token."""
    return r.url("/hook", auth="user:s3cretpass", query="token=abc123&cto=1&rto=1")


def titles(r: JsonReceiver) -> list[str]:
    """Every alert title received, batched messages split into their alerts."""
    out: list[str] = []
    for got in r.received:
        bullets = [
            line[2:].split(" (raised")[0]
            for line in got.message.splitlines()
            if line.startswith("• ")
        ]
        out += bullets or [got.title]
    return out


async def test_threshold_alert_is_delivered_exactly_once(
    world: World, receiver: JsonReceiver
) -> None:
    """A crossed cap threshold reaches the receiver once, however often the rules run and the loop passes."""
    service = world.service(apprise_senders(receiver.url()))
    for counted in (500, 810, 812, 815):
        await service.evaluate_usage(snap(counted, world.clock()))
        await service.deliver_due()
        world.clock.advance(minutes=1)
    for _ in range(3):
        world.clock.advance(hours=1)
        assert await service.deliver_due() == 0
    assert titles(receiver) == [
        "Data cap: over 50% used (500 GB of 1.00 TB)",
        "Data cap: over 80% used (810 GB of 1.00 TB)",
    ]


@pytest.mark.parametrize("failure", ["error", "down"])
async def test_failing_receiver_is_retried_with_backoff_then_delivered(
    world: World, receiver: JsonReceiver, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver answering 500 or refusing connections gets retries after 30 s, 60 s ..., then the alert."""
    caplog.set_level(logging.DEBUG)
    service = world.service(apprise_senders(secret_url(receiver)))
    receiver.set_mode(failure)  # type: ignore[arg-type]
    await service.evaluate_usage(snap(810, world.clock()))
    assert await service.deliver_due() == 0
    world.clock.advance(seconds=29)
    assert await service.deliver_due() == 0  # backoff not over: no attempt
    world.clock.advance(seconds=2)
    assert await service.deliver_due() == 0  # second attempt, still failing
    if failure == "error":
        assert receiver.attempts == 2
    receiver.set_mode("ok")
    world.clock.advance(seconds=59)
    assert await service.deliver_due() == 0
    world.clock.advance(seconds=2)
    assert await service.deliver_due() == 1
    assert len(receiver.wait_for(1)) == 1
    world.clock.advance(hours=2)
    assert await service.deliver_due() == 0
    assert len(receiver.received) == 1
    assert "delivery to json://user:****@127.0.0.1" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text


async def test_restart_with_pending_failed_and_inflight_alerts_delivers_each_once(
    world: World, receiver: JsonReceiver
) -> None:
    """New service objects on the same file deliver every waiting alert exactly once."""
    receiver.set_mode("down")
    first = world.service(apprise_senders(receiver.url()), DeliverySettings(max_batch=1))
    await first.evaluate_usage(snap(510, world.clock()))
    await first.deliver_due()  # 50%: fails, pending with 1 attempt
    await first.evaluate_usage(snap(810, world.clock()))
    await first.deliver_due()  # 80%: fails too (the 50% one waits for its backoff)
    world.clock.advance(minutes=5)
    await first.evaluate_usage(snap(905, world.clock()))  # 90%: never tried ...
    # ... until a crash in the middle of its send leaves it "sending" with a day-long lease
    store = world.store()
    due = [d for d in await store.due(world.clock()) if d.alert.key.endswith(":90")]
    assert await store.claim(
        [(d.alert_id, d.target) for d in due], world.clock(), world.clock() + timedelta(days=1)
    )
    for engine in world.engines:
        engine.dispose()

    receiver.set_mode("ok")
    world.clock.advance(minutes=1)
    second = world.service(apprise_senders(receiver.url()), DeliverySettings(max_batch=1))
    for _ in range(6):
        await second.deliver_due()
        world.clock.advance(minutes=30)
    third = world.service(apprise_senders(receiver.url()))  # and another restart: nothing left
    assert await third.deliver_due() == 0
    got = titles(receiver)
    assert sorted(got) == sorted(
        [
            "Data cap: over 50% used (510 GB of 1.00 TB)",
            "Data cap: over 80% used (810 GB of 1.00 TB)",
            "Data cap: over 90% used (905 GB of 1.00 TB)",
        ]
    )


async def test_chart_is_rendered_once_and_attached_for_every_target(world: World) -> None:
    """Each target gets the PNG as an attachment; the chart callable runs once per kind and pass."""
    calls: list[str] = []

    async def chart(kind: str) -> bytes | None:
        calls.append(kind)
        return PNG

    with json_receiver() as a, json_receiver() as b:
        service = world.service(apprise_senders(a.url("/a"), b.url("/b")), chart=chart)
        await service.evaluate_usage(snap(810, world.clock()))
        assert await service.deliver_due() == 2
        for r in (a, b):
            (got,) = r.wait_for(1)
            assert got.attachment_bytes(0) == PNG and got.attachments[0]["mimetype"] == "image/png"
    assert calls == ["usage"]


async def test_quiet_hours_hold_then_release_non_critical_alerts(
    world: World, receiver: JsonReceiver
) -> None:
    """At night a warning waits (critical ones do not); at 07:00 it goes out saying when it was raised."""
    world.clock.now = datetime(2026, 11, 25, 23, 0, tzinfo=TZ).astimezone(UTC)
    quiet = DeliverySettings(quiet_hours=(time(22), time(7)))
    service = world.service(apprise_senders(receiver.url()), quiet)
    await service.evaluate_usage(snap(810, world.clock()))
    assert await service.deliver_due() == 0
    world.clock.advance(minutes=30)
    await service.evaluate_usage(snap(1001, world.clock()))
    assert await service.deliver_due() == 1
    assert titles(receiver) == ["Data cap reached: 1.00 TB of 1.00 TB"]
    world.clock.now = datetime(2026, 11, 26, 6, 59, tzinfo=TZ).astimezone(UTC)
    assert await service.deliver_due() == 0
    world.clock.advance(minutes=2)
    assert await service.deliver_due() == 1
    late = receiver.wait_for(2)[1]
    assert late.title == "Data cap: over 80% used (810 GB of 1.00 TB)"
    assert "(Delivered late: raised Wed 2026-11-25 23:00, 8 h 1 min ago.)" in late.message


async def test_dead_after_max_attempts(
    world: World, receiver: JsonReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """After N failed attempts a delivery is dead: listed as failed, never tried again."""
    receiver.set_mode("error")
    service = world.service(
        apprise_senders(receiver.url()), DeliverySettings(max_attempts=3, backoff_base_s=10)
    )
    await service.evaluate_usage(snap(810, world.clock()))
    for _ in range(6):
        await service.deliver_due()
        world.clock.advance(minutes=10)
    assert receiver.attempts == 3
    store = world.store()
    (view,) = await store.list_alerts("failed")
    assert [(d.status, d.attempts) for d in view.deliveries] == [("dead", 3)]
    assert "is dead after 3 attempts" in caplog.text


async def test_one_failing_url_never_causes_resends_to_the_others(world: World) -> None:
    """Each URL has its own delivery row: the healthy one gets the alert once, the broken one later."""
    with json_receiver() as good, json_receiver("error") as bad:
        service = world.service(apprise_senders(good.url("/good"), bad.url("/bad")))
        await service.evaluate_usage(snap(810, world.clock()))
        assert await service.deliver_due() == 1
        bad.set_mode("ok")
        for _ in range(3):
            world.clock.advance(minutes=5)
            await service.deliver_due()
        assert len(good.received) == 1 and len(bad.received) == 1


async def test_outage_reported_after_it_ends_and_its_failed_tries_do_not_count(
    world: World, receiver: JsonReceiver
) -> None:
    """While the line is down, tries are not counted; when it returns, the outage alert goes out."""
    receiver.set_mode("down")
    service = world.service(apprise_senders(receiver.url()), DeliverySettings(max_attempts=2))
    await service.evaluate_usage(snap(810, world.clock()))
    await service.deliver_due()  # a counted failure: the line is not known to be down yet
    for _ in range(3):
        world.clock.advance(minutes=1)
        await service.observe_connectivity(False, "refused")
    assert service.line_down
    for _ in range(4):  # with max_attempts=2 these would kill it if they counted
        world.clock.advance(minutes=15)
        await service.deliver_due()
    receiver.set_mode("ok")
    world.clock.advance(minutes=4)
    fresh = await service.observe_connectivity(True)
    assert [a.rule for a in fresh] == ["outage"] and not service.line_down
    assert await service.deliver_due() == 2  # retried at once: the line just came back
    got = titles(receiver)
    assert got[0] == "Data cap: over 80% used (810 GB of 1.00 TB)"
    assert got[1] == "Line down 12:01–13:07 (1 h 6 min)"  # local time: UTC+1
    (event,) = await world.store().events(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert event.kind == "outage" and event.end == world.clock()


async def test_repeats_of_a_rule_are_spaced_by_min_interval(
    world: World, receiver: JsonReceiver
) -> None:
    """A second outage soon after the first waits for the repeat interval, then arrives."""
    service = world.service(apprise_senders(receiver.url()), DeliverySettings(min_repeat_s=3600))

    async def outage(minutes: int) -> None:
        for _ in range(3):
            await service.observe_connectivity(False)
            world.clock.advance(minutes=1)
        world.clock.advance(minutes=minutes)
        await service.observe_connectivity(True)

    await outage(5)
    assert await service.deliver_due() == 1
    world.clock.advance(minutes=10)
    await outage(2)
    assert await service.deliver_due() == 0
    world.clock.advance(minutes=50)
    assert await service.deliver_due() == 1
    assert len(receiver.received) == 2


def probe(at: datetime, down_mbps: float) -> ProbeResult:
    """A measured probe."""
    return ProbeResult(
        at, "test", "economy", download_bps=down_mbps * 1e6, upload_bps=19e6, duration_s=8
    )


async def test_throttle_alert_from_probes_reaches_a_chat_sender(world: World) -> None:
    """Probe results raise a throttle alert that a registered chat sender receives, after one retry."""
    sent: list[tuple[str, str, bytes | None]] = []
    fail_once = [True]

    async def send(title: str, body: str, png: bytes | None) -> None:
        if fail_once.pop() if fail_once else False:
            raise NotifyError("telegram: 429 too many requests")
        sent.append((title, body, png))

    async def chart(kind: str) -> bytes | None:
        return PNG if kind == "speed" else None

    chat = FuncSender("telegram:42", send, label="telegram chat 42")
    service = world.service([chat], chart=chart)
    for i, down in enumerate([94, 95, 93, 94, 28, 27, 29]):
        await service.observe_probe(probe(world.clock(), down), "2026-11-15", (800 + i * 2) * GB)
        world.clock.advance(hours=1)
    assert await service.deliver_due() == 0
    world.clock.advance(seconds=31)
    assert await service.deliver_due() == 1
    ((title, body, png),) = sent
    assert title.startswith("Throttling suspected: download fell 70%")
    assert "after 808 GB this cycle" in body and png == PNG


async def test_rollover_summary_uses_the_ended_cycle_and_its_events(
    world: World, receiver: JsonReceiver
) -> None:
    """The first evaluation in a new cycle commits the summary of the old one, events included."""

    class Usage:
        async def snapshot(self, now: datetime) -> CapSnapshot:
            return snap(3, now, C2)

        async def ended_cycle(self, current: CapSnapshot) -> CapSnapshot:
            return replace(snap(640, C2, C1), probe_bytes=850 * 10**6)

    service = world.service(apprise_senders(receiver.url()), usage=Usage())
    await service.evaluate_usage(snap(600, world.clock()))
    for _ in range(3):
        await service.observe_connectivity(False)
        world.clock.advance(minutes=1)
    world.clock.advance(minutes=7)
    await service.observe_connectivity(True)
    world.clock.now = C2 + timedelta(minutes=5)
    fresh = await service.check_usage()
    assert [a.key for a in fresh] == ["summary:2026-11-15"]
    assert "Used 640 GB of 1.00 TB (64%)" in fresh[0].body
    assert "Speed tests used 850 MB." in fresh[0].body
    assert "Outages: 1, 10 min in total" in fresh[0].body
    assert await service.check_usage() == []  # the new cycle is now current


async def test_delivered_but_unrecorded_is_not_sent_twice(
    world: World, receiver: JsonReceiver
) -> None:
    """If marking a delivery fails, the service remembers it and records it later instead of re-sending."""
    store = world.store()
    failures = [StorageError("disk full")]
    original = store.mark_delivered

    async def flaky(items: Any, now: datetime) -> None:
        if failures:
            raise failures.pop()
        await original(items, now)

    store.mark_delivered = flaky  # type: ignore[method-assign]
    service = world.service(apprise_senders(receiver.url()), store=store)
    await service.evaluate_usage(snap(810, world.clock()))
    await service.deliver_due()
    world.clock.advance(minutes=5)  # past the claim lease: the row would be due again
    await service.deliver_due()
    assert len(receiver.received) == 1
    assert await store.list_alerts("pending") == []


async def test_run_loop_retries_in_real_time(world: World, receiver: JsonReceiver) -> None:
    """The delivery loop wakes on new alerts and on backoff expiry, without being driven by hand."""

    def real_now() -> datetime:
        return datetime.now(UTC)

    receiver.set_mode("error")
    fast = DeliverySettings(backoff_base_s=0.05, backoff_cap_s=0.1)
    service = world.service(apprise_senders(receiver.url()), fast, clock=real_now, min_poll_s=0.01)
    task = asyncio.create_task(service.run())
    try:
        await service.evaluate_usage(snap(810, real_now()))
        for _ in range(250):  # up to 5 s on a loaded machine
            if receiver.attempts >= 2:
                break
            await asyncio.sleep(0.02)
        receiver.set_mode("ok")
        for _ in range(250):  # up to 5 s on a loaded machine
            if receiver.received:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(receiver.received) == 1 and receiver.attempts >= 3


async def test_tcp_connectivity_check_on_loopback() -> None:
    """The cheap check succeeds against a listening port and fails on a closed one."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert await tcp_check(f"http://127.0.0.1:{port}/", timeout_s=1)()
    finally:
        listener.close()
    assert not await tcp_check(f"127.0.0.1:{port}", timeout_s=1)()
