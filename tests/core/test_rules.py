"""Rule logic with a fake clock: cap thresholds, projections, budgets, throttling, bufferbloat, outages."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capbot.core.model import Alert, ProbeResult
from capbot.core.rules import (
    CapRuleSettings,
    CapSnapshot,
    CapState,
    DeliverySettings,
    Event,
    LineCheck,
    OutageSettings,
    OutageState,
    PlanSpeeds,
    ProbeObservation,
    RuleSettings,
    SpeedState,
    ThrottleSettings,
    backoff_s,
    check_from_probe,
    classify_hours,
    compose,
    cycle_summary,
    evaluate_cap,
    hold_until,
    hour_counts,
    judge,
    observe_line,
    observe_speed,
    quiet_until,
    rolled_over,
)
from capbot.core.rules.text import duration, hour_ranges

TZ = ZoneInfo("Europe/Berlin")  # UTC+1 in November: local hours differ from UTC on purpose
GB = 10**9
MBIT = 10**6
C1 = datetime(2026, 11, 15, tzinfo=UTC)
C2 = datetime(2026, 12, 15, tzinfo=UTC)


def snap(
    day: float,
    counted_gb: float,
    *,
    cycle_start: datetime = C1,
    cap_gb: float | None = 1000,
    projected_gb: float | None = None,
    today_gb: float = 0,
    budget_gb: float | None = None,
) -> CapSnapshot:
    """A snapshot `day` days into the cycle starting at `cycle_start` (30-day cycles)."""
    return CapSnapshot(
        cycle_id=cycle_start.date().isoformat(),
        cycle_start=cycle_start,
        cycle_end=cycle_start + timedelta(days=30),
        now=cycle_start + timedelta(days=day),
        counted_bytes=int(counted_gb * GB),
        cap_bytes=None if cap_gb is None else int(cap_gb * GB),
        projected_bytes=None if projected_gb is None else int(projected_gb * GB),
        projection_method="linear blend",
        today_counted_bytes=int(today_gb * GB),
        daily_budget_bytes=None if budget_gb is None else int(budget_gb * GB),
    )


ONLY_THRESHOLDS = CapRuleSettings(projection_warning=False, daily_budget=False)


# -- cap thresholds --------------------------------------------------------------------------


def test_thresholds_fire_once_per_cycle_and_rearm_after_rollover() -> None:
    """Each threshold fires once per cycle, repeats are silent, and a new cycle re-arms them all."""
    steps = [
        (C1, 1, 100, []),
        (C1, 5, 500, ["cap:2026-11-15:50"]),
        (C1, 6, 520, []),
        (C1, 10, 850, ["cap:2026-11-15:80"]),
        (C1, 11, 950, ["cap:2026-11-15:90"]),
        (C1, 12, 960, []),
        (C1, 20, 1001, ["cap:2026-11-15:100"]),
        (C1, 21, 1100, []),
        (C2, 0.5, 10, []),
        (C2, 10, 600, ["cap:2026-12-15:50"]),
        (C2, 11, 610, []),
    ]
    state: CapState | None = None
    for start, day, counted, expected in steps:
        out = evaluate_cap(state, snap(day, counted, cycle_start=start), ONLY_THRESHOLDS, TZ)
        assert [a.key for a in out.alerts] == expected, (start, day, counted)
        state = CapState.from_json(json.loads(json.dumps(out.state.to_json())))  # as stored


def test_threshold_severities_and_rollover_detection() -> None:
    """100% is critical, 80/90% warnings, 50% info; `rolled_over` spots the new cycle."""
    severities = {}
    state = None
    for counted in (500, 800, 900, 1000):
        out = evaluate_cap(state, snap(10, counted), ONLY_THRESHOLDS, TZ)
        state = out.state
        severities[out.alerts[0].key.rsplit(":", 1)[1]] = out.alerts[0].severity
    assert severities == {"50": "info", "80": "warning", "90": "warning", "100": "critical"}
    assert not rolled_over(None, snap(1, 0))
    assert not rolled_over(state, snap(11, 1000))
    assert rolled_over(state, snap(1, 0, cycle_start=C2))


def test_crossing_several_thresholds_at_once_sends_only_the_highest() -> None:
    """A first look at 85% raises the 80% alert only, and 90% still fires later."""
    out = evaluate_cap(None, snap(20, 850), ONLY_THRESHOLDS, TZ)
    assert [a.key for a in out.alerts] == ["cap:2026-11-15:80"]
    assert "850 GB of 1.00 TB (85%)" in out.alerts[0].body
    out = evaluate_cap(out.state, snap(21, 905), ONLY_THRESHOLDS, TZ)
    assert [a.key for a in out.alerts] == ["cap:2026-11-15:90"]


def test_no_cap_means_no_cap_alerts() -> None:
    """Without a cap nothing fires, however much is used."""
    out = evaluate_cap(None, snap(20, 5000, cap_gb=None, projected_gb=9000), CapRuleSettings(), TZ)
    assert out.alerts == ()


# -- projection --------------------------------------------------------------------------------

PROJECTION = CapRuleSettings(thresholds_percent=(100,), daily_budget=False)


@pytest.mark.parametrize(
    ("day", "counted", "projected", "expected_date"),
    [
        (0.5, 40, 2400, None),  # day 1: a linear projection is absurd; no warning
        (1.0, 150, 4500, None),  # still under the 2-day minimum
        (10, 50, 1500, None),  # only 5% used: too little to trust a pace
        (10, 500, 900, None),  # projected under the cap
        (10, 500, 1500, "2026-12-05"),  # 50 GB/day from day 10: 500 GB more takes 10 days
        (25, 900, 1200, "2026-12-11"),  # (1200-900)/5 d = 60 GB/day: 100 GB in 1.7 days
    ],
)
def test_projection_warning_day_one_and_mid_cycle(
    day: float, counted: float, projected: float, expected_date: str | None
) -> None:
    """The early warning stays quiet early in a cycle and names the right local date later."""
    out = evaluate_cap(None, snap(day, counted, projected_gb=projected), PROJECTION, TZ)
    warnings = [a for a in out.alerts if a.rule == "projection"]
    if expected_date is None:
        assert warnings == []
    else:
        assert [a.key for a in warnings] == [f"projection:2026-11-15:{expected_date}"]
        assert "you will reach your cap on" in warnings[0].title
        assert expected_date in warnings[0].title
        assert "linear blend" in warnings[0].body


def test_projection_warns_once_then_again_only_when_much_earlier() -> None:
    """A repeat needs the reach date to move at least 3 days earlier."""
    out = evaluate_cap(None, snap(10, 500, projected_gb=1500), PROJECTION, TZ)
    assert len(out.alerts) == 1  # 2026-12-05
    out = evaluate_cap(out.state, snap(11, 560, projected_gb=1560), PROJECTION, TZ)
    assert out.alerts == ()  # about the same date
    out = evaluate_cap(out.state, snap(12, 700, projected_gb=2000), PROJECTION, TZ)
    assert [a.key for a in out.alerts] == ["projection:2026-11-15:2026-12-01"]
    assert "earlier than last warned" in out.alerts[0].title


# -- daily budget ------------------------------------------------------------------------------

BUDGET = CapRuleSettings(thresholds_percent=(100,), projection_warning=False)


def test_daily_budget_fires_once_per_local_day() -> None:
    """Over budget fires once a day; under budget, past the cap, or without a budget it is silent."""
    steps = [
        (3.40, 300, 20, 25, []),
        (3.50, 310, 30, 25, ["budget:2026-11-15:2026-11-18"]),
        (3.60, 320, 40, 25, []),  # same local day
        (4.50, 360, 30, 25, ["budget:2026-11-15:2026-11-19"]),
        (5.50, 400, 30, None, []),  # no budget known
        (6.50, 1000, 30, 1, []),  # cap spent: the 100% alert said it
    ]
    state = None
    for day, counted, today, budget, expected in steps:
        s = snap(day, counted, today_gb=today, budget_gb=budget)
        out = evaluate_cap(state, s, BUDGET, TZ)
        assert [a.key for a in out.alerts if a.rule == "daily_budget"] == expected, day
        state = out.state


# -- cycle summary -----------------------------------------------------------------------------


def test_cycle_summary_reports_usage_peak_probes_and_events() -> None:
    """The rollover summary carries usage, % of cap, peak day, probe bytes and event totals."""
    ended = replace(
        snap(30, 812),
        probe_bytes=850 * 10**6,
        peak_day=(datetime(2026, 11, 29).date(), 95_200_000_000),
    )
    t = C1 + timedelta(days=3)
    events = [
        Event("throttle", t, t + timedelta(hours=5, minutes=20)),
        Event("outage", t, t + timedelta(minutes=35)),
        Event("outage", t + timedelta(days=2), t + timedelta(days=2, minutes=10)),
    ]
    hours = hour_counts([(h, h in (19, 20, 21)) for h in range(24) for _ in range(3)])
    alert = cycle_summary(ended, events, hours, TZ)
    assert alert.key == "summary:2026-11-15"
    assert alert.title == "Cycle summary: 812 GB used (81% of 1.00 TB)"
    for needle in (
        "Used 812 GB of 1.00 TB (81%).",
        "Peak day: Sun 2026-11-29, 95.2 GB.",
        "Speed tests used 850 MB.",
        "Throttling episodes: 1, 5 h 20 min in total",
        "peak-hour congestion",
        "Outages: 2, 45 min in total (longest 35 min",
        "Bufferbloat episodes: none.",
    ):
        assert needle in alert.body


# -- speed: judging one probe ------------------------------------------------------------------


def _baseline_state(mbps: float, count: int = 3) -> SpeedState:
    return SpeedState(healthy_down=[mbps * MBIT] * count)


@pytest.mark.parametrize(
    ("basis", "plan_mbps", "measured_mbps", "slow"),
    [
        # plan 100 -> slow below 50; baseline 90 -> slow below 54
        ("plan", 100, 52, False),
        ("baseline", 100, 52, True),
        ("either", 100, 52, True),
        ("both", 100, 52, False),
        ("both", 100, 45, True),
        ("either", 100, 60, False),
        ("both", None, 52, True),  # no plan speed: "both" falls back to the baseline
        ("plan", None, 10, False),  # no plan speed: the plan basis cannot judge
    ],
)
def test_slow_by_basis(
    basis: str, plan_mbps: float | None, measured_mbps: float, slow: bool
) -> None:
    """A probe is slow per the configured basis: plan, baseline, either or both."""
    t = ThrottleSettings(basis=basis)  # type: ignore[arg-type]
    plan = PlanSpeeds(download_bps=None if plan_mbps is None else plan_mbps * MBIT)
    verdict = judge(measured_mbps * MBIT, None, _baseline_state(90), plan, t)
    assert verdict.slow is slow


# -- speed: episodes ---------------------------------------------------------------------------

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)  # 07:00 in Berlin
SPEED = RuleSettings(plan=PlanSpeeds(100 * MBIT, 20 * MBIT))


def probe(
    at: datetime,
    down_mbps: float | None = 94.5,
    up_mbps: float | None = 19.0,
    *,
    latency_ms: float | None = None,
    loaded_ms: float | None = None,
    status: str = "ok",
    error_kind: str | None = None,
) -> ProbeResult:
    """A probe result with rates in Mbit/s."""
    return ProbeResult(
        started_at=at,
        server="test",
        mode="economy",
        status=status,  # type: ignore[arg-type]
        download_bps=None if down_mbps is None else down_mbps * MBIT,
        upload_bps=None if up_mbps is None else up_mbps * MBIT,
        latency_ms=latency_ms,
        loaded_latency_ms=loaded_ms,
        duration_s=10.0,
        error_kind=error_kind,
    )


def run_probes(
    downs: list[float],
    *,
    state: SpeedState | None = None,
    start: datetime = T0,
    step: timedelta = timedelta(hours=1),
    usage_gb: float = 800,
    usage_step_gb: float = 2,
    rules: RuleSettings = SPEED,
) -> tuple[SpeedState, list[tuple[int, Alert]], list[Event]]:
    """Feed one probe per `step` with the given download rates; collect alerts by probe index."""
    alerts: list[tuple[int, Alert]] = []
    events: list[Event] = []
    s = state
    for i, down in enumerate(downs):
        at = start + i * step
        obs = ProbeObservation(
            probe(at, down), "2026-11-15", int((usage_gb + i * usage_step_gb) * GB)
        )
        out = observe_speed(s, obs, rules, TZ)
        s = SpeedState.from_json(json.loads(json.dumps(out.state.to_json())))  # as stored
        alerts += [(i, a) for a in out.alerts]
        events += out.events
    assert s is not None
    return s, alerts, events


F, S = 94.5, 28.35  # fast, and 70% slower


@pytest.mark.parametrize(
    ("downs", "alert_at"),
    [
        ([F, F, F, S, S, S], 5),
        ([F, F, F, S, F, S, F, S], 7),  # 3 of the last 5
        ([F, F, F, S, S, F, F, F, S, S, F], None),  # never 3 of 5
        ([F, F, F, S, F, F, F, S, F, F, F, S], None),
        ([S, S, S], 2),  # slow from the very start, judged against the plan
    ],
)
def test_m_of_n_debounce(downs: list[float], alert_at: int | None) -> None:
    """The throttle alert needs 3 of the last 5 probes slow; scattered slow probes stay silent."""
    _, alerts, _ = run_probes(downs)
    opened = [i for i, a in alerts if a.rule == "throttle"]
    assert opened == ([] if alert_at is None else [alert_at])


def test_throttle_alert_reports_drop_and_usage_at_onset_then_recovery_duration() -> None:
    """Alert: "fell 70% after 812 GB"; recovery: how long it lasted; events open then close."""
    downs = [F] * 6 + [S] * 5 + [F] * 3
    # probe 6 is the first slow one: usage then is 800 + 6*2 = 812 GB
    _, alerts, events = run_probes(downs)
    (i_open, opened), (i_end, ended) = alerts
    assert (i_open, opened.rule, opened.key) == (
        8,
        "throttle",
        f"throttle:{int((T0 + timedelta(hours=6)).timestamp())}",
    )
    assert "Download fell 70% (94.5 Mbit/s → 28.4 Mbit/s) after 812 GB this cycle." in opened.body
    assert "3 of the last 5 speed tests were slow" in opened.body
    assert "Slow since Fri 2026-11-20 13:00" in opened.body  # 12:00 UTC = 13:00 Berlin
    assert opened.severity == "warning" and opened.chart == "speed"
    # slow from probe 6 (13:00 local) until the first healthy probe 11 (18:00 local): 5 h
    assert (i_end, ended.rule) == (13, "throttle_end")
    assert ended.title == "Speed back to normal after 5 h"
    assert "Slow 13:00–18:00 local (5 h)" in ended.body
    assert "began after 812 GB this cycle" in ended.body
    assert [(e.kind, e.end is None) for e in events] == [("throttle", True), ("throttle", False)]
    assert events[0].start == events[1].start == T0 + timedelta(hours=6)
    assert events[1].detail["onset_usage_bytes"] == 812 * GB


def test_slow_probes_do_not_become_the_baseline() -> None:
    """A long slowdown keeps being judged against the healthy baseline, not against itself."""
    state, alerts, _ = run_probes([F] * 5 + [S] * 30)
    assert [a.rule for _, a in alerts] == ["throttle"]
    assert state.episode is not None
    assert state.healthy_down == [F * MBIT] * 5


def test_congestion_is_told_apart_from_round_the_clock_throttling() -> None:
    """Evening-only slowness repeated on two days reads as congestion; a 30 h slowdown as throttling."""
    evening = {19, 20, 21, 22}  # local hours
    start = datetime(2026, 11, 20, 0, 0, tzinfo=TZ).astimezone(UTC)
    downs = [S if (h % 24) in evening else F for h in range(48)]
    _, alerts, _ = run_probes(downs, start=start)
    opened = [a for _, a in alerts if a.rule == "throttle"]
    assert len(opened) == 2
    assert "too few probes" in opened[0].body or "no clear" in opened[0].body
    assert "peak-hour congestion" in opened[1].body
    assert "cluster at 19:00–22:00 local" in opened[1].body  # 22:00 of day 2 is still to come

    downs = [F] * 10 + [S] * 30 + [F] * 3
    _, alerts, _ = run_probes(downs, start=start)
    ended = [a for _, a in alerts if a.rule == "throttle_end"]
    assert len(ended) == 1
    assert "around the clock" in ended[0].body and "throttling, not congestion" in ended[0].body


@pytest.mark.parametrize(
    ("samples", "kind"),
    [
        ([(h, False) for h in range(5)], "unknown"),  # 5 hours sampled only
        ([(h, False) for h in range(24)], "none"),
        ([(h, True) for h in range(24)], "persistent"),
        ([(h, h >= 18) for h in range(24) for _ in range(2)], "congestion"),
        ([(h, h in (3, 11, 17, 20)) for h in range(24)], "mixed"),  # scattered, not recurring
    ],
)
def test_classify_hours(samples: list[tuple[int, bool]], kind: str) -> None:
    """Hour-of-day classification of slow probes."""
    assert classify_hours(hour_counts(samples)).kind == kind


def test_bufferbloat_notice_is_debounced_and_ends_quietly() -> None:
    """Three bloated probes of five raise one notice; recovery closes the event without a message."""
    s: SpeedState | None = None
    raised: list[Alert] = []
    events: list[Event] = []
    loaded = [20, 180, 30, 170, 190, 200, 185, 25, 22, 21]
    for i, load in enumerate(loaded):
        obs = ProbeObservation(
            probe(T0 + timedelta(hours=i), latency_ms=15, loaded_ms=load), "c", 0
        )
        out = observe_speed(s, obs, SPEED, TZ)
        s, raised, events = out.state, raised + list(out.alerts), events + list(out.events)
    assert [a.rule for a in raised] == ["bufferbloat"]
    assert raised[0].key == f"bufferbloat:{int((T0 + timedelta(hours=1)).timestamp())}"
    assert "15 ms to 190 ms under load" in raised[0].title
    assert [(e.kind, e.end is not None) for e in events] == [
        ("bufferbloat", False),
        ("bufferbloat", True),
    ]


def test_failed_and_deferred_probes_leave_speed_state_alone() -> None:
    """Only measured probes feed the throttle rule."""
    for result in (
        probe(T0, status="failed", error_kind="connect", down_mbps=None, up_mbps=None),
        probe(T0, status="deferred", error_kind="busy", down_mbps=None, up_mbps=None),
    ):
        out = observe_speed(None, ProbeObservation(result, "c", 0), SPEED, TZ)
        assert out.state == SpeedState() and out.alerts == ()


def test_cycle_hour_counts_roll_over_with_the_cycle() -> None:
    """The per-cycle hour statistics keep the previous cycle for its summary."""
    s, _, _ = run_probes([S, F, F])
    obs = ProbeObservation(probe(T0 + timedelta(days=30)), "2026-12-15", 0)
    s = observe_speed(s, obs, SPEED, TZ).state
    old = s.hours_for_cycle("2026-11-15")
    assert old is not None and sum(p[0] for p in old) == 3 and sum(p[1] for p in old) == 1
    new = s.hours_for_cycle("2026-12-15")
    assert new is not None and sum(p[0] for p in new) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_throttle_alerts_alternate_open_and_close(slow_flags: list[bool]) -> None:
    """For any sequence of slow and fast probes, openings and recoveries strictly alternate."""
    _, alerts, events = run_probes([S if slow else F for slow in slow_flags])
    rules = [a.rule for _, a in alerts]
    assert rules == ["throttle", "throttle_end"] * (len(rules) // 2) + ["throttle"] * (
        len(rules) % 2
    )
    assert len({a.key for _, a in alerts}) == len(alerts)
    assert len(events) == len(alerts)


# -- outages -----------------------------------------------------------------------------------

OUT = OutageSettings(failures_to_open=3)
D0 = datetime(2026, 11, 20, 13, 2, tzinfo=UTC)  # 14:02 in Berlin


def test_outage_opens_after_three_failures_and_is_reported_when_it_ends() -> None:
    """Three failures open an outage (no alert yet); the first success closes and reports it."""
    s: OutageState | None = None
    timeline = [
        (0, False),
        (1, False),
        (2, False),
        (10, False),
        (30, False),
        (35, True),
        (36, True),
    ]
    results = []
    for minute, up in timeline:
        out = observe_line(s, LineCheck(D0 + timedelta(minutes=minute), up), OUT, TZ)
        results.append(out)
        s = out.state
    assert [len(r.alerts) for r in results] == [0, 0, 0, 0, 0, 1, 0]
    assert [len(r.events) for r in results] == [0, 0, 1, 0, 0, 1, 0]
    assert results[2].events[0] == Event("outage", D0, None, {"failures": 3})
    assert results[3].state == results[2].state  # nothing to write while it lasts
    alert = results[5].alerts[0]
    assert alert.title == "Line down 14:02–14:37 (35 min)"
    assert alert.key == f"outage:{int(D0.timestamp())}"
    assert alert.raised_at == D0 + timedelta(minutes=35)
    assert results[5].events[0].end == D0 + timedelta(minutes=35)
    assert results[6].state == OutageState()


def test_short_failure_streak_is_not_an_outage() -> None:
    """Two failures then a success reset the streak without an event."""
    s = None
    for minute, up in [(0, False), (1, False), (2, True), (3, False), (4, True)]:
        out = observe_line(s, LineCheck(D0 + timedelta(minutes=minute), up), OUT, TZ)
        assert out.alerts == () and out.events == ()
        s = out.state
    assert s == OutageState()


@pytest.mark.parametrize(
    ("status", "kind", "up"),
    [
        ("ok", None, True),
        ("failed", "connect", False),
        ("failed", "timeout", False),
        ("failed", "http", True),  # a server answered: the line works
        ("failed", "protocol", True),
        ("deferred", "busy", None),
        ("skipped", "cap", None),
    ],
)
def test_probe_evidence_about_the_line(status: str, kind: str | None, up: bool | None) -> None:
    """Only connection failures and timeouts count as the line being down."""
    check = check_from_probe(probe(D0, status=status, error_kind=kind))
    assert (None if check is None else check.up) is up


# -- delivery policy ---------------------------------------------------------------------------


def test_backoff_is_exponential_and_capped() -> None:
    """30 s, 60 s, 120 s ... up to the 2 h cap."""
    d = DeliverySettings()
    assert [backoff_s(n, d) for n in (1, 2, 3, 4, 8, 9, 50, 10_000)] == [
        30, 60, 120, 240, 3840, 7200, 7200, 7200,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("local", "quiet", "until"),
    [
        ("23:00", ("22:00", "07:00"), "2026-11-21 07:00"),
        ("03:00", ("22:00", "07:00"), "2026-11-20 07:00"),
        ("12:00", ("22:00", "07:00"), None),
        ("07:00", ("22:00", "07:00"), None),
        ("13:30", ("13:00", "15:00"), "2026-11-20 15:00"),
        ("15:00", ("13:00", "15:00"), None),
    ],
)
def test_quiet_hours(local: str, quiet: tuple[str, str], until: str | None) -> None:
    """The end of the quiet hours in local time, wrapping midnight when start > end."""
    now = datetime.fromisoformat(f"2026-11-20 {local}").replace(tzinfo=TZ).astimezone(UTC)
    window = (time.fromisoformat(quiet[0]), time.fromisoformat(quiet[1]))
    got = quiet_until(now, window, TZ)
    assert (None if got is None else got.astimezone(TZ).strftime("%Y-%m-%d %H:%M")) == until


def _alert(
    rule: str = "throttle", severity: str = "warning", raised: datetime = D0, key: str = "k"
) -> Alert:
    return Alert(key, rule, severity, f"{rule} title", f"{rule} body", raised)  # type: ignore[arg-type]


def test_hold_until_quiet_hours_and_repeat_spacing() -> None:
    """Critical alerts go at once; others wait out quiet hours and the repeat interval."""
    night = datetime(2026, 11, 20, 23, 0, tzinfo=TZ).astimezone(UTC)
    d = DeliverySettings(quiet_hours=(time(22), time(7)), min_repeat_s=3600)
    morning = datetime(2026, 11, 21, 7, 0, tzinfo=TZ).astimezone(UTC)
    assert hold_until(_alert(severity="critical"), night, None, d, TZ) is None
    assert hold_until(_alert(), night, None, d, TZ) == morning
    day = datetime(2026, 11, 20, 12, 0, tzinfo=TZ).astimezone(UTC)
    last = day - timedelta(minutes=20)
    assert hold_until(_alert("outage"), day, last, d, TZ) == last + timedelta(hours=1)
    assert hold_until(_alert("cap"), day, last, d, TZ) is None  # not a repeat-spaced rule
    assert hold_until(_alert("outage"), day, day - timedelta(hours=2), d, TZ) is None


def test_compose_late_note_and_batches() -> None:
    """Late messages say when they were raised; several due alerts go as one, most severe first."""
    d = DeliverySettings(late_after_s=300)
    now = D0 + timedelta(hours=3, minutes=5)
    title, body, _ = compose([_alert(raised=D0)], now, d, TZ)
    assert title == "throttle title"
    assert "(Delivered late: raised Fri 2026-11-20 14:02, 3 h 5 min ago.)" in body
    title, body, _ = compose([_alert(raised=now)], now, d, TZ)
    assert "late" not in body
    batch = [_alert("outage", "warning", D0), _alert("cap", "critical", D0 + timedelta(hours=1))]
    title, body, _ = compose(batch, now, d, TZ)
    assert title == "cap title (+1 more)"
    assert body.index("• cap title") < body.index("• outage title")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (20, "<1 min"),
        (35 * 60, "35 min"),
        (5 * 3600, "5 h"),
        (5 * 3600 + 1200, "5 h 20 min"),
        (2 * 86400 + 3 * 3600, "2 d 3 h"),
    ],
)
def test_duration_text(seconds: float, text: str) -> None:
    """Durations read naturally."""
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("hours", "text"),
    [
        ([19, 20, 21, 22], "19:00–23:00"),
        ([22, 23, 0, 1], "22:00–02:00"),
        ([3, 7, 8], "03:00–04:00, 07:00–09:00"),
    ],
)
def test_hour_ranges(hours: list[int], text: str) -> None:
    """Local hours compress into ranges, wrapping midnight."""
    assert hour_ranges(hours) == text
