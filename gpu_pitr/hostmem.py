"""How a restore asks the OS for the host memory it fills once.

NumPy advises transparent huge pages (``madvise(MADV_HUGEPAGE)``) for every
array of 4 MiB or more. A restore writes its index, arenas and snapshot
buffers once, front to back, into memory the process has never touched. Whether
the advice helps depends on the host's free memory:
- when the kernel has free 2 MiB blocks for all of it, a huge-page fault maps 2 MiB
  at once: a 1 GiB restore on the 2-core Intel VM of docs/measurements.md took a
  median 2.24 s with the advice against 2.55 s without (5 alternated pairs, faster
  in every pair), and 0.70-0.85x the time in five of six bench runs (1.13x in one, on
  a slow-host day);
- when it has not, with the kernel's usual ``defrag=madvise`` setting, each
  huge-page fault may first compact memory to make one. That is the likely cause of
  what the AMD VM of the same page measured (its free blocks were not recorded):
  first writes to a fresh 617 MiB array at 0.5-1.3 GB/s with the advice and 1.9-2.1
  GB/s without, and whole restores 1.1-1.6x as long.

So ``fill_once_pages(need)`` keeps the advice when the free 2 MiB blocks
(``/proc/buddyinfo``) cover ``need`` bytes with room to spare, and otherwise turns
it off while the restore allocates, putting NumPy's setting back after. A user who
set ``NUMPY_MADVISE_HUGEPAGE`` has chosen, and is left alone.
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


# Free 2 MiB blocks must cover the memory a restore fills this many times over.
_HEADROOM = 2


def huge_blocks_free(buddyinfo: str | None = None) -> int | None:
    """Bytes free in blocks of the huge-page size or larger, over all zones (None when
    ``/proc/buddyinfo`` or the huge-page size cannot be read: not Linux)."""
    try:
        if buddyinfo is None:
            with open("/proc/buddyinfo") as f:
                buddyinfo = f.read()
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            huge = int(f.read())
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    order = max(0, (huge // page).bit_length() - 1)
    total = 0
    for line in buddyinfo.splitlines():
        counts = line.split("zone", 1)[-1].split()[1:]
        for k, count in enumerate(counts):
            if k >= order and count.isdigit():
                total += int(count) * (page << k)
    return total


def keep_huge_page_advice(need: int | None, free: int | None = None) -> bool:
    """Whether filling ``need`` bytes with NumPy's huge-page advice on is cheap here:
    free huge-page blocks cover it ``_HEADROOM`` times (no compaction to wait for)."""
    if need is None:
        return False
    free = huge_blocks_free() if free is None else free
    return free is not None and free >= _HEADROOM * need


@contextmanager
def fill_once_pages(need: int | None = None) -> Iterator[None]:
    """Within the block, large NumPy arrays get ordinary pages, unless free huge-page
    blocks cover ``need`` bytes (``keep_huge_page_advice``: NumPy's advice then stays).
    Re-entrant and thread-safe: blocks inside the outermost one keep its choice, and
    the setting is restored when the last block exits."""
    global _depth, _saved
    setter = None if "NUMPY_MADVISE_HUGEPAGE" in os.environ else _setter()
    if setter is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = bool(setter(False))
            if keep_huge_page_advice(need):
                setter(_saved)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                setter(_saved)


#: Where ``aligned_empty`` arrays start: on a page, so that rows of a multiple of 64
#: bytes span whole cache lines (NumPy's large arrays start 16 bytes into a page).
ALIGN = 4096


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` starting at a multiple of ALIGN bytes (a view of a
    slightly larger array): the cpu executor's rows, which ``jit.stream_copy`` writes
    whole lines of."""
    import numpy as np

    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    at = -raw.ctypes.data % ALIGN
    return raw[at:at + size].view(dtype).reshape(shape)


#: Bytes copied between hand-backs in ``join_releasing``.
RELEASE_BLOCK = 64 << 20

_MADV_DONTNEED = 4  # Linux's value
_madvise = None  # (function or False once looked up)


def _madvise_fn():
    global _madvise
    if _madvise is None:
        _madvise = False
        if os.uname().sysname == "Linux":
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
                pass
    return _madvise


def release(start: int, stop: int) -> int:
    """Hand back to the OS the whole pages between the addresses ``start`` and
    ``stop`` of memory this process owns and no longer needs (read after, they are
    zeros); returns the page-aligned address up to which it did. Linux only
    (``madvise(MADV_DONTNEED)``); elsewhere nothing is handed back."""
    page = os.sysconf("SC_PAGE_SIZE")
    lo = -(-start // page) * page
    hi = stop // page * page
    fn = _madvise_fn()
    if fn and hi > lo:
        fn(lo, hi - lo, _MADV_DONTNEED)  # a failure only leaves the pages resident
    return max(lo, hi)


def join_releasing(parts: list, dtype, size: int = 0, block: int | None = None):
    """``np.concatenate(parts)`` of 1-d arrays that are spent: each part's pages go
    back to the OS as soon as they are copied (the parts read as zeros after), so the
    peak is the result plus a block, not twice it. ``size``: the result's length at
    least (what follows the parts is left unset)."""
    import numpy as np

    out = np.empty(max(size, sum(len(p) for p in parts)), dtype)
    at = 0
    for p in parts:
        copy_releasing(out[at:at + len(p)], p, block)
        at += len(p)
    return out


def copy_releasing(dst, src, block: int | None = None) -> None:
    """``dst[:] = src`` (1-d, equal lengths) a block at a time, each copied block's
    whole pages of ``src`` handed back to the OS (``src`` is spent: zeros after)."""
    block = block or RELEASE_BLOCK
    n = len(src)
    if n and not src.flags.c_contiguous:  # the pages handed back are found by address
        raise ValueError("copy_releasing needs a contiguous source")
    base = src.ctypes.data if n else 0
    done = base
    for a in range(0, n, block):
        b = min(a + block, n)
        dst[a:b] = src[a:b]
        done = release(done, base + b * src.itemsize)


def peak_rss() -> int | None:
    """The kernel's high-water mark of this process's RSS since exec, in bytes (exact,
    where sampling can miss a spike; unlike ``ru_maxrss``, not carried over from the
    parent at fork); None off Linux. For the memory benchmarks."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
