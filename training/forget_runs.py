"""``/forget`` for what a run writes besides its JSONL files (those are ``training.forget``'s).

``job.json``, ``report.json`` and the adapters' ``meta.json`` keep the recent questions sampled
for the report (and their rows of reference / candidate answers); a question goes if it is one of
the forgotten user's questions, raw or scrubbed (these samples carry no ids: they are report
text, not training data). :func:`purge_questions` does the same for the run reports in the store.

Files are rewritten atomically (``data.files.write_atomic``); a file that is not JSON is left
alone, one that cannot be read or written raises (the caller reports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.files import write_atomic

REPORT_FILES = ("job.json", "report.json", "meta.json")


def purge_run_files(root: Path, needles: set[str]) -> int:
    """Remove the forgotten questions (``training.forget.needles_of``) from the run reports
    under ``root``; returns how many went."""
    if not needles or not root.exists():
        return 0
    removed = 0
    for name in REPORT_FILES:
        for path in sorted(root.rglob(name)):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            n = purge_questions(data, needles)
            if n:
                removed += n
                write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1, default=str))
    return removed


def purge_questions(data: Any, needles: set[str]) -> int:
    """Remove the sampled recent questions in ``needles`` from a job, report or adapter meta
    (in place); returns how many went."""
    if not isinstance(data, dict):
        return 0
    n = 0
    qs = data.get("report_questions")
    if isinstance(qs, list):
        kept = [q for q in qs if str(q).strip() not in needles]
        n += len(qs) - len(kept)
        data["report_questions"] = kept
    recent = (data.get("scores") or {}).get("recent") if isinstance(data.get("scores"), dict) \
        else None
    if isinstance(recent, dict) and isinstance(recent.get("rows"), list):
        rows = recent["rows"]
        kept_rows = [r for r in rows if str(r.get("question", "")).strip() not in needles]
        n += len(rows) - len(kept_rows)
        recent["rows"] = kept_rows
    return n
