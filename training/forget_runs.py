"""``/forget`` for what a run writes besides the ``messages`` datasets (``training.forget``).

* ``prefs.jsonl`` (KTO / DPO rows): a row goes if any turn of its prompt, completion, chosen or
  rejected answer is one of the forgotten user's texts;
* ``job.json``, ``report.json`` and the adapters' ``meta.json``: the recent questions sampled for
  the report (and their rows of reference / candidate answers) go if the question is one of them;
  :func:`purge_questions` does the same for the run reports in the store.

Files are rewritten atomically (``data.files.write_atomic``); unreadable files are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.files import write_atomic


def needles_of(texts: Iterable[str]) -> set[str]:
    return {t.strip() for t in texts if t and len(t.strip()) >= 2}


def _turns(row: dict[str, Any]) -> list[str]:
    out = []
    for key in ("prompt", "completion", "chosen", "rejected"):
        for m in row.get(key) or []:
            if isinstance(m, dict) and m.get("role") != "system":
                out.append(str(m.get("content", "")).strip())
    return out


def purge_run_files(root: Path, texts: Iterable[str]) -> int:
    """Remove the forgotten texts from preference files and run reports under ``root``; returns
    how many rows / questions were removed."""
    needles = needles_of(texts)
    if not needles or not root.exists():
        return 0
    removed = 0
    for path in sorted(root.rglob("prefs.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        keep = [x for x in lines if x.strip() and not set(_turns(json.loads(x))) & needles]
        if len(keep) != len(lines):
            removed += len(lines) - len(keep)
            write_atomic(path, "".join(k + "\n" for k in keep))
    for name in ("job.json", "report.json", "meta.json"):
        for path in sorted(root.rglob(name)):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
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
