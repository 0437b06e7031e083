"""Inline keyboards and their callback data: the one place that writes and reads them.

``fb:<answer id>:<1|-1>`` rates an answer; ``cf:<action>:<user id>:<yes|no>`` confirms an action
(only ``forget`` today) for the user who asked; ``cmd:<command>:<args>`` runs a command for whoever
presses it (a result's :class:`bot.core.Button`, e.g. ``/review approve c12``; the core checks
rights). Parsing returns None for anything else, so stale or forged data is recognised in one
place.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core import Button

MAX_DATA = 64  # Telegram's limit on callback_data, in bytes


@dataclass(frozen=True)
class FeedbackPress:
    answer_id: int
    value: int  # 1 or -1


@dataclass(frozen=True)
class ConfirmPress:
    action: str
    user_id: str
    yes: bool


@dataclass(frozen=True)
class CommandPress:
    command: str
    args: str


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


def command_data(button: Button) -> str:
    data = f"cmd:{button.command}:{button.args}"
    if len(data.encode()) > MAX_DATA:
        raise ValueError(f"button data {data!r} is longer than Telegram's {MAX_DATA} bytes")
    return data


def command_keyboard(rows: list[tuple[Button, ...]]) -> InlineKeyboardMarkup:
    """A result's buttons, one keyboard row per row."""
    return InlineKeyboardMarkup([[InlineKeyboardButton(b.label, callback_data=command_data(b))
                                  for b in row] for row in rows])


def parse_command(data: str) -> CommandPress | None:
    parts = data.split(":", 2)
    if len(parts) != 3 or parts[0] != "cmd" or not parts[1].isalpha():
        return None
    return CommandPress(parts[1], parts[2])


def without_row(markup: InlineKeyboardMarkup, data: str) -> InlineKeyboardMarkup | None:
    """``markup`` without the row holding the button ``data`` (None when nothing is left)."""
    rows = [list(row) for row in markup.inline_keyboard
            if not any(b.callback_data == data for b in row)]
    return InlineKeyboardMarkup(rows) if rows else None
