"""Rule and delivery settings: frozen dataclasses with the defaults capbot ships with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from typing import Literal

Basis = Literal["plan", "baseline", "either", "both"]
BASES: tuple[Basis, ...] = ("plan", "baseline", "either", "both")


def _check_m_of_n(m: int, n: int, recover_after: int, what: str) -> None:
    if not 1 <= m <= n:
        raise ValueError(f"{what}: m must be between 1 and n ({m} of {n})")
    if recover_after < 1:
        raise ValueError(f"{what}: recover_after must be at least 1")


@dataclass(frozen=True)
class PlanSpeeds:
    """Advertised plan speeds in bit/s; None when the user did not give them."""

    download_bps: float | None = None
    upload_bps: float | None = None


@dataclass(frozen=True)
class CapRuleSettings:
    """Data-cap rules: thresholds, the projection early warning and the daily budget."""

    thresholds_percent: tuple[float, ...] = (50, 80, 90, 100)
    projection_warning: bool = True
    # The projection is only trusted once this much of the cycle has passed and this much of the
    # cap is used: day-1 extrapolations are the classic absurd figure (vnstat#87, #113).
    projection_min_elapsed_s: float = 2 * 86400
    projection_min_used_percent: float = 10.0
    # One warning per cycle, plus a re-warning when the reach date moves at least this much earlier.
    projection_rewarn_days: int = 3
    daily_budget: bool = True

    def __post_init__(self) -> None:
        if any(p <= 0 for p in self.thresholds_percent):
            raise ValueError("cap thresholds must be positive percentages")


@dataclass(frozen=True)
class ThrottleSettings:
    """When a probe counts as slow, and how many slow probes make a throttle episode."""

    enabled: bool = True
    plan_percent: float = 50.0  # slow below this % of the advertised plan speed
    baseline_percent: float = 60.0  # slow below this % of the line's own baseline
    basis: Basis = "either"
    m: int = 3  # alert when m of the last n probes are slow
    n: int = 5
    recover_after: int = 3  # healthy probes in a row that end an episode
    baseline_window: int = 10  # rolling median of the last K healthy probes
    baseline_min_samples: int = 3
    pattern_window_s: float = 7 * 86400  # history used to tell congestion from throttling
    pattern_min_hours: int = 8  # distinct local hours sampled before a pattern is claimed

    def __post_init__(self) -> None:
        _check_m_of_n(self.m, self.n, self.recover_after, "throttle")
        if self.basis not in BASES:
            raise ValueError(f"throttle basis {self.basis!r} is not one of {', '.join(BASES)}")


@dataclass(frozen=True)
class BufferbloatSettings:
    """Latency under load versus idle latency, debounced like throttling."""

    enabled: bool = True
    threshold_ms: float = 100.0
    m: int = 3
    n: int = 5
    recover_after: int = 3

    def __post_init__(self) -> None:
        _check_m_of_n(self.m, self.n, self.recover_after, "bufferbloat")


@dataclass(frozen=True)
class OutageSettings:
    """Consecutive connection failures that open an outage, and the cheap check between probes."""

    enabled: bool = True
    failures_to_open: int = 3
    check_interval_s: float = 60.0
    # An IP literal: a DNS failure alone should not look like a dead line, and no lookup is spent.
    check_url: str = "https://1.1.1.1/"
    check_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("outage failures_to_open must be at least 1")


@dataclass(frozen=True)
class DeliverySettings:
    """Outbox delivery: retries, dead letters, quiet hours and repeat spacing."""

    max_attempts: int = 12  # with the backoff below: about 8 h of trying before "dead"
    backoff_base_s: float = 30.0
    backoff_cap_s: float = 7200.0
    quiet_hours: tuple[time, time] | None = None  # local (start, end); may wrap midnight
    min_repeat_s: float = 3600.0
    # Episode-like rules whose alerts to one target are spaced by min_repeat_s (held, not dropped).
    repeat_rules: tuple[str, ...] = ("throttle", "bufferbloat", "outage")
    late_after_s: float = 300.0  # later than this, a message says when it was raised
    max_batch: int = 10  # alerts due together for one target go as one message
    send_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("delivery max_attempts must be at least 1")
        if self.backoff_base_s <= 0 or self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("delivery backoff needs 0 < base <= cap")


@dataclass(frozen=True)
class RuleSettings:
    """Everything the rules and the delivery loop need, in one object."""

    plan: PlanSpeeds = field(default_factory=PlanSpeeds)
    cap: CapRuleSettings = field(default_factory=CapRuleSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    bufferbloat: BufferbloatSettings = field(default_factory=BufferbloatSettings)
    outage: OutageSettings = field(default_factory=OutageSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
