"""The ChatModel contract: stream tokens for a rendered conversation; swap adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

ACTIVE = "active"  # adapter selector: whatever adapter is active when the request starts
BASE = "base"  # adapter selector: the base model without any adapter


@dataclass(frozen=True)
class GenParams:
    """Per-request sampling settings. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.3
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Benchmarks: keep generating past end-of-text up to max_new_tokens (fixed-length answers,
    # like vLLM's and llama.cpp's ``ignore_eos``), so throughput does not depend on where
    # sampled answers happen to end.
    ignore_eos: bool = False


@dataclass
class StreamInfo:
    """Filled in by the model while/after streaming: which adapter answered, token counts."""

    adapter: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_position: int = 0
    finish_reason: str = ""


@dataclass(frozen=True)
class CanaryState:
    """The canary adapter (None: none loaded) and the share of ACTIVE requests it answers."""

    version: str | None
    share: float


@runtime_checkable
class ChatModel(Protocol):
    """A chat model service. Implementations: local (transformers+peft), openai, fake."""

    name: str  # human-readable model name, stored with every answer
    context_length: int  # maximum prompt + completion tokens

    @property
    def active_adapter(self) -> str | None:
        """Version label of the active LoRA adapter, or None for the base model."""
        ...

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the rendered chat prompt takes (including the generation prompt)."""
        ...

    def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
               adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        """Yield text deltas of the answer. Cancelling the consumer frees the slot."""
        ...

    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        """Make the adapter at ``path`` (labelled ``version``) active; None = base model.

        Raises AdapterError (previous adapter kept) when the directory is missing/corrupt.
        """
        ...

    async def load_adapter(self, path: Path, version: str) -> None:
        """Load an extra adapter (e.g. a candidate for canary or eval) without activating it."""
        ...

    @property
    def canary(self) -> CanaryState:
        """The canary (the most recently ``load_adapter``-ed version that is not the active
        one, :mod:`llm.canary`) and its share."""
        ...

    async def set_canary_share(self, share: float) -> None:
        """Let the canary answer ``share`` (0..1; 0 = off) of the requests for ACTIVE from the
        next request on. Raises ModelError for a share outside 0..1 (nothing changes then)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Queue depth, running requests, tokens/s and similar figures for /status."""
        ...

    async def aclose(self) -> None:
        """Stop workers and free the model."""
        ...
