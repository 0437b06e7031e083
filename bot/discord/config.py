"""``[discord]``: the bot token's variable, who is an admin, who may talk and where, pacing.

Who may use the bot (messages, slash commands and buttons alike; :mod:`bot.discord.access`):
admins always; otherwise, as on Telegram, everyone when ``allowed_users`` and ``allowed_guilds``
are both empty, else a user in ``allowed_users`` or anyone in a guild in ``allowed_guilds``. In a
guild, ``allowed_channels`` (if set) also limits where. Direct messages only with ``allow_dms``,
and then (a DM being in no guild) only from ``allowed_users`` when an allowlist is set.
"""

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
    allowed_guilds: list[int] = list_setting()
    allowed_users: list[int] = list_setting()
    allow_dms: bool = False
    reply_in_threads: bool = False
    stream_edit_interval_s: float = setting(1.2, 0.0, 60.0)
    message_content: bool = False
    max_attachment_mb: float = setting(20.0, 0.001, 2000.0)
    admin_menu_permission: str = setting("", choices=ADMIN_MENU_PERMISSIONS)
    ready_timeout_s: float = setting(60.0, 1.0, 3600.0)
    guild_ready_timeout_s: float = setting(2.0, 0.0, 60.0)
    api_base_url: str = ""
    gateway_url: str = ""
