"""``[discord]``: the bot token's variable, who is an admin, where it answers, pacing."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.config import list_setting, setting

# Discord permissions that may hide /admin from members without them ("" = shown to everyone).
ADMIN_MENU_PERMISSIONS = ("", "administrator", "manage_guild", "manage_channels",
                          "manage_messages", "moderate_members")


@dataclass(frozen=True)
class DiscordConfig:
    token_env: str = "DISCORD_BOT_TOKEN"
    admins: list[int] = list_setting()
    admin_role_ids: list[int] = list_setting()
    guild_ids: list[int] = list_setting()
    allowed_channels: list[int] = list_setting()
    reply_in_threads: bool = False
    stream_edit_interval_s: float = setting(1.2, 0.0, 60.0)
    message_content: bool = False
    max_attachment_mb: float = setting(20.0, 0.001, 2000.0)
    admin_menu_permission: str = setting("", choices=ADMIN_MENU_PERMISSIONS)
    ready_timeout_s: float = setting(60.0, 1.0, 3600.0)
    guild_ready_timeout_s: float = setting(2.0, 0.0, 60.0)
    api_base_url: str = ""
    gateway_url: str = ""
