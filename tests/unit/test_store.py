"""The SQLite store on a real file: migrations, WAL, transactions, cascades."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from data.errors import StoreError
from data.migrations import MIGRATIONS
from data.rows import ForgetCounts
from data.store import Store


async def test_migrations_recorded_and_wal(store: Store, tmp_path: Path) -> None:
    assert await store.applied_migrations() == sorted(name for name, _ in MIGRATIONS)
    rows = list(await store.db.execute_fetchall("PRAGMA journal_mode"))
    assert rows[0][0] == "wal"
    rows = list(await store.db.execute_fetchall("PRAGMA foreign_keys"))
    assert rows[0][0] == 1
    assert await store.integrity_check() == "ok"


async def test_reopen_does_not_reapply_migrations(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Store(path) as s:
        user = await s.ensure_user("terminal", "u1", "Ann")
    async with Store(path) as s:
        assert (await s.get_user("terminal", "u1")) == user
        assert len(await s.applied_migrations()) == len(MIGRATIONS)


def test_migration_names_are_unique_and_ordered() -> None:
    names = [n for n, _ in MIGRATIONS]
    assert names == sorted(names) and len(set(names)) == len(names)


async def test_conversation_flow_and_history(store: Store) -> None:
    user = await store.ensure_user("telegram", "42", "Bo")
    conv = await store.active_conversation(user.id, "telegram", "c1")
    assert await store.active_conversation(user.id, "telegram", "c1") == conv
    q = await store.add_message(conv, "user", "hi", status="pending", platform_message_id="7")
    assert next(p.message for p in await store.pending_messages()).id == q
    assert await store.history(conv, 10) == []  # pending turns are not history yet
    a = await store.answer(q, conv, "hello", model="m", adapter="v0001", latency_s=0.5,
                           sources=[{"source": "g.md", "section": "", "text": "t", "score": 1}])
    hist = await store.history(conv, 10)
    assert [(m.role, m.text) for m in hist] == [("user", "hi"), ("assistant", "hello")]
    msg = await store.get_message(a)
    assert msg is not None and msg.adapter == "v0001" and msg.sources[0]["source"] == "g.md"
    assert msg.reply_to == q
    assert await store.pending_messages() == []
    found = await store.find_by_platform_id("telegram", "c1", "7")
    assert found is not None and found.id == q
    await store.end_conversation(user.id, "telegram", "c1")
    assert await store.active_conversation(user.id, "telegram", "c1") != conv


async def test_feedback_upserts_and_corrections(store: Store) -> None:
    user = await store.ensure_user("discord", "9")
    conv = await store.active_conversation(user.id, "discord", "c")
    q = await store.add_message(conv, "user", "q", status="pending")
    a = await store.answer(q, conv, "a", model="m", adapter=None, latency_s=0.1)
    await store.set_feedback(a, user.id, 1)
    await store.set_feedback(a, user.id, -1)
    assert await store.get_feedback(a) == -1
    with pytest.raises(ValueError):
        await store.set_feedback(a, user.id, 5)
    await store.add_correction(a, user.id, "better")
    convs = await store.training_conversations()
    assert [(c.id, c.user_id) for c in convs] == [(conv, user.id)]
    question, answer = convs[0].messages
    assert (question.id, question.role, question.text, question.feedback) == (q, "user", "q", None)
    assert (answer.id, answer.role, answer.text) == (a, "assistant", "a")
    assert answer.correction == "better" and answer.feedback == -1


async def test_feedback_upsert_records_the_latest_rater(store: Store) -> None:
    ann = await store.ensure_user("telegram", "1", "Ann")
    bob = await store.ensure_user("telegram", "2", "Bob")
    conv = await store.active_conversation(ann.id, "telegram", "g")
    q = await store.add_message(conv, "user", "q", status="pending")
    a = await store.answer(q, conv, "a", model="m", adapter=None, latency_s=0.1)
    await store.set_feedback(a, bob.id, 1)
    await store.set_feedback(a, ann.id, -1)
    rows = list(await store.db.execute_fetchall("SELECT user_id, value FROM feedback"))
    assert rows == [(ann.id, -1)]
    await store.forget_user(bob.id)  # Bob's /forget no longer deletes Ann's rating
    assert await store.get_feedback(a) == -1


async def test_reviews_owner_pending_decisions_and_live_correction(store: Store) -> None:
    ann = await store.ensure_user("telegram", "1", "Ann")
    bob = await store.ensure_user("telegram", "2", "Bob")
    conv = await store.active_conversation(ann.id, "telegram", "g")
    q = await store.add_message(conv, "user", "the question", status="pending")
    a = await store.answer(q, conv, "the answer", model="m", adapter=None, latency_s=0.1)
    owner = await store.answer_owner(a)
    assert owner is not None and (owner.user_id, owner.platform_user_id, owner.chat_id,
                                  owner.question) == (ann.id, "1", "g", "the question")
    assert await store.answer_owner(q) is None  # a question is not an answer
    mine = await store.add_correction(a, ann.id, "Ann's fix")
    theirs = await store.add_correction(a, bob.id, "Bob's idea", origin="suggestion")
    await store.set_feedback(a, ann.id, 1)
    pending = await store.pending_reviews(everything=False)
    assert [(i.key, i.author, i.owner, i.text) for i in pending] == [
        (f"c{theirs}", "Bob", "Ann", "Bob's idea")]
    everything = await store.pending_reviews(everything=True)
    assert [i.key for i in everything] == [f"c{theirs}"]  # the rating is moot: a correction lives
    old = await store.correction_item(mine)
    assert old is not None and not old.latest
    assert await store.add_review(a, theirs, "rejected", "telegram:9") == "recorded"
    assert await store.add_review(a, theirs, "approved", "telegram:9") == "already_decided"
    assert await store.add_review(a, 999, "approved", "telegram:9") == "missing"
    live = await store.live_correction(a)
    assert live is not None and live.correction_id == mine  # Ann's is live again
    (answer,) = [m for m in (await store.training_conversations())[0].messages
                 if m.role == "assistant"]
    assert (answer.correction, answer.correction_review) == ("Ann's fix", None)
    assert [i.key for i in await store.pending_reviews(everything=True)] == [f"c{mine}"]
    assert await store.add_review(a, mine, "approved", "telegram:9", "Ann's fix, edited") == (
        "recorded")
    (answer,) = [m for m in (await store.training_conversations())[0].messages
                 if m.role == "assistant"]
    assert (answer.correction_review, answer.correction_edited) == ("approved",
                                                                    "Ann's fix, edited")
    assert await store.pending_reviews(everything=True) == []
    await store.forget_user(ann.id)
    assert list(await store.db.execute_fetchall("SELECT * FROM reviews")) == []
    assert await store.add_review(a, None, "approved", "telegram:9") == "missing"


async def test_opt_out_excludes_from_training(store: Store) -> None:
    user = await store.ensure_user("terminal", "x")
    conv = await store.active_conversation(user.id, "terminal", "c")
    await store.add_message(conv, "user", "q")
    await store.set_opted_out(user.id, True)
    assert await store.training_conversations() == []


async def test_forget_deletes_everything_of_the_user(store: Store) -> None:
    keep = await store.ensure_user("terminal", "keep")
    gone = await store.ensure_user("terminal", "gone")
    for u in (keep, gone):
        conv = await store.active_conversation(u.id, "terminal", "c")
        q = await store.add_message(conv, "user", "q", status="pending")
        a = await store.answer(q, conv, "a", model="m", adapter=None, latency_s=0.1)
        await store.set_feedback(a, u.id, 1)
        await store.add_correction(a, u.id, "c")
    counts = await store.forget_user(gone.id)
    assert counts == ForgetCounts(messages=2, conversations=1, feedback=1, corrections=1, users=1)
    assert await store.get_user("terminal", "gone") is None
    stats = await store.stats()
    assert stats.messages == 2 and stats.feedback == 1 and stats.corrections == 1


async def test_failed_transaction_rolls_back(store: Store) -> None:
    user = await store.ensure_user("terminal", "r")
    conv = await store.active_conversation(user.id, "terminal", "c")
    with pytest.raises(sqlite3.IntegrityError):
        async with store.transaction() as db:
            await db.execute("INSERT INTO messages (conversation_id, role, text, created_at) "
                             "VALUES (?, 'user', 'x', 0)", (conv,))
            await db.execute("INSERT INTO messages (conversation_id, role, text, created_at) "
                             "VALUES (?, 'robot', 'x', 0)", (conv,))
    assert (await store.stats()).messages == 0


async def test_runs_audit_kv_and_stale_runs(store: Store) -> None:
    run = await store.start_run("schedule")
    assert await store.fail_stale_runs() == 1
    assert (await store.runs())[0].status == "failed"
    run = await store.start_run()
    await store.finish_run(run, "promoted", version="v0001", summary="ok", report={"a": 1})
    assert (await store.runs(1))[0].report == {"a": 1}
    await store.audit("telegram", "5", "retrain", "", False, "refused")
    assert (await store.audit_log())[0].allowed == 0
    await store.kv_set("k", "1")
    await store.kv_set("k", "2")
    assert await store.kv_get("k") == "2"


async def test_backup_is_a_consistent_copy(store: Store, tmp_path: Path) -> None:
    await store.ensure_user("terminal", "b")
    await store.backup(tmp_path / "bk" / "copy.db")
    async with Store(tmp_path / "bk" / "copy.db") as copy:
        assert await copy.get_user("terminal", "b") is not None


async def test_corrupt_database_gives_actionable_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="restore a backup"):
        async with Store(bad):
            pass


async def test_concurrent_writers_do_not_interleave_transactions(store: Store) -> None:
    import asyncio

    user = await store.ensure_user("terminal", "many")
    conv = await store.active_conversation(user.id, "terminal", "c")

    async def write(i: int) -> None:
        q = await store.add_message(conv, "user", f"q{i}", status="pending")
        await store.answer(q, conv, f"a{i}", model="m", adapter=None, latency_s=0.0)
        await store.set_blocked(user.id, i % 2 == 0)

    await asyncio.gather(*(write(i) for i in range(50)))
    assert (await store.stats()).messages == 100
    assert await store.pending_messages() == []


async def test_retention_deletes_only_old_conversations(store: Store) -> None:
    user = await store.ensure_user("terminal", "ret")
    old = await store.active_conversation(user.id, "terminal", "old")
    await store.add_message(old, "user", "ancient")
    new = await store.active_conversation(user.id, "terminal", "new")
    await store.add_message(new, "user", "fresh")
    await store.db.execute("UPDATE messages SET created_at = 1000 WHERE conversation_id = ?",
                           (old,))
    await store.db.execute("UPDATE conversations SET started_at = 1000 WHERE id = ?", (old,))
    assert await store.delete_older_than(5000) == 1
    rows = list(await store.db.execute_fetchall("SELECT text FROM messages"))
    assert rows == [("fresh",)]
