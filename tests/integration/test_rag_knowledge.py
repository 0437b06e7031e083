"""Real Chroma + the real embedded embedder: ingestion bookkeeping, retrieval, citations."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli.kb import cmd_ingest, cmd_kb_list, cmd_kb_reindex, cmd_kb_remove
from bot.config import Config
from data.store import Store
from rag.base import citations, format_context
from rag.fake import HashEmbedder
from rag.knowledge import Knowledge, ensure_sample, open_knowledge
from tests.fakes.documents import blank_pdf, docx_bytes, text_pdf

DOCS = Path(__file__).resolve().parent.parent / "data" / "rag" / "docs"


@pytest.fixture
async def kb(cfg: Config, store: Store) -> AsyncIterator[Knowledge]:
    k = await open_knowledge(cfg, store)
    yield k
    await k.aclose()


async def test_every_format_is_ingested_and_retrievable(kb: Knowledge, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plants.md").write_text("# Garden\n\n## Watering\n\nWater the ferns every Tuesday "
                                      "morning with rain water.\n")
    (folder / "boat.txt").write_text("The sailboat Marlin is moored at pier seven in the harbour.")
    shutil.copy(DOCS / "office-hours.html", folder)
    (folder / "telescope.pdf").write_bytes(text_pdf("The observatory telescope has a 40 cm "
                                                    "mirror and opens at dusk."))
    (folder / "kitchen.docx").write_bytes(docx_bytes("Kitchen rules", "Clean the coffee machine "
                                                     "every Friday afternoon."))
    (folder / "faq.json").write_text(json.dumps([{"question": "What colour is the company van?",
                                                  "answer": "The company van is bright orange."}]))
    shutil.copy(DOCS / "faq.jsonl", folder)
    results = await kb.ingest([folder])
    assert {r.status for r in results} == {"added"}, [r.line() for r in results]
    assert len(results) == 7
    expect = {
        "How often are the ferns watered?": ("plants.md", "Watering", "Tuesday"),
        "Where is the sailboat Marlin?": ("boat.txt", "", "pier seven"),
        "When is the help desk open?": ("office-hours.html", "Opening hours", "8:00"),
        "How big is the telescope mirror?": ("telescope.pdf", "", "40 cm"),
        "When should the coffee machine be cleaned?": ("kitchen.docx", "Kitchen rules", "Friday"),
        "What colour is the van?": ("faq.json", "What colour is the company van?", "orange"),
        "Who approves travel expenses?": ("faq.jsonl", "Who approves travel expenses?", "finance"),
    }
    for question, (source, section, needle) in expect.items():
        passages = await kb.search(question)
        assert passages, question
        top = passages[0]
        assert (top.source, top.section) == (source, section), (question, passages)
        assert needle in top.text
    html = (await kb.search("When is the help desk open?"))[0].text
    assert "tracking" not in html and "Sign in" not in html and "Cookie" not in html


async def test_unchanged_replaced_removed(kb: Knowledge, store: Store, tmp_path: Path) -> None:
    doc = tmp_path / "menu.md"
    doc.write_text("# Menu\n\n## Monday\n\nMonday lunch is lentil soup.\n")
    assert [r.status for r in await kb.ingest([doc])] == ["added"]
    first = await store.kb_source(str(doc.resolve()))
    assert first is not None and first.chunks == 1 and first.ingested_by == "cli"
    assert [r.status for r in await kb.ingest([doc])] == ["unchanged"]
    assert await kb.count() == 1
    doc.write_text("# Menu\n\n## Monday\n\nMonday lunch is pumpkin risotto.\n\n## Tuesday\n\n"
                   "Tuesday lunch is grilled fish.\n")
    res = await kb.ingest([doc])
    assert [(r.status, r.chunks) for r in res] == [("replaced", 2)]
    assert await kb.count() == 2
    texts = " ".join(p.text for p in await kb.search("What is for lunch on Monday?", 5))
    assert "pumpkin" in texts and "lentil" not in texts
    record = await store.kb_source(str(doc.resolve()))
    assert record is not None and record.content_hash != first.content_hash
    assert await kb.remove("menu.md") is True
    assert await kb.count() == 0 and await store.kb_sources() == []
    assert await kb.search("What is for lunch on Monday?") == []
    assert await kb.remove("menu.md") is False


async def test_bad_files_do_not_stop_the_batch(cfg: Config, store: Store, tmp_path: Path) -> None:
    kb = await open_knowledge(cfg.replace(rag__max_file_mb=0.01), store)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a-binary.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "b-empty.md").write_text("   \n")
    (folder / "c-latin1.txt").write_bytes("Relatório de manutenção: a válvula foi trocada "
                                          "na sexta-feira.".encode("latin-1"))
    (folder / "d-huge.md").write_text("word " * 5000)
    (folder / "e-scan.pdf").write_bytes(blank_pdf())
    (folder / "f-program.exe").write_bytes(b"MZ\x90\x00")
    (folder / "g-good.md").write_text("# Good\n\nThe spare keys are in the blue drawer.\n")
    (folder / ".hidden.md").write_text("# Hidden\n\nNot ingested.\n")
    results = await kb.ingest([folder, tmp_path / "missing.md"])
    got = {Path(r.source).name: (r.status, r.reason) for r in results}
    assert got["a-binary.txt"] == ("skipped", "binary file, not text")
    assert got["b-empty.md"] == ("skipped", "empty")
    assert got["c-latin1.txt"][0] == "added"
    assert got["d-huge.md"][0] == "skipped" and got["d-huge.md"][1].startswith("too large")
    assert got["e-scan.pdf"][0] == "skipped" and "no text layer" in got["e-scan.pdf"][1]
    assert got["f-program.exe"][0] == "skipped" and "unsupported" in got["f-program.exe"][1]
    assert got["g-good.md"][0] == "added"
    assert got["missing.md"] == ("skipped", "not found")
    assert ".hidden.md" not in got
    assert {Path(r.source).name for r in await store.kb_sources()} == {"c-latin1.txt",
                                                                      "g-good.md"}
    latin = await kb.search("válvula trocada manutenção")
    assert latin and latin[0].source == "c-latin1.txt" and "válvula" in latin[0].text


async def test_threshold_citations_and_sample(kb: Knowledge, store: Store) -> None:
    first = await ensure_sample(kb)
    assert first and {r.status for r in first} == {"added"}
    assert await ensure_sample(kb) == []  # only once
    passages = await kb.search("How do I retrain the bot?")
    assert passages[0].label() == "learning.md › Retraining"
    assert "nightowl train" in passages[0].text and "/retrain" in passages[0].text
    context = format_context(passages)
    for i, p in enumerate(passages, 1):
        assert f"[{i}] {p.label()}\n{p.text.strip()}" in context
    footer = citations(passages).splitlines()
    assert footer[0] == "[1] learning.md › Retraining"
    assert len(footer) == len({p.label() for p in passages})
    assert sum(p.chunk_id == passages[0].chunk_id for p in passages) == 1
    for unrelated in ("What is the capital of France?", "How do I bake sourdough bread?",
                      "Who won the football world cup in 1998?"):
        assert await kb.search(unrelated) == [], unrelated


async def test_context_budget_and_no_near_duplicates(cfg: Config, store: Store,
                                                     tmp_path: Path) -> None:
    kb = await open_knowledge(cfg.replace(rag__context_tokens=40), store)
    text = "The archive room key is kept by the facility manager on the ground floor."
    (tmp_path / "one.md").write_text(f"# One\n\n{text}\n")
    (tmp_path / "two.md").write_text(f"# Two\n\n{text}\n")
    (tmp_path / "three.md").write_text("# Three\n\nThe archive room is open on Thursdays.\n")
    await kb.ingest([tmp_path])
    passages = await kb.search("Who has the archive room key?", 3)
    assert sum("facility manager" in p.text for p in passages) == 1
    assert sum(len(kb.chunker.tokenizer.encode(p.text).ids) for p in passages) <= 40 + 4


async def test_hybrid_finds_exact_code_dense_misses(cfg: Config, store: Store) -> None:
    results = {}
    for hybrid in (False, True):
        kb = await open_knowledge(cfg.replace(rag__hybrid=hybrid,
                                              storage__dir=f"{cfg.storage.dir}-{hybrid}"), store)
        await kb.ingest([DOCS / "error-codes.md"])
        results[hybrid] = [p.section for p in await kb.search("NX-4473")]
        await store.kb_delete_source(str((DOCS / "error-codes.md").resolve()))
    assert results[True][0] == "NX-4473"
    assert not results[False] or results[False][0] != "NX-4473"


async def test_portuguese_words_retrieve_with_english_embedder(kb: Knowledge) -> None:
    await kb.ingest([DOCS / "manual-servidor.md", DOCS / "error-codes.md"])
    assert (await kb.search("Como trocar a senha?"))[0].section == "Trocar a senha"
    assert (await kb.search("O papel atolou na impressora"))[0].section == \
        "Impressora do segundo andar"


async def test_reindex_after_embedder_change(cfg: Config, store: Store, tmp_path: Path) -> None:
    old = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
    await old.ingest([DOCS / "error-codes.md", DOCS / "manual-servidor.md"])
    n = await old.count()
    kb = await open_knowledge(cfg, store)  # the configured real embedder
    assert kb.needs_reindex and kb.indexed_with == "hash-64"
    assert (await kb.search("NX-4471"))[0].section == "NX-4471"  # keyword-only meanwhile
    seen: list[tuple[int, int]] = []
    assert await kb.reindex(lambda done, total: seen.append((done, total))) == n
    assert seen[0] == (0, n) and seen[-1] == (n, n)
    assert not kb.needs_reindex and await kb.count() == n
    again = await open_knowledge(cfg, store)
    assert not again.needs_reindex
    top = await again.search("The backup could not lock the snapshot volume")
    assert top[0].section == "NX-4471"
    lines: list[str] = []
    bar = io.StringIO()
    assert await cmd_kb_reindex(again, lines.append, bar) == 0
    assert f"{n}/{n} chunks 100%" in bar.getvalue() and lines[0].startswith(f"reindexed {n}")


@pytest.mark.parametrize("emptied", [False, True])
async def test_empty_store_takes_the_new_embedder(cfg: Config, store: Store, tmp_path: Path,
                                                  emptied: bool) -> None:
    """An empty collection opened with another embedder is made for it: not "indexed with" the
    old model on the next start, and (once it held vectors of another size) still writable."""
    old = await open_knowledge(cfg, store, embedder=HashEmbedder(64))
    if emptied:
        await old.ingest([DOCS / "error-codes.md"])
        assert await old.remove("error-codes.md") and await old.count() == 0
    await old.aclose()
    kb = await open_knowledge(cfg, store)
    assert not kb.needs_reindex and kb.indexed_with == "embedded"
    doc = tmp_path / "shifts.md"
    doc.write_text("# Shifts\n\nThe night shift starts at 22:00.\n")
    assert [r.status for r in await kb.ingest([doc])] == ["added"]
    await kb.aclose()
    again = await open_knowledge(cfg, store)
    assert not again.needs_reindex and again.indexed_with == "embedded"
    assert again.collection.metadata["embedding_model"] == "embedded"
    # Dense search is on: no word of this question is in the text.
    top = await again.search("When do evening workers begin?")
    assert top and top[0].source == "shifts.md"


async def test_uploads_odd_names_and_forget(kb: Knowledge, cfg: Config, tmp_path: Path) -> None:
    res = await kb.ingest_bytes("../../etc/pa\x00ss wd?.md", b"# Notes\n\nThe vault code is "
                                b"kept by Ana.\n", by="telegram:42")
    assert (res.status, res.source) == ("added", "pass wd_.md")
    uploads = Path(cfg.storage.dir) / "uploads"
    saved = list(uploads.rglob("*.md"))
    assert [p.name for p in saved] == ["pass wd_.md"]
    assert saved[0].resolve().is_relative_to(uploads.resolve())
    assert (await kb.ingest_bytes("pa\x00ss wd?.md", saved[0].read_bytes(),
                                  by="telegram:42")).status == "unchanged"
    bad = await kb.ingest_bytes("photo.txt", bytes(range(256)) * 4, by="telegram:42")
    assert bad.status == "skipped" and bad.reason == "binary file, not text"
    await kb.ingest_bytes("other.md", b"# Other\n\nSomeone else's note.\n", by="discord:7")
    assert await kb.search("Who keeps the vault code?")
    assert await kb.remove_by_uploader("telegram:42") == ["pass wd_.md"]
    assert not saved[0].exists()
    assert [Path(s.source).name for s in await kb.sources()] == ["other.md"]
    assert await kb.search("Who keeps the vault code?") == []


async def test_cli_commands(kb: Knowledge, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\nAlpha text about the archive.\n")
    (tmp_path / "b.txt").write_text("Bravo text about the boiler.")
    lines: list[str] = []
    assert await cmd_ingest(kb, [str(tmp_path)], ["*.md"], lines.append) == 0
    assert lines[0].startswith("added: ") and lines[0].endswith("a.md (1 chunks)")
    assert lines[-1] == ("1 added, 0 replaced, 0 unchanged, 0 skipped; "
                         "1 chunks in the knowledge base")
    lines.clear()
    assert await cmd_ingest(kb, [str(tmp_path / "nope.md")], [], lines.append) == 1
    assert lines[0].startswith("skipped: ") and lines[0].endswith("(not found)")
    lines.clear()
    assert await cmd_kb_list(kb, lines.append) == 0
    assert lines[-1] == "1 sources, 1 chunks" and lines[1].rstrip().endswith("a.md")
    lines.clear()
    assert await cmd_kb_remove(kb, ["zzz.md"], lines.append) == 1
    assert await cmd_kb_remove(kb, "a.md", lines.append) == 0  # bot/cli.py passes one name
    assert lines == ["not found: zzz.md (see `nightowl kb list` for the names)", "removed: a.md"]
    assert await kb.count() == 0


async def test_missing_embedding_model_says_how_to_get_it(cfg: Config, store: Store) -> None:
    from rag.errors import KnowledgeError

    with pytest.raises(KnowledgeError, match=r"not available offline.*SentenceTransformer\("
                                             r"'no-such/multilingual-model'\)\.save"):
        await open_knowledge(cfg.replace(rag__embedding_model="no-such/multilingual-model"), store)


async def test_failed_store_write_keeps_previous_version(kb: Knowledge, store: Store,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "shifts.md"
    doc.write_text("# Shifts\n\nThe night shift starts at 22:00.\n")
    await kb.ingest([doc])
    before = await store.kb_source(str(doc.resolve()))
    real_embed = kb.embedder.embed

    def flaky(texts: list[str]) -> list[list[float]]:
        if any("BOOM" in t for t in texts):
            raise RuntimeError("disk full")
        return real_embed(texts)

    monkeypatch.setattr(kb.embedder, "embed", flaky)
    doc.write_text("# Shifts\n\nBOOM The night shift starts at 23:00.\n")
    (tmp_path / "other.md").write_text("# Other\n\nThe canteen opens at noon.\n")
    results = {Path(r.source).name: r for r in await kb.ingest([tmp_path])}
    assert results["shifts.md"].status == "skipped"
    assert "not stored (RuntimeError: disk full)" in results["shifts.md"].reason
    assert results["other.md"].status == "added"
    assert await store.kb_source(str(doc.resolve())) == before
    night = await kb.search("When does the night shift start?")
    assert night[0].source == "shifts.md" and "22:00" in night[0].text
