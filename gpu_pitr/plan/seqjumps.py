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
        rows = np.flatnonzero(~zerofill.zero_records(length, seq))
        if not len(rows):
            return None
        s = seq[rows].astype(np.uint64)
        lead = 0 if self.prev is None else 1  # the record before these, if any
        before = s[:-1] if not lead else np.concatenate(
            (np.array([self.prev], np.uint64), s[:-1]))
        after = s[1 - lead:]
        # Forward by more than one; in uint64, where before + 1 could wrap.
        jump = np.flatnonzero((after > before) & (after - before > np.uint64(1)))
        self.prev = int(s[-1])
        if not len(jump):
            return None
        self.count += len(jump)
        self.missing += sum((after[jump] - before[jump] - np.uint64(1)).tolist())
        if self.first is not None:
            return None
        j = int(jump[0])
        self.first = (int(before[j]), int(after[j]))
        return int(rows[j + 1 - lead])
