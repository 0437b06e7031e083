"""Telegram text rules: the 4096-character limit, splitting at natural bounds, safe HTML.

Telegram counts message length in UTF-16 code units of the text after entity parsing. Answers
are split on the plain text (paragraph, then line, then sentence, then word bounds), and each
part is rendered to HTML on its own: every ``<``, ``>`` and ``&`` is escaped, and only balanced
Markdown-ish markers the model commonly emits (fenced code, inline code, **bold**) become tags.
"""

from __future__ import annotations

import html
import re

MESSAGE_LIMIT = 4096

_SENTENCE_END = re.compile(r"[.!?…。](?=\s)")
_FENCE = re.compile(r"```([\w+#.-]*)\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`|\*\*([^*\n]+?)\*\*")


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The largest number of characters of ``text`` whose UTF-16 length is <= ``limit``."""
    if len(text) <= limit and utf16_len(text) <= limit:
        return len(text)
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _best_cut(window: str) -> int:
    """Where to cut a too-long text whose first ``len(window)`` characters fit."""
    half, third = len(window) // 2, len(window) // 3
    para = window.rfind("\n\n")
    if para >= half:
        return para
    line = window.rfind("\n")
    if line >= half:
        return line
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= third:
        return ends[-1]
    space = max(window.rfind(" "), window.rfind("\t"))
    if space >= third:
        return space
    return len(window)


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split into parts of at most ``limit`` UTF-16 units, at the most natural bound available.

    The split is greedy from the start, so the parts of a growing (streamed) text never change
    once a later part exists: earlier messages are final as soon as a new one is started.
    """
    rest = text.strip()
    parts: list[str] = []
    while utf16_len(rest) > limit:
        fit = _prefix_within(rest, limit)
        cut = _best_cut(rest[:fit]) or fit
        head = rest[:cut].rstrip()
        if not head:  # only whitespace before the bound: hard cut
            head, cut = rest[:fit], fit
        parts.append(head)
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


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
