"""The console server: :func:`build_app` (routes, middlewares, static files) and
:class:`Console`, which serves it on the running event loop (``nightowl run`` / ``console``)."""

from __future__ import annotations

import asyncio
import dataclasses
from importlib import resources

from aiohttp import web

from bot.console import actions, canary, login, pages
from bot.console.app import STATE, ConsoleState, check_bind, headers, security
from bot.console.auth import LoginThrottle, PasswordFile, Sessions, secret_key
from bot.console.compare import BlindTrials
from bot.console.services import ConsoleCore, ConsoleSettings
from bot.core.errors import ConfigError


def build_app(core: ConsoleCore, cfg: ConsoleSettings) -> web.Application:
    """The console's aiohttp application on ``core``'s services."""
    storage = cfg.storage.path
    passwords = PasswordFile(storage)
    c = cfg.console
    state = ConsoleState(core, cfg, passwords,
                         Sessions(secret_key(storage), passwords, c.session_hours * 3600),
                         LoginThrottle(c.login_attempts, c.login_window_s), BlindTrials(storage))
    max_upload = int(cfg.rag.max_file_mb * 1024 * 1024)
    app = web.Application(middlewares=[security], client_max_size=8 * max_upload + 1024 * 1024)
    app[STATE] = state
    app.on_response_prepare.append(headers)
    app.on_startup.append(_restore_canary)
    app.on_shutdown.append(_stop_tasks)
    static = resources.files("bot.console") / "static"
    app.router.add_static("/static/", str(static), append_version=False)
    login.routes(app.router)
    pages.routes(app.router)
    actions.routes(app.router)
    return app


async def _restore_canary(app: web.Application) -> None:
    state = app[STATE]
    await canary.restore(state.core, state.cfg)


async def _stop_tasks(app: web.Application) -> None:
    for task in list(app[STATE].tasks):
        task.cancel()
    await asyncio.gather(*app[STATE].tasks, return_exceptions=True)


class Console:
    """``async with Console(core, cfg) as console:`` serves on ``[console] host:port``."""

    def __init__(self, core: ConsoleCore, cfg: ConsoleSettings, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.host = host if host is not None else cfg.console.host
        self.port = port if port is not None else cfg.console.port
        check_bind(dataclasses.replace(cfg.console, host=self.host))
        self.app = build_app(core, cfg)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def has_admin(self) -> bool:
        return bool(self.app[STATE].passwords.names())

    async def __aenter__(self) -> Console:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"the console cannot listen on {self.host}:{self.port} ({exc}); "
                              "choose another [console] port or --port.") from exc
        if self.port == 0:  # tests: the port the OS chose
            self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
