"""``nightowl console passwd`` then ``nightowl console`` as real processes, as a new admin would:
set a password from a script, start the console (no platform token), log in over HTTP, stop it
with SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.console.conftest import csrf_of

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _nightowl(conf: Path, *args: str, stdin: bytes | None = None
                    ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--config", str(conf), *args, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_passwd_then_console_then_login_then_sigterm(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('[model]\nbackend = "fake"\n[rag]\nembedding_model = "fake"\n'
                    'sample_on_first_run = false\n[training]\nenabled = false\n')
    setter = await _nightowl(conf, "console", "passwd", stdin=b"a long passphrase\n")
    out, _ = await setter.communicate(b"a long passphrase\n")
    assert setter.returncode == 0, out.decode()
    port = _free_port()
    proc = await _nightowl(conf, "console", "--port", str(port))
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, "the console exited before printing its URL"
            found = re.search(r"NightOwl console: (http://\S+)", line)
            url = found.group(1) if found else None
        assert url == f"http://127.0.0.1:{port}/"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            login = await (await http.get(url + "login")).text()
            resp = await http.post(url + "login", data={
                "name": "admin", "password": "a long passphrase", "csrf": csrf_of(login)})
            assert resp.status == 200 and "<h1>Overview</h1>" in await resp.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, rest.decode()
