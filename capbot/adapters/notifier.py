"""Apprise notifier: one Apprise object per configured URL, secrets kept out of every log line.

Apprise logs request URLs at DEBUG, and for several services (Telegram, Discord, ...) the token
is part of that URL; urllib3 logs request paths at DEBUG too. So this module installs a
redacting filter on those loggers for every secret found in the configured URLs, and raises
them to WARNING unless the application configured them explicitly. Attach `log_filter()` to
the application's handlers too, to cover loggers this module does not know.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from capbot.core.model import Alert, Severity
from capbot.errors import ConfigError, NotifyError

log = logging.getLogger(__name__)

# Loggers that can carry a notification URL or a request path containing a token.
_NOISY_LOGGERS = {
    "apprise": logging.WARNING,  # its INFO says "Notifying 1 service(s)" for every send
    "urllib3": logging.WARNING,
    "urllib3.connectionpool": logging.WARNING,
    "urllib3.connection": logging.WARNING,
    "urllib3.poolmanager": logging.WARNING,
    "urllib3.util.retry": logging.WARNING,
    "requests": logging.WARNING,
}
_SECRET_PARAM_RE = re.compile(
    r"([?&][-+:]?[^=&#]*(?:token|key|secret|pass|authorization|sig)[^=&#]*=)([^&#]*)",
    re.IGNORECASE,
)
_SPLIT_RE = re.compile(r"[/:@?&=#,+;\s]+")
_SEVERITY_TO_TYPE = {"info": "info", "warning": "warning", "critical": "failure"}
MIN_SECRET_LEN = 4  # shorter fragments ("1", "on") would redact half of every log line


class _Redactor(logging.Filter):
    """Replaces every registered secret in a record's message (and traceback) with ****."""

    def __init__(self) -> None:
        super().__init__("capbot-redactor")
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: set[str]) -> None:
        with self._lock:
            # Longest first, so a URL is replaced whole before its fragments are.
            self._secrets = tuple(sorted(set(self._secrets) | secrets, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "****")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


_REDACTOR = _Redactor()
_installed = False
_install_lock = threading.Lock()


def _install_redaction(secrets: set[str]) -> None:
    """Register `secrets` and make sure the filter and quiet levels are in place (once)."""
    global _installed
    _REDACTOR.add(secrets)
    with _install_lock:
        if _installed:
            return
        for name, level in _NOISY_LOGGERS.items():
            logger = logging.getLogger(name)
            logger.addFilter(_REDACTOR)
            if logger.level == logging.NOTSET:
                logger.setLevel(level)
        logging.getLogger(__name__).addFilter(_REDACTOR)
        _installed = True


def redact(text: str) -> str:
    """`text` with every known notification secret replaced by ****."""
    return _REDACTOR.redact(text)


def log_filter() -> logging.Filter:
    """The redacting filter, for the application to attach to its log handlers as well."""
    return _REDACTOR


def _instantiate(url: str) -> Any:
    import apprise

    return apprise.Apprise.instantiate(url, suppress_exceptions=True)


def _mask_params(text: str) -> str:
    return _SECRET_PARAM_RE.sub(lambda m: m.group(1) + "****", text)


def masked(url: str, full: bool = False) -> str:
    """`url` privacy-masked for logs and `check-config` (Apprise's own masking, plus token params).

    Without `full` the query string (mostly Apprise's defaults spelled out) is left off.
    """
    plugin = _instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://****"
    text = _mask_params(plugin.url(privacy=True))
    return text if full else text.split("?", 1)[0]


def _secrets_of(url: str, masked_url: str) -> set[str]:
    """Fragments of `url` that its masked form hides: passwords, tokens, webhook ids."""
    found = {url, unquote(url)}
    for part in _SPLIT_RE.split(url):
        for piece in {part, unquote(part)}:
            if len(piece) >= MIN_SECRET_LEN and piece not in masked_url:
                found.add(piece)
    for match in _SECRET_PARAM_RE.finditer(url):
        for piece in {match.group(2), unquote(match.group(2))}:
            if len(piece) >= MIN_SECRET_LEN:
                found.add(piece)
    return found


def public_ntfy_warning(url: str) -> str | None:
    """A warning when `url` is an ntfy URL that posts to the public ntfy.sh service, else None."""
    plugin = _instantiate(url)
    if plugin is None or "ntfy" not in str(getattr(plugin, "protocol", "")):
        return None
    # Without a host Apprise posts to https://ntfy.sh ("cloud" mode); naming ntfy.sh is the same.
    if getattr(plugin, "mode", None) != "cloud" and getattr(plugin, "host", None) != "ntfy.sh":
        return None
    return (
        f"{masked(url)} posts to the public ntfy.sh service: anyone who knows or guesses the "
        "topic can read your alerts. Use a long random topic, or your own server "
        "(ntfy://host/topic)."
    )


@dataclass(frozen=True)
class NotifyUrl:
    """One `notify.urls` entry: an Apprise URL and optional routing tags.

    Tags name severities (info, warning, critical) or alert rules (cap, throttle, outage, ...);
    a URL with tags only gets alerts matching one of them, a URL without tags gets everything.
    """

    url: str
    tags: frozenset[str] = field(default_factory=frozenset)


class AppriseSender:
    """One Apprise URL as a delivery target (satisfies the alerting service's Sender protocol)."""

    def __init__(self, notifier: AppriseNotifier, index: int) -> None:
        self._notifier = notifier
        self._index = index

    @property
    def target(self) -> str:
        """Stable target id stored with each delivery: `apprise:` + a hash of the URL."""
        return self._notifier.target_id(self._index)

    @property
    def label(self) -> str:
        """The masked URL, safe for logs."""
        return self._notifier.masked_url(self._index)

    def accepts(self, alert: Alert) -> bool:
        """Whether this URL's tags route `alert` to it."""
        return self._notifier.accepts(self._index, alert.severity, alert.rule)

    async def send(
        self, title: str, body: str, png: bytes | None, severity: Severity = "info"
    ) -> None:
        """Send one message; raises NotifyError on failure."""
        await self._notifier.send(self._index, title, body, png, severity)


class AppriseNotifier:
    """Sends through Apprise, one Apprise object per URL so one failing URL never re-sends others."""

    def __init__(self, urls: Sequence[NotifyUrl]) -> None:
        self._urls = list(urls)
        self._objects: list[Any] = []
        self._masked: list[str] = []
        if not self._urls:
            return  # spare the import: Apprise costs about 15 MiB once its plugins load
        import apprise

        self._apprise = apprise
        secrets: set[str] = set()
        for i, entry in enumerate(self._urls):
            label = masked(entry.url)
            secrets |= _secrets_of(entry.url, masked(entry.url, full=True))
            # Register before add(): Apprise may log while it parses the URL.
            _install_redaction(secrets)
            asset = apprise.AppriseAsset(secure_logging=True)
            obj = apprise.Apprise(asset=asset)
            if not obj.add(entry.url):
                raise ConfigError(f"notify.urls[{i}]: {label} is not a URL Apprise understands")
            self._objects.append(obj)
            self._masked.append(label)
        _install_redaction(secrets)

    def __len__(self) -> int:
        return len(self._urls)

    def senders(self) -> list[AppriseSender]:
        """One delivery target per configured URL."""
        return [AppriseSender(self, i) for i in range(len(self._urls))]

    def target_id(self, url_index: int) -> str:
        """`apprise:<12 hex>`: stable across restarts and reordering, reveals nothing of the URL."""
        digest = hashlib.sha256(self._urls[url_index].url.encode()).hexdigest()[:12]
        return f"apprise:{digest}"

    def masked_url(self, url_index: int) -> str:
        """The privacy-masked URL."""
        return self._masked[url_index]

    def accepts(self, url_index: int, severity: Severity, rule: str = "") -> bool:
        """Tag routing: no tags -> everything; else the severity or the rule must be tagged."""
        tags = self._urls[url_index].tags
        return not tags or severity in tags or rule in tags

    def supports_attachments(self, url_index: int) -> bool:
        """Whether the service behind the URL takes attachments."""
        return bool(getattr(self._objects[url_index][0], "attachment_support", False))

    async def send(
        self,
        url_index: int,
        title: str,
        body: str,
        png: bytes | None = None,
        severity: Severity = "info",
    ) -> None:
        """Send to one URL, off the event loop; raises NotifyError (Apprise returns False, not raise)."""
        obj = self._objects[url_index]
        label = self._masked[url_index]
        path: str | None = None
        kwargs: dict[str, Any] = {
            "body": body,
            "title": title,
            "notify_type": _SEVERITY_TO_TYPE.get(severity, "info"),
            "body_format": self._apprise.NotifyFormat.TEXT,
        }
        try:
            if png and self.supports_attachments(url_index):
                path = await asyncio.to_thread(_write_temp_png, png)
                kwargs["attach"] = self._apprise.AppriseAttachment(path)
            result = await obj.async_notify(**kwargs)
        except Exception as exc:  # Apprise's own exception types vary by version and plugin
            raise NotifyError(redact(str(exc)) or exc.__class__.__name__) from None
        finally:
            if path is not None:
                await asyncio.to_thread(_unlink, path)
        if not result:
            raise NotifyError(_failure_reason(result))
        log.debug("notified %s", label)

    async def test_all(self) -> list[tuple[str, bool, str | None]]:
        """Send a test message to every URL: [(masked URL, ok, error)], for `capbot notify-test`."""

        async def one(i: int) -> tuple[str, bool, str | None]:
            try:
                await self.send(
                    i,
                    "capbot test notification",
                    "If you can read this, capbot can reach you here.",
                )
            except NotifyError as exc:
                return self._masked[i], False, str(exc)
            return self._masked[i], True, None

        return list(await asyncio.gather(*(one(i) for i in range(len(self._urls)))))


def _failure_reason(result: Any) -> str:
    """The most useful line Apprise captured for a failed call, redacted."""
    lines: list[str] = []
    logs = getattr(result, "logs", None)
    if callable(logs):
        try:
            lines = [e.message for e in logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
        except Exception:  # the result API changed: fall back to the generic reason
            lines = []
    status = getattr(result, "status", None)
    reason = (
        lines[-1] if lines else f"Apprise reported failure ({getattr(status, 'name', 'FAILURE')})"
    )
    return redact(reason)


def _write_temp_png(png: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="capbot-", suffix=".png")
    with os.fdopen(fd, "wb") as fh:
        fh.write(png)
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        log.debug("could not remove temporary chart %s", path)


# --- out-of-process sending ------------------------------------------------------------------
#
# Apprise costs ~18 MiB of RSS once its plugins load, for something that runs a few times a
# month. The service therefore sends through a one-shot child process
# (`python -m capbot.adapters.notifier`) and never imports Apprise itself; the CLI and tests may
# still use AppriseNotifier in-process.

_WORKER_TIMEOUT_S = 120.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # importable even when not pip-installed


async def _worker(request: dict[str, Any], timeout_s: float = _WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Run one request in a child process; its answer is one JSON object on stdout."""
    import json
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "capbot.adapters.notifier",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # Apprise's own chatter may hold secrets
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NotifyError(
            f"the notification worker gave no answer within {timeout_s:.0f} s"
        ) from None
    except asyncio.CancelledError:
        proc.kill()
        raise
    try:
        answer: dict[str, Any] = json.loads(out.decode() or "{}")
    except ValueError:
        answer = {}
    if not {"ok", "masked", "error"} & answer.keys():
        raise NotifyError(f"the notification worker failed (exit status {proc.returncode})")
    return answer


class SubprocessNotifier(AppriseNotifier):
    """AppriseNotifier's interface, with Apprise itself only ever loaded in a short-lived child."""

    def __init__(self, urls: Sequence[NotifyUrl], masked_urls: Sequence[str]) -> None:
        self._urls = list(urls)
        self._objects = []
        self._masked = list(masked_urls)
        self._attachments: list[bool] = []

    @classmethod
    async def create(cls, urls: Sequence[NotifyUrl]) -> SubprocessNotifier:
        """Validate and mask the URLs in a child process (ConfigError names a bad entry)."""
        if not urls:
            return cls([], [])
        answer = await _worker({"op": "mask", "urls": [u.url for u in urls]})
        if answer.get("error"):
            raise ConfigError(str(answer["error"]))
        return cls(urls, answer["masked"])

    def supports_attachments(self, url_index: int) -> bool:
        """Decided by the child, which knows the plugin."""
        return True

    async def send(
        self,
        url_index: int,
        title: str,
        body: str,
        png: bytes | None = None,
        severity: Severity = "info",
    ) -> None:
        """Send to one URL through a child process; raises NotifyError on failure."""
        import base64

        request = {
            "op": "send",
            "url": self._urls[url_index].url,
            "title": title,
            "body": body,
            "severity": severity,
            "png": base64.b64encode(png).decode() if png else None,
        }
        answer = await _worker(request)
        if not answer.get("ok"):
            raise NotifyError(str(answer.get("error") or "the notification failed"))
        log.debug("notified %s", self._masked[url_index])


def _serve_one() -> int:
    """The child side: read one JSON request from stdin, answer one JSON object on stdout."""
    import base64
    import json
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    request = json.loads(sys.stdin.read() or "{}")
    if request.get("op") == "mask":
        try:
            notifier = AppriseNotifier([NotifyUrl(u) for u in request["urls"]])
        except ConfigError as exc:
            print(json.dumps({"error": str(exc)}))
            return 0
        print(json.dumps({"masked": [notifier.masked_url(i) for i in range(len(notifier))]}))
        return 0
    if request.get("op") == "send":
        notifier = AppriseNotifier([NotifyUrl(request["url"])])
        png = base64.b64decode(request["png"]) if request.get("png") else None
        try:
            asyncio.run(
                notifier.send(
                    0, request["title"], request["body"], png, request.get("severity", "info")
                )
            )
        except NotifyError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}))
            return 0
        print(json.dumps({"ok": True}))
        return 0
    print(json.dumps({"error": "unknown request"}))
    return 2


if __name__ == "__main__":
    raise SystemExit(_serve_one())
