"""``/forget`` and retention on disk: a user's (or expired) examples leave the files written.

The store deletes the rows (``Store.forget_user``, ``Store.expire_batch``); datasets are rebuilt
from the store for every run, so only files written before (runs, exports) still hold them.

* A record with ``meta`` (``training.records``) goes when one of its ids is forgotten:
  the user, a message rendered into it, the correction it trains on, or a knowledge source in its
  context. Its text is never compared, so scrubbed lines go too and another user's identical
  "thanks" stays.
* A record without ``meta`` (files written before records had ids) falls back to text: it goes if
  a non-system turn is exactly one of the user's texts, raw or scrubbed.

Each file is rewritten atomically (``data.files.write_atomic``). A file that cannot be read or
written does not stop the others, then :class:`PurgeError` says which: the caller reports it, it
never looks deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from data.files import write_atomic
from data.users import Forgotten
from training.scrub import scrub

Record = dict[str, Any]


class PurgeError(OSError):
    """Some dataset files could not be purged (named in the message)."""


def needles_of(texts: Iterable[str]) -> set[str]:
    """The texts to match in files without ids: each text and its scrubbed form."""
    out: set[str] = set()
    for t in texts:
        t = (t or "").strip()
        if len(t) >= 2:
            out.update({t, scrub(t).text.strip()})
    return out


def by_ids(record: Record, who: Forgotten) -> bool | None:
    """Whether a record with ``meta`` holds ``who``'s data; None when it has no ``meta``."""
    meta = record.get("meta")
    if not isinstance(meta, dict):
        return None

    def hit(key: str, wanted: frozenset[Any]) -> bool:
        return bool(wanted) and any(v in wanted for v in meta.get(key) or [])

    return (hit("users", who.user_ids) or hit("messages", who.message_ids)
            or hit("corrections", who.correction_ids) or hit("sources", who.sources))


def turns(record: Record) -> list[str]:
    """The non-system turns of a messages record or a preference row."""
    out = []
    for key in ("messages", "prompt", "completion", "chosen", "rejected"):
        for m in record.get(key) or []:
            if isinstance(m, dict) and m.get("role") != "system":
                out.append(str(m.get("content", "")).strip())
    return out


def holds(record: Record, who: Forgotten, needles: set[str]) -> bool:
    """The one rule: by ids when the record has them, else by text."""
    known = by_ids(record, who)
    if known is not None:
        return known
    return bool(needles) and any(t in needles for t in turns(record))


def purge_jsonl(path: Path, drop: Callable[[Record], bool]) -> int:
    """Rewrite ``path`` without the records ``drop`` selects; returns how many went. Lines that
    are not JSON objects are kept as they are."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keep: list[str] = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and drop(record):
            continue
        keep.append(line)
    if len(keep) != len(lines):
        write_atomic(path, "".join(k + "\n" for k in keep))
    return len(lines) - len(keep)


def purge_dataset_lines(root: Path, who: Forgotten) -> int:
    """Drop ``who``'s records from every ``*.jsonl`` under ``root`` (train, eval, prefs,
    exports); return the number of records removed."""
    if not who or not root.exists():
        return 0
    needles = needles_of(who.texts)
    removed = 0
    failed: list[str] = []
    for path in sorted(root.rglob("*.jsonl")):
        try:
            removed += purge_jsonl(path, lambda r: holds(r, who, needles))
        except (OSError, UnicodeDecodeError) as exc:  # the others are still purged
            failed.append(f"{path.name} ({type(exc).__name__})")
    if failed:
        raise PurgeError(f"could not purge {len(failed)} file(s) under {root.name}/: "
                         + ", ".join(failed) + f"; {removed} record(s) were removed")
    return removed
