"""The alert outbox, rule states and trouble events in the SQL store (SQLite or PostgreSQL).

Every public method runs its SQL in a worker thread (`asyncio.to_thread`), so the event loop
never waits on the disk. Writers use `write_tx` (BEGIN IMMEDIATE on SQLite).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from capbot.adapters.store import tables as _tables  # noqa: F401  (registers the tables)
from capbot.adapters.store.db import read_tx, write_tx
from capbot.core.model import Alert, Severity
from capbot.core.rules.types import Delivery, Event
from capbot.errors import StorageError

log = logging.getLogger(__name__)

_ALERT: Table = SQLModel.metadata.tables["alert"]
_DELIVERY: Table = SQLModel.metadata.tables["alert_delivery"]
_STATE: Table = SQLModel.metadata.tables["rule_state"]
_EVENT: Table = SQLModel.metadata.tables["event"]

OPEN = ("pending", "sending")
Item = tuple[int, str]  # (alert_id, target)
Which = Literal["all", "pending", "failed"]

P = ParamSpec("P")
R = TypeVar("R")


def _ts(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, UTC)


@dataclass(frozen=True)
class DeliveryView:
    """One delivery of a stored alert, for `capbot alerts`."""

    target: str
    status: str  # pending | sending | delivered | dead
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class AlertView:
    """A stored alert and its deliveries, for `capbot alerts`."""

    id: int
    key: str
    rule: str
    severity: str
    title: str
    body: str
    raised_at: datetime
    deliveries: tuple[DeliveryView, ...]


class AlertStore:
    """Outbox, rule state and events of one host in the capbot database."""

    def __init__(self, engine: Engine, host: str) -> None:
        self._engine = engine
        self._host = host
        self._dialect = engine.dialect.name

    # -- keys: AlertRow.key is unique across hosts, so it carries the host (see the report) --

    def _stored_key(self, key: str) -> str:
        return f"{self._host}|{key}"

    def _plain_key(self, stored: str) -> str:
        prefix = f"{self._host}|"
        return stored[len(prefix) :] if stored.startswith(prefix) else stored

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except SQLAlchemyError as exc:
            raise StorageError(f"alert store: {exc.__class__.__name__}: {exc}") from exc

    # -- rule state and the outbox commit --------------------------------------------------

    async def load_state(self, rule: str) -> dict[str, Any] | None:
        """The stored JSON state of `rule`, None if it never committed one."""
        return await self._run(self._load_state, rule)

    def _load_state(self, rule: str) -> dict[str, Any] | None:
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(_STATE.c.state_json).where(
                    _STATE.c.host == self._host, _STATE.c.rule == rule
                )
            ).first()
        return None if row is None else dict(json.loads(row[0]))

    async def commit(
        self,
        rule: str,
        state: Mapping[str, Any] | None,
        alerts: Sequence[Alert] = (),
        targets_for: Callable[[Alert], Iterable[str]] = lambda _a: (),
        events: Sequence[Event] = (),
        now: datetime | None = None,
    ) -> list[Alert]:
        """Write `rule`'s new state, its alerts (one delivery per target) and events atomically.

        An alert whose key is already stored is ignored, deliveries included; returns the
        alerts that were new.
        """
        at = (now or datetime.now(UTC)).timestamp()
        return await self._run(self._commit, rule, state, alerts, targets_for, events, at)

    def _commit(
        self,
        rule: str,
        state: Mapping[str, Any] | None,
        alerts: Sequence[Alert],
        targets_for: Callable[[Alert], Iterable[str]],
        events: Sequence[Event],
        now_ts: float,
    ) -> list[Alert]:
        fresh: list[Alert] = []
        with write_tx(self._engine) as conn:
            if state is not None:
                values = {
                    "host": self._host,
                    "rule": rule,
                    "state_json": json.dumps(state, separators=(",", ":")),
                    "updated_ts": now_ts,
                }
                self._upsert(conn, _STATE, values, ("host", "rule"), ("state_json", "updated_ts"))
            for alert in alerts:
                alert_id = self._insert_alert(conn, alert)
                if alert_id is None:
                    continue
                fresh.append(alert)
                rows = [
                    {
                        "alert_id": alert_id,
                        "target": target,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_ts": now_ts,
                    }
                    for target in dict.fromkeys(targets_for(alert))
                ]
                if rows:
                    conn.execute(_DELIVERY.insert(), rows)
            for event in events:
                self._put_event(conn, event)
        return fresh

    def _insert_alert(self, conn: Connection, alert: Alert) -> int | None:
        values = {
            "key": self._stored_key(alert.key),
            "host": self._host,
            "rule": alert.rule,
            "severity": alert.severity,
            "title": alert.title,
            "body": alert.body,
            "chart": alert.chart,
            "raised_ts": alert.raised_at.timestamp(),
        }
        stmt = self._insert_ignore(values)
        if stmt is not None:
            row = conn.execute(stmt).first()
            return None if row is None else int(row[0])
        # Other dialects: look first; the write transaction keeps this race-free on one writer.
        if conn.execute(select(_ALERT.c.id).where(_ALERT.c.key == values["key"])).first():
            return None
        new_key = conn.execute(_ALERT.insert().values(**values)).inserted_primary_key
        assert new_key is not None
        return int(new_key[0])

    def _insert_ignore(self, values: dict[str, Any]) -> Any:
        """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id, where the dialect has it."""
        insert = self._dialect_insert()
        if insert is None:
            return None
        stmt = insert(_ALERT).values(**values).on_conflict_do_nothing(index_elements=["key"])
        return stmt.returning(_ALERT.c.id)

    def _dialect_insert(self) -> Any:
        """The dialect's INSERT with ON CONFLICT support, or None."""
        if self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert
        return None

    def _upsert(
        self,
        conn: Connection,
        table: Table,
        values: dict[str, Any],
        keys: tuple[str, ...],
        changes: tuple[str, ...],
    ) -> None:
        insert = self._dialect_insert()
        if insert is not None:
            stmt = insert(table).values(**values)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: stmt.excluded[c] for c in changes}
            )
            conn.execute(stmt)
            return
        where = and_(*(table.c[k] == values[k] for k in keys))
        if (
            conn.execute(
                update(table).where(where).values({c: values[c] for c in changes})
            ).rowcount
            == 0
        ):
            conn.execute(table.insert().values(**values))

    def _put_event(self, conn: Connection, event: Event) -> None:
        start_ts = event.start.timestamp()
        detail = json.dumps(dict(event.detail), separators=(",", ":"), default=str)
        end_ts = None if event.end is None else event.end.timestamp()
        where = and_(
            _EVENT.c.host == self._host, _EVENT.c.kind == event.kind, _EVENT.c.start_ts == start_ts
        )
        changed = conn.execute(
            update(_EVENT).where(where).values(end_ts=end_ts, detail_json=detail)
        )
        if changed.rowcount == 0:
            conn.execute(
                _EVENT.insert().values(
                    host=self._host,
                    kind=event.kind,
                    start_ts=start_ts,
                    end_ts=end_ts,
                    detail_json=detail,
                )
            )

    # -- the delivery side ---------------------------------------------------------------

    async def due(self, now: datetime, limit: int = 200) -> list[Delivery]:
        """Deliveries pending (or left "sending" past their lease) whose time has come, oldest first."""
        return await self._run(self._due, now.timestamp(), limit)

    def _due(self, now_ts: float, limit: int) -> list[Delivery]:
        d, a = _DELIVERY.c, _ALERT.c
        query = (
            select(d.alert_id, d.target, d.attempts, d.last_error, a.key, a.rule, a.severity)
            .add_columns(a.title, a.body, a.chart, a.raised_ts)
            .join_from(_DELIVERY, _ALERT, a.id == d.alert_id)
            .where(a.host == self._host, d.status.in_(OPEN), d.next_attempt_ts <= now_ts)
            .order_by(d.next_attempt_ts, d.alert_id)
            .limit(limit)
        )
        with read_tx(self._engine) as conn:
            rows = conn.execute(query).all()
        return [
            Delivery(
                alert_id=row.alert_id,
                target=row.target,
                attempts=row.attempts,
                last_error=row.last_error,
                alert=self._alert(row),
            )
            for row in rows
        ]

    def _alert(self, row: Any) -> Alert:
        severity: Severity = row.severity
        return Alert(
            key=self._plain_key(row.key),
            rule=row.rule,
            severity=severity,
            title=row.title,
            body=row.body,
            raised_at=datetime.fromtimestamp(row.raised_ts, UTC),
            chart=row.chart,
        )

    async def next_due(self) -> datetime | None:
        """When the earliest open delivery is due (uses the status/next-attempt index)."""
        return _ts(await self._run(self._next_due))

    def _next_due(self) -> float | None:
        d, a = _DELIVERY.c, _ALERT.c
        query = (
            select(func.min(d.next_attempt_ts))
            .join_from(_DELIVERY, _ALERT, a.id == d.alert_id)
            .where(a.host == self._host, d.status.in_(OPEN))
        )
        with read_tx(self._engine) as conn:
            value = conn.execute(query).scalar()
        return None if value is None else float(value)

    async def last_delivered(
        self, rules: Sequence[str], since: datetime
    ) -> dict[tuple[str, str], datetime]:
        """{(target, rule): last delivery time} for `rules` delivered since `since`."""
        if not rules:
            return {}
        raw = await self._run(self._last_delivered, tuple(rules), since.timestamp())
        return {k: datetime.fromtimestamp(v, UTC) for k, v in raw.items()}

    def _last_delivered(
        self, rules: tuple[str, ...], since_ts: float
    ) -> dict[tuple[str, str], float]:
        d, a = _DELIVERY.c, _ALERT.c
        query = (
            select(d.target, a.rule, func.max(d.delivered_ts))
            .join_from(_DELIVERY, _ALERT, a.id == d.alert_id)
            .where(
                a.host == self._host,
                a.rule.in_(rules),
                d.status == "delivered",
                d.delivered_ts >= since_ts,
            )
            .group_by(d.target, a.rule)
        )
        with read_tx(self._engine) as conn:
            return {(t, r): float(ts) for t, r, ts in conn.execute(query).all()}

    async def hold(self, items: Sequence[Item], until: datetime) -> None:
        """Postpone open deliveries to `until` without spending an attempt (quiet hours, repeats)."""
        await self._run(self._set_open, items, {"next_attempt_ts": until.timestamp()})

    def _set_open(self, items: Sequence[Item], values: dict[str, Any]) -> None:
        with write_tx(self._engine) as conn:
            for alert_id, target in items:
                conn.execute(
                    update(_DELIVERY)
                    .where(self._item(alert_id, target), _DELIVERY.c.status.in_(OPEN))
                    .values(**values)
                )

    @staticmethod
    def _item(alert_id: int, target: str) -> Any:
        return and_(_DELIVERY.c.alert_id == alert_id, _DELIVERY.c.target == target)

    async def claim(self, items: Sequence[Item], now: datetime, lease_until: datetime) -> set[Item]:
        """Mark due deliveries "sending" and count the attempt; returns those this caller won.

        The lease is when a delivery stuck in "sending" (a hung send) becomes due again.
        """
        return await self._run(self._claim, items, now.timestamp(), lease_until.timestamp())

    def _claim(self, items: Sequence[Item], now_ts: float, lease_ts: float) -> set[Item]:
        won: set[Item] = set()
        with write_tx(self._engine) as conn:
            for alert_id, target in items:
                result = conn.execute(
                    update(_DELIVERY)
                    .where(
                        self._item(alert_id, target),
                        _DELIVERY.c.status.in_(OPEN),
                        _DELIVERY.c.next_attempt_ts <= now_ts,
                    )
                    .values(
                        status="sending",
                        attempts=_DELIVERY.c.attempts + 1,
                        next_attempt_ts=lease_ts,
                    )
                )
                if result.rowcount == 1:
                    won.add((alert_id, target))
        return won

    async def mark_delivered(self, items: Sequence[Item], now: datetime) -> None:
        """Record successful deliveries; its own small transaction, right after the send."""
        await self._run(self._mark_delivered, items, now.timestamp())

    def _mark_delivered(self, items: Sequence[Item], now_ts: float) -> None:
        with write_tx(self._engine) as conn:
            for alert_id, target in items:
                conn.execute(
                    update(_DELIVERY)
                    .where(self._item(alert_id, target), _DELIVERY.c.status != "delivered")
                    .values(status="delivered", delivered_ts=now_ts, last_error=None)
                )

    async def mark_failed(
        self,
        items: Sequence[Item],
        error: str,
        now: datetime,
        backoff: Callable[[int], float],
        max_attempts: int,
        count_attempt: bool = True,
    ) -> list[Item]:
        """Record a failed try: pending again after `backoff(attempts)` s, or dead at `max_attempts`.

        With `count_attempt` False (the line is known to be down) the try is not counted, so a
        long outage cannot push alerts into the dead letters. Returns the items now dead.
        """
        return await self._run(
            self._mark_failed,
            items,
            error[:500],
            now.timestamp(),
            backoff,
            max_attempts,
            count_attempt,
        )

    def _mark_failed(
        self,
        items: Sequence[Item],
        error: str,
        now_ts: float,
        backoff: Callable[[int], float],
        max_attempts: int,
        count_attempt: bool,
    ) -> list[Item]:
        dead: list[Item] = []
        with write_tx(self._engine) as conn:
            for alert_id, target in items:
                row = conn.execute(
                    select(_DELIVERY.c.attempts, _DELIVERY.c.status).where(
                        self._item(alert_id, target)
                    )
                ).first()
                if row is None or row.status not in OPEN:
                    continue
                attempts = row.attempts if count_attempt else max(0, row.attempts - 1)
                values: dict[str, Any] = {"attempts": attempts, "last_error": error}
                if attempts >= max_attempts:
                    values["status"] = "dead"
                    dead.append((alert_id, target))
                else:
                    values["status"] = "pending"
                    values["next_attempt_ts"] = now_ts + backoff(max(1, attempts))
                conn.execute(update(_DELIVERY).where(self._item(alert_id, target)).values(**values))
        return dead

    async def recover_inflight(self, now: datetime) -> int:
        """At start-up: deliveries a crash left "sending" become due now (at-least-once)."""
        return await self._run(self._bulk_open, ("sending",), now.timestamp(), "pending")

    async def retry_now(self, now: datetime) -> int:
        """Make every waiting delivery due now (the line just came back)."""
        return await self._run(self._bulk_open, ("pending",), now.timestamp(), None)

    def _bulk_open(self, statuses: tuple[str, ...], now_ts: float, new_status: str | None) -> int:
        mine = select(_ALERT.c.id).where(_ALERT.c.host == self._host).scalar_subquery()
        values: dict[str, Any] = {"next_attempt_ts": now_ts}
        if new_status:
            values["status"] = new_status
        where: list[ColumnElement[bool]] = [
            _DELIVERY.c.alert_id.in_(mine),
            _DELIVERY.c.status.in_(statuses),
        ]
        if new_status is None:
            where.append(_DELIVERY.c.next_attempt_ts > now_ts)
        with write_tx(self._engine) as conn:
            result = conn.execute(update(_DELIVERY).where(*where).values(**values))
        return int(result.rowcount or 0)

    async def requeue_dead(self, now: datetime) -> int:
        """Give dead deliveries a fresh set of attempts (for a future `capbot alerts --retry`)."""
        return await self._run(self._requeue_dead, now.timestamp())

    def _requeue_dead(self, now_ts: float) -> int:
        mine = select(_ALERT.c.id).where(_ALERT.c.host == self._host).scalar_subquery()
        with write_tx(self._engine) as conn:
            result = conn.execute(
                update(_DELIVERY)
                .where(_DELIVERY.c.alert_id.in_(mine), _DELIVERY.c.status == "dead")
                .values(status="pending", attempts=0, next_attempt_ts=now_ts)
            )
        return int(result.rowcount or 0)

    # -- reading for the CLI and the cycle summary ------------------------------------------

    async def list_alerts(self, which: Which = "all", limit: int = 50) -> list[AlertView]:
        """Newest alerts first; "pending" = some delivery still open, "failed" = some dead."""
        return await self._run(self._list_alerts, which, limit)

    def _list_alerts(self, which: Which, limit: int) -> list[AlertView]:
        a, d = _ALERT.c, _DELIVERY.c
        query = select(_ALERT).where(a.host == self._host)
        if which != "all":
            statuses = OPEN if which == "pending" else ("dead",)
            query = query.where(
                a.id.in_(select(d.alert_id).where(d.status.in_(statuses)).scalar_subquery())
            )
        query = query.order_by(a.raised_ts.desc(), a.id.desc()).limit(limit)
        with read_tx(self._engine) as conn:
            alerts = conn.execute(query).all()
            ids = [row.id for row in alerts]
            deliveries = (
                conn.execute(select(_DELIVERY).where(d.alert_id.in_(ids))).all() if ids else []
            )
        by_alert: dict[int, list[DeliveryView]] = {}
        for row in deliveries:
            by_alert.setdefault(row.alert_id, []).append(
                DeliveryView(
                    target=row.target,
                    status=row.status,
                    attempts=row.attempts,
                    next_attempt_at=_ts(row.next_attempt_ts) if row.status in OPEN else None,
                    last_error=row.last_error,
                    delivered_at=_ts(row.delivered_ts),
                )
            )
        return [
            AlertView(
                id=row.id,
                key=self._plain_key(row.key),
                rule=row.rule,
                severity=row.severity,
                title=row.title,
                body=row.body,
                raised_at=datetime.fromtimestamp(row.raised_ts, UTC),
                deliveries=tuple(sorted(by_alert.get(row.id, []), key=lambda v: v.target)),
            )
            for row in alerts
        ]

    async def events(
        self, since: datetime, until: datetime, kinds: Sequence[str] | None = None
    ) -> list[Event]:
        """Events that began in [since, until), oldest first."""
        return await self._run(self._events, since.timestamp(), until.timestamp(), kinds)

    def _events(self, since_ts: float, until_ts: float, kinds: Sequence[str] | None) -> list[Event]:
        e = _EVENT.c
        query = select(_EVENT).where(
            e.host == self._host, e.start_ts >= since_ts, e.start_ts < until_ts
        )
        if kinds:
            query = query.where(e.kind.in_(list(kinds)))
        with read_tx(self._engine) as conn:
            rows = conn.execute(query.order_by(e.start_ts)).all()
        out: list[Event] = []
        for row in rows:
            start = datetime.fromtimestamp(row.start_ts, UTC)
            out.append(Event(row.kind, start, _ts(row.end_ts), json.loads(row.detail_json or "{}")))
        return out
