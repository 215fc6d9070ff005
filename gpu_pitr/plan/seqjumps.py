"""Sequence numbers that jump forward in log order: records missing from the log.

The writer numbers records one after another and starts again at 0 when it is
reopened without recovery, so a step back is a writer reopen (or a splice, which
``verify`` judges), and a step forward by more than one means records that were
written are not in the log: a segment deleted before it was archived, bytes lost,
a torn record. SPEC section 1 orders the log by file names, not sequence numbers,
so a restore goes on across such a jump and its state lacks what those records did;
it says so (``report.warnings``). Zero-filled records (``zerofill``) carry no seq the
writer gave and take no part.
"""

from __future__ import annotations

import numpy as np

from gpu_pitr.format import zerofill
from gpu_pitr.jit import njit


@njit(cache=True, nogil=True)
def _jumps(seq, length, prev, has_prev, at, before):
    """One pass: each record with a seq (not zero-filled: seq 0, length 0) more than one
    past the seq before it goes into ``at`` (its index) and ``before`` (that seq).
    Returns ``(how many, the last seq seen, whether any was)``; ``prev``/``has_prev``:
    the seq before these records, if any. (2**64 - 1 has no successor: nothing after it
    is a jump forward.)"""
    m = 0
    for i in range(len(seq)):
        q = seq[i]
        if zerofill.is_zero_record(length[i], q):
            continue
        if has_prev and q > prev and q - prev > np.uint64(1):
            at[m] = i
            before[m] = prev
            m += 1
        prev = q
        has_prev = True
    return m, prev, has_prev


class SeqJumps:
    """The jumps forward among the records a restore reads up to its stop point, fed
    chunk by chunk in log order: how many, how many seqs they skip, the first one."""

    def __init__(self) -> None:
        self.prev: int | None = None  # the seq of the last record fed (not a zero one)
        self.count = 0
        self.missing = 0
        self.first: tuple[int, int] | None = None  # (seq before, seq after)
        self.where: dict | None = None  # the first jump's record, set by the caller

    def add(self, seq: np.ndarray, length: np.ndarray) -> int | None:
        """Feed the next records (their seqs and payload lengths); the index among them
        of the record the first jump lands on, if it is among these."""
        seq = np.asarray(seq, np.uint64)
        at = np.empty(len(seq), np.int64)
        before = np.empty(len(seq), np.uint64)
        m, last, seen = _jumps(seq, length, np.uint64(self.prev or 0), self.prev is not None,
                               at, before)
        if seen:
            self.prev = int(last)
        if not m:
            return None
        after = seq[at[:m]]
        self.count += m
        self.missing += sum((after - before[:m] - np.uint64(1)).tolist())  # exact: ints
        if self.first is not None:
            return None
        self.first = (int(before[0]), int(after[0]))
        return int(at[0])


@njit(cache=True, nogil=True)
def _epochs(seq, length, prev, has_prev, count, out):
    """``out[i]``: ``count`` plus the writer restarts among records ``0..i`` (a record
    with a seq not above the seq before it; zero-filled records take no part). Returns
    ``(count, the last seq seen, whether any was)`` after them."""
    for i in range(len(seq)):
        q = seq[i]
        if not zerofill.is_zero_record(length[i], q):
            if has_prev and q <= prev:
                count += np.uint64(1)
            prev = q
            has_prev = True
        out[i] = count
    return count, prev, has_prev


class Restarts:
    """Writer restarts in log order, counted from where the restore starts reading: each
    record gets the count up to and including it (its epoch), so that two records with
    a restart between them differ. A transaction open at the end of the log whose
    records come after a restart that followed its begin was left open by a writer
    that crashed (``pipeline._joined_after_restart``), whichever records took the
    restarted writer's low seqs."""

    def __init__(self) -> None:
        self.count = 0
        self.prev: int | None = None  # the seq of the last record fed (not a zero one)

    def epochs(self, seq: np.ndarray, length: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` with the epochs of the next records in log order."""
        count, last, seen = _epochs(np.asarray(seq, np.uint64), length,
                                    np.uint64(self.prev or 0), self.prev is not None,
                                    np.uint64(self.count), out)
        self.count = int(count)
        if seen:
            self.prev = int(last)
