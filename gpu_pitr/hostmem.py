"""How a restore asks the OS for the host memory it fills once.

NumPy advises transparent huge pages (``madvise(MADV_HUGEPAGE)``) for every
array of 4 MiB or more. A restore writes its index, arenas and snapshot
buffers once, front to back, into memory the process has never touched; with
the kernel's usual ``defrag=madvise`` setting, each huge-page fault of such an
array may first compact memory to find 2 MiB free. Measured on the 2-core VM
of docs/measurements.md: first writes to a fresh 617 MiB array ran at 0.5-1.3
GB/s with the advice and 1.9-2.1 GB/s without, and a whole 1 GiB restore took
0.4-0.9 s less (3.4-3.7 s -> 2.8-3.1 s, fresh processes, alternated).

So a restore turns the advice off while it allocates, and puts NumPy's
setting back after. A user who set ``NUMPY_MADVISE_HUGEPAGE`` has chosen, and
is left alone.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: bool | None = None


def _setter():
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(name)._set_madvise_hugepage
        except (ImportError, AttributeError):
            continue
    return None


@contextmanager
def fill_once_pages() -> Iterator[None]:
    """Within the block, large NumPy arrays get ordinary pages (re-entrant,
    thread-safe: the setting is restored when the last block exits)."""
    global _depth, _saved
    setter = None if "NUMPY_MADVISE_HUGEPAGE" in os.environ else _setter()
    if setter is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = bool(setter(False))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                setter(_saved)
