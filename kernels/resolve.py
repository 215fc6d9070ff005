"""Last-writer-wins kernels: entries grouped by id key, one thread per id.

The host sorts the entries of a chunk by key (stably, so apply order is kept
within an id); these kernels check that equal keys really are equal ids,
replay each id's entries in order against its prior state, and copy only the
winning bytes.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from gpu_pitr.format.layout import DELETE, INSERT

# What happens to an id's metadata (resolve_runs' meta_mode).
META_KEEP = 0
META_NONE = 1
META_SET = 2

# Rows of resolve_runs' counts.
N_RUN_COUNTS = 5  # inserts, updates, updates of missing, deletes, deletes of missing


@cuda.jit(cache=True)
def expand_entries(order, efirst, nent, starts, ent_seq):
    """``ent_seq``: the entry slots of the records in ``order``, in apply order."""
    k = cuda.grid(1)
    if k < order.shape[0]:
        r = order[k]
        s = starts[k]
        for j in range(nent[r]):
            ent_seq[s + j] = efirst[r] + j


@cuda.jit(device=True)
def _same_id(a, a_off, a_len, b, b_off, b_len):
    if a_len != b_len:
        return False
    for k in range(a_len):
        if a[a_off + k] != b[b_off + k]:
            return False
    return True


@cuda.jit(cache=True)
def check_run_ids(buf, sorted_ent, run_of, run_start, e_id_off, e_id_len, collision):
    """Flag ``collision`` when an entry's id differs from its run's first id."""
    j = cuda.grid(1)
    if j < sorted_ent.shape[0]:
        e = sorted_ent[j]
        f = sorted_ent[run_start[run_of[j]]]
        if e != f and not _same_id(buf, e_id_off[e], e_id_len[e], buf, e_id_off[f], e_id_len[f]):
            collision[0] = 1


@cuda.jit(cache=True)
def check_prior_ids(buf, run_ent, prior_row, e_id_off, e_id_len, ids, row_id_off, row_id_len,
                    collision):
    """Flag ``collision`` when a run's id differs from the id of the row its key found."""
    r = cuda.grid(1)
    if r < run_ent.shape[0]:
        row = prior_row[r]
        if row >= 0:
            e = run_ent[r]
            if not _same_id(buf, e_id_off[e], e_id_len[e], ids, row_id_off[row],
                            row_id_len[row]):
                collision[0] = 1


@cuda.jit(cache=True)
def resolve_runs(sorted_ent, run_start, run_len, prior_row, e_op, e_meta_off,
                 exists, vec_ent, meta_mode, meta_ent, counts):
    """Replay one id's entries (SPEC section 3) from its prior state.

    Outputs per run: whether the id exists at the end, the entry whose vector
    wins, and what becomes of its metadata (keep, none, or an entry's map).
    """
    r = cuda.grid(1)
    if r < run_start.shape[0]:
        alive = prior_row[r] >= 0
        mode = META_KEEP if alive else META_NONE
        vec = -1
        meta = -1
        for j in range(run_start[r], run_start[r] + run_len[r]):
            e = sorted_ent[j]
            op = e_op[e]
            if op == DELETE:
                counts[3, r] += 1
                if not alive:
                    counts[4, r] += 1
                alive = False
                vec = -1
                mode = META_NONE
                continue
            if op == INSERT:
                counts[0, r] += 1
                mode = META_NONE
            else:
                counts[1, r] += 1
                if not alive:
                    counts[2, r] += 1
                    mode = META_NONE
            if e_meta_off[e] >= 0:
                mode = META_SET
                meta = e
            alive = True
            vec = e
        exists[r] = alive
        vec_ent[r] = vec
        meta_mode[r] = mode
        meta_ent[r] = meta


@cuda.jit(cache=True)
def scatter_vectors(buf, vec_off, row, rows32, dim):
    """``rows32[row[i], j]`` = the j-th float of the vector at ``buf[vec_off[i]]``.

    Bytes are assembled into 32-bit words (payload vectors are not 4-byte
    aligned), each byte widened before its shift.
    """
    t = cuda.grid(1)
    if t < vec_off.shape[0] * dim:
        i = t // dim
        j = t - i * dim
        p = vec_off[i] + 4 * j
        w = (np.uint32(buf[p])
             | (np.uint32(buf[p + 1]) << np.uint32(8))
             | (np.uint32(buf[p + 2]) << np.uint32(16))
             | (np.uint32(buf[p + 3]) << np.uint32(24)))
        rows32[row[i], j] = w


@cuda.jit(cache=True)
def copy_spans(src, src_off, length, dst, dst_off):
    """``dst[dst_off[i]:+length[i]] = src[src_off[i]:+length[i]]`` for every i."""
    i = cuda.grid(1)
    if i < src_off.shape[0]:
        s = src_off[i]
        d = dst_off[i]
        for k in range(length[i]):
            dst[d + k] = src[s + k]
