"""Preference rows for KTO and DPO from real store data, and the clear skips."""

from __future__ import annotations

import time

from bot.config import Config
from data.store import Store
from tests.fakes.training_data import seed_chat
from training.dataset import Example, build_examples
from training.preferences import preference_rows


async def _examples(cfg: Config, store: Store) -> tuple[list[Example], list[Example]]:
    disliked: list[Example] = []
    examples, report = build_examples(cfg, await store.training_conversations(),
                                      now=time.time(), disliked=disliked)
    assert report.dropped["thumbs_down"] == len(disliked)  # still reported as dropped for SFT
    return examples, disliked


async def test_kto_rows_mark_liked_and_corrections_desirable_and_the_rest_undesirable(
        cfg: Config, store: Store) -> None:
    await seed_chat(store, [("What is 2+2?", "5")], user="a", feedback=-1, correction="It is 4.")
    await seed_chat(store, [("Capital of France?", "Paris.")], user="b")
    await seed_chat(store, [("Who are you?", "A toaster.")], user="c", feedback=-1)
    examples, disliked = await _examples(cfg, store)
    rows, skip = preference_rows("kto", examples, disliked)
    assert skip is None
    got = {(r["completion"][0]["content"], r["label"]) for r in rows}
    assert got == {("It is 4.", True), ("Paris.", True), ("5", False), ("A toaster.", False)}
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    pairs, skip = preference_rows("sft+dpo", examples, disliked)
    assert skip is None and len(pairs) == 1
    assert (pairs[0]["chosen"][0]["content"], pairs[0]["rejected"][0]["content"]) == \
        ("It is 4.", "5")


async def test_one_sided_data_is_a_clear_skip(cfg: Config, store: Store) -> None:
    await seed_chat(store, [("Capital of France?", "Paris.")], user="b")
    examples, disliked = await _examples(cfg, store)
    rows, skip = preference_rows("kto", examples, disliked)
    assert rows == [] and skip is not None and "1 desirable and 0 undesirable" in skip
    rows, skip = preference_rows("sft+dpo", examples, disliked)
    assert rows == [] and skip is not None and "needs pairs" in skip
    assert preference_rows("sft", examples, disliked) == ([], None)
