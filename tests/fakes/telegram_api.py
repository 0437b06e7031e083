"""A fake Telegram Bot API server on loopback, for running the real python-telegram-bot in tests.

It answers the methods NightOwl uses, records every call, and enforces the rules that matter:
4096 characters per message (after entity parsing), HTML/MarkdownV2 parse errors for bad
entities, "message is not modified", and injectable 429 (retry_after), 403 and 5xx answers.
Payload builders for updates live here too (``FakeTelegramAPI.text`` & co.), so message ids are
shared between the bot's messages and the users' ones as in a real chat.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField

TOKEN = "123456:TEST-token"
LIMIT = 4096
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message")
_STRING_PARAMS = {"text", "caption", "parse_mode", "callback_query_id", "file_id", "action",
                  "description", "short_description", "name", "filename"}
_HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
              "a", "code", "pre", "blockquote", "tg-emoji"}
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*)"
                  r"\s*>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_MD_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MD_LINK = re.compile(r"\[((?:[^\]\\]|\\.)*)\]\(((?:[^)\\]|\\.)*)\)")


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(text: str) -> str:
    """Visible text of Telegram HTML; raises ApiError like Telegram for bad entities."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "<":
            m = _TAG.match(text, i)
            if not m or m.group(2).lower() not in _HTML_TAGS:
                raise ApiError(400, "Bad Request: can't parse entities: Unsupported start tag "
                                    f"at byte offset {i}")
            name = m.group(2).lower()
            if m.group(1):
                if not stack or stack[-1] != name:
                    raise ApiError(400, f"Bad Request: can't parse entities: Unexpected end tag "
                                        f"at byte offset {i}")
                stack.pop()
            else:
                stack.append(name)
            i = m.end()
        elif ch == "&":
            m = _ENTITY.match(text, i)
            if not m:
                raise ApiError(400, "Bad Request: can't parse entities: Unsupported character "
                                    f"entity at byte offset {i}")
            out.append(html.unescape(m.group(0)))
            i = m.end()
        elif ch == ">":
            raise ApiError(400, f"Bad Request: can't parse entities: Unexpected '>' at {i}")
        else:
            out.append(ch)
            i += 1
    if stack:
        raise ApiError(400, "Bad Request: can't parse entities: Can't find end tag "
                            f"corresponding to start tag \"{stack[-1]}\"")
    return "".join(out)


def parse_markdown_v2(text: str) -> str:
    """Visible text of MarkdownV2 (bold, italic, underline, strike, spoiler, code, links)."""
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise ApiError(400, "Bad Request: can't parse entities: trailing backslash")
            out.append(text[i + 1])
            i += 2
            continue
        if text.startswith("```", i) or ch == "`":
            fence = "```" if text.startswith("```", i) else "`"
            end = text.find(fence, i + len(fence))
            if end < 0:
                raise ApiError(400, "Bad Request: can't parse entities: Can't find end of Pre "
                                    f"entity at byte offset {i}")
            out.append(text[i + len(fence):end].replace("\\`", "`").replace("\\\\", "\\"))
            i = end + len(fence)
            continue
        m = _MD_LINK.match(text, i) if ch == "[" else None
        if m:
            out.append(parse_markdown_v2(m.group(1)))
            i = m.end()
            continue
        token = "__" if text.startswith("__", i) else "||" if text.startswith("||", i) else ch
        if token in ("*", "_", "__", "~", "||"):
            if stack and stack[-1] == token:
                stack.pop()
            else:
                stack.append(token)
            i += len(token)
            continue
        if ch in _MD_RESERVED:
            raise ApiError(400, f"Bad Request: can't parse entities: Character '{ch}' is reserved "
                                "and must be escaped with the preceding '\\'")
        out.append(ch)
        i += 1
    if stack:
        raise ApiError(400, "Bad Request: can't parse entities: Can't find end of the entity "
                            f"starting with '{stack[-1]}'")
    return "".join(out)


def visible_text(text: str, parse_mode: str | None) -> str:
    mode = (parse_mode or "").lower()
    if mode == "html":
        return parse_html(text)
    if mode == "markdownv2":
        return parse_markdown_v2(text)
    return text


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200
    returned: list[int] = field(default_factory=list)  # getUpdates: the update ids answered
    answered_at: float = 0.0  # when the fake answered it


@dataclass
class Fault:
    status: int
    description: str
    retry_after: int | None = None
    times: int = 1
    when: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class Sent:
    """A message in a chat as the user would see it now."""

    chat_id: int
    message_id: int
    text: str
    raw: str
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    reply_to: int | None
    kind: str = "text"  # text | document | photo
    edits: int = 0
    history: list[str] = field(default_factory=list)


class FakeTelegramAPI:
    """``async with FakeTelegramAPI() as tg:`` then point PTB at ``tg.base_url``."""

    def __init__(self, *, bot_id: int = 7_000_001, username: str = "NightOwlTestBot",
                 token: str = TOKEN) -> None:
        self.bot_id, self.username, self.token = bot_id, username, token
        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], Sent] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        self.on_get_updates: Callable[[int], Awaitable[None]] | None = None
        self._updates: list[dict[str, Any]] = []
        self._new_update = asyncio.Event()
        self._called = asyncio.Event()
        self._stopping = False
        self._ids = itertools.count(100)
        self._update_ids = itertools.count(1)
        self._askers: dict[tuple[int, int], dict[str, Any]] = {}  # who sent each user message
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- server -------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeTelegramAPI:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        """Answer pending long polls now (call before stopping the bot to avoid a slow exit)."""
        self._stopping = True
        self._new_update.set()

    @property
    def base_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    # ---- test controls ------------------------------------------------------------------------
    def fail(self, method: str, status: int, description: str = "", *,
             retry_after: int | None = None, times: int = 1,
             when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Make the next ``times`` calls of ``method`` (matching ``when``) fail."""
        if not description:
            description = {429: f"Too Many Requests: retry after {retry_after}",
                           403: "Forbidden: bot was blocked by the user",
                           400: "Bad Request: can't parse entities: injected"}.get(
                status, "Internal Server Error")
        self.faults.setdefault(method, []).append(Fault(status, description, retry_after, times,
                                                        when))

    def calls_of(self, method: str, ok_only: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def chat_messages(self, chat_id: int) -> list[Sent]:
        return sorted((m for (c, _), m in self.messages.items() if c == chat_id),
                      key=lambda m: m.message_id)

    def last_message(self, chat_id: int) -> Sent:
        return self.chat_messages(chat_id)[-1]

    def add_file(self, name: str, data: bytes) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (name, data)
        return file_id

    async def wait_until(self, check: Callable[[], bool], within_s: float = 30.0) -> None:
        """Wait until ``check()`` holds, re-checked after every API call the bot makes."""
        async def until() -> None:
            while not check():
                self._called.clear()
                await self._called.wait()
        await asyncio.wait_for(until(), within_s)

    def push(self, update: dict[str, Any]) -> None:
        """Queue an update for getUpdates (real polling tests)."""
        self._updates.append(update)
        self._new_update.set()

    # ---- payload builders ---------------------------------------------------------------------
    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "NightOwl",
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}

    @staticmethod
    def user(user_id: int, first_name: str = "Ann") -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": first_name,
                "username": f"{first_name.lower()}{user_id}", "language_code": "en"}

    def private(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self.chats[user["id"]] = chat
        return chat

    def group(self, chat_id: int = -100_500, title: str = "Night owls") -> dict[str, Any]:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        self.chats[chat_id] = chat
        return chat

    def message(self, chat: dict[str, Any], user: dict[str, Any], text: str | None = None, *,
                entities: list[dict[str, Any]] | None = None,
                reply_to: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """A ``message`` update. ``extra`` adds fields (document, caption, sticker, photo...)."""
        msg: dict[str, Any] = {"message_id": next(self._ids), "date": int(time.time()),
                               "chat": chat, "from": user, **extra}
        if text is not None:
            msg["text"] = text
        if entities:
            msg["entities"] = entities
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        self._askers[(chat["id"], msg["message_id"])] = user
        return {"update_id": next(self._update_ids), "message": msg}

    def text(self, chat: dict[str, Any], user: dict[str, Any], text: str,
             **kw: Any) -> dict[str, Any]:
        """A text message; ``@botname`` in it gets a mention entity; a leading /cmd a command."""
        entities = list(kw.pop("entities", []) or [])
        if text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0,
                             "length": utf16_len(text.split()[0])})
        for m in re.finditer(rf"@{self.username}\b", text):
            entities.append({"type": "mention", "offset": utf16_len(text[:m.start()]),
                             "length": utf16_len(m.group(0))})
        return self.message(chat, user, text, entities=entities or None, **kw)

    def document(self, chat: dict[str, Any], user: dict[str, Any], name: str, data: bytes, *,
                 caption: str | None = None, size: int | None = None,
                 mime: str = "text/plain") -> dict[str, Any]:
        file_id = self.add_file(name, data)
        extra: dict[str, Any] = {"document": {"file_id": file_id, "file_unique_id": f"u{file_id}",
                                              "file_name": name, "mime_type": mime,
                                              "file_size": size if size is not None else len(data)}}
        if caption is not None:
            extra["caption"] = caption
            if caption.startswith("/"):
                extra["caption_entities"] = [{"type": "bot_command", "offset": 0,
                                              "length": len(caption.split()[0])}]
        return self.message(chat, user, None, **extra)

    def sticker(self, chat: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        return self.message(chat, user, None, sticker={
            "file_id": "stk", "file_unique_id": "ustk", "type": "regular", "width": 512,
            "height": 512, "is_animated": False, "is_video": False})

    def photo(self, chat: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        return self.message(chat, user, None, photo=[{"file_id": "ph", "file_unique_id": "uph",
                                                     "width": 90, "height": 90}])

    def voice(self, chat: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        return self.message(chat, user, None, voice={"file_id": "vc", "file_unique_id": "uvc",
                                                     "duration": 2})

    def as_message(self, sent: Sent) -> dict[str, Any]:
        """A bot message as it appears inside updates (reply_to_message, callback message)."""
        msg: dict[str, Any] = {"message_id": sent.message_id, "date": int(time.time()),
                               "chat": self._chat(sent.chat_id), "from": self.bot_user(),
                               "text": sent.text}
        if sent.reply_markup:
            msg["reply_markup"] = sent.reply_markup
        if sent.reply_to is not None:
            msg["reply_to_message"] = {"message_id": sent.reply_to, "date": int(time.time()),
                                       "chat": self._chat(sent.chat_id),
                                       "from": self._askers.get((sent.chat_id, sent.reply_to),
                                                                self.user(1))}
        return msg

    def press(self, sent: Sent, user: dict[str, Any], data: str) -> dict[str, Any]:
        """A callback_query update: ``user`` presses a button carrying ``data`` on ``sent``."""
        return {"update_id": next(self._update_ids), "callback_query": {
            "id": str(next(self._ids)), "from": user, "chat_instance": "ci",
            "message": self.as_message(sent), "data": data}}

    def _chat(self, chat_id: int) -> dict[str, Any]:
        return self.chats.get(chat_id) or {"id": chat_id,
                                           "type": "private" if chat_id > 0 else "supergroup"}

    # ---- API ----------------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return dict(await request.json())
        out: dict[str, Any] = {}
        for key, value in (await request.post()).items():
            if isinstance(value, FileField):
                out[key] = {"filename": value.filename, "bytes": value.file.read()}
            elif key in _STRING_PARAMS or not isinstance(value, str):
                out[key] = value
            else:
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = value
        return out

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        try:
            self._inject(method, params)
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                raise ApiError(400, f"Bad Request: method {method} is not supported by the fake")
            result = await handler(params)
        except ApiError as exc:
            call.status = exc.status
            self._called.set()
            body: dict[str, Any] = {"ok": False, "error_code": exc.status,
                                    "description": exc.description}
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
            return web.json_response(body, status=exc.status)
        call.answered_at = time.monotonic()
        if method == "getUpdates":
            call.returned = [u["update_id"] for u in result]
        self._called.set()
        return web.json_response({"ok": True, "result": result})

    def _inject(self, method: str, params: dict[str, Any]) -> None:
        for fault in self.faults.get(method, []):
            if fault.times > 0 and (fault.when is None or fault.when(params)):
                fault.times -= 1
                raise ApiError(fault.status, fault.description, fault.retry_after)

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        for file_id, (_name, data) in self.files.items():
            if path == f"documents/{file_id}":
                return web.Response(body=data)
        return web.Response(status=404)

    def _message_dict(self, sent: Sent) -> dict[str, Any]:
        msg = self.as_message(sent)
        msg.pop("reply_to_message", None)
        return msg

    def _store(self, chat_id: int, text: str, raw: str, params: dict[str, Any],
               kind: str = "text") -> Sent:
        reply = params.get("reply_parameters") or {}
        sent = Sent(int(chat_id), next(self._ids), text, raw, params.get("parse_mode"),
                    params.get("reply_markup"), reply.get("message_id"), kind)
        self.messages[(sent.chat_id, sent.message_id)] = sent
        return sent

    @staticmethod
    def _checked_text(params: dict[str, Any]) -> str:
        raw = str(params.get("text", ""))
        text = visible_text(raw, params.get("parse_mode"))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        return text

    async def _m_getMe(self, params: dict[str, Any]) -> Any:
        return self.bot_user()

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if self.on_get_updates is not None:
                await self.on_get_updates(offset)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        while not self._updates and not self._stopping and time.monotonic() < deadline:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return list(self._updates[:int(params.get("limit") or 100)])  # Telegram's 1-100

    async def _m_sendMessage(self, params: dict[str, Any]) -> Any:
        text = self._checked_text(params)
        return self._message_dict(self._store(params["chat_id"], text, params["text"], params))

    async def _edit_target(self, params: dict[str, Any]) -> Sent:
        sent = self.messages.get((int(params.get("chat_id", 0)),
                                  int(params.get("message_id", 0))))
        if sent is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        return sent

    async def _m_editMessageText(self, params: dict[str, Any]) -> Any:
        sent = await self._edit_target(params)
        text = self._checked_text(params)
        markup = params.get("reply_markup")
        if text == sent.text and markup == sent.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        sent.history.append(sent.text)
        sent.text, sent.raw, sent.parse_mode = text, params["text"], params.get("parse_mode")
        sent.reply_markup, sent.edits = markup, sent.edits + 1
        return self._message_dict(sent)

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        sent = await self._edit_target(params)
        markup = params.get("reply_markup")
        if markup == sent.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        sent.reply_markup = markup
        return self._message_dict(sent)

    async def _m_deleteMessage(self, params: dict[str, Any]) -> Any:
        if self.messages.pop((int(params["chat_id"]), int(params["message_id"])), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    async def _m_sendChatAction(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_setMyCommands(self, params: dict[str, Any]) -> Any:
        scope = params.get("scope") or {"type": "default"}
        key = scope["type"] + (f":{scope['chat_id']}" if "chat_id" in scope else "")
        self.commands[key] = list(params["commands"])
        return True

    async def _m_deleteMyCommands(self, params: dict[str, Any]) -> Any:
        scope = params.get("scope") or {"type": "default"}
        self.commands.pop(scope["type"] + (f":{scope['chat_id']}" if "chat_id" in scope else ""),
                          None)
        return True

    async def _m_getFile(self, params: dict[str, Any]) -> Any:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": f"u{file_id}",
                "file_size": len(self.files[file_id][1]), "file_path": f"documents/{file_id}"}

    async def _send_file(self, params: dict[str, Any], field_name: str) -> Any:
        upload = params.get(field_name) or {}
        caption = str(params.get("caption") or "")
        sent = self._store(params["chat_id"], caption, caption, params, kind=field_name)
        sent.history.append(str(upload.get("filename", "")) if isinstance(upload, dict) else "")
        msg = self._message_dict(sent)
        file = {"file_id": f"sent-{sent.message_id}", "file_unique_id": f"us{sent.message_id}"}
        if field_name == "photo":
            msg["photo"] = [{**file, "width": 100, "height": 100}]
        else:
            msg["document"] = {**file, "file_name": sent.history[-1]}
        return msg

    async def _m_sendDocument(self, params: dict[str, Any]) -> Any:
        return await self._send_file(params, "document")

    async def _m_sendPhoto(self, params: dict[str, Any]) -> Any:
        return await self._send_file(params, "photo")
