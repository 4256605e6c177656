"""The whole service in-process: sampler, store, command table, chart worker and the real
python-telegram-bot client against the fake Bot API on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capbot.app import Service, build_service
from capbot.config import load_settings
from tests.builders import seeded_store
from tests.fake_telegram import FakeTelegram
from tests.fakes import FakeCounters

TOKEN = "424242:SERVICE-test-token"
OWNER = 111
GROUP = -100555
STRANGER = 999
PNG = b"\x89PNG\r\n\x1a\n"


@asynccontextmanager
async def running(
    tmp_path: Path, fake: FakeTelegram, extra: str = "", telegram_extra: str = ""
) -> AsyncIterator[Service]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"host: h1\nstorage:\n  data_dir: {tmp_path}\n  flush_interval: 1\n"
        "sampler:\n  interval: 0.2\n"
        "plan:\n  cap: 100 GB\n  timezone: Europe/Berlin\n  download_mbps: 100\n"
        "rules:\n  outage:\n    check_url: http://127.0.0.1:9/\n    check_interval: 3600\n"
        f"telegram:\n  token: '{TOKEN}'\n  allowed_user_ids: [{OWNER}]\n"
        f"  api_base_url: {fake.api_base_url}\n  file_base_url: {fake.file_base_url}\n"
        + telegram_extra
        + extra
    )
    now = datetime.now(UTC)
    seeded_store(
        tmp_path / "capbot.db",
        "h1",
        [(now - timedelta(hours=h), "eth0", 2_000_000_000, 200_000_000) for h in range(0, 48, 2)],
    ).close()
    settings = load_settings(str(cfg), env={})
    service = await asyncio.to_thread(build_service, settings, counters=FakeCounters())
    task = asyncio.create_task(service.run())
    try:
        await fake.wait_for_call("setMyCommands", timeout_s=15)
        yield service
    finally:
        service.stop.set()
        done, _ = await asyncio.wait({task}, timeout=20)
        if not done:  # say what is stuck instead of hanging until pytest-timeout
            stacks = "\n".join(
                f"{t.get_name()}: {t.get_stack(limit=3)}"
                for t in asyncio.all_tasks()
                if not t.done()
            )
            task.cancel()
            raise AssertionError(f"the service did not stop within 20 s; pending tasks:\n{stacks}")
        task.result()


async def test_usage_over_telegram_returns_text_and_chart(tmp_path: Path) -> None:
    """/usage from an allowed user gets the cycle's figures and a real PNG chart; strangers get nothing."""
    async with FakeTelegram(TOKEN) as fake, running(tmp_path, fake, "probe:\n  enabled: false\n"):
        fake.push_message(STRANGER, STRANGER, "/usage")
        fake.push_message(OWNER, OWNER, "/usage")
        photo = (await fake.wait_for_call("sendPhoto", timeout_s=30))[0]
        _name, data = next(iter(photo.files.values()))
        assert data.startswith(PNG) and len(data) > 10_000
        text = str(photo.params.get("caption", "")) + " ".join(
            str(c.params.get("text", "")) for c in fake.calls_of("sendMessage")
        )
        assert "of 100 GB cap" in text
        chats = {
            int(c.params["chat_id"])
            for c in fake.calls_of("sendMessage") + fake.calls_of("sendPhoto")
        }
        assert chats == {OWNER}
        names = [cmd["command"] for cmd in fake.commands[-1]]
        assert {"usage", "speedtest", "history", "status"} <= set(names)


async def test_bad_arguments_get_help(tmp_path: Path) -> None:
    """A bad argument is answered with a hint and the help, not an error."""
    async with FakeTelegram(TOKEN) as fake, running(tmp_path, fake, "probe:\n  enabled: false\n"):
        fake.push_message(OWNER, OWNER, "/usage fortnight")
        msg = (await fake.wait_for_call("sendMessage", timeout_s=15))[0]
        assert "Commands:" in str(msg.params["text"])
        assert "/usage fortnight" in str(msg.params["text"])


@pytest.mark.parametrize("command", ["/status", "/plan", "/alerts", "/history", "/help"])
async def test_every_command_answers(tmp_path: Path, command: str) -> None:
    """Each command answers through the real stack."""
    async with FakeTelegram(TOKEN) as fake, running(tmp_path, fake, "probe:\n  enabled: false\n"):
        fake.push_message(OWNER, OWNER, command)
        msg = await fake.wait_for(
            lambda calls: [
                c for c in calls if c.method in ("sendMessage", "sendPhoto") and c.status == 200
            ],
            timeout_s=20,
        )
        assert msg


async def test_speedtest_over_telegram_against_local_server_with_cooldown(tmp_path: Path) -> None:
    """/speedtest states its cost, edits one message with progress, stores the probe, and a
    rapid repeat is refused politely by the cooldown."""
    from tests.speedserver import ServerConfig, SpeedServer

    async with SpeedServer(ServerConfig.shaped(50e6)) as srv, FakeTelegram(TOKEN) as fake:
        extra = (
            "probe:\n  interval: 3600\n  jitter: 0\n"
            f"  servers:\n    - name: local\n      kind: cloudflare\n      base_url: {srv.base_url}\n"
            "chat:\n  speedtest_cooldown: 600\n"
        )
        async with running(tmp_path, fake, extra) as service:
            fake.push_message(OWNER, OWNER, "/speedtest")
            final = await fake.wait_for(
                lambda calls: [c for c in calls if "server local" in str(c.params.get("text", ""))],
                timeout_s=60,
            )
            first = fake.calls_of("sendMessage")[0]
            assert "at most" in str(first.params["text"])  # the data cost, up front
            assert fake.calls_of("editMessageText")  # progress edits one message
            assert "Mbit/s" in str(final[-1].params["text"])
            probes = await asyncio.to_thread(service.store.probes, 5)
            assert probes and probes[0].ok and probes[0].trigger == "chat"
            assert 40e6 < probes[0].download_bps < 55e6  # type: ignore[operator]
            fake.push_message(OWNER, OWNER, "/speedtest")
            refusal = await fake.wait_for(
                lambda calls: [c for c in calls if "Please wait" in str(c.params.get("text", ""))],
                timeout_s=20,
            )
            assert refusal


async def test_cap_alert_reaches_the_telegram_alert_chat(tmp_path: Path) -> None:
    """A cap threshold crossed by the stored usage is delivered to telegram.alert_chat_ids, once."""
    async with FakeTelegram(TOKEN) as fake:
        # 24 x 2.2 GB = 52.8 GB of the 100 GB cap: 50% is crossed at the first rule check.
        extra = "probe:\n  enabled: false\n"
        async with running(tmp_path, fake, extra, telegram_extra=f"  alert_chat_ids: [{GROUP}]\n"):
            alert = await fake.wait_for(
                lambda calls: [
                    c
                    for c in calls
                    if c.method in ("sendMessage", "sendPhoto")
                    and int(c.params["chat_id"]) == GROUP
                ],
                timeout_s=30,
            )
            await asyncio.sleep(2.5)  # more rule checks (every flush) must not repeat it
            sent = [
                c
                for c in fake.calls
                if c.method in ("sendMessage", "sendPhoto") and int(c.params["chat_id"]) == GROUP
            ]
        text = str(alert[0].params.get("caption") or alert[0].params.get("text"))
        assert "50%" in text
        assert len(sent) == 1
