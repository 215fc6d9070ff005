"""Commit points, transactions and the stop rule (SPEC section 3), in log order.

This is the ``recoveryStopsBefore`` / ``recoveryStopsAfter`` of the project: one
sequential walk over the decoded record table of a chunk that decides which
records are applied and in which order (the *apply order*: commit points in log
order, a transaction's records at its commit), where the restore stops, and
which damage is fatal. It reads only the small per-record columns (kind,
timestamp, transaction id, status, sequence number), so it stays on the host for
both executors; the per-entry work happens in the executors.

State that outlives a chunk is small and explicit (``PlanState``): open
transactions and the records they hold, the stop flag and the counters.
"""

from __future__ import annotations

import numpy as np

from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    COMMIT_TRANSACTION,
)
from gpu_pitr.format.payload import OK
from gpu_pitr.homes import HOME_SEED, seeded_home
from gpu_pitr.jit import NO_REFCOUNTS, njit

# Target modes.
LATEST = 0
TIME = 1
SEQ = 2
STOP_AT_FIRST = 3  # a time target before every representable timestamp
TXN = 4  # the first Commit/Abort that closes transaction target_txn while it is open
POS = 5  # the record at a log position: row target_row of the chunk (-1: not in it)

# Events the walk reports (kind, record index).
EV_BEGIN_ALREADY_OPEN = 1
EV_END_NOT_OPEN = 2
EV_SKIPPED = 3
EV_DAMAGE_AFTER_STOP = 4

# Walk results.
WALK_OK = 0
WALK_FATAL = 1

# Counter slots of PlanState.counters.
C_COMMIT_POINTS = 0
C_COMMITTED = 1
C_ABORTED = 2
N_COUNTERS = 3


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _walk(
    first, n, kind, ts, aux, status, seq, epoch,
    mode, t_lim, exclusive, target_seq, target_txn, target_row, skip_corrupt, stopped_in,
    s_txn, s_open, s_cstart, s_ccount, s_head, s_tail, s_bepoch, stack, n_slots_in, top_in,
    next_rec, order, events, counters, ts_max, h_txn, h_slot, h_seed,
):
    """Walk records ``first..n-1`` of a chunk (``0..first-1`` are carried ones).

    Returns ``(result, n_order, n_events, stopped, stop_index, top)``;
    ``stop_index`` is the record where the restore stopped (-1 if not in this
    chunk), or with ``WALK_FATAL`` the record that is fatally damaged.
    """
    n_order = 0
    n_events = 0
    n_slots = n_slots_in
    top = top_in
    # The open transactions by id (h_slot all -1 on entry, room for twice the open
    # ones and the chunk's begins): a begin, commit or abort finds its transaction in
    # one probe, not by searching the open ones (100k left open: quadratic, minutes).
    for j in range(top):
        if s_open[stack[j]]:
            _put_open(s_txn[stack[j]], stack[j], s_open, h_txn, h_slot, h_seed)
    stopped = stopped_in
    stop_index = -1
    for i in range(first, n):
        # The record a seq or position target names: the first numbered N, or the one
        # at the position (the caller found its row: positions are not in the columns).
        at_target = (mode == SEQ and seq[i] == target_seq) or (mode == POS and i == target_row)
        if not stopped and exclusive and at_target:
            # Exclusive: the log position just before the record numbered N (which
            # is not applied, and need not decode: its number is in its header), or
            # the record at the position.
            stopped = True
            stop_index = i
        if stopped:
            if status[i] != OK:
                events[n_events, 0] = EV_DAMAGE_AFTER_STOP
                events[n_events, 1] = i
                n_events += 1
            continue
        ended_txn = False  # a transaction target's record, X closed by it (inclusive)
        if status[i] != OK:
            # The stop point is not reached yet, so the restore must read past it.
            if not skip_corrupt:
                return WALK_FATAL, n_order, n_events, stopped, i, top
            events[n_events, 0] = EV_SKIPPED
            events[n_events, 1] = i
            n_events += 1
        else:
            k = kind[i]
            # The most recently begun transaction still open owns data records.
            while top > 0 and not s_open[stack[top - 1]]:
                top -= 1
            if k <= BATCH:
                if top > 0:
                    s = stack[top - 1]
                    next_rec[i] = -1
                    if s_head[s] < 0:
                        s_head[s] = i
                    else:
                        next_rec[s_tail[s]] = i
                    s_tail[s] = i
                elif _stops_before(mode, ts[i], t_lim, exclusive):
                    stopped = True
                    stop_index = i
                    continue
                else:
                    order[n_order] = i
                    n_order += 1
                    counters[C_COMMIT_POINTS] += 1
                    ts_max[1] = ts[i] if ts_max[0] == 0 else max(ts_max[1], ts[i])
                    ts_max[2] = ts[i]
                    ts_max[0] = 1
            elif k == BEGIN_TRANSACTION:
                if _find_open(aux[i], s_txn, s_open, h_txn, h_slot, h_seed) >= 0:
                    events[n_events, 0] = EV_BEGIN_ALREADY_OPEN
                    events[n_events, 1] = i
                    n_events += 1
                else:
                    s = n_slots
                    n_slots += 1
                    s_txn[s] = aux[i]
                    s_open[s] = True
                    s_cstart[s] = 0
                    s_ccount[s] = 0
                    s_head[s] = -1
                    s_tail[s] = -1
                    s_bepoch[s] = epoch[i]
                    stack[top] = s
                    top += 1
                    _put_open(aux[i], s, s_open, h_txn, h_slot, h_seed)
            elif k == COMMIT_TRANSACTION or k == ABORT_TRANSACTION:
                s = _find_open(aux[i], s_txn, s_open, h_txn, h_slot, h_seed)
                at_txn = mode == TXN and s >= 0 and aux[i] == target_txn
                ended_txn = at_txn
                if s < 0:
                    # (Not a transaction target's record either: it closes nothing.)
                    events[n_events, 0] = EV_END_NOT_OPEN
                    events[n_events, 1] = i
                    n_events += 1
                elif at_txn and exclusive:
                    # recovery_target_xid, inclusive off: just before the record that
                    # ends X, X not applied (nor counted), all before it applied.
                    stopped = True
                    stop_index = i
                    continue
                elif k == ABORT_TRANSACTION:
                    s_open[s] = False
                    counters[C_ABORTED] += 1
                elif _stops_before(mode, ts[i], t_lim, exclusive):
                    stopped = True
                    stop_index = i
                    continue
                else:
                    s_open[s] = False
                    n_order = _records_of(s, s_cstart, s_ccount, s_head, next_rec, order, n_order)
                    counters[C_COMMIT_POINTS] += 1
                    counters[C_COMMITTED] += 1
                    ts_max[1] = ts[i] if ts_max[0] == 0 else max(ts_max[1], ts[i])
                    ts_max[2] = ts[i]
                    ts_max[0] = 1
        if at_target and not exclusive:
            # A log position: everything complete at this record, nothing after.
            stopped = True
            stop_index = i
        elif ended_txn:
            # Inclusive: just after the record that ended X (applied, or discarded if
            # an abort).
            stopped = True
            stop_index = i
    return WALK_OK, n_order, n_events, stopped, stop_index, top


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _records_of(s, s_cstart, s_ccount, s_head, next_rec, out, m):
    """Write transaction slot ``s``'s records (carried ones, then this chunk's, in
    log order) to ``out[m:]``; returns the new end."""
    for c in range(s_cstart[s], s_cstart[s] + s_ccount[s]):
        out[m] = c
        m += 1
    r = s_head[s]
    while r >= 0:
        out[m] = r
        m += 1
        r = next_rec[r]
    return m


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _stops_before(mode, t, t_lim, exclusive):
    if mode == TIME:
        return t >= t_lim if exclusive else t > t_lim
    return mode == STOP_AT_FIRST


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _put_open(txn, s, s_open, h_txn, h_slot, h_seed):
    # Open addressing; entries of transactions closed since stay until the next walk,
    # and the first one met is taken over: a log that begins and ends one transaction
    # id again and again (ids reused) grew one chain of them, a probe of it per begin.
    mask = np.uint64(len(h_slot) - 1)
    j = seeded_home(txn, mask, h_seed)
    while h_slot[j] >= 0 and s_open[h_slot[j]]:
        j = (j + 1) & mask
    h_txn[j] = txn
    h_slot[j] = s


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _find_open(txn, s_txn, s_open, h_txn, h_slot, h_seed):
    # The slot of the open transaction ``txn`` (at most one is open), or -1.
    mask = np.uint64(len(h_slot) - 1)
    j = seeded_home(txn, mask, h_seed)
    while h_slot[j] >= 0:
        s = h_slot[j]
        if h_txn[j] == txn and s_open[s] and s_txn[s] == txn:
            return s
        j = (j + 1) & mask
    return -1


@njit(cache=True, nogil=True)
def _open_records(s_open, s_cstart, s_ccount, s_head, stack, top, next_rec, out):
    """Records held by open transactions, grouped per transaction in begin order.

    Writes them to ``out`` and rewrites each open slot's carried range to its
    place in ``out``; returns how many records were written.
    """
    m = 0
    for j in range(top):
        s = stack[j]
        if not s_open[s]:
            continue
        start = m
        m = _records_of(s, s_cstart, s_ccount, s_head, next_rec, out, m)
        s_cstart[s] = start
        s_ccount[s] = m - start
        s_head[s] = -1
    return m


class PlanState:
    """Where the walk stands between chunks: open transactions, stop, counters."""

    def __init__(self, *, to_time=None, to_seq=None, to_transaction=None, to_position=None,
                 exclusive=False, skip_corrupt=False):
        if sum(t is not None for t in (to_time, to_seq, to_transaction, to_position)) > 1:
            raise ValueError("give at most one of to_time, to_seq, to_transaction and "
                             "to_position")
        self.exclusive = bool(exclusive)
        self.skip_corrupt = bool(skip_corrupt)
        self.t_lim = np.uint64(0)
        self.target_seq = np.uint64(0)
        self.target_txn = np.uint64(0)
        if to_seq is not None:
            self.mode = SEQ
            self.target_seq = np.uint64(int(to_seq))
        elif to_transaction is not None:
            self.mode = TXN
            self.target_txn = np.uint64(int(to_transaction))
        elif to_position is not None:
            # (segment name, offset): the caller finds the record's row in each chunk
            # (``walk``'s target_row), the columns holding no file names.
            self.mode = POS
        elif to_time is None:
            self.mode = LATEST
        else:
            t = int(to_time)
            if t < 0:
                self.mode = STOP_AT_FIRST
            elif t >= 2**64:
                self.mode = LATEST
            else:
                self.mode = TIME
                self.t_lim = np.uint64(t)
        self.stopped = False
        self.open_at_stop = 0
        self.counters = np.zeros(N_COUNTERS, np.int64)
        # [any applied, latest timestamp of the commit points applied, last one's]
        self._ts_max = np.zeros(3, np.uint64)
        self._slots = _empty_slots(0)
        self._stack = np.zeros(0, np.int64)
        self._top = 0
        self._next_rows = np.zeros(0, np.int64)  # next_rec's buffer
        # _walk's table of the open transactions by id (h_slot's size: a power of two).
        self._h_txn = np.zeros(0, np.uint64)
        self._h_slot = np.zeros(0, np.int64)

    @property
    def stops_after(self) -> bool:
        """Whether the stop record itself is covered: an inclusive sequence,
        transaction or position target (a time target, or an exclusive one, stops
        before its record)."""
        return self.mode in (SEQ, TXN, POS) and not self.exclusive

    @property
    def max_timestamp(self) -> int | None:
        """The latest timestamp among the commit points applied so far (None: none)."""
        return int(self._ts_max[1]) if self._ts_max[0] else None

    @property
    def last_timestamp(self) -> int | None:
        """The timestamp of the last commit point applied (None: none)."""
        return int(self._ts_max[2]) if self._ts_max[0] else None

    @property
    def open_transactions(self) -> int:
        return int(np.count_nonzero(self._slots[1][self._stack[: self._top]]))

    def walk(self, cols, first: int, n: int, target_row: int = -1):
        """Plan records ``first..n-1`` of ``cols`` (a decoded chunk); ``target_row``:
        with a position target, the row of the record at the position (-1: none of
        these).

        Returns ``(result, order, events, stop_index)``; see ``_walk``.
        """
        # The slots, the stack and next_rec are kept from chunk to chunk and grown only
        # when a chunk needs more (new ones per chunk cost 12 ms of a 0.9 s restore of
        # the 1 GiB benchmark log): slots from top on are set by _walk as it takes them.
        cap = self._top + (n - first) + 1
        if len(self._slots[0]) < cap:
            self._slots = _grown_slots(self._slots, max(cap, 2 * len(self._slots[0])))
        if len(self._stack) < cap:
            stack = np.empty(max(cap, 2 * len(self._stack)), np.int64)
            stack[: self._top] = self._stack[: self._top]
            self._stack = stack
        if len(self._next_rows) < n:
            self._next_rows = np.empty(max(n, 2 * len(self._next_rows)), np.int64)
        next_rec = self._next_rows[:n]
        next_rec.fill(-1)
        s_txn, s_open, s_cstart, s_ccount, s_head, s_tail, s_bepoch = self._slots
        stack = self._stack
        order = np.empty(n, np.int64)
        events = np.empty((n - first + 1, 2), np.int64)
        begins = int(np.count_nonzero(cols.kind[first:n] == BEGIN_TRANSACTION))
        size = 1 << max(4, int(2 * (self._top + begins)).bit_length())
        if len(self._h_slot) < size:
            self._h_txn = np.empty(size, np.uint64)
            self._h_slot = np.empty(size, np.int64)
        h_txn, h_slot = self._h_txn[:size], self._h_slot[:size]
        h_slot.fill(-1)
        result, n_order, n_events, stopped, stop_index, top = _walk(
            first, n, cols.kind, cols.ts, cols.aux, cols.status, cols.seq, cols.epoch,
            self.mode, self.t_lim, self.exclusive, self.target_seq, self.target_txn,
            np.int64(target_row), self.skip_corrupt,
            self.stopped,
            s_txn, s_open, s_cstart, s_ccount, s_head, s_tail, s_bepoch, stack, self._top,
            self._top,
            next_rec, order, events, self.counters, self._ts_max, h_txn, h_slot, HOME_SEED,
        )
        self._top = top
        if stopped and not self.stopped:
            # In flight at the stop point: never applied, like PostgreSQL's rollback.
            self.open_at_stop = self.open_transactions
        self.stopped = bool(stopped)
        self._next = next_rec
        return result, order[:n_order], events[:n_events], stop_index

    def carry_open(self, n: int) -> np.ndarray:
        """Indices (into the chunk just walked) of records held by open transactions.

        After this call those records are expected at ``0..len-1`` of the next
        chunk, in the returned order.
        """
        if self.stopped:
            self._top = 0
            return np.zeros(0, np.int64)
        return self._compact_open(n)

    def open_records(self, n: int):
        """The transactions open now (at the stop point, if the walk just stopped).

        Returns ``(rows, txns, counts)``: the indices of their records in the
        chunk just walked, grouped per transaction in begin order, and each
        transaction's id and number of records.
        """
        rows = self._compact_open(n)
        return rows, *self.open_slots()

    def open_slots(self):
        """``(txns, counts)`` of the open transactions, as carried to the next chunk."""
        top = self._top
        return self._slots[0][:top].copy(), self._slots[3][:top].copy()

    def open_begin_epochs(self) -> np.ndarray:
        """The ``epoch`` column's value at each open transaction's BeginTransaction (the
        writer restarts read before it and at it), as ``open_slots`` orders them;
        ``UNKNOWN_BEGIN`` for one a base snapshot carried in (``seed_open``)."""
        return self._slots[6][: self._top].copy()

    def seed_open(self, txns, counts) -> None:
        """Start with these transactions open, their records carried as rows 0.. ."""
        k = len(txns)
        slots = _empty_slots(k)
        slots[0][:] = np.asarray(txns, np.uint64)
        slots[1][:] = True
        counts = np.asarray(counts, np.int64)
        slots[2][:] = np.cumsum(counts) - counts
        slots[3][:] = counts
        slots[6][:] = UNKNOWN_BEGIN
        self._slots = slots
        self._stack = np.arange(k, dtype=np.int64)
        self._top = k

    def seed_timestamps(self, max_timestamp: int | None, last_timestamp: int | None) -> None:
        """The commit points of a base state count as applied before this walk."""
        if max_timestamp is not None:
            self._ts_max[:] = (1, max_timestamp, last_timestamp or 0)

    def _compact_open(self, n: int) -> np.ndarray:
        s_txn, s_open, s_cstart, s_ccount, s_head, s_tail, _s_bepoch = self._slots
        out = np.empty(n, np.int64)
        m = _open_records(s_open, s_cstart, s_ccount, s_head, self._stack, self._top,
                          self._next, out)
        keep = self._stack[: self._top][s_open[self._stack[: self._top]]]
        for a in self._slots:  # the open ones to the front, in stack order
            a[: len(keep)] = a[keep]
        self._stack[: len(keep)] = np.arange(len(keep))
        self._top = len(keep)
        return out[:m]


#: ``open_begin_epochs`` of a transaction whose begin this walk did not read.
UNKNOWN_BEGIN = np.uint64(2**64 - 1)


def _empty_slots(cap):
    return (
        np.zeros(cap, np.uint64),
        np.zeros(cap, np.bool_),
        np.zeros(cap, np.int64),
        np.zeros(cap, np.int64),
        np.full(cap, -1, np.int64),
        np.full(cap, -1, np.int64),
        np.full(cap, UNKNOWN_BEGIN, np.uint64),  # the epoch (restarts read) at its begin
    )


def _grown_slots(slots, cap):
    grown = _empty_slots(max(cap, len(slots[0])))
    k = len(slots[0])
    for new, old in zip(grown, slots, strict=True):
        new[:k] = old
    return grown
