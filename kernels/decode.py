"""Decode kernels: one thread per record, calling the shared payload parser."""

from __future__ import annotations

from numba import cuda, int64

from gpu_pitr.format.layout import RECORD_HEADER_SIZE
from gpu_pitr.format.payload import MAX_BATCH_DEPTH, decode_record, parse_payload


@cuda.jit(cache=True)
def decode_records(
    buf, n, off, length, status, kind, ts, aux, nent, stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    """Record columns of records ``0..n-1``; a non-batch record's entry at its slot."""
    i = cuda.grid(1)
    if i < n:
        stack = cuda.local.array(MAX_BATCH_DEPTH, int64)
        start = off[i] + RECORD_HEADER_SIZE
        decode_record(
            buf, start, start + length[i], i, stack,
            status, kind, ts, aux, nent, stop,
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )


@cuda.jit(cache=True)
def decode_batches(
    buf, batches, off, length, efirst,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    """Entries of the batch records ``batches`` at their assigned slots."""
    j = cuda.grid(1)
    if j < batches.shape[0]:
        i = batches[j]
        stack = cuda.local.array(MAX_BATCH_DEPTH, int64)
        start = off[i] + RECORD_HEADER_SIZE
        parse_payload(
            buf, start, start + length[i], stack, True, efirst[i],
            e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
        )
