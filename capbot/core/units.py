"""Byte and bit-rate units: parse human sizes, format SI figures (GB = 10^9 B, Mbit/s = 10^6 bit/s)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10, "ki": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20, "mi": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30, "gi": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40, "ti": 2**40,
    "p": 10**15, "pb": 10**15, "pib": 2**50, "pi": 2**50,
}  # fmt: skip


def parse_size(text: str | int | float) -> int:
    """Parse `1 TB`, `500 GiB`, `1.5GB` or a plain number of bytes into integer bytes.

    Raises ValueError with a short reason when the text is not a size.
    """
    if isinstance(text, bool):
        raise ValueError("is not a size")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("must not be negative")
        return int(text)
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError("is not a size (examples: 1 TB, 500 GiB, 250GB)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    if unit not in _FACTORS:
        raise ValueError(
            f"has an unknown unit {match.group(2)!r} (use B, kB, MB, GB, TB or KiB, MiB, GiB, TiB)"
        )
    return int(float(number) * _FACTORS[unit])


def format_bytes(n_bytes: float, precision: int = 2) -> str:
    """Format bytes in SI units: `850 MB`, `1.23 TB`."""
    value = float(n_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            digits = precision if value < 10 else (1 if value < 100 else 0)
            return f"{sign}{value:.{digits}f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_bps(bps: float | None) -> str:
    """Format a bit rate in SI units: `94.6 Mbit/s`."""
    if bps is None:
        return "n/a"
    value = float(bps)
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if value < 1000 or unit == "Gbit/s":
            digits = 0 if unit == "bit/s" else (2 if value < 10 else 1)
            return f"{value:.{digits}f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def mbps_to_bps(mbps: float) -> float:
    """Megabits per second (10^6) to bits per second."""
    return mbps * 1_000_000
