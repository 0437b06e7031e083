"""Owners and reviewers on Telegram: the real PTB against the fake Bot API, real Core and SQLite.

Another member can neither rate nor correct an asker's answer, whatever the path: a reply with
/good or /correct, the 👍 of a split answer's last part (it carries no reply_to_message), the 👍
of an answer recovered after a restart. /review lists with approve/reject buttons that only an
admin's press runs.
"""

from __future__ import annotations

from pathlib import Path

from llm.fake import FakeChatModel
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.platforms.test_telegram import (
    ADMIN,
    OTHER,
    USER,
    buttons,
    fake,
    no_error_logs,
    running,
)

__all__ = ["fake", "no_error_logs"]

NOT_YOURS = "Only the person who asked (or an admin) can rate this answer."


def long_text() -> str:
    para = " ".join(f"Sentence {i} says something useful about owls." for i in range(20))
    return "\n\n".join(f"{para} Paragraph {p}." for p in range(10))


async def test_replies_by_another_member_are_refused_or_suggested(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        group, ann, bob = fake.group(), fake.user(USER), fake.user(OTHER, "Bob")
        await env.send(fake.text(group, ann, f"@{fake.username} when do owls hunt"))
        answer = fake.last_message(group["id"])
        await env.send(fake.text(group, bob, "/good", reply_to=fake.as_message(answer)))
        assert fake.last_message(group["id"]).text == NOT_YOURS
        await env.send(fake.text(group, bob, "/bad", reply_to=fake.as_message(answer)))
        assert await env.db("SELECT * FROM feedback") == []
        await env.send(fake.text(group, bob, "/correct At night.",
                                 reply_to=fake.as_message(answer)))
        assert "suggestion" in fake.last_message(group["id"]).text
        assert await env.db("SELECT origin, text FROM corrections") == [("suggestion",
                                                                         "At night.")]
        # Ann's own reply is hers to rate and correct
        await env.send(fake.text(group, ann, "/good", reply_to=fake.as_message(answer)))
        await env.send(fake.text(group, ann, "/correct At dusk.",
                                 reply_to=fake.as_message(answer)))
        assert await env.db("SELECT value FROM feedback") == [(1,)]
        assert await env.db("SELECT origin FROM corrections ORDER BY id") == [("suggestion",),
                                                                              ("owner",)]


async def test_split_answer_buttons_and_parts_refuse_other_members(
        tmp_path: Path, fake: FakeTelegramAPI) -> None:
    model = FakeChatModel(lambda m: long_text())
    async with running(tmp_path, fake, model=model, model__max_new_tokens=5000) as env:
        group, ann, bob = fake.group(), fake.user(USER), fake.user(OTHER, "Bob")
        await env.send(fake.text(group, ann, f"@{fake.username} tell me everything"))
        parts = fake.chat_messages(group["id"])
        assert len(parts) == 3 and parts[-1].reply_markup is not None
        assert parts[-1].reply_to is None  # the keyboard's part replies to nobody
        up = buttons(parts[-1])[0]
        await env.send(fake.press(parts[-1], bob, up))
        assert fake.calls_of("answerCallbackQuery")[-1].params["text"] == NOT_YOURS
        await env.send(fake.text(group, bob, "/bad", reply_to=fake.as_message(parts[1])))
        assert await env.db("SELECT * FROM feedback") == []
        await env.send(fake.press(parts[-1], ann, up))
        assert "recorded 👍" in fake.calls_of("answerCallbackQuery")[-1].params["text"]
        assert await env.db("SELECT value FROM feedback") == [(1,)]


async def test_recovered_answer_buttons_refuse_other_members(tmp_path: Path,
                                                             fake: FakeTelegramAPI) -> None:
    group, bob = fake.group(), fake.user(OTHER, "Bob")
    async with running(tmp_path, fake) as env:
        u = await env.store.ensure_user("telegram", str(USER), "Ann")
        conv = await env.store.active_conversation(u.id, "telegram", str(group["id"]))
        await env.store.add_message(conv, "user", "asked before the crash", status="pending")
    async with running(tmp_path, fake) as env:
        assert await env.tg.recovered() == 1
        answer = fake.last_message(group["id"])
        assert answer.text == "You said: asked before the crash." and answer.reply_to is None
        up = buttons(answer)[0]
        await env.send(fake.press(answer, bob, up))
        assert fake.calls_of("answerCallbackQuery")[-1].params["text"] == NOT_YOURS
        assert await env.db("SELECT * FROM feedback") == []
        await env.send(fake.press(answer, fake.user(ADMIN, "Ada"), up))  # an admin may
        assert await env.db("SELECT value FROM feedback") == [(1,)]


async def test_review_buttons_run_for_admins_only(tmp_path: Path, fake: FakeTelegramAPI) -> None:
    async with running(tmp_path, fake) as env:
        group, ann, bob = fake.group(), fake.user(USER), fake.user(OTHER, "Bob")
        admin = fake.user(ADMIN, "Ada")
        await env.send(fake.text(group, ann, f"@{fake.username} are owls wise"))
        answer = fake.last_message(group["id"])
        await env.send(fake.text(group, bob, "/correct Very wise.",
                                 reply_to=fake.as_message(answer)))
        await env.send(fake.text(group, bob, "/review"))
        assert "for admins only" in fake.last_message(group["id"]).text
        await env.send(fake.text(group, admin, "/review"))  # admin output: in the admin's DM
        assert "Sent you the result of /review" in fake.last_message(group["id"]).text
        listing = fake.last_message(ADMIN)
        assert "c1 · suggestion by Bob on Ann's answer" in listing.text
        assert buttons(listing) == ["cmd:review:approve c1", "cmd:review:reject c1"]
        await env.send(fake.press(listing, bob, "cmd:review:approve c1"))
        assert "for admins only" in fake.calls_of("answerCallbackQuery")[-1].params["text"]
        assert await env.db("SELECT * FROM reviews") == []
        await env.send(fake.press(listing, admin, "cmd:review:approve c1"))
        assert "Approved c1" in fake.calls_of("answerCallbackQuery")[-1].params["text"]
        assert await env.db("SELECT decision, reviewer FROM reviews") == [
            ("approved", f"telegram:{ADMIN}")]
        assert listing.reply_markup is None or not listing.reply_markup["inline_keyboard"]
        audit = await env.db("SELECT actor, action, args, allowed FROM audit ORDER BY id")
        assert audit == [(str(OTHER), "review", "", 0), (str(ADMIN), "review", "", 1),
                         (str(OTHER), "review", "approve c1", 0),
                         (str(ADMIN), "review", "approve c1", 1)]


async def test_a_correction_answers_the_next_question_at_once(tmp_path: Path,
                                                              fake: FakeTelegramAPI) -> None:
    """The real knowledge base (Chroma, hash embedder): the correction is a note right away,
    cited as the user's; /forget removes it."""
    async with running(tmp_path, fake, real_kb=True) as env:
        ann = fake.user(USER)
        chat = fake.private(ann)
        await env.send(fake.text(chat, ann, "What is the name of the night owl mascot?"))
        await env.send(fake.text(chat, ann, "/correct The mascot of NightOwl is called Hoot."))
        assert "use this correction from now on" in fake.last_message(USER).text
        await env.send(fake.text(chat, ann, "what is the name of the nightowl mascot"))
        prompt = env.model.calls[-1]["messages"][0]["content"]
        assert "The mascot of NightOwl is called Hoot." in prompt
        assert "correction by the user" in fake.last_message(USER).text  # the citation
        await env.send(fake.text(chat, ann, "/forget"))
        confirm = fake.last_message(USER)
        await env.send(fake.press(confirm, ann, buttons(confirm)[0]))
        assert confirm.text.startswith("Deleted") and "⚠️" not in confirm.text
        found = await env.kb.search("what is the name of the nightowl mascot", 5)
        assert all("Hoot" not in p.text for p in found)
