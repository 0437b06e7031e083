"""Prompt rendering shared by serving and training, so the template always matches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llm.base import ChatMessage

CONTEXT_HEADER = (
    "Use the numbered sources below to answer. Cite them as [1], [2]. If they do not contain "
    "the answer, say that your knowledge base does not cover it.\n\nSources:\n"
)


def system_text(system_prompt: str, context: str | None) -> str:
    """The system message: the configured prompt plus the retrieved context, if any."""
    if context:
        return f"{system_prompt}\n\n{CONTEXT_HEADER}{context}"
    return system_prompt


def build_messages(system_prompt: str, context: str | None, history: Sequence[ChatMessage],
                   user_text: str) -> list[ChatMessage]:
    """System message, then history (oldest first), then the new user message."""
    msgs: list[ChatMessage] = [{"role": "system", "content": system_text(system_prompt, context)}]
    msgs.extend({"role": m["role"], "content": m["content"]} for m in history)
    msgs.append({"role": "user", "content": user_text})
    return msgs


@dataclass(frozen=True)
class Fitted:
    messages: list[ChatMessage]
    dropped_history: int  # history messages left out (oldest first)
    truncated_user: bool  # the user message itself was cut to fit


def fit_messages(messages: list[ChatMessage], count_tokens: Callable[[Sequence[ChatMessage]], int],
                 budget: int) -> Fitted:
    """Drop the oldest history turns (never the system or last user message) to fit ``budget``.

    If the system + user message alone do not fit, the user message is cut from the end.
    """
    system, history, user = messages[0], list(messages[1:-1]), messages[-1]
    dropped = 0
    while history and count_tokens([system, *history, user]) > budget:
        history.pop(0)
        dropped += 1
    # keep history starting on a user turn
    while history and history[0]["role"] != "user":
        history.pop(0)
        dropped += 1
    truncated = False
    if count_tokens([system, *history, user]) > budget:
        text = user["content"]
        lo, hi = 0, len(text)
        while lo < hi:  # longest prefix that fits
            mid = (lo + hi + 1) // 2
            if count_tokens([system, {"role": "user", "content": text[:mid]}]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        user = {"role": "user", "content": text[:lo]}
        truncated = True
    return Fitted([system, *history, user], dropped, truncated)
