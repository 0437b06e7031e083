"""The review page lists each answer tonight's dataset drops, with its reason; the dataset's
typed per-answer drops (``DatasetReport.drops``) agree with its counts and change nothing kept."""

from __future__ import annotations

import time

from tests.console.conftest import Env
from tests.fakes.training_data import seed_chat
from training.dataset import Drop, build_examples


async def _seed(env: Env) -> dict[str, int]:
    s = env.store
    (good,) = await seed_chat(s, [("What does NightOwl do?", "It answers and learns nightly.")],
                              user="ana")
    (dup,) = await seed_chat(s, [("What does NightOwl do?", "It answers and learns nightly.")],
                             user="ben")
    (down,) = await seed_chat(s, [("Is it on?", "Maybe, maybe not.")], user="cy", feedback=-1)
    (unrated,) = await seed_chat(s, [("Hello there", "Hi, how can I help?")], user="di",
                                 feedback=None)
    (short,) = await seed_chat(s, [("Yes or no?", "y")], user="ed")
    (pii,) = await seed_chat(s, [("Who do I write to?", "Write to ana.lopes@example.com now.")],
                             user="fa")
    (rejected,) = await seed_chat(s, [("Tell me a joke", "Owls cannot tell jokes at noon.")],
                                  user="gi")
    await s.add_review(rejected, None, "rejected", "console:admin")
    (pending,) = await seed_chat(s, [("How do I retrain?", "No idea at all.")], user="ha",
                                 feedback=None)
    other = await s.ensure_user("telegram", "zed", "Zed")
    await s.add_correction(pending, other.id, "Send /retrain.", origin="suggestion")
    (quiet,) = await seed_chat(s, [("Keep this private", "Private answer, rated.")], user="io")
    io = await s.ensure_user("terminal", "io", "io")
    await s.set_opted_out(io.id, True)
    return {"good": good, "dup": dup, "down": down, "unrated": unrated, "short": short,
            "pii": pii, "rejected": rejected, "pending": pending, "quiet": quiet}


async def test_each_dropped_answer_is_listed_with_its_reason(env: Env) -> None:
    ids = await _seed(env)
    await env.login()
    html = await (await env.client.get("/review")).text()
    # the newest of two equal examples is kept: the older one is the duplicate
    want = {"good": ("duplicate", f"duplicate of answer {ids['dup']}"),
            "down": ("thumbs_down", "👎 and no correction"),
            "unrated": ("unrated", "not rated"),
            "short": ("too_short", "too short ([training] min_chars)"),
            "pii": ("pii_in_answer", "the answer holds personal data"),
            "rejected": ("rejected", "rejected in review"),
            "pending": ("pending_review", "waits for a review decision"),
            "quiet": ("opted_out", "the user opted out of training")}
    for name, (reason, why) in want.items():
        row = html.split(f'id="drop-{ids[name]}"', 1)
        assert len(row) == 2, name
        cells = row[1].split("</tr>", 1)[0]
        assert f'data-reason="{reason}"' in cells and why in cells, (name, cells)
        assert 'href="/conversations/' in cells
    assert f'id="drop-{ids["dup"]}"' not in html  # kept, not dropped
    assert "ana.lopes@example.com" in html.split('id="drop-' + str(ids["pii"]))[1][:600]


async def test_the_typed_drops_match_the_counts_and_leave_the_kept_alone(env: Env) -> None:
    ids = await _seed(env)
    convs = await env.store.training_conversations()
    examples, report = build_examples(env.cfg, convs, now=time.time())
    assert all(isinstance(d, Drop) for d in report.drops)
    assert sum(report.dropped.values()) == len(report.drops)
    by_reason: dict[str, int] = {}
    for d in report.drops:
        by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
    assert by_reason == dict(report.dropped)
    dropped = {d.answer_id for d in report.drops}
    assert [e.answer_id for e in examples] == [ids["dup"]]
    assert dropped.isdisjoint(e.answer_id for e in examples)
    answers = {m.id for c in convs for m in c.messages if m.role == "assistant"}
    assert dropped | {e.answer_id for e in examples} == answers  # each answer: kept or why not
    assert ids["quiet"] not in answers  # opted out: the store never hands it to training
    (dup,) = [d for d in report.drops if d.reason == "duplicate"]
    assert (dup.answer_id, dup.like) == (ids["good"], ids["dup"])
