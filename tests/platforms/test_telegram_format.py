"""Splitting and HTML rendering of answers, checked against the fake's Telegram parsers."""

from __future__ import annotations

import random

import pytest

from bot.core.text import split_command, utf16_len
from bot.telegram.format import split_message, to_html, visible
from tests.fakes.telegram_api import ApiError, parse_html, parse_markdown_v2


def test_split_prefers_paragraphs_then_sentences_then_words() -> None:
    para = "A" * 3000 + ".\n\n" + "B" * 3000 + "."
    assert split_message(para) == ["A" * 3000 + ".", "B" * 3000 + "."]
    sentences = " ".join(["This is a sentence."] * 400)  # ~7,600 chars, no newlines
    parts = split_message(sentences)
    assert len(parts) == 2 and all(p.endswith(".") and utf16_len(p) <= 4096 for p in parts)
    words = " ".join(["word"] * 2000)
    assert all(not p.startswith(" ") and utf16_len(p) <= 4096 for p in split_message(words))
    assert "".join(split_message("x" * 9000)) == "x" * 9000  # no bound at all: hard cut


def test_split_counts_utf16_units() -> None:
    text = "🦉" * 3000  # 6,000 UTF-16 units
    parts = split_message(text)
    assert len(parts) == 2 and all(utf16_len(p) <= 4096 for p in parts)
    assert "".join(parts) == text


def test_split_is_stable_while_text_grows() -> None:
    rng = random.Random(3)
    text = " ".join(rng.choice(["owl.", "night", "tree\n\n", "moon!", "a"]) for _ in range(4000))
    final = split_message(text)
    for cut in range(4500, len(text), 997):
        partial = split_message(text[:cut])
        assert partial[:-1] == final[:len(partial) - 1]


@pytest.mark.parametrize(("text", "shown"), [
    ("plain", "plain"), ("a < b & c > d", "a < b & c > d"),
    ("<b>not a tag</b>", "<b>not a tag</b>"), ("**bold** and `code <x>`", "bold and code <x>"),
    ("```python\nif a < b:\n    print('&')\n```", "if a < b:\n    print('&')"),
    ("unbalanced ** and *", "unbalanced ** and *"), ("&amp; &lt;", "&amp; &lt;"),
])
def test_html_always_parses_and_shows_the_text(text: str, shown: str) -> None:
    assert parse_html(to_html(text)) == shown == visible(text)


def test_html_random_fuzz_never_breaks() -> None:
    rng = random.Random(7)
    alphabet = "ab <>&*`_\n#;/\"'"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        parse_html(to_html(text))  # raises ApiError on a bad entity


def test_fake_parsers_reject_bad_entities() -> None:
    for bad in ("<b>open", "a < b", "<foo>x</foo>", "Tom & Jerry", "</i>"):
        with pytest.raises(ApiError):
            parse_html(bad)
    assert parse_markdown_v2(r"*bold* and 1\.5 \!") == "bold and 1.5 !"
    for bad in ("1.5", "*open", "a_b"):
        with pytest.raises(ApiError):
            parse_markdown_v2(bad)


def test_split_command() -> None:
    assert split_command("/ask@NightOwlBot what  is up") == ("ask", "what  is up")
    assert split_command("/correct\nline one\nline two") == ("correct", "line one\nline two")
    assert split_command("/status") == ("status", "")
