"""The core's config sections: ``[chat]``, ``[limits]``, ``[moderation]``, ``[metrics]``.

:class:`CoreSettings` is what :class:`bot.core.Core` reads: any object with these sections plus
``[model]``, ``[rag]`` and ``[training]`` (its review rule) and a ``secret_values()`` (the bot's
composed ``Config`` is one), so the core never imports the loader. ``setting``/``list_setting``
are the field helpers every section uses (``llm.config``'s), named here so a platform's section
needs only ``bot.core``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llm.config import ModelConfig, list_setting, setting
from rag.config import RagConfig
from training.config import TrainingConfig

__all__ = ["ChatConfig", "CoreSettings", "LimitsConfig", "MetricsConfig", "ModerationConfig",
           "list_setting", "setting"]


@dataclass(frozen=True)
class ChatConfig:
    history_messages: int = setting(20, 0, 1000)
    max_message_chars: int = setting(8000, 1, 1_000_000)
    stream_interval_s: float = setting(0.5, 0.0, 60.0)
    recover_max_age_s: float = setting(600.0, 0.0, 10_000_000.0)
    shutdown_grace_s: float = setting(5.0, 0.0, 600.0)


@dataclass(frozen=True)
class LimitsConfig:
    user_messages_per_minute: float = setting(20.0, 0.0, 100_000.0)
    user_burst: int = setting(5, 1, 100_000)
    chat_messages_per_minute: float = setting(60.0, 0.0, 100_000.0)
    max_concurrent_per_user: int = setting(2, 1, 1000)


@dataclass(frozen=True)
class ModerationConfig:
    blocked_words: list[str] = list_setting()
    classifier_model: str = ""
    classifier_labels: list[str] = list_setting(("toxic",))
    classifier_threshold: float = setting(0.8, 0.0, 1.0)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = setting(0, 0, 65535)
    host: str = "127.0.0.1"


class CoreSettings(Protocol):
    """The sections the core reads (``bot.config.Config`` has them all)."""

    @property
    def chat(self) -> ChatConfig: ...

    @property
    def model(self) -> ModelConfig: ...

    @property
    def rag(self) -> RagConfig: ...

    @property
    def training(self) -> TrainingConfig: ...

    @property
    def limits(self) -> LimitsConfig: ...

    @property
    def moderation(self) -> ModerationConfig: ...

    def secret_values(self) -> list[str]:
        """The configured secrets' values (replaced in user text before it is stored)."""
        ...
