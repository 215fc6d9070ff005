"""Ids and metadata between RestoredIndex's byte arenas and Apache Arrow arrays.

``id`` is ``large_string``; ``metadata`` is ``map<string, string>``, null where a row
has none. Every conversion is a vectorised NumPy step or a Numba loop over rows.
pyarrow is imported inside the functions (the ``arrow`` extra).
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.extending import register_jitable

from gpu_pitr.format.layout import VARINT_MAX_SINGLE, VARINT_U64
from gpu_pitr.format.payload import id_key, read_varint, write_varint
from gpu_pitr.jit import njit
from gpu_pitr.resolve.idsort import compare_ids, merge_spans

# A map<string, string> array has 32-bit offsets: the pairs, key bytes and value bytes
# of one array each stay below this. More metadata is split into several arrays.
ARRAY_LIMIT = (1 << 31) - 1


class ArrowLimitError(ValueError):
    """The metadata of one row alone passes one Arrow array's limit (``limit`` pairs, key
    bytes or value bytes: a map of more than 2 GiB of keys or values, which a record up
    to 4 GiB can hold). ``ident``: that row's id."""

    def __init__(self, message: str, ident: str, limit: int) -> None:
        super().__init__(message)
        self.ident = ident
        self.limit = limit


def require_pyarrow():
    """The pyarrow module, or a one-line MissingExtraError naming the extra to install."""
    try:
        import pyarrow
    except ImportError as err:
        from gpu_pitr.errors import missing_extra

        raise missing_extra(err, "pyarrow", "snapshots need pyarrow", "arrow") from None
    return pyarrow


@njit(cache=True, parallel=True, nogil=True)
def _gather(arena, offs, lens, starts, out):
    for i in prange(len(offs)):
        out[starts[i]:starts[i] + lens[i]] = arena[offs[i]:offs[i] + lens[i]]


@register_jitable
def _string_at(arena, p, end):
    """The byte length of the String at ``p`` and where it ends; (-1, p) if it does not fit."""
    n, q = read_varint(arena, p, end, VARINT_U64)
    if q < 0 or n > np.uint64(end - q):
        return np.int64(-1), p
    return np.int64(n), q + np.int64(n)


@njit(cache=True, parallel=True, nogil=True)
def _map_sizes(arena, offs, lens, pairs, kbytes, vbytes):
    # Per row: pairs, key bytes and value bytes of its bincode map. Returns the
    # first row that does not parse, or -1.
    bad = len(offs)
    for i in prange(len(offs)):
        pairs[i] = kbytes[i] = vbytes[i] = 0
        if offs[i] < 0:
            continue
        p = offs[i]
        end = p + lens[i]
        count, p = read_varint(arena, p, end, VARINT_U64)
        if p < 0 or count > np.uint64(lens[i]):
            bad = min(bad, i)
            continue
        kb = 0
        vb = 0
        ok = True
        for _ in range(np.int64(count)):
            n, p = _string_at(arena, p, end)
            if n < 0:
                ok = False
                break
            kb += n
            n, p = _string_at(arena, p, end)
            if n < 0:
                ok = False
                break
            vb += n
        if not ok or p != end:
            bad = min(bad, i)
            continue
        pairs[i] = np.int64(count)
        kbytes[i] = kb
        vbytes[i] = vb
    return bad if bad < len(offs) else -1


@njit(cache=True, parallel=True, nogil=True)
def _map_fill(arena, offs, map_offs, koffs, voffs, kdata, vdata):
    # Copy keys and values out of the (already sized) bincode maps: pair j of row i
    # is pair map_offs[i] + j; koffs/voffs already hold each row's first byte.
    for i in prange(len(offs)):
        if offs[i] < 0:
            continue
        p = offs[i]
        _, p = read_varint(arena, p, len(arena), VARINT_U64)
        kp = koffs[map_offs[i]]
        vp = voffs[map_offs[i]]
        for j in range(map_offs[i], map_offs[i + 1]):
            p, kp = _take_string(arena, p, koffs, j, kdata, kp)
            p, vp = _take_string(arena, p, voffs, j, vdata, vp)


@register_jitable
def _take_string(arena, p, offs, j, data, dp):
    """Copy the (already checked) String at ``p`` to ``data[dp:]``; ``offs[j] = dp``.
    Returns where the String ends and where the next one goes in ``data``."""
    n, p = read_varint(arena, p, len(arena), VARINT_U64)
    m = np.int64(n)
    offs[j] = dp
    data[dp:dp + m] = arena[p:p + m]
    return p + m, dp + m


@njit(cache=True, inline="always")
def _varint_size(v):
    if v <= VARINT_MAX_SINGLE:
        return 1
    if v < 1 << 16:
        return 3
    if v < 1 << 32:
        return 5
    return 9


@njit(cache=True, parallel=True, nogil=True)
def _bincode_sizes(valid, map_offs, koffs, voffs, sizes):
    for i in prange(len(valid)):
        if not valid[i]:
            sizes[i] = 0
            continue
        s = _varint_size(map_offs[i + 1] - map_offs[i])
        for j in range(map_offs[i], map_offs[i + 1]):
            kn = koffs[j + 1] - koffs[j]
            vn = voffs[j + 1] - voffs[j]
            s += _varint_size(kn) + kn + _varint_size(vn) + vn
        sizes[i] = s


@njit(cache=True, parallel=True, nogil=True)
def _bincode_fill(valid, map_offs, koffs, kdata, voffs, vdata, starts, out):
    for i in prange(len(valid)):
        if not valid[i]:
            continue
        p = write_varint(out, starts[i], map_offs[i + 1] - map_offs[i])
        for j in range(map_offs[i], map_offs[i + 1]):
            a = koffs[j]
            n = koffs[j + 1] - a
            p = write_varint(out, p, n)
            out[p:p + n] = kdata[a:a + n]
            p += n
            a = voffs[j]
            n = voffs[j + 1] - a
            p = write_varint(out, p, n)
            out[p:p + n] = vdata[a:a + n]
            p += n


def _cumsum0(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _row_order_ids(index) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)``: the id bytes back to back in row order, n + 1 offsets."""
    offs = np.asarray(index._id_offs, np.int64)
    lens = np.asarray(index._id_lens, np.int64)
    arena = np.asarray(index._id_arena, np.uint8)
    starts = _cumsum0(lens)
    total = int(starts[-1])
    if np.array_equal(offs, starts[:-1]) and len(arena) >= total:
        return starts, arena[:total]  # already in row order: no copy
    data = np.empty(total, np.uint8)
    if len(offs):
        _gather(arena, offs, lens, starts, data)
    return starts, data


def ids_array(index):
    """The ids of ``index`` in row order, as a ``pa.LargeStringArray``."""
    pa = require_pyarrow()
    starts, data = _row_order_ids(index)
    return pa.LargeStringArray.from_buffers(
        len(starts) - 1, pa.py_buffer(starts), pa.py_buffer(data), null_count=0)


def metadata_chunks(index, limit: int | None = None, unique_keys: bool = False) -> list:
    """The metadata of ``index`` as ``map<string, string>`` arrays over consecutive rows.

    One array unless the pairs, key bytes or value bytes pass ``limit`` (Arrow's
    32-bit offsets); a single row's map must fit in one array. Rows without
    metadata are null; pairs keep their stored order (duplicate keys included: a
    snapshot holds the log's bytes), or with ``unique_keys`` only the last pair of a
    key that repeats (the value a restore gives it, SPEC section 3's map: what readers
    of a Parquet map expect, Spark refusing a map with a key twice).
    """
    pa = require_pyarrow()
    limit = ARRAY_LIMIT if limit is None else limit
    offs = np.asarray(index._meta_offs, np.int64)
    lens = np.asarray(index._meta_lens, np.int64)
    arena = np.asarray(index._meta_arena, np.uint8)
    n = len(offs)
    pairs = np.empty(n, np.int64)
    kbytes = np.empty(n, np.int64)
    vbytes = np.empty(n, np.int64)
    if n:
        hi = offs + lens
        if ((offs >= 0) & ((hi > len(arena)) | (lens < 0))).any():
            raise ValueError("metadata offsets point outside the metadata arena")
        bad = _map_sizes(arena, offs, lens, pairs, kbytes, vbytes)
        if bad >= 0:
            raise ValueError(f"the metadata of row {bad} is not a bincode map")
    map_offs = _cumsum0(pairs)
    total_pairs = int(map_offs[-1])
    koffs = np.empty(total_pairs + 1, np.int64)
    voffs = np.empty(total_pairs + 1, np.int64)
    kstart = _cumsum0(kbytes)
    vstart = _cumsum0(vbytes)
    # Each row's first key and value byte sit at its first pair's slot before the fill.
    has = pairs > 0
    koffs[map_offs[:-1][has]] = kstart[:-1][has]
    voffs[map_offs[:-1][has]] = vstart[:-1][has]
    koffs[-1] = kstart[-1]
    voffs[-1] = vstart[-1]
    kdata = np.empty(int(kstart[-1]), np.uint8)
    vdata = np.empty(int(vstart[-1]), np.uint8)
    if n:
        _map_fill(arena, offs, map_offs, koffs, voffs, kdata, vdata)
    if unique_keys and total_pairs:
        keep = np.ones(total_pairs, np.bool_)
        if _mark_repeated_keys(map_offs, koffs, kdata, keep, np.empty(n, np.int64)):
            map_offs, koffs, kdata = _kept(map_offs, koffs, kdata, keep)
            _, voffs, vdata = _kept(None, voffs, vdata, keep)
            kstart, vstart = koffs[map_offs], voffs[map_offs]
    present = offs >= 0
    map_type = pa.map_(pa.string(), pa.string())
    chunks = []
    lo = 0
    while lo < n or not chunks:
        try:
            hi = _chunk_end(lo, n, map_offs, kstart, vstart, limit)
        except ValueError as err:
            ident = index.rows(lo, lo + 1).id_list()[0]
            raise ArrowLimitError(f"{err} (id {ident[:60]!r})", ident, limit) from None
        p0, p1 = int(map_offs[lo]), int(map_offs[hi])
        k0, v0 = int(koffs[p0]), int(voffs[p0])
        k1, v1 = int(koffs[p1]), int(voffs[p1])
        keys = pa.StringArray.from_buffers(
            p1 - p0, pa.py_buffer((koffs[p0:p1 + 1] - k0).astype(np.int32)),
            pa.py_buffer(kdata[k0:k1]), null_count=0)
        items = pa.StringArray.from_buffers(
            p1 - p0, pa.py_buffer((voffs[p0:p1 + 1] - v0).astype(np.int32)),
            pa.py_buffer(vdata[v0:v1]), null_count=0)
        entries = pa.StructArray.from_arrays(
            [keys, items], fields=[map_type.key_field, map_type.item_field])
        valid = present[lo:hi]
        nulls = int(len(valid) - np.count_nonzero(valid))
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
        chunks.append(pa.Array.from_buffers(
            map_type, hi - lo,
            [bitmap, pa.py_buffer((map_offs[lo:hi + 1] - p0).astype(np.int32))],
            null_count=nulls, children=[entries]))
        lo = hi
    return chunks


#: Pairs in a map up to which its keys are compared pairwise; a larger map's keys are
#: sorted by hash first (pairwise, 40,000 keys in a map took 44 s).
PAIRWISE_KEYS = 16


@njit(cache=True, parallel=True, nogil=True)
def _mark_repeated_keys(map_offs, koffs, kdata, keep, compares) -> int:
    """Clear ``keep`` of every pair whose key comes again later in its row's map; returns
    how many. ``compares[i]``: the key comparisons made in row ``i`` (rows run in
    parallel)."""
    dropped = 0
    for i in prange(len(map_offs) - 1):
        d, c = _row_repeated_keys(map_offs[i], map_offs[i + 1], koffs, kdata, keep)
        compares[i] = c
        dropped += d
    return dropped


@register_jitable
def _row_repeated_keys(lo, hi, koffs, kdata, keep):
    """``_mark_repeated_keys`` for pairs ``lo..hi-1`` (one map): pairwise when they are
    few, else in the order of the keys' hashes (a stable sort: the pairs of one key are
    side by side, in their order), comparing bytes only within a run of one hash, so
    a key's copies and different keys that share a hash are still told apart by their
    bytes. Returns ``(dropped, comparisons)``."""
    dropped = 0
    compares = 0
    m = hi - lo
    if m <= PAIRWISE_KEYS:
        for j in range(lo, hi - 1):
            for k in range(j + 1, hi):
                compares += 1
                if _same_key(koffs, kdata, j, k):
                    keep[j] = False
                    dropped += 1
                    break
        return dropped, compares
    h = np.empty(m, np.uint64)
    for x in range(m):
        h[x] = id_key(kdata, koffs[lo + x], koffs[lo + x + 1] - koffs[lo + x])
    order = np.argsort(h, kind="mergesort")
    a = 0
    while a < m:
        b = a + 1
        while b < m and h[order[b]] == h[order[a]]:
            b += 1
        if b - a > PAIRWISE_KEYS:
            # Many keys of one hash: different keys can share it (ids and metadata are
            # chosen by the store's users, and the hash is cheap to collide), where
            # comparing each with every later one took b*b/2 comparisons. Sorted by
            # their bytes (stably: log order among copies), copies are side by side.
            run = np.empty(b - a, np.int64)
            for x in range(a, b):
                run[x - a] = lo + order[x]
            compares += _sort_by_bytes(koffs, kdata, run)
            for x in range(b - a - 1):
                compares += 1
                if _same_key(koffs, kdata, run[x], run[x + 1]):
                    keep[run[x]] = False
                    dropped += 1
            a = b
            continue
        for x in range(a, b - 1):
            for y in range(x + 1, b):  # later pairs of this hash, in log order
                compares += 1
                if _same_key(koffs, kdata, lo + order[x], lo + order[y]):
                    keep[lo + order[x]] = False
                    dropped += 1
                    break
        a = b
    return dropped, compares


@register_jitable
def _sort_by_bytes(koffs, kdata, run):
    """``run`` (pair indices) sorted stably by their keys' bytes, in place; returns the
    comparisons made. A natural merge sort (``idsort.merge_spans`` merges): keys already
    in order (one key many times) cost one pass, any order at most about
    ``len * log2(len)``."""
    m = len(run)
    offs = np.empty(m, np.int64)  # the run's keys as spans of kdata
    lens = np.empty(m, np.int64)
    for t in range(m):
        offs[t] = koffs[run[t]]
        lens[t] = koffs[run[t] + 1] - koffs[run[t]]
    compares = 0
    starts = np.empty(m + 1, np.int64)  # where each ascending stretch starts, then m
    r = 1
    starts[0] = 0
    for t in range(1, m):
        compares += 1
        if compare_ids(kdata, offs[t - 1], lens[t - 1], kdata, offs[t], lens[t]) > 0:
            starts[r] = t
            r += 1
    starts[r] = m
    src = np.arange(m)
    dst = np.empty_like(src)
    while r > 1:
        nr = 0
        p = 0
        while p < r:
            a = starts[p]
            if p + 1 == r:  # a last stretch without a partner
                for k in range(a, m):
                    dst[k] = src[k]
                starts[nr] = a
                nr += 1
                break
            compares += merge_spans(kdata, offs, lens, src, dst, a, starts[p + 1],
                                    starts[p + 2])
            starts[nr] = a
            nr += 1
            p += 2
        starts[nr] = m
        r = nr
        src, dst = dst, src
    run[:] = run[src]
    return compares


@register_jitable
def _same_key(koffs, kdata, j, k):
    n = koffs[j + 1] - koffs[j]
    if koffs[k + 1] - koffs[k] != n:
        return False
    for t in range(n):
        if kdata[koffs[j] + t] != kdata[koffs[k] + t]:
            return False
    return True


def _kept(map_offs, offs, data, keep):
    """``(map offsets, byte offsets, bytes)`` of the pairs ``keep`` marks (one side of
    the pairs: keys or values; ``map_offs`` None: not wanted)."""
    lens = np.diff(offs)[keep]
    new_offs = _cumsum0(lens)
    out = np.empty(int(new_offs[-1]), np.uint8)
    if len(lens):
        _gather(data, offs[:-1][keep], lens, new_offs[:-1], out)
    if map_offs is not None:
        map_offs = _cumsum0(keep.astype(np.int64))[map_offs]
    return map_offs, new_offs, out


def _chunk_end(lo: int, n: int, map_offs, kstart, vstart, limit: int) -> int:
    # The last row hi such that rows lo..hi-1 stay within the limit in all three sums.
    hi = n
    for cum in (map_offs, kstart, vstart):
        hi = min(hi, int(np.searchsorted(cum, cum[lo] + limit, side="right")) - 1)
    if hi <= lo and lo < n:
        raise ValueError(f"the metadata of row {lo} alone passes one Arrow array's limit "
                         f"of {limit} pairs or bytes")
    return hi


def metadata_array(index):
    """The metadata of ``index`` as one ``pa.MapArray`` (``map<string, string>``), a key
    once per map (its last value, as a restore gives it).

    Rows without metadata are null; ``{}`` is an empty map. When the metadata
    passes Arrow's 32-bit offsets a ``pa.ChunkedArray`` of such arrays is returned
    (see :func:`metadata_chunks`).
    """
    pa = require_pyarrow()
    chunks = metadata_chunks(index, unique_keys=True)
    return chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks)


def _chunks(arr) -> list:
    return list(arr.chunks) if hasattr(arr, "chunks") else [arr]


def _string_parts(arr) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets int64 [len + 1], data uint8)`` of a string or large_string array."""
    pa = require_pyarrow()
    if arr.null_count:
        raise ValueError("null strings where none may be")
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    if not (width is np.int64 or pa.types.is_string(arr.type)):
        raise ValueError(f"expected strings, got {arr.type}")
    bufs = arr.buffers()
    if len(arr) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.uint8)
    offsets = np.frombuffer(bufs[1], width)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def _validity(arr) -> np.ndarray:
    """Per row, whether it is not null: from the array's validity bitmap (no
    ``pyarrow.compute``, whose import alone took 0.22 s of a restore)."""
    n = len(arr)
    bitmap = arr.buffers()[0]
    if bitmap is None or arr.null_count == 0:
        return np.ones(n, np.bool_)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[arr.offset:arr.offset + n].astype(np.bool_)


def _meta_arenas_chunk(arr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pa = require_pyarrow()
    if not pa.types.is_map(arr.type):
        raise ValueError(f"metadata: expected map<string, string>, got {arr.type}")
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    valid = _validity(arr)
    map_offs = np.asarray(arr.offsets, np.int64)  # indexes arr.keys / arr.items
    k_offs, kdata = _string_parts(arr.keys)
    v_offs, vdata = _string_parts(arr.items)
    p0, p1 = int(map_offs[0]), int(map_offs[-1])
    if (len(k_offs) != len(v_offs) or (np.diff(map_offs) < 0).any() or p0 < 0
            or p1 > len(k_offs) - 1):
        raise ValueError("metadata: map offsets out of range")
    sizes = np.empty(n, np.int64)
    _bincode_sizes(valid, map_offs, k_offs, v_offs, sizes)
    starts = _cumsum0(sizes)
    out = np.empty(int(starts[-1]), np.uint8)
    _bincode_fill(valid, map_offs, k_offs, kdata, v_offs, vdata, starts, out)
    return out, np.where(valid, starts[:-1], -1), sizes


def arenas_from_arrow(ids, metadata) -> tuple:
    """RestoredIndex's arenas from an id array and a metadata array (or chunked arrays).

    Returns ``(id_arena, id_offs, id_lens, meta_arena, meta_offs, meta_lens)``: ids in
    array order; each non-null map re-encoded as a bincode ``HashMap<String, String>``
    (minimal varints, pairs in array order), ``meta_offs`` -1 where null.

    Raises:
        ValueError: null ids or map values, a wrong type, or lengths that differ.
    """
    id_cols, meta_cols = id_arenas(ids), meta_arenas(metadata)
    if len(id_cols[1]) != len(meta_cols[1]):
        raise ValueError(f"{len(id_cols[1])} ids but {len(meta_cols[1])} metadata rows")
    return (*id_cols, *meta_cols)


def id_arenas(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(id_arena, id_offs, id_lens)`` of ``arenas_from_arrow``."""
    parts = [_string_parts(c) for c in _chunks(ids)]
    if len(parts) == 1:
        offsets, data = parts[0]
        arena = data[offsets[0]:offsets[-1]]
        return arena, offsets[:-1] - offsets[0], np.diff(offsets)
    lens = np.concatenate([np.diff(o) for o, _ in parts] or [np.zeros(0, np.int64)])
    arena = np.concatenate([d[o[0]:o[-1]] for o, d in parts] or [np.zeros(0, np.uint8)])
    return arena, _cumsum0(lens)[:-1], lens


def meta_arenas(metadata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(meta_arena, meta_offs, meta_lens)`` of ``arenas_from_arrow``."""
    parts = [_meta_arenas_chunk(c) for c in _chunks(metadata)]
    if not parts:  # a chunked array of no chunks
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    bases = _cumsum0(np.array([len(a) for a, _, _ in parts], np.int64))
    return (np.concatenate([a for a, _, _ in parts]),
            np.concatenate([np.where(o >= 0, o + b, -1)
                            for (_, o, _), b in zip(parts, bases, strict=False)]),
            np.concatenate([s for _, _, s in parts]))
