"""A fake Discord REST API and gateway on 127.0.0.1 that the real discord.py client can talk to."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
API_PREFIX = "/api/v10"
GUILDS_INTENT = 1 << 0
ATTACHMENT_LIMIT_BYTES = 10 * 1024 * 1024
HEARTBEAT_INTERVAL_MS = 41_250


@dataclass(frozen=True)
class RecordedFile:
    """One multipart file part as the client uploaded it."""

    field: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class RecordedCall:
    """One REST request: path is relative to /api/v10, json is the (payload_json) body."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: tuple[RecordedFile, ...] = ()
    authorized: bool = False


@dataclass(frozen=True)
class InjectedInteraction:
    """A slash command the fake sent through the gateway; its token names its webhook routes."""

    id: int
    token: str
    name: str
    channel_id: int
    user_id: int
    guild_id: int | None

    def callback_path(self) -> str:
        """Path of the interaction callback (the defer / initial response)."""
        return f"/interactions/{self.id}/{self.token}/callback"


@dataclass
class _Gateway:
    ws: web.WebSocketResponse
    seq: int = 0
    identified: bool = False
    intents: int = 0


@dataclass
class FakeDiscord:
    """Serves just enough of Discord API v10 and gateway v10 for a bot's life cycle.

    Point discord.py at it with ``Route.BASE = fake.api_base`` and
    ``DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)``.
    """

    token: str = "fake-bot-token"
    app_id: int = 0
    bot_user_id: int = 0
    guild_ids: tuple[int, ...] = ()
    fail_logins: int = 0  # answer this many GET /users/@me with 503 (an outage) first
    forbidden_channels: set[int] = field(default_factory=set)  # posting there gets 403
    calls: list[RecordedCall] = field(default_factory=list)
    commands: dict[int | None, list[dict[str, Any]]] = field(default_factory=dict)
    identifies: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self._counter = itertools.count(1)
        self.app_id = self.app_id or self.snowflake()
        self.bot_user_id = self.bot_user_id or self.app_id
        self._gateways: list[_Gateway] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._original: dict[str, int] = {}  # interaction token -> @original message id
        self._interactions: dict[str, InjectedInteraction] = {}
        self._sessions: set[str] = set()

    # -- life cycle -------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """Value (as a yarl.URL) for ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Listen on 127.0.0.1 (port 0 picks a free one unless ``port`` is set)."""
        app = web.Application(client_max_size=ATTACHMENT_LIMIT_BYTES * 2)
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Close gateway sockets and stop listening."""
        for gw in list(self._gateways):
            await gw.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers for tests ------------------------------------------------------------------
    def snowflake(self) -> int:
        """A fresh snowflake dated now (discord.py derives expiry times from them)."""
        now_ms = int(time.time() * 1000)
        return ((now_ms - DISCORD_EPOCH_MS) << 22) | (next(self._counter) & 0x3FFFFF)

    def calls_to(self, method: str, path: str) -> list[RecordedCall]:
        """Recorded calls with this method and exact path."""
        return [c for c in self.calls if c.method == method and c.path == path]

    async def wait_for_call(
        self, predicate: Callable[[RecordedCall], bool], timeout_s: float = 5.0
    ) -> RecordedCall:
        """Wait until a recorded call matches, and return the first match."""

        def match() -> RecordedCall | None:
            return next((c for c in self.calls if predicate(c)), None)

        await self.wait_until(lambda: match() is not None, timeout_s)
        found = match()
        assert found is not None
        return found

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until condition() holds; it is re-checked after every request and gateway event."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(condition)

    def connected(self) -> int:
        """How many gateway connections have identified or resumed and are still open."""
        return sum(1 for g in self._gateways if g.identified and not g.ws.closed)

    async def drop_gateway(self, code: int = 1001) -> None:
        """Close every gateway connection, as Discord does when a gateway node restarts."""
        for gw in list(self._gateways):
            await gw.ws.close(code=code)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH (op 0) event to every identified gateway connection."""
        for gw in self._gateways:
            if gw.identified and not gw.ws.closed:
                await self._send_event(gw, event, data)

    async def inject_command(
        self,
        name: str,
        args: str | None = None,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None = None,
    ) -> InjectedInteraction:
        """Send INTERACTION_CREATE for ``/name args:<args>`` as Discord would."""
        interaction = InjectedInteraction(
            id=self.snowflake(),
            token=f"itoken-{self.snowflake()}",
            name=name,
            channel_id=channel_id,
            user_id=user_id,
            guild_id=guild_id,
        )
        self._interactions[interaction.token] = interaction
        await self.dispatch("INTERACTION_CREATE", self._interaction_payload(interaction, args))
        return interaction

    # -- payload builders -------------------------------------------------------------------
    def _user(self, user_id: int, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": "capbot" if bot else f"user{user_id % 10_000}",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
            "flags": 0,
        }

    def _channel(self, channel_id: int, guild_id: int | None, user_id: int) -> dict[str, Any]:
        if guild_id is None:
            return {"id": str(channel_id), "type": 1, "recipients": [self._user(user_id)]}
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id),
            "name": f"channel-{channel_id % 10_000}",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def _guild(self, guild_id: int) -> dict[str, Any]:
        return {
            "id": str(guild_id),
            "name": f"guild-{guild_id % 10_000}",
            "unavailable": False,
            "owner_id": str(self.snowflake()),
            "member_count": 1,
            "members": [],
            "channels": [self._channel(guild_id, guild_id, 0)],
            "threads": [],
            "roles": [
                {
                    "id": str(guild_id),
                    "name": "@everyone",
                    "permissions": "0",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "large": False,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
        }

    def _interaction_payload(
        self, interaction: InjectedInteraction, args: str | None
    ) -> dict[str, Any]:
        registered = self.commands.get(interaction.guild_id) or self.commands.get(None) or []
        command = next((c for c in registered if c.get("name") == interaction.name), {})
        data: dict[str, Any] = {
            "id": command.get("id", str(self.snowflake())),
            "name": interaction.name,
            "type": 1,
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if args is not None:
            data["options"] = [{"name": "args", "type": 3, "value": args}]
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(self.app_id),
            "type": 2,
            "token": interaction.token,
            "version": 1,
            "data": data,
            "channel_id": str(interaction.channel_id),
            "channel": self._channel(
                interaction.channel_id, interaction.guild_id, interaction.user_id
            ),
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "attachment_size_limit": ATTACHMENT_LIMIT_BYTES,
        }
        user = self._user(interaction.user_id)
        if interaction.guild_id is None:
            payload["user"] = user
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": str(self.app_id)}
        else:
            payload["guild_id"] = str(interaction.guild_id)
            payload["guild_locale"] = "en-US"
            payload["context"] = 0
            payload["authorizing_integration_owners"] = {"0": str(interaction.guild_id)}
            payload["member"] = {
                "user": user,
                "roles": [],
                "joined_at": datetime.now(UTC).isoformat(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "pending": False,
                "nick": None,
                "avatar": None,
                "permissions": "0",
            }
        return payload

    def _message(
        self,
        channel_id: int,
        body: dict[str, Any],
        files: tuple[RecordedFile, ...],
        *,
        message_type: int = 0,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        message_id = message_id or self.snowflake()
        attachments = [
            {
                "id": str(self.snowflake()),
                "filename": f.filename,
                "size": len(f.data),
                "url": f"http://127.0.0.1:{self.port}/attachments/{message_id}/{f.filename}",
                "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{message_id}/{f.filename}",
                "content_type": "image/png" if f.filename.endswith(".png") else None,
            }
            for f in files
        ]
        message = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "type": message_type,
            "content": body.get("content") or "",
            "author": self._user(self.bot_user_id, bot=True),
            "attachments": attachments,
            "embeds": [],
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "flags": int(body.get("flags") or 0),
            "components": [],
        }
        self.messages[message_id] = message
        return message

    # -- REST -------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        authorized = request.headers.get("Authorization") == f"Bot {self.token}"
        call = RecordedCall(request.method, path, dict(request.query), body, files, authorized)
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        return self._route(call)

    async def _read_body(self, request: web.Request) -> tuple[Any, tuple[RecordedFile, ...]]:
        if not request.can_read_body:
            return None, ()
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files: list[RecordedFile] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue  # nested multipart: discord.py never sends it
                data = await part.read(decode=False)
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append(RecordedFile(part.name or "", part.filename or "", bytes(data)))
            return body, tuple(files)
        raw = await request.read()
        return (json.loads(raw) if raw else None), ()

    def _route(self, call: RecordedCall) -> web.Response:
        parts = call.path.strip("/").split("/")
        method = call.method
        needs_auth = parts[0] not in ("webhooks", "interactions")
        if needs_auth and not call.authorized:
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        match method, parts:
            case "GET", ["users", "@me"]:
                if self.fail_logins > 0:
                    self.fail_logins -= 1
                    return _json({"message": "Service Unavailable", "code": 0}, status=503)
                return _json(self._user(self.bot_user_id, bot=True))
            case "GET", ["oauth2", "applications", "@me"]:
                return _json(self._application())
            case "GET", ["gateway"] | ["gateway", "bot"]:
                return _json(
                    {
                        "url": self.gateway_url.rstrip("/"),
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 999,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            case "PUT", ["applications", _, "commands"]:
                return _json(self._store_commands(None, call.json))
            case "PUT", ["applications", _, "guilds", guild, "commands"]:
                return _json(self._store_commands(int(guild), call.json))
            case "POST", ["channels", channel, "messages"] if (
                int(channel) in self.forbidden_channels
            ):
                return _json({"message": "Missing Access", "code": 50001}, status=403)
            case "POST", ["channels", channel, "messages"]:
                return _json(self._message(int(channel), call.json or {}, call.files))
            case "POST", ["interactions", interaction_id, token, "callback"]:
                return self._interaction_callback(int(interaction_id), token, call)
            case "POST", ["webhooks", _, token]:
                channel_id = self._channel_of(token)
                return _json(self._message(channel_id, call.json or {}, call.files))
            case "PATCH", ["webhooks", _, token, "messages", message]:
                return self._edit_webhook_message(token, message, call)
            case "GET", ["webhooks", _, token, "messages", message]:
                found = self.messages.get(self._message_id(token, message))
                return _json(found) if found else _unknown()
            case "DELETE", ["webhooks", _, token, "messages", message]:
                self.messages.pop(self._message_id(token, message), None)
                return web.Response(status=204)
        return _unknown()

    def _application(self) -> dict[str, Any]:
        return {
            "id": str(self.app_id),
            "name": "capbot",
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self._user(self.snowflake()),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
            "interactions_endpoint_url": None,
        }

    def _store_commands(self, guild_id: int | None, payload: Any) -> list[dict[str, Any]]:
        stored = []
        for command in payload or []:
            entry = dict(command)
            entry.setdefault("type", 1)
            entry.setdefault("options", [])
            entry["id"] = str(self.snowflake())
            entry["application_id"] = str(self.app_id)
            entry["version"] = str(self.snowflake())
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        self.commands[guild_id] = stored
        return stored

    def _channel_of(self, token: str) -> int:
        interaction = self._interactions.get(token)
        return interaction.channel_id if interaction else 0

    def _message_id(self, token: str, message: str) -> int:
        if message == "@original":
            return self._original.get(token, 0)
        return int(message)

    def _interaction_callback(
        self, interaction_id: int, token: str, call: RecordedCall
    ) -> web.Response:
        body = call.json or {}
        response_type = int(body.get("type", 0))
        data = body.get("data") or {}
        channel_id = self._channel_of(token)
        message = self._message(channel_id, data, call.files, message_type=20)
        if response_type == 5:
            message["flags"] |= 128  # LOADING: the "is thinking..." placeholder
        self._original[token] = int(message["id"])
        return _json(
            {
                "interaction": {
                    "id": str(interaction_id),
                    "type": 2,
                    "response_message_id": message["id"],
                    "response_message_loading": response_type == 5,
                    "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
                },
                "resource": {"type": response_type, "message": message},
            }
        )

    def _edit_webhook_message(self, token: str, message: str, call: RecordedCall) -> web.Response:
        message_id = self._message_id(token, message)
        existing = self.messages.get(message_id)
        if existing is None:
            return _unknown()
        body = call.json or {}
        edited = self._message(
            int(existing["channel_id"]),
            {"content": body.get("content", existing["content"]), "flags": 0},
            call.files,
            message_type=existing["type"],
            message_id=message_id,
        )
        edited["edited_timestamp"] = edited["timestamp"]
        return _json(edited)

    # -- gateway ----------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        gw = _Gateway(ws)
        self._gateways.append(gw)
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                await self._on_gateway_frame(gw, json.loads(msg.data))
        finally:
            self._gateways.remove(gw)
        return ws

    async def _on_gateway_frame(self, gw: _Gateway, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == 1:  # HEARTBEAT
            await gw.ws.send_str(json.dumps({"op": 11}))
        elif op == 2:  # IDENTIFY
            await self._on_identify(gw, data or {})
        elif op == 6:  # RESUME
            await self._on_resume(gw, data or {})

    async def _on_identify(self, gw: _Gateway, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await gw.ws.close(code=4004, message=b"Authentication failed.")
            return
        gw.intents = int(data.get("intents") or 0)
        session_id = f"session-{self.snowflake()}"
        self._sessions.add(session_id)
        ready = {
            "v": 10,
            "user": self._user(self.bot_user_id, bot=True),
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guild_ids],
            "session_id": session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
        }
        await self._send_event(gw, "READY", ready)
        if gw.intents & GUILDS_INTENT:
            for guild_id in self.guild_ids:
                await self._send_event(gw, "GUILD_CREATE", self._guild(guild_id))
        async with self._changed:
            gw.identified = True
            self._changed.notify_all()

    async def _on_resume(self, gw: _Gateway, data: dict[str, Any]) -> None:
        self.resumes.append(data)
        if data.get("token") != self.token or data.get("session_id") not in self._sessions:
            # Invalid session, not resumable: the client must IDENTIFY afresh (after 1-5 s).
            await gw.ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        gw.seq = int(data.get("seq") or 0)  # events missed while away are not replayed
        await self._send_event(gw, "RESUMED", {})
        async with self._changed:
            gw.identified = True
            self._changed.notify_all()

    async def _send_event(self, gw: _Gateway, event: str, data: dict[str, Any]) -> None:
        gw.seq += 1
        with contextlib.suppress(ConnectionResetError):
            await gw.ws.send_str(json.dumps({"op": 0, "t": event, "s": gw.seq, "d": data}))


def _json(payload: Any, status: int = 200) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly "application/json" (no charset).
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def _unknown() -> web.Response:
    return _json({"message": "404: Not Found", "code": 0}, status=404)
