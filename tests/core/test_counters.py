"""Tests for capbot.core.counters: every byte counted once, no phantom traffic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from capbot.core.counters import (
    MAX32,
    Counters,
    CounterStep,
    InterfaceStep,
    counter_step,
    interface_step,
    plausible_limit_bytes,
)

TOP_QUARTER_32 = 3 * 2**30
GIB = 2**30
MBIT = 1e6
GBIT = 1e9
TEN_GBIT = 10e9
# Above any plausible limit in the generated histories (10 Gbit/s for 40 x 2 h is ~2**48.4 bytes).
GARBAGE_FLOOR = 2**49


# --- table-driven rules ------------------------------------------------------------------------

RULE_CASES = [
    # (id, prev, cur, elapsed_s, max_rate_bps, expected)
    ("first sight", None, 12_345, 5.0, GBIT, CounterStep(0, 12_345, None)),
    ("first sight at zero", None, 0, 5.0, GBIT, CounterStep(0, 0, None)),
    ("steady growth", 1_000, 5_000, 5.0, GBIT, CounterStep(4_000, 5_000, None)),
    ("no traffic", 1_000, 1_000, 5.0, GBIT, CounterStep(0, 1_000, None)),
    ("idle counter at zero is held", 0, 0, 5.0, GBIT, CounterStep(0, 0, None, held=True)),
    # 8 Mbit/s over 1 s: limit = 1_000_000 * 1.02 = 1_020_000 bytes exactly.
    ("delta at the limit", 10, 1_020_010, 1.0, 8 * MBIT, CounterStep(1_020_000, 1_020_010, None)),
    ("delta past the limit", 10, 1_020_011, 1.0, 8 * MBIT, CounterStep(0, 1_020_011, "spike")),
    ("sub-second interval judged as 1 s", 10, 1_020_010, 0.2, 8 * MBIT,
     CounterStep(1_020_000, 1_020_010, None)),
    ("spike resyncs", 1_000, 10**12, 5.0, GBIT, CounterStep(0, 10**12, "spike")),
    ("transient zero row", 5 * 10**9, 0, 5.0, GBIT,
     CounterStep(0, 5 * 10**9, "glitch", held=True)),
    ("32-bit wrap near the top", MAX32 - 1_000, 500, 5.0, GBIT, CounterStep(1_500, 500, "wrap")),
    ("wrap from the top-quarter edge", TOP_QUARTER_32, 10, 5.0, TEN_GBIT,
     CounterStep(GIB + 10, 10, "wrap")),
    ("just below the top quarter is a reset", TOP_QUARTER_32 - 1, 10, 5.0, TEN_GBIT,
     CounterStep(10, 10, "reset")),
    ("64-bit reset from small values adds no 4 GiB", 1_000, 500, 5.0, TEN_GBIT,
     CounterStep(500, 500, "reset")),
    ("64-bit reset from mid range adds no 4 GiB", 2**31, 500, 5.0, TEN_GBIT,
     CounterStep(500, 500, "reset")),
    ("reset of a counter above 32 bits", MAX32 + 5, 100, 5.0, TEN_GBIT,
     CounterStep(100, 100, "reset")),
    ("wrap too large for the line is a reset", TOP_QUARTER_32, 10, 5.0, MBIT,
     CounterStep(10, 10, "reset")),
    ("reset to an implausible value counts nothing", 10**12, 10**11, 5.0, GBIT,
     CounterStep(0, 10**11, "reset")),
    ("reboot: everything since boot counts", 0, 2 * 10**9, 120.0, GBIT,
     CounterStep(2 * 10**9, 2 * 10**9, None)),
    ("restart within a boot: downtime traffic counts", 10**9, 4 * 10**9, 600.0, 100 * MBIT,
     CounterStep(3 * 10**9, 4 * 10**9, None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed_s", "max_rate_bps", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in RULE_CASES],
)
def test_counter_step_rules(
    prev: int | None, cur: int, elapsed_s: float, max_rate_bps: float, expected: CounterStep
) -> None:
    """Each documented rule yields exactly the specified count, baseline, event and hold."""
    assert counter_step(prev, cur, elapsed_s, max_rate_bps) == expected


def test_limit_follows_vnstat_rule() -> None:
    """The plausibility limit is rate/8 x max(elapsed, 1 s) x 1.02 bytes."""
    assert plausible_limit_bytes(5.0, 8 * MBIT) == pytest.approx(5_100_000)
    assert plausible_limit_bytes(0.1, 8 * MBIT) == plausible_limit_bytes(1.0, 8 * MBIT)
    assert plausible_limit_bytes(-3.0, 8 * MBIT) == plausible_limit_bytes(1.0, 8 * MBIT)


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed_s", "max_rate_bps"),
    [
        pytest.param(None, -1, 5.0, GBIT, id="negative cur"),
        pytest.param(-1, 5, 5.0, GBIT, id="negative prev"),
        pytest.param(1, 5, math.nan, GBIT, id="nan elapsed"),
        pytest.param(1, 5, math.inf, GBIT, id="infinite elapsed"),
        pytest.param(1, 5, 5.0, 0.0, id="zero rate"),
        pytest.param(1, 5, 5.0, math.nan, id="nan rate"),
    ],
)
def test_invalid_arguments_raise(
    prev: int | None, cur: int, elapsed_s: float, max_rate_bps: float
) -> None:
    """Negative counters and non-finite times or rates are rejected as programming errors."""
    with pytest.raises(ValueError):
        counter_step(prev, cur, elapsed_s, max_rate_bps)


# --- sequences a sampler really sees ---------------------------------------------------------


def feed(readings: list[tuple[float, int]], max_rate_bps: float) -> list[CounterStep]:
    """Run (time, raw) readings through counter_step as the sampler does, holding time on holds."""
    first_at, first_raw = readings[0]
    step = counter_step(None, first_raw, 0.0, max_rate_bps)
    baseline, baseline_at = step.baseline, first_at
    steps = [step]
    for at_s, raw in readings[1:]:
        step = counter_step(baseline, raw, at_s - baseline_at, max_rate_bps)
        steps.append(step)
        baseline = step.baseline
        if not step.held:
            baseline_at = at_s
    return steps


def test_spike_after_transient_zero_row_is_not_counted() -> None:
    """A zero row followed by an implausible jump counts nothing and resyncs to the new value."""
    steps = feed([(0.0, 10**10), (5.0, 0), (10.0, 10**13)], GBIT)
    assert [s.event for s in steps] == [None, "glitch", "spike"]
    assert sum(s.counted_bytes for s in steps) == 0
    assert steps[-1].baseline == 10**13


def test_glitch_row_then_return_counts_exactly_the_traffic() -> None:
    """After a transient zero row the counter's return counts exactly the bytes moved meanwhile."""
    steps = feed([(0.0, 7 * 10**9), (5.0, 0), (10.0, 7 * 10**9 + 123_456)], GBIT)
    assert [s.event for s in steps] == [None, "glitch", None]
    assert sum(s.counted_bytes for s in steps) == 123_456


def test_full_rate_traffic_across_a_glitch_row_is_kept() -> None:
    """Holding the baseline time lets two intervals of full-rate traffic around a zero row count."""
    full_interval_bytes = int(GBIT / 8 * 5.0)
    steps = feed([(0.0, 10**9), (5.0, 0), (10.0, 10**9 + 2 * full_interval_bytes)], GBIT)
    assert sum(s.counted_bytes for s in steps) == 2 * full_interval_bytes


def test_glitch_then_real_reset_counts_the_new_value() -> None:
    """A zero row that was a real reset is settled by the next reading, counting its value."""
    steps = feed([(0.0, 10**12), (5.0, 0), (10.0, 0), (15.0, 4_096)], GBIT)
    assert [s.event for s in steps] == [None, "glitch", "glitch", "reset"]
    assert sum(s.counted_bytes for s in steps) == 4_096


def test_pppoe_reconnect_from_small_counters_never_adds_4_gib() -> None:
    """A reconnect resetting a barely used 64-bit counter counts only what the new session moved."""
    steps = feed([(0.0, 2_000_000), (5.0, 3_000_000), (10.0, 40_000)], TEN_GBIT)
    assert steps[-1].event == "reset"
    assert sum(s.counted_bytes for s in steps) == 1_000_000 + 40_000


def test_real_32_bit_wrap_counted_exactly_over_several_readings() -> None:
    """A 32-bit counter crossing 2**32 keeps counting exactly across the wrap."""
    start = MAX32 - 300_000_000
    raws = [(start + n * 200_000_000) % MAX32 for n in range(4)]
    steps = feed([(5.0 * n, raw) for n, raw in enumerate(raws)], GBIT)
    assert [s.event for s in steps] == [None, None, "wrap", None]
    assert sum(s.counted_bytes for s in steps) == 3 * 200_000_000


# --- interface_step ------------------------------------------------------------------------------


def test_interface_first_sight_counts_nothing() -> None:
    """The first reading of an interface only sets its baseline."""
    assert interface_step(None, Counters(10, 20), 5.0, GBIT) == InterfaceStep(
        0, 0, Counters(10, 20), ()
    )


def test_interface_step_prefixes_events_per_direction() -> None:
    """Each direction is judged on its own and its event is named rx: or tx:."""
    step = interface_step(Counters(1_000, MAX32 - 100), Counters(10**13, 50), 5.0, GBIT)
    assert step == InterfaceStep(0, 150, Counters(10**13, 50), ("rx:spike", "tx:wrap"))


def test_interface_held_only_when_both_directions_hold() -> None:
    """A whole zero row holds the interface; a row zero in one direction advances it."""
    prev = Counters(5_000, 7_000)
    whole = interface_step(prev, Counters(0, 0), 5.0, GBIT)
    assert whole == InterfaceStep(0, 0, prev, ("rx:glitch", "tx:glitch"), held=True)
    mixed = interface_step(prev, Counters(0, 7_100), 5.0, GBIT)
    assert mixed == InterfaceStep(0, 100, Counters(5_000, 7_100), ("rx:glitch",), held=False)


@settings(max_examples=100, deadline=None)
@given(
    prev=st.none() | st.builds(Counters, st.integers(0, 2**40), st.integers(0, 2**40)),
    cur=st.builds(Counters, st.integers(0, 2**40), st.integers(0, 2**40)),
    elapsed_s=st.floats(0.0, 3600.0),
)
def test_interface_step_agrees_with_counter_step(
    prev: Counters | None, cur: Counters, elapsed_s: float
) -> None:
    """interface_step is counter_step applied to rx and tx separately."""
    step = interface_step(prev, cur, elapsed_s, GBIT)
    rx = counter_step(prev and prev.rx_bytes, cur.rx_bytes, elapsed_s, GBIT)
    tx = counter_step(prev and prev.tx_bytes, cur.tx_bytes, elapsed_s, GBIT)
    assert (step.rx_bytes, step.tx_bytes) == (rx.counted_bytes, tx.counted_bytes)
    assert step.baseline == Counters(rx.baseline, tx.baseline)
    assert step.held == (rx.held and tx.held)


# --- property tests: simulated true traffic -> raw readings -> counted bytes ---------------------
#
# A history is a true traffic amount per interval (never above the line's rate) plus events:
# resets to 0, 32-bit wraps (the raw value of a 32-bit interface is the true counter mod 2**32),
# transient zero rows and sampling gaps. The sampler's baseline is the last non-zero reading
# (zero readings hold), so bytes are settled in *spans* between consecutive non-zero readings.
# A span's true bytes S are recoverable ("exact") precisely when:
#   - no reset in the span and either a 64-bit counter, or a 32-bit counter that did not wrap,
#     or wrapped once (S < 2**32) from a baseline in the top quarter (>= 3 * 2**30); or
#   - a reset in the span, no byte moved in the span before the last reset (bytes between a reading
#     and a reset are gone with the old counter), the counter grew less than 2**32 since, and either
#     the baseline was 0 or the new reading is below it (otherwise only cur - prev is visible).
# "Ambiguous" is a reset that looks exactly like a plausible wrap (baseline in the 32-bit top
# quarter): counted as a wrap, it may over-count by at most 2**32 - baseline <= 1 GiB.
# "Garbage": a 64-bit counter jumping by far more than any traffic (a driver bug, another device's
# row); it carries no traffic, so the span is lossy. Everything "lossy" may under-count, never over.


@dataclass(frozen=True)
class Interval:
    """One sampling interval of a generated history."""

    elapsed_s: float
    load: float  # fraction of the line's capacity used
    reset: bool
    pre_reset_share: float  # share of the interval's bytes moved before the reset (lossy only)
    glitch: bool  # the reading ending this interval is a transient zero row
    jump: int = 0  # lossy, 64-bit only: 0 none, 1 garbage jump up, 2 garbage jump down
    jump_seed: int = 0  # picks the garbage value


@dataclass(frozen=True)
class History:
    """An interface, its line rate, its counter's start value and the intervals that follow."""

    width: int  # 32 or 64 bit counter
    max_rate_bps: float
    start: int
    intervals: tuple[Interval, ...]


@dataclass(frozen=True)
class Reading:
    """One raw reading, with ground truth about the span it closes when it is non-zero."""

    at_s: float
    raw: int  # as reported; 0 on a zero row
    true_bytes: int  # bytes moved in the interval ending here
    baseline: int  # the last non-zero reading before this one (the sampler's prev)
    span_bytes: int  # bytes moved since that reading
    verdict: str | None  # "exact", "ambiguous" or "lossy" for a non-zero reading


@dataclass
class Span:
    """Ground truth since the last non-zero reading `baseline`, taken at `at_s`."""

    width: int
    baseline: int
    at_s: float
    bytes: int = 0
    reset: bool = False
    pre_reset_bytes: int = 0
    counter_since_reset: int = 0
    jumped: bool = False

    def add(self, n_bytes: int) -> None:
        self.bytes += n_bytes
        self.counter_since_reset += n_bytes

    def do_reset(self) -> None:
        self.reset = True
        self.pre_reset_bytes = self.bytes
        self.counter_since_reset = 0

    def can_reset_exactly(self) -> bool:
        """A reset now loses nothing and cannot pass for a wrap."""
        return self.bytes == 0 and not TOP_QUARTER_32 <= self.baseline < MAX32

    def max_exact_bytes(self) -> float:
        """The most bytes that can still move with the span staying exact."""
        if self.reset:
            if self.baseline == 0:
                return MAX32 - 1 - self.counter_since_reset if self.width == 32 else math.inf
            return self.baseline - 1 - self.counter_since_reset
        if self.width == 64:
            return math.inf
        if self.baseline >= TOP_QUARTER_32:
            return MAX32 - 1 - self.bytes
        return MAX32 - 1 - self.baseline - self.bytes

    def verdict(self, raw: int, limit: float) -> str:
        """Classify the span closed by non-zero reading `raw` (see the comment above)."""
        p = self.baseline
        if self.jumped:
            return "lossy"
        if self.reset:
            if TOP_QUARTER_32 <= p < MAX32 and 0 < raw < p and MAX32 - p + raw <= limit:
                return "ambiguous"
            if (
                self.pre_reset_bytes == 0
                and (self.width == 64 or self.counter_since_reset < MAX32)
                and (p == 0 or raw < p)
            ):
                return "exact"
            return "lossy"
        if self.width == 64:
            return "exact"
        wraps = (p + self.bytes) // MAX32
        if wraps == 0 or (wraps == 1 and self.bytes < MAX32 and p >= TOP_QUARTER_32):
            return "exact"
        return "lossy"


def simulate(history: History, recoverable: bool) -> list[Reading]:
    """Turn a history into raw readings; recoverable mode trims events and bytes to stay exact."""
    width, rate = history.width, history.max_rate_bps

    def raw_of(counter: int) -> int:
        return counter % MAX32 if width == 32 else counter

    counter = history.start
    now = 0.0
    first = raw_of(counter)
    readings = [Reading(now, first, 0, first, 0, None)]
    span = Span(width, first, now)
    for interval in history.intervals:
        now += interval.elapsed_s
        # Floors keep every span within rate x elapsed, under counter_step's limit.
        moved = int(interval.load * int(rate / 8 * interval.elapsed_s))
        true_bytes = moved
        # Garbage only in reset-free spans: a garbage value landing near the old baseline after a
        # reset would be indistinguishable from traffic, which no counter logic can catch.
        if interval.jump and width == 64 and not span.reset:
            if interval.jump == 1:
                counter += GARBAGE_FLOOR * 2 + interval.jump_seed
                span.jumped = True
            elif counter > GARBAGE_FLOOR:
                counter = GARBAGE_FLOOR + interval.jump_seed % (counter - GARBAGE_FLOOR)
                span.jumped = True
        if interval.reset and not span.jumped and (not recoverable or span.can_reset_exactly()):
            before = 0 if recoverable else int(moved * interval.pre_reset_share)
            span.add(before)
            moved -= before
            span.do_reset()
            counter = 0
        if recoverable:
            bound = span.max_exact_bytes()
            assert bound >= 0
            moved = int(min(moved, bound))
            true_bytes = moved
        span.add(moved)
        counter += moved
        raw = 0 if interval.glitch else raw_of(counter)
        if raw == 0:
            readings.append(Reading(now, 0, true_bytes, span.baseline, span.bytes, None))
            continue
        verdict = span.verdict(raw, plausible_limit_bytes(now - span.at_s, rate))
        readings.append(Reading(now, raw, true_bytes, span.baseline, span.bytes, verdict))
        span = Span(width, raw, now)
    return readings


def run_sampler(readings: list[Reading], max_rate_bps: float) -> list[tuple[CounterStep, float]]:
    """Feed readings through counter_step like the sampler: prev = baseline, time held on holds."""
    step = counter_step(None, readings[0].raw, 0.0, max_rate_bps)
    baseline, baseline_at = step.baseline, readings[0].at_s
    out = []
    for reading in readings[1:]:
        assert baseline == reading.baseline  # the simulation's spans match the sampler's
        elapsed_s = reading.at_s - baseline_at
        step = counter_step(baseline, reading.raw, elapsed_s, max_rate_bps)
        out.append((step, elapsed_s))
        baseline = step.baseline
        if not step.held:
            baseline_at = reading.at_s
    return out


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    return st.integers(0, one_in - 1).map(lambda n: n == one_in - 1)  # shrinks to False


ELAPSED_S = st.one_of(
    st.sampled_from([5.0, 5.0, 5.0, 4.98, 5.03, 0.4, 60.0, 300.0, 3600.0]),
    st.floats(0.01, 7200.0),
)
LOAD = st.one_of(st.sampled_from([0.0, 1e-6, 0.3, 1.0, 1.0]), st.floats(0.0, 1.0))


@st.composite
def histories(draw: st.DrawFn, recoverable: bool) -> History:
    width = draw(st.sampled_from([32, 64]))
    rate = draw(st.sampled_from([MBIT, 100 * MBIT, GBIT, TEN_GBIT]))
    if width == 32:
        start = draw(
            st.one_of(st.just(0), st.integers(0, MAX32 - 1), st.integers(MAX32 - GIB, MAX32 - 1))
        )
    else:
        start = draw(
            st.one_of(
                st.just(0),
                st.integers(0, 2**50),
                st.integers(2 * GIB, MAX32 + GIB),
                st.integers(GARBAGE_FLOOR, 2**56),  # room for garbage jumps down
            )
        )
    interval = st.builds(
        Interval,
        elapsed_s=ELAPSED_S,
        load=LOAD,
        reset=rarely(8 if recoverable else 4),
        pre_reset_share=st.just(0.0) if recoverable else st.floats(0.0, 1.0),
        glitch=rarely(8),
        jump=st.just(0) if recoverable else st.sampled_from([0] * 10 + [1, 2]),
        jump_seed=st.integers(0, 2**52),
    )
    intervals = draw(st.lists(interval, min_size=1, max_size=40))
    return History(width, rate, start, tuple(intervals))


@settings(max_examples=300, deadline=None)
@given(histories(recoverable=True))
def test_recoverable_histories_count_every_byte_exactly(history: History) -> None:
    """With only recoverable events, counted bytes equal the true bytes up to the baseline."""
    readings = simulate(history, recoverable=True)
    counted_bytes = true_bytes = settled_true_bytes = 0
    for reading, (step, elapsed_s) in zip(
        readings[1:], run_sampler(readings, history.max_rate_bps), strict=True
    ):
        event(f"width={history.width} event={step.event}")
        assert 0 <= step.counted_bytes <= plausible_limit_bytes(elapsed_s, history.max_rate_bps)
        assert step.event != "spike"
        assert step.held == (reading.raw == 0)
        assert reading.verdict in (None, "exact")
        counted_bytes += step.counted_bytes
        true_bytes += reading.true_bytes
        if not step.held:
            settled_true_bytes = true_bytes
        # Bytes behind a held (zero) reading are pending, not lost: they settle on the next one.
        assert counted_bytes == settled_true_bytes


@settings(max_examples=300, deadline=None)
@given(histories(recoverable=False))
def test_lossy_histories_never_overcount(history: History) -> None:
    """Under arbitrary resets, wraps, zero rows and gaps no span over-counts; exact ones stay so."""
    readings = simulate(history, recoverable=False)
    counted_bytes = true_bytes = phantom_allowance_bytes = 0
    for reading, (step, elapsed_s) in zip(
        readings[1:], run_sampler(readings, history.max_rate_bps), strict=True
    ):
        event(f"verdict={reading.verdict}")
        assert 0 <= step.counted_bytes <= plausible_limit_bytes(elapsed_s, history.max_rate_bps)
        if step.held:
            assert step.counted_bytes == 0
        elif reading.verdict == "exact":
            assert step.counted_bytes == reading.span_bytes
        elif reading.verdict == "ambiguous":
            # A reset indistinguishable from a wrap: the only over-count, bounded by 1 GiB.
            allowance = MAX32 - reading.baseline
            assert allowance <= GIB
            assert step.counted_bytes <= reading.span_bytes + allowance
            phantom_allowance_bytes += allowance
        else:
            assert step.counted_bytes <= reading.span_bytes
        counted_bytes += step.counted_bytes
        true_bytes += reading.true_bytes
        assert counted_bytes <= true_bytes + phantom_allowance_bytes
