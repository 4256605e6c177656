"""Inputs and outputs of the rules: usage snapshots, probe observations, events and outcomes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, Self, TypeVar

from capbot.core.model import Alert, ProbeResult


@dataclass(frozen=True)
class CapSnapshot:
    """Usage of the current billing cycle at `now`, as the usage report computes it.

    All byte figures are *counted* bytes (after free hours, `plan.counted` and calibration).
    `daily_budget_bytes` is today's share of what remains, computed from usage before today.
    """

    cycle_id: str  # e.g. the cycle's local start date, ISO
    cycle_start: datetime  # aware UTC
    cycle_end: datetime  # aware UTC, exclusive
    now: datetime  # aware UTC
    counted_bytes: int
    cap_bytes: int | None = None
    projected_bytes: int | None = None  # at cycle end
    projection_method: str = ""
    today_counted_bytes: int = 0
    daily_budget_bytes: int | None = None
    probe_bytes: int = 0  # bytes moved by speed tests in the cycle
    peak_day: tuple[date, int] | None = None  # (local date, counted bytes)


@dataclass(frozen=True)
class ProbeObservation:
    """A probe result and the cycle usage when it ran ("fell 70% after 812 GB this cycle")."""

    result: ProbeResult
    cycle_id: str
    cycle_counted_bytes: int


@dataclass(frozen=True)
class LineCheck:
    """One piece of evidence about the line: a probe or a cheap connectivity check."""

    at: datetime  # aware UTC
    up: bool
    source: str = "check"  # check | probe
    detail: str | None = None


@dataclass(frozen=True)
class Event:
    """A span of trouble (kind: outage | throttle | bufferbloat); `end` None while it lasts."""

    kind: str
    start: datetime  # aware UTC; with `kind` it identifies the event
    end: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end, None while open."""
        return None if self.end is None else (self.end - self.start).total_seconds()


class JsonState:
    """Mixin for rule states: plain dataclasses that round-trip through JSON.

    `from_json` ignores unknown keys and fills missing ones with defaults, so a state written by
    an older or newer capbot still loads.
    """

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Self:
        """Rebuild a state from `to_json` output (None -> the initial state)."""
        if not data:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


S = TypeVar("S", bound=JsonState)


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """What a rule returns: its new state, the alerts it raised and the events it opened/closed."""

    state: S
    alerts: tuple[Alert, ...] = ()
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """One alert due for one target, as the outbox hands it to the delivery loop."""

    alert_id: int
    target: str
    attempts: int
    alert: Alert
    last_error: str | None = None
