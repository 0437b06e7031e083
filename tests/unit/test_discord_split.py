"""Pure helpers of the Discord adapter: message splitting, attachment checks, component ids."""

from __future__ import annotations

from bot.discord.attachments import SUPPORTED_SUFFIXES, attachment_problem
from bot.discord.buttons import is_known_component
from bot.discord.format import LIMIT
from bot.discord.format import split_message as split_text


def test_short_text_is_one_chunk() -> None:
    assert split_text("  hello  ") == ["hello"]
    assert split_text("") == [] and split_text(" \n ") == []  # nothing to send


def test_split_prefers_paragraphs_then_sentences_then_spaces() -> None:
    para = "A" * 1500 + "\n\n" + "B" * 1000
    assert split_text(para) == ["A" * 1500, "B" * 1000]
    sentences = ("This is a sentence. " * 150).strip()  # 2999 chars, no newlines
    chunks = split_text(sentences)
    assert all(len(c) <= LIMIT for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == sentences
    words = " ".join(["word"] * 900)
    chunks = split_text(words)
    assert all(len(c) <= LIMIT and not c.endswith(" ") for c in chunks)
    assert " ".join(chunks) == words


def test_unbreakable_text_is_cut_hard() -> None:
    chunks = split_text("x" * 4500)
    assert [len(c) for c in chunks] == [2000, 2000, 500]


def test_attachment_problem() -> None:
    assert attachment_problem("notes.md", 100, 1.0) is None
    assert "too large" in (attachment_problem("notes.md", 3 * 1048576, 1.0) or "")
    assert "unsupported type .exe" in (attachment_problem("a.exe", 10, 1.0) or "")
    assert "(no extension)" in (attachment_problem("Makefile", 10, 1.0) or "")


def test_supported_suffixes_match_the_knowledge_base() -> None:
    from rag.extract import SUPPORTED

    assert set(SUPPORTED_SUFFIXES) == set(SUPPORTED)


def test_known_components() -> None:
    assert is_known_component("nightowl:fb:12:up")
    assert is_known_component("nightowl:forget:99:no")
    assert not is_known_component("nightowl:fb:12:sideways")
    assert not is_known_component("other:button")
