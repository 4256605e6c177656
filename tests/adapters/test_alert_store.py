"""The alert outbox on a SQLite file: atomic state + alerts, deduplication, delivery transitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from capbot.adapters.store.alerts import AlertStore
from capbot.adapters.store.db import init_schema, make_engine, sqlite_url
from capbot.core.model import Alert
from capbot.core.rules import Event

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh capbot database file."""
    eng = make_engine(sqlite_url(tmp_path / "capbot.db"))
    init_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> AlertStore:
    """The outbox of host "pi"."""
    return AlertStore(engine, "pi")


def alert(key: str = "cap:2026-11-15:80", rule: str = "cap", severity: str = "warning") -> Alert:
    """An alert raised at NOW."""
    return Alert(key, rule, severity, f"title {key}", "body", NOW, chart="usage")  # type: ignore[arg-type]


def two_targets(_a: Alert) -> list[str]:
    """Every alert goes to two targets."""
    return ["apprise:aaa", "telegram:42"]


def backoff(n: int) -> float:
    """10 s, 20 s, 40 s ..."""
    return 10.0 * 2 ** (n - 1)


async def test_state_alert_and_deliveries_are_committed_together(store: AlertStore) -> None:
    """One commit writes the rule state, the alert and one pending delivery per target."""
    fresh = await store.commit(
        "cap", {"cycle_id": "c1", "fired": [80]}, [alert()], two_targets, now=NOW
    )
    assert [a.key for a in fresh] == ["cap:2026-11-15:80"]
    assert await store.load_state("cap") == {"cycle_id": "c1", "fired": [80]}
    (view,) = await store.list_alerts()
    assert (view.key, view.rule, view.severity, view.raised_at) == (
        "cap:2026-11-15:80",
        "cap",
        "warning",
        NOW,
    )
    assert [(d.target, d.status, d.attempts) for d in view.deliveries] == [
        ("apprise:aaa", "pending", 0),
        ("telegram:42", "pending", 0),
    ]
    due = await store.due(NOW)
    assert {(d.target, d.alert.key, d.alert.chart) for d in due} == {
        ("apprise:aaa", "cap:2026-11-15:80", "usage"),
        ("telegram:42", "cap:2026-11-15:80", "usage"),
    }


async def test_a_failing_commit_writes_neither_state_nor_alert(store: AlertStore) -> None:
    """If anything fails inside the transaction, the state change and the alert both roll back."""

    def broken_targets(_a: Alert) -> list[str]:
        raise RuntimeError("boom")

    await store.commit("cap", {"v": 1}, [], now=NOW)
    with pytest.raises(RuntimeError):
        await store.commit("cap", {"v": 2}, [alert()], broken_targets, now=NOW)
    assert await store.load_state("cap") == {"v": 1}
    assert await store.list_alerts() == []


async def test_duplicate_key_is_ignored_with_its_deliveries(store: AlertStore) -> None:
    """A repeat of a stored key adds nothing, whatever targets it would have had."""
    await store.commit("cap", {}, [alert()], two_targets, now=NOW)
    again = await store.commit(
        "cap", {"v": 2}, [alert(), alert("cap:2026-11-15:90")], two_targets, now=NOW
    )
    assert [a.key for a in again] == ["cap:2026-11-15:90"]
    assert await store.load_state("cap") == {"v": 2}  # the state still moves on
    views = await store.list_alerts()
    assert sorted(v.key for v in views) == ["cap:2026-11-15:80", "cap:2026-11-15:90"]
    assert all(len(v.deliveries) == 2 for v in views)


async def test_hosts_sharing_a_database_keep_their_own_keys(engine: Engine) -> None:
    """Two hosts may raise the same key in one database (e.g. PostgreSQL) without colliding."""
    a, b = AlertStore(engine, "pi"), AlertStore(engine, "nas")
    assert await a.commit("cap", {}, [alert()], two_targets, now=NOW)
    assert await b.commit("cap", {}, [alert()], two_targets, now=NOW)
    assert [v.key for v in await a.list_alerts()] == ["cap:2026-11-15:80"]
    assert len(await b.due(NOW)) == 2


async def test_claim_deliver_fail_and_dead_transitions(store: AlertStore) -> None:
    """pending -> sending -> delivered; failures back off, then go dead after max attempts."""
    await store.commit("cap", {}, [alert()], two_targets, now=NOW)
    items = [(d.alert_id, d.target) for d in await store.due(NOW)]
    ok, bad = sorted(items, key=lambda i: i[1])
    lease = NOW + timedelta(minutes=1)
    assert await store.claim(items, NOW, lease) == set(items)
    assert await store.claim(items, NOW, lease) == set()  # already claimed, lease not up
    assert await store.due(NOW) == []
    await store.mark_delivered([ok], NOW)
    dead = await store.mark_failed([bad], "HTTP 500", NOW, backoff, max_attempts=3)
    assert dead == []
    (view,) = await store.list_alerts(which="pending")
    states = {
        d.target: (d.status, d.attempts, d.next_attempt_at, d.last_error) for d in view.deliveries
    }
    assert states["apprise:aaa"][:2] == ("delivered", 1)
    assert states["telegram:42"] == ("pending", 1, NOW + timedelta(seconds=10), "HTTP 500")
    assert await store.next_due() == NOW + timedelta(seconds=10)
    t = NOW
    dead_after = []
    for _attempt in (2, 3):
        t += timedelta(hours=1)
        assert await store.claim([bad], t, t + timedelta(minutes=1)) == {bad}
        dead_after.append(await store.mark_failed([bad], "refused", t, backoff, max_attempts=3))
    assert dead_after == [[], [bad]]
    (view,) = await store.list_alerts(which="failed")
    assert {d.target: d.status for d in view.deliveries} == {
        "apprise:aaa": "delivered",
        "telegram:42": "dead",
    }
    assert await store.list_alerts(which="pending") == []
    assert await store.next_due() is None
    assert await store.requeue_dead(t) == 1
    assert [(d.target, d.attempts) for d in await store.due(t)] == [("telegram:42", 0)]


async def test_uncounted_failures_never_go_dead(store: AlertStore) -> None:
    """Tries made while the line is known to be down do not use up attempts."""
    await store.commit("cap", {}, [alert()], lambda _a: ["apprise:aaa"], now=NOW)
    (item,) = [(d.alert_id, d.target) for d in await store.due(NOW)]
    t = NOW
    for _ in range(5):
        assert await store.claim([item], t, t) == {item}
        assert await store.mark_failed([item], "down", t, backoff, 2, count_attempt=False) == []
        t += timedelta(seconds=11)
    assert [d.attempts for d in await store.due(t)] == [0]


async def test_inflight_deliveries_are_recovered_and_holds_do_not_spend_attempts(
    store: AlertStore,
) -> None:
    """A crash leaves "sending" rows: start-up makes them due again; holds only move the time."""
    await store.commit("cap", {}, [alert()], two_targets, now=NOW)
    items = [(d.alert_id, d.target) for d in await store.due(NOW)]
    await store.claim(items, NOW, NOW + timedelta(hours=1))
    assert await store.due(NOW + timedelta(seconds=5)) == []
    assert await store.recover_inflight(NOW + timedelta(seconds=5)) == 2
    due = await store.due(NOW + timedelta(seconds=5))
    assert sorted((d.target, d.attempts) for d in due) == [("apprise:aaa", 1), ("telegram:42", 1)]
    await store.hold(items[:1], NOW + timedelta(hours=8))
    assert len(await store.due(NOW + timedelta(hours=7))) == 1
    assert await store.retry_now(NOW + timedelta(hours=7)) == 1  # the line came back
    assert len(await store.due(NOW + timedelta(hours=7))) == 2


async def test_last_delivered_per_target_and_rule(store: AlertStore) -> None:
    """The repeat-spacing query reports the last delivery time per (target, rule)."""
    await store.commit(
        "outage",
        {},
        [alert("outage:1", "outage"), alert("outage:2", "outage")],
        two_targets,
        now=NOW,
    )
    due = await store.due(NOW)
    first = [(d.alert_id, d.target) for d in due if d.alert.key == "outage:1"]
    await store.claim(first, NOW, NOW)
    await store.mark_delivered(first, NOW + timedelta(seconds=3))
    got = await store.last_delivered(["outage"], NOW - timedelta(hours=1))
    assert got == {
        ("apprise:aaa", "outage"): NOW + timedelta(seconds=3),
        ("telegram:42", "outage"): NOW + timedelta(seconds=3),
    }
    assert await store.last_delivered(["throttle"], NOW - timedelta(hours=1)) == {}


async def test_events_open_then_close_in_place(store: AlertStore) -> None:
    """An event is inserted when it opens and updated, not duplicated, when it closes."""
    start = NOW - timedelta(minutes=35)
    await store.commit(
        "outage", {"open": True}, events=[Event("outage", start, None, {"failures": 3})], now=NOW
    )
    await store.commit("outage", {}, events=[Event("outage", start, NOW, {"failures": 3})], now=NOW)
    await store.commit(
        "speed", {}, events=[Event("throttle", NOW, None, {"pattern": "mixed"})], now=NOW
    )
    events = await store.events(NOW - timedelta(days=1), NOW + timedelta(days=1))
    assert events == [
        Event("outage", start, NOW, {"failures": 3}),
        Event("throttle", NOW, None, {"pattern": "mixed"}),
    ]
    assert (
        await store.events(NOW - timedelta(days=1), NOW + timedelta(days=1), ["throttle"])
        == events[1:]
    )


def test_insert_ignore_is_dialect_aware(store: AlertStore) -> None:
    """The dedup insert compiles to ON CONFLICT DO NOTHING for both SQLite and PostgreSQL."""
    values = {
        "key": "k",
        "host": "pi",
        "rule": "r",
        "severity": "info",
        "title": "t",
        "body": "b",
        "raised_ts": 1.0,
    }
    for name, dialect in (("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect())):
        store._dialect = name
        sql = str(store._insert_ignore(values).compile(dialect=dialect))
        assert "ON CONFLICT (" in sql and "DO NOTHING RETURNING" in sql, sql
    store._dialect = "mysql"
    assert store._insert_ignore(values) is None
