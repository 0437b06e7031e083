"""Telegram text rules: the 4096-unit limit, and HTML that always parses.

Telegram counts message length in UTF-16 code units of the text after entity parsing. Answers
are split on the plain text (``bot.core.text.split_text``, measured in UTF-16 units), and each
part is rendered to HTML on its own: every ``<``, ``>`` and ``&`` is escaped, and only balanced
Markdown-ish markers the model commonly emits (fenced code, inline code, **bold**) become tags.
"""

from __future__ import annotations

import html
import re

from bot.core.text import split_text, utf16_len

MESSAGE_LIMIT = 4096

_FENCE = re.compile(r"```([\w+#.-]*)\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`|\*\*([^*\n]+?)\*\*")


def split_message(text: str) -> list[str]:
    """The parts of ``text`` that each fit one Telegram message (``[]`` for a blank text)."""
    return split_text(text, MESSAGE_LIMIT, utf16_len)


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_esc(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{_esc(m.group(1))}</code>")
        else:
            out.append(f"<b>{_esc(m.group(2))}</b>")
        pos = m.end()
    out.append(_esc(text[pos:]))
    return "".join(out)


def to_html(text: str) -> str:
    """Render model text as Telegram HTML that always parses (unbalanced markers stay text)."""
    out: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        out.append(_inline(text[pos:m.start()]))
        lang, code = m.group(1), _esc(m.group(2).rstrip("\n"))
        if not code.strip():
            out.append(_esc(m.group(0)))
        elif lang:
            out.append(f'<pre><code class="language-{lang}">{code}</code></pre>')
        else:
            out.append(f"<pre>{code}</pre>")
        pos = m.end()
    out.append(_inline(text[pos:]))
    return "".join(out)


def visible(text: str) -> str:
    """What the user sees of ``to_html(text)`` (markers removed), for comparisons."""
    return html.unescape(re.sub(r"<[^>]+>", "", to_html(text)))
