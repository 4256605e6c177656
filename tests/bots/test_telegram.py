"""Telegram front-end tests: the real python-telegram-bot client against a loopback fake API."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from capbot.bots.telegram import (
    MESSAGE_MAX_CHARS,
    TelegramBot,
    TelegramSettings,
    fit_text,
    parse_command,
)
from capbot.core.model import CommandRequest, Progress, Reply
from capbot.errors import ConfigError, NotifyError
from tests.fake_telegram import Call, FakeTelegram

TOKEN = "123456789:AAH-test_SECRET-token-value"
TOKEN_SECRET = TOKEN.split(":", 1)[1]
OWNER = 111  # allowed user id (their private chat has the same id)
GROUP = -100200  # allowed group chat
CHANNEL = -100300  # allowed chat id that is a channel: its posts are still never served
STRANGER = 999
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_png() -> bytes:
    """A valid 1x1 RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x80\x00")
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = tiny_png()
FINAL_SPEED = "Down 93.1 Mbit/s, up 11.2 Mbit/s"


class FakeCommands:
    """A tiny command table: text, chart, a progress-reporting speed test and help."""

    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []

    def command_list(self) -> list[tuple[str, str]]:
        return [
            ("usage", "Data used this cycle"),
            ("chart", "Usage chart"),
            ("speedtest", "Run a speed test"),
            ("help", "Show the commands"),
            ("Bad-Name", "not a valid Telegram command name"),
        ]

    async def handle(self, request: CommandRequest, progress: Progress) -> Reply:
        self.requests.append(request)
        if request.name == "usage":
            return Reply("Used 12.3 GB " + " ".join(request.args))
        if request.name == "chart":
            return Reply("Usage chart", png=PNG)
        if request.name == "long":
            return Reply("x" * 5000)
        if request.name == "boom":
            raise RuntimeError("handler bug")
        if request.name == "speedtest":
            for line in ("Testing latency…", "Testing latency…", "Download 93.1 Mbit/s"):
                await progress(line)
                await asyncio.sleep(0.05)
            await progress("Upload 11.2 Mbit/s")
            return Reply(FINAL_SPEED, png=PNG)
        return Reply("Unknown command. Try /usage, /chart or /speedtest.")


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as server:
        yield server


@pytest.fixture
def commands() -> FakeCommands:
    return FakeCommands()


def settings_for(fake: FakeTelegram, **overrides: Any) -> TelegramSettings:
    values: dict[str, Any] = {
        "token": TOKEN,
        "allowed_chat_ids": frozenset({GROUP, CHANNEL}),
        "allowed_user_ids": frozenset({OWNER}),
        "alert_chat_ids": (OWNER,),
        "api_base_url": fake.api_base_url,
        "file_base_url": fake.file_base_url,
        "poll_timeout_s": 1.0,
    }
    values.update(overrides)
    return TelegramSettings(**values)


def make_bot(settings: TelegramSettings, commands: FakeCommands, **kwargs: Any) -> TelegramBot:
    options: dict[str, Any] = {
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "per_chat_rate_per_s": 0,  # pacing has its own test; off here to keep tests quick
    }
    options.update(kwargs)
    return TelegramBot(settings, commands, **options)


async def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(bot: TelegramBot, *, wait_ready: bool = True) -> AsyncIterator[TelegramBot]:
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        if wait_ready:
            await wait_until(lambda: bot.ready or task.done())
            if task.done():
                task.result()
        yield bot
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert not bot.ready


def messages_to(fake: FakeTelegram, chat_id: int) -> list[Call]:
    return [c for c in fake.calls_of("sendMessage") if c.params["chat_id"] == chat_id]


# -- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/usage", ("usage", ())),
        ("/usage week  2", ("usage", ("week", "2"))),
        ("/Usage@capbot_test_bot week", ("usage", ("week",))),
        ("/usage@CAPBOT_TEST_BOT", ("usage", ())),
        ("/usage@other_bot week", None),
        ("usage week", None),
        ("/", None),
        ("", None),
    ],
)
def test_parse_command(text: str, expected: tuple[str, tuple[str, ...]] | None) -> None:
    """Commands are lower-cased, split on whitespace and ignored when addressed to another bot."""
    assert parse_command(text, "capbot_test_bot") == expected


def test_fit_text_cuts_in_utf16_units_and_marks_the_cut() -> None:
    """Texts over the cap are cut to the UTF-16 limit Telegram counts, with a visible mark."""
    assert fit_text("  short  ") == "short"
    cut = fit_text("😀" * 3000)  # each emoji is two UTF-16 units
    assert len(cut.encode("utf-16-le")) // 2 <= MESSAGE_MAX_CHARS
    assert cut.endswith("(truncated)")
    assert fit_text("a" * 5000, limit=100).startswith("a" * 80)


def test_importing_the_module_does_not_load_telegram() -> None:
    """The 26 MiB PTB import happens only when a bot is built, not when settings are read."""
    code = "import sys, capbot.bots.telegram; sys.exit('telegram' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- end to end through PTB ------------------------------------------------------------------------


async def test_command_gets_text_reply(fake: FakeTelegram, commands: FakeCommands) -> None:
    """A command from the owner reaches the handler with its args and the text comes back."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/usage@capbot_test_bot week")
        [sent] = await fake.wait_for_call("sendMessage")
    assert sent.params["chat_id"] == OWNER
    assert sent.params["text"] == "Used 12.3 GB week"
    assert commands.requests == [CommandRequest("usage", ("week",), "telegram", "111", "111")]
    actions = [c.params["action"] for c in fake.calls_of("sendChatAction")]
    assert actions[:1] == ["typing"]


async def test_unknown_command_goes_to_the_handler(
    fake: FakeTelegram, commands: FakeCommands
) -> None:
    """An unknown command is passed on, and the handler's help text is the answer."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(GROUP, STRANGER, "/nope 1")
        [sent] = await fake.wait_for_call("sendMessage")
    assert sent.params["chat_id"] == GROUP  # the group is allowed, so any member is served
    assert sent.params["text"].startswith("Unknown command")
    assert commands.requests[0].name == "nope"


async def test_png_reply_is_sent_as_photo(fake: FakeTelegram, commands: FakeCommands) -> None:
    """A reply with a chart arrives as sendPhoto carrying the exact PNG bytes and the caption."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/chart")
        [photo] = await fake.wait_for_call("sendPhoto")
    filename, data = photo.files["photo"]
    assert data == PNG
    assert data.startswith(PNG_SIGNATURE)
    assert filename == "chart.png"
    assert photo.params["caption"] == "Usage chart"
    assert fake.calls_of("sendMessage") == []
    assert "upload_photo" in [c.params["action"] for c in fake.calls_of("sendChatAction")]


async def test_long_reply_is_truncated(fake: FakeTelegram, commands: FakeCommands) -> None:
    """A reply over 4096 characters is cut so Telegram accepts it."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/long")
        [sent] = await fake.wait_for_call("sendMessage")
    assert len(sent.params["text"]) <= MESSAGE_MAX_CHARS
    assert sent.params["text"].endswith("(truncated)")


async def test_failing_handler_gets_a_short_apology(
    fake: FakeTelegram, commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises is logged with its traceback and the chat gets a short answer."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/boom")
        [sent] = await fake.wait_for_call("sendMessage")
    assert sent.params["text"].startswith("Sorry, /boom failed")
    assert any(r.exc_info for r in caplog.records if "boom" in r.getMessage())


async def test_stranger_gets_nothing(
    fake: FakeTelegram, commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """A chat and user not on the allow-list get no reply, the handler is never called and the
    refusal is logged at INFO with both ids."""
    caplog.set_level(logging.INFO, logger="capbot")
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(STRANGER, STRANGER, "/usage")
        fake.push_message(OWNER, OWNER, "/usage sentinel")
        await fake.wait_for_call("sendMessage")
        await wait_until(lambda: "chat_id=999 user_id=999" in caplog.text)
    assert [c.params["chat_id"] for c in fake.calls_of("sendMessage")] == [OWNER]
    assert all(c.params["chat_id"] != STRANGER for c in fake.calls if "chat_id" in c.params)
    assert [r.args for r in commands.requests] == [("sentinel",)]
    refusals = [r for r in caplog.records if "chat_id=999" in r.getMessage()]
    assert refusals[0].levelno == logging.INFO


async def test_non_message_updates_are_ignored_even_from_allowed_ids(
    fake: FakeTelegram, commands: FakeCommands
) -> None:
    """Callback queries, channel posts, edited messages and inline queries are never served."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_callback_query(OWNER, OWNER, "press")
        fake.push_channel_post(CHANNEL, "/usage")
        fake.push_edited_message(OWNER, OWNER, "/usage")
        fake.push_inline_query(OWNER, "usage")
        fake.push_callback_query(STRANGER, STRANGER, "press")
        fake.push_message(OWNER, OWNER, "/usage sentinel")
        await fake.wait_for_call("sendMessage")
        await asyncio.sleep(0.1)  # let any stray handler finish before looking for silence
    assert [c.params["chat_id"] for c in fake.calls_of("sendMessage")] == [OWNER]
    assert fake.calls_of("answerCallbackQuery") == []
    assert [r.args for r in commands.requests] == [("sentinel",)]


async def test_empty_allow_lists_serve_nobody(
    fake: FakeTelegram, commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """With both allow-lists empty nobody is served, and a warning says so at start."""
    caplog.set_level(logging.INFO, logger="capbot")
    settings = settings_for(fake, allowed_chat_ids=frozenset(), allowed_user_ids=frozenset())
    async with running(make_bot(settings, commands)):
        fake.push_message(OWNER, OWNER, "/usage")
        await wait_until(lambda: "chat_id=111 user_id=111" in caplog.text)
    assert commands.requests == []
    assert fake.calls_of("sendMessage") == []
    assert any(
        r.levelno == logging.WARNING and "nobody will be served" in r.getMessage()
        for r in caplog.records
    )


async def test_progress_edits_one_message(fake: FakeTelegram, commands: FakeCommands) -> None:
    """Progress lines go into one message that is edited (never to the same text), then the
    final text replaces it and the chart follows as a photo."""
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/speedtest")
        await fake.wait_for_call("sendPhoto")
    [first] = fake.calls_of("sendMessage")
    assert first.params["text"] == "Testing latency…"
    edits = fake.calls_of("editMessageText")
    assert edits, "progress must edit the first message"
    message_ids = {c.params["message_id"] for c in edits}
    assert len(message_ids) == 1
    shown = [first.params["text"]] + [c.params["text"] for c in edits]
    assert all(a != b for a, b in itertools.pairwise(shown))  # no no-op edits
    assert shown[-1] == FINAL_SPEED
    assert "Download 93.1 Mbit/s" in shown
    [photo] = fake.calls_of("sendPhoto")
    assert photo.files["photo"][1] == PNG
    assert "caption" not in photo.params
    assert photo.at_s >= edits[-1].at_s


async def test_deleted_progress_message_gets_a_fresh_final_message(
    fake: FakeTelegram, commands: FakeCommands
) -> None:
    """If the progress message can no longer be edited, the final text is sent afresh."""
    fake.fail_next("editMessageText", 10, error_code=400, description="Message to edit not found")
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/speedtest")
        await fake.wait_for_call("sendPhoto")
    assert [c.params["text"] for c in fake.calls_of("sendMessage")] == ["Testing latency…"]
    [photo] = fake.calls_of("sendPhoto")
    assert photo.params["caption"] == FINAL_SPEED  # the answer still arrives, with the chart


def test_empty_token_is_a_config_error(commands: FakeCommands) -> None:
    """An empty token is refused at construction, naming the setting."""
    with pytest.raises(ConfigError, match=r"telegram\.token"):
        TelegramBot(TelegramSettings(token=" "), commands)


# PTB's own RetryAfter constructor emits this deprecation; nothing in capbot touches it.
@pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")
async def test_429_is_waited_out_and_retried(fake: FakeTelegram, commands: FakeCommands) -> None:
    """A 429 with retry_after on sendMessage is retried after the wait and the message arrives."""
    fake.inject_429("sendMessage", count=1, retry_after=1)
    async with running(make_bot(settings_for(fake), commands)):
        fake.push_message(OWNER, OWNER, "/usage")
        [sent] = await fake.wait_for_call("sendMessage")
    [rejected] = [c for c in fake.calls if c.method == "sendMessage" and c.status == 429]
    assert sent.params["text"] == rejected.params["text"] == "Used 12.3 GB"
    assert sent.at_s - rejected.at_s >= 1.0


async def test_commands_are_registered(fake: FakeTelegram, commands: FakeCommands) -> None:
    """setMyCommands gets the handler's command list, minus names Telegram would refuse."""
    async with running(make_bot(settings_for(fake), commands)):
        pass
    assert fake.commands == [
        [
            {"command": "usage", "description": "Data used this cycle"},
            {"command": "chart", "description": "Usage chart"},
            {"command": "speedtest", "description": "Run a speed test"},
            {"command": "help", "description": "Show the commands"},
        ]
    ]
    order = [c.method for c in fake.calls if c.method != "getUpdates"]
    assert order[:3] == ["getMe", "setMyCommands", "deleteWebhook"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_server_down_at_start_then_up(
    commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """With the API unreachable the bot retries with short warnings, then connects and serves."""
    caplog.set_level(logging.WARNING, logger="capbot")
    port = free_port()
    server = FakeTelegram(TOKEN)
    settings = TelegramSettings(
        token=TOKEN,
        allowed_user_ids=frozenset({OWNER}),
        api_base_url=f"http://127.0.0.1:{port}/bot",
        file_base_url=f"http://127.0.0.1:{port}/file/bot",
        poll_timeout_s=1.0,
    )
    bot = make_bot(settings, commands)
    try:
        async with running(bot, wait_ready=False):
            unreachable = "Telegram unreachable"
            await wait_until(lambda: caplog.text.count(unreachable) >= 3)
            assert not bot.ready
            await server.start(port)
            await wait_until(lambda: bot.ready)
            server.push_message(OWNER, OWNER, "/usage")
            [sent] = await server.wait_for_call("sendMessage")
            assert sent.params["text"] == "Used 12.3 GB"
    finally:
        await server.stop()
    warnings = [r for r in caplog.records if unreachable in r.getMessage()]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)


async def test_network_drop_while_polling_recovers(
    commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """When the API goes away while polling, one warning is logged and serving resumes when it
    comes back on the same address."""
    caplog.set_level(logging.WARNING, logger="capbot")
    server = FakeTelegram(TOKEN)
    await server.start()
    bot = make_bot(settings_for(server), commands)
    try:
        async with running(bot):
            await server.wait_for_call("getUpdates")
            port = server.port
            await server.stop()
            await wait_until(lambda: "Telegram polling failed" in caplog.text)
            await server.start(port)
            server.push_message(OWNER, OWNER, "/usage back")
            [sent] = await server.wait_for_call("sendMessage", timeout_s=10)
            assert sent.params["text"] == "Used 12.3 GB back"
    finally:
        await server.stop()
    failures = [r for r in caplog.records if "polling failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None


async def test_stop_during_start_up_returns_promptly(commands: FakeCommands) -> None:
    """A stop while getMe hangs on a silent server ends run() at once, not after the timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = TelegramSettings(
        token=TOKEN,
        allowed_user_ids=frozenset({OWNER}),
        api_base_url=f"http://127.0.0.1:{port}/bot",
        file_base_url=f"http://127.0.0.1:{port}/file/bot",
    )
    bot = make_bot(settings, commands)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        await wait_until(lambda: bool(accepted))
        started_s = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 2)
        assert time.monotonic() - started_s < 1.0
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_token_never_logged(
    fake: FakeTelegram, commands: FakeCommands, caplog: pytest.LogCaptureFixture
) -> None:
    """Across a session with a rejected token, a failed send, a polling error and an alert,
    nothing logged at any level contains the token."""
    caplog.set_level(logging.DEBUG)
    fake.fail_next("getMe", 1, error_code=401, description="Unauthorized")
    bot = make_bot(settings_for(fake), commands)
    async with running(bot):
        fake.fail_next("sendMessage", 1, error_code=500, description="Internal Server Error")
        fake.push_message(OWNER, OWNER, "/usage lost")
        await fake.wait_for(lambda calls: any(c.status == 500 for c in calls))
        fake.fail_next("getUpdates", 1, error_code=502, description="Bad Gateway")
        await fake.wait_for(lambda calls: any(c.status == 502 for c in calls))
        fake.push_message(OWNER, OWNER, "/chart")
        await fake.wait_for_call("sendPhoto")
        await bot.send_alert(OWNER, "Cap at 90%", None)
        await fake.wait_for_call("sendMessage")
    formatter = logging.Formatter("%(name)s %(message)s")
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    assert "rejected the bot token" in logged  # the 401 path really ran
    assert "Calling Bot API endpoint" in logged  # PTB's DEBUG logs were captured
    assert "bot<token>" in logged  # PTB's own "Set Bot API URL" line, redacted
    assert TOKEN_SECRET not in logged
    assert TOKEN not in logged


async def test_send_alert_delivers_text_and_photo(
    fake: FakeTelegram, commands: FakeCommands
) -> None:
    """An alert with a chart is one captioned photo; a long one is a message plus the photo."""
    bot = make_bot(settings_for(fake), commands)
    async with running(bot):
        await bot.send_alert(OWNER, "Cap at 90% <b>&", PNG)
        await bot.send_alert(GROUP, "L" * 2000, PNG)
        await bot.send_alert(GROUP, "Throttled: 2.1 Mbit/s", None)
    photos = fake.calls_of("sendPhoto")
    assert [(c.params["chat_id"], c.params.get("caption")) for c in photos] == [
        (OWNER, "Cap at 90% <b>&"),  # plain text: nothing escaped or parsed
        (GROUP, None),
    ]
    assert all(c.files["photo"][1] == PNG for c in photos)
    assert [c.params["text"] for c in messages_to(fake, GROUP)] == [
        "L" * 2000,
        "Throttled: 2.1 Mbit/s",
    ]
    assert all("parse_mode" not in c.params for c in fake.calls)


async def test_send_alert_failures_raise_notify_error(
    fake: FakeTelegram, commands: FakeCommands
) -> None:
    """send_alert raises NotifyError when not connected and when Telegram refuses the send."""
    bot = make_bot(settings_for(fake), commands)
    with pytest.raises(NotifyError, match="not connected"):
        await bot.send_alert(OWNER, "hello", None)
    async with running(bot):
        fake.fail_next("sendMessage", 1, error_code=403, description="Forbidden: bot was blocked")
        with pytest.raises(NotifyError, match="Forbidden"):
            await bot.send_alert(OWNER, "hello", None)


async def test_sends_to_one_chat_are_paced(fake: FakeTelegram, commands: FakeCommands) -> None:
    """Sends to one private chat are spaced by the per-chat rate instead of bursting."""
    bot = make_bot(settings_for(fake), commands, per_chat_rate_per_s=5.0, per_chat_burst=1)
    async with running(bot):
        await asyncio.gather(*(bot.send_alert(OWNER, f"alert {i}", None) for i in range(4)))
    sent = messages_to(fake, OWNER)
    assert len(sent) == 4
    assert sent[-1].at_s - sent[0].at_s >= 0.55  # 3 gaps of 1/5 s, minus scheduling slack
