"""rag/analysis.py: folding, stems, stop words, codes, per-block and per-query language."""

from __future__ import annotations

import ast
import json
import unicodedata
from pathlib import Path

import pytest

from rag import analysis
from rag.analysis import (
    ANALYZER_VERSION,
    STOPWORDS,
    analyze,
    analyze_query,
    detect_language,
    fold,
    stem,
)

DATA = Path(__file__).resolve().parents[1] / "data"
KB = DATA / "kb_pt"


def strip_accents(text: str) -> str:
    """Accents off, case kept (what a fast typist sends)."""
    norm = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in norm if not unicodedata.combining(ch))


def test_fold_lowercases_strips_accents_keeps_digits_and_symbols() -> None:
    assert fold("Configuração da RTX 3060") == "configuracao da rtx 3060"
    assert fold("ÉPOCAS, Métricas, avaliação, pôr, à") == "epocas, metricas, avaliacao, por, a"
    assert fold("trn_processed.json v0003 1e-3") == "trn_processed.json v0003 1e-3"
    assert fold("2 × 16 GB → 74 °C") == "2 × 16 gb → 74 °c"


@pytest.mark.parametrize("forms", [
    ["modelo", "modelos", "Modelos"],
    ["avaliação", "avaliações", "avaliacao", "avaliacoes", "avaliar", "avaliou", "avaliado"],
    ["treinar", "treinou", "treinei", "treinamos", "treino", "treinos", "treinamento",
     "treinamentos", "treinávamos", "treinavamos"],
    ["questão", "questões", "questao", "questoes"],
    ["época", "épocas", "epoca", "epocas"],
    ["configuração", "configurações", "configuracoes", "configurar", "configurado"],
    ["métrica", "métricas", "metricas"],
    ["restauração", "restauracao", "restaurar", "restaurei"],
    ["paguei", "pagar", "pagou", "pagamento"],
    ["fiquei", "ficar", "ficou"],
])
def test_portuguese_inflections_and_accents_share_one_term(forms: list[str]) -> None:
    terms = {tuple(analyze(w, "pt")) for w in forms}
    assert len(terms) == 1, terms
    assert len(next(iter(terms))) == 1


@pytest.mark.parametrize("forms", [
    ["model", "models"],
    ["train", "trains", "trained", "training"],
    ["evaluate", "evaluated", "evaluation", "evaluations"],
])
def test_english_inflections_share_one_term(forms: list[str]) -> None:
    assert len({tuple(analyze(w, "en")) for w in forms}) == 1


def test_analysis_ignores_accents_for_a_fixed_language() -> None:
    text = (KB / "escolha_do_modelo.md").read_text(encoding="utf-8")
    assert analyze(text, "pt") == analyze(strip_accents(text), "pt")
    q = "Quantas questões de matemática a versão v0003 acertou na avaliação?"
    assert analyze_query(q, "pt") == analyze_query(strip_accents(q), "pt")


def test_terms_are_folded() -> None:
    for name in ("glossario_ml.md", "deploy_discord.md", "backups.md"):
        for term in analyze((KB / name).read_text(encoding="utf-8")):
            assert fold(term) == term


def test_stop_words_removed_in_both_languages() -> None:
    pt = analyze("O que é a taxa de aprendizado para os modelos que eu uso com o LoRA?")
    en = analyze("What is the learning rate of the models that I use with them?")
    for terms in (pt, en):
        assert not set(terms) & STOPWORDS
    assert stem("aprendizado", "pt") in pt and stem("learning", "en") in en
    for w in ("de", "que", "para", "com", "the", "of", "what", "is"):
        assert fold(w) in STOPWORDS


def test_a_question_of_only_stop_words_has_no_terms() -> None:
    assert analyze_query("O que é isso? Por que não?") == []
    assert analyze_query("What is it, and why is it there?") == []
    # so a chunk that shares only function words with a question matches nothing
    question = {t for g in analyze_query("Qual é a senha do restic?") for t in g}
    unrelated = set(analyze("O que é que a gente faz com isso? Para que serve, e por quê?"))
    assert not question & unrelated


def test_codes_and_numbers_stay_whole_and_unstemmed() -> None:
    text = ("Treinei com trn_processed.json na RTX 3060: lr=2e-4 e 1e-3, versão v0003, "
            "formato Q4_K_M, perda 1,87, 2048 tokens, R$ 1.650, checkpoint-552.")
    terms = analyze(text)
    for code in ("trn_processed.json", "rtx", "3060", "2e-4", "1e-3", "v0003", "q4_k_m", "1,87",
                 "2048", "1.650", "checkpoint-552", "552"):
        assert code in terms, code
    # parts of a code are findable too; plain numbers are not split
    assert {"trn", "json", stem("processed", "en")} <= set(terms)
    assert "87" not in terms and "650" not in terms and "e-4" not in terms
    assert analyze("rtx3060", "pt")[:1] == ["rtx3060"] and "3060" in analyze("rtx3060", "pt")


def test_a_code_in_a_query_matches_the_note_exactly() -> None:
    note = set(analyze((KB / "diario_treinos_marco.md").read_text(encoding="utf-8")))
    for query in ("trn_processed.json", "Quantos exemplos tinha o trn_processed.json?",
                  "checkpoint-552", "v0003"):
        groups = analyze_query(query)
        assert all(set(g) & note for g in groups if any(ch.isdigit() or ch in "._-"
                                                        for ch in g[0])), query
    hw = set(analyze((KB / "hardware_servidor.md").read_text(encoding="utf-8")))
    assert {"rtx", "3060"} <= hw
    assert [g[0] for g in analyze_query("RTX 3060")] == ["rtx", "3060"]


def test_english_paragraph_in_a_portuguese_note_gets_english_stems() -> None:
    text = (KB / "deploy_telegram.md").read_text(encoding="utf-8")
    assert detect_language(text) == "pt"
    terms = set(analyze(text))
    for word in ("polling", "outgoing", "reboots", "needs", "fixed"):
        assert stem(word, "en") != stem(word, "pt")
        assert stem(word, "en") in terms, word
    # the Portuguese paragraphs keep Portuguese stems
    assert stem("configurados", "pt") in terms and stem("respondia", "pt") in terms
    # an English question finds the English words of that paragraph
    q = {g[0] for g in analyze_query("Why does the bot use long polling instead of a webhook?")}
    assert {stem("polling", "en"), "webhook"} <= terms & q


def test_short_blocks_take_the_language_of_the_text() -> None:
    text = "## Why\n\nThe bot needs outgoing connections only and survives reboots easily."
    assert stem("reboots", "en") in analyze(text)
    assert analyze("## Resultados\n\n" + "x " * 3) == analyze("## Resultados", "pt")


@pytest.mark.parametrize(("query", "lang"), [
    ("taxa de aprendizado", "pt"),
    ("quantos exemplos", "pt"),
    ("perda de validação", "pt"),
    ("metricas de avaliacao", "pt"),
    ("como treinar o modelo", "pt"),
    ("onde fica a senha do backup?", "pt"),
    ("quanto gastei", "pt"),
    ("modelos pequenos", "pt"),
    ("learning rate", "en"),
    ("how to train", "en"),
    ("where is the token", "en"),
    ("validation loss after two epochs", "en"),
    ("why polling", "en"),
    ("what went wrong with the tokenizer", "en"),
])
def test_detects_short_queries(query: str, lang: str) -> None:
    assert detect_language(query) == lang


@pytest.mark.parametrize("query", ["RTX 3060", "trn_processed.json", "Q4_K_M", "v0003", "2e-4",
                                   ""])
def test_codes_alone_are_undetermined(query: str) -> None:
    assert detect_language(query) == "und"


def test_undetermined_language_uses_every_stemmer() -> None:
    word = "polling"
    assert set(analyze(word, "und")) == {stem(word, "pt"), stem(word, "en")}
    groups = analyze_query("polling 3060", "und")
    assert set(groups[0]) >= {stem(word, "pt"), stem(word, "en")} and groups[1] == ("3060",)


def test_detection_without_the_identifier_falls_back_to_stop_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis, "_identifier", lambda: None)
    assert detect_language("qual a taxa de aprendizado") == "pt"
    assert detect_language("what is the learning rate") == "en"
    assert detect_language("gpu temperature") == "und"


def test_names_keep_their_surface_form_for_cross_language_matches() -> None:
    pt = analyze("Vou treinar um LoRA com MinHash na VRAM", "pt")
    assert {"lora", "minhash", "vram"} <= set(pt)
    groups = analyze_query("lora rank", "en")
    assert "lora" in groups[0] and stem("lora", "en") == groups[0][0]
    # a lower-case word in a Portuguese query still offers its surface form
    assert analyze_query("lora", "pt")[0] == (stem("lora", "pt"), "lora")


def test_query_groups_merge_forms_of_one_word() -> None:
    groups = analyze_query("avaliação avaliacao avaliar modelos modelo", "pt")
    assert [g[0] for g in groups] == [stem("avaliar", "pt"), stem("modelo", "pt")]
    assert "avaliacao" in groups[0] and "modelos" in groups[1]


def test_deterministic_and_versioned() -> None:
    text = (KB / "plano_finetuning_lora.md").read_text(encoding="utf-8")
    first = analyze(text)
    analysis._group_cache.clear()
    for cache in analysis._stem_cache.values():
        cache.clear()
    assert analyze(text) == first
    assert ANALYZER_VERSION.isdigit()


def test_imports_only_stdlib_and_the_chosen_libraries() -> None:
    tree = ast.parse(Path(analysis.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= {"__future__", "re", "threading", "unicodedata", "collections", "typing",
                     "pathlib", "snowballstemmer", "py3langid"}, names


def test_evaluation_set_is_well_formed() -> None:
    notes = {p.name for p in KB.glob("*.md")}
    assert 12 <= len(notes) <= 16
    for name in notes:
        words = len((KB / name).read_text(encoding="utf-8").split())
        assert 150 <= words <= 600, (name, words)
    rows = [json.loads(line) for line in
            (DATA / "retrieval_eval_pt.jsonl").read_text(encoding="utf-8").splitlines()]
    kinds = {"paraphrase", "inflection", "accent", "code", "number", "english-in-pt", "mixed"}
    for row in rows:
        assert set(row) == {"question", "lang", "source", "kind"}
        assert row["lang"] in {"pt", "en"} and row["source"] in notes and row["kind"] in kinds
    assert sum(r["lang"] == "pt" for r in rows) >= 34
    assert sum(r["lang"] == "en" for r in rows) >= 12
    assert len({r["question"] for r in rows}) == len(rows)
