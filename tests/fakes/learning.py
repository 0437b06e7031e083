"""FakeLearning: implements bot.core.Learning without training, for core and platform tests.

It returns the real service's types (``RetrainOutcome``), but its texts are its own: a test that
checks what an admin reads uses the real ``training.service.LearningService``.
"""

from __future__ import annotations

import asyncio

from data.users import Forgotten
from training.service import RetrainOutcome


class FakeLearning:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.versions: list[str] = []
        self.active: str | None = None
        self.retrains = 0
        self.probes: list[str] = []
        self.purged: list[str] = []
        self.candidate: str | None = None  # a candidate waiting for an admin ([training] promote)
        self.decisions: list[tuple[str, str]] = []  # (approved|rejected, by)
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def retrain(self, trigger: str = "manual") -> RetrainOutcome:
        self._running = True
        try:
            await asyncio.sleep(self.delay_s)
            self.retrains += 1
            version = f"v{len(self.versions) + 1:04d}"
            self.versions.append(version)
            parent, self.active = self.active, version
            return RetrainOutcome(f"Training run ({trigger}): promoted {version} "
                                  f"(parent {parent or 'base'}).")
        finally:
            self._running = False

    async def rollback(self, version: str | None) -> str:
        if version is None:
            if len(self.versions) < 2 or self.active is None:
                return "Nothing to roll back to."
            idx = self.versions.index(self.active)
            version = self.versions[idx - 1] if idx > 0 else None
        elif version not in self.versions:
            return f"Unknown adapter {version}. Known: {', '.join(self.versions) or 'none'}."
        self.active = version
        return f"Active adapter is now {version or 'base'}."

    def adapters_text(self) -> str:
        return "\n".join(f"{v}{' (active)' if v == self.active else ''}" for v in self.versions)

    def status_line(self) -> str:
        return f"active adapter {self.active or 'base'}"

    def probe(self, args: str) -> str:
        verb, _, rest = args.partition(" ")
        if verb == "add" and rest:
            self.probes.append(rest)
            return f"Added probe #{len(self.probes)}."
        if verb == "list":
            return "\n".join(f"#{i} {p}" for i, p in enumerate(self.probes, 1)) or "No probes."
        return "Usage: /probe add QUESTION => EXPECTED | /probe list | /probe remove N"

    async def purge_forgotten(self, who: Forgotten) -> int:
        self.purged.extend(who.texts)
        return len(who.texts)

    def waiting_candidate(self) -> str | None:
        return self.candidate

    async def approve_candidate(self, by: str) -> str:
        return self._decide("approved", by)

    async def reject_candidate(self, by: str) -> str:
        return self._decide("rejected", by)

    def _decide(self, decision: str, by: str) -> str:
        if self.candidate is None:
            return "No candidate adapter is waiting for approval."
        self.decisions.append((decision, by))
        name, self.candidate = self.candidate, None
        return f"Candidate {name} {decision}."
