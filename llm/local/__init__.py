"""The local engine: transformers + peft in this process, with continuous batching.

One folder per seam (after vLLM's ``v1/engine``): :mod:`~llm.local.engine` is the asyncio side
(``LocalChatModel``), :mod:`~llm.local.events` the typed traffic between it and the worker,
:mod:`~llm.local.worker` the one thread that runs the model (its ``step``: schedule → run →
emit), :mod:`~llm.local.loading`, :mod:`~llm.local.prefill`, :mod:`~llm.local.batch` (rows, K/V
cache, mask), :mod:`~llm.local.lora` (the adapter set), :mod:`~llm.local.sampling`,
:mod:`~llm.local.detokenizer`, and the CPU helpers only this engine uses
(:mod:`~llm.local.attention`, :mod:`~llm.local.prepack`, :mod:`~llm.local.malloc`).
Importing it does not import torch.
"""

from llm.local.engine import LocalChatModel

__all__ = ["LocalChatModel"]
