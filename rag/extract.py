"""Text extraction with honest refusals: one :class:`Extracted` or one :class:`Skip` per file.

Formats: Markdown, plain text (encoding detected with charset-normalizer), HTML (beautifulsoup4;
scripts, styles and navigation dropped), PDF (pypdf text layer), DOCX (python-docx) and JSON/JSONL
question-answer pairs. Limits (:class:`Limits`): the file size (``[rag] max_file_mb``), a DOCX's
unpacked size (counted while inflating, before python-docx opens it), a PDF's pages and extraction
time, and the extracted text (10 x the file limit, checked as it grows for PDFs). HTML text a
reader never sees (``hidden``, ``aria-hidden``, ``display:none``, ``visibility:hidden``, zero size
or opacity) is dropped: it would be a prompt-injection channel.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED = (".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf", ".docx", ".json",
             ".jsonl")
_WESTERN = ("cp1252", "latin_1", "iso8859_15")
ZIP_MAX_RATIO = 100  # compressed -> unpacked expansion beyond this is treated as a zip bomb
_QA_KEYS = (("question", "answer"), ("q", "a"), ("prompt", "response"), ("prompt", "completion"),
            ("instruction", "output"), ("input", "output"))
_HTML_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg",
              "iframe", "template", "button")
_HTML_BLOCKS = ("p", "div", "li", "tr", "br", "pre", "section", "article", "table", "ul", "ol",
                "blockquote", "dd", "dt", "main", "figure")


@dataclass(frozen=True)
class Limits:
    """What one file may cost to extract (``[rag] max_file_mb``, ``max_pdf_pages``,
    ``extract_timeout_s``); the text it yields is capped at 10 x the file limit."""

    max_bytes: int
    max_pages: int = 2000
    timeout_s: float = 120.0

    @property
    def max_chars(self) -> int:
        return 10 * self.max_bytes


class Skip(Exception):
    """The file is not ingested; ``reason`` is the user-facing explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Extracted:
    """Extracted text: ``markdown`` keeps headings as ``#`` lines; ``qa`` is a list of pairs."""

    kind: str  # "markdown" | "text" | "qa"
    text: str = ""
    qa: list[tuple[str, str]] = field(default_factory=list)


def size_limit_reason(size: int, max_bytes: int) -> str | None:
    if size > max_bytes:
        return (f"too large: {size:,} bytes, the limit is {max_bytes:,} "
                "([rag] max_file_mb)")
    return None


def read_file(path: Path, max_bytes: int) -> bytes:
    """Read a file, refusing it (without reading it) when it is over the size limit."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Skip(f"unreadable: {exc.strerror or exc}") from exc
    reason = size_limit_reason(size, max_bytes)
    if reason:
        raise Skip(reason)
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise Skip(f"unreadable: {exc.strerror or exc}") from exc
    reason = size_limit_reason(len(data), max_bytes)
    if reason:  # grew while reading, or a special file
        raise Skip(reason)
    return data


def decode_text(data: bytes) -> str:
    """Decode text: UTF-8 (with or without BOM), else the encoding charset-normalizer finds."""
    head = data[:8192]
    if b"\x00" in head and not (head.startswith((b"\xff\xfe", b"\xfe\xff"))):
        raise Skip("binary file, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        matches = from_bytes(data)
        best = matches.best()
        if best is None:
            raise Skip("unreadable: not text in any known encoding (binary file?)") from None
        # Short texts fit several code pages equally well: prefer the Western ones.
        western = [m for m in matches if m.encoding in _WESTERN and m.chaos <= best.chaos + 0.2
                   and m.coherence >= best.coherence - 0.05]
        text = str(western[0] if western else best)
    controls = sum(1 for ch in text[:20000] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > max(8, len(text[:20000]) // 50):
        raise Skip("binary file, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_zip(data: bytes, max_bytes: int) -> None:
    """Refuse a DOCX whose parts unpack beyond the budget, counting the bytes actually inflated.

    The XML parts (what lxml parses, at several times their size in memory) may unpack to
    ``max_bytes`` in all; every part together to 10 x ``max_bytes`` and at most
    ``ZIP_MAX_RATIO`` times the file. Sizes in the ZIP headers are not trusted: each part is read
    through in chunks and the count stops at the budget (zipfile also checks CRCs).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Skip("unreadable: not a valid .docx (ZIP) file") from exc
    total_cap = min(10 * max_bytes, ZIP_MAX_RATIO * max(len(data), 1))
    total = xml = 0
    with zf:
        for info in zf.infolist():
            is_xml = info.filename.endswith((".xml", ".rels"))
            try:
                with zf.open(info) as part:
                    while chunk := part.read(1 << 20):
                        total += len(chunk)
                        xml += len(chunk) if is_xml else 0
                        if xml > max_bytes:
                            raise Skip(f"refused: its XML unpacks to over {max_bytes:,} bytes "
                                       f"from {len(data):,} (zip bomb?); the limit is "
                                       "[rag] max_file_mb")
                        if total > total_cap:
                            raise Skip(f"refused: unpacks to over {total_cap:,} bytes from "
                                       f"{len(data):,} (zip bomb?); the limit is 10 x "
                                       "[rag] max_file_mb")
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
                    EOFError) as exc:
                raise Skip(f"unreadable: damaged .docx ({type(exc).__name__})") from exc


_HIDDEN_STYLE = re.compile(r"(?i)(?:display\s*:\s*none|visibility\s*:\s*hidden|"
                           r"font-size\s*:\s*0(?![.\d]*[1-9])|opacity\s*:\s*0(?![.\d]*[1-9]))")


def _hidden(tag: Any) -> bool:
    attrs = getattr(tag, "attrs", None) or {}
    if "hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true":
        return True
    if str(attrs.get("type", "")).lower() == "hidden":
        return True
    return bool(_HIDDEN_STYLE.search(str(attrs.get("style", ""))))


def _html(data: bytes) -> str:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(decode_text(data), "html.parser")
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(True, attrs={"role": ["navigation", "banner", "contentinfo"]}):
        tag.decompose()
    for tag in soup.find_all(_hidden):  # text a reader never sees must not reach the prompt
        if not tag.decomposed:
            tag.decompose()
    for level in range(1, 7):
        for tag in soup.find_all(f"h{level}"):
            title = " ".join(tag.get_text(" ").split())
            tag.replace_with(NavigableString(f"\n\n{'#' * level} {title}\n\n" if title else ""))
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_after(NavigableString("\n\n"))
    root = soup.body or soup
    lines = [" ".join(line.split()) for line in root.get_text().split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _pdf(data: bytes, limits: Limits) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    started = time.monotonic()
    pages: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Skip("unreadable: the PDF is password-protected")
        count = len(reader.pages)
        if count > limits.max_pages:
            raise Skip(f"refused: {count:,} pages, the limit is {limits.max_pages:,} "
                       "([rag] max_pdf_pages)")
        size = 0
        for page in reader.pages:
            text = (page.extract_text() or "").strip()
            pages.append(text)
            size += len(text)
            if size > limits.max_chars:
                raise Skip(f"refused: extracts to over {limits.max_chars:,} characters "
                           "(a compression bomb?); the limit is 10 x [rag] max_file_mb")
            if time.monotonic() - started > limits.timeout_s:
                raise Skip(f"refused: text extraction took over {limits.timeout_s:g} s "
                           f"(stopped at page {len(pages)} of {count}; [rag] extract_timeout_s)")
    except Skip:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise Skip(f"unreadable: not a valid PDF ({type(exc).__name__})") from exc
    if not any(pages):
        raise Skip("no text layer (a scanned PDF? run OCR first, e.g. `ocrmypdf in.pdf out.pdf`)")
    multi = len(pages) > 1
    return "\n\n".join(f"## p. {i}\n\n{t}" if multi else t
                       for i, t in enumerate(pages, 1) if t)


def _docx(data: bytes, max_bytes: int) -> str:
    _check_zip(data, max_bytes)
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise Skip(f"unreadable: not a valid .docx file ({type(exc).__name__})") from exc
    out: list[str] = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        m = re.match(r"Heading (\d)", style)
        if style == "Title":
            out.append(f"# {text}")
        elif m:
            out.append(f"{'#' * min(int(m.group(1)) + 1, 6)} {text}")
        else:
            out.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells]
            if any(cells):
                out.append(" | ".join(cells))
    return "\n\n".join(out)


def _pair(obj: Any) -> tuple[str, str] | None:
    if not isinstance(obj, dict):
        return None
    low = {str(k).lower(): v for k, v in obj.items()}
    for qk, ak in _QA_KEYS:
        q, a = low.get(qk), low.get(ak)
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            return q.strip(), a.strip()
    return None


def _qa(data: bytes, jsonl: bool) -> list[tuple[str, str]]:
    text = decode_text(data)
    items: list[Any] = []
    if jsonl:
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise Skip(f"unreadable: invalid JSON on line {n} ({exc.msg})") from exc
    else:
        try:
            obj = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise Skip(f"unreadable: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
        if isinstance(obj, dict):
            inner = next((v for v in obj.values() if isinstance(v, list)), None)
            if inner is not None:
                items = inner
            elif _pair(obj):
                items = [obj]
            else:  # {"question": "answer", ...}
                items = [{"question": k, "answer": v} for k, v in obj.items()]
        elif isinstance(obj, list):
            items = obj
    if not items:
        raise Skip("empty")
    pairs = [p for p in map(_pair, items) if p]
    if not pairs:
        raise Skip("no question-answer pairs (expected objects with \"question\" and \"answer\")")
    return pairs


def extract(name: str, data: bytes, max_bytes: int, limits: Limits | None = None) -> Extracted:
    """Extract the text of one file from its bytes; raises :class:`Skip` with a reason."""
    limits = limits or Limits(max_bytes)
    reason = size_limit_reason(len(data), max_bytes)
    if reason:
        raise Skip(reason)
    if not data.strip():
        raise Skip("empty")
    ext = Path(name).suffix.lower()
    if ext in (".md", ".markdown"):
        result = Extracted("markdown", decode_text(data))
    elif ext in (".txt", ".text"):
        result = Extracted("text", decode_text(data))
    elif ext in (".html", ".htm"):
        result = Extracted("markdown", _html(data))
    elif ext == ".pdf":
        result = Extracted("markdown", _pdf(data, limits))
    elif ext == ".docx":
        result = Extracted("markdown", _docx(data, max_bytes))
    elif ext in (".json", ".jsonl"):
        return Extracted("qa", qa=_qa(data, ext == ".jsonl"))
    else:
        raise Skip(f"unsupported file type {ext or '(no extension)'}; supported: "
                   + " ".join(SUPPORTED))
    if not result.text.strip():
        raise Skip("empty")
    if len(result.text) > 10 * max_bytes:
        raise Skip(f"refused: {len(data):,} bytes extract to {len(result.text):,} characters "
                   "(a compression bomb?); the limit is 10 x [rag] max_file_mb")
    return result
