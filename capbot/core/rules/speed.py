"""Speed rules: throttle episodes (M of N slow probes, recovery), bufferbloat, hourly slow statistics."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, Self

from capbot.core.model import Alert
from capbot.core.rules.pattern import Pattern, classify_episode
from capbot.core.rules.settings import (
    BufferbloatSettings,
    PlanSpeeds,
    RuleSettings,
    ThrottleSettings,
)
from capbot.core.rules.text import duration, local_time, span
from capbot.core.rules.types import Event, JsonState, Outcome, ProbeObservation
from capbot.core.units import format_bps, format_bytes

RULE_STATE = "speed"
HISTORY_MAX = 240  # ok probes kept for M-of-N and the hour pattern (a week at hourly probes)

# History rows are compact lists, not dicts: the state is rewritten after every probe.
TS, DOWN, UP, SLOW, USAGE, HOUR = range(6)


def _ts(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


@dataclass(frozen=True)
class Episode(JsonState):
    """An open throttle episode."""

    start_ts: float = 0.0
    onset_usage_bytes: int = 0
    directions: list[str] = field(default_factory=list)
    ref_down_bps: float | None = None
    ref_up_bps: float | None = None
    slow_down_bps: float | None = None
    slow_up_bps: float | None = None
    low_down_bps: float | None = None
    low_up_bps: float | None = None
    recover_run: int = 0
    recover_start_ts: float | None = None


@dataclass(frozen=True)
class BloatEpisode(JsonState):
    """An open bufferbloat episode."""

    start_ts: float = 0.0
    worst_ms: float = 0.0
    ok_run: int = 0


@dataclass(frozen=True)
class SpeedState(JsonState):
    """Recent probes, the healthy baseline, open episodes and per-cycle hour statistics."""

    history: list[list[Any]] = field(default_factory=list)  # [ts, down, up, slow, usage, hour]
    healthy_down: list[float] = field(default_factory=list)
    healthy_up: list[float] = field(default_factory=list)
    episode: Episode | None = None
    bloat_flags: list[list[float]] = field(default_factory=list)  # [ts, 0|1]
    bloat: BloatEpisode | None = None
    cycle_id: str | None = None
    cycle_hours: list[list[int]] = field(default_factory=list)  # 24 x [probes, slow]
    prev_cycle_id: str | None = None
    prev_cycle_hours: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Self:
        """Rebuild the state, nested episodes included."""
        base = super().from_json(data)
        episode, bloat = base.episode, base.bloat
        if isinstance(episode, Mapping):
            episode = Episode.from_json(episode)
        if isinstance(bloat, Mapping):
            bloat = BloatEpisode.from_json(bloat)
        return replace(base, episode=episode, bloat=bloat)

    def hours_for_cycle(self, cycle_id: str) -> list[list[int]] | None:
        """24 [probes, slow] pairs for `cycle_id` if this state still holds them."""
        if cycle_id == self.cycle_id:
            return self.cycle_hours
        if cycle_id == self.prev_cycle_id:
            return self.prev_cycle_hours
        return None


@dataclass(frozen=True)
class Verdict:
    """Whether one probe is slow, by which direction, against which reference."""

    slow: bool
    directions: tuple[str, ...] = ()
    ref_down_bps: float | None = None
    ref_up_bps: float | None = None
    reasons: tuple[str, ...] = ()


def _median(values: list[float], min_samples: int) -> float | None:
    return statistics.median(values) if len(values) >= min_samples else None


def _judge_direction(
    name: str,
    measured: float | None,
    plan_bps: float | None,
    healthy: list[float],
    s: ThrottleSettings,
) -> tuple[bool, float | None, str | None]:
    """(slow?, reference rate for "fell X%", reason) for one direction."""
    baseline = _median(healthy[-s.baseline_window :], s.baseline_min_samples)
    ref = baseline if baseline is not None else plan_bps
    if measured is None:
        return False, ref, None
    by_plan = measured < plan_bps * s.plan_percent / 100 if plan_bps else None
    by_base = measured < baseline * s.baseline_percent / 100 if baseline is not None else None
    if s.basis == "plan":
        slow = bool(by_plan)
    elif s.basis == "baseline":
        slow = bool(by_base)
    else:
        known = [v for v in (by_plan, by_base) if v is not None]
        # "both" with only one criterion known falls back to that one: a plan speed the user
        # never gave must not disable detection.
        slow = bool(known) and (any(known) if s.basis == "either" else all(known))
    why: list[str] = []
    if slow and by_plan:
        why.append(f"{name} below {s.plan_percent:g}% of the {format_bps(plan_bps)} plan")
    if slow and by_base and baseline is not None:
        why.append(
            f"{name} below {s.baseline_percent:g}% of the line's usual {format_bps(baseline)}"
        )
    return slow, ref, "; ".join(why) or None


def judge(
    down_bps: float | None,
    up_bps: float | None,
    state: SpeedState,
    plan: PlanSpeeds,
    s: ThrottleSettings,
) -> Verdict:
    """Is a probe with these rates slow, given the plan and the line's healthy baseline?"""
    d_slow, d_ref, d_why = _judge_direction(
        "download", down_bps, plan.download_bps, state.healthy_down, s
    )
    u_slow, u_ref, u_why = _judge_direction("upload", up_bps, plan.upload_bps, state.healthy_up, s)
    dirs = tuple(n for n, slow in (("download", d_slow), ("upload", u_slow)) if slow)
    reasons = tuple(w for w in (d_why, u_why) if w)
    return Verdict(bool(dirs), dirs, d_ref, u_ref, reasons)


def observe_speed(
    state: SpeedState | None, obs: ProbeObservation, settings: RuleSettings, tz: tzinfo
) -> Outcome[SpeedState]:
    """Feed one probe to the throttle and bufferbloat rules; failed probes change nothing here."""
    s = state or SpeedState()
    r = obs.result
    if not r.ok or (r.download_bps is None and r.upload_bps is None):
        return Outcome(s)
    ts = r.started_at.timestamp()
    hour = r.started_at.astimezone(tz).hour
    t = settings.throttle
    verdict = (
        judge(r.download_bps, r.upload_bps, s, settings.plan, t) if t.enabled else Verdict(False)
    )
    entry = [ts, r.download_bps, r.upload_bps, int(verdict.slow), obs.cycle_counted_bytes, hour]
    history = [e for e in s.history if e[TS] >= ts - t.pattern_window_s][-(HISTORY_MAX - 1) :]
    history.append(entry)
    healthy_down, healthy_up = s.healthy_down, s.healthy_up
    if not verdict.slow:
        # Only healthy probes feed the baseline, so a long throttle cannot become the new normal.
        if r.download_bps is not None:
            healthy_down = [*healthy_down, r.download_bps][-t.baseline_window :]
        if r.upload_bps is not None:
            healthy_up = [*healthy_up, r.upload_bps][-t.baseline_window :]
    s = replace(s, history=history, healthy_down=healthy_down, healthy_up=healthy_up)
    s = _count_hour(s, obs.cycle_id, hour, verdict.slow)
    alerts: list[Alert] = []
    events: list[Event] = []
    if t.enabled:
        s = _throttle(s, verdict, entry, t, tz, alerts, events)
    if (
        settings.bufferbloat.enabled
        and r.latency_ms is not None
        and r.loaded_latency_ms is not None
    ):
        s = _bufferbloat(
            s, ts, r.latency_ms, r.loaded_latency_ms, settings.bufferbloat, alerts, events
        )
    return Outcome(s, tuple(alerts), tuple(events))


def _count_hour(s: SpeedState, cycle_id: str, hour: int, slow: bool) -> SpeedState:
    if s.cycle_id != cycle_id:
        if s.cycle_id is not None:
            s = replace(s, prev_cycle_id=s.cycle_id, prev_cycle_hours=s.cycle_hours)
        s = replace(s, cycle_id=cycle_id, cycle_hours=[[0, 0] for _ in range(24)])
    hours = [list(pair) for pair in s.cycle_hours]
    hours[hour][0] += 1
    hours[hour][1] += int(slow)
    return replace(s, cycle_hours=hours)


def _pattern(s: SpeedState, since_ts: float, t: ThrottleSettings) -> Pattern:
    episode = [(e[HOUR], bool(e[SLOW])) for e in s.history if e[TS] >= since_ts]
    window = [(e[HOUR], bool(e[SLOW])) for e in s.history]
    return classify_episode(episode, window, t.pattern_min_hours)


def _fell(name: str, ref: float | None, now_bps: float | None) -> str:
    if now_bps is None:
        return ""
    if not ref or now_bps >= ref:
        return f"{name.capitalize()} at {format_bps(now_bps)}"
    drop = round((1 - now_bps / ref) * 100)
    return f"{name.capitalize()} fell {drop}% ({format_bps(ref)} → {format_bps(now_bps)})"


def _throttle(
    s: SpeedState,
    verdict: Verdict,
    entry: list[Any],
    t: ThrottleSettings,
    tz: tzinfo,
    alerts: list[Alert],
    events: list[Event],
) -> SpeedState:
    ep = s.episode
    if ep is None:
        window = s.history[-t.n :]
        slow = [e for e in window if e[SLOW]]
        if len(slow) < t.m:
            return s
        onset = slow[0]
        downs = [e[DOWN] for e in slow if e[DOWN] is not None]
        ups = [e[UP] for e in slow if e[UP] is not None]
        ep = Episode(
            start_ts=onset[TS],
            onset_usage_bytes=int(onset[USAGE]),
            directions=list(verdict.directions or ("download",)),
            ref_down_bps=verdict.ref_down_bps,
            ref_up_bps=verdict.ref_up_bps,
            slow_down_bps=statistics.median(downs) if downs else None,
            slow_up_bps=statistics.median(ups) if ups else None,
            low_down_bps=min(downs) if downs else None,
            low_up_bps=min(ups) if ups else None,
        )
        s = replace(s, episode=ep)
        pattern = _pattern(s, ep.start_ts, t)
        falls = [
            _fell(d, ep.ref_down_bps if d == "download" else ep.ref_up_bps,
                  ep.slow_down_bps if d == "download" else ep.slow_up_bps)
            for d in ep.directions
        ]  # fmt: skip
        usage = format_bytes(ep.onset_usage_bytes)
        headline = falls[0] if falls and falls[0] else "Speed tests are slow"
        reasons = "; ".join(verdict.reasons) or "below the configured thresholds"
        body = [
            f"{len(slow)} of the last {len(window)} speed tests were slow ({reasons}).",
            *(f"{f} after {usage} this cycle." for f in falls if f),
            f"Slow since {local_time(_ts(ep.start_ts), tz, with_date=True)} local.",
            f"Pattern: {pattern.describe()}.",
        ]
        start = _ts(ep.start_ts)
        alerts.append(
            Alert(
                key=f"throttle:{int(ep.start_ts)}",
                rule="throttle",
                severity="warning",
                title=f"Throttling suspected: {headline[0].lower()}{headline[1:]}",
                body="\n".join(body),
                raised_at=_ts(entry[TS]),
                chart="speed",
            )
        )
        events.append(Event("throttle", start, None, _episode_detail(ep, pattern)))
        return s
    if entry[SLOW]:
        ep = replace(
            ep,
            recover_run=0,
            recover_start_ts=None,
            low_down_bps=_low(ep.low_down_bps, entry[DOWN]),
            low_up_bps=_low(ep.low_up_bps, entry[UP]),
        )
        return replace(s, episode=ep)
    run = ep.recover_run + 1
    ep = replace(ep, recover_run=run, recover_start_ts=ep.recover_start_ts or entry[TS])
    if run < t.recover_after:
        return replace(s, episode=ep)
    start, end = _ts(ep.start_ts), _ts(ep.recover_start_ts or entry[TS])
    lasted = duration((end - start).total_seconds())
    pattern = _pattern(s, ep.start_ts, t)
    lows = []
    if ep.low_down_bps is not None:
        lows.append(f"lowest download {format_bps(ep.low_down_bps)}")
    if ep.low_up_bps is not None and "upload" in ep.directions:
        lows.append(f"lowest upload {format_bps(ep.low_up_bps)}")
    now_rates = f"download {format_bps(entry[DOWN])}, upload {format_bps(entry[UP])}"
    body = [
        f"Slow {span(start, end, tz)} local ({lasted}); {', '.join(lows) or 'no rates'}.",
        f"Now: {now_rates}.",
        f"The slowdown began after {format_bytes(ep.onset_usage_bytes)} this cycle.",
        f"Pattern: {pattern.describe()}.",
    ]
    alerts.append(
        Alert(
            key=f"throttle-end:{int(ep.start_ts)}",
            rule="throttle_end",
            severity="info",
            title=f"Speed back to normal after {lasted}",
            body="\n".join(body),
            raised_at=_ts(entry[TS]),
            chart="speed",
        )
    )
    detail = {**_episode_detail(ep, pattern), "duration_s": (end - start).total_seconds()}
    events.append(Event("throttle", start, end, detail))
    return replace(s, episode=None)


def _low(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else min(current, value)


def _episode_detail(ep: Episode, pattern: Pattern) -> dict[str, Any]:
    return {
        "onset_usage_bytes": ep.onset_usage_bytes,
        "directions": list(ep.directions),
        "ref_down_bps": ep.ref_down_bps,
        "slow_down_bps": ep.slow_down_bps,
        "low_down_bps": ep.low_down_bps,
        "ref_up_bps": ep.ref_up_bps,
        "slow_up_bps": ep.slow_up_bps,
        "low_up_bps": ep.low_up_bps,
        "pattern": pattern.kind,
        "slow_hours": list(pattern.slow_hours),
    }


def _bufferbloat(
    s: SpeedState,
    ts: float,
    idle_ms: float,
    loaded_ms: float,
    b: BufferbloatSettings,
    alerts: list[Alert],
    events: list[Event],
) -> SpeedState:
    excess_ms = loaded_ms - idle_ms
    bloated = excess_ms >= b.threshold_ms
    flags = [*s.bloat_flags, [ts, int(bloated)]][-b.n :]
    s = replace(s, bloat_flags=flags)
    ep = s.bloat
    if ep is None:
        hits = [f for f in flags if f[1]]
        if len(hits) < b.m:
            return s
        ep = BloatEpisode(start_ts=hits[0][0], worst_ms=excess_ms)
        alerts.append(
            Alert(
                key=f"bufferbloat:{int(ep.start_ts)}",
                rule="bufferbloat",
                severity="info",
                title=f"Bufferbloat: latency rises from {idle_ms:.0f} ms to {loaded_ms:.0f} ms under load",
                body=(
                    f"In {len(hits)} of the last {len(flags)} speed tests, latency under load exceeded "
                    f"idle latency by {b.threshold_ms:.0f} ms or more (now +{excess_ms:.0f} ms). Calls "
                    "and games stutter while the line is busy; smart queue management (fq_codel or "
                    "cake) on the router usually cures it."
                ),
                raised_at=_ts(ts),
            )
        )
        events.append(Event("bufferbloat", _ts(ep.start_ts), None, {"excess_ms": excess_ms}))
        return replace(s, bloat=ep)
    if bloated:
        return replace(s, bloat=replace(ep, ok_run=0, worst_ms=max(ep.worst_ms, excess_ms)))
    ep = replace(ep, ok_run=ep.ok_run + 1)
    if ep.ok_run < b.recover_after:
        return replace(s, bloat=ep)
    # The end of bufferbloat is worth a line in the cycle summary, not a message of its own.
    events.append(Event("bufferbloat", _ts(ep.start_ts), _ts(ts), {"worst_excess_ms": ep.worst_ms}))
    return replace(s, bloat=None)
