"""Which files the bot can use from Discord: a size limit and the types the knowledge base reads."""

from __future__ import annotations

from pathlib import Path

# Types the knowledge base can read (rag extracts text from these); kept equal to
# rag.extract.SUPPORTED by a test, since a platform folder does not import rag/.
SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf", ".docx",
                      ".json", ".jsonl")


def attachment_problem(name: str, size: int, limit_mb: float) -> str | None:
    """Why an attachment cannot be used, or None if it can."""
    limit = int(limit_mb * 1024 * 1024)
    if size > limit:
        return f"too large ({size / 1048576:.1f} MB; the limit is {limit_mb:g} MB)"
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return (f"unsupported type {suffix or '(no extension)'}; I can read "
                f"{', '.join(SUPPORTED_SUFFIXES)}")
    return None
