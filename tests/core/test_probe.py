"""Tests for the pure probe logic: servers, presets, stable stop, byte budgets, latency, scheduling."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capbot.core.probe import (
    PRESETS,
    ByteBudget,
    ProbeSettings,
    ScheduleSettings,
    ServerSpec,
    StableEstimator,
    decide,
    latency_stats,
    next_run_at,
    quiet_end,
    quiet_window_at,
    server_time_ms,
)

BERLIN = ZoneInfo("Europe/Berlin")
MBIT = 1_000_000


def utc(text: str) -> datetime:
    """An aware UTC datetime from an ISO string without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def feed(est: StableEstimator, rates_mbps: list[float], window_s: float = 0.2) -> int:
    """Feed windows at the given rates; returns how many were fed until stable (or all)."""
    for i, rate in enumerate(rates_mbps, 1):
        if est.add(window_s, int(rate * MBIT / 8 * window_s)):
            return i
    return len(rates_mbps)


# --- servers -------------------------------------------------------------------------------------
def test_cloudflare_urls() -> None:
    """A Cloudflare-compatible server builds /__down?bytes=N, /__up and a zero-byte latency URL."""
    spec = ServerSpec.from_url("http://127.0.0.1:8080/")
    assert spec.kind == "cloudflare"
    assert spec.name == "127.0.0.1"
    assert spec.down_url(1000) == "http://127.0.0.1:8080/__down?bytes=1000"
    assert spec.latency_url == "http://127.0.0.1:8080/__down?bytes=0"
    assert spec.up_url == "http://127.0.0.1:8080/__up"
    assert not spec.uses_range


def test_generic_urls() -> None:
    """A generic file is fetched by Range; a `{bytes}` endpoint by size; upload is optional."""
    file = ServerSpec("mirror", "generic", download_url="http://127.0.0.1/big.iso")
    assert file.uses_range and file.down_url(5) == "http://127.0.0.1/big.iso"
    assert file.up_url is None
    sized = ServerSpec(
        "libre",
        "generic",
        download_url="http://127.0.0.1/garbage?bytes={bytes}",
        upload_url="http://127.0.0.1/empty",
    )
    assert not sized.uses_range
    assert sized.down_url(42) == "http://127.0.0.1/garbage?bytes=42"
    assert sized.up_url == "http://127.0.0.1/empty"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "generic", "download_url": ""},
        {"base_url": "ftp://127.0.0.1/"},
        {"kind": "ookla"},
    ],
)
def test_server_spec_rejects_bad_values(kwargs: dict[str, str]) -> None:
    """A server without a usable http(s) URL or with an unknown kind is refused with its name."""
    with pytest.raises(ValueError, match="bad"):
        ServerSpec(name="bad", **kwargs)  # type: ignore[arg-type]


# --- settings ------------------------------------------------------------------------------------
def test_presets_and_overrides() -> None:
    """`for_mode` returns the preset and applies only the overrides that are given."""
    assert ProbeSettings.for_mode() == PRESETS["economy"]
    thorough = ProbeSettings.for_mode("thorough", streams=2, max_bytes=10**6)
    assert thorough.mode == "thorough" and thorough.streams == 2 and thorough.max_bytes == 10**6
    assert thorough.window_s == PRESETS["thorough"].window_s
    assert thorough.max_seconds == PRESETS["thorough"].max_seconds


def test_settings_validation_names_fields() -> None:
    """Out-of-range settings raise ValueError naming every bad field; unknown modes too."""
    with pytest.raises(ValueError, match=r"streams.*tolerance"):
        ProbeSettings(streams=0, tolerance=1.5)
    with pytest.raises(ValueError, match="unknown probe mode"):
        ProbeSettings.for_mode("turbo")


# --- stable stop -------------------------------------------------------------------------------
def test_steady_rate_stops_after_ramp_plus_k_windows() -> None:
    """A steady line is stable after the ramp and k windows, and the estimate is exact."""
    est = StableEstimator(ramp_s=0.3, stable_windows=4, tolerance=0.06)
    n = feed(est, [100.0] * 20)
    # windows start at 0.0, 0.2 (ramp), then 0.4, 0.6, 0.8, 1.0 -> stable at window 6
    assert n == 6
    assert est.stable
    assert est.estimate_bps == pytest.approx(100 * MBIT)
    assert est.stable_span_s == pytest.approx(0.8)


def test_slow_start_ramp_is_discarded() -> None:
    """Rising windows of the TCP ramp never enter the estimate of the plateau."""
    est = StableEstimator(ramp_s=0.2, stable_windows=4, tolerance=0.06)
    ramp = [5.0, 20.0, 45.0, 80.0]
    feed(est, [*ramp, *([94.0] * 10)])
    assert est.stable
    assert est.estimate_bps == pytest.approx(94 * MBIT)


def test_slow_steady_ramp_is_not_a_plateau() -> None:
    """Windows climbing 1.8 % each pass the spread test but fail the trend test."""
    est = StableEstimator(ramp_s=0.0, stable_windows=4, tolerance=0.06)
    climbing = [50.0 * 1.018**i for i in range(12)]
    feed(est, climbing)
    assert not est.stable


def test_noisy_windows_stop_on_a_merged_view() -> None:
    """Windows swinging +/-10 % are not stable one by one, but pairs of them agree."""
    est = StableEstimator(ramp_s=0.0, stable_windows=4, tolerance=0.06)
    n = feed(est, [90.0, 110.0] * 10)
    assert est.stable
    assert n == 8  # four merged pairs
    assert est.estimate_bps == pytest.approx(100 * MBIT)
    assert est.stable_span_s == pytest.approx(1.6)


def test_unstable_line_reports_later_half() -> None:
    """Without stability the estimate is the later half of the post-ramp windows."""
    est = StableEstimator(ramp_s=0.2, stable_windows=4, tolerance=0.02)
    rates = [10.0, 50.0, 60.0, 80.0, 40.0, 90.0, 30.0, 70.0, 20.0]
    feed(est, rates)
    assert not est.stable
    later = rates[1:][4:]  # post-ramp windows are rates[1:], the later half of those
    assert est.estimate_bps == pytest.approx(sum(later) / len(later) * MBIT)


def test_estimator_edge_cases() -> None:
    """No windows give no estimate; zero-length windows are ignored; one window is used as is."""
    est = StableEstimator(ramp_s=0.3, stable_windows=4, tolerance=0.05)
    assert est.estimate_bps is None
    est.add(0.0, 1000)
    assert est.windows == []
    est.add(0.1, 1_250_000)
    assert est.estimate_bps == pytest.approx(100 * MBIT)
    assert est.total_bytes == 1_250_000 and est.elapsed_s == pytest.approx(0.1)


@given(
    rate=st.floats(1, 10_000),
    noise=st.lists(st.floats(-0.02, 0.02), min_size=8, max_size=40),
)
def test_estimate_within_window_range(rate: float, noise: list[float]) -> None:
    """Whatever the noise, the estimate lies between the slowest and fastest post-ramp window."""
    est = StableEstimator(ramp_s=0.0, stable_windows=4, tolerance=0.06)
    rates = [rate * (1 + n) for n in noise]
    feed(est, rates)
    assert est.estimate_bps is not None
    assert min(rates) * MBIT * 0.999 <= est.estimate_bps <= max(rates) * MBIT * 1.001


def test_economy_bytes_at_100_mbit_synthetic() -> None:
    """With economy settings a steady 100 Mbit/s line stops within 16 MB per direction."""
    s = ProbeSettings.for_mode("economy")
    est = StableEstimator.from_settings(s)
    ramp = [30.0, 70.0]  # 0.4 s of slow start
    feed(est, [*ramp, *([100.0] * 50)], window_s=s.window_s)
    assert est.stable
    assert est.total_bytes <= 16_000_000
    assert est.estimate_bps == pytest.approx(100 * MBIT)


# --- byte budget --------------------------------------------------------------------------------
def test_budget_splits_evenly_and_caps_requests() -> None:
    """Each stream gets an even share, in requests of at most request_bytes, then 0."""
    budget = ByteBudget(max_bytes=10_000_003, streams=4, request_bytes=1_000_000)
    grants = [[], [], [], []]
    for stream in range(4):
        while (n := budget.next_request(stream)) > 0:
            grants[stream].append(n)
    assert [sum(g) for g in grants] == [2_500_001, 2_500_001, 2_500_001, 2_500_000]
    assert max(max(g) for g in grants) == 1_000_000
    assert budget.left_bytes == 0


def test_budget_refund() -> None:
    """Bytes granted but not moved (a short Range answer) can be asked for again."""
    budget = ByteBudget(max_bytes=100, streams=1, request_bytes=60)
    assert budget.next_request(0) == 60
    budget.refund(0, 20)
    assert budget.next_request(0) == 60
    assert budget.next_request(0) == 0


@given(
    max_bytes=st.integers(1, 10**10),
    streams=st.integers(1, 16),
    request=st.integers(1, 10**8),
)
def test_budget_never_exceeds_max(max_bytes: int, streams: int, request: int) -> None:
    """Whatever the sizes, the grants add up to exactly max_bytes and never exceed a request."""
    budget = ByteBudget(max_bytes, streams, request)
    total = 0
    for stream in range(streams):
        for _ in range(200):
            n = budget.next_request(stream)
            assert 0 <= n <= request
            if n == 0:
                break
            total += n
    assert total + budget.left_bytes == max_bytes


# --- latency -----------------------------------------------------------------------------------
def test_latency_stats() -> None:
    """Median of the samples; jitter is the mean absolute difference of consecutive samples."""
    stats = latency_stats([10.0, 12.0, 11.0, 15.0, 10.0])
    assert stats is not None
    assert stats.median_ms == 11.0
    assert stats.jitter_ms == pytest.approx((2 + 1 + 4 + 5) / 4)
    assert stats.samples == 5
    single = latency_stats([7.0])
    assert single is not None and single.jitter_ms == 0.0
    assert latency_stats([]) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("cfRequestDuration;dur=1.25", 1.25),
        ("cache;desc=hit, cfRequestDuration;dur=0.5", 0.5),
        ('cfRequestDuration;dur="2"', 2.0),
        ("other;dur=9", 0.0),
        ("cfRequestDuration;dur=abc", 0.0),
        ("cfRequestDuration;dur=nan", 0.0),
        (None, 0.0),
    ],
)
def test_server_time(header: str | None, expected: float) -> None:
    """Server-Timing's cfRequestDuration is subtracted from latency; anything else counts 0."""
    assert server_time_ms(header) == expected


# --- scheduling ----------------------------------------------------------------------------------
def test_decide_runs_when_nothing_objects() -> None:
    """A quiet line, no cap and no recent probe: run; unknown readings never block a probe."""
    s = ScheduleSettings()
    assert decide(utc("2025-01-01T12:00"), s).action == "run"
    d = decide(utc("2025-01-01T12:00"), s, recent_rate_bps=1e6, cap_fraction=0.5)
    assert d.action == "run"


def test_decide_busy_line_defers_then_skips() -> None:
    """Traffic above the threshold defers (retry soon) until max_deferrals, then skips."""
    s = ScheduleSettings(busy_threshold_bps=2e6, busy_retry_s=90, max_deferrals=2)
    now = utc("2025-01-01T12:00")
    d = decide(now, s, recent_rate_bps=5e6, deferrals=0)
    assert (d.action, d.kind, d.retry_after_s, d.record) == ("defer", "busy", 90, True)
    assert "5.0 Mbit/s" in d.reason
    assert decide(now, s, recent_rate_bps=5e6, deferrals=1).action == "defer"
    final = decide(now, s, recent_rate_bps=5e6, deferrals=2)
    assert (final.action, final.kind) == ("skip", "busy")


def test_decide_cap_nearly_spent_skips() -> None:
    """At or above the cap fraction the slot is skipped; None disables the check."""
    now = utc("2025-01-01T12:00")
    d = decide(now, ScheduleSettings(), cap_fraction=0.95)
    assert (d.action, d.kind, d.record) == ("skip", "cap", True)
    assert "95%" in d.reason
    assert decide(now, ScheduleSettings(), cap_fraction=0.949).action == "run"
    off = ScheduleSettings(cap_skip_fraction=None)
    assert decide(now, off, cap_fraction=1.2).action == "run"


def test_decide_recent_probe_satisfies_slot_unrecorded() -> None:
    """A probe within min_gap_s skips the slot without recording it."""
    now = utc("2025-01-01T12:00")
    s = ScheduleSettings(min_gap_s=600)
    d = decide(now, s, last_run=now - timedelta(seconds=300))
    assert (d.action, d.kind, d.record) == ("skip", "recent", False)
    assert decide(now, s, last_run=now - timedelta(seconds=601)).action == "run"


def test_decide_order_quiet_then_cap_then_busy() -> None:
    """Quiet hours win over the cap, the cap over a busy line."""
    s = ScheduleSettings(quiet_hours=((22 * 60, 7 * 60),), tz=UTC)
    night = utc("2025-01-01T23:30")
    assert decide(night, s, cap_fraction=0.99, recent_rate_bps=1e9).kind == "quiet"
    day = utc("2025-01-01T12:00")
    assert decide(day, s, cap_fraction=0.99, recent_rate_bps=1e9).kind == "cap"


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        ("21:59", False),
        ("22:00", True),
        ("23:59", True),
        ("00:00", True),
        ("06:59", True),
        ("07:00", False),
        ("12:00", False),
    ],
)
def test_quiet_window_wraps_midnight(local: str, inside: bool) -> None:
    """22:00-07:00 covers the night, start inclusive and end exclusive, in the given zone."""
    hour, minute = (int(x) for x in local.split(":"))
    now = datetime(2025, 1, 15, hour, minute, tzinfo=BERLIN).astimezone(UTC)
    assert (quiet_window_at(now, [(22 * 60, 7 * 60)], BERLIN) is not None) is inside


def test_quiet_end_and_daytime_window() -> None:
    """quiet_end jumps to the window's end (local time); outside it returns the moment itself."""
    windows = [(12 * 60, 13 * 60 + 30)]
    noon = datetime(2025, 7, 1, 12, 10, 5, tzinfo=BERLIN)
    end = quiet_end(noon.astimezone(UTC), windows, BERLIN)
    assert end.astimezone(BERLIN) == datetime(2025, 7, 1, 13, 30, tzinfo=BERLIN)
    outside = utc("2025-07-01T05:00")
    assert quiet_end(outside, windows, BERLIN) == outside


def test_quiet_end_across_dst() -> None:
    """A night window spanning the spring DST change ends at 07:00 local, not an hour off."""
    windows = [(22 * 60, 7 * 60)]
    before = datetime(2025, 3, 29, 23, 0, tzinfo=BERLIN)  # DST starts 2025-03-30 02:00
    end = quiet_end(before.astimezone(UTC), windows, BERLIN).astimezone(BERLIN)
    assert quiet_window_at(end, windows, BERLIN) is None
    assert (end.hour, end.minute) in ((7, 0), (8, 0))


@given(unit=st.floats(0, 1, exclude_max=True))
def test_next_run_jitter_bounds(unit: float) -> None:
    """Gaps stay within interval +/- jitter; the first probe within start delay + jitter."""
    s = ScheduleSettings(interval_s=3600, jitter_s=300, start_delay_s=60)
    now = utc("2025-01-01T12:00")
    gap = (next_run_at(now, s, unit) - now).total_seconds()
    assert 3300 <= gap <= 3900
    first = (next_run_at(now, s, unit, first=True) - now).total_seconds()
    assert 60 <= first <= 360


def test_next_run_moves_past_quiet_hours() -> None:
    """A slot landing in quiet hours moves to the window's end plus up to one jitter."""
    s = ScheduleSettings(interval_s=3600, jitter_s=300, quiet_hours=((13 * 60, 15 * 60),), tz=UTC)
    rng = random.Random(7)
    for _ in range(50):
        at = next_run_at(utc("2025-01-01T12:30"), s, rng.random())
        assert quiet_window_at(at, s.quiet_hours, UTC) is None
        assert utc("2025-01-01T13:25") <= at <= utc("2025-01-01T15:05")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_s": 0},
        {"interval_s": 100, "jitter_s": 100},
        {"jitter_s": -1},
        {"quiet_hours": ((1500, 10),)},
    ],
)
def test_schedule_validation(kwargs: dict[str, object]) -> None:
    """Nonsense schedules are refused."""
    with pytest.raises(ValueError, match="probe schedule"):
        ScheduleSettings(**kwargs)  # type: ignore[arg-type]


def test_streams_for_uses_one_stream_on_a_lan_path_only() -> None:
    """A sub-3 ms round trip gets one stream; an internet path or a hand-set count keeps the preset."""
    from capbot.core.probe import ProbeSettings, streams_for

    economy = ProbeSettings.for_mode("economy")
    assert streams_for(economy, 0.3) == 1
    assert streams_for(economy, 25.0) == economy.streams
    assert streams_for(economy, None) == economy.streams
    assert streams_for(ProbeSettings.for_mode("economy", streams=4), 0.3) == 4
