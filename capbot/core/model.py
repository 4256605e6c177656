"""Value types shared across capbot: probe results, alerts, chat requests and replies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Literal, Protocol

ProbeStatus = Literal["ok", "failed", "deferred", "skipped"]
ProbeEnd = Literal["stable", "max_seconds", "max_bytes"]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class UsageRow:
    """Bytes of one interface in one time slot (a minute or a 15-minute bucket) starting at `ts`."""

    iface: str
    ts: int  # UTC epoch seconds
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class StoredCounter:
    """The raw counters of one interface as of the last committed batch."""

    iface: str
    boot_id: str
    rx_raw: int
    tx_raw: int
    boottime_s: float  # CLOCK_BOOTTIME when read
    wall_ts: int


@dataclass(frozen=True)
class ProbeResult:
    """One speed probe (or the record that one was deferred or skipped); rates in bit/s (SI)."""

    started_at: datetime  # aware, UTC
    server: str
    mode: str
    status: ProbeStatus = "ok"
    download_bps: float | None = None
    upload_bps: float | None = None
    latency_ms: float | None = None
    jitter_ms: float | None = None
    loaded_latency_ms: float | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    duration_s: float = 0.0
    download_end: ProbeEnd | None = None
    upload_end: ProbeEnd | None = None
    meta: Mapping[str, str] = field(default_factory=dict)  # ip, isp, asn, colo, city, country
    error_kind: str | None = None  # ProbeError.kind, or "busy"/"cap"/"quiet" for deferred/skipped
    error: str | None = None
    trigger: str = "scheduled"  # scheduled | manual | chat

    @property
    def ok(self) -> bool:
        """True when the probe measured something."""
        return self.status == "ok"

    def to_json(self) -> dict[str, object]:
        """JSON-ready fields (ISO time, bit/s, ms, bytes) for the CLI and exports."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["started_at"] = self.started_at.isoformat()
        out["meta"] = dict(self.meta)
        return out


@dataclass(frozen=True)
class Alert:
    """A notification raised by a rule; `key` deduplicates it for ever."""

    key: str
    rule: str
    severity: Severity
    title: str
    body: str
    raised_at: datetime  # aware, UTC
    chart: str | None = None  # "usage" | "speed" | None: which chart to attach


@dataclass(frozen=True)
class CommandRequest:
    """A chat command stripped of its platform: `/usage week` -> name="usage", args=("week",)."""

    name: str
    args: tuple[str, ...] = ()
    platform: str = "cli"  # telegram | discord | cli
    chat_id: str = ""
    user_id: str = ""


@dataclass(frozen=True)
class Reply:
    """What a command answers: concise text and an optional PNG chart."""

    text: str
    png: bytes | None = None
    filename: str = "chart.png"


Progress = Callable[[str], Awaitable[None]]
"""Called by long commands (``/speedtest``) with a progress line; bots edit one message with it."""


class CommandHandler(Protocol):
    """The platform-neutral command table the bots talk to."""

    def command_list(self) -> list[tuple[str, str]]:
        """(name, one-line description) of every command, for setMyCommands and slash commands."""
        ...

    async def handle(self, request: CommandRequest, progress: Progress) -> Reply:
        """Answer a command; bad arguments give a short hint plus the help, never an exception."""
        ...
