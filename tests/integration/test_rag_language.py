"""Knowledge in the user's language, on real Chroma + the real embedded (English) embedder:
Portuguese notes found by stems, codes exact, English paragraphs of Portuguese notes, reindex
after an analyzer change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Config
from data.store import Store
from rag.analysis import ANALYZER_VERSION
from rag.keyword import ANALYZER_KEY, TERMS_KEY, chunk_terms
from rag.knowledge import Knowledge, open_knowledge

KB_PT = Path(__file__).resolve().parents[1] / "data" / "kb_pt"
# Worded unlike the notes: other verb forms, plurals, no accents, synonyms.
QUESTIONS = {
    "qual modelo foi descartado por errar concordancia em portugues?": "escolha_do_modelo.md",
    "Qual o tamanho do adaptador com rank 64?": "plano_finetuning_lora.md",
    "Quantos exemplos tinha o trn_processed.json no primeiro treinamento?":
        "diario_treinos_marco.md",
    "Qual taxa de vitória mínima um adaptador precisa para ser promovido?":
        "avaliacao_adaptadores.md",
    "qual semente uso pra separar treino e validacao": "preparacao_dataset.md",
    "Quais comandos o bot do Telegram aceita?": "deploy_telegram.md",
    "Onde está guardada a senha do restic?": "backups.md",
    "Quanto custou alugar a A100 no RunPod?": "custos.md",
    "Qual o nome da coleção de notas no Chroma?": "base_conhecimento_rag.md",
    "Por quantos dias as conversas ficam armazenadas?": "privacidade_dados.md",
}


@pytest.fixture
async def kb(cfg: Config, store: Store) -> AsyncIterator[Knowledge]:
    k = await open_knowledge(cfg, store)
    results = await k.ingest([KB_PT])
    assert {r.status for r in results} == {"added"}
    yield k
    await k.aclose()


async def answers(kb: Knowledge) -> dict[str, list[str]]:
    return {q: [p.chunk_id for p in await kb.search(q)] for q in QUESTIONS}


async def test_portuguese_questions_cite_the_right_note(kb: Knowledge) -> None:
    for question, source in QUESTIONS.items():
        passages = await kb.search(question)
        assert passages and passages[0].source == source, (question, passages[:1])


async def test_codes_match_exactly(kb: Knowledge) -> None:
    top = (await kb.search("trn_processed.json"))[0]
    assert top.source == "diario_treinos_marco.md" and "trn_processed.json" in top.text
    passages = await kb.search("RTX 3060")
    assert passages and all("3060" in p.text for p in passages)


async def test_english_question_finds_the_english_paragraph(kb: Knowledge) -> None:
    top = (await kb.search("Why does the Telegram bot use long polling instead of a webhook?"))[0]
    assert top.source == "deploy_telegram.md" and "outgoing HTTPS" in top.text


async def test_reindex_after_an_analyzer_change_keeps_results(kb: Knowledge) -> None:
    before = await answers(kb)
    rec = kb._chunks.read_all()
    assert all(m[ANALYZER_KEY] == ANALYZER_VERSION for m in rec.metadatas)
    # As if an older analyzer had written them: other version, useless terms.
    kb.collection.update(ids=rec.ids, metadatas=[
        {**m, ANALYZER_KEY: "0", TERMS_KEY: "zzz"} for m in rec.metadatas])
    kb._search.invalidate()
    assert await answers(kb) == before  # recomputed in memory, never mixed
    assert await kb.reindex() == len(rec.ids)
    after = kb._chunks.read_all()
    for text, meta in zip(after.documents, after.metadatas, strict=True):
        assert meta[ANALYZER_KEY] == ANALYZER_VERSION
        assert meta[TERMS_KEY].split() == chunk_terms(meta["name"], meta["section"], text)
    assert await answers(kb) == before
