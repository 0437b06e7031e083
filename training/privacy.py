"""Removing a forgotten user's conversations from dataset files on disk (``/forget``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def purge_dataset_lines(root: Path, texts: Iterable[str]) -> int:
    """Drop every JSONL line under ``root`` whose messages contain one of ``texts``.

    Datasets are rebuilt from the store for every run (forgotten users are gone from it), but
    dataset files already written — a run in progress, exports — must not keep them either.
    Files are rewritten atomically. Returns the number of lines removed.
    """
    needles = {t.strip() for t in texts if t and len(t.strip()) >= 2}
    if not needles or not root.exists():
        return 0
    removed = 0
    for path in sorted(root.rglob("*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        keep: list[str] = []
        for line in lines:
            if _mentions(line, needles):
                removed += 1
            else:
                keep.append(line)
        if len(keep) != len(lines):
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(k + "\n" for k in keep))
            os.replace(tmp, path)
    return removed


def _mentions(line: str, needles: set[str]) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    messages = record.get("messages", []) if isinstance(record, dict) else []
    for m in messages:
        content = str(m.get("content", "")) if isinstance(m, dict) else ""
        if m.get("role") != "system" and content.strip() in needles:
            return True
    return False
