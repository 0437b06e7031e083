"""``/forget`` on disk: a forgotten user's conversations leave the dataset files already written.

The store deletes the user's rows (``Store.forget_user``); datasets are rebuilt from the store for
every run, so only files written before the purge (a run in progress, exports) can still hold the
user's turns. Each file is rewritten atomically (``data.files.write_atomic``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from data.files import write_atomic


def purge_dataset_lines(root: Path, texts: Iterable[str]) -> int:
    """Drop every JSONL line under ``root`` with a non-system turn whose content is one of
    ``texts``; return the number of lines removed."""
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
            write_atomic(path, "".join(k + "\n" for k in keep))
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
