"""The capbot exception tree; adapters translate foreign errors into these at the edge.

CapbotError
├── ConfigError        bad or missing configuration (exit status 2)
├── StorageError       the database refused a read or write (kept in memory, retried)
├── CounterError       network counters could not be read
├── ProbeError         a speed probe failed (its class names the failure)
│   ├── ProbeConnectError   connection refused, DNS failure, unreachable
│   ├── ProbeTimeoutError   connect/read timeout or a stalled body
│   ├── ProbeHTTPError      the server answered with an HTTP error status
│   └── ProbeProtocolError  truncated or garbage response
├── NotifyError        a notifier could not deliver (the alert stays pending)
└── CommandError       a chat command got bad arguments (answered with help)
"""

from __future__ import annotations


class CapbotError(Exception):
    """Base of every error capbot raises on purpose."""


class ConfigError(CapbotError):
    """The configuration is invalid; the message names the key path."""


class StorageError(CapbotError):
    """The database could not be read or written."""


class CounterError(CapbotError):
    """Network counters could not be read."""


class ProbeError(CapbotError):
    """A speed probe failed; `kind` is a short stable name stored with the probe."""

    kind = "error"


class ProbeConnectError(ProbeError):
    """The server could not be reached (refused, DNS, unreachable)."""

    kind = "connect"


class ProbeTimeoutError(ProbeError):
    """The server stopped answering in time, or the body stalled."""

    kind = "timeout"


class ProbeHTTPError(ProbeError):
    """The server answered with an HTTP error status."""

    kind = "http"


class ProbeProtocolError(ProbeError):
    """The response was truncated or not what the protocol promises."""

    kind = "protocol"


class NotifyError(CapbotError):
    """A notification could not be delivered."""


class CommandError(CapbotError):
    """A chat or CLI command got arguments it cannot use."""
