"""The Discord bot driven through real discord.py against a fake Discord on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import discord
import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from capbot.bots.discord import (
    NOT_ALLOWED_TEXT,
    DiscordBot,
    DiscordSettings,
    is_allowed,
    split_message,
)
from capbot.core.model import CommandRequest, Progress, Reply
from capbot.errors import NotifyError
from tests.fake_discord import FakeDiscord, RecordedCall

TOKEN = "MTIz.fake-discord.s3cr3t-token"
GUILD_ID = 424_242
CHANNEL_ID = 777_001
ALERT_CHANNEL_ID = 777_002
ALLOWED_USER_ID = 1001
STRANGER_ID = 2002
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

SETTINGS = DiscordSettings(
    token=TOKEN,
    guild_ids=(GUILD_ID,),
    allowed_user_ids=frozenset({ALLOWED_USER_ID}),
    alert_channel_ids=(ALERT_CHANNEL_ID,),
)


class FakeCommands:
    """A command table: /usage answers with a chart, /speedtest reports progress and waits."""

    def __init__(self) -> None:
        self.requests: list[CommandRequest] = []
        self.release = asyncio.Event()

    def command_list(self) -> list[tuple[str, str]]:
        return [("usage", "Data used this billing cycle"), ("speedtest", "Run a speed test now")]

    async def handle(self, request: CommandRequest, progress: Progress) -> Reply:
        self.requests.append(request)
        if request.name == "speedtest":
            await progress("measuring download…")
            await self.release.wait()
            await progress("measuring upload…")
            return Reply(text="down 94.1 Mbit/s, up 9.8 Mbit/s")
        return Reply(text=f"usage {' '.join(request.args)}: 12.3 GB", png=PNG, filename="usage.png")


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A running fake Discord with discord.py pointed at it."""
    server = FakeDiscord(token=TOKEN, guild_ids=(GUILD_ID,))
    await server.start()
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(server.gateway_url)
    )
    yield server
    await server.close()


@asynccontextmanager
async def running(bot: DiscordBot, *, ready: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run the bot until the block ends, then check that it stops promptly."""
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        if ready:
            await wait_ready(bot, task)
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, timeout=5)


async def wait_ready(bot: DiscordBot, task: asyncio.Task[None] | None = None) -> None:
    """Wait until the bot is connected (discord.py offers no event we could await from here)."""
    async with asyncio.timeout(10):
        while not bot.ready:
            assert task is None or not task.done(), task
            await asyncio.sleep(0.02)


def make_bot(
    commands: FakeCommands, settings: DiscordSettings = SETTINGS, **kwargs: float
) -> DiscordBot:
    options: dict[str, float] = {"guild_ready_timeout_s": 0.05, "retry_initial_s": 0.01}
    options.update(kwargs)
    return DiscordBot(settings, commands, **options)


def webhook_posts(fake: FakeDiscord, token: str) -> list[RecordedCall]:
    """Follow-up messages sent for the interaction with this token."""
    return [
        c for c in fake.calls if c.method == "POST" and c.path == f"/webhooks/{fake.app_id}/{token}"
    ]


def is_followup(fake: FakeDiscord, token: str) -> Callable[[RecordedCall], bool]:
    """Matches the follow-up message(s) for the interaction with this token."""
    return lambda c: c.method == "POST" and c.path == f"/webhooks/{fake.app_id}/{token}"


async def test_slash_command_defers_then_follows_up_with_png(fake: FakeDiscord) -> None:
    """A slash command is deferred, becomes a CommandRequest, and is answered with the PNG."""
    commands = FakeCommands()
    async with running(make_bot(commands)):
        sent = await fake.inject_command(
            "usage", "week  all", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        followup = await fake.wait_for_call(is_followup(fake, sent.token))

    callback = fake.calls_to("POST", sent.callback_path())
    assert [c.json for c in callback] == [{"type": 5}]  # deferred, "capbot is thinking…"
    assert callback[0].query == {"with_response": "1"}
    assert fake.calls.index(callback[0]) < fake.calls.index(followup)
    assert commands.requests == [
        CommandRequest("usage", ("week", "all"), "discord", str(CHANNEL_ID), str(ALLOWED_USER_ID))
    ]
    assert followup.json["content"] == "usage week all: 12.3 GB"
    assert followup.json["allowed_mentions"] == {"parse": []}
    assert [(f.filename, f.data) for f in followup.files] == [("usage.png", PNG)]


async def test_slow_command_edits_progress_then_follows_up(fake: FakeDiscord) -> None:
    """A slow command is deferred, progress edits the original response, the result follows up."""
    commands = FakeCommands()
    async with running(make_bot(commands, progress_interval_s=0.0)):
        sent = await fake.inject_command(
            "speedtest", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        original = f"/webhooks/{fake.app_id}/{sent.token}/messages/@original"
        first = await fake.wait_for_call(lambda c: c.method == "PATCH" and c.path == original)
        assert first.json["content"] == "measuring download…"
        assert fake.calls_to("POST", sent.callback_path())[0].json == {"type": 5}
        assert webhook_posts(fake, sent.token) == []  # still running: no result yet
        commands.release.set()
        followup = await fake.wait_for_call(is_followup(fake, sent.token))

    edits = [c.json["content"] for c in fake.calls_to("PATCH", original)]
    assert edits == ["measuring download…", "measuring upload…"]
    assert followup.json["content"] == "down 94.1 Mbit/s, up 9.8 Mbit/s"
    assert followup.files == ()
    assert commands.requests[0].args == ()


async def test_progress_edits_are_throttled(fake: FakeDiscord) -> None:
    """Progress lines closer together than the interval are dropped, not queued behind Discord."""
    commands = FakeCommands()
    commands.release.set()
    async with running(make_bot(commands, progress_interval_s=60.0)):
        sent = await fake.inject_command(
            "speedtest", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_for_call(is_followup(fake, sent.token))

    original = f"/webhooks/{fake.app_id}/{sent.token}/messages/@original"
    assert [c.json["content"] for c in fake.calls_to("PATCH", original)] == ["measuring download…"]


async def test_user_not_on_allow_list_is_refused(
    fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger gets an ephemeral refusal, logged with the ids; the handler never runs."""
    commands = FakeCommands()
    caplog.set_level(logging.INFO, logger="capbot.bots.discord")
    async with running(make_bot(commands)):
        sent = await fake.inject_command(
            "usage", "week", user_id=STRANGER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        refusal = await fake.wait_for_call(lambda c: c.path == sent.callback_path())
        # An allowed command sent afterwards proves the refusal was fully processed first.
        after = await fake.inject_command(
            "usage", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_for_call(is_followup(fake, after.token))

    assert refusal.json["type"] == 4  # an immediate message, not a defer
    assert refusal.json["data"]["content"] == NOT_ALLOWED_TEXT
    assert refusal.json["data"]["flags"] == 64  # ephemeral: only the stranger sees it
    assert webhook_posts(fake, sent.token) == []
    assert [r.user_id for r in commands.requests] == [str(ALLOWED_USER_ID)]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == [
        f"Discord: refused /usage from user {STRANGER_ID} (guild {GUILD_ID}, "
        f"channel {CHANNEL_ID}): not on the allow-list"
    ]


async def test_guild_and_channel_allow_lists_admit_everyone_there(fake: FakeDiscord) -> None:
    """Allowing a channel admits any user in it (a DM here); allowing a guild admits its members."""
    commands = FakeCommands()
    settings = replace(
        SETTINGS,
        allowed_user_ids=frozenset(),
        allowed_guild_ids=frozenset({GUILD_ID}),
        allowed_channel_ids=frozenset({CHANNEL_ID + 1}),
    )
    async with running(make_bot(commands, settings)):
        in_guild = await fake.inject_command(
            "usage", user_id=STRANGER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        in_dm = await fake.inject_command(
            "usage", user_id=STRANGER_ID + 1, channel_id=CHANNEL_ID + 1
        )
        for sent in (in_guild, in_dm):
            await fake.wait_for_call(is_followup(fake, sent.token))

    assert sorted((r.user_id, r.chat_id) for r in commands.requests) == [
        (str(STRANGER_ID), str(CHANNEL_ID)),
        (str(STRANGER_ID + 1), str(CHANNEL_ID + 1)),
    ]


async def test_commands_are_synced_to_the_configured_guild(fake: FakeDiscord) -> None:
    """Each command becomes a guild slash command with one optional string option `args`."""
    async with running(make_bot(FakeCommands())):
        pass

    puts = [c for c in fake.calls if c.method == "PUT"]
    assert [c.path for c in puts] == [f"/applications/{fake.app_id}/guilds/{GUILD_ID}/commands"]
    synced = {c["name"]: c for c in puts[0].json}
    assert sorted(synced) == ["speedtest", "usage"]
    assert synced["usage"]["description"] == "Data used this billing cycle"
    options = synced["usage"]["options"]
    assert [(o["name"], o["type"], o.get("required", False)) for o in options] == [
        ("args", 3, False)
    ]
    assert fake.identifies[0]["intents"] == discord.Intents(guilds=True).value


async def test_commands_are_synced_globally_without_guilds(fake: FakeDiscord) -> None:
    """With no guild configured the commands are registered globally."""
    async with running(make_bot(FakeCommands(), replace(SETTINGS, guild_ids=()))):
        pass
    puts = [c for c in fake.calls if c.method == "PUT"]
    assert [c.path for c in puts] == [f"/applications/{fake.app_id}/commands"]
    assert sorted(c["name"] for c in puts[0].json) == ["speedtest", "usage"]


class OddCommands(FakeCommands):
    """/usage answers with a reply too long for one message; /speedtest raises."""

    async def handle(self, request: CommandRequest, progress: Progress) -> Reply:
        self.requests.append(request)
        if request.name == "speedtest":
            raise RuntimeError("probe exploded")
        return Reply(text=("x" * 99 + "\n") * 45, png=PNG)


async def test_long_replies_are_split_and_failures_answered(fake: FakeDiscord) -> None:
    """A 4500-char reply goes out as three follow-ups (PNG on the last); a crash gets an apology."""
    async with running(make_bot(OddCommands())):
        long = await fake.inject_command(
            "usage", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        boom = await fake.inject_command(
            "speedtest", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_until(lambda: len(webhook_posts(fake, long.token)) == 3)
        apology = await fake.wait_for_call(is_followup(fake, boom.token))

    posts = webhook_posts(fake, long.token)
    assert [len(p.json["content"]) for p in posts] == [2000, 2000, 500]
    assert [len(p.files) for p in posts] == [0, 0, 1]
    assert apology.json["content"] == "Sorry, /speedtest failed unexpectedly; see the log."


async def test_send_alert_posts_text_and_chart_to_channel(fake: FakeDiscord) -> None:
    """send_alert posts the text and the PNG attachment to the channel through the REST API."""
    bot = make_bot(FakeCommands())
    async with running(bot):
        await bot.send_alert(ALERT_CHANNEL_ID, "Throttled: 3.1 Mbit/s", PNG)
        await bot.send_alert(ALERT_CHANNEL_ID, "Recovered", None)

    posts = fake.calls_to("POST", f"/channels/{ALERT_CHANNEL_ID}/messages")
    assert [p.json["content"] for p in posts] == ["Throttled: 3.1 Mbit/s", "Recovered"]
    assert [(f.filename, f.data) for f in posts[0].files] == [("chart.png", PNG)]
    assert posts[1].files == ()
    assert all(p.authorized for p in posts)


async def test_send_alert_failures_raise_notify_error(fake: FakeDiscord) -> None:
    """Alerts raise NotifyError when the bot is not connected or Discord refuses the channel."""
    fake.forbidden_channels.add(ALERT_CHANNEL_ID)
    bot = make_bot(FakeCommands())
    with pytest.raises(NotifyError, match="not connected"):
        await bot.send_alert(ALERT_CHANNEL_ID, "hello", None)
    async with running(bot):
        with pytest.raises(NotifyError, match="Forbidden"):
            await bot.send_alert(ALERT_CHANNEL_ID, "hello", PNG)
    with pytest.raises(NotifyError, match="not connected"):
        await bot.send_alert(ALERT_CHANNEL_ID, "hello", None)


async def test_login_outage_is_retried_with_backoff(fake: FakeDiscord) -> None:
    """A failed login (Discord answering 503) is logged and retried until the bot connects."""
    fake.fail_logins = 2
    async with running(make_bot(FakeCommands())):
        pass
    assert len(fake.calls_to("GET", "/users/@me")) == 3
    assert len([c for c in fake.calls if c.method == "PUT"]) == 1  # synced once, after login


async def test_gateway_drop_resumes_and_commands_still_work(fake: FakeDiscord) -> None:
    """When Discord drops the gateway, discord.py resumes the session and commands keep working."""
    commands = FakeCommands()
    async with running(make_bot(commands)):
        await fake.drop_gateway()
        await fake.wait_until(lambda: len(fake.resumes) == 1 and fake.connected() == 1)
        sent = await fake.inject_command(
            "usage", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_for_call(is_followup(fake, sent.token))
    assert len(fake.identifies) == 1
    assert len(commands.requests) == 1


async def test_fatal_gateway_close_restarts_client_without_resync(fake: FakeDiscord) -> None:
    """A close discord.py won't handle (4004) makes run() log in afresh, without re-syncing."""
    commands = FakeCommands()
    bot = make_bot(commands)
    async with running(bot):
        await fake.drop_gateway(code=4004)
        await fake.wait_until(lambda: len(fake.identifies) == 2 and fake.connected() == 1)
        await wait_ready(bot)
        sent = await fake.inject_command(
            "usage", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_for_call(is_followup(fake, sent.token))
    assert len(fake.calls_to("GET", "/users/@me")) == 2
    assert len([c for c in fake.calls if c.method == "PUT"]) == 1
    assert len(commands.requests) == 1


async def test_cancelling_run_closes_the_client(fake: FakeDiscord) -> None:
    """Cancelling run() (a TaskGroup shutting down) ends it promptly and disconnects."""
    bot = make_bot(FakeCommands())
    async with running(bot) as task:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        assert not bot.ready
        await fake.wait_until(lambda: fake.connected() == 0)


async def test_bad_token_backs_off_and_stop_ends_run(
    fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected token is logged (without the token) and run() still ends promptly on stop."""
    caplog.set_level(logging.DEBUG)
    settings = replace(SETTINGS, token="wrong-" + TOKEN)
    async with running(make_bot(FakeCommands(), settings, retry_max_s=600.0), ready=False):
        await fake.wait_for_call(lambda c: c.path == "/users/@me")
        await asyncio.sleep(0.1)
    assert len(fake.calls_to("GET", "/users/@me")) == 1  # waits the long backoff, no hammering
    assert "rejected the bot token" in caplog.text
    assert TOKEN not in caplog.text


async def test_token_never_logged(fake: FakeDiscord, caplog: pytest.LogCaptureFixture) -> None:
    """Neither capbot nor discord.py logs the token, even at DEBUG, through a whole session."""
    caplog.set_level(logging.DEBUG)
    commands = FakeCommands()
    bot = make_bot(commands)
    async with running(bot):
        sent = await fake.inject_command(
            "usage", user_id=ALLOWED_USER_ID, channel_id=CHANNEL_ID, guild_id=GUILD_ID
        )
        await fake.wait_for_call(is_followup(fake, sent.token))
        await bot.send_alert(ALERT_CHANNEL_ID, "alert", PNG)
    assert fake.identifies[0]["token"] == TOKEN
    assert "Discord: connected as" in caplog.text
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(SETTINGS)


@pytest.mark.parametrize(
    ("users", "guilds", "channels", "user", "guild", "channel", "allowed"),
    [
        ((), (), (), 1, 10, 100, False),  # all empty: nobody
        ((1,), (), (), 1, None, 100, True),  # listed user, even in a DM
        ((1,), (), (), 2, 10, 100, False),
        ((), (10,), (), 2, 10, 100, True),  # anyone in a listed guild
        ((), (10,), (), 2, None, 100, False),  # a DM has no guild
        ((), (), (100,), 3, 11, 100, True),  # anyone in a listed channel
        ((), (), (100,), 3, 11, None, False),
    ],
)
def test_is_allowed_table(
    users: tuple[int, ...],
    guilds: tuple[int, ...],
    channels: tuple[int, ...],
    user: int,
    guild: int | None,
    channel: int | None,
    allowed: bool,
) -> None:
    """The allow-list admits a user, guild or channel match and nobody when all lists are empty."""
    settings = DiscordSettings(
        token="t",
        allowed_user_ids=frozenset(users),
        allowed_guild_ids=frozenset(guilds),
        allowed_channel_ids=frozenset(channels),
    )
    assert is_allowed(settings, user_id=user, guild_id=guild, channel_id=channel) is allowed


@given(st.text(alphabet="ab \n", max_size=300), st.integers(min_value=1, max_value=40))
def test_split_message_keeps_text_and_limit(text: str, limit: int) -> None:
    """Split pieces are non-empty, within the limit, and join back to the original text."""
    pieces = split_message(text, limit)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= limit for p in pieces)


def test_split_message_prefers_line_ends() -> None:
    """A long reply is cut after a newline rather than mid-line when one is in reach."""
    assert split_message("aaaa\nbbbb\ncc", 8) == ["aaaa\n", "bbbb\ncc"]


def test_import_does_not_load_discord() -> None:
    """Importing the bot module leaves discord.py (about 32 MiB of RSS) unloaded."""
    code = "import sys, capbot.bots.discord; print('discord' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
