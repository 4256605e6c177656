"""Translate aiohttp and socket errors into capbot's probe errors, with a message a user can act on."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import aiohttp

from capbot.errors import (
    ProbeConnectError,
    ProbeError,
    ProbeProtocolError,
    ProbeTimeoutError,
)


def redact(url: str) -> str:
    """`url` without credentials or query string (presigned download URLs carry tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def translate(exc: BaseException, url: str) -> ProbeError:
    """The `ProbeError` that says what went wrong with a request to `url`."""
    if isinstance(exc, ProbeError):
        return exc
    url = redact(url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        getattr(exc, "os_error", None), socket.gaierror
    ):
        return ProbeConnectError(f"DNS lookup failed for {_host(url)}: {_reason(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProbeConnectError(f"cannot connect to {_host(url)}: {_reason(exc)}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProbeTimeoutError(f"connecting to {_host(url)} timed out")
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return ProbeTimeoutError(f"{url} stalled: no data within the read timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProbeProtocolError(f"{url}: body truncated ({_reason(exc)})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProbeProtocolError(f"{url}: the server closed the connection mid-response")
    if isinstance(exc, aiohttp.ClientResponseError):
        # The probe checks statuses itself (raise_for_status is off), so aiohttp raises this
        # only when it cannot parse the response at all.
        return ProbeProtocolError(f"{url}: not a valid HTTP response ({_reason(exc)})")
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return ProbeConnectError(f"{url}: connection failed: {_reason(exc)}")
    if isinstance(exc, aiohttp.InvalidURL):
        return ProbeConnectError(f"invalid URL {url}")
    return ProbeProtocolError(f"{url}: {_reason(exc)}")


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname or url)
    except ValueError:
        return url


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
