"""Discord's text rule: at most 2000 characters per message; longer answers become parts."""

from __future__ import annotations

from bot.core.text import split_text

LIMIT = 2000  # Discord's maximum characters per message


def split_message(text: str) -> list[str]:
    """The parts of ``text`` that each fit one Discord message (``[]`` for a blank text)."""
    return split_text(text, LIMIT)
