"""The probes file ``<storage>/probes.json``: question / expected-content pairs admins keep.

The gate asks the candidate and the reference adapter every probe; a candidate that passes fewer
is rejected. The file is a JSON list of ``{"question", "expected"}``, replaced atomically on every
change; ``/probe add|list|remove`` edits it. An edit (read, change, write) holds an exclusive
``flock`` on ``probes.json.lock`` beside it, so concurrent edits, from threads or processes (the
bot and ``nightowl console``), never lose one another's probes; readers need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.files import write_atomic
from training.errors import ProbeError

PROBE_USAGE = "Usage: /probe add QUESTION => EXPECTED | /probe list | /probe remove N"


@dataclass(frozen=True)
class Probe:
    question: str
    expected: str


class ProbeFile:
    """``<storage>/probes.json``: a list of {"question", "expected"} written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def editing(self) -> Iterator[None]:
        """Hold the file's edit lock (blocking; an edit holds it for one read and one write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield

    def load(self) -> list[Probe]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [Probe(str(p["question"]), str(p["expected"])) for p in raw]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProbeError(f"{self.path} is not a valid probes file ({exc}); fix or delete "
                             "it (a JSON list of {\"question\", \"expected\"}).") from exc

    def save(self, probes: Sequence[Probe]) -> None:
        data = [{"question": p.question, "expected": p.expected} for p in probes]
        write_atomic(self.path, json.dumps(data, ensure_ascii=False, indent=2))

    def command(self, args: str) -> str:
        """``add QUESTION => EXPECTED`` | ``list`` | ``remove N`` (under :meth:`editing`)."""
        with self.editing():
            return self._command(args)

    def _command(self, args: str) -> str:
        verb, _, rest = args.strip().partition(" ")
        verb = verb.lower()
        probes = self.load()
        if verb == "add":
            question, sep, expected = rest.partition("=>")
            if not sep or not question.strip() or not expected.strip():
                return PROBE_USAGE
            probes.append(Probe(question.strip(), expected.strip()))
            self.save(probes)
            return f"Added probe #{len(probes)}: {question.strip()} => {expected.strip()}"
        if verb == "list" or not verb:
            if not probes:
                return "No probes yet. " + PROBE_USAGE
            return "\n".join(f"#{i} {p.question} => {p.expected}" for i, p in enumerate(probes, 1))
        if verb in ("remove", "rm", "del", "delete"):
            try:
                n = int(rest.strip().lstrip("#"))
            except ValueError:
                return PROBE_USAGE
            if not 1 <= n <= len(probes):
                return f"There is no probe #{n} (there are {len(probes)})."
            gone = probes.pop(n - 1)
            self.save(probes)
            return f"Removed probe #{n}: {gone.question}"
        return PROBE_USAGE
