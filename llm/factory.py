"""Open the ChatModel chosen by ``[model] backend``. ``import llm`` stays cheap: no torch here."""

from __future__ import annotations

from collections.abc import Callable

from bot.config import Config
from llm.base import ChatModel


async def open_model(cfg: Config, say: Callable[[str], None] | None = None) -> ChatModel:
    """Build and load the model service; the caller closes it with ``await model.aclose()``.

    "local" loads transformers + peft in a worker thread (the event loop stays free), "openai"
    talks to an OpenAI-compatible server, "fake" is the deterministic test model.
    """
    backend = cfg.model.backend
    if backend == "local":
        from llm.local import LocalChatModel

        return await LocalChatModel.open(cfg.model, cfg.storage.path, say)
    if backend == "openai":
        from llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(cfg.model)
    from llm.fake import FakeChatModel

    return FakeChatModel(context_length=cfg.model.context_length)
