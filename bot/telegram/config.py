"""``[telegram]``: the bot token's variable, the Bot API address, who may talk, pacing."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.config import list_setting, setting


@dataclass(frozen=True)
class TelegramConfig:
    token_env: str = "TELEGRAM_BOT_TOKEN"
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str = "https://api.telegram.org/file/bot"
    admins: list[int] = list_setting()
    allowed_users: list[int] = list_setting()
    allowed_chats: list[int] = list_setting()
    stream_edit_interval_s: float = setting(1.5, 0.0, 60.0)
    max_document_mb: float = setting(20.0, 0.001, 2000.0)
    group_edit_interval_s: float = setting(3.0, 0.0, 60.0)
    poll_timeout_s: float = setting(10.0, 0.0, 600.0)
    request_timeout_s: float = setting(20.0, 0.1, 600.0)
    ack_timeout_s: float = setting(2.0, 0.0, 3600.0)
