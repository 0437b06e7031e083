"""Discord API payload builders for the fake gateway/REST server — the one place they live.

Shapes follow the Discord API v10 documentation and what discord.py 2.7 reads (see
../shared/notes/platform-testing.md for the pitfalls: application info keys, member_count equal to
len(members), ``attachment_size_limit`` on interactions, ``guild_id`` inside command data).
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

# Permission bits (https://discord.com/developers/docs/topics/permissions).
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
DEFAULT_PERMISSIONS = (VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
                       | READ_MESSAGE_HISTORY | USE_APPLICATION_COMMANDS | CREATE_PUBLIC_THREADS
                       | SEND_MESSAGES_IN_THREADS)

MESSAGE_CONTENT_INTENT = 1 << 15
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024

_ids = itertools.count(1_100_000_000_000_000_000)


def snowflake() -> str:
    """A fresh, increasing id (as a string, like Discord sends them)."""
    return str(next(_ids))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user(uid: int | str, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {"id": str(uid), "username": name, "global_name": name.title(), "discriminator": "0",
            "avatar": None, "bot": bot, "public_flags": 0, "flags": 0}


def member(u: dict[str, Any], roles: list[str] | None = None) -> dict[str, Any]:
    return {"user": u, "roles": list(roles or []), "joined_at": now_iso(), "deaf": False,
            "mute": False, "flags": 0, "pending": False, "nick": None}


def role(rid: str, name: str, permissions: int, *, managed: bool = False,
         bot_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": rid, "name": name, "permissions": str(permissions),
                            "position": 0 if name == "@everyone" else 1, "color": 0,
                            "hoist": False, "managed": managed, "mentionable": True, "flags": 0}
    if bot_id:
        data["tags"] = {"bot_id": bot_id}
    return data


def text_channel(cid: str, guild_id: str, name: str,
                 overwrites: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": cid, "type": 0, "guild_id": guild_id, "name": name, "position": 0,
            "permission_overwrites": list(overwrites or []), "nsfw": False, "parent_id": None,
            "topic": None, "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}


def overwrite(target_id: str, *, member_target: bool = True, allow: int = 0,
              deny: int = 0) -> dict[str, Any]:
    return {"id": target_id, "type": 1 if member_target else 0, "allow": str(allow),
            "deny": str(deny)}


def thread_channel(tid: str, guild_id: str, parent_id: str, owner_id: str,
                   name: str) -> dict[str, Any]:
    return {"id": tid, "type": 11, "guild_id": guild_id, "parent_id": parent_id,
            "owner_id": owner_id, "name": name, "last_message_id": None, "message_count": 0,
            "member_count": 1, "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                "archive_timestamp": now_iso(), "locked": False}}


def dm_channel(cid: str, recipient: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "type": 1, "recipients": [recipient], "last_message_id": None, "flags": 0}


def guild(gid: str, name: str, *, owner_id: str, roles: list[dict[str, Any]],
          members: list[dict[str, Any]], channels: list[dict[str, Any]],
          threads: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": gid, "name": name, "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": owner_id, "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": roles, "emojis": [], "stickers": [],
            "features": [], "mfa_level": 0, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None,
            "banner": None, "premium_tier": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled":
            False, "large": False, "unavailable": False, "member_count": len(members),
            "members": members, "channels": channels, "threads": threads, "presences": [],
            "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
            "joined_at": now_iso(), "application_id": None}


def application(app_id: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {"id": app_id, "name": "NightOwl", "description": "", "icon": None,
            "bot_public": True, "bot_require_code_grant": False, "owner": owner,
            "verify_key": "0" * 64, "flags": 0, "summary": ""}


def attachment(aid: str, filename: str, size: int, url: str,
               content_type: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {"id": aid, "filename": filename, "size": size, "url": url,
                            "proxy_url": url}
    if content_type:
        data["content_type"] = content_type
    return data


def message(mid: str, channel_id: str, author: dict[str, Any], content: str, *,
            guild_id: str | None = None, author_member: dict[str, Any] | None = None,
            mentions: list[dict[str, Any]] | None = None, mention_roles: list[str] | None = None,
            attachments: list[dict[str, Any]] | None = None,
            components: list[dict[str, Any]] | None = None,
            referenced: dict[str, Any] | None = None, flags: int = 0,
            webhook_id: str | None = None, interaction_user: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": mid, "channel_id": channel_id, "author": author, "content": content,
        "timestamp": now_iso(), "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": list(mentions or []),
        "mention_roles": list(mention_roles or []), "attachments": list(attachments or []),
        "embeds": [], "pinned": False, "type": 19 if referenced else 0, "flags": flags,
        "components": list(components or []),
    }
    if guild_id:
        data["guild_id"] = guild_id
        if author_member is not None:
            data["member"] = {k: v for k, v in author_member.items() if k != "user"}
    if referenced is not None:
        data["message_reference"] = {"message_id": referenced["id"],
                                     "channel_id": referenced["channel_id"],
                                     **({"guild_id": guild_id} if guild_id else {})}
        data["referenced_message"] = referenced
    if webhook_id:
        data["webhook_id"] = webhook_id
    if interaction_user is not None:
        data["interaction_metadata"] = {"id": snowflake(), "type": 2, "user": interaction_user,
                                        "authorizing_integration_owners": {}}
    return data


def option(name: str, value: Any, kind: int) -> dict[str, Any]:
    return {"name": name, "type": kind, "value": value}


def interaction(iid: str, token: str, app_id: str, kind: int, data: dict[str, Any], *,
                channel: dict[str, Any], invoker: dict[str, Any],
                invoker_member: dict[str, Any] | None, guild_id: str | None,
                msg: dict[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": iid, "application_id": app_id, "type": kind, "token": token, "version": 1,
        "data": data, "channel_id": channel["id"], "channel": channel, "locale": "en-US",
        "app_permissions": str(DEFAULT_PERMISSIONS), "entitlements": [],
        "authorizing_integration_owners": {"0": guild_id} if guild_id else {"1": invoker["id"]},
        "context": 0 if guild_id else 1, "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if guild_id:
        payload["guild_id"] = guild_id
        payload["guild_locale"] = "en-US"
        payload["member"] = {**(invoker_member or member(invoker)),
                             "permissions": str(DEFAULT_PERMISSIONS)}
    else:
        payload["user"] = invoker
    if msg is not None:
        payload["message"] = msg
    return payload


def ready(bot_user: dict[str, Any], app_id: str, guild_ids: list[str],
          resume_url: str) -> dict[str, Any]:
    return {"v": 10, "user": bot_user, "guilds": [{"id": g, "unavailable": True}
                                                  for g in guild_ids],
            "session_id": f"session-{int(time.time())}", "resume_gateway_url": resume_url,
            "application": {"id": app_id, "flags": 0}, "private_channels": [],
            "relationships": [], "user_settings": {}, "shard": [0, 1]}


def error(code: int, message: str, **errors: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"code": code, "message": message}
    if errors:
        data["errors"] = errors
    return data
