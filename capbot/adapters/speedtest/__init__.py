"""The HTTP speed probe (aiohttp): latency, download and upload against a Cloudflare-style server."""

from __future__ import annotations

from capbot.adapters.speedtest._meter import ByteMeter
from capbot.adapters.speedtest._probe import SpeedProbe
from capbot.core.probe import ProbeSettings, ServerSpec

__all__ = ["ByteMeter", "ProbeSettings", "ServerSpec", "SpeedProbe"]
