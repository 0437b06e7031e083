"""Prompt fitting (llm.prompt.fit_messages) keeps exactly what the plain rule keeps, counting
far less: the plain rule re-counts the whole prompt once per dropped turn and once per
bisection step."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

from llm.base import ChatMessage
from llm.prompt import Fitted, build_messages, fit_messages, fit_messages_off_loop


def words(messages: Sequence[ChatMessage]) -> int:
    """A monotone token count (FakeChatModel's): words plus a per-message overhead."""
    return sum(len(m["content"].split()) + 4 for m in messages) + 2


def plain_rule(messages: list[ChatMessage], budget: int) -> Fitted:
    """The rule as first written: drop the oldest turn until it fits, then bisect the user text."""
    system, history, user = messages[0], list(messages[1:-1]), messages[-1]
    dropped = 0
    while history and words([system, *history, user]) > budget:
        history.pop(0)
        dropped += 1
    while history and history[0]["role"] != "user":
        history.pop(0)
        dropped += 1
    truncated = False
    if words([system, *history, user]) > budget:
        text = user["content"]
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if words([system, {"role": "user", "content": text[:mid]}]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        user = {"role": "user", "content": text[:lo]}
        truncated = True
    return Fitted([system, *history, user], dropped, truncated)


def test_fitting_keeps_what_the_plain_rule_keeps_and_counts_less() -> None:
    rnd = random.Random(5)

    def text(n: int) -> str:
        return " ".join(rnd.choice(["owl", "night", "moon", "x"]) for _ in range(n))

    for _ in range(300):
        roles = ["user", "assistant"] if rnd.random() < 0.8 else ["assistant", "user"]
        history: list[ChatMessage] = [
            {"role": roles[i % 2], "content": text(rnd.choice([1, 10, 80, 600]))}
            for i in range(rnd.randint(0, 60))]
        msgs = build_messages("sys", text(rnd.choice([0, 30])), history,
                              text(rnd.choice([1, 40, 900])))
        budget = rnd.choice([20, 60, 200, 700, 3000])
        counted = [0]

        def count(m: Sequence[ChatMessage], counted: list[int] = counted) -> int:
            counted[0] += sum(len(x["content"]) for x in m)
            return words(m)

        got, want = fit_messages(msgs, count, budget), plain_rule(msgs, budget)
        assert (got.messages, got.dropped_history, got.truncated_user) == (
            want.messages, want.dropped_history, want.truncated_user), (budget, len(history))
        assert words(got.messages) <= budget or got.messages[-1]["content"] == ""
        # the counted text: about a budget's worth per count and a few counts per doubling step
        # (the plain rule counts the whole prompt once per dropped turn: 2/3 of these cases
        # exceed this)
        whole = sum(len(m["content"]) for m in msgs)
        ends = len(msgs[0]["content"]) + len(msgs[-1]["content"])
        assert counted[0] <= 2 * whole + 16 * ends + 24 * min(whole, 6 * budget), (
            counted[0], whole, budget)


async def test_fitting_off_the_loop_runs_on_one_prompt_thread() -> None:
    names: list[str] = []

    def count(m: Sequence[ChatMessage]) -> int:
        names.append(threading.current_thread().name)
        return words(m)

    msgs = build_messages("sys", None, [{"role": "user", "content": "a " * 50},
                                        {"role": "assistant", "content": "b " * 50}], "hi")
    fitted = await asyncio.gather(*(fit_messages_off_loop(msgs, count, 60) for _ in range(4)))
    assert all(f == fit_messages(msgs, words, 60) for f in fitted)
    assert names and {n.rsplit("_", 1)[0] for n in names} == {"nightowl-prompt"}
