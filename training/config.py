"""``[training]`` and ``[privacy]``, and the settings the learning loop reads from the whole config.

Training functions take a :class:`LearningSettings`: any object with these sections (the bot's
composed ``Config`` is one), so this package never imports the application that composes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from data.config import StorageConfig
from llm.config import ModelConfig, list_setting, setting
from rag.config import RagConfig

BASE_REPLAY_LOSSES = ("kl", "sft")
PROMOTE_MODES = ("auto", "admin")
METHODS = ("sft", "kto", "sft+dpo")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainingConfig:
    enabled: bool = True
    schedule: str = "0 3 * * *"
    timezone: str = "local"
    min_examples: int = setting(4, 1, 1_000_000)
    include_unrated_after_hours: float = setting(0.0, 0.0, 100_000.0)
    min_chars: int = setting(2, 0, 100_000)
    max_chars: int = setting(4000, 1, 1_000_000)
    eval_fraction: float = setting(0.2, 0.0, 0.9)
    max_seq_len: int = setting(512, 32, 1_000_000)
    epochs: float = setting(3.0, 0.01, 1000.0)
    max_steps: int = setting(-1, -1, 10_000_000)
    min_steps: int = setting(60, 0, 10_000_000)
    learning_rate: float = setting(1e-3, 1e-8, 1.0)
    weight_decay: float = setting(0.01, 0.0, 1.0)
    lr_scheduler: str = setting("cosine", choices=("linear", "cosine", "constant"))
    warmup_ratio: float = setting(0.1, 0.0, 0.9)
    warmup_steps: int = setting(0, 0, 1_000_000)
    batch_size: int = setting(4, 1, 4096)
    grad_accum: int = setting(1, 1, 4096)
    max_grad_norm: float = setting(0.3, 0.0, 1000.0)
    seed: int = 3407
    lora_r: int = setting(16, 1, 1024)
    lora_alpha: int = setting(32, 1, 4096)
    lora_dropout: float = setting(0.0, 0.0, 0.9)
    target_modules: list[str] = list_setting(TARGET_MODULES)
    continue_from_active: bool = False
    replay_share: float = setting(0.2, 0.0, 1.0)
    base_replay: int = setting(96, 0, 100_000)
    base_replay_loss: str = setting("kl", choices=BASE_REPLAY_LOSSES)
    base_replay_weight: float = setting(3.0, 0.0, 1000.0)  # chosen with bench/learning.py
    keep_adapters: int = setting(10, 1, 10_000)
    eval_tolerance: float = setting(0.3, 0.0, 10.0)
    max_changed: float = setting(0.25, 0.0, 1.0)
    report_questions: int = setting(8, 0, 1000)
    promote: str = setting("auto", choices=PROMOTE_MODES)
    method: str = setting("sft", choices=METHODS)
    pref_learning_rate: float = setting(1e-4, 1e-8, 1.0)
    pref_beta: float = setting(0.5, 0.0, 100.0)
    pref_epochs: float = setting(3.0, 0.01, 1000.0)
    threads: int = setting(0, 0, 512)
    review: str = setting("owners", choices=("owners", "admin"))


@dataclass(frozen=True)
class PrivacyConfig:
    retention_days: int = setting(0, 0, 100_000)
    scrub_pii: bool = True


class HistoryWindow(Protocol):
    """The serving history window; training renders examples with the same one."""

    @property
    def history_messages(self) -> int: ...


class LearningSettings(Protocol):
    """The sections the learning loop reads (the bot's ``Config`` provides them)."""

    @property
    def storage(self) -> StorageConfig: ...

    @property
    def model(self) -> ModelConfig: ...

    @property
    def rag(self) -> RagConfig: ...

    @property
    def training(self) -> TrainingConfig: ...

    @property
    def privacy(self) -> PrivacyConfig: ...

    @property
    def chat(self) -> HistoryWindow: ...
