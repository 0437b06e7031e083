"""Correction notes with real Chroma and the real embedded embedder: a correction answers the next,
differently phrased question at once; remove, forget and the setting; notes never break search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli.kb import cmd_kb_list
from bot.config import Config
from data.store import Store
from rag.base import CorrectionNote, CorrectionNotes, KnowledgeBase, citations, format_context
from rag.fake import FakeRetriever, HashEmbedder
from rag.knowledge import Knowledge, ensure_sample, open_knowledge

DOCS = Path(__file__).resolve().parent.parent / "data" / "rag" / "docs"
AT = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()  # 2026-12-01 in any UTC±11 zone

WIFI = CorrectionNote(answer_id=1, owner_id=10, corrector_id=99, by="admin", at=AT,
                      question="What is the wifi password in the office?",
                      text="The office wifi password is owl-4821.")
CEO = CorrectionNote(answer_id=2, owner_id=11, corrector_id=11, by="user", at=AT + 86_400,
                     question="Who is the CEO of Zentrix Labs?",
                     text="The CEO of Zentrix Labs is Marta Quill.")
MARKET = CorrectionNote(answer_id=3, owner_id=12, corrector_id=10, by="user", at=AT,
                        question="When does the night market in Orvale open?",
                        text="The Orvale night market opens at 19:30 every Thursday.")


@pytest.fixture
async def kb(cfg: Config, store: Store) -> AsyncIterator[Knowledge]:
    k = await open_knowledge(cfg, store)
    yield k
    await k.aclose()


def notes_in(passages: list) -> list[str]:
    return [p.chunk_id for p in passages if p.chunk_id.startswith("note:")]


async def test_a_correction_answers_the_next_rephrased_question(kb: Knowledge,
                                                                store: Store) -> None:
    assert isinstance(kb, KnowledgeBase) and isinstance(kb, CorrectionNotes)
    await ensure_sample(kb)
    chunks, sources = await kb.count(), await kb.sources()
    for note in (WIFI, CEO, MARKET):
        await kb.add_note(note)
    assert await kb.note_count() == 3
    asked = {"Tell me the office wi-fi passphrase": WIFI,
             "How do I get on the office wireless network? What's the key?": WIFI,
             "Who runs Zentrix Labs?": CEO,
             "What time does Orvale's night market start?": MARKET}
    for question, note in asked.items():
        passages = await kb.search(question)
        top = passages[0]
        assert top.chunk_id == f"note:{note.answer_id}", (question, passages)
        assert top.text == f"Q: {note.question}\nA: {note.text}" and top.section == ""
        assert 0.7 <= top.score <= 1.0
        assert notes_in(passages) == [top.chunk_id], (question, passages)
    wifi = await kb.search("Tell me the office wi-fi passphrase")
    assert wifi[0].source == "correction by an admin, 2026-12-01"
    assert citations(wifi).splitlines()[0] == "[1] correction by an admin, 2026-12-01"
    assert format_context(wifi).startswith("[1] correction by an admin, 2026-12-01\nQ: What is")
    ceo = await kb.search("Who leads the company Zentrix Labs?")
    assert ceo[0].label() == "correction by the user, 2026-12-02"
    # Same-shaped questions about something else, and document questions, get no note.
    for other in ("What is the password for my email?", "Who is the CEO of Apple?",
                  "When does the supermarket open?", "What is the capital of France?"):
        assert notes_in(await kb.search(other)) == [], other
    docs = await kb.search("How do I retrain the bot?")
    assert docs[0].label() == "learning.md › Retraining" and notes_in(docs) == []
    # A note comes first and the rest of top_k is documents; k is respected.
    mixed = await kb.search("What is the wifi password in the office? How do I retrain the bot?")
    assert mixed[0].chunk_id == "note:1" and len(mixed) <= kb.cfg.top_k
    assert any(p.source == "learning.md" for p in mixed[1:]), mixed
    assert [p.chunk_id for p in await kb.search("Tell me the office wi-fi passphrase", 1)] == \
        ["note:1"]
    # Notes are not documents: the chunk count, the sources and `kb list` are unchanged.
    assert await kb.count() == chunks and await kb.sources() == sources
    lines: list[str] = []
    assert await cmd_kb_list(kb, lines.append) == 0
    assert not any("correction" in line or "wifi" in line for line in lines), lines
    assert lines[-1] == f"{len(sources)} sources, {chunks} chunks"


async def test_notes_fit_the_context_budget(cfg: Config, store: Store, tmp_path: Path) -> None:
    kb = await open_knowledge(cfg.replace(rag__context_tokens=40), store)
    (tmp_path / "wifi.md").write_text("# Network\n\nGuests use the wifi network OwlGuest; the "
                                      "office wifi password is printed on the router.\n")
    await kb.ingest([tmp_path])
    long = replace(WIFI, text="The office wifi password is owl-4821. "
                   + "Ask the front desk for help. " * 20)
    await kb.add_note(long)
    got = await kb.search("Tell me the office wi-fi passphrase")
    assert [p.chunk_id for p in got] == ["note:1"]  # the note alone fills the budget
    assert got[0].text.endswith(" …") and "owl-4821" in got[0].text
    assert sum(len(kb.chunker.tokenizer.encode(p.text, add_special_tokens=False).ids)
               for p in got) <= 40 + 2
    await kb.add_note(WIFI)  # replaces the long note of the same answer
    got = await kb.search("Tell me the office wi-fi passphrase")
    assert got[0].text.endswith("owl-4821.") and got[1:] and got[1].source == "wifi.md"
    assert sum(len(kb.chunker.tokenizer.encode(p.text, add_special_tokens=False).ids)
               for p in got) <= 40 + 2
    await kb.aclose()


async def test_replace_remove_and_forget(kb: Knowledge) -> None:
    for note in (WIFI, CEO, MARKET):
        await kb.add_note(note)
    newer = replace(WIFI, text="The office wifi password is now hoot-77.", at=AT + 3600)
    await kb.add_note(newer)
    assert await kb.note_count() == 3
    wifi = await kb.search("Tell me the office wi-fi passphrase")
    assert "hoot-77" in wifi[0].text and not any("owl-4821" in p.text for p in wifi)
    assert await kb.remove_note(1) is True
    assert await kb.remove_note(1) is False
    assert notes_in(await kb.search("Tell me the office wi-fi passphrase")) == []
    # User 10 corrected MARKET; user 11 asked and corrected CEO.
    assert await kb.forget_notes(10) == 1
    assert notes_in(await kb.search("What time does Orvale's night market start?")) == []
    assert notes_in(await kb.search("Who runs Zentrix Labs?")) == ["note:2"]
    assert await kb.forget_notes(11) == 1 and await kb.forget_notes(11) == 0
    assert await kb.note_count() == 0


async def test_notes_off_are_neither_stored_nor_retrieved(cfg: Config, store: Store) -> None:
    on = await open_knowledge(cfg, store)
    await on.add_note(WIFI)
    assert notes_in(await on.search("Tell me the office wi-fi passphrase")) == ["note:1"]
    await on.aclose()
    off = await open_knowledge(cfg.replace(rag__correction_notes=False), store)
    assert notes_in(await off.search("Tell me the office wi-fi passphrase")) == []
    await off.add_note(CEO)  # not stored
    assert await off.note_count() == 1
    assert await off.forget_notes(99) == 1  # forgetting works whatever the setting
    await off.aclose()
    again = await open_knowledge(cfg, store)
    assert await again.note_count() == 0
    assert notes_in(await again.search("Who runs Zentrix Labs?")) == []
    await again.aclose()


async def test_notes_survive_a_restart_and_are_rebuilt_by_reindex(cfg: Config,
                                                                  store: Store) -> None:
    first = await open_knowledge(cfg, store)
    await first.add_note(CEO)
    await first.aclose()
    second = await open_knowledge(cfg, store)
    assert notes_in(await second.search("Who leads the company Zentrix Labs?")) == ["note:2"]
    await second.aclose()
    # Notes written with another embedder are not compared with this one's vectors...
    other_cfg = cfg.replace(storage__dir=f"{cfg.storage.dir}-other")
    old = await open_knowledge(other_cfg, store, embedder=HashEmbedder(64))
    await old.ingest([DOCS / "error-codes.md"])
    await old.add_note(MARKET)
    kb = await open_knowledge(other_cfg, store)
    assert kb.needs_reindex
    assert notes_in(await kb.search("What time does Orvale's night market start?")) == []
    # ... until `kb reindex` re-embeds them from their stored question.
    await kb.reindex()
    assert not kb.needs_reindex
    got = await kb.search("What time does Orvale's night market start?")
    assert got[0].chunk_id == "note:3" and got[0].source == "correction by the user, 2026-12-01"
    reopened = await open_knowledge(other_cfg, store)
    assert not reopened.needs_reindex
    assert notes_in(await reopened.search("Is the night market in Orvale open on Thursdays?")) \
        == ["note:3"]


async def test_a_note_written_while_stale_rebuilds_the_notes(cfg: Config, store: Store) -> None:
    old = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
    await old.add_note(MARKET)
    kb = await open_knowledge(cfg, store)
    assert kb.needs_reindex
    await kb.add_note(CEO)  # would mix 64-d and 384-d vectors: re-embeds MARKET first
    assert not kb.needs_reindex and await kb.note_count() == 2
    assert notes_in(await kb.search("Who runs Zentrix Labs?")) == ["note:2"]
    assert notes_in(await kb.search("What time does Orvale's night market start?")) == ["note:3"]


async def test_missing_or_empty_notes_never_break_document_search(cfg: Config, store: Store,
                                                                  kb: Knowledge) -> None:
    await kb.ingest([DOCS / "error-codes.md", DOCS / "faq.jsonl"])
    off = await open_knowledge(cfg.replace(rag__correction_notes=False), store)
    questions = ("What does error NX-4472 mean?", "Who approves travel expenses?",
                 "The backup could not lock the snapshot volume")
    for q in questions:  # an empty notes collection changes nothing
        assert await kb.search(q) == await off.search(q), q
    await kb.add_note(WIFI)
    kb._notes.client.delete_collection(kb._notes.name)  # gone behind our back
    for q in questions:
        assert await kb.search(q) == await off.search(q), q
    assert await kb.search("Tell me the office wi-fi passphrase") == \
        await off.search("Tell me the office wi-fi passphrase")
    assert await kb.remove_note(1) is False
    await kb.add_note(WIFI)  # the collection is recreated
    assert notes_in(await kb.search("Tell me the office wi-fi passphrase")) == ["note:1"]
    await off.aclose()


async def test_empty_notes_are_ignored(kb: Knowledge) -> None:
    await kb.add_note(replace(WIFI, text="  "))
    await kb.add_note(replace(CEO, question=""))
    assert await kb.note_count() == 0


@pytest.fixture(params=["real", "fake"])
async def notebook(request: pytest.FixtureRequest, kb: Knowledge) -> KnowledgeBase | FakeRetriever:
    return kb if request.param == "real" else FakeRetriever()


async def test_fake_keeps_the_real_contract(notebook: Knowledge | FakeRetriever) -> None:
    """The fake the bot's tests use behaves like the real notes on the contract's cases."""
    assert isinstance(notebook, CorrectionNotes)
    await notebook.add_note(WIFI)
    await notebook.add_note(CEO)
    first = (await notebook.search("What is the office wifi password?", 3))[0]
    assert (first.chunk_id, first.source, first.section) == \
        ("note:1", "correction by an admin, 2026-12-01", "")
    assert first.text == "Q: What is the wifi password in the office?\n" \
        "A: The office wifi password is owl-4821."
    await notebook.add_note(replace(WIFI, text="It is hoot-77."))
    assert (await notebook.search("What is the office wifi password?"))[0].text.endswith(
        "hoot-77.")
    assert await notebook.remove_note(1) is True and await notebook.remove_note(1) is False
    assert notes_in(await notebook.search("What is the office wifi password?")) == []
    assert await notebook.forget_notes(12) == 0
    assert await notebook.forget_notes(11) == 1
    assert notes_in(await notebook.search("Who is the CEO of Zentrix Labs?")) == []
