"""What a learning cycle hands back and leaves behind: :class:`CycleResult` (status, reasons, the
report), the loss plot, and the resolved settings kept in each adapter's ``meta.json``.

The result's text lists the gate's reasons, the data (kept, held out, dropped by reason), the
training figures and which answers to recent real questions changed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import LearningSettings

log = logging.getLogger("nightowl.training")


@dataclass
class CycleResult:
    status: str  # "promoted" | "waiting" | "rejected" | "skipped" | "failed"
    run_id: int
    summary: str
    version: str | None = None
    parent: str | None = None
    reasons: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    plot: Path | None = None
    run_dir: Path | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def text(self) -> str:
        lines = [f"Training run #{self.run_id}: {self.summary}"]
        lines += [f"- {r}" for r in self.reasons]
        ds = self.report.get("dataset")
        if ds:
            drops = ", ".join(f"{k} {v}" for k, v in sorted(ds.get("dropped", {}).items()))
            lines.append(f"Data: {ds.get('kept', 0)} examples kept ({ds.get('new', 0)} new, "
                         f"{ds.get('train', 0)} train, {ds.get('eval', 0)} held out); "
                         f"dropped: {drops or 'none'}")
        tr = self.report.get("training")
        if tr:
            lines.append(f"Training: {tr.get('steps')} steps in {tr.get('train_runtime_s', 0):.0f}"
                         f" s ({tr.get('samples_per_s', 0):.2f} samples/s, peak RSS "
                         f"{tr.get('peak_rss_mb', 0):.0f} MB, {tr.get('backend')})")
        recent = (self.report.get("scores") or {}).get("recent") or {}
        moved = [r for r in recent.get("rows", []) if r.get("changed")]
        if recent.get("total"):
            lines.append(f"Recent questions whose answer changed: {len(moved)} of "
                         f"{recent['total']}")
            lines += [f"  {r['question'][:60]!r}: {r['reference'][:60]!r} -> "
                      f"{r['candidate'][:60]!r}" for r in moved[:5]]
        return "\n".join(lines)


def write_plot(path: Path, curve: list[list[float]], history: list[tuple[str, float]],
               reference: float | None) -> Path | None:
    """PNG with the training loss curve and held-out loss per version (matplotlib, Agg)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # plotting is a nicety; the run does not fail for it
        log.exception("could not import matplotlib; no plot")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if curve:
        ax1.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", ms=3)
    ax1.set_title("training loss (assistant tokens)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    if history:
        ax2.plot([h[0] for h in history], [h[1] for h in history], marker="o", label="candidate")
    if reference is not None:
        ax2.axhline(reference, color="gray", linestyle="--", label="reference (active/base)")
    ax2.set_title("held-out loss per version")
    ax2.set_xlabel("version")
    ax2.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def resolved_config(cfg: LearningSettings) -> dict[str, Any]:
    """The settings that shaped an adapter, for its ``meta.json``: the training and privacy
    sections, the model and retrieval settings without server URLs (they may embed credentials)."""
    drop = {"base_url", "api_key_env", "chroma_url"}
    out: dict[str, Any] = {}
    for name in ("model", "rag", "training", "privacy"):
        section = dataclasses.asdict(getattr(cfg, name))
        out[name] = {k: v for k, v in section.items() if k not in drop}
    out["chat"] = {"history_messages": cfg.chat.history_messages}
    return out


