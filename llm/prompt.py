"""Prompt rendering shared by serving and training, so the template always matches.

:func:`fit_messages` keeps the newest history turns and the whole user message when they fit the
token budget. It renders about a budget's worth of text per count, never the whole of a long
history once per dropped turn: the kept part is found near an estimate from the characters, in
doubling steps and then by bisection, each step an exact count; a longer prompt is assumed never
to take fewer tokens. :func:`fit_messages_off_loop` runs it on one worker thread, so an event
loop never waits for a tokenizer and a model's counting tokenizer is used by one thread at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from llm.base import ChatMessage

CONTEXT_HEADER = (
    "Use the numbered sources below to answer. Cite them as [1], [2]. If they do not contain "
    "the answer, say that your knowledge base does not cover it.\n\nSources:\n"
)
# the whole history is counted at once first when it has at most this many characters per
# budget token (the usual case: it fits); a longer one is searched from its newest end
WHOLE_HISTORY_CHARS_PER_TOKEN = 8

TokenCounter = Callable[[Sequence[ChatMessage]], int]


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


def fit_messages(messages: list[ChatMessage], count_tokens: TokenCounter,
                 budget: int) -> Fitted:
    """Drop the oldest history turns (never the system or last user message) to fit ``budget``.

    If the system + user message alone do not fit, the user message is cut from the end (the
    longest prefix that fits). Blocking (it tokenizes): from an event loop, use
    :func:`fit_messages_off_loop`.
    """
    system, history, user = messages[0], list(messages[1:-1]), messages[-1]
    n = len(history)

    def fits_with(kept: int) -> bool:  # the newest ``kept`` history messages
        return count_tokens([system, *history[n - kept:], user]) <= budget

    alone = count_tokens([system, user])
    kept = 0
    if history and alone <= budget:
        chars = sum(len(m["content"]) for m in history)
        if chars <= WHOLE_HISTORY_CHARS_PER_TOKEN * budget and fits_with(n):
            kept = n
        else:
            per_token = (len(system["content"]) + len(user["content"])) / max(alone, 1)
            room, guess = (budget - alone) * per_token, 0
            for m in reversed(history):
                room -= len(m["content"])
                if room < 0:
                    break
                guess += 1
            kept = _last_fitting(n, fits_with, guess)
    dropped = n - kept
    history = history[dropped:]
    while history and history[0]["role"] != "user":  # keep history starting on a user turn
        history.pop(0)
        dropped += 1
    truncated = False
    if not history and alone > budget:
        user = {"role": "user", "content": _longest_prefix(system, user["content"], alone,
                                                           count_tokens, budget)}
        truncated = True
    return Fitted([system, *history, user], dropped, truncated)


def _longest_prefix(system: ChatMessage, text: str, whole: int, count_tokens: TokenCounter,
                    budget: int) -> str:
    """The longest prefix of ``text`` that fits beside ``system`` (``whole``: the count of all)."""
    def fits(chars: int) -> bool:
        return count_tokens([system, {"role": "user", "content": text[:chars]}]) <= budget

    empty = count_tokens([system, {"role": "user", "content": ""}])
    if empty > budget:
        return ""
    guess = int(len(text) * (budget - empty) / max(whole - empty, 1))
    return text[:_last_fitting(len(text) - 1, fits, guess)]  # all of it does not fit


def _last_fitting(n: int, fits: Callable[[int], bool], guess: int) -> int:
    """The largest k in [0, n] with ``fits(k)``, where fits(0) holds and fits is true up to some
    k and false after: probed around ``guess`` in doubling steps, then bisected."""
    if n <= 0:
        return 0
    k = min(max(guess, 1), n)
    step = max(1, k // 16)
    lo, hi = 0, n + 1  # fits(lo); not fits(hi) (n + 1: beyond the end)
    if fits(k):
        lo = k
        while lo < n:
            k = min(lo + step, n)
            if not fits(k):
                hi = k
                break
            lo, step = k, step * 2
    else:
        hi = k
        while hi - step > 0:
            k = hi - step
            if fits(k):
                lo = k
                break
            hi, step = k, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


_FITTER: ThreadPoolExecutor | None = None


async def fit_messages_off_loop(messages: list[ChatMessage], count_tokens: TokenCounter,
                                budget: int) -> Fitted:
    """:func:`fit_messages` on the one prompt-fitting thread, awaited from an event loop."""
    global _FITTER
    if _FITTER is None:
        _FITTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightowl-prompt")
    return await asyncio.get_running_loop().run_in_executor(_FITTER, fit_messages, messages,
                                                            count_tokens, budget)
