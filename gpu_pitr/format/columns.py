"""Columnar tables of one chunk: records (framing + decode) and data entries.

Both executors fill the same columns; a record's entries are at ``efirst[i]``
.. ``efirst[i] + nent[i] - 1`` (slot ``i`` itself for a non-batch record, slots
after the records for a batch's flattened entries).
"""

from __future__ import annotations

import numpy as np

from gpu_pitr.format.layout import RECORD_HEADER_SIZE
from gpu_pitr.format.payload import OK, read_uint_le
from gpu_pitr.jit import njit

RECORD_COLUMNS = {
    "off": np.int64,  # buffer offset of the record header
    "length": np.int64,  # payload length
    "seq": np.uint64,
    "seg": np.int64,  # segment index in log order
    "foff": np.int64,  # file offset of the record header
    "status": np.uint8,
    "kind": np.int64,
    "ts": np.uint64,
    "aux": np.uint64,
    "nent": np.int64,
    "stop": np.int64,
    "efirst": np.int64,
    # Writer restarts (a seq not above the one before it) read up to and including this
    # record: set by the restore before its plan walk (``seqjumps.Restarts``).
    "epoch": np.uint64,
}

ENTRY_COLUMNS = {
    "e_op": np.int64,
    "e_id_off": np.int64,
    "e_id_len": np.int64,
    "e_vec_off": np.int64,
    "e_dim": np.int64,
    "e_meta_off": np.int64,
    "e_meta_len": np.int64,
    "e_key": np.uint64,
}


class ChunkColumns:
    """Reusable record and entry columns, grown only when a chunk needs more."""

    def __init__(self, records: int, entries: int | None = None) -> None:
        self.record_capacity = 0
        self.entry_capacity = 0
        self.ensure_records(records)
        self.ensure_entries(entries if entries is not None else records)

    def ensure_records(self, n: int) -> None:
        self.record_capacity = self._grow(RECORD_COLUMNS, self.record_capacity, n)

    def ensure_entries(self, n: int) -> None:
        self.entry_capacity = self._grow(ENTRY_COLUMNS, self.entry_capacity, n)

    def trailing_rows(self, first: int, n: int) -> np.ndarray:
        """Rows ``first..n-1`` of records decoded whole whose entry ends before their
        payload does: the trailing bytes a restore accepts and verify reports."""
        return _trailing_rows(self.off, self.length, self.status, self.stop, first, n)

    def bad_offsets(self, rows: np.ndarray) -> np.ndarray:
        """The file offset of the byte where decoding failed, of each record in ``rows``
        (what a restore's error names): kept inside the record, so a truncated
        payload fails at its last byte."""
        foff = self.foff[rows]
        return np.minimum(foff + (self.stop[rows] - self.off[rows]),
                          foff + RECORD_HEADER_SIZE + self.length[rows] - 1)

    def trailing_count(self, i: int) -> int:
        """How many bytes of record ``i``'s payload follow its entry."""
        return int(self.off[i] + RECORD_HEADER_SIZE + self.length[i] - self.stop[i])

    def _grow(self, columns: dict, capacity: int, n: int) -> int:
        """Grow ``columns`` to hold ``n`` rows (by half again at least), keeping them."""
        if n <= capacity:
            return capacity
        n = max(n, capacity + capacity // 2)
        for name, dt in columns.items():
            new = np.zeros(n, dt)
            if capacity:
                new[:capacity] = getattr(self, name)
            setattr(self, name, new)
        return n


def file_runs(seg: np.ndarray, foff: np.ndarray, size, keep: np.ndarray | None = None,
              same: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group records in log order into runs, each record following the one before it in
    its file: in the same segment, at ``foff`` + ``size`` of the one before (``size``:
    each record's bytes, or one for all). Where given, both must be ``keep`` and have
    the same ``same`` (an event's kind): a record that is not ``keep`` is a run of its
    own. Returns ``(firsts, counts)``: each run's first record, and how many it holds."""
    n = len(seg)
    follows = np.zeros(n, np.bool_)
    if n > 1:
        step = size if np.ndim(size) == 0 else size[:-1]
        follows[1:] = (seg[1:] == seg[:-1]) & (foff[1:] == foff[:-1] + step)
        if keep is not None:
            follows[1:] &= keep[1:] & keep[:-1]
        if same is not None:
            follows[1:] &= same[1:] == same[:-1]
    firsts = np.flatnonzero(~follows)
    return firsts, np.diff(np.append(firsts, n))


@njit(cache=True, nogil=True, inline="always")
def _trails(status, stop, end):
    # Scalars only: given the columns, a helper counts references to them on every
    # row (Numba's NRT; a chunk of 24,000 records of the 1 GiB benchmark log took
    # 0.37 ms instead of 0.076 ms, 29 ms of a 0.8 s restore on its main thread).
    return status == OK and stop < end


@njit(cache=True, nogil=True)
def _trailing_rows(off, length, status, stop, first, n):
    # Counted first, then listed: no temporary column of the chunk's rows.
    count = 0
    for i in range(first, n):
        count += _trails(status[i], stop[i], off[i] + RECORD_HEADER_SIZE + length[i])
    rows = np.empty(count, np.int64)
    if count == 0:  # as in nearly every chunk: no second pass
        return rows
    count = 0
    for i in range(first, n):
        if _trails(status[i], stop[i], off[i] + RECORD_HEADER_SIZE + length[i]):
            rows[count] = i
            count += 1
    return rows


@njit(cache=True, nogil=True)
def move_records(src, dst, off, length, m, pos):
    """Copy records ``0..m-1`` (each ``RECORD_HEADER_SIZE + length[i]`` bytes at
    ``src[off[i]:]``) back to back into ``dst`` from ``pos``, pointing ``off`` at their
    new places; returns the end. (The records of open transactions, carried into each
    chunk's buffer: a Python loop took about 1 us a record, per chunk they are carried.)"""
    for i in range(m):
        o = off[i]
        size = RECORD_HEADER_SIZE + length[i]
        d = dst[pos:pos + size]
        s = src[o:o + size]
        for k in range(size):
            d[k] = s[k]
        off[i] = pos
        pos += size
    return pos


@njit(cache=True, nogil=True)
def back_to_back(blob, off, length, seq):
    """Records laid back to back in ``blob`` (what ``move_records`` makes: a base
    snapshot's pending records): each one's offset, payload length and seq, for as
    many as the columns hold. Returns ``(records, end)``; ``end`` is where the last
    whole record ends, short of ``len(blob)`` where a record does not fit."""
    pos = 0
    k = 0
    while k < len(off) and pos + RECORD_HEADER_SIZE <= len(blob):
        n = np.int64(read_uint_le(blob, pos + 8, 4))
        if pos + RECORD_HEADER_SIZE + n > len(blob):
            break
        off[k], length[k], seq[k] = pos, n, read_uint_le(blob, pos, 8)
        pos += RECORD_HEADER_SIZE + n
        k += 1
    return k, pos
