"""Engine set-up: SQLite pragmas (WAL, busy timeout, BEGIN IMMEDIATE writers), schema creation and versioning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from capbot.adapters.store.tables import SCHEMA_VERSION, Meta
from capbot.errors import StorageError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# 1 KiB pages: a batch touches a handful of pages and WAL frames are page-sized, so small pages
# cut the bytes an SD card sees per flush about fourfold versus the 4 KiB default.
SQLITE_PAGE_SIZE = 1024
SQLITE_CACHE_KIB = 256
WAL_AUTOCHECKPOINT_PAGES = 200


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to the `begin` hook below; pysqlite's own is too implicit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # only effective on a new file
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL never corrupts; a power cut may roll back the last commits, which the
        # stored raw counters then recount on the next start.
        cur.execute("PRAGMA synchronous=NORMAL")
        # A small WAL (200 one-KiB pages) is reused from its start after each checkpoint
        # instead of growing for hours: fewer new blocks for the SD card, less to replay.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cur.execute("PRAGMA foreign_keys=ON")
        # The default 2 MB page cache per connection is most of a Pi Zero's budget for the
        # whole service; capbot's working set (the newest B-tree leaves) is a few pages.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a read transaction upgraded to a write can fail with
        # SQLITE_BUSY despite busy_timeout.
        mode = "IMMEDIATE" if conn.get_execution_options().get("capbot_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, create_dirs: bool = True) -> Engine:
    """Create an engine for `url` (any SQLAlchemy URL); SQLite files get capbot's pragmas."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError for malformed URLs
        raise StorageError(f"database.url is not a valid database URL: {exc}") from exc
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:" and create_dirs:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if is_sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
        # One writer plus a reader or two is all the service needs; each connection costs memory.
        kwargs["pool_size"] = 2
        kwargs["max_overflow"] = 2
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _install_sqlite_hooks(engine)
    return engine


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction (BEGIN IMMEDIATE on SQLite); commits on success, rolls back on error."""
    with engine.connect() as conn:
        conn.execution_options(capbot_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot."""
    with engine.connect() as conn, conn.begin():
        yield conn


def init_schema(engine: Engine) -> int:
    """Create missing tables and check the schema version; returns the version in use.

    A database written by a newer capbot is refused rather than silently misread.
    """
    try:
        SQLModel.metadata.create_all(engine)
        with write_tx(engine) as conn:
            meta: Table = Meta.__table__  # type: ignore[attr-defined]
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            if row is None:
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                return SCHEMA_VERSION
            version = int(row[0])
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open the database: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"the database has schema version {version}, newer than this capbot understands "
            f"({SCHEMA_VERSION}); upgrade capbot"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        _migrate(engine, step)
    return SCHEMA_VERSION


def _migrate(engine: Engine, to_version: int) -> None:
    """Apply the migration that brings the schema to `to_version` (none exist yet)."""
    raise StorageError(f"no migration to schema version {to_version}")  # pragma: no cover
