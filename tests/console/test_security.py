"""The console's security: login always, slow hash, signed expiring cookies, CSRF on every form,
login throttle, Host check, loopback default, audit rows, no secrets on any page."""

from __future__ import annotations

import io
import re
import stat
import time
from pathlib import Path

import pytest

from bot.cli.console import read_password
from bot.cli.main import main
from bot.config import Config
from bot.console.app import check_bind
from bot.console.auth import SESSION_COOKIE, PasswordFile
from bot.console.config import ConsoleConfig
from bot.core.errors import ConfigError
from tests.console.conftest import PASSWORD, Env, csrf_of

PAGES = ["/", "/conversations", "/review", "/training", "/compare", "/knowledge", "/probes"]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_needs_a_login(env: Env, path: str) -> None:
    resp = await env.client.get(path, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == f"/login?next={path}"


async def test_a_post_without_a_session_changes_nothing(env: Env) -> None:
    resp = await env.client.post("/probes/add", data={"question": "q", "expected": "e"},
                                 allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login?expired=1"
    assert not (env.cfg.storage.path / "probes.json").exists()


async def test_login_sets_a_signed_httponly_samesite_expiring_cookie(env: Env) -> None:
    resp = await env.login()
    assert resp.status == 200 and "Overview" in await resp.text()
    cookie = resp.history[0].cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert int(cookie["max-age"]) == int(env.cfg.console.session_hours * 3600)
    assert [(a.allowed, a.actor, a.platform) for a in await env.audit("login")] == [
        (True, "admin", "console")]
    # every page is reachable from the navigation bar of every page
    html = await (await env.client.get("/training")).text()
    for path in PAGES:
        assert f'href="{path}"' in html


async def test_wrong_password_is_generic_delayed_and_audited(env: Env) -> None:
    for name, password in (("admin", "wrong password"), ("nobody", PASSWORD)):
        started = time.monotonic()
        resp = await env.login(name, password)
        assert resp.status == 401
        assert "Wrong name or password." in await resp.text()
        assert time.monotonic() - started >= env.cfg.console.login_fail_delay_s
    rows = await env.audit("login")
    assert [(a.actor, a.allowed) for a in rows] == [("nobody", False), ("admin", False)]
    assert all(PASSWORD not in a.args + a.result for a in rows)
    assert SESSION_COOKIE not in env.client.session.cookie_jar.filter_cookies(
        env.client.make_url("/"))


async def test_login_attempts_are_rate_limited(env: Env) -> None:
    for _ in range(env.cfg.console.login_attempts):
        assert (await env.login("admin", "guess")).status == 401
    resp = await env.login()  # even the right password waits now
    assert resp.status == 429 and "Too many failed logins" in await resp.text()
    assert (await env.audit("login"))[0].result == "refused: too many attempts"


async def test_expired_forged_and_logged_out_sessions_are_refused(env: Env) -> None:
    sessions = env.state.sessions
    _, old = sessions.issue("admin", now=time.time() - sessions.lifetime_s - 5)
    _, good = sessions.issue("admin")
    forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
    _, ghost = sessions.issue("mallory")  # no such admin: no fingerprint matches
    for token in (old, forged, ghost):
        env.client.session.cookie_jar.update_cookies({SESSION_COOKIE: token})
        resp = await env.client.get("/", allow_redirects=False)
        assert resp.status == 303, token
    env.client.session.cookie_jar.update_cookies({SESSION_COOKIE: good})
    assert (await env.client.get("/", allow_redirects=False)).status == 200
    # changing the password ends every older session
    PasswordFile(env.cfg.storage.path, rounds=4).set("admin", "another password")
    assert (await env.client.get("/", allow_redirects=False)).status == 303


async def test_logout_revokes_the_session(env: Env) -> None:
    await env.login()
    token = env.client.session.cookie_jar.filter_cookies(
        env.client.make_url("/"))[SESSION_COOKIE].value
    resp = await env.post("/logout")
    assert "log in again" in await resp.text()
    env.client.session.cookie_jar.update_cookies({SESSION_COOKIE: token})  # replayed
    assert (await env.client.get("/", allow_redirects=False)).status == 303


async def test_missing_or_forged_csrf_is_refused_and_audited(env: Env) -> None:
    await env.login()
    for data in ({}, {"csrf": "0" * 32}):
        resp = await env.client.post("/probes/add",
                                     data={"question": "q", "expected": "e", **data})
        assert resp.status == 403 and "security token" in await resp.text()
    assert not (env.cfg.storage.path / "probes.json").exists()
    rows = await env.audit("csrf")
    assert len(rows) == 2 and not rows[0].allowed and rows[0].args == "/probes/add"
    # another session's token does not work either
    other, _ = env.state.sessions.issue("admin")
    resp = await env.client.post("/probes/add", data={
        "question": "q", "expected": "e", "csrf": env.state.sessions.csrf(other.nonce)})
    assert resp.status == 403


async def test_the_login_form_has_its_own_csrf_token(env: Env) -> None:
    resp = await env.client.post("/login", data={"name": "admin", "password": PASSWORD})
    assert resp.status == 403
    assert (await env.audit("login"))[0].result.startswith("refused: missing or forged CSRF")


async def test_a_foreign_host_header_is_refused(env: Env) -> None:
    await env.login()
    resp = await env.client.get("/", headers={"Host": "evil.example:8765"})
    assert resp.status == 421
    ok = await env.client.get("/", headers={"Host": "localhost:8765"})
    assert ok.status == 200


async def test_security_headers_and_no_secret_on_any_page(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:telegram-secret-token")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-key")
    await env.login()
    for path in PAGES:
        resp = await env.client.get(path)
        text = await resp.text()
        assert resp.status == 200, path
        assert "telegram-secret-token" not in text and "sk-openai-secret" not in text
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
        assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from elsewhere
    css = await env.client.get("/static/console.css")
    assert css.status == 200 and "body" in await css.text()


def test_a_public_bind_needs_allow_remote() -> None:
    with pytest.raises(ConfigError, match="allow_remote"):
        check_bind(ConsoleConfig(host="0.0.0.0"))
    check_bind(ConsoleConfig(host="0.0.0.0", allow_remote=True))
    check_bind(ConsoleConfig(host="127.0.0.1"))


def test_cli_refuses_0000_without_allow_remote(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('[model]\nbackend = "fake"\n')
    assert main(["--config", str(conf), "console", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "nightowl: error:" in err and "allow_remote = true" in err
    assert not (tmp_path / "var" / "nightowl.db").exists()  # refused before opening anything


def test_passwd_reads_stdin_and_stores_only_a_bcrypt_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('[model]\nbackend = "fake"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-passw0rd\n"))
    assert main(["--config", str(conf), "console", "passwd", "--name", "ops"]) == 0
    path = tmp_path / "var" / "console" / "admins.json"
    text = path.read_text()
    assert "s3cret-passw0rd" not in text and '"ops": "$2b$12$' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = Config().replace(storage__dir=str(tmp_path / "var"))
    files = PasswordFile(cfg.storage.path)
    assert files.verify("ops", "s3cret-passw0rd") and not files.verify("ops", "s3cret")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["--config", str(conf), "console", "passwd"]) == 2
    assert "too short" in capsys.readouterr().err


def test_read_password_takes_one_line_when_not_a_terminal() -> None:
    assert read_password(io.StringIO("pass word 1\nignored\n")) == "pass word 1"


def test_csrf_regex_helper_sees_the_login_token() -> None:
    assert csrf_of('<input type="hidden" name="csrf" value="abc123">') == "abc123"
