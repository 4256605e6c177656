"""Counter deltas: turn raw interface byte counters into bytes counted exactly once, no phantoms.

The sampler reads raw counters (psutil ``net_io_counters(pernic=True, nowrap=False)``) and feeds
each reading, with the baseline it remembered, through `counter_step`. The rules, in order:

``limit`` (plausibility) = ``max_rate_bps / 8 * max(elapsed_s, 1.0) * 1.02`` bytes: vnStat's rule.
The ``max(..., 1)`` keeps timer jitter on short intervals from discarding real traffic.

1. ``prev is None`` (first sight, nothing stored): count 0, baseline = cur.
2. ``cur >= prev``: delta = cur - prev. If delta > limit the jump cannot be traffic (event
   ``"spike"``): count 0 and resync, baseline = cur. Otherwise count delta.
3. ``cur == 0 < prev`` (event ``"glitch"``): psutil and some drivers report transient zero rows.
   Count 0 and keep baseline = prev. A real reset shows up on the next non-zero reading as
   ``cur < prev`` and is handled there, so nothing is lost by waiting.
4. ``0 < cur < prev``: a 32-bit wrap or a reset.
   - ``"wrap"`` only where the numbers say so: prev and cur both < 2**32, prev in the top quarter
     of the 32-bit range (prev >= 3 * 2**30), and w = 2**32 - prev + cur <= limit: count w.
     Without the top-quarter rule a 64-bit counter reset from 1000 to 500 on a 10 Gbit/s line
     over 5 s would be a "plausible" wrap and add a phantom 4 GiB.
   - otherwise ``"reset"``: count cur when cur <= limit (the counter restarted from 0), else
     count 0; baseline = cur.

``elapsed_s`` is the time since the reading ``prev`` came from. A zero reading proves nothing
(``CounterStep.held``): the baseline stays, and so must the time it was read, or traffic spanning
the zero row would be judged against too short an interval. Hence ``0 -> 0`` is held as well:
after a reboot (prev 0, elapsed = uptime) a zero first row must not shrink the next window.

What no arithmetic can recover: traffic between the last reading and a reset (the counter that
carried it is gone), growth after a reset that reaches the old value (it looks like ordinary
traffic, so only cur - prev counts), more than one 32-bit wrap per step, and a 32-bit wrap from
below the top quarter (taken for a reset: only cur counts). All of these under-count. The single
over-count is inherent: a reset from the 32-bit top quarter that looks exactly like a plausible
wrap; it adds at most 2**32 - prev <= 1 GiB, and never more than limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MAX32 = 2**32
_TOP_QUARTER_32 = 3 * 2**30  # a wrap must start here: see rule 4 in the module docstring
_RATE_MARGIN = 1.02  # vnStat's allowance for counters read slightly late

CounterEvent = Literal["wrap", "reset", "spike", "glitch"]


@dataclass(frozen=True)
class CounterStep:
    """Outcome of one raw reading: bytes to add, the raw value to remember, and what happened."""

    counted_bytes: int  # >= 0, bytes to add to usage
    baseline: int  # raw value to remember as the new previous value
    event: CounterEvent | None  # None | "wrap" | "reset" | "spike" | "glitch"
    held: bool = False  # cur was 0: keep the baseline *and the time it was read*


@dataclass(frozen=True)
class Counters:
    """Raw byte counters of one interface, as the kernel reports them."""

    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class InterfaceStep:
    """Outcome of one reading of an interface: counted bytes per direction and the new baseline."""

    rx_bytes: int  # counted
    tx_bytes: int
    baseline: Counters
    events: tuple[str, ...]  # e.g. ("rx:spike",)
    held: bool = False  # both directions held: keep the baseline's timestamp too


def plausible_limit_bytes(elapsed_s: float, max_rate_bps: float) -> float:
    """Most bytes a `max_rate_bps` line can plausibly move in `elapsed_s` (vnStat's rule)."""
    if not math.isfinite(elapsed_s):
        raise ValueError(f"elapsed_s must be finite, got {elapsed_s!r}")
    if not (math.isfinite(max_rate_bps) and max_rate_bps > 0):
        raise ValueError(f"max_rate_bps must be positive and finite, got {max_rate_bps!r}")
    return max_rate_bps / 8 * max(elapsed_s, 1.0) * _RATE_MARGIN


def counter_step(prev: int | None, cur: int, elapsed_s: float, max_rate_bps: float) -> CounterStep:
    """Count the bytes between baseline `prev` and reading `cur` taken `elapsed_s` after it.

    Applies the rules in the module docstring; raises ValueError for negative counters or a
    non-finite time or rate (programming errors, not network conditions).
    """
    limit = plausible_limit_bytes(elapsed_s, max_rate_bps)
    if cur < 0 or (prev is not None and prev < 0):
        raise ValueError(f"counters cannot be negative (prev={prev!r}, cur={cur!r})")
    if prev is None:
        return CounterStep(counted_bytes=0, baseline=cur, event=None)
    if cur >= prev:
        delta = cur - prev
        if delta > limit:
            return CounterStep(counted_bytes=0, baseline=cur, event="spike")
        return CounterStep(counted_bytes=delta, baseline=cur, event=None, held=cur == 0)
    if cur == 0:
        return CounterStep(counted_bytes=0, baseline=prev, event="glitch", held=True)
    # 0 < cur < prev from here on.
    if prev < MAX32 and cur < MAX32 and prev >= _TOP_QUARTER_32:
        wrapped = MAX32 - prev + cur
        if wrapped <= limit:
            return CounterStep(counted_bytes=wrapped, baseline=cur, event="wrap")
    # Since the reset the counter grew from 0 to cur; if even that is implausible, trust nothing.
    counted = cur if cur <= limit else 0
    return CounterStep(counted_bytes=counted, baseline=cur, event="reset")


def interface_step(
    prev: Counters | None, cur: Counters, elapsed_s: float, max_rate_bps: float
) -> InterfaceStep:
    """Apply `counter_step` to both directions of one interface; events are prefixed `rx:`/`tx:`.

    `held` is true only when both directions held. A row with one direction at zero advances the
    baseline time: the held direction is then judged against a shorter interval next time, which
    can drop bytes (a spike) but never invent them.
    """
    rx = counter_step(
        None if prev is None else prev.rx_bytes, cur.rx_bytes, elapsed_s, max_rate_bps
    )
    tx = counter_step(
        None if prev is None else prev.tx_bytes, cur.tx_bytes, elapsed_s, max_rate_bps
    )
    events = tuple(
        f"{direction}:{step.event}" for direction, step in (("rx", rx), ("tx", tx)) if step.event
    )
    return InterfaceStep(
        rx_bytes=rx.counted_bytes,
        tx_bytes=tx.counted_bytes,
        baseline=Counters(rx_bytes=rx.baseline, tx_bytes=tx.baseline),
        events=events,
        held=rx.held and tx.held,
    )
