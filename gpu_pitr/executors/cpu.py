"""The CPU executor: Numba ``njit`` loops over the shared payload parser.

Decode runs in parallel over records (``prange``); last-writer-wins is the
host map of ``gpu_pitr.resolve.hostmap`` applied in apply order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gpu_pitr.format.layout import BATCH, RECORD_HEADER_SIZE
from gpu_pitr.format.payload import (
    ERR_DEPTH,
    MAX_BATCH_DEPTH,
    OK,
    decode_record,
    parse_payload,
    record_columns,
    stack_for,
)
from gpu_pitr.index import RestoredIndex
from gpu_pitr.jit import NO_REFCOUNTS, njit, prefetch
from gpu_pitr.resolve.hostmap import HostMap, fill_counters
from gpu_pitr.resolve.idsort import sorted_id_order

_BLOCK = 1024
# How many records ahead the decode starts loading a record's bytes. 1 GiB
# benchmark log, 2-vCPU VM, minimum of 6 restores: decode 0.35-0.40 s when it
# loaded a byte of the record 2 on (without waiting for it), 0.22-0.25 s with
# prefetches 4, 8 or 16 records on (llvm.prefetch).
_AHEAD = 8


@njit(cache=True, nogil=True, inline="always")
def _record(
    buf, start, n, i, stack, entries, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    # Record i, payload buf[start:start+n]; entries=False: its record columns only.
    if entries:
        decode_record(
            buf, start, start + n, i, stack, status, kind, ts, aux, nent, stop,
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )
    else:
        record_columns(
            buf, start, start + n, i, stack, False, status, kind, ts, aux, nent, stop,
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )


@njit(cache=True, nogil=True, inline="always")
def _decode_range(
    buf, lo, hi, off, length, stack, entries, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    for i in range(lo, hi):
        # A record _AHEAD on starts loading (its first two cache lines and its
        # last, where the metadata is) while this one is parsed: a sequential
        # walk that skips each vector's bytes is not one the hardware follows.
        j = i + _AHEAD
        if j < hi:
            start = off[j] + RECORD_HEADER_SIZE
            prefetch(buf, start)
            prefetch(buf, start + 64)
            prefetch(buf, start + length[j] - 1)
        _record(
            buf, off[i] + RECORD_HEADER_SIZE, length[i], i, stack, entries,
            status, kind, ts, aux, nent, stop,
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )


@njit(cache=True, parallel=True, nogil=True, **NO_REFCOUNTS)
def _decode_records(
    buf, first, n, off, length, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key, entries,
    stacks,
):
    # entries=False: the record columns only (records past the stop point).
    # stacks: one batch stack per block of records.
    n_blocks = (n - first + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        _decode_range(
            buf, first + b * _BLOCK, min(n, first + (b + 1) * _BLOCK), off, length,
            stacks[b], entries, status, kind, ts, aux, nent, stop,
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _decode_block(
    buf, first, n, off, length, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key, entries,
    stacks,
):
    # _decode_records of at most one block, on this thread: waking the parallel
    # loop's thread team cost ~130 us a call, 100 times a one-record piece's decode
    # (verify of 5,000 one-record segments: 0.68 of its 1.0 s).
    _decode_range(
        buf, first, n, off, length, stacks[0], entries, status, kind, ts, aux, nent, stop,
        e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
    )


@njit(cache=True, nogil=True)
def _decode_deep(
    buf, deep, off, length, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key, entries,
):
    # Records nested deeper than the first pass's stack, with a stack that fits.
    for j in range(len(deep)):
        i = deep[j]
        # Deeper stacks until one suffices (``statwalk`` does the same): stack_for's
        # bound at once is 4 bytes of stack a byte of payload, allocated whatever the
        # depth (see _decode_batches).
        most = stack_for(length[i])
        size = MAX_BATCH_DEPTH
        while True:
            size = min(size * 64, most)
            _record(
                buf, off[i] + RECORD_HEADER_SIZE, length[i], i, np.empty(size, np.int64),
                entries, status, kind, ts, aux, nent, stop,
                e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
            )
            if status[i] != ERR_DEPTH or size >= most:
                break


@njit(cache=True, nogil=True)
def _decode_batches(
    buf, batches, off, length, efirst,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    # The first pass's stack suffices for a batch it decoded (a deeper one, decoded by
    # _decode_deep, parses again with deeper stacks): a stack of stack_for(length) for
    # every batch was 4 bytes a byte of its payload, 8.7 GB for a 2.2 GB batch of
    # 540,000 inserts, and a restore under a 10 GB address-space limit ran out of memory.
    shallow = np.empty(MAX_BATCH_DEPTH, np.int64)
    for j in range(len(batches)):
        i = batches[j]
        start = off[i] + RECORD_HEADER_SIZE
        most = stack_for(length[i])
        stack = shallow
        while True:
            status = parse_payload(
                buf, start, start + length[i], stack, True, efirst[i],
                e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
            )[0]
            if status != ERR_DEPTH or stack.shape[0] >= most:
                break
            stack = np.empty(min(stack.shape[0] * 64, most), np.int64)


def entry_slots(cols, first: int, n: int) -> np.ndarray:
    """Assign entry slots: record i's own slot, batches after the records.

    Returns the indices of the batch records that still need their entries
    written (``efirst`` is set for every record of ``first..n-1``).
    """
    batches = np.empty(max(n - first, 0), np.int64)
    nb, extra = _entry_slots(cols.kind, cols.status, cols.nent, cols.efirst, first, n,
                             batches)
    cols.ensure_entries(n + extra)
    return batches[:nb]


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _entry_slots(kind, status, nent, efirst, first, n, batches):
    # One pass (as NumPy, five: 11 ms of a restore of the 1 GiB benchmark log on its
    # main thread). Returns (batch records listed, entry slots past n they take).
    nb = 0
    extra = 0
    for i in range(first, n):
        if kind[i] == BATCH and status[i] == OK:
            batches[nb] = i
            nb += 1
            efirst[i] = n + extra
            extra += nent[i]
        else:
            efirst[i] = i
    return nb, extra


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def count_deep(status, first, n):
    # How many of records first..n-1 are nested deeper than the first pass's stack.
    count = 0
    for i in range(first, n):
        count += status[i] == ERR_DEPTH
    return count


class CpuExecutor:
    """Decode and apply on the host; the restored index lives in NumPy arrays."""

    name = "cpu"

    def __init__(self, total_bytes: int) -> None:
        self.map = HostMap(total_bytes)

    def close(self) -> None:
        """End the map's threads (a restore that stopped before ``finish``)."""
        self.map.close()

    def decode(self, buf: np.ndarray, cols, first: int, n: int) -> None:
        """Decode records ``first..n-1`` of ``buf`` (framed in ``cols``)."""
        self._records(buf, cols, first, n, True)
        batches = entry_slots(cols, first, n)
        if len(batches):
            _decode_batches(
                buf, batches, cols.off, cols.length, cols.efirst,
                cols.e_op, cols.e_id_off, cols.e_id_len, cols.e_vec_off, cols.e_dim,
                cols.e_meta_off, cols.e_meta_len, cols.e_key,
            )

    def check(self, buf: np.ndarray, cols, first: int, n: int) -> None:
        """``decode`` of records that will never be applied (past the stop point):
        their record columns (status, variant, where the entry ends), no entries,
        no id keys. About half the work."""
        self._records(buf, cols, first, n, False)

    def _records(self, buf, cols, first: int, n: int, entries: bool) -> None:
        cols.ensure_entries(n)
        args = (cols.off, cols.length, cols.status, cols.kind, cols.ts, cols.aux, cols.nent,
                cols.stop, cols.e_op, cols.e_id_off, cols.e_id_len, cols.e_vec_off,
                cols.e_dim, cols.e_meta_off, cols.e_meta_len, cols.e_key, entries)
        blocks = (n - first + _BLOCK - 1) // _BLOCK
        decode = _decode_records if blocks > 1 else _decode_block
        decode(buf, first, n, *args, np.empty((max(blocks, 1), MAX_BATCH_DEPTH), np.int64))
        if count_deep(cols.status, first, n):
            deep = np.flatnonzero(cols.status[first:n] == ERR_DEPTH) + first
            _decode_deep(buf, deep, *args)

    def apply(self, buf: np.ndarray, cols, order: np.ndarray, on_dim_mismatch) -> None:
        self.map.apply(buf, order, cols, on_dim_mismatch)

    def live_ids(self) -> int:
        """How many ids the executor holds now."""
        return self.map.live_ids()

    @property
    def id_shard(self):
        """The ``IdShard`` whose ids alone are applied (None: every id)."""
        return self.map.id_shard

    def keep_id_shard(self, shard) -> None:
        """Apply only the entries of the ids of ``shard`` (an ``IdShard``) from now on."""
        self.map.id_shard = shard

    def fix_dim(self, dim: int) -> None:
        """The index dimension, known before any record (from a base snapshot)."""
        if self.map.dim < 0:
            self.map.set_dim(dim)

    def seed(self, snap, rows: np.ndarray, keys: np.ndarray) -> None:
        """Base snapshot ``rows`` into the map as they are, counting nothing (they are
        not the log's inserts); ``keys``: every base row's id key."""
        self.map.seed(rows, keys, snap.id_arena, snap.id_offs, snap.id_lens, snap.vectors,
                      snap.meta_arena, snap.meta_offs, snap.meta_lens)

    def finish(self, report) -> RestoredIndex:
        """Sort by id, compact the rows in place and hand over the index."""
        index, _ = self._finish(report, permute=True)
        return index

    def finish_unmoved(self, report) -> tuple[RestoredIndex, np.ndarray]:
        """``(index, row_of)``: ``finish`` with the vectors left where they are, for a
        caller that copies them elsewhere anyway (``LazyBase.merge``): ``index.vectors``
        holds every row used and id ``k``'s vector is row ``row_of[k]`` of it."""
        return self._finish(report, permute=False)

    def _finish(self, report, permute: bool):
        m = self.map
        *cols, row_of = m.result(sorted_id_order, permute=permute)
        fill_counters(report, m.counters, len(cols[1]), m.dim)
        return RestoredIndex(*cols, report), row_of
