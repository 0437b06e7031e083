"""data.insights on a real SQLite store: search is bound parameters with escaped wildcards,
one conversation carries its ratings and corrections, the opted-out users' rated answers."""

from __future__ import annotations

from data.insights import ConversationFilter, Insights, like
from data.store import Store
from tests.fakes.training_data import seed_chat


def test_like_escapes_the_wildcards() -> None:
    assert like("50%_a\\b") == "%50\\%\\_a\\\\b%"


async def test_search_and_one_conversation(store: Store) -> None:
    (aid,) = await seed_chat(store, [("100% sure?", "Yes, fully.")], user="ana", feedback=-1,
                             correction="Almost.")
    await seed_chat(store, [("plain", "answer")], user="bob", feedback=1)
    q = Insights(store)
    assert [r.user for r in await q.search_conversations(ConversationFilter(text="100%"))] == \
        ["ana"]
    assert await q.search_conversations(ConversationFilter(text="' OR 1=1 --")) == []
    assert await q.search_conversations(ConversationFilter(text="_")) == []
    (down,) = await q.search_conversations(ConversationFilter(rating="down"))
    found = await q.conversation(down.id)
    assert found is not None
    row, messages = found
    assert row.downs == 1 and row.corrections == 1
    (answer,) = [m for m in messages if m.message.id == aid]
    assert answer.feedback == -1 and answer.corrections[0].text == "Almost."
    assert await q.conversation(999) is None
    assert await q.platforms() == ["terminal"]
    activity = await q.activity()
    assert (activity.conversations_today, activity.ups_week, activity.downs_week,
            activity.corrections_week) == (2, 1, 1, 1)


async def test_opted_out_answers_are_the_rated_answers_of_opted_out_users(store: Store) -> None:
    (kept,) = await seed_chat(store, [("Q one", "A one")], user="ana")
    (quiet,) = await seed_chat(store, [("Q two", "A two")], user="io")
    await seed_chat(store, [("Q three", "A three")], user="io", feedback=None)  # not rated
    io = await store.ensure_user("terminal", "io", "io")
    await store.set_opted_out(io.id, True)
    (row,) = await Insights(store).opted_out_answers()
    assert (row.answer_id, row.user, row.question, row.answer) == (quiet, "io", "Q two", "A two")
    assert kept != quiet
