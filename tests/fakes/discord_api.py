"""A fake Discord (REST + websocket gateway) on 127.0.0.1 for running the real discord.py client.

It implements the part of the API NightOwl uses, records every request, and enforces the limits a
real server would: 2000 characters per message, the 3-second interaction acknowledgement, a single
acknowledgement per interaction, and blank content of guild messages that do not mention the bot
when the client did not ask for the message-content intent. Like Discord, a message whose payload
has no ``allowed_mentions`` pings every user, role and @everyone its content mentions
(:meth:`FakeDiscord.pinged` says whom a request pinged). Failures (429 with retry_after, 5xx)
can be injected one request at a time. Payload shapes live in :mod:`tests.fakes.discord_payloads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yarl
from aiohttp import WSMsgType, web
from aiohttp.web_request import FileField

from tests.fakes import discord_payloads as P

JSON = "application/json"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float
    status: int = 200
    files: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Injection:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float = 0.0


def _resp(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly application/json.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={
        "Content-Type": JSON, **(headers or {})})


class FakeDiscord:
    """One guild (plus any added), one text channel (plus any added), users, DMs, threads,
    slash commands."""

    def __init__(self, *, ack_deadline_s: float = 3.0, reject_privileged: bool = False) -> None:
        self.ack_deadline_s = ack_deadline_s
        self.reject_privileged = reject_privileged
        self.app_id = P.snowflake()
        self.bot = P.user(P.snowflake(), "nightowl", bot=True)
        self.owner = P.user(P.snowflake(), "owner")
        self.guild_id = P.snowflake()
        self.bot_role = P.role(P.snowflake(), "NightOwl", 0, managed=True, bot_id=self.bot["id"])
        self.roles = [P.role(self.guild_id, "@everyone", P.DEFAULT_PERMISSIONS), self.bot_role]
        self.users: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, Any]] = {
            self.bot["id"]: P.member(self.bot, [self.bot_role["id"]])}
        self.channels: dict[str, dict[str, Any]] = {}
        self.other_guilds: list[str] = []
        self.channel_id = self.add_channel("general")["id"]
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}  # scope ("global" | guild id)
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.injections: list[Injection] = []
        self.interactions: dict[str, dict[str, Any]] = {}
        self.intents = 0
        self.valid_token = "test-token"
        self._ws: web.WebSocketResponse | None = None
        self._seq = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._saved: tuple[str, yarl.URL] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/cdn/{aid}/{name}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Point discord.py at this server (the two class attributes), restoring them after."""
        import discord.gateway
        import discord.http

        saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = f"{self.url}/api/v10"
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"ws://127.0.0.1:{self.port}/")
        try:
            yield
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved

    # ---- world building ----------------------------------------------------------------------
    def add_user(self, name: str, roles: list[str] | None = None) -> dict[str, Any]:
        u = P.user(P.snowflake(), name)
        self.users[u["id"]] = u
        self.members[u["id"]] = P.member(u, roles)
        return u

    def add_channel(self, name: str, overwrites: list[dict[str, Any]] | None = None, *,
                    guild_id: str | None = None) -> dict[str, Any]:
        ch = P.text_channel(P.snowflake(), guild_id or self.guild_id, name, overwrites)
        self.channels[ch["id"]] = ch
        return ch

    def add_guild(self, name: str) -> dict[str, Any]:
        """Another guild the bot is in (same users as members); returns its first channel."""
        gid = P.snowflake()
        self.other_guilds.append(gid)
        return self.add_channel(f"{name}-general", guild_id=gid)

    def add_role(self, name: str, permissions: int = 0) -> str:
        r = P.role(P.snowflake(), name, permissions)
        self.roles.append(r)
        return str(r["id"])

    def guild_payload(self, guild_id: str | None = None) -> dict[str, Any]:
        gid = guild_id or self.guild_id
        chans = [c for c in self.channels.values() if c["type"] == 0 and c["guild_id"] == gid]
        threads = [c for c in self.channels.values() if c["type"] == 11
                   and c["guild_id"] == gid]
        roles, members = self.roles, list(self.members.values())
        if gid != self.guild_id:  # another guild: its own @everyone, members without roles
            roles = [P.role(gid, "@everyone", P.DEFAULT_PERMISSIONS)]
            members = [P.member(m["user"]) for m in members]
        return P.guild(gid, f"Guild {gid}", owner_id=self.owner["id"], roles=roles,
                       members=members, channels=chans, threads=threads)

    def dm_channel_for(self, u: dict[str, Any]) -> dict[str, Any]:
        for ch in self.channels.values():
            if ch["type"] == 1 and ch["recipients"][0]["id"] == u["id"]:
                return ch
        ch = P.dm_channel(P.snowflake(), u)
        self.channels[ch["id"]] = ch
        return ch

    def add_file(self, name: str, data: bytes, content_type: str = "") -> dict[str, Any]:
        aid = P.snowflake()
        self.files[aid] = data
        return P.attachment(aid, name, len(data), f"{self.url}/cdn/{aid}/{name}", content_type)

    def inject(self, method: str, path_regex: str, status: int, retry_after: float = 0.0) -> None:
        """Fail the next matching request once with ``status`` (429 carries ``retry_after``)."""
        self.injections.append(Injection(method, re.compile(path_regex), status, retry_after))

    # ---- driving the bot ---------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict[str, Any], *, required: bool = True) -> None:
        """Send a gateway event; echoes of the bot's own actions (``required=False``) are
        dropped when no client is connected."""
        if not required and (self._ws is None or self._ws.closed):
            return
        assert self._ws is not None and not self._ws.closed, "the bot is not connected"
        self._seq += 1
        await self._ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    async def user_message(self, author: dict[str, Any], content: str, *,
                           channel_id: str | None = None, dm: bool = False,
                           mention_bot: bool = False, reply_to: dict[str, Any] | None = None,
                           attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Send MESSAGE_CREATE as a user; returns the payload as stored (before blanking)."""
        if dm:
            ch = self.dm_channel_for(author)
            guild_id = None
        else:
            ch = self.channels[channel_id or self.channel_id]
            guild_id = ch["guild_id"]
        if mention_bot:
            content = f"<@{self.bot['id']}> {content}".rstrip()
        mentions = [self.bot] if mention_bot else []
        msg = P.message(P.snowflake(), ch["id"], author, content, guild_id=guild_id,
                        author_member=self.members.get(author["id"]) if guild_id else None,
                        mentions=mentions, attachments=attachments, referenced=reply_to)
        self.messages[msg["id"]] = msg
        sent = dict(msg)
        if guild_id and not mention_bot and not self.intents & P.MESSAGE_CONTENT_INTENT:
            sent.update(content="", attachments=[], embeds=[], components=[])
        await self.dispatch("MESSAGE_CREATE", sent)
        return msg

    async def slash(self, invoker: dict[str, Any], name: str, options: list[dict[str, Any]]
                    | None = None, *, sub: str | None = None, dm: bool = False,
                    channel_id: str | None = None, resolved: dict[str, Any] | None = None
                    ) -> str:
        """Send an application-command INTERACTION_CREATE; returns the interaction id."""
        opts = list(options or [])
        if sub is not None:
            opts = [{"name": sub, "type": 1, "options": opts}]
        data: dict[str, Any] = {"id": P.snowflake(), "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        return await self._interaction(2, data, invoker, dm=dm, channel_id=channel_id)

    async def press(self, invoker: dict[str, Any], msg: dict[str, Any], custom_id: str) -> str:
        """Click a button on a stored message; returns the interaction id."""
        data = {"custom_id": custom_id, "component_type": 2}
        ch = self.channels[msg["channel_id"]]
        return await self._interaction(3, data, invoker, dm=ch["type"] == 1,
                                       channel_id=msg["channel_id"], msg=msg)

    async def _interaction(self, kind: int, data: dict[str, Any], invoker: dict[str, Any], *,
                           dm: bool, channel_id: str | None, msg: dict[str, Any] | None = None
                           ) -> str:
        ch = self.dm_channel_for(invoker) if dm else self.channels[channel_id or self.channel_id]
        guild_id = None if ch["type"] == 1 else ch["guild_id"]
        if guild_id and kind == 2:
            data["guild_id"] = guild_id
        iid, token = P.snowflake(), f"itoken-{P.snowflake()}"
        payload = P.interaction(iid, token, self.app_id, kind, data, channel=ch, invoker=invoker,
                                invoker_member=self.members.get(invoker["id"]),
                                guild_id=guild_id, msg=msg)
        self.interactions[iid] = {"token": token, "created": time.monotonic(), "acked": None,
                                  "channel_id": ch["id"], "original": None, "payload": payload,
                                  "ephemeral": False}
        await self.dispatch("INTERACTION_CREATE", payload)
        return iid

    # ---- waiting and querying ------------------------------------------------------------------
    async def wait_for(self, pred: Callable[[], Any], limit_s: float = 10.0) -> Any:
        """Wait until ``pred()`` is truthy (re-checked after every request); return its value."""
        async def _wait() -> Any:
            async with self._changed:
                while not (value := pred()):
                    await self._changed.wait()
                return value
        return await asyncio.wait_for(_wait(), limit_s)

    def find(self, method: str, path_regex: str, *, status: int | None = None) -> list[Request]:
        """Recorded requests (successful ones unless ``status`` is given)."""
        pat = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pat.fullmatch(r.path)
                and (r.status == status if status is not None else 200 <= r.status < 300)]

    def channel_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages the bot posted in a channel (ids ascending)."""
        return [m for m in self.messages.values() if m["channel_id"] == channel_id
                and m["author"]["id"] == self.bot["id"]]

    def interaction_messages(self, iid: str) -> list[dict[str, Any]]:
        """The original response and followups of an interaction, in order."""
        info = self.interactions[iid]
        return [m for m in self.messages.values() if m.get("_interaction") == iid
                or (info["original"] and m["id"] == info["original"])]

    @staticmethod
    def pinged(req: Request) -> set[str]:
        """Whom a message request pinged, by Discord's rules: without ``allowed_mentions``
        every user, role and @everyone/@here in the content and the replied-to author; with it,
        the types in ``parse``, the listed ``users``/``roles``, and the replied-to author only
        when ``replied_user`` is true."""
        body = req.body if isinstance(req.body, dict) else {}
        if req.path.endswith("/callback"):  # an interaction response: the message is "data"
            body = body.get("data") or {}
        content = str(body.get("content") or "")
        users = set(re.findall(r"<@!?(\d+)>", content))
        roles = set(re.findall(r"<@&(\d+)>", content))
        everyone = {"everyone"} if re.search(r"@(everyone|here)\b", content) else set()
        reply = {"replied_user"} if body.get("message_reference") else set()
        allowed = body.get("allowed_mentions")
        if allowed is None:
            return {f"user:{u}" for u in users} | {f"role:{r}" for r in roles} | everyone | reply
        parse = set(allowed.get("parse", []))
        listed_users = {str(u) for u in allowed.get("users", [])}
        listed_roles = {str(r) for r in allowed.get("roles", [])}
        out = {f"user:{u}" for u in users if "users" in parse or u in listed_users}
        out |= {f"role:{r}" for r in roles if "roles" in parse or r in listed_roles}
        out |= everyone if "everyone" in parse else set()
        return out | (reply if allowed.get("replied_user") else set())

    @staticmethod
    def custom_ids(msg: dict[str, Any]) -> list[str]:
        return [c.get("custom_id", "") for row in msg.get("components", [])
                for c in row.get("components", [])]

    # ---- gateway ---------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                break
            msg = json.loads(frame.data)
            if msg["op"] == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif msg["op"] == 2:
                self.intents = int(msg["d"]["intents"])
                if self.reject_privileged and self.intents & P.MESSAGE_CONTENT_INTENT:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                guilds = [self.guild_id, *self.other_guilds]
                await self.dispatch("READY", P.ready(self.bot, self.app_id, guilds,
                                                     f"ws://127.0.0.1:{self.port}/"))
                for gid in guilds:
                    await self.dispatch("GUILD_CREATE", self.guild_payload(gid))
            elif msg["op"] == 6:  # resume: not supported, ask for a fresh identify
                await ws.send_str(json.dumps({"op": 9, "d": False}))
        return ws

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["aid"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    # ---- REST ----------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body: Any = None
        files: list[tuple[str, bytes]] = []
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            form = await request.post()
            for key, value in form.items():
                if key == "payload_json":
                    body = json.loads(str(value))
                elif isinstance(value, FileField):
                    files.append((value.filename, value.file.read()))
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        req = Request(request.method, path, dict(request.query), body, time.monotonic(),
                      files=files)
        try:
            resp = await self._handle(req, request.headers.get("Authorization", ""))
        except Exception as exc:  # a bug in the fake must be visible in the test
            self.violations.append(f"fake crashed on {req.method} {path}: {exc!r}")
            resp = _resp(P.error(0, "fake error"), 500)
        req.status = resp.status
        async with self._changed:
            self.requests.append(req)
            self._changed.notify_all()
        return resp

    async def _handle(self, req: Request, auth: str) -> web.Response:
        for inj in list(self.injections):
            if inj.method == req.method and inj.pattern.fullmatch(req.path):
                self.injections.remove(inj)
                if inj.status == 429:
                    return _resp({"message": "You are being rate limited.", "retry_after":
                                  inj.retry_after, "global": False}, 429,
                                 {"Via": "1.1 google", "Retry-After": str(inj.retry_after)})
                return _resp(P.error(0, "Server error"), inj.status)
        if not req.path.startswith(("/interactions/", "/webhooks/")) \
                and auth != f"Bot {self.valid_token}":
            return _resp(P.error(0, "401: Unauthorized"), 401)
        m, p = req.method, req.path
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", r"/users/@me", lambda: _resp(self.bot)),
            ("GET", r"/oauth2/applications/@me", lambda: _resp(P.application(self.app_id,
                                                                              self.owner))),
            ("POST", r"/users/@me/channels", self._open_dm),
            ("GET", r"/users/(\d+)", self._get_user),
            ("GET", r"/channels/(\d+)", self._get_channel),
            ("POST", r"/channels/(\d+)/typing", lambda cid: web.Response(status=204)),
            ("POST", r"/channels/(\d+)/messages", self._create_message),
            ("GET", r"/channels/(\d+)/messages/(\d+)", self._get_message),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit_message),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)", self._delete_message),
            ("POST", r"/channels/(\d+)/messages/(\d+)/threads", self._create_thread),
            ("PUT", r"/applications/(\d+)/commands", self._put_commands),
            ("PUT", r"/applications/(\d+)/guilds/(\d+)/commands", self._put_commands),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._callback),
            ("POST", r"/webhooks/(\d+)/([^/]+)", self._followup),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", self._edit_webhook_message),
            ("DELETE", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", self._delete_webhook_message),
        ]
        for method, pattern, fn in routes:
            match = re.fullmatch(pattern, p)
            if method == m and match:
                if fn.__name__ == "<lambda>":
                    return fn(*match.groups())  # type: ignore[no-any-return]
                return await fn(req, *match.groups())  # type: ignore[no-any-return]
        self.violations.append(f"unhandled route {m} {p}")
        return _resp(P.error(0, "404: Not Found"), 404)

    def _check_content(self, req: Request, body: dict[str, Any], need: bool) -> web.Response | None:
        content = body.get("content")
        if content is not None and len(content) > 2000:
            self.violations.append(f"{req.method} {req.path}: content of {len(content)} chars")
            return _resp(P.error(50035, "Invalid Form Body", content={"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}),
                400)
        if need and not content and not body.get("components") and not req.files \
                and not body.get("embeds"):
            self.violations.append(f"{req.method} {req.path}: empty message")
            return _resp(P.error(50006, "Cannot send an empty message"), 400)
        return None

    def _new_bot_message(self, channel_id: str, body: dict[str, Any], files: list[tuple[str,
                         bytes]], **extra: Any) -> dict[str, Any]:
        ch = self.channels.get(channel_id)
        guild_id = ch.get("guild_id") if ch else None
        ref = None
        mref = body.get("message_reference")
        if mref and str(mref.get("message_id")) in self.messages:
            ref = self.messages[str(mref["message_id"])]
        atts = [self.add_file(name, data) for name, data in files]
        msg = P.message(P.snowflake(), channel_id, self.bot, body.get("content") or "",
                        guild_id=guild_id, author_member=self.members[self.bot["id"]],
                        components=body.get("components"), referenced=ref,
                        attachments=atts, flags=int(body.get("flags") or 0), **extra)
        self.messages[msg["id"]] = msg
        return msg

    def _public(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in msg.items() if not k.startswith("_")}

    def _bot_can(self, channel_id: str, perm: int) -> bool:
        ch = self.channels.get(channel_id)
        if ch is None or ch["type"] == 1:
            return True
        if ch["type"] == 11:
            ch = self.channels[ch["parent_id"]]
        allowed = P.DEFAULT_PERMISSIONS
        for ow in ch.get("permission_overwrites", []):
            if ow["id"] in (self.bot["id"], self.guild_id, self.bot_role["id"]):
                allowed = (allowed & ~int(ow["deny"])) | int(ow["allow"])
        return bool(allowed & perm)

    async def _get_user(self, req: Request, uid: str) -> web.Response:
        u = self.users.get(uid)
        return _resp(u) if u else _resp(P.error(10013, "Unknown User"), 404)

    async def _get_channel(self, req: Request, cid: str) -> web.Response:
        if cid not in self.channels:
            return _resp({"message": "Unknown Channel", "code": 10003}, 404)
        return _resp(self.channels[cid])

    async def _open_dm(self, req: Request) -> web.Response:
        rid = str(req.body["recipient_id"])
        u = self.users.get(rid) or self.owner
        return _resp(self.dm_channel_for(u))

    async def _create_message(self, req: Request, cid: str) -> web.Response:
        if cid not in self.channels:
            return _resp(P.error(10003, "Unknown Channel"), 404)
        if not self._bot_can(cid, P.SEND_MESSAGES):
            self.violations.append(f"bot posted in channel {cid} without Send Messages")
            return _resp(P.error(50013, "Missing Permissions"), 403)
        body = req.body or {}
        if (bad := self._check_content(req, body, need=True)) is not None:
            return bad
        msg = self._new_bot_message(cid, body, req.files)
        await self.dispatch("MESSAGE_CREATE", self._public(msg), required=False)
        return _resp(self._public(msg))

    async def _get_message(self, req: Request, cid: str, mid: str) -> web.Response:
        msg = self.messages.get(mid)
        if msg is None or msg["channel_id"] != cid:
            return _resp(P.error(10008, "Unknown Message"), 404)
        return _resp(self._public(msg))

    def _apply_edit(self, msg: dict[str, Any], body: dict[str, Any]) -> None:
        if "content" in body:
            msg["content"] = body["content"] or ""
        if "components" in body:
            msg["components"] = body["components"] or []
        msg["edited_timestamp"] = P.now_iso()

    async def _edit_message(self, req: Request, cid: str, mid: str) -> web.Response:
        msg = self.messages.get(mid)
        if msg is None or msg["channel_id"] != cid:
            return _resp(P.error(10008, "Unknown Message"), 404)
        body = req.body or {}
        if (bad := self._check_content(req, body, need=False)) is not None:
            return bad
        self._apply_edit(msg, body)
        return _resp(self._public(msg))

    async def _delete_message(self, req: Request, cid: str, mid: str) -> web.Response:
        self.messages.pop(mid, None)
        return web.Response(status=204)

    async def _create_thread(self, req: Request, cid: str, mid: str) -> web.Response:
        if not self._bot_can(cid, P.CREATE_PUBLIC_THREADS):
            self.violations.append(f"bot created a thread in {cid} without the permission")
            return _resp(P.error(50013, "Missing Permissions"), 403)
        th = P.thread_channel(mid, self.channels[cid]["guild_id"], cid, self.bot["id"],
                              req.body["name"])
        self.channels[mid] = th
        await self.dispatch("THREAD_CREATE", {**th, "newly_created": True}, required=False)
        return _resp(th, 201)

    async def _put_commands(self, req: Request, app_id: str, gid: str = "global") -> web.Response:
        cmds = [{**c, "id": P.snowflake(), "application_id": app_id, "version": P.snowflake(),
                 **({"guild_id": gid} if gid != "global" else {})} for c in req.body]
        self.commands[gid] = cmds
        return _resp(cmds)

    # ---- interactions ------------------------------------------------------------------------
    async def _callback(self, req: Request, iid: str, token: str) -> web.Response:
        info = self.interactions.get(iid)
        if info is None or info["token"] != token:
            return _resp(P.error(10062, "Unknown interaction"), 404)
        late = time.monotonic() - info["created"]
        if late > self.ack_deadline_s:
            self.violations.append(f"interaction {iid} acknowledged after {late:.2f}s")
            return _resp(P.error(10062, "Unknown interaction"), 404)
        if info["acked"] is not None:
            self.violations.append(f"interaction {iid} acknowledged twice")
            return _resp(P.error(40060, "Interaction has already been acknowledged."), 400)
        body = req.body or {}
        kind = int(body["type"])
        info["acked"] = kind
        data = body.get("data") or {}
        resource: dict[str, Any] = {"type": kind}
        ephemeral = bool(int(data.get("flags") or 0) & 64)
        info["ephemeral"] = ephemeral
        if kind in (4, 5):
            if (bad := self._check_content(req, data, need=kind == 4)) is not None:
                info["acked"] = None
                return bad
            msg = self._new_bot_message(info["channel_id"], data, req.files,
                                        interaction_user=self._invoker(info))
            msg["_interaction"] = iid
            if kind == 5:
                msg["flags"] = msg["flags"] | 128  # loading ("thinking")
            info["original"] = msg["id"]
            resource["message"] = self._public(msg)
        elif kind in (6, 7):
            target = info["payload"].get("message")
            if target is not None:  # a component's "original" is the message it sits on
                info["original"] = target["id"]
            if kind == 7 and target is not None and target["id"] in self.messages:
                self._apply_edit(self.messages[target["id"]], data)
                resource["message"] = self._public(self.messages[target["id"]])
        out = {"interaction": {"id": iid, "type": info["payload"]["type"],
                               "response_message_id": info["original"],
                               "response_message_loading": kind == 5,
                               "response_message_ephemeral": ephemeral},
               "resource": resource}
        if req.query.get("with_response") in ("1", "true", "True"):
            return _resp(out)
        return web.Response(status=204)

    def _invoker(self, info: dict[str, Any]) -> dict[str, Any]:
        p = info["payload"]
        return dict(p["member"]["user"] if "member" in p else p["user"])

    def _by_token(self, token: str) -> tuple[str, dict[str, Any]] | None:
        for iid, info in self.interactions.items():
            if info["token"] == token:
                return iid, info
        return None

    async def _followup(self, req: Request, app_id: str, token: str) -> web.Response:
        found = self._by_token(token)
        if found is None or found[1]["acked"] is None:
            return _resp(P.error(10015, "Unknown Webhook"), 404)
        iid, info = found
        body = req.body or {}
        if (bad := self._check_content(req, body, need=True)) is not None:
            return bad
        original = self.messages.get(info["original"] or "")
        if original is not None and original["flags"] & 128:
            # Like Discord: the first followup after a "thinking" defer replaces that message.
            self._apply_edit(original, body)
            original["flags"] &= ~128
            original["attachments"] += [self.add_file(n, d) for n, d in req.files]
            return _resp(self._public(original))
        msg = self._new_bot_message(info["channel_id"], body, req.files, webhook_id=app_id,
                                    interaction_user=self._invoker(info))
        msg["_interaction"] = iid
        return _resp(self._public(msg))

    async def _edit_webhook_message(self, req: Request, app_id: str, token: str, mid: str
                                    ) -> web.Response:
        found = self._by_token(token)
        if found is None or found[1]["acked"] is None:
            return _resp(P.error(10015, "Unknown Webhook"), 404)
        info = found[1]
        if mid == "@original":
            mid = info["original"] or ""
        msg = self.messages.get(mid)
        if msg is None:
            return _resp(P.error(10008, "Unknown Message"), 404)
        body = req.body or {}
        if (bad := self._check_content(req, body, need=False)) is not None:
            return bad
        self._apply_edit(msg, body)
        msg["flags"] = msg["flags"] & ~128
        for name, data in req.files:
            msg["attachments"].append(self.add_file(name, data))
        return _resp(self._public(msg))

    async def _delete_webhook_message(self, req: Request, app_id: str, token: str, mid: str
                                      ) -> web.Response:
        found = self._by_token(token)
        if found is not None and mid == "@original":
            mid = found[1]["original"] or ""
        self.messages.pop(mid, None)
        return web.Response(status=204)
