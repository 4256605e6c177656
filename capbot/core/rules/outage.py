"""Outages: consecutive connection failures open one; it is reported once the line is back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo

from capbot.core.model import Alert, ProbeResult
from capbot.core.rules.settings import OutageSettings
from capbot.core.rules.text import duration, local_day, span
from capbot.core.rules.types import Event, JsonState, LineCheck, Outcome

RULE_STATE = "outage"
# Failed probes of these kinds mean the line (not the server) did not answer.
LINE_FAILURE_KINDS = frozenset({"connect", "timeout"})


@dataclass(frozen=True)
class OutageState(JsonState):
    """The failure streak so far and the open outage, if any.

    Nothing changes while the line stays up or while an open outage continues, so steady
    checks never rewrite the state (an SD card counts every write).
    """

    failures: int = 0
    first_failure_ts: float | None = None
    open_start_ts: float | None = None
    open_failures: int = 0

    @property
    def is_open(self) -> bool:
        """True while an outage is open (the line is believed down)."""
        return self.open_start_ts is not None


def check_from_probe(result: ProbeResult) -> LineCheck | None:
    """What a probe says about the line: up, down, or nothing (deferred or skipped)."""
    at = result.started_at + timedelta(seconds=result.duration_s)
    if result.status == "ok":
        return LineCheck(at, True, "probe")
    if result.status != "failed":
        return None
    # An HTTP error or a garbage body came from a server we reached: the line itself is up.
    down = result.error_kind in LINE_FAILURE_KINDS
    return LineCheck(at, not down, "probe", result.error_kind)


def observe_line(
    state: OutageState | None, check: LineCheck, settings: OutageSettings, tz: tzinfo
) -> Outcome[OutageState]:
    """Count failures; open an outage after `failures_to_open`, close and report it on success."""
    s = state or OutageState()
    if not settings.enabled:
        return Outcome(s)
    ts = check.at.timestamp()
    if not check.up:
        if s.is_open:
            return Outcome(s)
        first = s.first_failure_ts if s.first_failure_ts is not None else ts
        s = replace(s, failures=s.failures + 1, first_failure_ts=first)
        if s.failures < settings.failures_to_open:
            return Outcome(s)
        s = OutageState(open_start_ts=first, open_failures=s.failures)
        start = datetime.fromtimestamp(first, UTC)
        return Outcome(s, (), (Event("outage", start, None, {"failures": s.open_failures}),))
    if not s.is_open:
        return Outcome(OutageState()) if s.failures else Outcome(s)
    assert s.open_start_ts is not None
    start = datetime.fromtimestamp(s.open_start_ts, UTC)
    end = check.at
    lasted_s = (end - start).total_seconds()
    lasted = duration(lasted_s)
    alert = Alert(
        key=f"outage:{int(s.open_start_ts)}",
        rule="outage",
        severity="warning",
        title=f"Line down {span(start, end, tz)} ({lasted})",
        body=(
            f"No connection {span(start, end, tz)} local, {local_day(start, tz)} "
            f"({lasted}): {s.open_failures} failed checks in a row opened the outage, and a "
            f"{check.source} succeeded again at the end. capbot could not tell you while the "
            "line was down."
        ),
        raised_at=end,
    )
    event = Event("outage", start, end, {"failures": s.open_failures, "duration_s": lasted_s})
    return Outcome(OutageState(), (alert,), (event,))
