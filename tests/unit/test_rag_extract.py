"""Extraction, chunking and keyword scoring without Chroma or the embedding model."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from rag.chunking import Chunker, split_sections
from rag.embedder import embedded_model_dir
from rag.extract import Skip, extract
from rag.ingest import safe_name
from rag.keyword import KeywordIndex
from tests.fakes.documents import blank_pdf, docx_bytes

MB = 1024 * 1024


def reason(name: str, data: bytes, limit: int = MB) -> str:
    with pytest.raises(Skip) as info:
        extract(name, data, limit)
    return info.value.reason


def test_markdown_and_text_are_decoded() -> None:
    assert "Olá" in extract("a.md", "# T\n\nOlá".encode(), MB).text
    latin = "Configuração do relógio: ação imediata.\n".encode("latin-1") * 5
    assert "Configuração" in extract("notes.txt", latin, MB).text
    utf16 = "Hello from a UTF-16 file with a BOM.".encode("utf-16")
    assert "UTF-16 file" in extract("w.txt", utf16, MB).text


def test_refusals_have_reasons() -> None:
    assert reason("empty.md", b"  \n\n") == "empty"
    assert reason("bin.txt", bytes(range(256)) * 40) == "binary file, not text"
    assert reason("big.md", b"x" * 2048, limit=1024).startswith("too large: 2,048 bytes")
    assert reason("prog.exe", b"MZ\x90\x00").startswith("unsupported file type .exe")
    assert reason("scan.pdf", blank_pdf()).startswith("no text layer")
    assert reason("broken.pdf", b"%PDF-1.4 garbage").startswith("unreadable")
    assert reason("bad.json", b"{not json").startswith("unreadable: invalid JSON")
    assert reason("x.json", b'[{"title": "no pairs"}]').startswith("no question-answer pairs")
    assert reason("fake.docx", b"not a zip at all").startswith("unreadable")


def test_zip_bomb_docx_is_refused_before_opening() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"\0" * (30 * MB))
    assert "zip bomb" in reason("bomb.docx", buf.getvalue())


def test_html_drops_scripts_and_navigation() -> None:
    html = (b"<html><head><script>var tracking = 1;</script><style>p{}</style></head><body>"
            b"<nav>Home | Login</nav><h2>Opening hours</h2><p>Open <b>9 to 5</b>.</p>"
            b"<footer>Cookies</footer></body></html>")
    text = extract("page.html", html, MB).text
    assert "## Opening hours" in text and "Open 9 to 5." in text
    for junk in ("tracking", "Login", "Cookies", "p{}"):
        assert junk not in text


def test_docx_headings_become_sections() -> None:
    doc = extract("policy.docx", docx_bytes("Holidays", "The office closes on the first of May."),
                  MB)
    assert "## Holidays" in doc.text and "first of May" in doc.text


def test_qa_json_and_jsonl() -> None:
    pairs = [{"question": "Q1?", "answer": "A1."}, {"prompt": "Q2?", "response": "A2."}]
    assert extract("f.json", json.dumps(pairs).encode(), MB).qa == [("Q1?", "A1."), ("Q2?", "A2.")]
    assert extract("f.json", b'{"items": [{"q": "x?", "a": "y"}]}', MB).qa == [("x?", "y")]
    lines = "\n".join(json.dumps(p) for p in pairs).encode()
    assert len(extract("f.jsonl", lines, MB).qa) == 2
    assert reason("f.jsonl", lines + b"\n{oops").startswith("unreadable: invalid JSON on line 3")


def test_sections_follow_headings_not_code() -> None:
    text = ("# Guide\n\nIntro.\n\n## Retraining\n\nRun it.\n\n```\n# not a heading\n```\n\n"
            "### Schedule\n\nNightly.\n")
    sections = [s for s, _ in split_sections(text)]
    assert sections == ["Guide", "Retraining", "Retraining › Schedule"]


def test_chunks_respect_token_limit_and_keep_section() -> None:
    chunker = Chunker(embedded_model_dir() / "tokenizer.json", chunk_tokens=40, overlap=8)
    body = " ".join(f"Sentence number {i} talks about backups and restores." for i in range(40))
    chunks = chunker.chunk(extract("a.md", f"# Doc\n\n## Backups\n\n{body}".encode(), MB))
    assert len(chunks) > 5
    assert all(c.tokens <= 40 and c.section == "Backups" for c in chunks)
    assert chunker.chunk(extract("q.json", b'[{"question": "Why?", "answer": "Because."}]', MB)
                         )[0].text == "Q: Why?\nA: Because."


def test_keyword_tokens_and_coverage() -> None:
    index = KeywordIndex.of_texts(["error NX-4470 power supply", "error NX-4471 backup lock",
                                   "reiniciar o servidor"])
    best = index.search("what is NX-4471?", 3)
    assert best[0].doc == 1 and best[0].coverage > 0.9
    assert index.search("Como reiniciar o servidor?", 1)[0].doc == 2
    assert index.search("capital of France", 3) == []


def test_safe_names() -> None:
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("rel\x00at\u00f3rio final?.md") == "relatório final_.md"
    assert safe_name("...") == "upload"
    assert len(safe_name("a" * 500 + ".md")) <= 103


