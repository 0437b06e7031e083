"""The console web app's state and its security middlewares (the server is ``server``).

Order of checks on every request: the ``Host`` header must name the console (else 421); static
files and the login page are public; everything else needs a valid session cookie (else a
redirect to the login page); every POST needs the session's CSRF token (form field ``csrf`` or
header ``X-CSRF-Token``), else 403 and an audit row. Every response carries a strict CSP (scripts
and styles only from ``/static``), ``no-store`` caching and frame denial. The server binds
loopback unless ``[console] allow_remote`` is set (:func:`check_bind`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.console.auth import SESSION_COOKIE, LoginThrottle, PasswordFile, Session, Sessions
from bot.console.compare import BlindTrials
from bot.console.config import LOOPBACK, ConsoleConfig, is_loopback
from bot.console.render import page
from bot.console.services import PLATFORM, ConsoleCore, ConsoleSettings
from bot.core.bounded import LruDict
from bot.core.errors import ConfigError

log = logging.getLogger("nightowl.console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/login", "/static/")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class Progress:
    """A background job's progress (reindex), shown on its page."""

    running: bool = False
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class ConsoleState:
    core: ConsoleCore
    cfg: ConsoleSettings
    passwords: PasswordFile
    sessions: Sessions
    throttle: LoginThrottle
    trials: BlindTrials
    flashes: LruDict[str, list[str]] = field(default_factory=lambda: LruDict(1000))
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    training: asyncio.Task[Any] | None = None
    reindex: Progress = field(default_factory=Progress)
    integrity: tuple[float, str] = (0.0, "")  # (checked at, PRAGMA integrity_check result)

    @property
    def console(self) -> ConsoleConfig:
        return self.cfg.console

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def flash(self, session: Session, text: str) -> None:
        self.flashes.get_or_create(session.nonce, list).append(text)

    def take_flashes(self, session: Session) -> list[str]:
        return self.flashes.pop(session.nonce) or []

    async def audit(self, admin: str, action: str, args: str, allowed: bool,
                    result: str) -> None:
        await self.core.store.audit(PLATFORM, admin, action, args, allowed, result)


STATE: web.AppKey[ConsoleState] = web.AppKey("state", ConsoleState)
SESSION: web.RequestKey[Session] = web.RequestKey("session", Session)


def state_of(request: web.Request) -> ConsoleState:
    return request.app[STATE]


def session_of(request: web.Request) -> Session:
    return request[SESSION]  # set by the security middleware on every non-public route


def check_bind(cfg: ConsoleConfig) -> None:
    """Refuse a non-loopback bind address unless ``allow_remote`` says it is meant."""
    if not is_loopback(cfg.host) and not cfg.allow_remote:
        raise ConfigError(
            f"[console] host = {cfg.host!r} is not a loopback address, and the console can "
            "retrain and roll back the bot. Keep host = '127.0.0.1' behind a TLS reverse proxy "
            "(see the README), or set [console] allow_remote = true if you mean it.")


def allowed_hosts(cfg: ConsoleConfig) -> set[str]:
    names = {*LOOPBACK, *(h.lower() for h in cfg.allowed_hosts)}
    if cfg.host not in ("0.0.0.0", "::", ""):
        names.add(cfg.host.lower())
    return names


def host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = state_of(request)
    if host_name(request.headers.get("Host", "")) not in allowed_hosts(state.console):
        return web.Response(status=421, text="This host name is not served here. Add it to "
                            "[console] allowed_hosts if a proxy forwards it.")
    path = request.path
    if any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC):
        return await handler(request)
    session = state.sessions.check(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther(f"/login?next={path}")
        raise web.HTTPSeeOther("/login?expired=1")
    request[SESSION] = session
    if request.method == "POST":
        token = request.headers.get("X-CSRF-Token")
        if token is None:
            try:
                form = await request.post()
            except web.HTTPRequestEntityTooLarge:
                return page("error.html", 413, title="Too large", csrf="", admin=session.admin,
                            flashes=[], message=f"The request is larger than "
                            f"{request.client_max_size:,} bytes in total; upload fewer "
                            "or smaller files at once ([rag] max_file_mb is the limit per file).")
            token = str(form.get("csrf", "")) or None
        if not state.sessions.csrf_ok(session.nonce, token):
            await state.audit(session.admin, "csrf", path, False, "refused: missing or "
                              "forged CSRF token")
            return page("error.html", 403, title="Refused", csrf="", admin=session.admin,
                        flashes=[], message="This form was missing its security token or it "
                        "was forged. Reload the page and try again.")
    return await handler(request)


async def headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
