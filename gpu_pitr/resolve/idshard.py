"""Shards of the ids: a restore that keeps the ids of one shard, and the whole index
again from the shards (the scale-out of docs/internals.md).

Last writer wins per id, so the ids split into shards that restore independently:
shard ``index`` of ``count`` holds the ids whose key (``payload.id_key``, a mixed
64-bit hash of the id's bytes) has ``((key >> 40) * count) >> 24 == index``, its top
24 bits scaled to ``count`` (the host map's own shards use bits 32 and up, its
tables the low bits). Each shard's restore reads, frames and decodes the whole log
(the stop point, commit points and transaction outcomes are the same in every
shard) and applies only its own ids' entries, so it holds about ``1/count`` of the
index. ``merge_shards`` puts the shards back together: the restore of the whole log.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np
from numba import prange

from gpu_pitr.format.layout import DELETE
from gpu_pitr.jit import njit

# The shard is taken from the key's top 24 bits.
MAX_SHARDS = 1 << 16


class IdShard(NamedTuple):
    index: int
    count: int


def id_shard(value) -> IdShard | None:
    """``(index, count)`` checked (0 <= index < count <= MAX_SHARDS), or None for None
    and for one shard of one (the whole index)."""
    if value is None:
        return None
    try:
        if any(isinstance(v, (bool, np.bool_)) for v in value):
            raise TypeError  # (True, 2) is not shard 1
        index, count = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"id_shard is (index, count), not {value!r}") from None
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise ValueError(f"id_shard {index} of {count}: give 0 <= index < count <= "
                         f"{MAX_SHARDS}")
    return None if count == 1 else IdShard(index, count)


@njit(cache=True, nogil=True, inline="always")
def in_id_shard(key, index, count):
    """Whether the id with this key (its 64 bits as uint64 or int64) belongs to shard
    ``index`` of ``count``."""
    top = np.uint64(key) >> np.uint64(40)
    return np.int64((top * np.uint64(count)) >> np.uint64(24)) == index


def id_shard_mask(keys, shard: IdShard):
    """``in_id_shard`` of an array of keys (NumPy or CuPy, uint64)."""
    keys = keys.astype("uint64", copy=False)
    xp_u64 = keys.dtype.type
    return ((keys >> xp_u64(40)) * xp_u64(shard.count)) >> xp_u64(24) == shard.index


@njit(cache=True, nogil=True)
def first_vector_dims(order, efirst, nent, e_op, e_dim, dim):
    """Over every entry of the records ``order`` (apply order), shards or not:
    ``(dim, k, e)``: the index dimension (``dim``, or the first vector's length if
    ``dim`` < 0; -1 if still none) and the first vector entry ``e`` (of record
    ``order[k]``) whose length differs from it (``k`` -1 if none). A restore of one
    shard checks this before applying its own entries, so that every shard fixes the
    same dimension and fails at the same record as the restore of the whole log."""
    for k in range(len(order)):
        r = order[k]
        for e in range(efirst[r], efirst[r] + nent[r]):
            if e_op[e] == DELETE:  # the only entry without a vector
                continue
            if dim < 0:
                dim = e_dim[e]
            elif e_dim[e] != dim:
                return dim, k, e
    return dim, -1, -1


# Per-shard counts a merged report sums; the rest is the same in every shard.
_SUMMED = ("inserts", "updates", "updates_of_missing", "deletes", "deletes_of_missing", "ids")


def merge_reports(reports: list):
    """The report of the whole restore from its shards' reports (in shard order).

    What a shard says of the log (stop point, damage, warnings) is the same in every
    shard; its counts are its own ids'. The message joins the shards' distinct notes
    (a shard whose cuda executor met two ids of one 64-bit key ran on the cpu, and says
    so; the others did not), without "the index is empty" unless the whole is; the
    backend names every executor that ran ("cpu,cuda")."""
    from gpu_pitr.report import EMPTY_INDEX_NOTE, RestoreReport

    whole = RestoreReport.from_dict(reports[0].to_dict())
    whole.id_shard = None
    for name in _SUMMED:
        setattr(whole, name, sum(getattr(r, name) for r in reports))
    whole.dim = next((r.dim for r in reports if r.dim is not None), None)
    whole.backend = ",".join(sorted({r.backend for r in reports}))
    notes = dict.fromkeys(part for r in reports for part in r.message.split("; ") if part)
    if whole.ids:
        notes.pop(EMPTY_INDEX_NOTE, None)
    whole.message = "; ".join(notes)
    # Each stage as long as in the slowest shard (they ran side by side).
    whole.timings = {k: max(r.timings.get(k, 0.0) for r in reports)
                     for k in reports[0].timings}
    return whole


def merge_shards(shards: list):
    """One ``RestoredIndex`` from the restores of every shard of the ids (the same log,
    target and options; in any order): equal to the restore without ``id_shard``
    (which is also the one shard of a split into one).
    Host memory: the shards' vectors on a GPU are copied to the host."""
    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.resolve.idsort import sorted_id_order

    shards = sorted((s.to_host() for s in shards), key=_shard_index)
    if len(shards) == 1 and shards[0].report.id_shard is None:
        return shards[0]  # one shard of one: the whole restore
    counts = {(s.report.id_shard or {}).get("count") for s in shards}
    if counts != {len(shards)} or [_shard_index(s) for s in shards] != list(range(len(shards))):
        raise ValueError(f"merge_shards needs every shard of one split once, got "
                         f"{[s.report.id_shard for s in shards]}")
    _check_one_restore(shards)
    id_offs, id_lens, id_arena = _joined_spans([(s._id_offs, s._id_lens, s._id_arena)
                                                for s in shards])
    meta_offs, meta_lens, meta_arena = _joined_spans([(s._meta_offs, s._meta_lens,
                                                       s._meta_arena) for s in shards])
    order = sorted_id_order(id_arena, id_offs, id_lens)
    dim = max(s.vectors.shape[1] for s in shards)
    vectors = np.empty((len(order), dim), np.float32)
    if dim and len(order):
        row_of = np.empty(len(order), np.int64)  # where each shard row goes
        row_of[order] = np.arange(len(order))
        lo = 0
        for s in shards:  # each vector copied once, straight into its row
            _put_rows(np.ascontiguousarray(s.vectors, np.float32).reshape(-1, dim),
                      row_of[lo:lo + len(s)], vectors)
            lo += len(s)
    index = RestoredIndex(id_arena, id_offs[order], id_lens[order], vectors, meta_arena,
                          meta_offs[order], meta_lens[order],
                          merge_reports([s.report for s in shards]))
    index.position, index.pending = shards[0].position, shards[0].pending
    return index


#: What every shard of one restore says alike of the log it read.
_ALIKE = ("target", "stop", "last_commit_timestamp", "segments", "records_read",
          "bytes_read", "first_seq", "commit_points_applied", "transactions",
          "read_after_stop")


def first_difference(reports: list) -> tuple[int, str, object, object] | None:
    """``(k, name, shard k's, shard 0's)`` for the first of ``_ALIKE`` that the shards'
    reports (in shard order) do not say alike, or None: shards of another target or
    another log (a worker's own, older copy of it) would join into a state that never
    existed."""
    first = reports[0].to_dict()
    for k, report in enumerate(reports[1:], 1):
        doc = report.to_dict()
        for name in _ALIKE:
            if doc[name] != first[name]:
                return k, name, doc[name], first[name]
    return None


def _check_one_restore(shards: list) -> None:
    """Shards of different restores (another target, another log) would join into a
    state that never existed: a ValueError naming the first difference."""
    differs = first_difference([s.report for s in shards])
    if differs is not None:
        k, name, got, want = differs
        raise ValueError(f"merge_shards needs the shards of one restore: shard "
                         f"{_shard_index(shards[k])}'s {name} ({got!r}) is not shard 0's "
                         f"({want!r})")
    dims = {s.vectors.shape[1] for s in shards if len(s)}
    if len(dims) > 1:
        raise ValueError(f"merge_shards needs the shards of one restore: their vectors have "
                         f"dimensions {sorted(dims)}")


@njit(cache=True, nogil=True, parallel=True)
def _put_rows(src, rows, out):
    # out[rows[i]] = src[i], on the Numba threads.
    for i in prange(len(rows)):
        out[rows[i], :] = src[i, :]


def _shard_index(index) -> int:
    return (index.report.id_shard or {}).get("index", -1)


def _joined_spans(parts: list) -> tuple:
    """``(offs, lens, arena)`` of several arenas joined end to end (an offset of -1,
    no span, stays -1)."""
    arena = np.concatenate([a for _, _, a in parts]) if parts else np.zeros(0, np.uint8)
    base = np.cumsum([0] + [len(a) for _, _, a in parts[:-1]])
    offs = np.concatenate([np.where(o >= 0, o + b, -1) for (o, _, _), b in zip(parts, base,
                                                                               strict=True)])
    return offs.astype(np.int64), np.concatenate([n for _, n, _ in parts]), arena
