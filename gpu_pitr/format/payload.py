"""Parser of one WalEntry payload, written once for both executors.

Every function here is ``register_jitable``: ``njit`` code (the CPU executor) and
``cuda.jit`` kernels (``gpu_pitr.kernels``) call the same source, and under
``NUMBA_ENABLE_CUDASIM=1`` it runs as plain Python on NumPy scalars. The helpers
called for every string and record (``_shared``) also have a CPU-only overload that
Numba inlines into its caller; CUDA keeps the generic one (compiled to PTX without
a GPU, numba-cuda 0.30.4, the decode kernels come out the same size with and
without it).
Two rules keep the three agree bit for bit:

* every byte is widened to ``uint64`` before a shift or a multiply (NumPy 2
  scalars compute ``uint8 << 8`` as 0), and unsigned values never meet signed
  ones in arithmetic (``uint64 op int64`` is ``float64``);
* no allocation and no recursion: nested batches use a caller-provided stack.

Payload layout (bincode 2 standard): see ``gpu_pitr.format.layout``.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload, register_jitable

from gpu_pitr.format.layout import (
    BATCH,
    DELETE,
    N_VARIANTS,
    VARINT_MAX_SINGLE,
    VARINT_U16,
    VARINT_U32,
    VARINT_U64,
)


def _shared(fn):
    """``register_jitable``, and for the CPU target an overload of its own that
    Numba inlines into its caller: a call passes each array as seven values, and
    these run per string or per record (decode median 0.333 -> 0.297 s on the 1 GiB
    benchmark log). Not ``parse_payload``: inlined into its callers, a cold compile
    took minutes. The most specific target's overload wins (Numba's documented
    rule for ``target=``), so CUDA, which has no CPU overloads, keeps the generic one."""
    register_jitable(fn)
    overload(fn, target="cpu", inline="always", strict=False)(lambda *args: fn)
    return fn

# Status codes of a record, in the record table's ``status`` column.
OK = 0
ERR_TRUNCATED = 1
ERR_VARINT = 2
ERR_VARIANT = 3
ERR_UTF8 = 4
ERR_OPTION = 5
ERR_COUNT = 6
ERR_DEPTH = 7

STATUS_TEXT = {
    ERR_TRUNCATED: "payload truncated",
    ERR_VARINT: "invalid varint",
    ERR_VARIANT: "unknown variant",
    ERR_UTF8: "invalid UTF-8 in a string",
    ERR_OPTION: "invalid option tag",
    ERR_COUNT: "count larger than the payload",
    ERR_DEPTH: "batches nested deeper than the parser's stack",
}

# Stack slots for nested batches in the first decode pass. A record nested
# deeper (valid, if unusual) reports ERR_DEPTH there and is decoded again with a
# stack of ``stack_for(payload length)`` slots, which always suffices.
MAX_BATCH_DEPTH = 64


@register_jitable
def stack_for(length):
    """Stack slots that any payload of ``length`` bytes can need (>= 2 bytes a level)."""
    return length // 2 + 2

FNV_OFFSET = np.uint64(14695981039346656037)
FNV_PRIME = np.uint64(1099511628211)
ASCII_MASK = np.uint64(0x8080808080808080)
FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)
FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)


@register_jitable
def read_uint_le(buf, pos, nbytes):
    """Unsigned little-endian integer of ``nbytes`` bytes at ``pos``, as uint64."""
    # A view from 0, indexed by the loop counter: the compiler drops the
    # negative-index checks (and, for 8 bytes on the CPU, makes one load).
    b = buf[pos:pos + nbytes]
    v = np.uint64(0)
    for k in range(nbytes):
        v |= np.uint64(b[k]) << np.uint64(8 * k)
    return v


@register_jitable
def read_varint(buf, pos, end, max_marker):
    """Decode one varint at ``pos``.

    Returns ``(value, next_pos)``; ``next_pos`` is negative (minus a status code)
    on error. ``max_marker`` is the largest marker the field's type admits
    (``VARINT_U32`` for the u32 variant index, ``VARINT_U64`` otherwise).
    """
    if pos >= end:
        return np.uint64(0), -ERR_TRUNCATED
    first = np.int64(buf[pos])
    if first <= VARINT_MAX_SINGLE:
        return np.uint64(first), pos + 1
    if first > max_marker:
        return np.uint64(0), -ERR_VARINT
    if first == VARINT_U16:
        width = 2
    elif first == VARINT_U32:
        width = 4
    else:
        width = 8
    if pos + 1 + width > end:
        return np.uint64(0), -ERR_TRUNCATED
    return read_uint_le(buf, pos + 1, width), pos + 1 + width


@register_jitable
def write_varint(out, p, v):
    """Write ``v`` at ``out[p]`` in its minimal varint form (as the oxirs-vec
    writer emits it); returns the position after it."""
    if v <= VARINT_MAX_SINGLE:
        out[p] = v
        return p + 1
    if v < 1 << 16:
        out[p] = VARINT_U16
        width = 2
    elif v < 1 << 32:
        out[p] = VARINT_U32
        width = 4
    else:
        out[p] = VARINT_U64
        width = 8
    for k in range(width):
        out[p + 1 + k] = (v >> (8 * k)) & 0xFF
    return p + 1 + width


def varint_widths(values: np.ndarray) -> np.ndarray:
    """Bytes of the minimal varint of each value (NumPy, for sizing buffers)."""
    v = np.asarray(values).astype(np.uint64)
    wide = np.where(v < 1 << 16, 3, np.where(v < 1 << 32, 5, 9))
    return np.where(v <= VARINT_MAX_SINGLE, 1, wide)


@register_jitable
def read_length(buf, pos, end, unit):
    """Varint length of ``unit``-byte items, checked against the bytes that remain.

    Returns ``(count, next_pos)``; ``next_pos`` negative on error. The check is
    done before anything uses the count, so a hostile length never allocates
    or reads out of bounds.
    """
    v, p = read_varint(buf, pos, end, VARINT_U64)
    if p < 0:
        return 0, p
    if v > np.uint64(end - p) // np.uint64(unit):
        return 0, -ERR_COUNT
    return np.int64(v), p


@_shared
def utf8_valid(buf, pos, n):
    """True when ``buf[pos:pos+n]`` is well-formed UTF-8 (RFC 3629)."""
    b = buf[pos:pos + n]
    i = 0
    while i < n:
        # ASCII runs, 8 bytes at a time.
        while i + 8 <= n and read_uint_le(b, i, 8) & ASCII_MASK == np.uint64(0):
            i += 8
        if i >= n:
            break
        b0 = np.int64(b[i])
        if b0 < 0x80:
            i += 1
            continue
        if 0xC2 <= b0 <= 0xDF:
            need = 1
            lo = 0x80
            hi = 0xBF
        elif 0xE0 <= b0 <= 0xEF:
            need = 2
            lo = 0xA0 if b0 == 0xE0 else 0x80
            hi = 0x9F if b0 == 0xED else 0xBF
        elif 0xF0 <= b0 <= 0xF4:
            need = 3
            lo = 0x90 if b0 == 0xF0 else 0x80
            hi = 0x8F if b0 == 0xF4 else 0xBF
        else:
            return False
        if i + need >= n:
            return False
        b1 = np.int64(b[i + 1])
        if b1 < lo or b1 > hi:
            return False
        for k in range(2, need + 1):
            bk = np.int64(b[i + k])
            if bk < 0x80 or bk > 0xBF:
                return False
        i += need + 1
    return True


@register_jitable
def read_string(buf, pos, end):
    """A bincode String at ``pos``: returns ``(start, length, next_pos)``."""
    n, p = read_length(buf, pos, end, 1)
    if p < 0:
        return 0, 0, p
    if not utf8_valid(buf, p, n):
        return 0, 0, -ERR_UTF8
    return p, n, p + n


@_shared
def id_key(buf, pos, n):
    """64-bit key of the id bytes: an accelerator only, never an identity.

    FNV-1a over 8-byte little-endian words (then the tail bytes), then
    MurmurHash3's finaliser: FNV's low bits depend only on the low bits of the
    input, and hash tables index by the low bits.
    """
    b = buf[pos:pos + n]
    h = FNV_OFFSET ^ np.uint64(n)
    words = n // 8
    for w in range(words):
        h = (h ^ read_uint_le(b, 8 * w, 8)) * FNV_PRIME
    for k in range(8 * words, n):
        h = (h ^ np.uint64(b[k])) * FNV_PRIME
    return fmix64(h)


@_shared
def fmix64(h):
    """MurmurHash3's 64-bit finaliser of the uint64 ``h`` (a bijection): ``id_key``'s last
    step, and the mix of the seeded homes (``gpu_pitr.homes``)."""
    h ^= h >> np.uint64(33)
    h *= FMIX_1
    h ^= h >> np.uint64(33)
    h *= FMIX_2
    h ^= h >> np.uint64(33)
    return h


@_shared
def skip_metadata(buf, pos, end):
    """``Option<HashMap<String,String>>`` at ``pos``.

    Returns ``(map_start, map_len, next_pos)``; ``map_start`` is -1 for None.
    """
    if pos >= end:
        return -1, 0, -ERR_TRUNCATED
    tag = np.int64(buf[pos])
    if tag == 0:
        return -1, 0, pos + 1
    if tag != 1:
        return -1, 0, -ERR_OPTION
    start = pos + 1
    count, p = read_length(buf, start, end, 2)
    if p < 0:
        return -1, 0, p
    for _ in range(count):
        _s, _n, p = read_string(buf, p, end)
        if p < 0:
            return -1, 0, p
        _s, _n, p = read_string(buf, p, end)
        if p < 0:
            return -1, 0, p
    return start, p - start, p


@register_jitable
def parse_payload(
    buf, pos, end, stack, write, e0,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    """Parse the payload ``buf[pos:end]`` of one record.

    Returns ``(status, kind, timestamp, aux, n_entries, stop)``: ``kind`` is the
    top-level variant, ``aux`` the transaction id (transaction markers) or the
    ``sequence_number`` field (Checkpoint), ``n_entries`` the number of data
    entries (nested batches flattened), ``stop`` the offset where the entry ends
    (bytes after it are trailing) or, on error, where decoding failed.

    When ``write`` is true the data entries are stored at ``e0, e0 + 1, ...`` of
    the ``e_*`` columns, in log order. ``stack`` holds, per open batch level,
    the number of entries still to read; nesting deeper than it has slots stops
    with ``ERR_DEPTH`` (see ``stack_for``).
    """
    p = pos
    depth = 0
    n_ent = 0
    top_kind = -1
    ts = np.uint64(0)
    aux = np.uint64(0)
    while True:
        v, p2 = read_varint(buf, p, end, VARINT_U32)
        if p2 < 0:
            return -p2, top_kind, ts, aux, n_ent, p
        if v >= np.uint64(N_VARIANTS):
            return ERR_VARIANT, top_kind, ts, aux, n_ent, p
        kind = np.int64(v)
        if top_kind < 0:
            top_kind = kind
        p = p2
        if kind == BATCH:
            count, p2 = read_length(buf, p, end, 1)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            if depth >= stack.shape[0]:
                return ERR_DEPTH, top_kind, ts, aux, n_ent, p
            p = p2
            stack[depth] = count
            depth += 1
        elif kind <= DELETE:
            id_s, id_n, p2 = read_string(buf, p, end)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            p = p2
            vec_off = -1
            dim = 0
            meta_s = -1
            meta_n = 0
            if kind != DELETE:
                dim, p2 = read_length(buf, p, end, 4)
                if p2 < 0:
                    return -p2, top_kind, ts, aux, n_ent, p
                vec_off = p2
                p = p2 + dim * 4
                meta_s, meta_n, p2 = skip_metadata(buf, p, end)
                if p2 < 0:
                    return -p2, top_kind, ts, aux, n_ent, p
                p = p2
            v, p2 = read_varint(buf, p, end, VARINT_U64)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            p = p2
            if depth == 0:
                ts = v
            else:
                stack[depth - 1] -= 1
            if write:
                k = e0 + n_ent
                e_op[k] = kind
                e_id_off[k] = id_s
                e_id_len[k] = id_n
                e_vec_off[k] = vec_off
                e_dim[k] = dim
                e_meta_off[k] = meta_s
                e_meta_len[k] = meta_n
                e_key[k] = id_key(buf, id_s, id_n)
            n_ent += 1
        else:
            # Checkpoint and transaction markers: (u64, timestamp). Inside a batch
            # they decode but carry no data; only top-level markers count.
            a, p2 = read_varint(buf, p, end, VARINT_U64)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            p = p2
            v, p2 = read_varint(buf, p, end, VARINT_U64)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            p = p2
            if depth == 0:
                return OK, top_kind, v, a, n_ent, p
            stack[depth - 1] -= 1
        # Close every batch whose entries are all read: its timestamp follows.
        while depth > 0 and stack[depth - 1] == 0:
            v, p2 = read_varint(buf, p, end, VARINT_U64)
            if p2 < 0:
                return -p2, top_kind, ts, aux, n_ent, p
            p = p2
            depth -= 1
            if depth == 0:
                ts = v
            else:
                stack[depth - 1] -= 1
        if depth == 0:
            return OK, top_kind, ts, aux, n_ent, p


@register_jitable
def decode_record(
    buf, start, end, i, stack,
    r_status, r_kind, r_ts, r_aux, r_nent, r_stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    """First decode pass over record ``i`` whose payload is ``buf[start:end]``.

    Fills the record columns at ``i``. A non-batch record's entry is stored at
    entry slot ``i``; a batch's entries are only counted here, and written by a
    second pass (``parse_payload`` with ``write``) at slots the caller assigns.
    """
    v, p = read_varint(buf, start, end, VARINT_U32)
    record_columns(
        buf, start, end, i, stack, not (p >= 0 and v == np.uint64(BATCH)),
        r_status, r_kind, r_ts, r_aux, r_nent, r_stop,
        e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
    )


@register_jitable
def record_columns(
    buf, start, end, i, stack, write,
    r_status, r_kind, r_ts, r_aux, r_nent, r_stop,
    e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
):
    """Parse record ``i`` (payload ``buf[start:end]``) into the record columns at ``i``;
    with ``write``, its data entries go to entry slots ``i, i + 1, ...``. Without,
    nothing is written but the record columns: all a record past the stop point
    needs (its status, and where its entry ends)."""
    status, kind, ts, aux, n_ent, stop = parse_payload(
        buf, start, end, stack, write, i,
        e_op, e_id_off, e_id_len, e_vec_off, e_dim, e_meta_off, e_meta_len, e_key,
    )
    r_status[i] = status
    r_kind[i] = kind
    r_ts[i] = ts
    r_aux[i] = aux
    r_nent[i] = n_ent
    r_stop[i] = stop
