"""``[model]``: which model answers, how it is loaded, how it samples and batches.

``setting`` is the convention every package's config section uses for its fields: the default
plus the allowed range or choices, which ``bot.config``'s one TOML loader enforces with messages
that name the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llm.base import GenParams

DEFAULT_SYSTEM_PROMPT = (
    "You are NightOwl, a helpful assistant. Answer briefly and precisely. "
    "When sources are given, answer from them and say so when they do not contain the answer."
)


def setting(default: Any, lo: float | None = None, hi: float | None = None,
            choices: tuple[str, ...] = ()) -> Any:
    """A config field with its default and what the loader accepts (range or choices)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


def list_setting(default: tuple[Any, ...] = ()) -> Any:
    """A list-valued config field (a fresh list per instance)."""
    return field(default_factory=lambda: list(default))


@dataclass(frozen=True)
class ModelConfig:
    backend: str = setting("local", choices=("local", "openai", "fake"))
    name: str = "embedded"
    dtype: str = setting("auto", choices=("auto", "bfloat16", "float32", "float16"))
    device: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    context_length: int = setting(2048, 128, 1_000_000)
    max_new_tokens: int = setting(256, 1, 32_768)
    temperature: float = setting(0.3, 0.0, 2.0)
    top_p: float = setting(0.9, 0.01, 1.0)
    repetition_penalty: float = setting(1.2, 1.0, 2.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_batch_size: int = setting(8, 1, 256)
    max_queue: int = setting(64, 1, 100_000)
    threads: int = setting(0, 0, 512)
    cpu_prepack: bool = True
    cpu_keep_freed_memory: bool = True
    canary_share: float = setting(0.0, 0.0, 1.0)
    base_url: str = ""
    api_key_env: str = ""
    timeout_s: float = setting(60.0, 1.0, 3600.0)

    def gen_params(self, **overrides: Any) -> GenParams:
        """The configured sampling settings: THE way every caller builds default GenParams."""
        params = GenParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                           top_p=self.top_p, repetition_penalty=self.repetition_penalty)
        return dataclasses.replace(params, **overrides) if overrides else params


@dataclass(frozen=True)
class ServeConfig:
    """``[serve]``: ``nightowl serve-openai``, the OpenAI-compatible server (llm.openai_server).

    Safe by default: loopback only unless an API key is set, every route authenticated when it
    is, adapters only from the registry, every request bounded.
    """

    host: str = "127.0.0.1"
    port: int = setting(8000, 0, 65_535)
    api_key_env: str = "NIGHTOWL_API_KEY"
    allowed_hosts: list[str] = list_setting()
    max_adapters: int = setting(4, 0, 64)
    max_messages: int = setting(256, 1, 100_000)
    max_stop: int = setting(4, 0, 64)
    max_stop_chars: int = setting(64, 1, 4_096)
    max_tokens: int = setting(2_048, 1, 1_000_000)
    max_body_bytes: int = setting(1_048_576, 1_024, 1_073_741_824)
    allow_ignore_eos: bool = False
    follow_active_s: float = setting(10.0, 0.1, 3_600.0)
