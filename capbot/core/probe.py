"""Pure speed-probe logic: servers, presets, stable stop, byte budgets, latency and scheduling.

Stable stop (`StableEstimator`). A transfer is sampled in windows of ``window_s`` (each window is
``(duration_s, bytes)`` as actually measured). Windows that start before ``ramp_s`` are never
used: that is the TCP slow-start ramp (and, for uploads, the socket buffers filling). A direction
is *stable* when the last ``stable_windows`` windows after the ramp satisfy both

- spread: ``(max - min) / mean <= tolerance`` of their rates (all within about +/- tolerance/2),
- no trend: the means of their first and second halves differ by at most ``tolerance / 2``,
  so a slow ramp of steady small steps is not taken for a plateau;

or the same holds for the last ``stable_windows`` windows of 2, 4, 8... merged raw windows
(noisy lines then stop once a longer view agrees, instead of running to ``max_seconds``).

The estimate is then the bytes over the time of exactly those windows. A direction that ends at
``max_seconds`` or ``max_bytes`` before it is stable reports the rate of the later half of its
post-ramp windows (all windows when there are fewer than two), and says which limit ended it.

Mode presets (benchmarks/bench_probe_bytes.py): ``economy`` (default) aims at the fewest bytes
for a +/-5 % answer: 0.2 s windows, 4 of them within 6 %, 0.3 s ramp; a steady 100 Mbit/s line
stops after about 1.2 s per direction, 28 MB per whole test under tc (within 2 % of curl).
``thorough``: 0.5 s windows, 6 within 4 %, 1 s ramp, 20 s and 1 GB per direction at most.
``max_seconds`` and ``max_bytes`` apply to each direction separately.

Streams: 4 (thorough 6), chosen on tbf-shaped loopback (1500-byte MTU): 1-6 streams were all
within 3.3 % of curl at 20/100/500 Mbit/s and cost the same at 100 Mbit/s (27-28 MB per test);
8 cost more (worst 37 MB); at 20 Mbit/s one stream was cheapest (7.5 MB against 11 MB for 4).
Round-trip time, which this kernel could not add (no netem), favours several: one TCP flow
cannot exceed its receive window per RTT (Linux's default 6 MiB tcp_rmem, about half of it usable
as window, caps one flow near 500 Mbit/s at 50 ms), and N flows leave slow start sooner and lose
only 1/N of the rate to a drop. 4 is the most streams that cost nothing measurable at 100 Mbit/s.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import Literal
from urllib.parse import urlsplit

ServerKind = Literal["cloudflare", "generic"]
DirectionEnd = Literal["stable", "max_seconds", "max_bytes"]
DecisionAction = Literal["run", "defer", "skip"]

DEFAULT_CLOUDFLARE_URL = "https://speed.cloudflare.com"
MODES = ("economy", "thorough")


# --- servers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSpec:
    """Where a probe goes: a Cloudflare-compatible base URL, or generic download/upload URLs.

    ``cloudflare``: ``base_url`` serves ``/__down?bytes=N``, ``/__up`` (POST) and ``/meta`` or
    ``/cdn-cgi/trace``. ``generic``: ``download_url`` is a large file (fetched with HTTP Range
    requests when the server honours them) or a bytes endpoint whose URL contains ``{bytes}``;
    ``upload_url`` (optional) accepts a POST body of any size.
    """

    name: str = "cloudflare"
    kind: ServerKind = "cloudflare"
    base_url: str = DEFAULT_CLOUDFLARE_URL
    download_url: str = ""
    upload_url: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("cloudflare", "generic"):
            raise ValueError(f"server {self.name!r}: kind must be cloudflare or generic")
        url = self.base_url if self.kind == "cloudflare" else self.download_url
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"server {self.name!r}: {url!r} is not an http(s) URL")

    @classmethod
    def from_url(cls, url: str, name: str | None = None) -> ServerSpec:
        """A Cloudflare-compatible server at `url` (the CLI's ``--server URL``)."""
        base = url.rstrip("/")
        return cls(name=name or (urlsplit(base).hostname or base), base_url=base)

    def down_url(self, n_bytes: int) -> str:
        """URL for a download of `n_bytes` (generic files ignore the size: Range does it)."""
        if self.kind == "cloudflare":
            return f"{self.base_url.rstrip('/')}/__down?bytes={n_bytes}"
        return self.download_url.replace("{bytes}", str(n_bytes))

    @property
    def latency_url(self) -> str:
        """A tiny request whose round trip is the latency sample."""
        return self.down_url(0)

    @property
    def up_url(self) -> str | None:
        """Where uploads go, or None when the server takes none."""
        if self.kind == "cloudflare":
            return f"{self.base_url.rstrip('/')}/__up"
        return self.upload_url or None

    @property
    def uses_range(self) -> bool:
        """True for generic files (sized by a Range header, not by the URL)."""
        return self.kind == "generic" and "{bytes}" not in self.download_url


# --- settings and presets -------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeSettings:
    """How one probe runs; `ProbeSettings.for_mode` gives the presets. Limits are per direction."""

    mode: str = "economy"
    streams: int = 4
    window_s: float = 0.2
    ramp_s: float = 0.3
    stable_windows: int = 4
    tolerance: float = 0.06
    max_seconds: float = 8.0
    max_bytes: int = 150_000_000
    request_bytes: int = 25_000_000  # size of each download/upload request per stream
    latency_samples: int = 10
    loaded_interval_s: float = 0.1  # latency sampling period while downloading
    connect_timeout_s: float = 5.0
    stall_timeout_s: float = 5.0  # no byte moved for this long: the probe fails
    upload: bool = True
    # Fewer streams on a LAN-class path (see `streams_for`); off when `streams` was set by hand.
    auto_streams: bool = True

    def __post_init__(self) -> None:
        checks = {
            "mode": self.mode in MODES,
            "streams": 1 <= self.streams <= 64,
            "window_s": self.window_s > 0,
            "ramp_s": self.ramp_s >= 0,
            "stable_windows": self.stable_windows >= 2,
            "tolerance": 0 < self.tolerance < 1,
            "max_seconds": self.max_seconds > 0,
            "max_bytes": self.max_bytes > 0,
            "request_bytes": self.request_bytes > 0,
            "latency_samples": self.latency_samples >= 1,
            "loaded_interval_s": self.loaded_interval_s > 0,
            "connect_timeout_s": self.connect_timeout_s > 0,
            "stall_timeout_s": self.stall_timeout_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"probe settings out of range: {', '.join(bad)}")

    @classmethod
    def for_mode(
        cls,
        mode: str = "economy",
        *,
        streams: int | None = None,
        max_seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> ProbeSettings:
        """The preset for `mode`, with the configured overrides (None keeps the preset's value)."""
        if mode not in PRESETS:
            raise ValueError(f"unknown probe mode {mode!r} (use {' or '.join(MODES)})")
        base = PRESETS[mode]
        overrides: dict[str, float | int] = {}
        if streams is not None:
            overrides["streams"] = streams
            overrides["auto_streams"] = False
        if max_seconds is not None:
            overrides["max_seconds"] = max_seconds
        if max_bytes is not None:
            overrides["max_bytes"] = max_bytes
        return replace(base, **overrides)  # type: ignore[arg-type]


PRESETS: dict[str, ProbeSettings] = {
    "economy": ProbeSettings(),
    "thorough": ProbeSettings(
        mode="thorough",
        streams=6,
        window_s=0.5,
        ramp_s=1.0,
        stable_windows=6,
        tolerance=0.04,
        max_seconds=20.0,
        max_bytes=1_000_000_000,
        latency_samples=20,
    ),
}


LAN_RTT_MS = 3.0


def streams_for(settings: ProbeSettings, idle_latency_ms: float | None) -> int:
    """How many parallel streams to open, given the idle round trip just measured.

    Parallel streams exist for long paths: a single TCP flow is limited by window / RTT, and
    after a loss it regains its rate in time proportional to the RTT, so on a 20-50 ms internet
    path several flows are needed to fill the line. Below `LAN_RTT_MS` (a server on the LAN or
    the same host) one flow fills any line and extra flows only cost CPU: measured on loopback
    against curl, 1 stream reached 56% of curl's ceiling at 1.95x its CPU per GiB, 4 streams 17%
    at 6.4x (benchmarks/bench_probe.py). On tc-shaped links 1-6 streams were equally accurate.
    """
    if settings.auto_streams and idle_latency_ms is not None and idle_latency_ms < LAN_RTT_MS:
        return 1
    return settings.streams


# --- stable stop ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One sampling window of a transfer: when it started (since the direction began), its
    length and the bytes it moved."""

    start_s: float
    duration_s: float
    n_bytes: int

    @property
    def bps(self) -> float:
        """The window's rate in bit/s."""
        return self.n_bytes * 8 / self.duration_s if self.duration_s > 0 else 0.0


def _rate_bps(windows: Sequence[Window]) -> float | None:
    duration_s = sum(w.duration_s for w in windows)
    if duration_s <= 0:
        return None
    return sum(w.n_bytes for w in windows) * 8 / duration_s


class StableEstimator:
    """Feed windows of ``(duration_s, bytes)``; says when the rate is stable and what it is.

    The rule is in the module docstring. Pure and clock-free: tests feed synthetic timings.
    """

    def __init__(self, ramp_s: float, stable_windows: int, tolerance: float) -> None:
        self.ramp_s = ramp_s
        self.stable_windows = stable_windows
        self.tolerance = tolerance
        self.windows: list[Window] = []
        self.elapsed_s = 0.0
        self.total_bytes = 0
        self._stable: list[Window] | None = None  # the raw windows that proved stability

    @classmethod
    def from_settings(cls, settings: ProbeSettings) -> StableEstimator:
        """An estimator with the settings' ramp, window count and tolerance."""
        return cls(settings.ramp_s, settings.stable_windows, settings.tolerance)

    def add(self, duration_s: float, n_bytes: int) -> bool:
        """Record one window; returns `stable` afterwards. Zero-length windows are ignored."""
        if duration_s > 0:
            self.windows.append(Window(self.elapsed_s, duration_s, max(0, n_bytes)))
            self.elapsed_s += duration_s
            self.total_bytes += max(0, n_bytes)
            if self._stable is None:
                self._stable = self._find_stable()
        return self.stable

    def _post_ramp(self) -> list[Window]:
        return [w for w in self.windows if w.start_s >= self.ramp_s - 1e-9]

    def _find_stable(self) -> list[Window] | None:
        post = self._post_ramp()
        k = self.stable_windows
        size = 1
        # Noisy lines (slow shapers, Wi-Fi) rarely give k short windows that agree; the same
        # test on windows merged 2, 4, 8... at a time lets them stop once the longer view agrees.
        while len(post) >= k * size:
            tail = post[-k * size :]
            merged = [_merge(tail[i : i + size]) for i in range(0, len(tail), size)]
            if self._agree([w.bps for w in merged]):
                return tail
            size *= 2
        return None

    def _agree(self, rates: Sequence[float]) -> bool:
        mean = statistics.fmean(rates)
        if mean <= 0 or (max(rates) - min(rates)) / mean > self.tolerance:
            return False
        half = len(rates) // 2
        first, second = statistics.fmean(rates[:half]), statistics.fmean(rates[-half:])
        return abs(second - first) / mean <= self.tolerance / 2

    @property
    def stable(self) -> bool:
        """True once the last windows agree (see the module docstring)."""
        return self._stable is not None

    @property
    def stable_span_s(self) -> float:
        """How long the windows that proved stability lasted (0 when not stable)."""
        return sum(w.duration_s for w in self._stable) if self._stable else 0.0

    @property
    def estimate_bps(self) -> float | None:
        """The rate to report: the stable windows, else the later half after the ramp."""
        if self._stable is not None:
            return _rate_bps(self._stable)
        post = self._post_ramp()
        if len(post) >= 2:
            return _rate_bps(post[len(post) // 2 :])
        return _rate_bps(self.windows)


def _merge(windows: Sequence[Window]) -> Window:
    return Window(
        windows[0].start_s, sum(w.duration_s for w in windows), sum(w.n_bytes for w in windows)
    )


# --- byte budget --------------------------------------------------------------------------------
class ByteBudget:
    """Splits a direction's ``max_bytes`` evenly over its streams, one request at a time.

    Each stream asks `next_request(stream)` before every request and gets at most
    ``request_bytes``; 0 means its share is spent. Shares are even so that every stream runs
    out at about the same time, instead of the last bytes trickling over one connection.
    """

    def __init__(self, max_bytes: int, streams: int, request_bytes: int) -> None:
        base, extra = divmod(max_bytes, streams)
        self._left = [base + (1 if i < extra else 0) for i in range(streams)]
        self.request_bytes = request_bytes

    def next_request(self, stream: int) -> int:
        """Bytes the stream may ask for next (0: its share is spent)."""
        n = min(self.request_bytes, self._left[stream])
        self._left[stream] -= n
        return n

    def refund(self, stream: int, n_bytes: int) -> None:
        """Give back bytes granted but not moved (a short Range answer)."""
        self._left[stream] += max(0, n_bytes)

    @property
    def left_bytes(self) -> int:
        """Bytes not yet granted to any request."""
        return sum(self._left)


# --- latency ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyStats:
    """Median round trip and jitter (mean absolute difference of consecutive samples), in ms."""

    median_ms: float
    jitter_ms: float
    samples: int


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats | None:
    """Summarise latency samples in the order taken; None when there are none."""
    if not samples_ms:
        return None
    diffs = [abs(b - a) for a, b in itertools.pairwise(samples_ms)]
    jitter = statistics.fmean(diffs) if diffs else 0.0
    return LatencyStats(statistics.median(samples_ms), jitter, len(samples_ms))


def server_time_ms(server_timing: str | None) -> float:
    """Server processing time from a ``Server-Timing`` header (``cfRequestDuration;dur=1.2``).

    Cloudflare reports it so that clients can subtract it from the round trip; 0 when absent.
    """
    if not server_timing:
        return 0.0
    for metric in server_timing.split(","):
        parts = [p.strip() for p in metric.split(";")]
        if parts[0] != "cfRequestDuration":
            continue
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    dur = float(value.strip().strip('"'))
                except ValueError:
                    return 0.0
                return dur if math.isfinite(dur) and dur > 0 else 0.0
    return 0.0


# --- scheduling ---------------------------------------------------------------------------------
QuietWindow = tuple[int, int]  # (start, end) minutes of the local day; end may be <= start


@dataclass(frozen=True)
class ScheduleSettings:
    """When scheduled probes run (from ``probe.*``)."""

    interval_s: float = 3600.0
    jitter_s: float = 300.0  # each gap is interval_s +/- jitter_s, uniformly
    start_delay_s: float = 60.0  # first probe after start-up (+ up to jitter_s)
    quiet_hours: tuple[QuietWindow, ...] = ()
    tz: tzinfo | None = None  # quiet hours are in this zone (None: the host's)
    busy_threshold_bps: float = 2_000_000.0
    busy_retry_s: float = 120.0
    max_deferrals: int = 5  # then the slot is skipped (kind "busy")
    cap_skip_fraction: float | None = 0.95  # None: never skip for the cap
    min_gap_s: float = 600.0  # a probe this recent (e.g. a manual one) satisfies the slot

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.jitter_s < 0 or self.jitter_s >= self.interval_s:
            raise ValueError("probe schedule: need interval_s > jitter_s >= 0")
        for start, end in self.quiet_hours:
            if not (0 <= start < 1440 and 0 <= end <= 1440):
                raise ValueError(f"probe schedule: bad quiet window {(start, end)}")


@dataclass(frozen=True)
class Decision:
    """What the scheduler does at a slot: run, defer (retry soon) or skip; `kind` and `reason`
    say why. `record` is False for skips that are not worth a row (a recent probe)."""

    action: DecisionAction
    kind: str | None = None  # "busy" | "cap" | "quiet" | "recent"
    reason: str = ""
    retry_after_s: float = 0.0
    record: bool = True


def _local_second(now: datetime, tz: tzinfo | None) -> int:
    local = now.astimezone(tz)
    return local.hour * 3600 + local.minute * 60 + local.second


def quiet_window_at(
    now: datetime, windows: Sequence[QuietWindow], tz: tzinfo | None
) -> QuietWindow | None:
    """The quiet window `now` falls in (start inclusive, end exclusive), or None."""
    minute = _local_second(now, tz) / 60
    for start, end in windows:
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if inside:
            return (start, end)
    return None


def quiet_end(now: datetime, windows: Sequence[QuietWindow], tz: tzinfo | None) -> datetime:
    """The first moment at or after `now` outside every quiet window (`now` itself when outside)."""
    t = now
    for _ in range(2 * len(windows) + 2):  # windows may chain; a DST step may need a second go
        window = quiet_window_at(t, windows, tz)
        if window is None:
            return t
        ahead_s = (window[1] * 60 - _local_second(t, tz)) % 86400 or 86400
        t = t + timedelta(seconds=ahead_s)  # absolute time: a DST change cannot loop us back
    return t


def next_run_at(
    now: datetime, settings: ScheduleSettings, unit_random: float, *, first: bool = False
) -> datetime:
    """When the next scheduled probe runs: interval +/- jitter (or the start delay + up to the
    jitter for the first one), moved past quiet hours by up to one jitter. `unit_random` is in
    [0, 1) (injected so tests are deterministic)."""
    if first:
        delay_s = settings.start_delay_s + unit_random * settings.jitter_s
    else:
        delay_s = settings.interval_s + (2 * unit_random - 1) * settings.jitter_s
    at = now + timedelta(seconds=delay_s)
    end = quiet_end(at, settings.quiet_hours, settings.tz)
    if end != at:
        at = end + timedelta(seconds=unit_random * settings.jitter_s)
    return at


def decide(
    now: datetime,
    settings: ScheduleSettings,
    *,
    last_run: datetime | None = None,
    recent_rate_bps: float | None = None,
    cap_fraction: float | None = None,
    deferrals: int = 0,
) -> Decision:
    """Decide whether a scheduled probe runs now.

    In order: quiet hours skip; a nearly spent cap (``cap_fraction >= cap_skip_fraction``)
    skips; a probe within ``min_gap_s`` satisfies the slot (not recorded); other traffic above
    ``busy_threshold_bps`` defers (retry after ``busy_retry_s``) until ``max_deferrals``, then
    skips the slot. None for the rate or the cap means "unknown": no deferral, no skip.
    """
    if quiet_window_at(now, settings.quiet_hours, settings.tz) is not None:
        return Decision("skip", "quiet", "inside quiet hours")
    threshold = settings.cap_skip_fraction
    if threshold is not None and cap_fraction is not None and cap_fraction >= threshold:
        return Decision(
            "skip", "cap", f"data cap {cap_fraction:.0%} used (probes stop at {threshold:.0%})"
        )
    if last_run is not None and (now - last_run).total_seconds() < settings.min_gap_s:
        return Decision("skip", "recent", "a probe ran moments ago", record=False)
    if recent_rate_bps is not None and recent_rate_bps >= settings.busy_threshold_bps:
        rate = f"{recent_rate_bps / 1e6:.1f} Mbit/s"
        limit = f"{settings.busy_threshold_bps / 1e6:.1f} Mbit/s"
        if deferrals >= settings.max_deferrals:
            reason = f"line still busy ({rate} >= {limit}) after {deferrals} deferrals"
            return Decision("skip", "busy", reason)
        reason = f"line busy: other traffic {rate} >= {limit}"
        return Decision("defer", "busy", reason, retry_after_s=settings.busy_retry_s)
    return Decision("run")


__all__ = [
    "DEFAULT_CLOUDFLARE_URL",
    "MODES",
    "PRESETS",
    "ByteBudget",
    "Decision",
    "DirectionEnd",
    "LatencyStats",
    "ProbeSettings",
    "QuietWindow",
    "ScheduleSettings",
    "ServerSpec",
    "StableEstimator",
    "Window",
    "decide",
    "latency_stats",
    "next_run_at",
    "quiet_end",
    "quiet_window_at",
    "server_time_ms",
]
