"""Inline keyboards and their callback data: the one place that writes and reads them.

``fb:<answer id>:<1|-1>`` rates an answer; ``cf:<action>:<user id>:<yes|no>`` confirms an action
(only ``forget`` today) for the user who asked. Parsing returns None for anything else, so stale
or forged data is recognised in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup


@dataclass(frozen=True)
class FeedbackPress:
    answer_id: int
    value: int  # 1 or -1


@dataclass(frozen=True)
class ConfirmPress:
    action: str
    user_id: str
    yes: bool


def feedback_keyboard(answer_id: int, chosen: int | None = None) -> InlineKeyboardMarkup:
    """👍/👎 buttons carrying the answer id; the recorded choice is marked with ✅."""
    up = "✅ 👍" if chosen == 1 else "👍"
    down = "✅ 👎" if chosen == -1 else "👎"
    return InlineKeyboardMarkup([[InlineKeyboardButton(up, callback_data=f"fb:{answer_id}:1"),
                                  InlineKeyboardButton(down, callback_data=f"fb:{answer_id}:-1")]])


def confirm_keyboard(action: str, user_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("Yes, do it", callback_data=f"cf:{action}:{user_id}:yes"),
        InlineKeyboardButton("Cancel", callback_data=f"cf:{action}:{user_id}:no")]])


def parse_feedback(data: str) -> FeedbackPress | None:
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != "fb":
        return None
    try:
        aid, value = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return FeedbackPress(aid, value) if value in (1, -1) else None


def parse_confirm(data: str) -> ConfirmPress | None:
    parts = data.split(":")
    if len(parts) != 4 or parts[0] != "cf":
        return None
    return ConfirmPress(parts[1], parts[2], parts[3] == "yes")
