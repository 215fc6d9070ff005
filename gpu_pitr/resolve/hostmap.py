"""Last-writer-wins state on the host: an exact id -> row map, rows and arenas.

Entries are applied one by one in apply order (SPEC section 3: insert, update
with the metadata rule, delete), so the latest writer of every id wins. The map
is open addressing keyed by a 64-bit hash of the id; a hit is confirmed by
comparing the id bytes, so two different ids never merge whatever their hash.

Each compiled step returns instead of allocating when something must grow; the
Python side grows that array and resumes at the same entry.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpu_pitr.format.layout import DELETE, INSERT

# Results of _apply.
DONE = 0
NEED_ROWS = 1
NEED_MAP = 2
NEED_IDS = 3
NEED_META = 4
NEED_DIM = 5
DIM_MISMATCH = 6

# Counter slots.
C_INSERTS = 0
C_UPDATES = 1
C_UPDATES_MISSING = 2
C_DELETES = 3
C_DELETES_MISSING = 4
N_COUNTERS = 5


@njit(cache=True, nogil=True, inline="always")
def _same_bytes(a, a_off, b, b_off, n):
    for k in range(n):
        if a[a_off + k] != b[b_off + k]:
            return False
    return True


@njit(cache=True, nogil=True)
def _find(buf, off, n, key, h_key, h_row, row_id_off, row_id_len, ids):
    """Slot of the id ``buf[off:off+n]`` in the map, and its row (-1 if absent)."""
    mask = np.uint64(len(h_row) - 1)
    s = np.int64(key & mask)
    while True:
        r = h_row[s]
        if r < 0:
            return s, -1
        if h_key[s] == key and row_id_len[r] == n and _same_bytes(ids, row_id_off[r], buf, off, n):
            return s, r
        s = np.int64((np.uint64(s) + np.uint64(1)) & mask)


@njit(cache=True, nogil=True)
def _remove_slot(i, h_key, h_row):
    """Delete slot ``i`` of a linear-probing map, shifting later entries back."""
    mask = len(h_row) - 1
    j = i
    while True:
        j = (j + 1) & mask
        if h_row[j] < 0:
            break
        home = np.int64(h_key[j] & np.uint64(mask))
        # The entry at j may move to i only if its home is not cyclically in (i, j].
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            h_key[i] = h_key[j]
            h_row[i] = h_row[j]
            i = j
    h_row[i] = -1


@njit(cache=True, nogil=True)
def _apply(
    buf, order, k0, e0, efirst, nent,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
    dim, rows, h_key, h_row, row_id_off, row_id_len, row_meta_off, row_meta_len, row_key,
    n_rows, free, n_free, ids, ids_used, meta, meta_used, n_live, counters,
):
    """Apply entries in apply order from ``order[k0]``'s entry ``e0`` on.

    Returns ``(result, k, e, n_rows, n_free, ids_used, meta_used, n_live)``;
    ``k``/``e`` say where to resume (or which entry differs in dimension).
    """
    cap_rows = rows.shape[0]
    for k in range(k0, len(order)):
        r = order[k]
        first = efirst[r] if k > k0 else max(efirst[r], e0)
        for e in range(first, efirst[r] + nent[r]):
            op = e_op[e]
            off = e_id_off[e]
            n = e_id_len[e]
            if op != DELETE:
                if dim < 0:
                    return NEED_DIM, k, e, n_rows, n_free, ids_used, meta_used, n_live
                if e_dim[e] != dim:
                    return DIM_MISMATCH, k, e, n_rows, n_free, ids_used, meta_used, n_live
                if meta_used + e_meta_len[e] > len(meta):
                    return NEED_META, k, e, n_rows, n_free, ids_used, meta_used, n_live
            s, row = _find(buf, off, n, e_key[e], h_key, h_row, row_id_off, row_id_len, ids)
            if op == DELETE:
                counters[C_DELETES] += 1
                if row < 0:
                    counters[C_DELETES_MISSING] += 1
                    continue
                _remove_slot(s, h_key, h_row)
                row_id_len[row] = -1
                free[n_free] = row
                n_free += 1
                n_live -= 1
                continue
            if row < 0:
                if n_free == 0 and n_rows == cap_rows:
                    return NEED_ROWS, k, e, n_rows, n_free, ids_used, meta_used, n_live
                if 2 * (n_live + 1) > len(h_row):
                    return NEED_MAP, k, e, n_rows, n_free, ids_used, meta_used, n_live
                if ids_used + n > len(ids):
                    return NEED_IDS, k, e, n_rows, n_free, ids_used, meta_used, n_live
                if n_free > 0:
                    n_free -= 1
                    row = free[n_free]
                else:
                    row = n_rows
                    n_rows += 1
                ids[ids_used:ids_used + n] = buf[off:off + n]
                row_id_off[row] = ids_used
                row_id_len[row] = n
                row_key[row] = e_key[e]
                ids_used += n
                h_key[s] = e_key[e]
                h_row[s] = row
                n_live += 1
                row_meta_off[row] = -1
                row_meta_len[row] = 0
                if op != INSERT:
                    counters[C_UPDATES_MISSING] += 1
            counters[C_INSERTS if op == INSERT else C_UPDATES] += 1
            v = e_vec_off[e]
            rows[row, :] = buf[v:v + 4 * dim]
            m = e_meta_off[e]
            if m >= 0:
                ml = e_meta_len[e]
                meta[meta_used:meta_used + ml] = buf[m:m + ml]
                row_meta_off[row] = meta_used
                row_meta_len[row] = ml
                meta_used += ml
            elif op == INSERT:
                row_meta_off[row] = -1
                row_meta_len[row] = 0
    return DONE, len(order), 0, n_rows, n_free, ids_used, meta_used, n_live


@njit(cache=True, nogil=True)
def _rehash(cap, n_rows, row_id_len, row_key):
    h_key = np.zeros(cap, np.uint64)
    h_row = np.full(cap, -1, np.int64)
    mask = np.uint64(cap - 1)
    for r in range(n_rows):
        if row_id_len[r] < 0:
            continue
        s = row_key[r] & mask
        while h_row[s] >= 0:
            s = (s + np.uint64(1)) & mask
        h_key[s] = row_key[r]
        h_row[s] = r
    return h_key, h_row


@njit(cache=True, nogil=True)
def _permute_rows_in_place(rows, perm):
    """``rows[t] = rows_before[perm[t]]`` for every t, with one spare row."""
    n = len(perm)
    done = np.zeros(n, np.bool_)
    tmp = np.empty(rows.shape[1], rows.dtype)
    for start in range(n):
        if done[start] or perm[start] == start:
            done[start] = True
            continue
        tmp[:] = rows[start]
        t = start
        while True:
            done[t] = True
            src = perm[t]
            if src == start:
                rows[t] = tmp
                break
            rows[t] = rows[src]
            t = src


def _grow(a: np.ndarray, n: int, fill=None) -> np.ndarray:
    out = np.empty((n,) + a.shape[1:], a.dtype) if fill is None else np.full(
        (n,) + a.shape[1:], fill, a.dtype)
    out[: len(a)] = a
    return out


class HostMap:
    """The index being restored, in host memory (the CPU executor's state)."""

    def __init__(self, total_bytes: int) -> None:
        self.dim = -1
        self._total_bytes = int(total_bytes)
        self.rows = np.empty((0, 0), np.uint8)
        self.n_rows = 0
        self.n_live = 0
        self.h_key = np.zeros(1024, np.uint64)
        self.h_row = np.full(1024, -1, np.int64)
        self.row_id_off = np.empty(0, np.int64)
        self.row_id_len = np.empty(0, np.int64)
        self.row_meta_off = np.empty(0, np.int64)
        self.row_meta_len = np.empty(0, np.int64)
        self.row_key = np.empty(0, np.uint64)
        self.free = np.empty(0, np.int64)
        self.n_free = 0
        self.ids = np.empty(1 << 16, np.uint8)
        self.ids_used = 0
        self.meta = np.empty(1 << 16, np.uint8)
        self.meta_used = 0
        self.counters = np.zeros(N_COUNTERS, np.int64)

    def _grow_rows(self, cap: int) -> None:
        old = self.rows
        self.rows = np.empty((cap, 4 * max(self.dim, 0)), np.uint8)
        if self.n_rows:
            self.rows[: self.n_rows] = old[: self.n_rows]
        del old
        self.row_id_off = _grow(self.row_id_off, cap)
        self.row_id_len = _grow(self.row_id_len, cap, -1)
        self.row_meta_off = _grow(self.row_meta_off, cap)
        self.row_meta_len = _grow(self.row_meta_len, cap)
        self.row_key = _grow(self.row_key, cap)
        self.free = _grow(self.free, cap)

    def set_dim(self, dim: int) -> None:
        """Fix the dimension and reserve rows for the most vectors the log can hold.

        Every record carrying a vector takes at least ``4 * dim + 17`` bytes, so
        that bound never needs growing; ``np.empty`` pages that are never
        written cost no memory.
        """
        self.dim = int(dim)
        self._grow_rows(self._total_bytes // (4 * self.dim + 17) + 16)

    def apply(self, buf, order, ent, on_dim_mismatch) -> None:
        """Apply the entries of the records in ``order`` (an apply order).

        ``ent`` is the decoded chunk (``efirst``, ``nent`` and the ``e_*`` columns);
        ``on_dim_mismatch(record_index, entry_index, dim)`` raises.
        """
        k, e = 0, 0
        while True:
            res, k, e, self.n_rows, self.n_free, self.ids_used, self.meta_used, self.n_live = (
                _apply(
                    buf, order, k, e, ent.efirst, ent.nent,
                    ent.e_op, ent.e_id_off, ent.e_id_len, ent.e_vec_off, ent.e_dim,
                    ent.e_meta_off, ent.e_meta_len, ent.e_key,
                    self.dim, self.rows, self.h_key, self.h_row, self.row_id_off,
                    self.row_id_len, self.row_meta_off, self.row_meta_len, self.row_key,
                    self.n_rows, self.free, self.n_free, self.ids, self.ids_used,
                    self.meta, self.meta_used, self.n_live, self.counters,
                )
            )
            if res == DONE:
                return
            if res == NEED_DIM:
                self.set_dim(int(ent.e_dim[e]))
            elif res == DIM_MISMATCH:
                on_dim_mismatch(int(order[k]), int(e), self.dim)
            elif res == NEED_ROWS:
                self._grow_rows(max(16, self.rows.shape[0] + self.rows.shape[0] // 2))
            elif res == NEED_MAP:
                self.h_key, self.h_row = _rehash(
                    2 * len(self.h_row), self.n_rows, self.row_id_len, self.row_key)
            elif res == NEED_IDS:
                self.ids = _grow(self.ids, 2 * len(self.ids) + int(ent.e_id_len[e]))
            elif res == NEED_META:
                self.meta = _grow(self.meta, 2 * len(self.meta) + int(ent.e_meta_len[e]))

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.row_id_len[: self.n_rows] >= 0)

    def compact_sorted(self, order_of_ids) -> tuple[np.ndarray, np.ndarray]:
        """Move the live rows, sorted by id bytes, to the front of ``rows``.

        ``order_of_ids(ids, offsets, lengths)`` returns the sorting permutation.
        Returns ``(vectors, live)``: the float32 view ``[n, dim]`` and the original
        row of each output row.
        """
        live = self.live_rows()
        offs = self.row_id_off[live]
        lens = self.row_id_len[live]
        order = order_of_ids(self.ids, offs, lens)
        live = live[order]
        dead = np.flatnonzero(self.row_id_len[: self.n_rows] < 0)
        perm = np.concatenate([live, dead])
        if self.dim >= 0 and self.n_rows:
            _permute_rows_in_place(self.rows, perm)
        if self.dim <= 0:
            return np.zeros((len(live), max(self.dim, 0)), np.float32), live
        return self.rows[: len(live)].view("<f4").reshape(len(live), self.dim), live


def fill_counters(report, counters, n_ids: int, dim: int) -> None:
    """Copy the apply counters and the index shape into the report."""
    report.inserts = int(counters[C_INSERTS])
    report.updates = int(counters[C_UPDATES])
    report.updates_of_missing = int(counters[C_UPDATES_MISSING])
    report.deletes = int(counters[C_DELETES])
    report.deletes_of_missing = int(counters[C_DELETES_MISSING])
    report.ids = int(n_ids)
    report.dim = int(dim) if dim >= 0 else None
