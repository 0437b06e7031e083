"""Typed configuration: one object loaded once from ``config.toml`` and passed down.

Each package owns its section next to the code that reads it (``[storage]`` in ``data.config``,
``[model]`` and ``[serve]`` in ``llm.config``, ``[rag]`` in ``rag.config``,
``[training]``/``[privacy]`` in ``training.config``; the bot's own sections next to their
readers: ``bot.core.config``, ``bot.telegram.config``, ``bot.discord.config``,
``bot.console.config``, ``bot.logs``); this module composes them all into :class:`Config` and
is the one TOML loader. Every setting is a dataclass field. Unknown keys, wrong types and
out-of-range values are errors whose message names the file, the key and what is allowed.
Secrets never live in the file: a ``*_env`` setting names the environment variable that holds
them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.console.config import ConsoleConfig
from bot.core.config import ChatConfig, LimitsConfig, MetricsConfig, ModerationConfig
from bot.core.errors import ConfigError
from bot.discord.config import DiscordConfig
from bot.logs import LoggingConfig
from bot.telegram.config import TelegramConfig
from data.config import StorageConfig
from llm.config import DEFAULT_SYSTEM_PROMPT, ModelConfig, ServeConfig
from rag.config import RagConfig
from training.config import PrivacyConfig, TrainingConfig

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ChatConfig", "Config", "DiscordConfig", "LimitsConfig",
           "LoggingConfig", "MetricsConfig", "ModelConfig", "ModerationConfig", "PrivacyConfig",
           "RagConfig", "ServeConfig", "StorageConfig", "TelegramConfig", "TrainingConfig",
           "load_config", "parse_config"]


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    source: str = field(default="<defaults>", compare=False)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or keys replaced (``model__max_new_tokens=8``)."""
        cfg = self
        for key, value in sections.items():
            if "__" in key:
                sec, name = key.split("__", 1)
                cfg = dataclasses.replace(
                    cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **{name: value})})
            else:
                cfg = dataclasses.replace(cfg, **{key: value})
        return cfg

    def secret_values(self) -> list[str]:
        """The values of every configured secret (to redact them from logs, store, datasets)."""
        names = [self.telegram.token_env, self.discord.token_env, self.model.api_key_env,
                 self.serve.api_key_env]
        return [v for v in (self.secret(n) for n in names if n) if v and len(v) >= 6]

    def secret(self, env_name: str) -> str | None:
        """Read a secret from the environment variable named by a ``*_env`` setting."""
        value = os.environ.get(env_name, "").strip() if env_name else ""
        return value or None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(where: str, tp: Any, value: Any, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, types.GenericAlias) or origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_check_value(f"{where}[{i}]", item_tp, v, {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices") or ()
    if choices and value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where} must be between {lo} and {hi}, got {value!r}")
    return value


def _build_section(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {key!r}; allowed keys: {allowed}")
        kwargs[key] = _check_value(f"{where}.{key}", hints[key], value, dict(fields[key].metadata))
    return cls(**kwargs)


def _cross_checks(cfg: Config, where: str) -> None:
    m, t, r = cfg.model, cfg.training, cfg.rag
    if m.load_in_4bit and m.load_in_8bit:
        raise ConfigError(f"{where}: [model] load_in_4bit and load_in_8bit cannot both be true")
    if m.backend == "openai" and not m.base_url:
        raise ConfigError(f"{where}: [model] backend = 'openai' needs base_url "
                          "(e.g. 'http://127.0.0.1:8000/v1')")
    if r.chunk_overlap >= r.chunk_tokens:
        raise ConfigError(f"{where}: [rag] chunk_overlap ({r.chunk_overlap}) must be smaller "
                          f"than chunk_tokens ({r.chunk_tokens})")
    if t.min_chars >= t.max_chars:
        raise ConfigError(f"{where}: [training] min_chars ({t.min_chars}) must be smaller than "
                          f"max_chars ({t.max_chars})")
    if t.max_seq_len > m.context_length:
        raise ConfigError(f"{where}: [training] max_seq_len ({t.max_seq_len}) cannot exceed "
                          f"[model] context_length ({m.context_length})")
    if t.max_steps > 0 and t.warmup_steps >= t.max_steps:
        raise ConfigError(f"{where}: [training] warmup_steps ({t.warmup_steps}) must be smaller "
                          f"than max_steps ({t.max_steps}), or the learning rate never rises")
    if t.max_steps == 0:
        raise ConfigError(f"{where}: [training] max_steps must be -1 (use epochs) or >= 1")


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Parse TOML text into a validated :class:`Config`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}. Fix the line named above.") from exc
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    hints = typing.get_type_hints(Config)
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; allowed sections: "
                              f"{', '.join(sorted(sections))}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be a [section] table")
        kwargs[name] = _build_section(hints[name], value, f"{source}: [{name}]")
    cfg = Config(**kwargs, source=source)
    if base_dir is not None and not Path(cfg.storage.dir).expanduser().is_absolute():
        cfg = cfg.replace(storage=StorageConfig(dir=str(base_dir / cfg.storage.dir)))
    _cross_checks(cfg, source)
    return cfg


def resolve_config_path(path: str | None) -> Path:
    """``--config PATH``, else ``$NIGHTOWL_CONFIG``, else ``./config.toml``."""
    return Path(path or os.environ.get("NIGHTOWL_CONFIG") or "config.toml")


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the config file; relative storage dirs resolve against its folder."""
    p = resolve_config_path(str(path) if path is not None else None)
    if not p.exists():
        raise ConfigError(f"config file {p} not found. Pass --config PATH, set NIGHTOWL_CONFIG, "
                          "or copy config.toml from the NightOwl repository.")
    return parse_config(p.read_text(encoding="utf-8"), source=str(p), base_dir=p.parent.resolve())
