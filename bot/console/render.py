"""Pages: the Jinja2 environment (templates shipped in the package, autoescaped) and helpers.

Every page extends ``base.html`` (navigation to every page, the logout form); every form carries
the session's CSRF token (``csrf`` in the context). Text from the store, the model or a request
is escaped by Jinja's autoescape; the only unescaped markup is the server-made loss-curve SVG.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import jinja2
from aiohttp import web

NAV = (("/", "Overview"), ("/conversations", "Conversations"), ("/review", "Review queue"),
       ("/training", "Training runs"), ("/compare", "Compare"), ("/knowledge", "Knowledge"),
       ("/probes", "Probes & audit"))


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def _secs(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{s:.0f} s" if s >= 10 else f"{s:.2f} s"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bot.console", "templates"),
                             autoescape=jinja2.select_autoescape(("html",)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["secs"] = _secs
    env.globals["nav"] = NAV
    return env


ENV = environment()


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    html = ENV.get_template(template).render(**context)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def see_other(location: str) -> web.Response:
    """303: after a POST, the browser GETs ``location`` (reload does not repeat the action)."""
    return web.Response(status=303, headers={"Location": location})
