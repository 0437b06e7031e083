"""Fixtures for Discord platform tests: the fake Discord, a real Store/Core, and bot lifecycles.

Import the fixture into a test module with ``from tests.fakes.discord_harness import discord_env``.
The fixture fails the test on ERROR log records (unless the test declares them with
``env.allow_errors(...)``) and on any limit the fake saw violated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.core import Core
from bot.discord.client import DiscordBot
from data.store import Store
from llm.fake import FakeChatModel
from rag.base import IngestResult, Passage
from rag.fake import FakeRetriever
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.learning import FakeLearning


class FakeKnowledge(FakeRetriever):
    """A FakeRetriever that also accepts uploads (what /admin ingest needs)."""

    def __init__(self, passages: list[Passage]) -> None:
        super().__init__(passages)
        self.ingested: list[tuple[str, bytes, str]] = []

    async def ingest_bytes(self, name: str, data: bytes, *, by: str) -> IngestResult:
        self.ingested.append((name, data, by))
        return IngestResult(name, "added", chunks=max(1, len(data) // 200))

    async def count(self) -> int:
        return len(self.passages) + len(self.ingested)


PASSAGES = [Passage("NightOwl retrains every night at three from rated conversations.",
                    "guide.md", "Retraining", 0.9, "guide-1")]


class DiscordEnv:
    def __init__(self, fake: FakeDiscord, cfg: Config, store: Store, tmp_path: Path) -> None:
        self.fake = fake
        self.cfg = cfg.replace(discord__guild_ready_timeout_s=0.05, model__max_new_tokens=2000,
                               discord__stream_edit_interval_s=0.05, discord__ready_timeout_s=10.0,
                               limits__user_messages_per_minute=0.0,
                               limits__chat_messages_per_minute=0.0)
        self.store = store
        self.tmp_path = tmp_path
        self.model = FakeChatModel(context_length=16384)
        self.learning = FakeLearning()
        self.kb = FakeKnowledge(PASSAGES)
        self.core = self.new_core()
        self.bots: list[DiscordBot] = []
        self.allowed_errors: list[re.Pattern[str]] = []
        self.alice = fake.add_user("alice")
        self.bob = fake.add_user("bob")
        self.admin_role = fake.add_role("ops")
        self.carol = fake.add_user("carol", roles=[self.admin_role])  # admin by role
        self.root = fake.add_user("root")  # admin by id

    def new_core(self) -> Core:
        return Core(self.cfg, self.store, self.model, knowledge=self.kb, learning=self.learning)

    def allow_errors(self, pattern: str) -> None:
        self.allowed_errors.append(re.compile(pattern))

    async def start(self, *, restart: bool = False, **discord: Any) -> DiscordBot:
        """Start a bot (``restart=True``: stop the running ones, new Core, same store)."""
        if restart:
            await self.stop_all()
            self.core = self.new_core()
        defaults = {"admins": [int(self.root["id"])],
                    "admin_role_ids": [int(self.admin_role)]}
        cfg = self.cfg.replace(**{f"discord__{k}": v for k, v in {**defaults, **discord}.items()})
        bot = DiscordBot(cfg.discord, self.core, self.fake.valid_token)
        await bot.__aenter__()
        self.bots.append(bot)
        return bot

    async def stop_all(self) -> None:
        while self.bots:
            await self.bots.pop().__aexit__(None, None, None)


@pytest.fixture
async def discord_env(cfg: Config, store: Store, tmp_path: Path,
                      caplog: pytest.LogCaptureFixture) -> AsyncIterator[DiscordEnv]:
    caplog.set_level(logging.INFO)
    fake = FakeDiscord()
    await fake.start()
    env = DiscordEnv(fake, cfg, store, tmp_path)
    try:
        with fake.patched():
            yield env
            await env.core.wait_background()
            await env.stop_all()
    finally:
        await fake.stop()
    errors = [r for r in caplog.get_records("call") + caplog.get_records("teardown")
              if r.levelno >= logging.ERROR
              and not any(p.search(r.getMessage()) for p in env.allowed_errors)]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    assert not fake.violations, fake.violations
