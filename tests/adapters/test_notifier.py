"""Real Apprise against a local json:// receiver: delivery, attachments, failures, masking, no leaks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from capbot.adapters.notifier import (
    AppriseNotifier,
    NotifyUrl,
    log_filter,
    masked,
    public_ntfy_warning,
)
from capbot.core.model import Alert
from capbot.errors import ConfigError, NotifyError
from tests.receivers import JsonReceiver, json_receiver

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # a PNG signature and some bytes
SECRETS = ("s3cretpass", "abc123", "k3yvalue99")


@pytest.fixture
def receiver() -> Iterator[JsonReceiver]:
    """A json:// receiver on 127.0.0.1."""
    with json_receiver() as r:
        yield r


def secret_url(r: JsonReceiver, path: str = "/hook") -> str:
    """A receiver URL carrying a password, a token parameter and a secret GET parameter."""
    return r.url(path, auth="user:s3cretpass", query="token=abc123&-apikey=k3yvalue99&cto=1&rto=1")


async def test_send_delivers_title_body_and_png_attachment(receiver: JsonReceiver) -> None:
    """One send arrives once, with the PNG as a base64 attachment and the basic-auth credentials."""
    notifier = AppriseNotifier([NotifyUrl(secret_url(receiver))])
    await notifier.send(0, "Data cap: over 80% used", "812 GB of 1.00 TB", PNG, "warning")
    (got,) = receiver.wait_for(1)
    assert (got.title, got.message, got.payload["type"]) == (
        "Data cap: over 80% used",
        "812 GB of 1.00 TB",
        "warning",
    )
    assert got.path == "/hook" and got.query["apikey"] == ["k3yvalue99"]
    assert got.authorization and got.authorization.startswith("Basic ")
    assert got.attachments[0]["mimetype"] == "image/png"
    assert got.attachment_bytes(0) == PNG
    assert len(receiver.received) == 1


async def test_failures_raise_notify_error(receiver: JsonReceiver) -> None:
    """A 500 answer or a refused connection is a NotifyError (Apprise itself only returns False)."""
    notifier = AppriseNotifier([NotifyUrl(receiver.url())])
    receiver.set_mode("error")
    with pytest.raises(NotifyError, match="500"):
        await notifier.send(0, "t", "b")
    receiver.set_mode("down")
    with pytest.raises(NotifyError, match="onnection"):
        await notifier.send(0, "t", "b")
    receiver.set_mode("ok")
    await notifier.send(0, "t", "b")
    assert len(receiver.wait_for(1)) == 1


async def test_test_all_reports_each_url(receiver: JsonReceiver) -> None:
    """notify-test gets (masked URL, ok, error) per URL; a dead URL does not stop the others."""
    with json_receiver("down") as dead:
        notifier = AppriseNotifier([NotifyUrl(secret_url(receiver)), NotifyUrl(dead.url("/x"))])
        results = await notifier.test_all()
    assert [(ok, error is None) for _, ok, error in results] == [(True, True), (False, False)]
    assert "s3cretpass" not in results[0][0] and "****" in results[0][0]
    assert receiver.wait_for(1)[0].title == "capbot test notification"


async def test_no_secret_reaches_any_log_at_any_level(
    receiver: JsonReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG, sends that succeed, fail and time out log no URL secret."""
    caplog.set_level(logging.DEBUG)
    url = secret_url(receiver)
    notifier = AppriseNotifier([NotifyUrl(url)])
    noisy = [logging.getLogger(n) for n in ("apprise", "urllib3", "urllib3.connectionpool")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.DEBUG)  # even a user forcing DEBUG stays safe
    try:
        await notifier.send(0, "ok", "body", PNG)
        errors = []
        for mode in ("error", "down"):
            receiver.set_mode(mode)
            with pytest.raises(NotifyError) as info:
                await notifier.send(0, "fails", "body")
            errors.append(str(info.value))
        receiver.set_mode("ok")
        await notifier.test_all()
    finally:
        for logger, level in zip(noisy, levels, strict=True):
            logger.setLevel(level)
    text = "\n".join(
        [caplog.text, *errors]
        + [r.getMessage() + (r.exc_text or "") for r in caplog.records]
        + [masked(url), notifier.masked_url(0), notifier.target_id(0)]
    )
    assert any(r.name == "apprise" and r.levelno == logging.DEBUG for r in caplog.records)
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    for secret in (*SECRETS, url):
        assert secret not in text


def test_masking_and_the_redacting_filter() -> None:
    """masked() hides passwords and tokens; the filter scrubs them from foreign records too."""
    tg = "tgram://123456789:ABCdefGhIJKlmnOPqrSTUvwxYZ/12345"
    assert "ABCdefGhIJKlmnOPqrSTUvwxYZ" not in masked(tg)
    assert masked("nonsense://") == "nonsense://****"
    AppriseNotifier([NotifyUrl(tg)])  # registers its secrets; nothing is sent
    record = logging.LogRecord(
        "other",
        logging.ERROR,
        __file__,
        1,
        "POST https://api.telegram.org/bot%s/sendMessage",
        (tg[8:],),
        None,
    )
    assert log_filter().filter(record)
    assert "ABCdefGhIJKlmnOPqrSTUvwxYZ" not in record.getMessage()


def test_tag_routing_and_stable_targets(receiver: JsonReceiver) -> None:
    """Tagged URLs only take matching severities or rules; untagged ones take everything."""
    notifier = AppriseNotifier(
        [
            NotifyUrl(receiver.url("/all")),
            NotifyUrl(receiver.url("/critical"), frozenset({"critical"})),
            NotifyUrl(receiver.url("/outages"), frozenset({"outage"})),
        ]
    )
    senders = notifier.senders()

    def routed(severity: str, rule: str) -> list[bool]:
        alert = Alert("k", rule, severity, "t", "b", None)  # type: ignore[arg-type]
        return [s.accepts(alert) for s in senders]

    assert routed("critical", "cap") == [True, True, False]
    assert routed("warning", "outage") == [True, False, True]
    assert routed("info", "cycle_summary") == [True, False, False]
    assert len({s.target for s in senders}) == 3
    assert senders[0].target == AppriseNotifier([NotifyUrl(receiver.url("/all"))]).target_id(0)
    assert all(s.target.startswith("apprise:") for s in senders)


def test_invalid_url_is_a_config_error_without_the_secret() -> None:
    """An unusable URL names its config key and never echoes the secret."""
    with pytest.raises(ConfigError, match=r"notify.urls\[0\]") as info:
        AppriseNotifier([NotifyUrl("nosuchscheme://user:hunter2secret@host/path")])
    assert "hunter2secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("ntfy://mytopic", True),  # no host: Apprise posts to https://ntfy.sh
        ("ntfys://ntfy.sh/mytopic", True),
        ("ntfy://ntfy.example.com/mytopic", False),
        ("ntfy://localhost/mytopic", False),
        ("json://localhost/x", False),
    ],
)
def test_public_ntfy_warning(url: str, warns: bool) -> None:
    """ntfy URLs that end up on the public ntfy.sh get a warning for check-config."""
    warning = public_ntfy_warning(url)
    assert (warning is not None) is warns
    if warning:
        assert "public ntfy.sh" in warning


async def test_subprocess_notifier_delivers_without_loading_apprise(receiver: JsonReceiver) -> None:
    """The service's notifier sends through a child process: the message and PNG arrive, and
    Apprise is never imported by the calling process."""
    import sys

    from capbot.adapters.notifier import SubprocessNotifier

    had_apprise = "apprise" in sys.modules
    notifier = await SubprocessNotifier.create([NotifyUrl(receiver.url("/sub", auth="u:s3cret"))])
    assert "s3cret" not in notifier.masked_url(0)
    await notifier.send(0, "Cap at 80%", "800 GB of 1 TB", b"\x89PNG\r\n\x1a\nfake", "warning")
    got = receiver.wait_for(1)[0]
    assert got.title == "Cap at 80%" and got.attachment_bytes().startswith(b"\x89PNG")
    assert ("apprise" in sys.modules) == had_apprise


async def test_subprocess_notifier_reports_failures_and_bad_urls() -> None:
    """A refused connection is a NotifyError; a URL Apprise cannot parse is a ConfigError naming it."""
    from capbot.adapters.notifier import SubprocessNotifier

    with json_receiver("down") as dead:
        notifier = await SubprocessNotifier.create([NotifyUrl(dead.url("/x"))])
        with pytest.raises(NotifyError):
            await notifier.send(0, "t", "b")
    with pytest.raises(ConfigError, match=r"notify.urls\[0\]"):
        await SubprocessNotifier.create([NotifyUrl("nosuchscheme://what")])
