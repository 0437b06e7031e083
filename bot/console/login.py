"""Logging in and out: a plain HTML form (works without JavaScript).

A wrong name or password gets one generic message after ``[console] login_fail_delay_s``; more
than ``login_attempts`` failures from one client within ``login_window_s`` are refused without
checking the password. Each attempt is audited (the name tried, never the password). The login
form's CSRF token comes from a pre-login cookie; a successful login sets a fresh session cookie
(HttpOnly, SameSite=Strict, expiring; Secure with ``[console] secure_cookies``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from bot.console.app import session_of, state_of
from bot.console.auth import LOGIN_COOKIE, SESSION_COOKIE, new_login_nonce
from bot.console.render import page, see_other

GENERIC = "Wrong name or password."


def routes(router: web.UrlDispatcher) -> None:
    router.add_get("/login", login_form)
    router.add_post("/login", login)
    router.add_post("/logout", logout)


def _next(value: str) -> str:
    """Only a local path (no //host, no scheme): the login cannot redirect off the console."""
    return value if value.startswith("/") and not value.startswith("//") \
        and "\\" not in value else "/"


def _form(request: web.Request, nonce: str, *, message: str = "", status: int = 200,
          name: str = "") -> web.Response:
    state = state_of(request)
    notice = ""
    if request.query.get("expired"):
        notice = "Your session expired or you logged out; log in again."
    if not state.passwords.names():
        notice = ("No console admin exists yet. On the server run `nightowl console passwd` "
                  "(it asks for a password), then log in here.")
    resp = page("login.html", status, title="Log in", csrf=state.sessions.csrf("login:" + nonce),
                message=message, notice=notice, name=name,
                next=_next(request.query.get("next", "/")))
    resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/login",
                    secure=state.console.secure_cookies, max_age=3600)
    return resp


async def login_form(request: web.Request) -> web.Response:
    return _form(request, request.cookies.get(LOGIN_COOKIE) or new_login_nonce())


async def login(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    name = str(form.get("name", "")).strip()[:64]
    if not nonce or not state.sessions.csrf_ok("login:" + nonce, str(form.get("csrf", ""))):
        await state.audit(name or "?", "login", "", False, "refused: missing or forged CSRF token")
        return _form(request, new_login_nonce(), status=403,
                     message="The login form expired; please try again.")
    client = request.remote or "?"
    wait = state.throttle.wait_s(client)
    if wait:
        await state.audit(name or "?", "login", client, False, "refused: too many attempts")
        return _form(request, nonce, status=429, name=name,
                     message=f"Too many failed logins; try again in {wait:.0f} s.")
    password = str(form.get("password", ""))
    ok = await asyncio.to_thread(state.passwords.verify, name, password)
    if not ok:
        state.throttle.failed(client)
        await state.audit(name or "?", "login", client, False, "wrong name or password")
        await asyncio.sleep(state.console.login_fail_delay_s)  # slows guessing; same for all
        return _form(request, nonce, status=401, message=GENERIC, name=name)
    state.throttle.succeeded(client)
    _, token = state.sessions.issue(name)
    await state.audit(name, "login", client, True, "logged in")
    resp = see_other(_next(str(form.get("next", "/"))))
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/",
                    secure=state.console.secure_cookies,
                    max_age=int(state.sessions.lifetime_s))
    resp.del_cookie(LOGIN_COOKIE, path="/login")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    session = session_of(request)
    state.sessions.revoke(session)
    await state.audit(session.admin, "logout", "", True, "logged out")
    resp = see_other("/login?expired=1")
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp
