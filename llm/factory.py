"""Open the ChatModel chosen by ``[model] backend``. ``import llm`` stays cheap: no torch here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llm.base import ChatModel
from llm.config import ModelConfig


async def open_model(cfg: ModelConfig, storage_dir: Path,
                     say: Callable[[str], None] | None = None) -> ChatModel:
    """Build and load the model service; the caller closes it with ``await model.aclose()``.

    "local" loads transformers + peft in a worker thread (the event loop stays free), "openai"
    talks to an OpenAI-compatible server, "fake" is the deterministic test model.
    """
    backend = cfg.backend
    if backend == "local":
        from llm.local import LocalChatModel

        return await LocalChatModel.open(cfg, storage_dir, say)
    if backend == "openai":
        from llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(cfg)
    from llm.fake import FakeChatModel

    return FakeChatModel(context_length=cfg.context_length)
