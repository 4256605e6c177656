"""Table definitions; times are integer UTC epoch seconds (half the size of datetime columns in SQLite)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1

# SQLite WITHOUT ROWID keeps the primary key as the table itself: one B-tree page touched per
# batch instead of two, which halves what an SD card sees. PostgreSQL ignores the option.
_CLUSTERED = {"sqlite_with_rowid": False}


def _big(primary_key: bool = False) -> Column:
    return Column(BigInteger, primary_key=primary_key, nullable=False, autoincrement=False)


class Meta(SQLModel, table=True):
    """Key/value facts about the database itself, such as `schema_version`."""

    __tablename__ = "capbot_meta"
    key: str = Field(sa_column=Column(String(64), primary_key=True))
    value: str = Field(sa_column=Column(Text, nullable=False))


class _UsageRow(SQLModel):
    """Bytes of one interface in one time slot; the key order (host, ts, iface) makes a period one
    range scan over every interface, and the sampler append at the end of the B-tree."""

    host: str = Field(primary_key=True, max_length=64)
    ts: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    iface: str = Field(primary_key=True, max_length=64)
    rx_bytes: int = Field(sa_type=BigInteger)
    tx_bytes: int = Field(sa_type=BigInteger)


class UsageMinute(_UsageRow, table=True):
    """Per-minute usage per interface, kept `storage.minute_retention_days`."""

    __tablename__ = "usage_minute"
    __table_args__ = _CLUSTERED


class Usage15m(_UsageRow, table=True):
    """Quarter-hour usage per interface, kept for ever (every UTC offset is a multiple of 15 min)."""

    __tablename__ = "usage_15m"
    __table_args__ = _CLUSTERED


class CounterState(SQLModel, table=True):
    """The raw counters the stored usage was computed from, committed with it (vnStat's rule)."""

    __tablename__ = "counter_state"
    host: str = Field(sa_column=Column(String(64), primary_key=True))
    iface: str = Field(sa_column=Column(String(64), primary_key=True))
    boot_id: str = Field(sa_column=Column(String(64), nullable=False))
    rx_raw: int = Field(sa_column=_big())
    tx_raw: int = Field(sa_column=_big())
    boottime_s: float = Field(sa_column=Column(Float, nullable=False))
    wall_ts: int = Field(sa_column=_big())


class ProbeRow(SQLModel, table=True):
    """One speed probe, or the record that one was deferred or skipped."""

    __tablename__ = "probe"
    __table_args__ = (Index("ix_probe_host_ts", "host", "started_ts"),)
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    host: str = Field(sa_column=Column(String(64), nullable=False))
    started_ts: float = Field(sa_column=Column(Float, nullable=False))
    server: str = Field(sa_column=Column(String(200), nullable=False))
    mode: str = Field(sa_column=Column(String(16), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    trigger: str = Field(sa_column=Column(String(16), nullable=False))
    download_bps: float | None = Field(default=None, sa_column=Column(Float))
    upload_bps: float | None = Field(default=None, sa_column=Column(Float))
    latency_ms: float | None = Field(default=None, sa_column=Column(Float))
    jitter_ms: float | None = Field(default=None, sa_column=Column(Float))
    loaded_latency_ms: float | None = Field(default=None, sa_column=Column(Float))
    bytes_down: int = Field(default=0, sa_column=_big())
    bytes_up: int = Field(default=0, sa_column=_big())
    duration_s: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    download_end: str | None = Field(default=None, sa_column=Column(String(16)))
    upload_end: str | None = Field(default=None, sa_column=Column(String(16)))
    meta_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error_kind: str | None = Field(default=None, sa_column=Column(String(32)))
    error: str | None = Field(default=None, sa_column=Column(Text))


class AlertRow(SQLModel, table=True):
    """The alert outbox: written in the same transaction as the rule state change that raised it."""

    __tablename__ = "alert"
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    key: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    host: str = Field(sa_column=Column(String(64), nullable=False))
    rule: str = Field(sa_column=Column(String(64), nullable=False))
    severity: str = Field(sa_column=Column(String(16), nullable=False))
    title: str = Field(sa_column=Column(Text, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    chart: str | None = Field(default=None, sa_column=Column(String(16)))
    raised_ts: float = Field(sa_column=Column(Float, nullable=False))


class AlertDelivery(SQLModel, table=True):
    """Delivery of one alert to one target (an Apprise URL, a Telegram chat, a Discord channel)."""

    __tablename__ = "alert_delivery"
    __table_args__ = (Index("ix_delivery_status_next", "status", "next_attempt_ts"),)
    alert_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    target: str = Field(sa_column=Column(String(120), primary_key=True))
    status: str = Field(
        sa_column=Column(String(16), nullable=False)
    )  # pending | sending | delivered | dead
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_ts: float = Field(sa_column=Column(Float, nullable=False))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    delivered_ts: float | None = Field(default=None, sa_column=Column(Float))


class RuleState(SQLModel, table=True):
    """Persistent state of one rule (JSON), changed in the same transaction as the alerts it raises."""

    __tablename__ = "rule_state"
    host: str = Field(sa_column=Column(String(64), primary_key=True))
    rule: str = Field(sa_column=Column(String(64), primary_key=True))
    state_json: str = Field(sa_column=Column(Text, nullable=False))
    updated_ts: float = Field(sa_column=Column(Float, nullable=False))


class EventRow(SQLModel, table=True):
    """A span of trouble: an outage, a throttle episode, a bufferbloat episode."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_host_start", "host", "start_ts"),)
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    host: str = Field(sa_column=Column(String(64), nullable=False))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    start_ts: float = Field(sa_column=Column(Float, nullable=False))
    end_ts: float | None = Field(default=None, sa_column=Column(Float))
    detail_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
