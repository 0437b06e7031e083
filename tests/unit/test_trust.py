"""Owners and reviewers in the core, over the real SQLite store and the real dataset builder.

Only the asker (or an admin) rates or corrects; someone else's correction is a suggestion that
trains only after ``/review approve``; ``[training] review = "admin"`` holds everything back
until approved; decisions are final and audited; trusted corrections become notes at once.
"""

from __future__ import annotations

import time

import pytest

from bot.config import Config
from bot.core import CollectingRenderer, Core, Incoming, Reply
from bot.core.trust import NOT_YOURS
from data.store import Store
from llm.fake import FakeChatModel
from rag.fake import FakeRetriever
from tests.fakes.learning import FakeLearning
from training.dataset import build_examples

CHAT = "group-1"


def msg(text: str, user: str, *, admin: bool = False, reply_to: str | None = None,
        message_id: str | None = None) -> Incoming:
    return Incoming("telegram", CHAT, user, user.capitalize(), text, is_admin=admin,
                    message_id=message_id, reply_to_message_id=reply_to)


def make_core(cfg: Config, store: Store, **kw: object) -> Core:
    return Core(cfg.replace(**kw) if kw else cfg, store, FakeChatModel(), FakeRetriever(),
                FakeLearning())


@pytest.fixture
def core(cfg: Config, store: Store) -> Core:
    return make_core(cfg, store)


async def ask(core: Core, text: str, user: str = "ann") -> Reply:
    reply = await core.handle(msg(text, user), CollectingRenderer())
    assert reply.answer_id is not None
    await core.store.add_message_refs(reply.answer_id, "telegram", CHAT, [f"bot-{user}-{text}"])
    return reply


async def targets(cfg: Config, store: Store) -> dict[int, str]:
    """answer id -> the text it trains on, from the real dataset builder."""
    examples, _ = build_examples(cfg, await store.training_conversations(), now=time.time())
    return {e.answer_id: e.messages[-1]["content"] for e in examples}


async def test_only_the_asker_or_an_admin_rates(core: Core, store: Store) -> None:
    answer = await ask(core, "what is the owl")
    aid = answer.answer_id or 0
    refused = await core.feedback(msg("", "bob"), aid, -1)
    assert not refused.ok and refused.text == NOT_YOURS
    assert await store.get_feedback(aid) is None
    # /good replying to Ann's answer is the same refusal (the reply does not hand it out)
    by_reply = await core.command(msg("/bad", "bob", reply_to="bot-ann-what is the owl"), "bad")
    assert not by_reply.ok and by_reply.text == NOT_YOURS
    assert await store.get_feedback(aid) is None
    # Bob's own /good (no reply) finds no answer of his, never Ann's
    assert "no answer to rate" in (await core.command(msg("/good", "bob"), "good")).text
    assert (await core.feedback(msg("", "ann"), aid, 1)).ok
    assert (await core.feedback(msg("", "root", admin=True), aid, -1)).ok
    # M4: the row records who rated last
    rows = list(await store.db.execute_fetchall(
        "SELECT u.platform_user_id, f.value FROM feedback f JOIN users u ON u.id = f.user_id"))
    assert rows == [("root", -1)]


async def test_a_suggestion_trains_only_after_approval(cfg: Config, core: Core,
                                                       store: Store) -> None:
    answer = await ask(core, "when does the owl wake up")
    aid = answer.answer_id or 0
    res = await core.command(msg("/correct", "bob", reply_to="bot-ann-when does the owl wake up"),
                             "correct", "At dusk, every day.")
    assert res.ok and "suggestion" in res.text
    rows = list(await store.db.execute_fetchall("SELECT origin, message_id FROM corrections"))
    assert rows == [("suggestion", aid)]
    assert aid not in await targets(cfg, store)
    assert isinstance(core.knowledge, FakeRetriever) and core.knowledge.notes == {}

    listed = await core.command(msg("/review", "root", admin=True), "review")
    assert "c1 · suggestion by Bob on Ann's answer" in listed.text
    assert "At dusk" in listed.text and "when does the owl wake up" in listed.text
    assert [b.args for row in listed.buttons for b in row] == ["approve c1", "reject c1"]

    done = await core.command(msg("/review", "root", admin=True), "review", "approve c1")
    assert done.ok and "Approved c1" in done.text
    assert (await targets(cfg, store))[aid] == "At dusk, every day."
    note = core.knowledge.notes[aid]
    assert (note.by, note.text, note.question) == ("admin", "At dusk, every day.",
                                                   "when does the owl wake up")
    again = await core.command(msg("/review", "root", admin=True), "review", "reject c1")
    assert not again.ok and "already approved by telegram:root" in again.text
    assert "Nothing waits" in (await core.command(msg("/review", "root", admin=True),
                                                  "review")).text
    audit = [(e.actor, e.action, e.args, bool(e.allowed)) for e in await store.audit_log()]
    assert ("root", "review", "approve c1", True) in audit
    assert ("root", "review", "reject c1", True) in audit


async def test_edit_and_reject_and_the_owners_correction_comes_back(
        cfg: Config, core: Core, store: Store) -> None:
    answer = await ask(core, "what colour is the owl")
    aid = answer.answer_id or 0
    mine = await core.command(msg("/correct", "ann"), "correct", "The owl is silver.")
    assert "use this correction from now on" in mine.text
    assert isinstance(core.knowledge, FakeRetriever)
    assert core.knowledge.notes[aid].by == "user"
    # a stranger's later suggestion waits and, meanwhile, holds the answer back from training
    await core.command(msg("/correct", "bob", reply_to="bot-ann-what colour is the owl"),
                       "correct", "The owl is purple.")
    assert aid not in await targets(cfg, store)
    rejected = await core.command(msg("/review", "root", admin=True), "review", "reject c2")
    assert rejected.ok and "Rejected c2" in rejected.text
    assert (await targets(cfg, store))[aid] == "The owl is silver."  # Ann's is live again
    assert core.knowledge.notes[aid].text == "The owl is silver."
    # an admin's edit of a new suggestion replaces the text that trains
    await core.command(msg("/correct", "bob", reply_to="bot-ann-what colour is the owl"),
                       "correct", "The owl is grey-ish.")
    edited = await core.command(msg("/review", "root", admin=True), "review",
                                "edit c3 The owl is silver-grey.")
    assert edited.ok and "Approved c3" in edited.text
    assert (await targets(cfg, store))[aid] == "The owl is silver-grey."
    assert core.knowledge.notes[aid].text == "The owl is silver-grey."


async def test_review_refuses_non_admins_and_bad_ids(core: Core, store: Store) -> None:
    await ask(core, "is the owl wise")
    await core.command(msg("/correct", "bob", reply_to="bot-ann-is the owl wise"), "correct",
                       "Very wise.")
    for args in ("", "approve c1"):
        refused = await core.command(msg("/review", "bob"), "review", args)
        assert not refused.ok and "for admins only" in refused.text
    assert (await store.rating_item(1)) is None
    admin = msg("/review", "root", admin=True)
    for args, expected in [("approve", "Usage"), ("frobnicate c1", "Usage"),
                           ("approve x9", "Unknown item 'x9'"), ("approve c99", "no longer exists"),
                           ("edit c1", "Usage: /review edit ID NEW TEXT"),
                           ("edit candidate new", "not edited"),
                           ("approve candidate", "No candidate")]:
        res = await core.command(admin, "review", args)
        assert expected in res.text, (args, res.text)
    audit = [(e.actor, e.args, bool(e.allowed)) for e in await store.audit_log()]
    assert ("bob", "", False) in audit and ("bob", "approve c1", False) in audit
    assert (await store.correction_item(1)) is not None
    assert (await store.correction_item(1)).decision is None  # type: ignore[union-attr]


async def test_approval_of_a_deleted_item(core: Core, store: Store) -> None:
    await ask(core, "where does the owl sleep")
    await core.command(msg("/correct", "bob", reply_to="bot-ann-where does the owl sleep"),
                       "correct", "In the old oak.")
    assert (await core.forget(msg("/forget", "ann"))).ok  # Ann's answer and its suggestion go
    res = await core.command(msg("/review", "root", admin=True), "review", "approve c1")
    assert not res.ok and "c1 no longer exists" in res.text
    assert list(await store.db.execute_fetchall("SELECT * FROM reviews")) == []


async def test_review_admin_mode_holds_everything_until_approved(cfg: Config,
                                                                 store: Store) -> None:
    cfg = cfg.replace(training__review="admin")
    core = make_core(cfg, store)
    good = await ask(core, "how old is the owl")
    fixed = await ask(core, "how big is the owl")
    await core.feedback(msg("", "ann"), good.answer_id or 0, 1)
    waits = await core.command(msg("/correct", "ann"), "correct", "About thirty centimetres.")
    assert "An admin approves corrections here" in waits.text
    assert isinstance(core.knowledge, FakeRetriever) and core.knowledge.notes == {}
    assert await targets(cfg, store) == {}
    listed = await core.command(msg("/review", "root", admin=True), "review")
    assert f"a{good.answer_id} · 👍 by Ann" in listed.text and "c1 · correction" in listed.text
    await core.command(msg("/review", "root", admin=True), "review", f"approve a{good.answer_id}")
    await core.command(msg("/review", "root", admin=True), "review", "approve c1")
    trained = await targets(cfg, store)
    assert trained == {good.answer_id: good.answer, fixed.answer_id: "About thirty centimetres."}
    assert core.knowledge.notes[fixed.answer_id or 0].text == "About thirty centimetres."
    # a changed rating is a new item: its old approval no longer applies
    await core.feedback(msg("", "ann"), good.answer_id or 0, -1)
    await core.feedback(msg("", "ann"), good.answer_id or 0, 1)
    assert good.answer_id not in await targets(cfg, store)
    rejected = await core.command(msg("/review", "root", admin=True), "review",
                                  f"reject a{good.answer_id}")
    assert "will not train" in rejected.text
    assert good.answer_id not in await targets(cfg, store)
    # an admin's own correction is its own approval: used and trained at once
    root = await ask(core, "does the owl sing", user="root")
    own = await core.command(msg("/correct", "root", admin=True), "correct", "It hoots.")
    assert "use this correction from now on" in own.text
    assert (await targets(cfg, store))[root.answer_id or 0] == "It hoots."
    assert core.knowledge.notes[root.answer_id or 0].by == "admin"


async def test_candidate_waiting_for_promotion(core: Core) -> None:
    assert isinstance(core.learning, FakeLearning)
    core.learning.candidate = "v0007 (probes 3/3, held-out loss 2.1)"
    listed = await core.command(msg("/review", "root", admin=True), "review")
    assert listed.text.startswith("candidate · v0007")
    assert listed.buttons[0][0].args == "approve candidate"
    done = await core.command(msg("/review", "root", admin=True), "review", "approve candidate")
    assert "approved" in done.text and core.learning.decisions == [("approved", "telegram:root")]


async def test_admins_and_the_operator_are_not_rate_limited(cfg: Config, store: Store) -> None:
    core = make_core(cfg, store, limits__user_burst=1, limits__user_messages_per_minute=1.0)
    admin = [await core.handle(msg(f"q{i}", "root", admin=True), CollectingRenderer())
             for i in range(6)]
    assert all(r.answer_id for r in admin)
    user = [await core.handle(msg(f"q{i}", "ann"), CollectingRenderer()) for i in range(2)]
    assert user[0].answer_id and user[1].answer_id is None and "please wait" in user[1].text


async def test_forget_removes_the_users_notes(core: Core, store: Store) -> None:
    answer = await ask(core, "what does the owl eat")
    await core.command(msg("/correct", "ann"), "correct", "Mice, mostly.")
    assert isinstance(core.knowledge, FakeRetriever)
    assert answer.answer_id in core.knowledge.notes
    done = await core.forget(msg("/forget", "ann"))
    assert done.ok and core.knowledge.notes == {} and "⚠️" not in done.text


async def test_note_failure_is_visible_and_the_correction_kept(core: Core, store: Store) -> None:
    class BrokenNotes(FakeRetriever):
        async def add_note(self, note: object) -> None:
            raise OSError("chroma is down")

    core.knowledge = BrokenNotes()
    await ask(core, "can the owl swim")
    res = await core.command(msg("/correct", "ann"), "correct", "Owls can swim a little.")
    assert res.ok and "could not be added to the knowledge base" in res.text
    assert list(await store.db.execute_fetchall("SELECT text FROM corrections")) == [
        ("Owls can swim a little.",)]
