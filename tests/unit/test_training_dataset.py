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
                             "Noted, I will keep that safe.")], user="pii")
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    blob = json.dumps([e.messages for e in examples])
    assert "bob@example.com" not in blob and "AAHdqTcv" not in blob
    assert "[email]" in blob and "[token]" in blob
    assert report.scrubbed["email"] == 1 and report.scrubbed["token"] == 1


async def test_an_answer_that_would_need_a_placeholder_is_dropped(cfg: Config,
                                                                  store: Store) -> None:
    """The model never learns to print [email]; the retrieved context is never rewritten."""
    await seed_chat(store, [("Where do I write?", "Write to bob@example.com.")], user="pii")
    await seed_chat(store, [("Who runs support?", "Ana runs support.")], user="ctx",
                    sources=[{"text": "Support: ana@example.org, +55 11 91234-5678",
                              "source": "team.md"}])
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    assert report.dropped["pii_in_answer"] == 1
    assert [e.messages[-1]["content"] for e in examples] == ["Ana runs support."]
    assert "ana@example.org, +55 11 91234-5678" in examples[0].messages[0]["content"]


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
    assert list(lines[0]) == ["messages", "meta"]  # meta: the ids /forget purges by
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    x = await store.get_user("terminal", "x")
    assert x is not None and lines[0]["meta"]["users"] == [x.id]
    assert len(lines[0]["meta"]["messages"]) == 2 and lines[0]["meta"]["corrections"] == []
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


async def test_export_marks_only_the_final_answer_as_trained(cfg: Config, store: Store,
                                                             tmp_path: Path) -> None:
    # the first answer is 👎'd, the second 👍'd: the 👍 example carries the 👎 turn as context
    u = await store.ensure_user("terminal", "w", "w")
    conv = await store.active_conversation(u.id, "terminal", "chat-w")
    q1 = await store.add_message(conv, "user", "What is 2+2?", status="pending")
    a1 = await store.answer(q1, conv, "Five, surely.", model="m", adapter=None, latency_s=0.1,
                            sources=[])
    await store.set_feedback(a1, u.id, -1)
    q2 = await store.add_message(conv, "user", "Are you sure?", status="pending")
    a2 = await store.answer(q2, conv, "Sorry: it is 4.", model="m", adapter=None,
                            latency_s=0.1, sources=[])
    await store.set_feedback(a2, u.id, 1)
    out = tmp_path / "w.jsonl"
    n, _ = await export_jsonl(cfg, store, out)
    [line] = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == 1
    weights = [(m["role"], m["content"], m["weight"]) for m in line["messages"]]
    assert weights[-1] == ("assistant", "Sorry: it is 4.", 1)
    assert ("assistant", "Five, surely.", 0) in weights  # history: context, no loss
    assert sum(w for _, _, w in weights) == 1


async def test_split_is_by_conversation_and_shares_no_turn(cfg: Config, store: Store) -> None:
    for i in range(12):  # 12 conversations of 3 rated turns each
        await seed_chat(store, [(f"Conversation {i} question {j} about item {i * 10 + j}?",
                                 f"Answer {j} of conversation {i}: value {i * 31 + j}.")
                                for j in range(3)], user=f"c{i}")
    examples, report = build_examples(cfg, await store.training_conversations(), now=time.time())
    assert len(examples) == 36
    split = split_examples(cfg, examples, set(), report)
    train_convs = {e.conversation_id for e in split.train}
    eval_convs = {e.conversation_id for e in split.eval}
    assert split.eval and split.train and not train_convs & eval_convs
    turns = lambda exs: {(m["role"], m["content"]) for e in exs  # noqa: E731
                         for m in e.messages if m["role"] != "system"}
    assert not turns(split.train) & turns(split.eval)
    assert report.eval_conversations == len(eval_convs)
    assert report.to_dict()["train_conversations"] == len(train_convs)


async def test_a_group_example_holds_no_other_members_text(cfg: Config, store: Store) -> None:
    # two members talk to the bot in the same group chat, turns interleaved
    alice = await store.ensure_user("telegram", "alice", "Alice")
    bob = await store.ensure_user("telegram", "bob", "Bob")
    for k in range(2):
        for user, name in ((alice, "alice"), (bob, "bob")):
            conv = await store.active_conversation(user.id, "telegram", "group-1")
            q = await store.add_message(conv, "user", f"{name} secret question {k}?",
                                        status="pending")
            a = await store.answer(q, conv, f"Answer for {name} number {k}.", model="m",
                                   adapter=None, latency_s=0.1, sources=[])
            await store.set_feedback(a, user.id, 1)
    examples, _ = build_examples(cfg, await store.training_conversations(), now=time.time())
    assert len(examples) == 4
    for ex in examples:
        text = json.dumps(ex.messages)
        owner = "alice" if "alice" in ex.messages[-2]["content"] else "bob"
        other = "bob" if owner == "alice" else "alice"
        assert other not in text, text
    second = [e for e in examples if e.messages[-2]["content"].endswith("question 1?")]
    assert all(len(e.messages) == 5 for e in second)  # own history kept: system + 2 turns
