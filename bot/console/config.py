"""``[console]``: where the web console listens and how it keeps sessions.

The console binds loopback by default; any other address is refused unless ``allow_remote`` is
set (then put it behind a TLS reverse proxy, set ``secure_cookies`` and name the proxy's public
host in ``allowed_hosts``). Requests whose ``Host`` header is not the bind address, a loopback
name or one of ``allowed_hosts`` are refused (DNS rebinding).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.config import list_setting, setting

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = True  # started by `nightowl run`
    host: str = "127.0.0.1"
    port: int = setting(8765, 1, 65535)
    allow_remote: bool = False
    allowed_hosts: list[str] = list_setting()
    secure_cookies: bool = False  # set when a TLS reverse proxy serves the console
    session_hours: float = setting(12.0, 0.05, 24.0 * 30)
    login_attempts: int = setting(5, 1, 1000)  # failed logins per client per login_window_s
    login_window_s: float = setting(300.0, 1.0, 86400.0)
    login_fail_delay_s: float = setting(1.0, 0.0, 30.0)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")
