"""Text rules every platform shares: THE message splitter, and reading ``/command args``.

:func:`split_text` cuts an answer into parts that fit one platform message (Telegram: 4096
UTF-16 units, Discord: 2000 characters; the caller passes the limit and how to measure). It cuts
at the most natural bound in the part's window: a paragraph break in its second half, else a
line break there, else after the last sentence end in its last two thirds, else at a space
there, else hard. The split is greedy from the start, so the parts of a growing (streamed) text
never change once a later part exists: earlier messages are final as soon as a new one starts.
An empty (or all-blank) text has no parts: ``[]``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

Measure = Callable[[str], int]

# A sentence ends at . ! ? … or 。, with any closing quotes or brackets, before white space.
_SENTENCE_END = re.compile(r"[.!?…。][\"'”’)\]]*(?=\s)")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (how Telegram counts)."""
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int, measure: Measure) -> int:
    """The largest number of characters of ``text`` whose measure is <= ``limit``."""
    if len(text) <= limit and measure(text) <= limit:
        return len(text)
    if measure is len:
        return limit
    lo, hi = 0, min(len(text), limit)  # measure >= len for every measure used here
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


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


def split_text(text: str, limit: int, measure: Measure = len) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` (as ``measure`` counts), stripped of
    surrounding white space, at the most natural bound available; ``[]`` for a blank text."""
    rest = text.strip()
    parts: list[str] = []
    while measure(rest) > limit:
        fit = _prefix_within(rest, limit, measure)
        cut = _best_cut(rest[:fit]) or fit
        head = rest[:cut].rstrip()
        if not head:  # only white space before the bound: hard cut
            head, cut = rest[:fit], fit
        parts.append(head)
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def split_command(text: str) -> tuple[str, str]:
    """``"/ask@Bot  what?"`` -> ``("ask", "what?")``; the name is lower case, without ``/``
    and without a ``@BotName`` suffix; text on the following lines belongs to the arguments."""
    head, _, rest = text.strip().partition(" ")
    head, _, rest2 = head.partition("\n")
    args = (rest2 + " " + rest).strip() if rest2 else rest.strip()
    return head.lstrip("/").split("@", 1)[0].lower(), args


def pseudonym(platform: str, raw_id: object) -> str:
    """A short stable stand-in for a platform user or chat id in logs: never the raw id (the
    same for one id everywhere, so log lines of one person can still be followed)."""
    return hashlib.sha256(f"{platform}:{raw_id}".encode()).hexdigest()[:12]
