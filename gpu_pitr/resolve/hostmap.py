"""Last-writer-wins state on the host: an exact id -> row map, rows and arenas.

Entries are applied one by one in apply order (SPEC section 3: insert, update
with the metadata rule, delete), so the latest writer of every id wins. The map
is open addressing keyed by a 64-bit hash of the id; a hit is confirmed by
comparing the id bytes, so two different ids never merge whatever their hash. Homes
are seeded per process and ids of one key past the first are entered by a seeded
hash of their bytes (``_find``): ids are chosen by the store's users, and ids chosen
to share a key or a home made every probe walk all of them (64k ids of one key: 18 s).

Each compiled step returns instead of allocating when something must grow; the
Python side grows that array and resumes at the same entry.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import prange

from gpu_pitr.format.layout import DELETE, INSERT
from gpu_pitr.format.payload import read_uint_le
from gpu_pitr.homes import HOME_SEED, seeded_bytes_key, seeded_home
from gpu_pitr.hostmem import aligned_empty, copy_releasing, join_releasing
from gpu_pitr.jit import (
    NO_REFCOUNTS,
    PREFETCH_AHEAD,
    njit,
    prefetch,
    prefetch_lines,
    store_fence,
    stream_copy,
)
from gpu_pitr.resolve.idshard import first_vector_dims, in_id_shard
from gpu_pitr.resolve.idsort import span_keys

# Results of _apply.
DONE = 0
NEED_ROWS = 1
NEED_MAP = 2
NEED_IDS = 3
NEED_META = 4
NEED_DIM = 5
DIM_MISMATCH = 6
SEEN = 7  # _seed: the id is in the map already

# Counter slots.
C_INSERTS = 0
C_UPDATES = 1
C_UPDATES_MISSING = 2
C_DELETES = 3
C_DELETES_MISSING = 4
N_COUNTERS = 5


@njit(cache=True, nogil=True, inline="always")
def _same_bytes(a, a_off, b, b_off, n):
    x = a[a_off:a_off + n]
    y = b[b_off:b_off + n]
    k = 0
    # 8 bytes a compare (one load each once compiled). idsort.compare_ids skips equal
    # words the same way; sharing its loop here changed _apply's register allocation
    # and cost 2-5% of apply time (alternated pairs), so the two stay apart.
    while k + 8 <= n:
        if read_uint_le(x, k, 8) != read_uint_le(y, k, 8):
            return False
        k += 8
    while k < n:
        if x[k] != y[k]:
            return False
        k += 1
    return True


# A map slot: the id's key (int64 bits) and its row + 1 (0: empty, so a fresh
# table is lazily zeroed memory), side by side so a probe touches one cache line.
S_KEY = 0
S_ROW = 1
SLOT = 2
# S_ROW of a mark: ids of this key past the first are entered by their spill key.
MARK = -1
# _find's row for an absent id whose key another id holds, unmarked: it goes in by its
# spill key once the key is marked (``_mark``).
MUST_MARK = -2


@njit(cache=True, nogil=True, inline="always")
def _find(buf, off, n, key, h, ids, row_id_off, row_id_len, seed):
    """The id ``buf[off:off+n]`` of ``key`` in the map: ``(slot, row, slot_key)``.

    Its row, or -1 if absent (MUST_MARK: absent, and ``_mark`` must enter it); its
    slot, or the empty slot it goes in; and the key it is entered by there. That is
    ``key``, or, for an id of a key that holds a mark, its spill key: a seeded hash
    of its bytes (``homes.seeded_bytes_key``), so that the ids of one key do not make
    one run every probe walks (a chosen key's ids are cheap to make, the key's hash is
    public). The key's whole run is searched: the id may be past the mark.
    """
    return _find_from(seeded_home(key, h.shape[0] - 1, seed), buf, off, n, key, h, ids,
                      row_id_off, row_id_len, seed)


@njit(cache=True, nogil=True, inline="always")
def _find_from(s, buf, off, n, key, h, ids, row_id_off, row_id_len, seed):
    """``_find``, ``s`` the key's home (computed already)."""
    mask = h.shape[0] - 1
    marked = other = False
    while True:
        v = h[s, S_ROW]
        if v == 0:
            break
        if h[s, S_KEY] == key:
            if v == MARK:
                marked = True
            elif row_id_len[v - 1] == n and _same_bytes(ids, row_id_off[v - 1], buf, off, n):
                return s, v - 1, key
            else:
                other = True
        s = (s + 1) & mask
    if not marked:
        return s, MUST_MARK if other else -1, key
    spill = seeded_bytes_key(buf, off, n, seed)
    s = seeded_home(spill, mask, seed)
    while True:
        v = h[s, S_ROW]
        if v == 0:
            return s, -1, spill
        if (h[s, S_KEY] == spill and v != MARK and row_id_len[v - 1] == n
                and _same_bytes(ids, row_id_off[v - 1], buf, off, n)):
            return s, v - 1, spill
        s = (s + 1) & mask


@njit(cache=True, nogil=True)
def _mark(s, key, h, buf, off, n, seed, marks):
    """Mark ``key`` in the empty slot ``s`` its run ends at (_find's MUST_MARK): its
    ids from now on are entered by their spill keys, and the absent id ``buf[off:
    off+n]`` with them. Returns ``(slot, slot_key)`` for it, as ``_find`` would."""
    h[s, S_KEY] = key
    h[s, S_ROW] = MARK
    marks[0] += 1
    mask = h.shape[0] - 1
    spill = seeded_bytes_key(buf, off, n, seed)
    s = seeded_home(spill, mask, seed)
    while h[s, S_ROW] != 0:
        s = (s + 1) & mask
    return s, spill


@njit(cache=True, nogil=True)
def _remove_slot(i, h, seed):
    """Delete slot ``i`` of a linear-probing map, shifting later entries back."""
    mask = h.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if h[j, S_ROW] == 0:
            break
        home = seeded_home(h[j, S_KEY], mask, seed)
        # The entry at j may move to i only if its home is not cyclically in (i, j].
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            h[i, S_KEY] = h[j, S_KEY]
            h[i, S_ROW] = h[j, S_ROW]
            i = j
    h[i, S_ROW] = 0


# Shards own blocks of this many consecutive rows: two threads never write
# the same cache line of the index.
ROW_BLOCK = 64


@njit(cache=True, nogil=True, inline="always")
def global_row(i, shard, n_shards):
    """Row of the index that is local row ``i`` of ``shard``."""
    return (i // ROW_BLOCK) * (n_shards * ROW_BLOCK) + shard * ROW_BLOCK + i % ROW_BLOCK


@njit(cache=True, nogil=True, inline="always")
def _copy(dst, d, src, s, n):
    # Indexing views from 0 lets the compiler drop the negative-index checks
    # and vectorise: five times faster than indexing ``dst[d + k]``.
    a = dst[d:d + n]
    b = src[s:s + n]
    for k in range(n):
        a[k] = b[k]


@njit(cache=True, nogil=True, inline="always")
def shard_of(key, n_shards):
    """The shard that owns the id with this key (its bits 32 and up): ``_apply`` and
    ``_seed`` must agree on it."""
    return (key >> 32) & (n_shards - 1)


@njit(cache=True, nogil=True, inline="always")
def _room(n, n_rows, n_free, ids_used, n_live, ids_cap, slots, cap_rows, shard, n_shards,
          marks):
    """What must grow before a new id of ``n`` bytes gets a row (DONE: nothing); the map
    keeps room for it and a mark."""
    if n_free == 0 and global_row(n_rows, shard, n_shards) >= cap_rows:
        return NEED_ROWS
    if 2 * (n_live + marks[0] + 2) > slots:
        return NEED_MAP
    if ids_used + n > ids_cap:
        return NEED_IDS
    return DONE


@njit(cache=True, nogil=True, inline="always")
def _new_row(src, off, n, key, s, h, row_id_off, row_id_len, row_meta_off, row_meta_len,
             row_key, n_rows, free, n_free, ids, ids_used, n_live):
    """A row (a free one first) for the id ``src[off:off+n]``, entered in map slot
    ``s`` by ``key`` (kept in ``row_key``: a larger map enters it again by it), without
    metadata. Returns ``(row, n_rows, n_free, ids_used, n_live)``."""
    if n_free > 0:
        n_free -= 1
        row = free[n_free]
    else:
        row = n_rows
        n_rows += 1
    _copy(ids, ids_used, src, off, n)
    row_id_off[row] = ids_used
    row_id_len[row] = n
    row_key[row] = key
    h[s, S_KEY] = key
    h[s, S_ROW] = row + 1
    ids_used += n
    n_live += 1
    row_meta_off[row] = -1
    row_meta_len[row] = 0
    return row, n_rows, n_free, ids_used, n_live


# How many of a shard's own entries ahead the apply asks for: the map slot of
# an entry's id, then (once the slot is in) its row's spans and vector row and the
# entry's vector bytes, then the row's id bytes (8/4/2, 12/6/3 and 16/8/4 were within the
# noise of each other: 10 alternated restores of the 1 GiB benchmark log).
AHEAD_SLOT = 8
AHEAD_ROW = 4
AHEAD_ID = 2


@njit(cache=True, nogil=True, inline="always")
def _slot_row(key, s, h):
    # The row the map's slot ``s`` (the home of ``key``) names if it holds that key (a
    # hint's guess: a probe may go further), else negative.
    if h[s, S_KEY] == key:
        return h[s, S_ROW] - 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _own_entries(order, k0, e0, efirst, nent, e_key, shard, n_shards, id_index, id_count,
                 mine, mine_k):
    """The entries of ids in ``shard`` (and in shard ``id_index`` of ``id_count`` of
    the ids, ``resolve.idshard``: all of them for 0 of 1) from ``order[k0]``'s entry
    ``e0`` on, in apply order, into ``mine`` (and the index in ``order`` of each one's
    record into ``mine_k``); returns how many. Branch-free: every entry is written,
    and kept by counting it only if the shard owns it."""
    m = 0
    for k in range(k0, len(order)):
        r = order[k]
        first = efirst[r] if k > k0 else max(efirst[r], e0)
        for e in range(first, efirst[r] + nent[r]):
            mine[m] = e
            mine_k[m] = k
            key = e_key[e]
            m += (shard_of(key, n_shards) == shard) & in_id_shard(key, id_index, id_count)
    return m


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _apply(
    buf, order, k0, e0, efirst, nent,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
    dim, rows, h, row_id_off, row_id_len, row_meta_off, row_meta_len, row_key,
    n_rows, free, n_free, ids, ids_used, meta, meta_used, n_live, counters,
    shard, n_shards, id_index, id_count, stream, mine, mine_k, homes, marks, seed,
):
    """Apply, in apply order from ``order[k0]``'s entry ``e0`` on, the entries of
    ids in ``shard`` (of ``n_shards``, chosen by key bits: an id's entries all
    fall in one shard, so shards run in parallel in any order between them).

    The shard first lists its own entries (``_own_entries``, into the scratch
    ``mine``/``mine_k``, each as long as the chunk's entry columns, and ``homes``, the
    home of each one's key, as it asks for its slot), then walks only those: no
    branch on whose entry it is, and the probes of its entries AHEAD_* on are asked
    for exactly (the decode skipped the vectors' bytes, and a shard reads the chunk's
    vectors with gaps no hardware stride follows).

    The ``row_*`` columns, ``free``, ``h`` and ``marks`` (how many keys ``h`` holds a
    mark of) are the shard's own, indexed by its local row ``i``; its vectors are in
    ``rows[global_row(i, ...)]``. ``seed``: ``homes.HOME_SEED``.
    Returns ``(result, k, e, n_rows, n_free, ids_used, meta_used, n_live)``;
    ``k``/``e`` say where to resume (or which entry differs in dimension).
    ``stream``: rows are whole cache lines, aligned; vectors go in with
    non-temporal stores (the caller fences them).
    """
    cap_rows = rows.shape[0]
    width = 4 * dim
    n_mine = _own_entries(order, k0, e0, efirst, nent, e_key, shard, n_shards, id_index,
                          id_count, mine, mine_k)
    mask = h.shape[0] - 1
    for j in range(min(AHEAD_SLOT, n_mine)):
        homes[j] = seeded_home(e_key[mine[j]], mask, seed)
    for j in range(n_mine):
        if j + AHEAD_SLOT < n_mine:  # the probes of later entries
            # (Each home computed once, here, and kept for its three later uses.)
            home = seeded_home(e_key[mine[j + AHEAD_SLOT]], mask, seed)
            homes[j + AHEAD_SLOT] = home
            prefetch(h, SLOT * home)
            a = mine[j + AHEAD_ROW]
            row = _slot_row(e_key[a], homes[j + AHEAD_ROW], h)
            if row >= 0:
                prefetch(row_id_off, row)
                prefetch(row_id_len, row)
                prefetch(rows, global_row(row, shard, n_shards) * rows.shape[1])
            if e_op[a] != DELETE:
                prefetch_lines(buf, e_vec_off[a], width)
            row = _slot_row(e_key[mine[j + AHEAD_ID]], homes[j + AHEAD_ID], h)
            if row >= 0:
                prefetch(ids, row_id_off[row])
        e = mine[j]
        k = mine_k[j]
        key = e_key[e]
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
        s, row, key = _find_from(homes[j], buf, off, n, key, h, ids, row_id_off, row_id_len,
                                 seed)
        if op == DELETE:
            counters[C_DELETES] += 1
            if row < 0:
                counters[C_DELETES_MISSING] += 1
                continue
            _remove_slot(s, h, seed)
            row_id_len[row] = -1
            free[n_free] = row
            n_free += 1
            n_live -= 1
            continue
        if row < 0:
            need = _room(n, n_rows, n_free, ids_used, n_live, len(ids), h.shape[0],
                         cap_rows, shard, n_shards, marks)
            if need != DONE:
                return need, k, e, n_rows, n_free, ids_used, meta_used, n_live
            if row == MUST_MARK:
                s, key = _mark(s, key, h, buf, off, n, seed, marks)
            row, n_rows, n_free, ids_used, n_live = _new_row(
                buf, off, n, key, s, h, row_id_off, row_id_len, row_meta_off,
                row_meta_len, row_key, n_rows, free, n_free, ids, ids_used, n_live)
            if op != INSERT:
                counters[C_UPDATES_MISSING] += 1
        counters[C_INSERTS if op == INSERT else C_UPDATES] += 1
        g = global_row(row, shard, n_shards)
        if stream:
            stream_copy(rows[g], 0, buf, e_vec_off[e], width)
        else:
            _copy(rows[g], 0, buf, e_vec_off[e], width)
        m = e_meta_off[e]
        if m >= 0:
            ml = e_meta_len[e]
            _copy(meta, meta_used, buf, m, ml)
            row_meta_off[row] = meta_used
            row_meta_len[row] = ml
            meta_used += ml
        elif op == INSERT:
            row_meta_off[row] = -1
            row_meta_len[row] = 0
    return DONE, len(order), 0, n_rows, n_free, ids_used, meta_used, n_live


@njit(cache=True, nogil=True, inline="always")
def _prefetch_base_row(b, keys, src_ids, src_id_offs, src_vecs, src_meta, src_meta_offs,
                       shard, n_shards):
    # Base row b's id, vector and metadata bytes, if this shard owns its id: the rows
    # _seed copies are scattered over the base (those the log names), and their bytes
    # are in memory the hardware has no stride to follow through.
    if shard_of(keys[b], n_shards) == shard:
        prefetch(src_ids, src_id_offs[b])
        width = src_vecs.shape[1]
        prefetch_lines(src_vecs, b * width, width)
        if src_meta_offs[b] >= 0:
            prefetch(src_meta, src_meta_offs[b])


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _seed(
    take, j0, keys, src_ids, src_id_offs, src_id_lens, src_vecs, src_meta, src_meta_offs,
    src_meta_lens, rows, h, row_id_off, row_id_len, row_meta_off, row_meta_len, row_key,
    n_rows, free, n_free, ids, ids_used, meta, meta_used, n_live, shard, n_shards, marks,
    seed,
):
    """New rows for the ids ``take[j0:]`` of a base state (id, vector and metadata
    columns ``src_*``, id keys ``keys``) that fall in ``shard``, counting nothing:
    what applying them as inserts would do, without their records. No id may be
    in the map already (``SEEN``). Returns like ``_apply``, ``j`` for ``k``."""
    cap_rows = rows.shape[0]
    width = rows.shape[1]
    for j in range(j0, len(take)):
        if j + PREFETCH_AHEAD < len(take):  # a later row's columns, and nearer, its bytes
            b = take[j + PREFETCH_AHEAD]
            prefetch(keys, b)
            prefetch(src_id_offs, b)
            prefetch(src_meta_offs, b)
            _prefetch_base_row(take[j + PREFETCH_AHEAD // 2], keys, src_ids, src_id_offs,
                               src_vecs, src_meta, src_meta_offs, shard, n_shards)
        b = take[j]
        key = keys[b]
        if shard_of(key, n_shards) != shard:
            continue
        off = src_id_offs[b]
        n = src_id_lens[b]
        m = src_meta_offs[b]
        ml = src_meta_lens[b] if m >= 0 else 0
        if meta_used + ml > len(meta):
            return NEED_META, j, n_rows, n_free, ids_used, meta_used, n_live
        s, row, key = _find(src_ids, off, n, key, h, ids, row_id_off, row_id_len, seed)
        if row >= 0:
            return SEEN, j, n_rows, n_free, ids_used, meta_used, n_live
        need = _room(n, n_rows, n_free, ids_used, n_live, len(ids), h.shape[0], cap_rows,
                     shard, n_shards, marks)
        if need != DONE:
            return need, j, n_rows, n_free, ids_used, meta_used, n_live
        if row == MUST_MARK:
            s, key = _mark(s, key, h, src_ids, off, n, seed, marks)
        row, n_rows, n_free, ids_used, n_live = _new_row(
            src_ids, off, n, key, s, h, row_id_off, row_id_len, row_meta_off, row_meta_len,
            row_key, n_rows, free, n_free, ids, ids_used, n_live)
        _copy(rows[global_row(row, shard, n_shards)], 0, src_vecs[b], 0, width)
        if m >= 0:
            _copy(meta, meta_used, src_meta, m, ml)
            row_meta_off[row] = meta_used
            row_meta_len[row] = ml
            meta_used += ml
    return DONE, len(take), n_rows, n_free, ids_used, meta_used, n_live


@njit(cache=True, nogil=True)
def _compact_arena(arena, offs, lens, live, n_rows, used):
    """Move the spans of live rows to the front of ``arena`` (of which ``used`` bytes
    are taken), in place; returns the bytes used. A span is only ever moved down, in
    order of its offset. When the live spans are all ``used`` holds, nothing moves (a
    log of inserts alone: the sort below took 2% of a restore of 5M ids)."""
    m = 0
    live_bytes = 0
    for r in range(n_rows):
        if live[r] >= 0 and offs[r] >= 0:
            m += 1
            live_bytes += lens[r]
    if live_bytes == used:  # spans never overlap: they tile the used bytes already
        return used
    rows = np.empty(m, np.int64)
    starts = np.empty(m, np.int64)
    m = 0
    for r in range(n_rows):
        if live[r] >= 0 and offs[r] >= 0:
            rows[m] = r
            starts[m] = offs[r]
            m += 1
    w = 0
    for j in np.argsort(starts):
        r = rows[j]
        o = offs[r]
        n = lens[r]
        if o != w:
            for k in range(n):
                arena[w + k] = arena[o + k]
            offs[r] = w
        w += n
    return w


@njit(cache=True, nogil=True, inline="always")
def _enter_at(h, s, key, v, mask):
    # ``(key, v)`` into the first empty slot from the key's home ``s``.
    while h[s, S_ROW] != 0:
        s = (s + 1) & mask
    h[s, S_KEY] = key
    h[s, S_ROW] = v


@njit(cache=True, nogil=True)
def _rehash_into(h, n_rows, row_id_len, row_key, old, marks, seed):
    """The live rows, by the keys they were entered by (``row_key``), and the marks of
    the map ``old``, if it holds any, in the map ``h`` (its size a power of two),
    zeroed here first. The slot of the row PREFETCH_AHEAD on is asked for first:
    600,000 rows into a new map of 2^21 slots, 12.7-14.9 ms without, 9.3-11.3 ms with.
    (Copying every entry of ``old`` instead, rows and marks, took 45 -> 67 ms of the
    1 GiB benchmark log's restore: ``old`` is twice the rows, and whether a slot is
    taken is a branch no predictor learns.)"""
    h[:] = 0
    mask = h.shape[0] - 1
    ring = np.empty(PREFETCH_AHEAD, np.int64)  # the homes of rows r .. r + AHEAD - 1
    for r in range(min(PREFETCH_AHEAD, n_rows)):
        ring[r] = seeded_home(row_key[r], mask, seed)
    for r in range(n_rows):
        s = ring[r % PREFETCH_AHEAD]
        if r + PREFETCH_AHEAD < n_rows:
            later = seeded_home(row_key[r + PREFETCH_AHEAD], mask, seed)
            ring[r % PREFETCH_AHEAD] = later
            prefetch(h, SLOT * later)
        if row_id_len[r] >= 0:
            _enter_at(h, s, row_key[r], r + 1, mask)
    if marks:
        for i in range(old.shape[0]):
            if old[i, S_ROW] == MARK:
                _enter_at(h, seeded_home(old[i, S_KEY], mask, seed), old[i, S_KEY], MARK,
                          mask)
    return h


# Cycles of the row permutation are cut at this many evenly spaced positions, fewer
# where their rows (each copied aside) would pass PERMUTE_SAVED_BYTES: one vector of
# 4M floats and 64 rows (a shard's first block) saved 1 GB aside.
PERMUTE_CUTS = 1024
PERMUTE_SAVED_BYTES = 64 << 20
# Stretches (cut to cut) each thread moves at once, a step of each in turn: each is a
# chain of dependent loads, and this many are in flight together.
PERMUTE_CHAINS = 8
# Rows a stretch asks for ahead of the one it moves (the other chains' steps come in
# between).
PERMUTE_AHEAD = 2
# The stretches are dealt to the threads in this many parts.
PERMUTE_PARTS = 16


@njit(cache=True, nogil=True, inline="always")
def _follow(flat, width, perm, t, tmp, done):
    """Follow the cycle through ``t`` (its row saved in ``tmp``): rows move along it."""
    start = t
    while True:
        done[t] = True
        src = perm[t]
        if src == start:
            _copy(flat, t * width, tmp, 0, width)
            return
        _copy(flat, t * width, flat, src * width, width)
        t = src


@njit(cache=True, nogil=True, inline="always")
def _begin_stretch(j, g, cuts, perm, is_cut, at, ahead):
    # Chain g takes the stretch from cut j: it moves row cuts[j] first, and its
    # look-ahead starts PERMUTE_AHEAD steps on (or at the stretch's end).
    t = cuts[j]
    a = t
    for _ in range(PERMUTE_AHEAD):
        a = perm[a]
        if is_cut[a]:
            break
    at[g] = t
    ahead[g] = a


@njit(cache=True, nogil=True, parallel=True)
def _permute_rows_in_place(rows, perm, cuts):
    """``rows[t] = rows_before[perm[t]]`` for every t, in place.

    A random permutation is mostly one long cycle, and following it is a chain of
    dependent row copies (memory latency, not bandwidth). So cycles are cut at
    ``cuts`` (distinct positions, ascending): their rows are saved first, then each
    stretch of a cycle from one cut up to the next is moved by one thread (no other
    writes it, and its reads are ahead of its writes). A thread moves
    PERMUTE_CHAINS stretches at once, a step of each in turn (a stretch that ends
    hands its chain the next one), and asks for the bytes of the row PERMUTE_AHEAD
    steps on in each. Cycles holding no cut are followed after, one by one, with
    one spare row."""
    n = len(perm)
    width = rows.shape[1]
    flat = rows.reshape(-1)
    k = len(cuts)
    done = np.zeros(n, np.bool_)
    is_cut = np.zeros(n, np.bool_)
    saved = np.empty((k, width), rows.dtype)
    for j in range(k):
        is_cut[cuts[j]] = True
        _copy(saved[j], 0, flat, cuts[j] * width, width)
    parts = min(k, PERMUTE_PARTS)
    for p in prange(parts):
        nxt = p * k // parts  # this part's stretches: nxt up to end
        end = (p + 1) * k // parts
        at = np.full(PERMUTE_CHAINS, -1, np.int64)  # the row each chain moves next
        ahead = np.zeros(PERMUTE_CHAINS, np.int64)
        active = 0
        for g in range(PERMUTE_CHAINS):
            if nxt < end:
                _begin_stretch(nxt, g, cuts, perm, is_cut, at, ahead)
                nxt += 1
                active += 1
        while active > 0:
            for g in range(PERMUTE_CHAINS):
                t = at[g]
                if t < 0:
                    continue
                done[t] = True
                src = perm[t]
                a = ahead[g]
                if not is_cut[a]:
                    a = perm[a]
                    ahead[g] = a
                    prefetch_lines(flat, a * width, width)
                if not is_cut[src]:
                    _copy(flat, t * width, flat, src * width, width)
                    at[g] = src
                    continue
                _copy(flat, t * width, saved[np.searchsorted(cuts, src)], 0, width)
                if nxt < end:
                    _begin_stretch(nxt, g, cuts, perm, is_cut, at, ahead)
                    nxt += 1
                else:
                    at[g] = -1
                    active -= 1
    tmp = np.empty(width, rows.dtype)
    for start in range(n):
        if not done[start] and perm[start] != start:
            _copy(tmp, 0, flat, start * width, width)
            _follow(flat, width, perm, start, tmp, done)


def permute_rows_in_place(rows: np.ndarray, perm: np.ndarray) -> None:
    """``rows[t] = rows_before[perm[t]]`` (``perm`` a permutation of ``len(rows)``
    rows), in place, on the Numba threads."""
    n = len(perm)
    if n:
        k = max(1, min(PERMUTE_CUTS, PERMUTE_SAVED_BYTES // max(1, rows[0].nbytes)))
        cuts = np.unique(np.arange(k, dtype=np.int64) * n // k)
        _permute_rows_in_place(rows, perm, cuts)


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n,) + a.shape[1:], a.dtype)
    out[: len(a)] = a
    return out


def _grow_arena(arena: np.ndarray, used: int, n: int) -> np.ndarray:
    """An arena of ``n`` bytes holding the first ``used`` of ``arena`` (the rest is
    garbage), whose pages go back to the OS as they are copied: growth does not
    hold the arena twice."""
    return join_releasing([arena[:used]], np.uint8, n)


#: What a refused reservation starts from instead (growing on demand): 65,536 rows, or
#: items, at most, and no more than this many bytes of them. A stub of 65,536 rows
#: whatever their width asked for 24.4 GiB when an 11.5 GB log of 100,000-float vectors
#: (10 ids, a 4 MB index) passed half the RAM, and the restore failed out of memory.
RESERVE_STUB_ROWS = 1 << 16
RESERVE_STUB_BYTES = 256 << 20


def _reserve(shape, dtype, limit: int, empty=np.empty) -> np.ndarray:
    """``empty`` for an upper bound, or nothing much when the OS refuses it."""
    try:
        if math.prod(shape) * np.dtype(dtype).itemsize > limit:  # (Python ints: exact)
            raise MemoryError
        return empty(shape, dtype)
    except MemoryError:  # grow on demand instead
        row = np.dtype(dtype).itemsize * math.prod(shape[1:])
        stub = max(1, min(RESERVE_STUB_ROWS, RESERVE_STUB_BYTES // max(row, 1)))
        return empty((stub,) + tuple(shape[1:]), dtype)


# Arenas are compacted past this many bytes, then past twice what stays live: each
# shard's, or with a memory budget (``HostMap.share_slack``) all shards' together, so
# that the garbage an index may hold does not grow with the machine's cores (8 shards
# held 8 x 32 MiB of each arena: a --memory-budget 48M restore of 512 ids with 10 KB
# metadata maps peaked 167 MiB above its baseline, 74 MiB with a share each). Without
# a budget each shard keeps the whole: shares of 16 MiB on 2 cores made the 1 GiB
# bench log's restore 10% slower (more compactions).
COMPACT_SLACK = 32 << 20


class _Shard:
    """What one shard of the map owns: its probe table, free rows, arenas, counters."""

    def __init__(self, slack: int) -> None:
        self.slack = slack  # (COMPACT_SLACK as it is when the map is made: not a default)
        self.h = np.zeros((1024, SLOT), np.int64)
        self.free = np.empty(1024, np.int64)
        self.n_free = 0
        self.n_rows = 0
        self.n_live = 0
        self.ids = np.empty(1 << 16, np.uint8)
        self.ids_used = 0
        self.meta = np.empty(1 << 16, np.uint8)
        self.meta_used = 0
        self.counters = np.zeros(N_COUNTERS, np.int64)
        self.marks = np.zeros(1, np.int64)  # keys marked in h (``_find``)
        self.mine = self.mine_k = self.homes = np.empty(0, np.int64)
        # Arena bytes above which garbage (overwritten metadata, deleted ids) is
        # squeezed out: at most twice the live bytes, plus the slack.
        self.ids_limit = self.meta_limit = slack
        empty = np.empty(0, np.int64)
        self.row_id_off = self.row_id_len = self.row_meta_off = empty
        self.row_meta_len = self.row_key = empty

    def compact(self) -> None:
        """Squeeze garbage out of the arenas once it may outweigh what is live.

        Append-only arenas would grow with the log, not the index (every
        metadata applied, every id re-created); this keeps them O(live bytes)
        at an amortised cost of one move per byte appended.
        """
        if self.meta_used > self.meta_limit:
            self.meta_used = _compact_arena(self.meta, self.row_meta_off, self.row_meta_len,
                                            self.row_id_len, self.n_rows, self.meta_used)
            self.meta_limit = max(self.slack, 2 * self.meta_used)
        if self.ids_used > self.ids_limit:
            self.ids_used = _compact_arena(self.ids, self.row_id_off, self.row_id_len,
                                           self.row_id_len, self.n_rows, self.ids_used)
            self.ids_limit = max(self.slack, 2 * self.ids_used)

    def scratch(self, n: int):
        """Room for ``n`` entries' indices (the entries of a chunk this shard owns)."""
        if len(self.mine) < n:
            self.mine = np.empty(n, np.int64)
            self.mine_k = np.empty(n, np.int64)
            self.homes = np.empty(n, np.int64)
        return self.mine, self.mine_k, self.homes

    def grow(self, cap: int) -> None:
        """Room for ``cap`` local rows (pages are touched only as rows are used)."""
        for name in ("row_id_off", "row_id_len", "row_meta_off", "row_meta_len", "row_key",
                     "free"):
            setattr(self, name, _grow(getattr(self, name)[: self.n_rows], cap))


class HostMap:
    """The index being restored, in host memory (the CPU executor's state).

    Ids are split into shards by key bits, one per core: each shard applies
    its ids' entries on its own thread (the compiled step releases the GIL).
    """

    def __init__(self, total_bytes: int, shards: int | None = None) -> None:
        self.dim = -1
        self._total_bytes = int(total_bytes)
        if shards is None:
            shards = min(8, numba.get_num_threads())
        self.n_shards = 1 << (max(1, shards).bit_length() - 1)  # a power of two
        self.shards = [_Shard(COMPACT_SLACK) for _ in range(self.n_shards)]
        self.rows = np.empty((0, 0), np.uint8)
        self._pool = None
        self.id_shard = None  # an IdShard: only the entries of its ids are applied
        try:
            self._limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError):
            self._limit = 1 << 34

    def share_slack(self) -> None:
        """Let the arenas of all shards together hold ``COMPACT_SLACK`` of garbage, not
        each shard's (a restore within a memory budget; before anything is applied)."""
        for shard in self.shards:
            shard.slack = shard.ids_limit = shard.meta_limit = COMPACT_SLACK // self.n_shards

    def live_ids(self) -> int:
        """How many ids the map holds now (the live rows of every shard)."""
        return sum(sh.n_live for sh in self.shards)

    @property
    def counters(self) -> np.ndarray:
        return sum(sh.counters for sh in self.shards)

    def _used_rows(self) -> int:
        """Rows of the index up to the last one any shard has handed out."""
        return max(global_row(sh.n_rows - 1, i, self.n_shards) + 1 if sh.n_rows else 0
                   for i, sh in enumerate(self.shards))

    def _grow_rows(self, cap: int, reserve: bool = False) -> None:
        """Room for ``cap`` rows; ``reserve``: a bound that may be far above need (the
        OS may refuse it), not rows asked for."""
        old = self.rows
        used = self._used_rows()
        shape = (cap, 4 * max(self.dim, 0))
        self.rows = (_reserve(shape, np.uint8, self._limit, aligned_empty) if reserve
                     else aligned_empty(shape, np.uint8))
        if used:  # the old rows' pages handed back as they are copied: not twice the rows
            copy_releasing(self.rows[:used].reshape(-1), old[:used].reshape(-1))
        del old
        per_shard = self.rows.shape[0] // self.n_shards + ROW_BLOCK
        for sh in self.shards:
            sh.grow(per_shard)

    def set_dim(self, dim: int) -> None:
        """Fix the dimension and reserve rows for the most vectors the log can hold.

        Every record carrying a vector takes at least ``4 * dim + 17`` bytes, so
        that bound (times the shards, whose rows interleave) never needs
        growing and the arenas never copy: they are written front to back, and
        pages of these reservations that are never written cost no memory.
        The probe tables are written all over, so they grow with the ids.
        """
        self.dim = int(dim)
        most = self._total_bytes // (4 * self.dim + 17) + 16
        rows = self.n_shards * most  # room for any one shard to hold every row
        if rows * 4 * self.dim > self._limit:
            # More than the OS is asked for: rows for even shards (their keys are
            # hashed) and an eighth to spare; a shard past its share grows the rows.
            # (Before, a log over a sixteenth of the RAM with 8 shards started from
            # a stub and grew by copying, 3x the vectors in all.)
            rows = most + most // 8 + self.n_shards * ROW_BLOCK
        self._grow_rows(rows, reserve=True)
        for sh in self.shards:
            if sh.ids_used == 0:
                sh.ids = _reserve((self._total_bytes,), np.uint8, self._limit)
            if sh.meta_used == 0:
                sh.meta = _reserve((self._total_bytes,), np.uint8, self._limit)

    def _run(self, s, buf, order, ent, k, e):
        sh = self.shards[s]
        res, k, e, sh.n_rows, sh.n_free, sh.ids_used, sh.meta_used, sh.n_live = _apply(
            buf, order, k, e, ent.efirst, ent.nent,
            ent.e_op, ent.e_id_off, ent.e_id_len, ent.e_vec_off, ent.e_dim,
            ent.e_meta_off, ent.e_meta_len, ent.e_key.view(np.int64),
            self.dim, self.rows, sh.h, sh.row_id_off,
            sh.row_id_len, sh.row_meta_off, sh.row_meta_len, sh.row_key,
            sh.n_rows, sh.free, sh.n_free, sh.ids, sh.ids_used,
            sh.meta, sh.meta_used, sh.n_live, sh.counters, s, self.n_shards,
            *(self.id_shard or (0, 1)), self._streams(), *sh.scratch(len(ent.e_key)),
            sh.marks, HOME_SEED,
        )
        store_fence()  # the vectors it streamed, before another thread reads them
        return res, k, e

    def _streams(self) -> bool:
        """Rows of whole cache lines, aligned: vectors go in with non-temporal stores."""
        width = self.rows.shape[1]
        return width > 0 and width % 64 == 0 and self.rows.ctypes.data % 64 == 0

    def apply(self, buf, order, ent, on_dim_mismatch) -> None:
        """Apply the entries of the records in ``order`` (an apply order).

        ``ent`` is the decoded chunk (``efirst``, ``nent`` and the ``e_*`` columns);
        ``on_dim_mismatch(record_index, entry_index, dim)`` raises.
        """
        if self.id_shard is not None:
            # The entries of other shards' ids fix the dimension, or fail, too.
            dim, k, e = first_vector_dims(order, ent.efirst, ent.nent, ent.e_op, ent.e_dim,
                                          self.dim)
            if dim >= 0 and self.dim < 0:
                self.set_dim(int(dim))
            if k >= 0:
                on_dim_mismatch(int(order[k]), int(e), self.dim)

        def run(s, at):
            res, k, e = self._run(s, buf, order, ent, *at)
            return res, (k, e)

        at = dict.fromkeys(range(self.n_shards), (0, 0))
        mismatches = []
        while at:
            ended = self._rounds(run, at, lambda at: int(ent.e_id_len[at[1]]),
                                 lambda at: int(ent.e_meta_len[at[1]]))
            mismatches += [pos for res, pos in ended.values() if res == DIM_MISMATCH]
            at = {s: pos for s, (res, pos) in ended.items() if res == NEED_DIM}
            if at:  # the first vector applied, in apply order, fixes the dimension
                self.set_dim(int(ent.e_dim[min(at.values())[1]]))
        if mismatches:  # the shards' earliest in apply order
            k, e = min(mismatches)
            on_dim_mismatch(int(order[k]), int(e), self.dim)

    def seed(self, take, keys, ids, id_offs, id_lens, vectors, meta, meta_offs,
             meta_lens) -> None:
        """New rows for ids of a base state, counting nothing: the state their inserts
        would give, without encoding them as records. ``take``: which rows of the
        base's columns; ``keys``: every base row's id key; ``vectors``: float32
        ``[rows, dim]`` (the dimension is fixed already). No id may be in the map."""
        if not len(take):
            return
        src_vecs = np.asarray(vectors).view(np.uint8)
        keys = keys.view(np.int64)

        def run(s, j):
            sh = self.shards[s]
            res, j, sh.n_rows, sh.n_free, sh.ids_used, sh.meta_used, sh.n_live = _seed(
                take, j, keys, ids, id_offs, id_lens, src_vecs, meta, meta_offs, meta_lens,
                self.rows, sh.h, sh.row_id_off, sh.row_id_len, sh.row_meta_off,
                sh.row_meta_len, sh.row_key, sh.n_rows, sh.free, sh.n_free, sh.ids,
                sh.ids_used, sh.meta, sh.meta_used, sh.n_live, s, self.n_shards, sh.marks,
                HOME_SEED)
            return res, j

        ended = self._rounds(run, dict.fromkeys(range(self.n_shards), 0),
                             lambda j: int(id_lens[take[j]]),
                             lambda j: int(meta_lens[take[j]]))
        if any(res != DONE for res, _ in ended.values()):
            raise AssertionError("a base id was in the executor's map before it moved in")

    def _rounds(self, run, at: dict, id_bytes, meta_bytes) -> dict:
        """Run shards from where ``at`` says (``run(shard, at) -> (result, at)``) in
        rounds, each until it ends or something must grow; growth happens between
        rounds (the maps of several shards rehash at once, on their threads;
        ``id_bytes(at)``/``meta_bytes(at)``: what the entry at ``at`` adds). Returns
        ``{shard: (result, at)}`` of how each ended: ``DONE``, or
        what only the caller can handle."""
        at = dict(at)
        ended = {}
        while at:
            shards = sorted(at)
            outs = self._on_shards(lambda s: run(s, at[s]), shards)
            rehash = []
            for s, (res, pos) in zip(shards, outs, strict=True):
                at[s] = pos
                sh = self.shards[s]
                if res == NEED_ROWS:
                    self._grow_rows(max(16, self.rows.shape[0] + self.rows.shape[0] // 2))
                elif res == NEED_MAP:
                    rehash.append(s)
                elif res == NEED_IDS:
                    sh.ids = _grow_arena(sh.ids, sh.ids_used, 2 * len(sh.ids) + id_bytes(pos))
                elif res == NEED_META:
                    sh.meta = _grow_arena(sh.meta, sh.meta_used,
                                          2 * len(sh.meta) + meta_bytes(pos))
                else:
                    ended[s] = (res, pos)
                    del at[s]
            # The new maps are allocated here, filled on the shards' threads at once.
            # (Allocated there, malloc's per-thread arenas kept the old maps' pages: 58
            # MiB more peak RSS on the 1 GiB benchmark log.) Not np.zeros: read before
            # written (by _rehash_into's probes), its pages mapped the kernel's zero
            # page, and each page's first write then faulted again and flushed the
            # other core's TLB (an IPI): 3% of a restore's samples in perf.
            # The marks of keys no live id has go first (on the shards' threads): a map
            # they filled is rehashed at its size when what stays fills a quarter of it at
            # most (doubled all the same, a map of marks put and dropped key after key
            # grew with the log: 4 slots for every key it ever marked).
            self._on_shards(lambda s: _drop_stale_marks(self.shards[s]),
                            [s for s in rehash if self.shards[s].marks[0]])
            maps = {s: np.empty((_map_slots(self.shards[s]), SLOT), np.int64)
                    for s in rehash}
            self._on_shards(lambda s, maps=maps: self._rehash_shard(s, maps[s]), rehash)
        for sh in self.shards:
            sh.compact()
        return ended

    def _on_shards(self, fn, shards: list) -> list:
        """``[fn(s) for s in shards]``, on the shards' threads when there are several."""
        if len(shards) <= 1:
            return [fn(s) for s in shards]
        return list(self._threads().map(fn, shards))

    def _threads(self) -> ThreadPoolExecutor:
        """The shards' threads (started at first use, ended by ``result``)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.n_shards, thread_name_prefix="gpu_pitr-apply")
        return self._pool

    def close(self) -> None:
        """End the shards' threads, if started (``result`` ends them too)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _rehash_shard(self, s: int, h: np.ndarray) -> None:
        # Shard s's map becomes h (allocated by the caller, not zeroed: _rehash_into
        # zeroes it) with its rows in, and its marks (the stale ones dropped already).
        sh = self.shards[s]
        _rehash_into(h, sh.n_rows, sh.row_id_len, sh.row_key, sh.h, sh.marks[0], HOME_SEED)
        sh.h = h

    def result(self, order_of_ids, permute: bool = True):
        """The index, ids sorted by bytes: live rows move to the front of ``rows``.

        ``order_of_ids(ids, offsets, lengths)`` returns the sorting permutation.
        Returns ``(ids, id_offs, id_lens, vectors, meta, meta_offs, meta_lens, live)``
        with the shards' arenas joined; ``vectors`` is a float32 ``[n, dim]`` view and
        ``live`` is None. With ``permute`` false the rows stay where they are:
        ``vectors`` is all of them (``[used, dim]``) and id ``k``'s row is ``live[k]``
        (for a caller that copies the rows elsewhere anyway).

        The map is spent afterwards: each shard's map, row columns and arenas are
        let go as soon as they are joined, which leaves room for the sort.
        """
        n = self.live_ids()
        # Each live row's five columns side by side (gathered in id order below: one
        # cache line a row, not five), and its id span for the sort.
        packed = np.empty((n, 5), np.int64)
        id_offs, id_lens = np.empty(n, np.int64), np.empty(n, np.int64)
        starts = np.cumsum([0] + [sh.n_live for sh in self.shards])
        id_bases = np.cumsum([0] + [sh.ids_used for sh in self.shards])
        meta_bases = np.cumsum([0] + [sh.meta_used for sh in self.shards])

        def live_rows(s):  # shard s's live rows into its part of the joined columns
            sh = self.shards[s]
            sh.h = None  # not needed any more: room for the sort below
            at = _live_rows(sh.n_rows, sh.row_id_off, sh.row_id_len, sh.row_meta_off,
                            sh.row_meta_len, s, self.n_shards, id_bases[s], meta_bases[s],
                            starts[s], starts[s + 1], packed, id_offs, id_lens)
            if at != starts[s + 1]:
                raise AssertionError(f"{at - starts[s]} live rows in shard {s}, "
                                     f"{sh.n_live} counted")
            sh.row_id_off = sh.row_id_len = sh.row_meta_off = sh.row_meta_len = None
            sh.row_key = sh.free = None

        if self.n_shards > 1:  # the shards on their threads, the arenas joined meanwhile
            done = [self._threads().submit(live_rows, s) for s in range(self.n_shards)]
        else:
            live_rows(0)
            done = []
        try:
            # Each shard's arena is handed back as it is copied: the peak is the
            # joined arenas, not twice them.
            ids = join_releasing([sh.ids[:sh.ids_used] for sh in self.shards], np.uint8)
            meta = join_releasing([sh.meta[:sh.meta_used] for sh in self.shards], np.uint8)
            for sh in self.shards:
                sh.ids = sh.meta = None
            for f in done:
                f.result()
        finally:
            self.close()
        order = order_of_ids(ids, id_offs, id_lens)
        id_offs = id_lens = None  # (in packed too) let go before the gather allocates
        live, id_offs, id_lens, meta_offs, meta_lens = _in_order(order, packed)
        packed = None
        used = self._used_rows()
        cols = (ids, id_offs, id_lens)
        meta_cols = (meta, meta_offs, meta_lens)
        if not permute:
            return (*cols, self._vectors(used), *meta_cols, live)
        if self.dim > 0 and used:
            permute_rows_in_place(self.rows[:used], _live_first(live, used))
        return (*cols, self._vectors(len(live)), *meta_cols, None)

    def _vectors(self, n: int) -> np.ndarray:
        """The first ``n`` rows as float32 ``[n, dim]`` (zero columns before any vector)."""
        if self.dim <= 0:
            return np.zeros((n, max(self.dim, 0)), np.float32)
        return self.rows[:n].view("<f4").reshape(n, self.dim)


def _map_slots(sh: _Shard) -> int:
    """The size of the map that ``sh.h`` is rehashed into: its own while what it holds
    (and ``_room``'s two more) fills a quarter of it at most, else twice that."""
    slots = sh.h.shape[0]
    return slots if 4 * (sh.n_live + int(sh.marks[0]) + 2) <= slots else 2 * slots


def _drop_stale_marks(sh: _Shard) -> None:
    """Empty the marks of ``sh.h`` whose key no live id of the shard has (its ids were
    all deleted), before the map is rehashed (``_map_slots``): marks would otherwise
    stay for good, and a log that puts and deletes ids of one key, key after key, would
    grow the map with the log, not the index. One key per live id (its bytes hashed
    again), only when the map holds marks. ``sh.h`` is left fit only to be copied."""
    live = np.flatnonzero(sh.row_id_len[:sh.n_rows] >= 0)
    keys = span_keys(sh.ids, sh.row_id_off[live], sh.row_id_len[live], parallel=False)
    marked = np.flatnonzero(sh.h[:, S_ROW] == MARK)
    stale = marked[~np.isin(sh.h[marked, S_KEY], keys.view(np.int64))]
    sh.h[stale, S_ROW] = 0
    sh.marks[0] -= len(stale)


def _live_first(live: np.ndarray, used: int) -> np.ndarray:
    """A permutation of ``used`` rows putting rows ``live`` first, in that order, that
    moves no other row it need not: a live row past them swaps with a dead one before,
    and the dead rows past them stay (a shard's rows start a block apart: one id of
    the second shard is row 64, and its 63 dead rows before it were moved too)."""
    n_live = len(live)
    perm = np.arange(used, dtype=np.int64)
    perm[:n_live] = live
    is_live = np.zeros(used, np.bool_)
    is_live[live] = True
    perm[live[live >= n_live]] = np.flatnonzero(~is_live[:n_live])
    return perm


@njit(cache=True, nogil=True)
def _live_rows(n_rows, row_id_off, row_id_len, row_meta_off, row_meta_len, shard, n_shards,
               id_base, meta_base, at, end, packed, id_offs, id_lens):
    """Shard ``shard``'s live rows into the joined rows ``packed`` from ``at`` up to
    ``end``: index row, id span and metadata span (offsets shifted past the arenas of
    the shards before it, whose bytes come first in the joined arenas); the id span
    into ``id_offs`` and ``id_lens`` too. Returns where its rows end: past ``end`` if
    the shard holds more live rows than there is room for (nothing is written from
    ``end`` on; the caller raises)."""
    for i in range(n_rows):
        if row_id_len[i] < 0:
            continue
        if at >= end:
            return at + 1
        o = row_id_off[i] + id_base
        m = row_meta_off[i]
        packed[at, 0] = global_row(i, shard, n_shards)
        packed[at, 1] = id_offs[at] = o
        packed[at, 2] = id_lens[at] = row_id_len[i]
        packed[at, 3] = m + meta_base if m >= 0 else -1
        packed[at, 4] = row_meta_len[i]
        at += 1
    return at


@njit(cache=True, nogil=True, parallel=True)
def _in_order(order, packed):
    """The five columns of ``packed[order]``, on the Numba threads. A row is one read
    (its row PREFETCH_AHEAD on asked for first): 1.2M rows in a random order, 19-20 ms
    against 35-47 ms for five gathers from five columns."""
    n = len(order)
    oa, ob, oc = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    od, oe = np.empty(n, np.int64), np.empty(n, np.int64)
    width = packed.shape[1]
    for i in prange(n):
        if i + PREFETCH_AHEAD < n:
            prefetch(packed, width * order[i + PREFETCH_AHEAD])
        k = order[i]
        oa[i], ob[i], oc[i] = packed[k, 0], packed[k, 1], packed[k, 2]
        od[i], oe[i] = packed[k, 3], packed[k, 4]
    return oa, ob, oc, od, oe


def fill_counters(report, counters, n_ids: int, dim: int) -> None:
    """Copy the apply counters and the index shape into the report."""
    report.inserts = int(counters[C_INSERTS])
    report.updates = int(counters[C_UPDATES])
    report.updates_of_missing = int(counters[C_UPDATES_MISSING])
    report.deletes = int(counters[C_DELETES])
    report.deletes_of_missing = int(counters[C_DELETES_MISSING])
    report.ids = int(n_ids)
    report.dim = int(dim) if dim >= 0 else None
