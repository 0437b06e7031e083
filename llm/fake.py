"""FakeChatModel: a deterministic ChatModel for fast tests, registered like a real backend.

Adapters are labels (a folder must exist); the canary follows the one rule of every backend
(:mod:`llm.canary`): the last ``load_adapter``-ed version answers ``canary_share`` of ACTIVE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from llm.base import ACTIVE, BASE, CanaryState, ChatMessage, GenParams, StreamInfo
from llm.canary import Canary
from llm.config import ModelConfig
from llm.errors import AdapterError

Responder = Callable[[Sequence[ChatMessage]], str]
_DEFAULTS = ModelConfig().gen_params()  # what an unconfigured backend samples with


def echo_responder(messages: Sequence[ChatMessage]) -> str:
    """Default fake answer: repeats the last user message, and the first source line if any."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    cite = ""
    if "[1]" in system:
        cite = " Based on [1]."
    return f"You said: {last}.{cite}"


class FakeChatModel:
    """Streams a scripted answer word by word. ``responder`` decides the text."""

    def __init__(self, responder: Responder | None = None, *, delay_s: float = 0.0,
                 context_length: int = 2048, name: str = "fake",
                 canary_share: float = 0.0) -> None:
        self.name = name
        self.context_length = context_length
        self.responder = responder or echo_responder
        self.delay_s = delay_s
        self._active: str | None = None
        self.adapters: dict[str, Path] = {}
        self.calls: list[dict[str, Any]] = []
        self.fail_next: Exception | None = None
        self._canary = Canary(canary_share)

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages) + 2

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        params = params or _DEFAULTS
        if adapter == ACTIVE:
            used = self._canary.pick(self._active)
        else:
            used = None if adapter == BASE else adapter
        self.calls.append({"messages": list(messages), "params": params, "adapter": used})
        if info is not None:
            info.adapter = used
            info.prompt_tokens = self.count_tokens(messages)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        words = self.responder(messages).split(" ")
        for i, word in enumerate(words[: params.max_new_tokens]):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            else:
                await asyncio.sleep(0)
            if info is not None:
                info.completion_tokens += 1
            yield word if i == 0 else " " + word
        if info is not None:
            info.finish_reason = "stop"

    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        if path is not None and not Path(path).is_dir():
            raise AdapterError(f"adapter directory {path} does not exist; kept {self._active}")
        if path is not None and version:
            self.adapters[version] = Path(path)
        self._active = version if path is not None else None

    async def load_adapter(self, path: Path, version: str) -> None:
        if not Path(path).is_dir():
            raise AdapterError(f"adapter directory {path} does not exist")
        self.adapters[version] = Path(path)
        self._canary.loaded(version, self._active)

    @property
    def canary(self) -> CanaryState:
        return CanaryState(self._canary.version, self._canary.share)

    async def set_canary_share(self, share: float) -> None:
        self._canary.set_share(share)

    def stats(self) -> dict[str, Any]:
        return {"backend": "fake", "requests": len(self.calls), "queue": 0,
                "adapter": self._active, "loaded_adapters": sorted(self.adapters),
                "canary": self._canary.version, "canary_share": self._canary.share}

    async def aclose(self) -> None:
        return None
