"""Which network interfaces to count: the WAN once, never loopback, bridges, containers or tunnels twice."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from fnmatch import fnmatchcase


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select_interfaces(
    available: Collection[str],
    include: Collection[str] | str,
    exclude: Collection[str],
    default_route: Collection[str],
) -> list[str]:
    """The interfaces to count.

    `include == "auto"`: the interfaces carrying a default route, minus `exclude`; when every
    default-route interface is excluded (a full-tunnel VPN) or there is no default route yet,
    all non-excluded interfaces, so that something is counted and the log says what.
    An explicit list of names/globs is taken as given, except that globs still honour `exclude`:
    naming `lo` explicitly counts loopback, `eth*` does not pull in an excluded `eth0.docker`.
    """
    if include == "auto":
        chosen = [n for n in available if n in default_route and not _matches(n, exclude)]
        if not chosen:
            chosen = [n for n in available if not _matches(n, exclude)]
        return sorted(chosen)
    out: set[str] = set()
    for pattern in include:
        if any(ch in pattern for ch in "*?["):
            out.update(n for n in available if fnmatchcase(n, pattern) and not _matches(n, exclude))
        elif pattern in available:
            out.add(pattern)
    return sorted(out)
