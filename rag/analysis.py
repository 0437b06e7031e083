"""Language-aware text analysis for keyword search: folding, tokens, stop words, stems, language.

``analyze(text)`` turns a chunk (at ingest) or a query (at search) into index terms;
``analyze_query(text)`` gives the same terms grouped per query word, with alternatives, for
scoring and coverage. Snowball stemmers come from ``snowballstemmer`` (which runs PyStemmer's C
implementation when it is installed: same algorithms, about 100x faster); languages are identified
by ``py3langid`` restricted to the supported languages, with a stop-word vote for short texts.
Nothing is downloaded at run time; the langid model ships inside its wheel and is loaded lazily on
the first detection that needs it (0.6-1 s, once per process).

Invariants (tests/unit/test_rag_analysis.py checks each):

1. Terms are folded: lower-case, no combining marks (``fold(t) == t`` for every term). With a
   fixed ``lang``, ``analyze`` gives the same terms with or without accents in the input
   (``avaliação`` and ``avaliacao`` are one term): words are folded *before* stemming, and
   Portuguese words get the accents Snowball's suffix rules need put back on their endings
   (``-cao`` -> ``-ção``, plural ``-oes`` -> ``-ão``, ``-avel`` -> ``-ável``, ...).
2. Codes and numbers are never stemmed and never dropped. A token holding a digit or an inner
   ``- _ . / :`` (``trn_processed.json``, ``v0003``, ``1e-3``, ``2e-4``, ``q4_k_m``, ``3060``,
   ``1,87``) is one whole term, folded but otherwise verbatim, so a query naming it matches exactly.
   A code with parts also yields them: the pieces of a path (``runs/v0003/checkpoint-552`` ->
   ``checkpoint-552``), parts with a digit verbatim (``checkpoint-552`` -> ``552``),
   letter runs of 2+ characters analysed as ordinary words (``trn_processed.json`` ->
   ``trn``, stem of ``processed``, ``json``; ``rtx3060`` -> ``rtx``, ``3060``), so a query for
   ``processed`` or ``3060`` finds them too, while the whole code is the rare, decisive term.
   A plain number (``2048``, ``1.650``, ``0,05``, ``1e-3``) is one term and is not split.
3. Stop words never become terms, whatever the detected language: the stop sets of all supported
   languages are applied together (a Portuguese ``de``/``que`` inside an English paragraph is still
   noise). A stop word inside a code (``sao`` in ``America/Sao_Paulo``) only loses its part.
   One-letter words are dropped too.
4. Stemming follows the language of the text around the word: ``analyze`` detects the language
   per block (paragraph), so an English paragraph inside a Portuguese note gets English stems; a
   block too short to tell (under ``MIN_BLOCK_WORDS`` words: headings, one-line items) takes the
   language of most of the detected words around it, or of the whole text.
   When the language is ``und`` (unsure), a word yields the stems of every supported language
   (deduplicated). An explicit ``lang`` overrides detection for the whole text.
5. Names written with inner or repeated capitals (``LoRA``, ``VRAM``, ``MinHash``, ``RunPod``)
   yield their folded surface form as well as their stems, so they match across languages.
6. Deterministic: the same text, ``lang`` and ``ANALYZER_VERSION`` always give the same terms in
   the same order (document order; duplicates kept, as BM25 counts them). Bump
   ``ANALYZER_VERSION`` whenever a change here changes terms: a keyword index built by another
   version must be rebuilt, not mixed.
7. Only the standard library and the two libraries above are imported; no other NightOwl module.
   Without py3langid, detection falls back to the stop-word vote alone (more ``und``).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ANALYZER_VERSION",
    "LANGUAGES",
    "MIN_BLOCK_WORDS",
    "STOPWORDS",
    "analyze",
    "analyze_query",
    "detect_language",
    "fold",
    "stem",
]

ANALYZER_VERSION = "1"
#: Supported languages: ISO 639-1 code -> Snowball algorithm name. Adding one needs a stop list.
LANGUAGES: dict[str, str] = {"pt": "portuguese", "en": "english"}
#: Blocks with fewer words than this are not detected on their own (too short to tell).
MIN_BLOCK_WORDS = 6
#: py3langid's probability (restricted to LANGUAGES) below which a text is ``und``.
MIN_CONFIDENCE = 0.80
_CLEAR_MAJORITY = 4
_DETECT_CHARS = 1000

# Stop words: rag/stopwords/<lang>.txt (package data), listed with accents, matched after folding.
_STOP_DIR = Path(__file__).with_name("stopwords")


def _stop_words(lang: str) -> str:
    lines = (_STOP_DIR / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
    return " ".join(line for line in lines if not line.lstrip().startswith("#"))


_STOP_PT = _stop_words("pt")
_STOP_EN = _stop_words("en")


_COMBINING: dict[int, None] | None = None


def fold(text: str) -> str:
    """Lower-case and strip accents (NFKD, combining marks dropped); digits and symbols stay.

    ``fold("Configuração 3060")`` -> ``"configuracao 3060"``.
    """
    if text.isascii():
        return text.lower()
    global _COMBINING
    if _COMBINING is None:  # every code point with a combining class lies below U+20000
        _COMBINING = {cp: None for cp in range(0x300, 0x20000) if unicodedata.combining(chr(cp))}
    return unicodedata.normalize("NFKD", text.lower()).translate(_COMBINING)


_STOP_BY_LANG: dict[str, frozenset[str]] = {
    "pt": frozenset(fold(w) for w in _STOP_PT.split()),
    "en": frozenset(fold(w).replace("'", "") for w in _STOP_EN.split()),
}
#: All stop words (folded), applied whatever the language (invariant 3).
STOPWORDS: frozenset[str] = frozenset().union(*_STOP_BY_LANG.values())
# Words that say which language a short text is in: stop words of one language only.
_VOTE: dict[str, frozenset[str]] = {
    lang: words - frozenset().union(*(w for o, w in _STOP_BY_LANG.items() if o != lang))
    for lang, words in _STOP_BY_LANG.items()
}
_VOTER: dict[str, str] = {w: lang for lang, words in _VOTE.items() for w in words}

# ---------------------------------------------------------------------------------------------
# Tokens. A token is a run of word characters, joined across inner - _ . / : and a comma between
# digits (1,87); apostrophes split (user's -> user, s).

_TOKEN = re.compile(r"\w+(?:(?:[-./:]|(?<=\d),(?=\d))\w+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
_SEPARATORS = re.compile(r"[-_./:,]+")
_PATH = re.compile(r"[/:]+")
_RUNS = re.compile(r"[^\W\d_]+|\d+")
_BLOCKS = re.compile(r"\n[ \t]*\n+|\n(?=[ \t]*#)")
_WORDISH = re.compile(r"[^\W\d_]{2,}")
_LETTERS = re.compile(r"[^\W\d_]+")

# Portuguese endings whose accents Snowball's rules rely on, restored on folded words (longest
# first). Plural -ões/-ãos becomes -ão and -áveis/-íveis -ável/-ível, as Snowball stems
# questão/questões apart; the noun ending -amento becomes the verb's -ar (treinamento ->
# treinar), a light derivational step Snowball leaves out.
_PT_ENDINGS: tuple[tuple[str, str], ...] = (
    ("iriamos", "iríamos"), ("eriamos", "eríamos"), ("ariamos", "aríamos"),
    ("assemos", "ássemos"), ("essemos", "êssemos"), ("issemos", "íssemos"),
    ("arieis", "aríeis"), ("erieis", "eríeis"), ("irieis", "iríeis"),
    ("asseis", "ásseis"), ("esseis", "ésseis"), ("isseis", "ísseis"),
    ("avamos", "ávamos"), ("aramos", "áramos"), ("eramos", "éramos"), ("iramos", "íramos"),
    ("ancias", "âncias"), ("encias", "ências"), ("aveis", "ável"), ("iveis", "ível"),
    ("iamos", "íamos"), ("ancia", "ância"), ("encia", "ência"), ("ieis", "íeis"),
    ("coes", "ção"), ("avel", "ável"), ("ivel", "ível"), ("cao", "ção"),
    ("oes", "ão"), ("aos", "ão"), ("ao", "ão"),
)


def _pt_reaccent(word: str) -> str:
    for end in ("amentos", "amento"):  # treinamento -> treinar; momento, lamento untouched
        if word.endswith(end) and len(word) - len(end) >= 3:
            return word[: -len(end)] + "ar"
    if len(word) > 4:
        for end, accented in _PT_ENDINGS:
            if word.endswith(end):
                return word[: -len(end)] + accented
    return word


_init_lock = threading.Lock()
_stem_lock = threading.Lock()  # Snowball stemmer objects are not thread-safe
_stemmers: dict[str, Any] = {}
_stem_cache: dict[str, dict[str, str]] = {lang: {} for lang in LANGUAGES}
_CACHE_MAX = 200_000


def _stem_raw(word: str, lang: str) -> str:
    obj = _stemmers.get(lang)
    if obj is None:
        import snowballstemmer

        with _init_lock:
            obj = _stemmers.setdefault(lang, snowballstemmer.stemmer(LANGUAGES[lang]))
    with _stem_lock:
        return str(obj.stemWord(word))


def stem(word: str, lang: str) -> str:
    """Snowball stem of one word in ``lang`` (``pt``/``en``), folded, cached.

    The word is folded first (invariant 1); Portuguese endings get their accents back for the
    stemmer, and a Portuguese stem loses the spelling ``u`` of ``gu``/``qu`` (``paguei``,
    ``fiquei`` stem as ``pagar``, ``ficar``). ``stem("treinamentos", "pt") == stem("treinar",
    "pt")``.
    """
    w = fold(word)
    cache = _stem_cache.setdefault(lang, {})
    hit = cache.get(w)
    if hit is not None:
        return hit
    if lang == "pt":
        out = fold(_stem_raw(_pt_reaccent(w), lang)) or w
        if len(out) >= 4 and out.endswith(("gu", "qu")):  # paguei -> pag(ar), fiquei -> fic(ar)
            out = out[:-2] + ("g" if out[-2] == "g" else "c")
    else:
        out = fold(_stem_raw(w, lang)) or w
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[w] = out
    return out


# ---------------------------------------------------------------------------------------------
# Language identification.

_ident: Any = None
_ident_failed = False


def _identifier() -> Any:
    global _ident, _ident_failed
    if _ident is None and not _ident_failed:
        with _init_lock:
            if _ident is None and not _ident_failed:
                try:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                    ident.set_languages(list(LANGUAGES))
                    _ident = ident
                except Exception:  # missing or incompatible py3langid: stop-word vote only
                    _ident_failed = True
    return _ident


def _vote(words: Iterable[str]) -> dict[str, int]:
    votes = dict.fromkeys(LANGUAGES, 0)
    for w in words:
        lang = _VOTER.get(w)
        if lang is not None:
            votes[lang] += 1
    return votes


def detect_language(text: str) -> str:
    """``"pt"``, ``"en"`` (a key of ``LANGUAGES``) or ``"und"`` when unsure.

    Stop words that belong to one language only are strong evidence: when they all point one
    way, or one language has ``_CLEAR_MAJORITY`` times as many (long text), it wins without
    running the identifier. Otherwise py3langid (restricted to the supported languages, on the
    first ``_DETECT_CHARS`` characters) decides if its probability reaches ``MIN_CONFIDENCE``;
    failing that, a majority of the vote; failing that, ``und``. Text without a word of two
    letters (``3060``, ``v0003``) is ``und``.
    """
    if not _WORDISH.search(text):
        return "und"
    votes = _vote(_LETTERS.findall(fold(text)))
    ranked = [*sorted(votes.items(), key=lambda kv: -kv[1]), ("und", 0)]
    (top, n_top), (_, n_second) = ranked[0], ranked[1]
    if n_top > 0 and (n_second == 0 or n_top >= _CLEAR_MAJORITY * max(n_second, 1)):
        return top
    ident = _identifier()
    if ident is not None:
        lang, prob = ident.classify(text[:_DETECT_CHARS])
        if prob >= MIN_CONFIDENCE and lang in LANGUAGES:
            return str(lang)
    return top if n_top > n_second else "und"


# ---------------------------------------------------------------------------------------------
# Analysis.


def _is_name(raw: str) -> bool:
    """LoRA, VRAM, MinHash, iFood: a capital after the first letter."""
    return any(ch.isupper() for ch in raw[1:])


def _word_terms(word: str, langs: tuple[str, ...]) -> list[str]:
    """Stems of a folded word (no stop words, no one-letter words)."""
    if len(word) < 2 or word in STOPWORDS:
        return []
    return list(dict.fromkeys(stem(word, lang) for lang in langs))


def _token_groups(raw: str, langs: tuple[str, ...]) -> list[list[str]]:
    """One group of alternative terms per searchable unit of one raw token."""
    folded = fold(raw)
    if _NUMBER.fullmatch(folded):
        return [[folded]]
    if any(ch.isdigit() for ch in folded) or _SEPARATORS.search(folded):
        return _code_groups(folded)
    terms = _word_terms(folded, langs)
    if not terms:
        return []
    if _is_name(raw) and folded not in terms:
        terms.insert(0, folded)
    return [terms]


def _code_groups(code: str) -> list[list[str]]:
    """A code whole, then its parts: with a digit verbatim, letters as words in every language
    (identifiers are language-neutral, so ``processed`` gives ``processed`` and ``process``)."""
    groups = [[code]]
    every = tuple(LANGUAGES)
    pieces = [p for p in _PATH.split(code) if p]
    if len(pieces) > 1:  # runs/v0003/checkpoint-552: each path piece is a code of its own
        groups += [[p] for p in pieces if _SEPARATORS.search(p)]
    parts = [p for p in _SEPARATORS.split(code) if p]
    if len(parts) == 1 and not any(ch.isdigit() for ch in parts[0]):
        return groups
    for part in parts:
        if not any(ch.isdigit() for ch in part):
            if g := _word_terms(part, every):
                groups.append(g)
            continue
        if part != code and len(part) > 1:
            groups.append([part])
        runs = _RUNS.findall(part)
        if len(runs) > 1:
            for run in runs:
                if run.isdigit():
                    if len(run) > 1:
                        groups.append([run])
                elif g := _word_terms(run, every):
                    groups.append(g)
    return groups


def _langs(lang: str) -> tuple[str, ...]:
    return (lang,) if lang in LANGUAGES else tuple(LANGUAGES)


_group_cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...], ...]] = {}


def _groups(raw: str, langs: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    key = (raw, langs)
    hit = _group_cache.get(key)
    if hit is None:
        hit = tuple(tuple(g) for g in _token_groups(raw, langs))
        if len(_group_cache) >= _CACHE_MAX:
            _group_cache.clear()
        _group_cache[key] = hit
    return hit


def _terms(text: str, langs: tuple[str, ...], out: list[str]) -> None:
    for raw in _TOKEN.findall(text):
        for group in _groups(raw, langs):
            out += group


def _blocks(text: str) -> list[str]:
    return [b for b in _BLOCKS.split(text) if b.strip()]


def analyze(text: str, lang: str | None = None) -> list[str]:
    """Index terms of ``text``: folded, stemmed, stop words removed, codes whole (see module doc).

    ``lang`` forces one language (``"pt"``, ``"en"``; ``"und"`` means all) for the whole text.
    ``None`` detects it per block (paragraph) of ``MIN_BLOCK_WORDS`` words or more; shorter
    blocks (headings, one-line items) take the language of most detected words, or of the
    whole text when no block was long enough.
    """
    out: list[str] = []
    if lang is not None:
        _terms(text, _langs(lang), out)
        return out
    blocks = _blocks(text)
    if len(blocks) <= 1:
        _terms(text, _langs(detect_language(text)), out)
        return out
    found: list[str | None] = []
    weight: dict[str, int] = {}
    for block in blocks:
        n = len(_WORDISH.findall(block))
        if n >= MIN_BLOCK_WORDS:
            block_lang = detect_language(block)
            found.append(block_lang)
            weight[block_lang] = weight.get(block_lang, 0) + n
        else:
            found.append(None)
    default = max(weight, key=lambda k: weight[k]) if weight else detect_language(text)
    for block, found_lang in zip(blocks, found, strict=True):
        _terms(block, _langs(found_lang or default), out)
    return out


def analyze_query(text: str, lang: str | None = None) -> list[tuple[str, ...]]:
    """A query's terms grouped: one tuple of alternatives per searchable unit, deduplicated.

    A document matches a unit when it holds any of the alternatives; coverage and scoring
    should count a unit once. Alternatives of a word: its stem in the query's language (all
    languages' stems when ``und``) and its folded surface form, which matches names and codes
    indexed verbatim (a ``lora`` typed in lower case still finds ``LoRA``). Detection runs on
    the whole query (no blocks); ``lang`` overrides it. Units with the same first term (the
    same stem) are merged, so a word repeated or inflected twice counts once.
    """
    langs = _langs(lang if lang is not None else detect_language(text))
    merged: dict[str, list[str]] = {}
    for raw in _TOKEN.findall(text):
        folded = fold(raw)
        word = not _SEPARATORS.search(folded) and not any(ch.isdigit() for ch in folded)
        for group in _groups(raw, langs):
            alts = merged.setdefault(group[0], [])
            for term in ([*group, folded] if word else group):
                if term not in alts:
                    alts.append(term)
    return [tuple(alts) for alts in merged.values()]
