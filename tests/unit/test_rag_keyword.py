"""rag/keyword.py: BM25 over analysed terms, best alternative per unit, coverage, stored terms."""

from __future__ import annotations

from rag.analysis import ANALYZER_VERSION, analyze
from rag.config import RagConfig
from rag.keyword import (
    ANALYZER_KEY,
    TERMS_KEY,
    KeywordIndex,
    keyword_text,
    stored_terms,
    terms_metadata,
)

MIN_KW = RagConfig().min_keyword_score
DOCS = [
    "O treinamento do modelo com LoRA levou duas horas na placa de vídeo.",
    "A avaliação dos adaptadores usa um conjunto de 120 perguntas.",
    "O arquivo trn_processed.json tinha 1.650 exemplos depois da limpeza.",
    "O arquivo trn_raw.json guarda as mensagens brutas exportadas do Telegram.",
    "A RTX 3060 tem 12 GB de memória; a RTX 4060 Ti custaria o dobro.",
    "Backups run every night at 03:00 with restic to the external disk.",
    "Para que serve isso? É o que eu tenho de mais com você, não é?",
]


def top(index: KeywordIndex, query: str) -> int:
    hits = index.search(query, 3)
    assert hits, query
    return hits[0].doc


def test_stems_plurals_verb_forms_and_accents_retrieve() -> None:
    index = KeywordIndex.of_texts(DOCS)
    assert top(index, "Quanto tempo eu treinei os modelos?") == 0  # treinamento / treinei
    assert top(index, "como avaliar o adaptador") == 1  # avaliação / avaliar, plural
    assert top(index, "avaliacao dos adaptadores") == 1  # no accent
    hit = index.search("Quantas perguntas tem a avaliacao?", 1)[0]
    assert hit.doc == 1 and hit.coverage >= MIN_KW


def test_stop_words_never_let_an_unrelated_chunk_pass() -> None:
    index = KeywordIndex.of_texts(DOCS)
    assert index.search("o que é isso para você, de com não", 3) == []  # stop words only
    # Shares only stop words and one common word with doc 6; far below the threshold.
    for hit in index.search("Para que serve a receita de bolo de cenoura com você?", 7):
        assert hit.coverage < MIN_KW, hit
    # The same question counted stop words would have matched doc 6 on most of its words.
    assert not set(analyze("Para que serve isso com você")) - {"serv", "serve"}


def test_codes_and_numbers_match_exactly() -> None:
    index = KeywordIndex.of_texts(DOCS)
    hits = index.search("trn_processed.json", 7)
    assert hits[0].doc == 2 and hits[0].coverage == 1.0
    assert all(h.coverage < MIN_KW for h in hits[1:])  # trn_raw.json shares only trn, json
    hits = index.search("RTX 3060", 7)
    assert hits[0].doc == 4 and hits[0].coverage == 1.0
    assert top(index, "1.650 exemplos") == 2
    assert top(index, "restic 03:00") == 5


def test_each_query_word_counts_once() -> None:
    """A word's stem and surface form are alternatives: the best counts, never both."""
    index = KeywordIndex.of_texts(DOCS)
    lora = index.search("lora", 1)[0]
    assert lora.doc == 0 and lora.coverage == 1.0
    assert index.search("LoRA LoRA lora", 1)[0].score == lora.score
    twice = index.search("treinamento treinar", 1)[0]
    assert twice.score == index.search("treinamento", 1)[0].score


def test_english_question_finds_the_english_paragraph() -> None:
    note = ("# Deploy\n\nEscolhi long polling para o bot do Telegram, que roda em casa.\n\n"
            "## Why long polling\n\nThe home server sits behind the router and cannot reach a "
            "webhook without a tunnel; polling only needs outgoing connections.")
    index = KeywordIndex.of_texts([*DOCS, *note.split("\n\n## ")])
    hit = index.search("Why can't the server reach a webhook?", 3)[0]
    assert hit.doc == len(DOCS) + 1 and hit.coverage >= MIN_KW


def test_stored_terms_are_used_only_from_the_same_analyzer() -> None:
    meta = {"name": "diario.md", "section": "Março", **terms_metadata("diario.md", "Março",
                                                                       "Treinei a v0003.")}
    assert meta[ANALYZER_KEY] == ANALYZER_VERSION
    fresh = analyze(keyword_text("diario.md", "Março", "Treinei a v0003."))
    assert stored_terms(meta, "Treinei a v0003.") == (fresh, False)
    for old in ({**meta, ANALYZER_KEY: "0", TERMS_KEY: "stale terms"},
                {"name": "diario.md", "section": "Março"}):
        assert stored_terms(old, "Treinei a v0003.") == (fresh, True)
    assert "v0003" in fresh and "diari" in fresh  # the file name is indexed too
