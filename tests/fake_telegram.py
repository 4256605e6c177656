"""A fake Telegram Bot API server on 127.0.0.1 that speaks the real HTTP protocol to PTB."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

log = logging.getLogger(__name__)

JSON = dict[str, Any]

# PTB JSON-encodes every non-string parameter; these are sent raw and must stay strings even
# when they look like numbers ("/usage 42" -> text "42" must not become the int 42).
_STRING_FIELDS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "action",
        "description",
        "callback_query_id",
        "language_code",
        "url",
        "business_connection_id",
        "inline_message_id",
    }
)


class Call(NamedTuple):
    """One request the fake received: `files` maps a field to (filename, bytes)."""

    method: str
    params: JSON
    files: dict[str, tuple[str, bytes]]
    status: int  # the HTTP status the fake answered with
    at_s: float  # time.monotonic() when it arrived


@dataclass
class _Failure:
    """An injected error for the next `remaining` calls of a method."""

    remaining: int
    status: int
    body: JSON


class FakeTelegram:
    """A Bot API server at http://127.0.0.1:PORT/bot<TOKEN>/<method> with recorded calls.

    Every queued update is delivered whatever `allowed_updates` asks for, so a bot's own gate is
    what keeps unwanted updates out (the real server would filter some of them first).
    """

    def __init__(self, token: str, *, bot_username: str = "capbot_test_bot") -> None:
        self.token = token
        self.bot_username = bot_username
        self.bot_id = 4242
        self.calls: list[Call] = []
        self.commands: list[list[JSON]] = []  # every setMyCommands payload, in order
        self.port = 0
        self._updates: list[JSON] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._file_ids = itertools.count(1)
        self._failures: dict[str, _Failure] = {}
        self._changed = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def api_base_url(self) -> str:
        """PTB's `base_url` form: the token is appended by PTB."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        """PTB's `base_file_url` form."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:`port` (0 picks a free one)."""
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # access_log=None: aiohttp would log every path, and the path holds the token.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._closing = False

    async def stop(self) -> None:
        """Close the server; pending long polls return at once so teardown never hangs."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test helpers --------------------------------------------------------------------------

    def push_message(
        self, chat_id: int, user_id: int | None, text: str, *, chat_type: str | None = None
    ) -> JSON:
        """Queue a new message update (a `bot_command` entity is added for `/...` texts)."""
        return self._push("message", self._message(chat_id, user_id, text, chat_type))

    def push_edited_message(self, chat_id: int, user_id: int, text: str) -> JSON:
        """Queue an edited-message update."""
        message = self._message(chat_id, user_id, text, None)
        message["edit_date"] = message["date"]
        return self._push("edited_message", message)

    def push_channel_post(self, chat_id: int, text: str) -> JSON:
        """Queue a channel post (no sender user, the chat is a channel)."""
        message = self._message(chat_id, None, text, "channel")
        message["sender_chat"] = message["chat"]
        return self._push("channel_post", message)

    def push_callback_query(self, chat_id: int, user_id: int, data: str = "button") -> JSON:
        """Queue a callback query from a button under a bot message in `chat_id`."""
        message = self._message(chat_id, None, "a bot message", None)
        message["from"] = self._bot_user()
        query = {
            "id": f"cq{next(self._file_ids)}",
            "from": self._user(user_id),
            "chat_instance": f"ci{chat_id}",
            "data": data,
            "message": message,
        }
        return self._push("callback_query", query)

    def push_inline_query(self, user_id: int, query: str) -> JSON:
        """Queue an inline query (`@bot query` typed in any chat)."""
        inline = {
            "id": f"iq{next(self._file_ids)}",
            "from": self._user(user_id),
            "query": query,
            "offset": "",
        }
        return self._push("inline_query", inline)

    def fail_next(
        self,
        method: str,
        count: int = 1,
        *,
        error_code: int = 500,
        description: str = "Internal Server Error",
        parameters: JSON | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` with a Bot API error."""
        body: JSON = {"ok": False, "error_code": error_code, "description": description}
        if parameters:
            body["parameters"] = parameters
        self._failures[method] = _Failure(count, error_code, body)

    def inject_429(self, method: str, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next `count` calls of `method` with Too Many Requests + retry_after."""
        self.fail_next(
            method,
            count,
            error_code=429,
            description=f"Too Many Requests: retry after {retry_after}",
            parameters={"retry_after": retry_after},
        )

    def calls_of(self, method: str, *, ok_only: bool = True) -> list[Call]:
        """Recorded calls of one method (by default only those answered with success)."""
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    async def wait_for(self, predicate: Callable[[list[Call]], Any], timeout_s: float = 5.0) -> Any:
        """Wait until `predicate(calls)` is truthy and return its value; TimeoutError if not."""

        async def _until() -> Any:
            async with self._changed:
                while not (result := predicate(self.calls)):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(_until(), timeout_s)

    async def wait_for_call(
        self, method: str, count: int = 1, timeout_s: float = 5.0
    ) -> list[Call]:
        """Wait until `count` successful calls of `method` arrived; returns them."""
        found: list[Call] = await self.wait_for(
            lambda _calls: len(self.calls_of(method)) >= count and self.calls_of(method),
            timeout_s,
        )
        return found

    # -- protocol ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _reply({"ok": False, "error_code": 401, "description": "Unauthorized"}, 401)
        method = request.match_info["method"]
        params, files = await _read_params(request)
        failure = self._failures.get(method)
        if failure is not None and failure.remaining > 0:
            failure.remaining -= 1
            await self._record(Call(method, params, files, failure.status, time.monotonic()))
            return _reply(failure.body, failure.status)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            await self._record(Call(method, params, files, 404, time.monotonic()))
            return _reply({"ok": False, "error_code": 404, "description": "Not Found"}, 404)
        if method != "getUpdates":
            await self._record(Call(method, params, files, 200, time.monotonic()))
        result = await handler(params, files)
        return _reply({"ok": True, "result": result}, 200)

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    async def _api_getMe(self, params: JSON, files: object) -> JSON:
        return self._bot_user()

    async def _api_deleteWebhook(self, params: JSON, files: object) -> bool:
        return True

    async def _api_setMyCommands(self, params: JSON, files: object) -> bool:
        self.commands.append(list(params.get("commands", [])))
        return True

    async def _api_getUpdates(self, params: JSON, files: object) -> list[JSON]:
        offset = int(params.get("offset") or 0)
        timeout_s = float(params.get("timeout") or 0)
        # offset confirms every update below it, as on the real server.
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            self.calls.append(Call("getUpdates", params, {}, 200, time.monotonic()))
            self._changed.notify_all()
            while not self._updates and not self._closing:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), left_s)
                except TimeoutError:
                    break
            return list(self._updates[:100])

    async def _api_sendMessage(self, params: JSON, files: object) -> JSON:
        message = self._bot_message(params)
        message["text"] = params.get("text", "")
        return message

    async def _api_sendPhoto(self, params: JSON, files: dict[str, tuple[str, bytes]]) -> JSON:
        message = self._bot_message(params)
        file_no = next(self._file_ids)
        message["photo"] = [
            {"file_id": f"photo{file_no}", "file_unique_id": f"u{file_no}", "width": 800,
             "height": 400, "file_size": len(files.get("photo", ("", b""))[1])}
        ]  # fmt: skip
        if params.get("caption"):
            message["caption"] = params["caption"]
        return message

    async def _api_editMessageText(self, params: JSON, files: object) -> JSON:
        message = self._bot_message(params)
        message["message_id"] = int(params["message_id"])
        message["text"] = params.get("text", "")
        message["edit_date"] = message["date"]
        return message

    async def _api_sendChatAction(self, params: JSON, files: object) -> bool:
        return True

    async def _api_answerCallbackQuery(self, params: JSON, files: object) -> bool:
        return True

    # -- builders ------------------------------------------------------------------------------

    def _push(self, kind: str, payload: JSON) -> JSON:
        update = {"update_id": next(self._update_ids), kind: payload}
        self._updates.append(update)

        async def _wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(_wake())
        return update

    def _bot_user(self) -> JSON:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "capbot",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    @staticmethod
    def _user(user_id: int) -> JSON:
        return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}

    @staticmethod
    def _chat(chat_id: int, chat_type: str | None) -> JSON:
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: JSON = {"id": chat_id, "type": kind}
        if kind != "private":
            chat["title"] = f"chat{chat_id}"
        return chat

    def _message(self, chat_id: int, user_id: int | None, text: str, chat_type: str | None) -> JSON:
        message: JSON = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id, chat_type),
            "text": text,
        }
        if user_id is not None:
            message["from"] = self._user(user_id)
        if text.startswith("/"):
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": len(text.split()[0])}
            ]
        return message

    def _bot_message(self, params: JSON) -> JSON:
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(int(params["chat_id"]), None),
            "from": self._bot_user(),
        }


async def _read_params(request: web.Request) -> tuple[JSON, dict[str, tuple[str, bytes]]]:
    """Decode a Bot API body: urlencoded, multipart (uploads) or JSON."""
    params: JSON = {}
    files: dict[str, tuple[str, bytes]] = {}
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        return dict(body), files
    if not request.can_read_body:
        return dict(request.query), files
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, web.FileField):
            files[name] = (value.filename, value.file.read())
        elif name in _STRING_FIELDS:
            params[name] = value
        else:
            params[name] = _decode(str(value))
    return params, files


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _reply(body: JSON, status: int) -> web.Response:
    return web.json_response(body, status=status)
