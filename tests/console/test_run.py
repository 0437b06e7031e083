"""``nightowl run`` starts the console beside the platforms (bot.app), and a busy console port
does not keep the bots from running."""

from __future__ import annotations

import socket

import aiohttp

from bot import app as app_mod
from bot.config import Config


async def test_run_serves_the_console_and_survives_a_busy_port(cfg: Config) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said: list[str] = []
    cfg = cfg.replace(console__port=port)
    async with app_mod.open_services(cfg, say=said.append, knowledge=False) as svc:
        async with app_mod._console(svc, said.append) as console:
            assert console is not None
            assert f"Console: http://127.0.0.1:{port}/" in said
            assert any("nightowl console passwd" in line for line in said)
            async with aiohttp.ClientSession() as http:
                resp = await http.get(f"http://127.0.0.1:{port}/", allow_redirects=False)
                assert resp.status == 303 and resp.headers["Location"] == "/login?next=/"
            async with app_mod._console(svc, said.append) as second:  # the port is taken
                assert second is None
            assert any(line.startswith("Console: not started (the console cannot listen")
                       for line in said)
        async with app_mod._console(svc.__class__(**{**svc.__dict__, "cfg": cfg.replace(
                console__enabled=False)}), said.append) as off:
            assert off is None
