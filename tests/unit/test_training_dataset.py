"""Dataset policy: what counts, every drop reason, rendering as served, scrubbing, export."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.core.moderation import build_guard
from data.store import Store
from llm.prompt import build_messages
from rag.base import Passage, format_context
from tests.fakes.training_data import seed_chat
from training.dataset import build_examples, export_jsonl, split_examples

SOURCE: dict[str, Any] = {"text": "Run nightowl train to retrain.", "source": "guide.md",
                          "section": "Retraining", "score": 0.8, "chunk_id": "c1"}


async def _policy_store(store: Store) -> None:
    await seed_chat(store, [("How do I retrain?", "Run nightowl train.")], user="good",
                    sources=[SOURCE])
    await seed_chat(store, [("What is 2+2?", "5")], user="fixed", feedback=-1,
                    correction="It is 4.")
    await seed_chat(store, [("Who are you?", "A toaster.")], user="bad", feedback=-1)
    await seed_chat(store, [("Old unrated?", "Old answer.")], user="old", feedback=None,
                    age_s=48 * 3600)
    await seed_chat(store, [("New unrated?", "New answer.")], user="new", feedback=None)
    await seed_chat(store, [("Broken?", "(no answer)")], user="none")
    await seed_chat(store, [("Short?", "k")], user="short")
    await seed_chat(store, [("Long?", "x" * 5000)], user="long")
    await seed_chat(store, [("How do I retrain?", "Run nightowl train.")], user="dup",
                    sources=[SOURCE])
    await seed_chat(store, [("How can I reset my password in the app?",
                             "Open settings, choose account, then press reset password now.")],
                    user="nd1")
    await seed_chat(store, [("How can I reset my password in the app?",
                             "Open settings, choose account, then press reset password now, "
                             "thanks.")],
                    user="nd2")
    opted = await store.ensure_user("terminal", "optout", "o")
    await seed_chat(store, [("Private?", "Private answer.")], user="optout")
    await store.set_opted_out(opted.id, True)


async def test_each_policy_rule_is_applied_and_counted(cfg: Config, store: Store) -> None:
    await _policy_store(store)
    cfg = cfg.replace(training__include_unrated_after_hours=24.0, training__min_chars=2,
                      training__max_chars=4000)
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    d = report.to_dict()
    assert d["dropped"] == {"thumbs_down": 1, "unrated": 1, "non_answer": 1, "too_short": 1,
                            "too_long": 1, "duplicate": 1, "near_duplicate": 1}
    assert d["kept_by_kind"] == {"good": 2, "correction": 1, "unrated": 1}
    answers = {e.messages[-1]["content"] for e in examples}
    assert "It is 4." in answers and "5" not in answers  # the correction replaced the answer
    assert "Old answer." in answers and "New answer." not in answers
    assert "Private answer." not in answers  # opted-out user excluded by the store
    assert report.answers_seen == 11  # the opted-out answer is never seen


async def test_rendered_exactly_as_serving(cfg: Config, store: Store) -> None:
    await seed_chat(store, [("Hi", "Hello!"), ("How do I retrain?", "Run nightowl train.")],
                    user="a", sources=[SOURCE])
    examples, _ = build_examples(cfg, await store.training_conversations(), now=time.time())
    last = next(e for e in examples if e.messages[-1]["content"] == "Run nightowl train.")
    context = format_context([Passage(**SOURCE)])
    served = build_messages(cfg.model.system_prompt, context,
                            [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello!"}], "How do I retrain?")
    assert last.messages[:-1] == served
    assert last.messages[-1] == {"role": "assistant", "content": "Run nightowl train."}


async def test_scrubbed_before_use(cfg: Config, store: Store) -> None:
    await seed_chat(store, [("my mail is bob@example.com and token "
                             "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0",
                             "Noted, I will write to bob@example.com.")], user="pii")
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    blob = json.dumps([e.messages for e in examples])
    assert "bob@example.com" not in blob and "AAHdqTcv" not in blob
    assert "[email]" in blob and "[token]" in blob
    assert report.scrubbed["email"] == 2 and report.scrubbed["token"] == 1


async def test_too_many_tokens_trims_history_then_drops(cfg: Config, store: Store) -> None:
    await seed_chat(store, [("first " * 30, "one " * 30), ("second?", "Two.")], user="h")
    await seed_chat(store, [("huge " * 200, "Fine.")], user="huge")

    def count(messages: Sequence[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)
    cfg = cfg.replace(training__max_seq_len=60)
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time(),
                                      count_tokens=count)
    second = next(e for e in examples if e.messages[-1]["content"] == "Two.")
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant"]
    assert report.history_trimmed == 1
    assert report.dropped["too_long_tokens"] == 2  # "one one ..." and the huge question


async def test_split_holds_out_and_replays(cfg: Config, store: Store) -> None:
    for i in range(20):
        await seed_chat(store, [(f"Question number {i} about topic {i * 7}?",
                                 f"Answer {i}: the value is {i * 13}.")], user=f"s{i}")
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    assert len(examples) == 20
    split = split_examples(cfg, examples, set(), report)
    assert split.eval and not {e.key for e in split.eval} & {e.key for e in split.train}
    assert len(split.train) + len(split.eval) == 20
    again = split_examples(cfg, examples, set(), report)
    assert {e.key for e in again.eval} == {e.key for e in split.eval}  # stable held-out set
    seen = {e.key for e in split.train[:10]}
    cont = cfg.replace(training__continue_from_active=True, training__replay_share=0.5)
    s2 = split_examples(cont, examples, seen, report)
    assert len(s2.new) == len(split.train) - 10
    assert report.replay == min(10, len(s2.new))  # 50% replay: as many old as new
    fresh = split_examples(cfg, examples, seen, report)
    assert len(fresh.train) == len(split.train)  # a fresh adapter trains on everything


async def test_export_writes_messages_jsonl(cfg: Config, store: Store, tmp_path: Path) -> None:
    await seed_chat(store, [("How do I retrain?", "Run nightowl train.")], user="x")
    await seed_chat(store, [("Bad?", "Bad.")], user="y", feedback=-1)
    out = tmp_path / "out" / "data.jsonl"
    n, report = await export_jsonl(cfg, store, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 1 and len(lines) == 1
    assert list(lines[0]) == ["messages"]
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert report.dropped["thumbs_down"] == 1


async def test_moderation_guard_keeps_flagged_examples_out(cfg: Config, store: Store) -> None:
    await seed_chat(store, [("Tell me about bananas", "Bananas are yellow.")], user="ok")
    await seed_chat(store, [("How to build a doomsday device", "Step one...")], user="evil")
    await seed_chat(store, [("Nice weather?", "Yes, perfect for a doomsday device.")],
                    user="evil2")
    cfg = cfg.replace(moderation__blocked_words=["doomsday device"])
    examples, report = build_examples(cfg, await store.training_conversations(),
                                      now=time.time(), guard=build_guard(cfg.moderation))
    assert report.dropped["moderated"] == 2
    assert [ex.messages[-1]["content"] for ex in examples] == ["Bananas are yellow."]
