"""Who may talk to the server: bind check, Host check, API key, JSON bodies; the error shape.

Invariants:
* A non-loopback bind without an API key is refused before the socket is opened.
* With a key, EVERY route (``/v1/models``, unknown paths included) needs
  ``Authorization: Bearer KEY``, compared in constant time.
* The Host header must name the server (loopback names, the bound host, an IP address when bound
  to every interface, or ``[serve] allowed_hosts``), so a DNS-rebinding page cannot read answers.
* A POST body must be declared ``application/json``: a cross-site "simple" request (text/plain,
  no preflight) is refused before it has any effect.
* Every error is OpenAI's ``{"error": {...}}`` shape with a generic message; details (paths)
  go to the server log only.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from llm.errors import ModelError

log = logging.getLogger("nightowl.serve")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class Refused(Exception):
    """A request the server answers with an error status (raised inside handlers)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_response(status: int, message: str,
                   kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str, key_env: str) -> None:
    """Refuse to listen beyond loopback without a key (anyone reaching the port could use it)."""
    if api_key or is_loopback(host):
        return
    raise ModelError(
        f"refusing to serve on {host or 'every interface'} without an API key: anyone who can "
        f"reach the port could use the model. Export {key_env or 'NIGHTOWL_API_KEY'}=<a long "
        "random key> (or name another variable with --api-key-env / [serve] api_key_env), or "
        "bind 127.0.0.1.")


def _host_name(header: str) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1")."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True)
class Guard:
    """The checks every request passes before a handler runs."""

    api_key: str
    bound_host: str
    allowed_hosts: tuple[str, ...] = ()

    def host_allowed(self, header: str | None) -> bool:
        if not header:  # HTTP/1.0 clients; every browser sends Host
            return True
        if "*" in self.allowed_hosts:
            return True
        name = _host_name(header)
        allowed = LOOPBACK_NAMES | {_host_name(h) for h in (self.bound_host, *self.allowed_hosts)}
        if name in allowed:
            return True
        if self.bound_host in WILDCARDS:  # every interface: the machine's own addresses
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True  # an IP literal cannot be rebound to another name
        return False

    def authorized(self, header: str | None) -> bool:
        if not self.api_key:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.api_key}".encode())

    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not self.host_allowed(request.headers.get("Host")):
                return error_response(403, "this Host is not served here; add it to [serve] "
                                      "allowed_hosts if it is yours", "permission_error")
            if not self.authorized(request.headers.get("Authorization")):
                return error_response(401, "missing or invalid API key (send Authorization: "
                                      "Bearer KEY)", "authentication_error")
            if request.method == "POST" and request.content_type != "application/json":
                return error_response(415, "the body must be JSON with Content-Type: "
                                      "application/json")
            try:
                return await handler(request)
            except Refused as exc:
                return error_response(exc.status, exc.message, exc.kind)
            except web.HTTPException as exc:  # 404, 405, 413 ...: same shape, aiohttp's reason
                if exc.status < 400:
                    raise
                return error_response(exc.status, exc.reason)
        return guard
