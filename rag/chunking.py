"""Token-aware chunking that respects headings.

Markdown is first cut at its headings (the heading path becomes :attr:`Chunk.section`); each section
that is longer than ``chunk_tokens`` is split by ``semantic-text-splitter`` (Markdown-aware,
counting tokens with the embedder's Hugging Face tokenizer, with overlap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.extract import Extracted

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
SECTION_SEP = " › "


@dataclass(frozen=True)
class Chunk:
    text: str
    section: str
    tokens: int


def embed_text(text: str, section: str) -> str:
    """What is embedded (and keyword-indexed) for a chunk: its section path, then its text."""
    return f"{section}\n{text}" if section else text


def split_sections(text: str) -> list[tuple[str, str]]:
    """``[(section path, body including its heading line)]``; fenced code is never a heading.

    The path leaves out a single top-level title (``# Guide``) and keeps the last two levels.
    """
    lines = text.split("\n")
    headings: list[tuple[int, int, str]] = []  # (line index, level, title)
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            headings.append((i, len(m.group(1)), m.group(2).strip()))
    h1_count = sum(1 for _, level, _ in headings if level == 1)
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    starts = [h[0] for h in headings] + [len(lines)]
    if starts[0] > 0:
        out.append(("", "\n".join(lines[: starts[0]])))
    for n, (idx, level, title) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        path = [t for lv, t in stack if not (lv == 1 and h1_count == 1 and len(stack) > 1)]
        body = "\n".join(lines[idx: starts[n + 1]])
        out.append((SECTION_SEP.join(path[-2:]), body))
    return out


def _has_content(body: str) -> bool:
    return any(line.strip() and not _HEADING.match(line) for line in body.split("\n"))


class Chunker:
    """Splits extracted documents into chunks of at most ``chunk_tokens`` tokens."""

    def __init__(self, tokenizer_file: Path, chunk_tokens: int = 200, overlap: int = 30) -> None:
        from semantic_text_splitter import MarkdownSplitter, TextSplitter
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.chunk_tokens = chunk_tokens
        overlap = min(overlap, chunk_tokens - 1)
        self._md: Any = MarkdownSplitter.from_huggingface_tokenizer(
            self.tokenizer, chunk_tokens, overlap)
        self._txt: Any = TextSplitter.from_huggingface_tokenizer(
            self.tokenizer, chunk_tokens, overlap)

    def count(self, texts: list[str]) -> list[int]:
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def truncate(self, text: str, tokens: int) -> str:
        """``text`` cut to at most ``tokens`` tokens (marked with "…"); "" if nothing fits."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= tokens:
            return text
        end = enc.offsets[tokens - 1][1] if tokens > 0 else 0
        return text[:end].rstrip() + " …" if end else ""

    def _split(self, body: str, markdown: bool) -> list[str]:
        if self.count([body])[0] <= self.chunk_tokens:
            return [body.strip()]
        splitter = self._md if markdown else self._txt
        return [c.strip() for c in splitter.chunks(body) if c.strip()]

    def chunk(self, doc: Extracted) -> list[Chunk]:
        pieces: list[tuple[str, str]] = []
        if doc.kind == "qa":
            for q, a in doc.qa:
                label = q if len(q) <= 60 else q[:57].rstrip() + "..."
                pieces += [(label, t) for t in self._split(f"Q: {q}\nA: {a}", False)]
        elif doc.kind == "markdown":
            for section, body in split_sections(doc.text):
                if _has_content(body):
                    pieces += [(section, t) for t in self._split(body, True)]
        else:
            pieces = [("", t) for t in self._split(doc.text, False)]
        pieces = [(s, t) for s, t in pieces if t]
        counts = self.count([t for _, t in pieces]) if pieces else []
        return [Chunk(text=t, section=s, tokens=n)
                for (s, t), n in zip(pieces, counts, strict=True)]
