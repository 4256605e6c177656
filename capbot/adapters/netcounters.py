"""psutil network counters, boot identity and default routes (Linux /proc where it has them)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from capbot.core.counters import Counters
from capbot.errors import CounterError

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class PsutilCounters:
    """Reads raw per-interface byte counters; psutil's own wrap handling is off (we do our own)."""

    def read(self) -> dict[str, Counters]:
        """Raw rx/tx byte counters of every interface in this network namespace."""
        try:
            stats = psutil.net_io_counters(pernic=True, nowrap=False)
        except (OSError, RuntimeError) as exc:
            raise CounterError(f"cannot read network counters: {exc}") from exc
        return {name: Counters(s.bytes_recv, s.bytes_sent) for name, s in stats.items()}

    def boot_id(self) -> str:
        """A fresh identity per boot: the kernel's boot_id UUID, else psutil's boot time."""
        try:
            return _BOOT_ID.read_text().strip()
        except OSError:
            # Boot time is wall clock minus uptime, so it wobbles when NTP steps the clock:
            # round it so a step of a few seconds doesn't look like a reboot.
            return f"boottime-{round(psutil.boot_time() / 60)}"

    def boottime_s(self) -> float:
        """Seconds since boot on a clock that survives process restarts and ignores wall-clock steps."""
        clock = getattr(time, "CLOCK_BOOTTIME", None)
        if clock is not None:
            return time.clock_gettime(clock)
        return time.time() - psutil.boot_time()

    def default_route_interfaces(self) -> set[str]:
        """Interfaces holding an IPv4 or IPv6 default route (empty where /proc is missing)."""
        names: set[str] = set()
        try:
            for line in Path("/proc/net/route").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
                    names.add(cols[0])
        except OSError:
            pass
        try:
            for line in Path("/proc/net/ipv6_route").read_text().splitlines():
                cols = line.split()
                if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
                    names.add(cols[9])
        except OSError:
            pass
        return names

    def link_speed_mbps(self, iface: str) -> float | None:
        """The NIC's negotiated speed in Mbit/s, or None when the driver does not say (Wi-Fi, virtual)."""
        try:
            st = psutil.net_if_stats().get(iface)
        except OSError:
            return None
        return float(st.speed) if st and st.speed > 0 else None
