"""Console authentication: the password file, signed session cookies, CSRF tokens, login throttle.

Invariants:
- Passwords are stored only as bcrypt hashes in ``<storage>/console/admins.json`` (mode 0600);
  checking an unknown name costs the same bcrypt work as a known one.
- A session is a cookie ``name|expires|nonce|fingerprint`` signed with HMAC-SHA256 under a random
  key in ``<storage>/console/secret.key`` (0600, created once). It expires; logging out revokes its
  nonce; changing the admin's password changes the fingerprint, so every older session dies.
- The CSRF token of a session is derived from its nonce (HMAC), so a form posted without it, or
  with another session's token, is refused. The login form's token is derived from a separate
  pre-login cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from bot.core.bounded import LruDict
from bot.core.errors import NightOwlError
from data.files import write_atomic

NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
BCRYPT_ROUNDS = 12
SESSION_COOKIE = "owl_session"
LOGIN_COOKIE = "owl_login"
# a hash with the default cost, checked when the name is unknown (same work either way)
_DUMMY = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(BCRYPT_ROUNDS))


class ConsoleAuthError(NightOwlError):
    """The console's password file is missing or unusable; the message says how to fix it."""


def console_dir(storage: Path) -> Path:
    return Path(storage) / "console"


class PasswordFile:
    """``admins.json``: admin name -> bcrypt hash."""

    def __init__(self, storage: Path, rounds: int = BCRYPT_ROUNDS) -> None:
        self.path = console_dir(storage) / "admins.json"
        self.rounds = rounds

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConsoleAuthError(f"{self.path} is unreadable ({exc}); delete it and run "
                                   "`nightowl console passwd` again.") from exc
        if not isinstance(raw, dict):
            raise ConsoleAuthError(f"{self.path} is not a JSON object; delete it and run "
                                   "`nightowl console passwd` again.")
        return {str(k): str(v) for k, v in raw.items()}

    def names(self) -> list[str]:
        return sorted(self.load())

    def set(self, name: str, password: str) -> None:
        if not NAME_RE.match(name):
            raise ConsoleAuthError(f"admin name {name!r} is not allowed: use 1-64 letters, "
                                   "digits or . _ @ -")
        if len(password) < MIN_PASSWORD:
            raise ConsoleAuthError(f"the password is too short: use at least {MIN_PASSWORD} "
                                   "characters.")
        hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(self.rounds)).decode()
        admins = {**self.load(), name: hashed}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(admins, indent=1), mode=0o600)

    def verify(self, name: str, password: str) -> bool:
        """True when ``name`` exists and ``password`` is its password (slow: bcrypt)."""
        stored = self.load().get(name)
        data = password.encode("utf-8")[:72]  # bcrypt reads 72 bytes at most
        if stored is None:
            bcrypt.checkpw(data, _DUMMY)
            return False
        return bcrypt.checkpw(data, stored.encode())

    def fingerprint(self, name: str) -> str | None:
        """Changes whenever the admin's password changes (sessions carry it)."""
        stored = self.load().get(name)
        return hashlib.sha256(stored.encode()).hexdigest()[:16] if stored else None


def secret_key(storage: Path) -> bytes:
    """The signing key, created once (random, 0600) beside the password file."""
    path = console_dir(storage) / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, secrets.token_hex(32), mode=0o600)
    return bytes.fromhex(path.read_text(encoding="utf-8").strip())


@dataclass(frozen=True)
class Session:
    admin: str
    expires: float
    nonce: str
    fingerprint: str


class Sessions:
    """Signs, checks and revokes session cookies; derives CSRF tokens."""

    def __init__(self, key: bytes, passwords: PasswordFile, lifetime_s: float) -> None:
        self.key = key
        self.passwords = passwords
        self.lifetime_s = lifetime_s
        self._revoked: LruDict[str, float] = LruDict(10_000)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, admin: str, now: float | None = None) -> tuple[Session, str]:
        fp = self.passwords.fingerprint(admin) or ""
        session = Session(admin, (now or time.time()) + self.lifetime_s,
                          secrets.token_hex(16), fp)
        payload = f"{admin}|{session.expires:.0f}|{session.nonce}|{fp}"
        token = base64.urlsafe_b64encode(payload.encode()).decode() + "." + self._sign(payload)
        return session, token

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None: forged, expired, revoked or from an old password."""
        if not cookie or "." not in cookie:
            return None
        encoded, _, sig = cookie.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded.encode()).decode()
            admin, expires, nonce, fp = payload.split("|")
            session = Session(admin, float(expires), nonce, fp)
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(self._sign(payload), sig):
            return None
        if session.expires < (now or time.time()) or nonce in self._revoked:
            return None
        if self.passwords.fingerprint(admin) != fp:
            return None
        return session

    def revoke(self, session: Session) -> None:
        self._revoked.put(session.nonce, session.expires)

    def csrf(self, nonce: str) -> str:
        return self._sign("csrf:" + nonce)[:32]

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(nonce), str(token))


class LoginThrottle:
    """At most ``attempts`` failed logins per client per ``window_s`` (and 10x that overall)."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: LruDict[str, deque[float]] = LruDict(10_000)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get_or_create(key, deque)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def wait_s(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        for key, limit in ((client, self.attempts), ("*", self.attempts * 10)):
            times = self._recent(key, now)
            if len(times) >= limit:
                return max(times[0] + self.window_s - now, 0.0) or 0.001
        return 0.0

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in (client, "*"):
            self._recent(key, now).append(now)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client)


def new_login_nonce() -> str:
    return secrets.token_hex(16)

