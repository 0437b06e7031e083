"""The NightOwl console: a server-rendered web window onto the learning loop.

``app`` (the aiohttp app, the security middlewares, :class:`Console`, the server) · ``auth``
(password file, signed sessions, CSRF, login throttle) · ``login`` · ``pages`` (GET) ·
``actions`` (POST, each audited) · ``views`` (read-only view models; their SQL is
``data.insights``) · ``canary`` (the canary share, kept across restarts) · ``compare`` (adapters
side by side, blind A/B) · ``svg`` (the loss curve) · ``render`` (Jinja2) · ``services`` (what
it is given: the core's services) · ``config`` (``[console]``).
Templates and static files ship in this package; nothing is loaded from the internet. A
platform folder: it imports only ``bot.core`` of the bot.
"""

from __future__ import annotations

from bot.console.config import ConsoleConfig

__all__ = ["ConsoleConfig"]
