"""Exact per-direction byte counts for a probe's sockets, read from the kernel's TCP_INFO.

Every probe connection is made through `ByteMeter.socket_factory`, which returns a socket that
snapshots its TCP_INFO counters just before it closes; `snapshot()` reads the open ones. Totals
are the sums of each socket's last snapshot:

- down: ``tcpi_bytes_received`` (every payload byte that arrived, once);
- up: ``tcpi_bytes_sent - tcpi_bytes_retrans`` (every payload byte that left, once; kernels
  before 4.19 lack these, so ``tcpi_bytes_acked - 1`` for the SYN);
- rate windows for uploads use ``tcpi_bytes_acked``: bytes the server's kernel has confirmed,
  which, unlike bytes handed to our socket, are not inflated by our own send buffer.

Payload means HTTP request/response heads and bodies (and TLS records on https), without TCP/IP
headers (a FIN, which takes a sequence number, is not counted). When a direction ends its
connections are cut (`abort`: last snapshot, then shutdown) and closed with SO_LINGER 0, a
reset, so nothing we queued leaves later; what the server still had in flight towards us (at
most one congestion window per stream) arrives uncounted. Where TCP_INFO is missing (not Linux) the
probe's own body counters are used instead (`exact` is then False, and heads are not counted).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_OFF_STATE = 0
_FIN_RECEIVED_STATES = (8, 9)  # CLOSE_WAIT, LAST_ACK: the peer's FIN took one sequence number
_OFF_BYTES_ACKED = 120
_OFF_BYTES_RECEIVED = 128
_OFF_BYTES_SENT = 200
_OFF_BYTES_RETRANS = 208
_TCP_INFO_LEN = 256
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def read_tcp_info(sock: socket.socket) -> tuple[int, int, int] | None:
    """(received, sent once, acked) payload bytes of a TCP socket, or None without TCP_INFO."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _OFF_BYTES_RECEIVED + 8:
        return None
    acked, received = struct.unpack_from("=QQ", raw, _OFF_BYTES_ACKED)
    acked = max(0, acked - 1)  # the SYN counts as one acknowledged byte on our side
    if raw[_OFF_STATE] in _FIN_RECEIVED_STATES:
        received = max(0, received - 1)
    if len(raw) >= _OFF_BYTES_RETRANS + 8:
        sent, retrans = struct.unpack_from("=QQ", raw, _OFF_BYTES_SENT)
        sent = max(0, sent - retrans)
    else:
        sent = acked
    return received, sent, acked


class _MeteredSocket(socket.socket):
    """A socket that reports its last counters to the meter before it closes."""

    meter: ByteMeter | None = None
    group = ""
    frozen = False  # cut by `abort`: its received count is final
    last: tuple[int, int, int] = (0, 0, 0)

    def close(self) -> None:
        if self.meter is not None and self.fileno() != -1:
            self.meter.read(self)
        super().close()


class ByteMeter:
    """Counts a probe's bytes per direction; see the module docstring for what is counted."""

    def __init__(self) -> None:
        self._sockets: list[_MeteredSocket] = []
        self.exact = _TCP_INFO is not None
        self.app_down = 0  # body bytes the probe read (fallback and cross-check)
        self.app_up = 0  # body bytes the probe handed to the transport

    def socket_factory(self, group: str) -> Callable[[Any], socket.socket]:
        """For ``aiohttp.TCPConnector(socket_factory=...)``: makes metered TCP sockets that
        `abort(group)` can cut."""

        def factory(addr_info: Any) -> socket.socket:
            family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
            sock = _MeteredSocket(family, type_, proto)
            sock.meter = self
            sock.group = group
            # A reset on close: bytes still queued in our send buffer must not leave uncounted.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._sockets.append(sock)
            return sock

        return factory

    def abort(self, group: str) -> None:
        """Cut every open connection of `group` now, after a last snapshot.

        Cancelling an aiohttp request only closes its transport gracefully: asyncio first
        flushes what it buffered (up to a 1 MiB upload chunk per stream, seconds on a slow
        line, measured as 8 streams still uploading 1 s after a 20 Mbit/s probe returned).
        A shutdown makes the transport fail at once; its close then resets the connection.
        """
        for sock in self._sockets:
            if sock.group == group and sock.fileno() != -1:
                self.read(sock)
                sock.frozen = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def read(self, sock: _MeteredSocket) -> None:
        """Refresh one socket's counters (no-op once it is closed)."""
        info = read_tcp_info(sock)
        if info is None:
            if sock.fileno() != -1 and self.exact:
                log.debug("TCP_INFO unavailable: counting body bytes only")
                self.exact = False
            return
        if sock.frozen:
            # Bytes queued before the cut still leave until the reset; count them. What arrives
            # now is the peer's answer to our shutdown (a FIN would count as a byte) or data
            # that was in flight, which the reset discards.
            info = (sock.last[0], info[1], info[2])
        sock.last = info

    def snapshot(self) -> None:
        """Refresh the counters of every open socket."""
        for sock in self._sockets:
            if sock.fileno() != -1:
                self.read(sock)

    @property
    def down_bytes(self) -> int:
        """Bytes received so far (as of the last snapshot)."""
        if not self.exact:
            return self.app_down
        return sum(s.last[0] for s in self._sockets)

    @property
    def up_bytes(self) -> int:
        """Bytes sent so far, each once (as of the last snapshot)."""
        if not self.exact:
            return self.app_up
        return sum(s.last[1] for s in self._sockets)

    @property
    def up_acked_bytes(self) -> int:
        """Bytes the peers acknowledged so far: the upload rate's measure."""
        if not self.exact:
            return self.app_up
        return sum(s.last[2] for s in self._sockets)

    @property
    def connections(self) -> int:
        """How many connections the probe opened."""
        return len(self._sockets)
