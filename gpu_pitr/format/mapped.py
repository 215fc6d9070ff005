"""Segment bytes mapped into a read-ahead buffer instead of copied into it (Linux).

``preadv`` copies every byte of the log out of the page cache into the ring's
buffers: on the 2-core VMs of docs/measurements.md that copy is 0.17-0.25
CPU-seconds per GB, an eighth of a whole restore's CPU time. ``map_piece`` maps
the page-cache pages of a piece at the place in the buffer the copy would have
filled instead (``mmap`` with ``MAP_FIXED | MAP_PRIVATE`` over the buffer's own
address range), so the bytes are not copied at all. The buffer keeps its
headroom in front, and stays writable: a write lands in a private copy of its page,
never in the file (a restore writes only the bytes it carries in front of a piece).

A mapped file has two hazards that a copy has not, and the read's errors are kept:
- a page that cannot be read (a media error), or a file cut below the bytes mapped,
  is a SIGBUS when touched, not an ``OSError``. So every page of the piece is
  faulted in at once with ``madvise(MADV_POPULATE_READ)`` (Linux 5.14), which
  returns an error instead, and the file's size is checked after; on any failure
  the buffer gets anonymous memory back and the caller reads the piece with
  ``preadv``, which raises the usual one-line error naming the file and offset;
- a file cut in place (``truncate``, or ``cp`` over it) after its pages were
  faulted in, while the piece is in use (some milliseconds), is still a SIGBUS
  (``gpu-pitr`` says so in one line: ``gpu_pitr.buserror``). A writer only
  appends, the archive replaces its files by renaming (which leaves a mapping
  alone), and ``GPU_PITR_MAP_READS=0`` turns mapping off.

Pieces shorter than ``MIN_PIECE`` (a small segment, a small chunk size) are read.
Where a mapping cannot be made (not Linux, an older kernel, a file system that
cannot map files), pieces are read as before, and the first failure of the kind
turns mapping off for the rest of the pass (``Readahead.mapping``).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys

import numpy as np

from gpu_pitr.environment import switch

PAGE = mmap.PAGESIZE
# Pieces shorter than this are read: mapping one costs some 30-45 us more than copying
# a small one (system calls, faults, the old mapping's TLB entries dropped on every
# CPU), and gains from 1 MiB on (128 MiB of the bench log in pieces of 64 KiB: 182
# against 133 ms of CPU; of 1 MiB: 23 against 34 ms; of 4 MiB: 11 against 28 ms).
MIN_PIECE = 512 << 10
_MAP_FIXED = 0x10  # Linux, every architecture
_MADV_POPULATE_READ = 22  # Linux 5.14
_libc = None
# Errors that say mapping cannot work here at all (rather than for this piece).
_UNSUPPORTED = (errno.EINVAL, errno.ENODEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EACCES,
                errno.EPERM)


def _load_libc():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc = libc
    return _libc


def available() -> bool:
    """Whether pieces may be mapped: Linux, and not turned off with GPU_PITR_MAP_READS=0
    (or off, no, false: ``environment.switch``)."""
    return sys.platform.startswith("linux") and switch("GPU_PITR_MAP_READS")


def region(nbytes: int) -> np.ndarray:
    """A buffer whose memory the process mapped itself (anonymous, page-aligned), so
    that file pages may be mapped over parts of it; unmapped when the last array
    viewing it goes."""
    return np.frombuffer(mmap.mmap(-1, nbytes + 2 * PAGE), np.uint8)


def map_piece(buf: np.ndarray, at: int, fd: int, offset: int, length: int,
              disable) -> int | None:
    """Maps the file bytes ``[offset, offset + length)`` of ``fd`` into ``buf`` (from
    ``region``) at ``at`` (a page boundary) onwards, every page faulted in; returns
    where in ``buf`` byte ``offset`` is (``at + offset % PAGE``).

    None when they are not all there to map (the file is shorter now, a page
    cannot be read): ``buf`` has anonymous memory there again, for a read that
    reports it. ``disable()`` is called when mapping cannot work here at all.
    """
    libc = _load_libc()
    start = offset - offset % PAGE
    size = -(-(offset + length - start) // PAGE) * PAGE
    addr = buf.ctypes.data + at
    if addr % PAGE or at + size > len(buf):  # not a buffer from region(): read it
        return None
    got = libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_PRIVATE | _MAP_FIXED, fd, start)
    if got != addr:
        if ctypes.get_errno() in _UNSUPPORTED:
            disable()
        unmap_piece(buf, at, size)
        return None
    if libc.madvise(addr, size, _MADV_POPULATE_READ) != 0:
        if ctypes.get_errno() in _UNSUPPORTED:
            disable()
        unmap_piece(buf, at, size)
        return None
    if os.fstat(fd).st_size < offset + length:  # cut within the last page mapped
        unmap_piece(buf, at, size)
        return None
    return at + offset - start


def unmap_piece(buf: np.ndarray, at: int, size: int) -> None:
    """Anonymous memory again at ``buf[at : at + size]`` (a page-rounded span)."""
    libc = _load_libc()
    addr = buf.ctypes.data + at
    size = -(-size // PAGE) * PAGE
    got = libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED, -1, 0)
    if got != addr:  # cannot happen for a range the process owns; a read must not fault
        err = ctypes.get_errno()
        raise OSError(err, f"cannot map anonymous memory back: {os.strerror(err)}")
