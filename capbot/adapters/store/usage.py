"""Usage buckets and the raw counters behind them: batched upserts, range queries, retention."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from capbot.adapters.store.db import init_schema, make_engine, read_tx, write_tx
from capbot.adapters.store.journal import UsageJournal
from capbot.adapters.store.tables import CounterState, Meta, ProbeRow, Usage15m, UsageMinute
from capbot.core.model import ProbeResult, StoredCounter, UsageRow
from capbot.core.report import Bucket
from capbot.errors import StorageError

log = logging.getLogger(__name__)

BUCKET_S = 900
MINUTE_S = 60

_MINUTE: Table = UsageMinute.__table__  # type: ignore[attr-defined]
_BUCKET: Table = Usage15m.__table__  # type: ignore[attr-defined]
_STATE: Table = CounterState.__table__  # type: ignore[attr-defined]
_PROBE: Table = ProbeRow.__table__  # type: ignore[attr-defined]
_META: Table = Meta.__table__  # type: ignore[attr-defined]


def _insert(conn: Any, table: Table) -> Any:
    """The dialect's INSERT that knows ON CONFLICT (SQLite >= 3.24 and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def _upsert_add(conn: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE adding the bytes: SQLite and PostgreSQL spell it the same."""
    if not rows:
        return
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["host", "ts", "iface"],
        set_={
            "rx_bytes": table.c.rx_bytes + stmt.excluded.rx_bytes,
            "tx_bytes": table.c.tx_bytes + stmt.excluded.tx_bytes,
        },
    )
    conn.execute(stmt, rows)


def _upsert_replace(conn: Any, table: Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    stmt = _insert(conn, table)
    cols = [c for c in rows[0] if c not in keys]
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in cols})
    conn.execute(stmt, rows)


class Store:
    """capbot's database: usage, counter state and probes (alerts live in `store.alerts`)."""

    def __init__(self, url: str, host: str, journal_path: Path | None = None) -> None:
        self.url = url
        self.host = host
        self.engine: Engine = make_engine(url)
        self.journal = UsageJournal(journal_path) if journal_path is not None else None

    def open(self) -> int:
        """Create or check the schema; returns its version."""
        return init_schema(self.engine)

    def close(self) -> None:
        """Release connections (checkpoints the SQLite WAL)."""
        self.engine.dispose()

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for a server database."""
        db = self.engine.url.database
        if self.engine.url.get_backend_name() == "sqlite" and db and db != ":memory:":
            return Path(db)
        return None

    def size_bytes(self) -> int | None:
        """Database file size including its WAL, for /status."""
        path = self.path
        if path is None:
            return None
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{path}{suffix}").st_size
        return total

    # --- writes -----------------------------------------------------------------------------

    def write_batch(
        self,
        minutes: Sequence[UsageRow],
        buckets: Sequence[UsageRow],
        states: Sequence[StoredCounter],
        journal_token: str | None = None,
    ) -> None:
        """Add usage and record the raw counters it came from, in one transaction (all or nothing).

        `journal_token` names the journal record this batch applies, so that a record is never
        applied twice (see `capbot.adapters.store.journal`).
        """
        h = self.host
        try:
            with write_tx(self.engine) as conn:
                if journal_token is not None:
                    _upsert_replace(
                        conn, _META, [{"key": f"journal:{h}", "value": journal_token}], ["key"]
                    )
                _upsert_add(conn, _MINUTE, [_row(h, r) for r in minutes])
                _upsert_add(conn, _BUCKET, [_row(h, r) for r in buckets])
                _upsert_replace(
                    conn,
                    _STATE,
                    [
                        {
                            "host": h,
                            "iface": s.iface,
                            "boot_id": s.boot_id,
                            "rx_raw": s.rx_raw,
                            "tx_raw": s.tx_raw,
                            "boottime_s": s.boottime_s,
                            "wall_ts": s.wall_ts,
                        }
                        for s in states
                    ],
                    ["host", "iface"],
                )
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot write usage: {exc}") from exc

    # --- the journal ----------------------------------------------------------------------

    def append_journal(self, record: dict[str, Any]) -> None:
        """Append a cumulative record of what is not yet committed (raises StorageError)."""
        if self.journal is None:
            raise StorageError("this store has no journal")
        self.journal.append(record)

    def clear_journal(self) -> None:
        """Forget journal records once their content is committed."""
        if self.journal is not None:
            self.journal.clear()

    def pending_journal(self) -> dict[str, Any] | None:
        """The journal's last record if the database has not applied it yet."""
        if self.journal is None:
            return None
        record = self.journal.last()
        if record is None or record.get("host") != self.host:
            return None
        try:
            with read_tx(self.engine) as conn:
                applied = conn.execute(
                    select(_META.c.value).where(_META.c.key == f"journal:{self.host}")
                ).scalar()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the journal mark: {exc}") from exc
        return None if _applied(applied, str(record.get("token", ""))) else record

    def replay_journal(self) -> bool:
        """Apply a journal record a crash left behind (once), then clear the journal."""
        record = self.pending_journal()
        if record is not None:
            self.write_batch(
                [UsageRow(*r) for r in record["minutes"]],
                [UsageRow(*r) for r in record["buckets"]],
                [StoredCounter(*c) for c in record["states"]],
                journal_token=record["token"],
            )
        self.clear_journal()
        return record is not None

    def prune_minutes(self, before_ts: int) -> int:
        """Drop per-minute rows older than the retention (15-minute buckets stay for ever)."""
        try:
            with write_tx(self.engine) as conn:
                res = conn.execute(
                    delete(_MINUTE).where(_MINUTE.c.host == self.host, _MINUTE.c.ts < before_ts)
                )
                return int(res.rowcount or 0)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot prune usage: {exc}") from exc

    # --- reads ------------------------------------------------------------------------------

    def counter_states(self) -> dict[str, StoredCounter]:
        """The stored raw counters of this host, per interface."""
        try:
            with read_tx(self.engine) as conn:
                rows = conn.execute(select(_STATE).where(_STATE.c.host == self.host)).mappings()
                return {
                    r["iface"]: StoredCounter(
                        r["iface"],
                        r["boot_id"],
                        r["rx_raw"],
                        r["tx_raw"],
                        r["boottime_s"],
                        r["wall_ts"],
                    )
                    for r in rows
                }
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read counter state: {exc}") from exc

    def newest_ts(self) -> int | None:
        """Start of the newest stored minute of this host (the clock-sanity floor)."""
        try:
            with read_tx(self.engine) as conn:
                v = conn.execute(
                    select(func.max(_MINUTE.c.ts)).where(_MINUTE.c.host == self.host)
                ).scalar()
                b = conn.execute(
                    select(func.max(_BUCKET.c.ts)).where(_BUCKET.c.host == self.host)
                ).scalar()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read usage: {exc}") from exc
        candidates = [int(x) for x in (v, b) if x is not None]
        record = self.pending_journal()
        if record and record["minutes"]:
            candidates.append(max(int(r[1]) for r in record["minutes"]))
        return max(candidates) if candidates else None

    def buckets(self, start: datetime, end: datetime, host: str | None = None) -> list[Bucket]:
        """15-minute buckets in [start, end) for one host (default this one; "*" for all hosts)."""
        return [
            Bucket(ts, BUCKET_S, iface, rx, tx)
            for iface, ts, rx, tx in self._fetch(_BUCKET, start, end, host)
        ]

    def minutes(self, start: datetime, end: datetime, host: str | None = None) -> list[UsageRow]:
        """Per-minute rows in [start, end) (only within the retention)."""
        return [UsageRow(*r) for r in self._fetch(_MINUTE, start, end, host)]

    def _fetch(self, table: Table, start: datetime, end: datetime, host: str | None) -> list[Any]:
        rows = self._fetch_db(table, start, end, host)
        record = self.pending_journal() if (host or self.host) in (self.host, "*") else None
        if not record:
            return rows
        # Not yet committed: the sampler's last journal record, merged into the stored rows.
        lo, hi = int(start.timestamp()), int(end.timestamp())
        merged: dict[tuple[int, str], list[int]] = {(r[1], r[0]): [r[2], r[3]] for r in rows}
        key = "minutes" if table is _MINUTE else "buckets"
        for iface, ts, rx, tx in record[key]:
            if lo <= ts < hi:
                acc = merged.setdefault((ts, iface), [0, 0])
                acc[0] += rx
                acc[1] += tx
        return [(iface, ts, v[0], v[1]) for (ts, iface), v in sorted(merged.items())]

    def _fetch_db(
        self, table: Table, start: datetime, end: datetime, host: str | None
    ) -> list[Any]:
        q = select(table.c.iface, table.c.ts, table.c.rx_bytes, table.c.tx_bytes).where(
            table.c.ts >= int(start.timestamp()), table.c.ts < int(end.timestamp())
        )
        host = host or self.host
        if host != "*":
            q = q.where(table.c.host == host)
        q = q.order_by(table.c.ts, table.c.iface)
        try:
            with read_tx(self.engine) as conn:
                # .all() fetches in one go: several times faster than iterating rows.
                return list(conn.execute(q).all())
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read usage: {exc}") from exc

    def first_ts(self) -> int | None:
        """Start of the oldest stored bucket of this host."""
        try:
            with read_tx(self.engine) as conn:
                v = conn.execute(
                    select(func.min(_BUCKET.c.ts)).where(_BUCKET.c.host == self.host)
                ).scalar()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read usage: {exc}") from exc
        return int(v) if v is not None else None

    # --- probes -----------------------------------------------------------------------------

    def add_probe(self, result: ProbeResult) -> int:
        """Store one probe result (ok, failed, deferred or skipped); returns its id."""
        row = result.to_json()
        del row["started_at"], row["meta"]
        row.update(
            host=self.host,
            started_ts=result.started_at.timestamp(),
            meta_json=json.dumps(dict(result.meta), sort_keys=True),
        )
        try:
            with write_tx(self.engine) as conn:
                res = conn.execute(_PROBE.insert().values(**row))
                return int(res.inserted_primary_key[0])  # type: ignore[index]
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot store probe: {exc}") from exc

    def probes(
        self,
        limit: int = 20,
        since: datetime | None = None,
        statuses: Iterable[str] | None = None,
    ) -> list[ProbeResult]:
        """Recent probes of this host, newest first."""
        q = select(_PROBE).where(_PROBE.c.host == self.host)
        if since is not None:
            q = q.where(_PROBE.c.started_ts >= since.timestamp())
        if statuses is not None:
            q = q.where(_PROBE.c.status.in_(list(statuses)))
        q = q.order_by(_PROBE.c.started_ts.desc()).limit(limit)
        try:
            with read_tx(self.engine) as conn:
                return [_probe_from_row(r) for r in conn.execute(q).mappings()]
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read probes: {exc}") from exc

    def probe_bytes(self, start: datetime, end: datetime) -> int:
        """Bytes moved by speed tests in [start, end), both directions."""
        q = select(func.coalesce(func.sum(_PROBE.c.bytes_down + _PROBE.c.bytes_up), 0)).where(
            _PROBE.c.host == self.host,
            _PROBE.c.started_ts >= start.timestamp(),
            _PROBE.c.started_ts < end.timestamp(),
        )
        try:
            with read_tx(self.engine) as conn:
                return int(conn.execute(q).scalar() or 0)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read probes: {exc}") from exc


def _applied(mark: str | None, token: str) -> bool:
    """Whether the committed `mark` ("gen:seq") covers journal record `token`.

    A sampler process writes one generation; its commits carry a seq no smaller than that of
    any record it journaled before, so every record of that generation up to the mark is in.
    """
    if not mark:
        return False
    mark_gen, _, mark_seq = mark.partition(":")
    gen, _, seq = token.partition(":")
    try:
        return gen == mark_gen and int(seq) <= int(mark_seq)
    except ValueError:
        return False


def _row(host: str, r: UsageRow) -> dict[str, Any]:
    return {
        "host": host,
        "iface": r.iface,
        "ts": r.ts,
        "rx_bytes": r.rx_bytes,
        "tx_bytes": r.tx_bytes,
    }


def _probe_from_row(r: Any) -> ProbeResult:
    return ProbeResult(
        started_at=datetime.fromtimestamp(r["started_ts"], UTC),
        server=r["server"],
        mode=r["mode"],
        status=r["status"],
        download_bps=r["download_bps"],
        upload_bps=r["upload_bps"],
        latency_ms=r["latency_ms"],
        jitter_ms=r["jitter_ms"],
        loaded_latency_ms=r["loaded_latency_ms"],
        bytes_down=int(r["bytes_down"]),
        bytes_up=int(r["bytes_up"]),
        duration_s=float(r["duration_s"]),
        download_end=r["download_end"],
        upload_end=r["upload_end"],
        meta=json.loads(r["meta_json"] or "{}"),
        error_kind=r["error_kind"],
        error=r["error"],
        trigger=r["trigger"],
    )
