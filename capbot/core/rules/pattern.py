"""Congestion or throttling? Classify when slow probes happen over the local hours of the day."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from capbot.core.rules.text import hour_ranges

PatternKind = Literal["unknown", "none", "congestion", "persistent", "mixed"]

# Tuned for hourly probes: a week gives every hour about 7 samples.
PERSISTENT_COVERAGE = 0.75  # slow at >= 75% of the sampled hours: around the clock
CONGESTION_COVERAGE = 0.5  # slow at <= 50% of the sampled hours ...
RECURRING_RATE = 0.3  # ... and those hours slow in >= 30% of their probes, at least twice
EPISODE_SLOW_SHARE = 0.8  # an episode slow in >= 80% of its probes across many hours: persistent
MIN_SLOW_PROBES = 3


@dataclass(frozen=True)
class Pattern:
    """Where slow probes fall over the day, and what that suggests."""

    kind: PatternKind
    slow_hours: tuple[int, ...] = ()
    sampled_hours: int = 0

    def describe(self) -> str:
        """One sentence for alerts and summaries."""
        if self.kind == "persistent":
            return (
                f"slow around the clock ({len(self.slow_hours)} of {self.sampled_hours} sampled "
                "hours of the day): looks like throttling, not congestion"
            )
        if self.kind == "congestion":
            return (
                f"slow probes cluster at {hour_ranges(self.slow_hours)} local and the line is fine "
                "at other hours: looks like peak-hour congestion, not throttling"
            )
        if self.kind == "mixed":
            return "slow probes at scattered hours: no clear congestion or throttling pattern yet"
        if self.kind == "none":
            return "no slow probes"
        return "too few probes across the day yet to tell congestion from throttling"


def hour_counts(samples: Iterable[tuple[int, bool]]) -> list[list[int]]:
    """24 [probes, slow probes] pairs from (local hour, slow) samples."""
    counts = [[0, 0] for _ in range(24)]
    for hour, slow in samples:
        counts[hour % 24][0] += 1
        counts[hour % 24][1] += int(slow)
    return counts


def classify_hours(counts: Sequence[Sequence[int]], min_hours: int = 8) -> Pattern:
    """Classify 24 [probes, slow] pairs: persistent (around the clock), congestion (clustered)."""
    sampled = [h for h in range(24) if counts[h][0] > 0]
    if len(sampled) < min_hours:
        return Pattern("unknown", sampled_hours=len(sampled))
    if sum(counts[h][1] for h in sampled) < MIN_SLOW_PROBES:
        return Pattern("none", sampled_hours=len(sampled))
    with_slow = [h for h in sampled if counts[h][1] > 0]
    coverage = len(with_slow) / len(sampled)
    if coverage >= PERSISTENT_COVERAGE:
        return Pattern("persistent", tuple(with_slow), len(sampled))
    recurring = tuple(
        h for h in sampled if counts[h][1] >= 2 and counts[h][1] / counts[h][0] >= RECURRING_RATE
    )
    if recurring and coverage <= CONGESTION_COVERAGE:
        return Pattern("congestion", recurring, len(sampled))
    return Pattern("mixed", tuple(with_slow), len(sampled))


def classify_episode(
    episode: Sequence[tuple[int, bool]], window: Sequence[tuple[int, bool]], min_hours: int = 8
) -> Pattern:
    """Classify an episode: slow across many hours since it began is persistent by itself;
    otherwise the recent window (days of probes) decides whether the slow hours recur.
    """
    hours = {h for h, _ in episode}
    slow = sum(1 for _, s in episode if s)
    if len(hours) >= min_hours and episode and slow / len(episode) >= EPISODE_SLOW_SHARE:
        return Pattern("persistent", tuple(sorted({h for h, s in episode if s})), len(hours))
    return classify_hours(hour_counts(window), min_hours)
