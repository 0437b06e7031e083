"""Keep freed memory in the process instead of handing it back to the OS after every forward pass.

glibc's malloc returns large freed blocks to the kernel (``munmap`` or trimming the heap top) and
the next forward pass then touches fresh, zero-filled pages again (minor page faults on every
pass). Raising the trim and mmap thresholds (what jemalloc/tcmalloc do by design, and what
``MALLOC_TRIM_THRESHOLD_`` etc. would do if set before start-up) keeps the pages mapped for the
next pass. The price: memory freed after a burst stays with the process (``[model]
cpu_keep_freed_memory = false`` keeps glibc's defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("nightowl.llm")

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling; blocks above it are still mmap'ed
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc malloc for a long-running tensor workload; False where there is no glibc
    (macOS, musl, Windows) or it refuses a setting (nothing changes then)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
        version.restype = ctypes.c_char_p
        gnu = version().decode()
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD)))
    log.debug("glibc %s malloc tuned for tensors: %s", gnu, ok)
    return ok
