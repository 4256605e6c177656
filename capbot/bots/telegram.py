"""Telegram front-end: turns allowed chat commands into CommandRequests and Replies back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capbot.core.model import CommandHandler, CommandRequest, Reply
from capbot.errors import ConfigError, NotifyError

if TYPE_CHECKING:
    # python-telegram-bot costs ~26 MiB; it is imported only when a bot is actually built, so
    # reading TelegramSettings (config) or importing this module stays cheap.
    from telegram import Bot, Update
    from telegram.ext import Application, BaseRateLimiter, ContextTypes

log = logging.getLogger(__name__)

MESSAGE_MAX_CHARS = 4096  # Telegram's cap, counted in UTF-16 code units
CAPTION_MAX_CHARS = 1024
_TRUNCATED_MARK = "\n…(truncated)"
_CHAT_ACTION_EVERY_S = 4.5  # Telegram shows an action for 5 s
_POLL_WARNING_EVERY_S = 600.0  # one warning per outage window, not one per PTB retry
_REFUSED_LOG_MEMORY = 1024  # distinct (chat, user) pairs logged at INFO before we forget
# Telegram: 1-32 characters, lowercase letters, digits and underscores; description 1-256.
_COMMAND_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_PACED_METHODS = frozenset(
    {"sendMessage", "sendPhoto", "sendDocument", "editMessageText", "editMessageCaption"}
)


@dataclass(frozen=True)
class TelegramSettings:
    """What the Telegram bot needs: the token, who may use it and where alerts go."""

    token: str
    allowed_chat_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    alert_chat_ids: tuple[int, ...] = ()
    api_base_url: str = "https://api.telegram.org/bot"  # PTB form, the token is appended
    file_base_url: str = "https://api.telegram.org/file/bot"
    poll_timeout_s: float = 10.0


def fit_text(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """Strip `text` and cut it to `limit` UTF-16 units (Telegram's measure), marking the cut."""
    text = text.strip()
    if _utf16_len(text) <= limit:
        return text
    budget = limit - _utf16_len(_TRUNCATED_MARK)
    used = 0
    end = 0
    for end, char in enumerate(text):  # noqa: B007 - `end` is the cut position
        used += 2 if ord(char) > 0xFFFF else 1
        if used > budget:
            break
    return text[:end].rstrip() + _TRUNCATED_MARK


def parse_command(text: str, bot_username: str | None) -> tuple[str, tuple[str, ...]] | None:
    """`/Name@Bot a b` -> ("name", ("a", "b")); None when not a command or meant for another bot."""
    parts = text.split()
    if not parts or not parts[0].startswith("/"):
        return None
    name, _, target = parts[0][1:].partition("@")
    if target and bot_username and target.lower() != bot_username.lower():
        return None
    if not name:
        return None
    return name.lower(), tuple(parts[1:])


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


SHUTDOWN_TIMEOUT_S = 5.0


class TelegramBot:
    """Serves capbot's commands over Telegram long polling and delivers alerts.

    Knows only the platform-neutral `CommandHandler`; every update from a chat or user that is
    not on the allow-list is dropped before any handler sees it.
    """

    def __init__(
        self,
        settings: TelegramSettings,
        commands: CommandHandler,
        *,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 300.0,
        per_chat_rate_per_s: float = 1.0,
        per_chat_burst: int = 3,
        rate_limit_retries: int = 3,
    ) -> None:
        if not settings.token.strip():
            raise ConfigError("telegram.token: empty")
        self._settings = settings
        self._commands = commands
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._per_chat_rate_per_s = per_chat_rate_per_s
        self._per_chat_burst = per_chat_burst
        self._rate_limit_retries = rate_limit_retries
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._refused_logged: set[tuple[int | None, int | None]] = set()
        self._last_poll_warning_s: float | None = None
        _quiet_http_loggers()

    @property
    def ready(self) -> bool:
        """True while connected and polling for commands."""
        return self._app is not None

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve commands until `stop` is set; network trouble is retried, never raised."""
        from telegram.error import InvalidToken, TelegramError

        if not self._settings.allowed_chat_ids and not self._settings.allowed_user_ids:
            log.warning(
                "Telegram: no allowed_chat_ids or allowed_user_ids configured; nobody will be "
                "served (refused updates are logged with their chat and user ids)"
            )
        delay_s = self._retry_initial_s
        while not stop.is_set():
            app = self._build_application()
            connected = False
            try:
                connected = await self._serve_until_stopped(app, stop)
            except InvalidToken:
                # PTB puts the token itself into this exception's message: never log it.
                delay_s = self._retry_max_s
                log.error("Telegram rejected the bot token; retrying in %.1f s", delay_s)
            except TelegramError as exc:
                log.warning(
                    "Telegram unreachable (%s); retrying in %.1f s", self._redact(exc), delay_s
                )
            finally:
                # Closes the HTTP clients even when initialize() failed half-way (PTB skips it).
                await app.bot.shutdown()
            if connected:
                delay_s = self._retry_initial_s
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = min(delay_s * 2, self._retry_max_s)

    async def _serve_until_stopped(
        self, app: Application[Any, Any, Any, Any, Any, Any], stop: asyncio.Event
    ) -> bool:
        """One connection attempt; True once polling started. Stop during start-up abandons it."""
        started = asyncio.Event()
        serving = asyncio.create_task(self._serve(app, stop, started))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                if started.is_set():
                    # Orderly shutdown runs inside _serve; a stuck long poll or handler must not
                    # hold the service's SIGTERM hostage, so it gets a bounded time.
                    await asyncio.wait({serving}, timeout=SHUTDOWN_TIMEOUT_S)
                    if not serving.done():
                        log.warning("Telegram: shutdown took too long; cancelling it")
                        serving.cancel()
                        await asyncio.wait({serving})
                else:
                    serving.cancel()
                    await asyncio.wait({serving})
            if not serving.cancelled():
                serving.result()  # re-raises a start-up failure
            return started.is_set()
        finally:
            stopping.cancel()
            if not serving.done():  # we ourselves are being cancelled
                serving.cancel()
                await asyncio.wait({serving})

    async def _serve(
        self,
        app: Application[Any, Any, Any, Any, Any, Any],
        stop: asyncio.Event,
        started: asyncio.Event,
    ) -> None:
        async with app:  # initialize (getMe) ... shutdown
            await self._register_commands(app.bot)
            try:
                await app.start()
                assert app.updater is not None
                await app.updater.start_polling(
                    timeout=max(0, round(self._settings.poll_timeout_s)),
                    # Fewer update kinds from the server; the gate still checks whatever comes.
                    allowed_updates=["message"],
                    error_callback=self._on_polling_error,
                )
                self._app = app
                started.set()
                log.info("Telegram: connected as @%s, polling for commands", app.bot.username)
                await stop.wait()
            finally:
                self._app = None
                if app.updater is not None and app.updater.running:
                    await app.updater.stop()
                if app.running:
                    await app.stop()

    def _build_application(self) -> Application[Any, Any, Any, Any, Any, Any]:
        from telegram import Update
        from telegram.ext import ApplicationBuilder, MessageHandler, TypeHandler, filters

        _guard_library_logs(self._settings.token)  # before build(): Bot() logs its URL
        app = (
            ApplicationBuilder()
            .token(self._settings.token)
            .base_url(self._settings.api_base_url)
            .base_file_url(self._settings.file_base_url)
            .rate_limiter(
                _make_rate_limiter(
                    self._per_chat_rate_per_s, self._per_chat_burst, self._rate_limit_retries
                )
            )
            # A /speedtest must not hold up a /usage; small to bound memory on a Pi.
            .concurrent_updates(4)
            .job_queue(None)
            .build()
        )
        app.add_handler(TypeHandler(Update, self._gate), group=-1)
        app.add_handler(
            MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, self._on_command)
        )
        app.add_error_handler(self._on_error)
        return app

    async def _register_commands(self, bot: Bot) -> None:
        from telegram import BotCommand
        from telegram.error import BadRequest

        commands = []
        for name, description in self._commands.command_list():
            if not (1 <= len(name) <= 32 and set(name) <= _COMMAND_NAME_CHARS):
                log.warning("Telegram: command %r is not a valid Telegram name; not listed", name)
                continue
            commands.append(BotCommand(name, (description.strip() or name)[:256]))
        try:
            await bot.set_my_commands(commands[:100])
        except BadRequest as exc:  # a bad list must not keep the bot offline
            log.warning("Telegram refused the command list: %s", self._redact(exc))

    # -- updates -------------------------------------------------------------------------------

    def is_allowed(self, chat_id: int | None, user_id: int | None) -> bool:
        """True when the chat or the user is on the allow-list (both empty: nobody)."""
        return (chat_id is not None and chat_id in self._settings.allowed_chat_ids) or (
            user_id is not None and user_id in self._settings.allowed_user_ids
        )

    async def _gate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Group -1: stop every update that is not a new message from an allowed chat or user."""
        from telegram.ext import ApplicationHandlerStop

        chat_id = update.effective_chat.id if update.effective_chat else None
        user_id = update.effective_user.id if update.effective_user else None
        if update.message is not None and self.is_allowed(chat_id, user_id):
            return
        key = (chat_id, user_id)
        # INFO once per pair so the owner can learn their ids; a spammer cannot flood the log.
        level = logging.DEBUG if key in self._refused_logged else logging.INFO
        if len(self._refused_logged) >= _REFUSED_LOG_MEMORY:
            self._refused_logged.clear()
        self._refused_logged.add(key)
        log.log(level, "Telegram: ignored an update from chat_id=%s user_id=%s", chat_id, user_id)
        raise ApplicationHandlerStop

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.text is None:
            return
        parsed = parse_command(message.text, context.bot.username)
        if parsed is None:
            return
        name, args = parsed
        user = message.from_user
        request = CommandRequest(
            name=name,
            args=args,
            platform="telegram",
            chat_id=str(message.chat_id),
            user_id=str(user.id) if user else "",
        )
        thread_id = message.message_thread_id if message.is_topic_message else None
        chat = _Chat(context.bot, message.chat_id, thread_id)
        live = _LiveMessage(chat)
        done = asyncio.Event()
        typing = asyncio.create_task(chat.keep_action("typing", done))
        try:
            reply = await self._commands.handle(request, live.update)
        except Exception:  # the handler promises not to raise; if it does, say so in the chat
            log.exception("Telegram: command /%s failed", name)
            reply = Reply(f"Sorry, /{name} failed; the details are in capbot's log.")
        finally:
            done.set()
            # An action already on the wire finishes first, so it cannot land after the reply
            # (Telegram would then show "typing" under the answer for 5 s).
            await typing
        await self._deliver(chat, reply, live)

    async def _deliver(self, chat: _Chat, reply: Reply, live: _LiveMessage | None) -> None:
        text = fit_text(reply.text)
        shown = live is not None and await live.finish(text)
        if reply.png is None:
            if not shown:
                await chat.send_text(text or "(no answer)")
            return
        caption: str | None = None
        if not shown:
            if _utf16_len(text) <= CAPTION_MAX_CHARS:
                caption = text or None  # one message: text and chart arrive (or fail) together
            else:
                await chat.send_text(text)
        await chat.action_once("upload_photo")
        await chat.send_photo(reply.png, reply.filename, caption)

    def _on_polling_error(self, exc: Exception) -> None:
        now_s = time.monotonic()
        last_s = self._last_poll_warning_s
        if last_s is None or now_s - last_s >= _POLL_WARNING_EVERY_S:
            self._last_poll_warning_s = now_s
            log.warning("Telegram polling failed (%s); retrying", self._redact(exc))
        else:
            log.debug("Telegram polling failed again (%s)", self._redact(exc))

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        from telegram.error import TelegramError

        exc = context.error
        if isinstance(exc, TelegramError):
            log.warning("Telegram: could not answer a command (%s)", self._redact(exc))
        elif exc is not None:
            log.error("Telegram: unexpected error while handling an update", exc_info=exc)

    # -- alerts --------------------------------------------------------------------------------

    async def send_alert(self, chat_id: int, text: str, png: bytes | None) -> None:
        """Deliver an alert (text, and the chart if any); raises NotifyError on any failure."""
        from telegram.error import TelegramError

        app = self._app
        if app is None:
            raise NotifyError("Telegram bot is not connected")
        try:
            await self._deliver(_Chat(app.bot, chat_id, None), Reply(text, png, "alert.png"), None)
        except TelegramError as exc:
            raise NotifyError(f"Telegram: {type(exc).__name__}: {self._redact(exc)}") from exc

    def _redact(self, exc: BaseException) -> str:
        return str(exc).replace(self._settings.token, "<token>")


class _Chat:
    """Sends to one chat (and forum topic); chat actions are best effort."""

    def __init__(self, bot: Bot, chat_id: int, thread_id: int | None) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.thread_id = thread_id

    async def send_text(self, text: str) -> int:
        message = await self.bot.send_message(self.chat_id, text, message_thread_id=self.thread_id)
        return message.message_id

    async def edit_text(self, message_id: int, text: str) -> None:
        await self.bot.edit_message_text(text, chat_id=self.chat_id, message_id=message_id)

    async def send_photo(self, png: bytes, filename: str, caption: str | None) -> None:
        await self.bot.send_photo(
            self.chat_id,
            png,
            caption=caption,
            filename=filename,
            message_thread_id=self.thread_id,
        )

    async def action_once(self, action: str) -> None:
        from telegram.error import TelegramError

        try:
            await self.bot.send_chat_action(self.chat_id, action, message_thread_id=self.thread_id)
        except TelegramError as exc:
            log.debug("Telegram: chat action failed: %s", type(exc).__name__)

    async def keep_action(self, action: str, done: asyncio.Event) -> None:
        """Show `action` until `done` is set (Telegram clears it after 5 s or at a message)."""
        while True:
            await self.action_once(action)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), _CHAT_ACTION_EVERY_S)
            if done.is_set():
                return


class _LiveMessage:
    """One message that progress lines edit in place.

    Sends run in a background task so a slow or rate-limited Telegram never stalls the command
    (a speed test keeps measuring); lines that arrive meanwhile collapse into the latest one.
    """

    def __init__(self, chat: _Chat) -> None:
        self._chat = chat
        self._latest: str | None = None
        self._shown: str | None = None
        self._message_id: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def update(self, line: str) -> None:
        """The `Progress` callback: show `line` (first call sends, later calls edit)."""
        self._latest = fit_text(line)
        if self._latest and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush_quietly())

    async def finish(self, text: str) -> bool:
        """Put the final text in the progress message; False when there is none to edit."""
        from telegram.error import BadRequest

        if self._task is not None:
            await self._task
        if self._message_id is None:
            return False
        self._latest = text
        try:
            await self._flush()
        except BadRequest as exc:  # e.g. the user deleted the message: send a fresh one
            log.debug("Telegram: final edit refused (%s)", exc)
            return False
        return True

    async def _flush_quietly(self) -> None:
        from telegram.error import TelegramError

        try:
            await self._flush()
        except TelegramError as exc:  # progress is best effort; the final reply still goes out
            log.debug("Telegram: progress update failed: %s", type(exc).__name__)

    async def _flush(self) -> None:
        from telegram.error import BadRequest

        while self._latest and self._latest != self._shown:
            text = self._latest
            if self._message_id is None:
                self._message_id = await self._chat.send_text(text)
            else:
                try:
                    await self._chat.edit_text(self._message_id, text)
                except BadRequest as exc:
                    if "not modified" not in str(exc).lower():
                        raise
            self._shown = text


def _make_rate_limiter(rate_per_s: float, burst: int, max_retries: int) -> BaseRateLimiter[int]:
    """AIORateLimiter (global limits, RetryAfter retries) plus ~1 msg/s per private chat.

    PTB's AIORateLimiter paces only groups (negative ids); Telegram also throttles a private chat
    at about one message per second, so sends and edits to one chat share a small bucket.
    """
    from aiolimiter import AsyncLimiter
    from telegram.ext import AIORateLimiter

    class _PerChatRateLimiter(AIORateLimiter):
        def __init__(self) -> None:
            super().__init__(max_retries=max_retries)
            self._chat_limiters: dict[int, AsyncLimiter] = {}

        async def process_request(
            self,
            callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[Any]]],
            args: Any,
            kwargs: dict[str, Any],
            endpoint: str,
            data: dict[str, Any],
            rate_limit_args: int | None,
        ) -> bool | dict[str, Any] | list[Any]:
            limiter = self._limiter_for(endpoint, data.get("chat_id"))
            paced: contextlib.AbstractAsyncContextManager[Any] = (
                limiter if limiter is not None else contextlib.nullcontext()
            )
            async with paced:
                return await super().process_request(
                    callback, args, kwargs, endpoint, data, rate_limit_args
                )

        def _limiter_for(self, endpoint: str, chat_id: object) -> AsyncLimiter | None:
            if rate_per_s <= 0 or endpoint not in _PACED_METHODS:
                return None
            try:
                key = int(chat_id)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                return None
            if key < 0:
                return None  # groups and channels: AIORateLimiter's own group limit applies
            if key not in self._chat_limiters and len(self._chat_limiters) >= 256:
                self._chat_limiters = {
                    k: v for k, v in self._chat_limiters.items() if not v.has_capacity(burst)
                }
            if key not in self._chat_limiters:
                self._chat_limiters[key] = AsyncLimiter(burst, burst / rate_per_s)
            return self._chat_limiters[key]

    return _PerChatRateLimiter()


def _quiet_http_loggers() -> None:
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))


class _RedactSecrets(logging.Filter):
    """Rewrites log records that contain a bot token (PTB logs its API URL at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            record.msg, record.args = self._redact(message), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if any(secret in text for secret in self.secrets):
                record.exc_text = self._redact(text)  # formatters reuse exc_text when set
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<token>")
        return text


_REDACTOR = _RedactSecrets()


def _guard_library_logs(token: str) -> None:
    """Attach the redactor to every PTB and httpx logger (filters do not inherit)."""
    if token:
        _REDACTOR.secrets.add(token)
    names = [
        name
        for name in logging.root.manager.loggerDict
        if name.split(".")[0] in {"telegram", "httpx", "httpcore"}
    ]
    for name in names:
        logging.getLogger(name).addFilter(_REDACTOR)  # addFilter ignores duplicates
