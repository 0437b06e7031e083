"""llm.local.malloc.keep_freed_memory: freed tensor-sized blocks stay mapped for the next pass."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# 16 x 1 MB blocks allocated, written and freed five times (a forward pass's temporaries);
# prints the minor page faults of the last five cycles. In a fresh interpreter, so the
# process's malloc starts from glibc's defaults.
PROBE = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    if {tuned}:
        from llm.local.malloc import keep_freed_memory
        assert keep_freed_memory()
    def cycle():
        blocks = [b"x" * (1 << 20) for _ in range(16)]
        del blocks
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults(tuned: bool) -> int:
    code = PROBE.format(root=str(ROOT), tuned=tuned)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_blocks_are_reused_without_new_page_faults() -> None:
    plain, tuned = faults(False), faults(True)
    assert plain > 5 * 16 * 256 // 2  # glibc's defaults hand the pages back every cycle
    assert tuned < plain // 20


def test_without_glibc_it_reports_false(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm.local import malloc

    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.keep_freed_memory() is False
