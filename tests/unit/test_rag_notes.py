"""CorrectionNote: how a note is cited and what it refuses; the fake's notes switch."""

from __future__ import annotations

from datetime import datetime

import pytest

from rag.base import CorrectionNote, citations
from rag.fake import FakeRetriever

AT = datetime(2026, 12, 1, 9, 30).timestamp()  # local time: the date cited is the local date


def note(by: str = "admin", answer_id: int = 5) -> CorrectionNote:
    return CorrectionNote(answer_id=answer_id, owner_id=1, corrector_id=2, question=" Who? ",
                          text=" Ana. \n", by=by, at=AT)


def test_a_note_is_cited_by_who_corrected_and_when() -> None:
    admin, user = note("admin").passage(1.7), note("user", 6).passage(-0.2)
    assert (admin.source, admin.section, admin.text, admin.chunk_id, admin.score) == \
        ("correction by an admin, 2026-12-01", "", "Q: Who?\nA: Ana.", "note:5", 1.0)
    assert (user.label(), user.score) == ("correction by the user, 2026-12-01", 0.0)
    assert citations([admin, user]) == ("[1] correction by an admin, 2026-12-01\n"
                                        "[2] correction by the user, 2026-12-01")


def test_unknown_corrector_kind_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"by is 'owner'; use one of \['admin', 'user'\]"):
        note("owner")


async def test_fake_with_notes_off_stores_nothing() -> None:
    on = FakeRetriever()
    await on.add_note(note())
    assert [p.chunk_id for p in await on.search("Who?")] == ["note:5"]
    fake = FakeRetriever(notes_enabled=False)
    await fake.add_note(note())
    assert fake.notes == {} and await fake.search("Who?") == []
