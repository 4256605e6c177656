"""Discord front-end: slash commands in, text + PNG replies out, alerts posted to channels.

discord.py costs about 32 MiB of RSS, so it is imported only inside the methods that run when
Discord is configured; importing this module stays cheap.

Allow-list semantics (enforced in the command tree's ``interaction_check``, because the
``default_permissions`` hint on slash commands can be changed by any server admin): an
interaction is allowed when its user id is in ``allowed_user_ids``, OR its guild id is in
``allowed_guild_ids`` (everyone in that server), OR its channel id is in
``allowed_channel_ids`` (everyone who can see that channel; a DM counts as a channel). With all
three sets empty nobody is allowed. A refused user gets an ephemeral "not allowed" reply (only
they see it, and Discord does not show "the application did not respond"); the refusal is logged
at INFO with the ids and the command handler is never called.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capbot.core.model import CommandHandler, CommandRequest, Progress, Reply
from capbot.errors import CapbotError, NotifyError

if TYPE_CHECKING:
    import discord
    from discord import app_commands

log = logging.getLogger(__name__)

MESSAGE_LIMIT_CHARS = 2000  # Discord's limit on message content
DESCRIPTION_LIMIT_CHARS = 100  # Discord's limit on a slash command's description
NOT_ALLOWED_TEXT = "Sorry, you are not allowed to use this bot."
ARGS_DESCRIPTION = "Arguments, e.g. week"


@dataclass(frozen=True)
class DiscordSettings:
    """How to reach Discord and who may use the bot (see the module docstring for the rules)."""

    token: str = field(repr=False)  # never in a repr, so never in a log line
    guild_ids: tuple[int, ...] = ()  # sync slash commands to these guilds (fast); empty = global
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_guild_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    alert_channel_ids: tuple[int, ...] = ()


def is_allowed(
    settings: DiscordSettings, *, user_id: int, guild_id: int | None, channel_id: int | None
) -> bool:
    """True when any of the user, guild or channel is on its allow-list; all empty = nobody."""
    return (
        user_id in settings.allowed_user_ids
        or (guild_id is not None and guild_id in settings.allowed_guild_ids)
        or (channel_id is not None and channel_id in settings.allowed_channel_ids)
    )


def split_message(text: str, limit_chars: int = MESSAGE_LIMIT_CHARS) -> list[str]:
    """Cut text into pieces of at most limit_chars, preferring line ends; joined they give text."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit_chars:
        cut = rest.rfind("\n", 0, limit_chars) + 1  # keep the newline with the earlier piece
        if cut <= 0:
            cut = limit_chars
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


class DiscordBot:
    """Runs a discord.py client inside capbot's loop and turns slash commands into requests."""

    def __init__(
        self,
        settings: DiscordSettings,
        commands: CommandHandler,
        *,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 300.0,
        progress_interval_s: float = 1.0,
        send_timeout_s: float = 60.0,
        guild_ready_timeout_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._commands = commands
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._progress_interval_s = progress_interval_s
        self._send_timeout_s = send_timeout_s
        # READY waits this long after the last GUILD_CREATE (discord.py's default is 2 s).
        self._guild_ready_timeout_s = guild_ready_timeout_s
        self._client: Any = None  # the discord.Client of the current attempt
        self._logged_in = False
        self._was_ready = False
        self._synced = False

    @property
    def ready(self) -> bool:
        """True while connected to the gateway and able to receive commands."""
        client = self._client
        return client is not None and bool(client.is_ready())

    # -- life cycle -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, retrying network trouble with capped backoff."""
        import aiohttp
        import discord

        retryable = (discord.DiscordException, aiohttp.ClientError, OSError, TimeoutError)
        delay_s = self._retry_initial_s
        while not stop.is_set():
            self._was_ready = False
            try:
                await self._run_once(stop)
            except discord.LoginFailure:
                # A bad token will not heal by itself; check rarely so the log stays readable.
                log.error("Discord rejected the bot token (HTTP 401); check discord.token")
                delay_s = self._retry_max_s
            except retryable as exc:
                log.warning("Discord connection failed: %s: %s", type(exc).__name__, exc)
            else:
                if stop.is_set():
                    break
                log.warning("Discord connection ended")
            if self._was_ready:
                delay_s = self._retry_initial_s  # it worked for a while: start backing off afresh
            log.info("Discord: reconnecting in %.1f s", delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay_s)
            delay_s = min(delay_s * 2, self._retry_max_s)

    async def _run_once(self, stop: asyncio.Event) -> None:
        """One client from login to close; returns when stopped, raises when it failed."""
        client = self._build_client()
        self._client = client
        start = asyncio.ensure_future(client.start(self._settings.token))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            self._logged_in = False
            await self._close(client, start)
            self._client = None
        if not stop.is_set():
            start.result()  # re-raise why the client stopped

    async def _close(self, client: Any, start: asyncio.Future[None]) -> None:
        """Close the client (which ends ``start``); cancel it if it lingers."""
        try:
            await asyncio.wait_for(client.close(), timeout=5.0)
        except Exception as exc:  # closing is best effort; the client is discarded anyway
            log.debug("Discord: error while closing the client: %r", exc)
        if not start.done():
            await asyncio.wait({start}, timeout=5.0)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        elif not start.cancelled() and start.exception() is not None:
            log.debug("Discord: client ended with %r", start.exception())

    def _build_client(self) -> Any:
        """A discord.Client with minimal intents and caches, plus our command tree."""
        import discord
        from discord import app_commands

        bot = self

        class _Tree(app_commands.CommandTree):
            async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
                return await bot._interaction_allowed(interaction)

        class _Client(discord.Client):
            async def setup_hook(self) -> None:
                await bot._on_login(self, tree)

            async def on_ready(self) -> None:
                bot._on_ready(self)

        # Interactions need no intents; GUILDS alone keeps discord.py's guild state sane (it
        # warns without it) and costs little for the handful of servers a personal bot is in.
        intents = discord.Intents.none()
        intents.guilds = True
        # We never join voice; don't warn about its missing optional dependencies.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        client = _Client(
            intents=intents,
            guild_ready_timeout=self._guild_ready_timeout_s,
            max_messages=None,  # no message cache: we never read messages
            member_cache_flags=discord.MemberCacheFlags.none(),
            chunk_guilds_at_startup=False,
            allowed_mentions=discord.AllowedMentions.none(),  # echoed args must not ping anyone
            max_ratelimit_timeout=30.0,  # fail (and retry later) rather than sleep for hours
        )
        tree = _Tree(client)
        for name, description in self._commands.command_list():
            try:
                tree.add_command(self._make_command(name, description))
            except (ValueError, TypeError, app_commands.AppCommandError) as exc:
                log.warning("Discord: skipping command %r: %s", name, exc)
        for guild_id in self._settings.guild_ids:
            # Guild commands appear at once; global ones can take up to an hour to propagate.
            tree.copy_global_to(guild=discord.Object(id=guild_id))
        return client

    async def _on_login(self, client: discord.Client, tree: app_commands.CommandTree) -> None:
        """Runs after login, before the gateway: sync the slash commands once per process.

        Syncing again on every reconnect would spend Discord's daily command-update quota.
        """
        import discord

        self._logged_in = True
        if self._synced:
            return
        if not self._settings.guild_ids:
            synced = await tree.sync()
            log.info("Discord: %d slash commands synced globally (may take an hour)", len(synced))
        for guild_id in self._settings.guild_ids:
            try:
                synced = await tree.sync(guild=discord.Object(id=guild_id))
            except discord.Forbidden as exc:
                log.error(
                    "Discord: cannot register commands in guild %s (bot invited without the "
                    "applications.commands scope?): %s",
                    guild_id,
                    exc,
                )
                continue
            log.info("Discord: %d slash commands synced to guild %s", len(synced), guild_id)
        self._synced = True

    def _on_ready(self, client: discord.Client) -> None:
        self._was_ready = True
        user = client.user
        log.info("Discord: connected as %s (id %s)", user, user.id if user else "?")

    # -- commands ---------------------------------------------------------------------------
    def _make_command(self, name: str, description: str) -> app_commands.Command[Any, Any, None]:
        """The slash command ``/name`` with one optional free-text ``args`` option."""
        from discord import app_commands

        @app_commands.describe(args=ARGS_DESCRIPTION)
        async def callback(interaction: discord.Interaction, args: str | None = None) -> None:
            await self._on_command(interaction, name, args)

        return app_commands.Command(
            name=name.lower(),  # Discord wants lower case; the handler still gets `name`
            description=description[:DESCRIPTION_LIMIT_CHARS] or name,
            callback=callback,
        )

    async def _interaction_allowed(self, interaction: discord.Interaction) -> bool:
        """The allow-list check; refused users get an ephemeral note and nothing else."""
        import discord

        user_id = interaction.user.id
        guild_id = interaction.guild_id
        channel_id = interaction.channel_id
        if is_allowed(self._settings, user_id=user_id, guild_id=guild_id, channel_id=channel_id):
            return True
        data: dict[str, Any] = dict(interaction.data or {})
        name = data.get("name", "?")
        log.info(
            "Discord: refused /%s from user %s (guild %s, channel %s): not on the allow-list",
            name,
            user_id,
            guild_id,
            channel_id,
        )
        if interaction.type is discord.InteractionType.application_command:
            try:
                await interaction.response.send_message(NOT_ALLOWED_TEXT, ephemeral=True)
            except _send_errors() as exc:
                log.debug("Discord: could not tell user %s they are refused: %r", user_id, exc)
        return False

    async def _on_command(
        self, interaction: discord.Interaction, name: str, args: str | None
    ) -> None:
        """Defer (the handler may take a while), run the handler, send the reply as follow-up."""
        channel_id = interaction.channel_id
        request = CommandRequest(
            name=name,
            args=tuple((args or "").split()),
            platform="discord",
            chat_id="" if channel_id is None else str(channel_id),
            user_id=str(interaction.user.id),
        )
        log.info("Discord: %s from user %s", " ".join(("/" + name, *request.args)), request.user_id)
        try:
            await interaction.response.defer(thinking=True)
        except _send_errors() as exc:
            # Discord allows 3 s to acknowledge; after that the interaction token is useless.
            log.warning("Discord: could not acknowledge /%s: %r", name, exc)
            return
        try:
            reply = await self._commands.handle(request, self._progress_for(interaction))
        except CapbotError as exc:
            log.warning("Discord: /%s failed: %s", name, exc)
            reply = Reply(text=f"Sorry, /{name} failed: {exc}")
        except Exception:
            log.exception("Discord: /%s raised unexpectedly", name)
            reply = Reply(text=f"Sorry, /{name} failed unexpectedly; see the log.")
        try:
            await self._send_reply(interaction, reply)
        except _send_errors() as exc:
            log.warning("Discord: could not send the reply to /%s: %r", name, exc)

    def _progress_for(self, interaction: discord.Interaction) -> Progress:
        """A progress callback that edits the deferred response, at most once per interval."""
        last_edit_s = float("-inf")

        async def progress(line: str) -> None:
            nonlocal last_edit_s
            now_s = time.monotonic()
            # Webhook edits are rate limited (about 5 per 5 s); a dropped line is soon
            # superseded by the next one or by the final reply.
            if now_s - last_edit_s < self._progress_interval_s:
                return
            last_edit_s = now_s
            try:
                await interaction.edit_original_response(content=line[:MESSAGE_LIMIT_CHARS])
            except _send_errors() as exc:
                log.debug("Discord: progress edit failed: %r", exc)

        return progress

    async def _send_reply(self, interaction: discord.Interaction, reply: Reply) -> None:
        """Follow-up message(s): text split at Discord's limit, the PNG on the last one."""
        for kwargs in _message_parts(reply.text, reply.png, reply.filename):
            await interaction.followup.send(**kwargs)

    # -- alerts -----------------------------------------------------------------------------
    async def send_alert(self, channel_id: int, text: str, png: bytes | None) -> None:
        """Post an alert (and its chart) to a channel; raises NotifyError when it can't."""
        client = self._client
        if client is None or not self._logged_in:
            raise NotifyError("Discord is not connected")
        channel = client.get_partial_messageable(channel_id)
        # RuntimeError: discord.py's HTTP session was closed mid-send by a reconnect.
        errors: tuple[type[Exception], ...] = (*_send_errors(), RuntimeError)
        try:
            async with asyncio.timeout(self._send_timeout_s):
                for kwargs in _message_parts(text, png, "chart.png"):
                    await channel.send(**kwargs)
        except errors as exc:
            raise NotifyError(f"Discord channel {channel_id}: {type(exc).__name__}: {exc}") from exc


def _message_parts(text: str, png: bytes | None, filename: str) -> list[dict[str, Any]]:
    """Keyword arguments for each message that carries ``text`` and ``png``."""
    import discord

    parts: list[dict[str, Any]] = [{"content": piece} for piece in split_message(text)]
    if png is not None:
        if not parts:
            parts.append({})
        parts[-1]["file"] = discord.File(io.BytesIO(png), filename=filename)
    return parts or [{"content": "(no output)"}]


def _send_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "Discord could not be reached or refused", not a bug of ours."""
    import aiohttp
    import discord

    return (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)
