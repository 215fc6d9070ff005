"""The JSON text of metadata maps, compiled: what the .npz ``metadata`` member holds.

A map is the arena's form, bincode ``HashMap<String, String>`` (count, then key and
value strings), already validated where it was decoded. Its text is byte for byte
``json.dumps(decode_metadata(raw), sort_keys=True, ensure_ascii=False,
separators=(",", ":"))``:
- keys sorted by their UTF-8 bytes (code-point order, what ``sort_keys`` gives for
  strings without surrogates, which valid UTF-8 cannot hold); a key written more
  than once keeps its last value (a dict's update);
- only ``"``, ``\\`` and the characters below U+0020 escaped: ``\\n \\r \\t \\b \\f``
  by name, the others as ``\\u00XX`` with lowercase hex (``ensure_ascii=False``
  leaves every other character as it is).

Python's json spent about 10 µs a map (500k ids with 1 KB text maps: 5.2 s, most of
an .npz write); here the maps are encoded on Numba's threads.
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.extending import register_jitable

from gpu_pitr.format.layout import VARINT_U64
from gpu_pitr.format.payload import read_varint
from gpu_pitr.jit import NO_REFCOUNTS, njit
from gpu_pitr.resolve.idsort import compare_ids, merge_sort_spans

_NULL = np.frombuffer(b"null", np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
#: Per byte below 0x80: 0 (as it is), or the letter of its two-character escape,
#: or 1 (``\\u00XX``).
_ESCAPE = np.zeros(128, np.uint8)
_ESCAPE[:0x20] = 1
for _byte, _letter in ((0x22, b'"'), (0x5C, b"\\"), (0x0A, b"n"), (0x0D, b"r"),
                       (0x09, b"t"), (0x08, b"b"), (0x0C, b"f")):
    _ESCAPE[_byte] = _letter[0]


@register_jitable
def _text(a, p):
    """A validated bincode string at ``p``: ``(start, length)``, next at start+length."""
    n, q = read_varint(a, p, len(a), VARINT_U64)
    return q, np.int64(n)


@register_jitable
def _pairs(a, p, ko, kl, vo, vl):
    """The map at ``p``: each pair's key and value spans, in written order. Returns
    how many pairs."""
    count, p = read_varint(a, p, len(a), VARINT_U64)
    n = np.int64(count)
    for i in range(n):
        ko[i], kl[i] = _text(a, p)
        p = ko[i] + kl[i]
        vo[i], vl[i] = _text(a, p)
        p = vo[i] + vl[i]
    return n


@register_jitable
def _key_order(a, ko, kl, order, tmp):
    """``order`` sorted by key bytes, stable; then each run of equal keys cut to its
    last pair. Returns how many."""
    merge_sort_spans(a, ko, kl, order, 0, len(order), tmp)
    return _last_of_each(a, ko, kl, order)


@register_jitable
def _last_of_each(a, ko, kl, order):
    """``order`` (sorted, stable) cut to the last pair of each key; returns how many."""
    n = len(order)
    m = 0
    for i in range(n):
        if i + 1 < n and compare_ids(a, ko[order[i]], kl[order[i]],
                                     a, ko[order[i + 1]], kl[order[i + 1]]) == 0:
            continue  # a later pair of the same key follows: it wins
        order[m] = order[i]
        m += 1
    return m


@register_jitable
def _string_size(a, o, n):
    """``(bytes, characters)`` of ``a[o:o+n]`` as a JSON string: one pass the compiler
    vectorises. An escape adds 1 byte (``\\n``) or 5 (``\\u00XX``), ASCII all;
    characters are the bytes that do not continue a UTF-8 sequence."""
    b = a[o:o + n]
    extra = 0
    follow = 0
    for k in range(n):
        c = b[k]
        named = (c == 0x22) | (c == 0x5C) | (c == 0x08) | (c == 0x09) | (c == 0x0A) \
            | (c == 0x0C) | (c == 0x0D)
        extra += np.int64(named) + 5 * np.int64((c < 0x20) & ~named)
        follow += np.int64((c & 0xC0) == 0x80)
    return n + 2 + extra, n + 2 + extra - follow


@register_jitable
def _copy(b, lo, hi, out, q):
    """``b[lo:hi]`` into ``out`` at ``q``; returns where it ends."""
    # Zero-based views indexed by the loop counter: no negative-index checks, so the
    # compiler makes it a memcpy (1.5 ns a byte before).
    src = b[lo:hi]
    dst = out[q:q + hi - lo]
    for k in range(hi - lo):
        dst[k] = src[k]
    return q + hi - lo


@register_jitable
def _string_write(a, o, n, out, p, escape, hexd):
    """Writes ``a[o:o+n]`` as a JSON string at ``out[p]``; returns the bytes written.
    A text with escapes is copied a run between two of them at a time."""
    b = a[o:o + n]
    out[p] = 0x22
    special = 0
    for k in range(n):  # vectorised: most texts need no escape, and are copied whole
        c = b[k]
        special += np.int64((c < 0x20) | (c == 0x22) | (c == 0x5C))
    if special == 0:
        q = _copy(b, 0, n, out, p + 1)
        out[q] = 0x22
        return q + 1 - p
    q = p + 1
    run = 0
    for k in range(n):
        c = np.int64(b[k])
        if c >= 0x20 and c != 0x22 and c != 0x5C:
            continue
        q = _copy(b, run, k, out, q)
        run = k + 1
        e = np.int64(escape[c])
        out[q] = 0x5C
        if e == 1:
            out[q + 1] = 0x75  # u
            out[q + 2] = 0x30
            out[q + 3] = 0x30
            out[q + 4] = hexd[c >> 4]
            out[q + 5] = hexd[c & 0xF]
            q += 6
        else:
            out[q + 1] = e
            q += 2
    q = _copy(b, run, n, out, q)
    out[q] = 0x22
    return q + 1 - p


@register_jitable
def _map_json(a, start, out, p, escape, hexd, ko, kl, vo, vl, order, tmp):
    """The JSON object of the map at ``a[start]`` written at ``out[p]``, with scratch
    arrays of at least its pair count: returns ``(bytes, 0)``; with ``out`` empty,
    only counts: ``(bytes, characters)``."""
    n = _pairs(a, start, ko, kl, vo, vl)
    for i in range(n):
        order[i] = i
    m = _key_order(a, ko, kl, order[:n], tmp[:n])
    if len(out):
        out[p] = 0x7B  # {
        q = p + 1
        for i in range(m):
            if i:
                out[q] = 0x2C  # ,
                q += 1
            q += _string_write(a, ko[order[i]], kl[order[i]], out, q, escape, hexd)
            out[q] = 0x3A  # :
            q += _string_write(a, vo[order[i]], vl[order[i]], out, q + 1, escape, hexd) + 1
        out[q] = 0x7D  # }
        return q + 1 - p, 0
    size = 1 + max(m - 1, 0) + m + 1  # braces, commas, colons
    chars = size
    for i in range(m):
        for o, n in ((ko[order[i]], kl[order[i]]), (vo[order[i]], vl[order[i]])):
            s, c = _string_size(a, o, n)
            size += s
            chars += c
    return size, chars


#: Maps a task of the parallel pass.
_BLOCK = 1024
#: Pairs of the maps the parallel pass encodes, in scratch of its own per task (it
#: counts no references, so it cannot allocate; Numba's atomic counts on arrays both
#: threads slice made it 2-3x slower). Larger maps are encoded after, one by one.
_SMALL = 32


@register_jitable
def _encode_one(a, o, i, nbytes, nchars, out, out_offs, escape, hexd, ko, kl, vo, vl,
                order, tmp):
    if len(out):
        _map_json(a, o, out, out_offs[i], escape, hexd, ko, kl, vo, vl, order, tmp)
    else:
        nbytes[i], nchars[i] = _map_json(a, o, out, 0, escape, hexd, ko, kl, vo, vl,
                                         order, tmp)


@njit(cache=True, parallel=True, nogil=True, **NO_REFCOUNTS)
def _encode_small(a, offs, nbytes, nchars, out, out_offs, escape, hexd, scratch):
    # Sizes into nbytes, nchars when out is empty, else the texts at out_offs; maps
    # of at most _SMALL pairs. scratch: (blocks, 6, _SMALL).
    n = len(offs)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        s = scratch[blk]
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            if read_varint(a, offs[i], len(a), VARINT_U64)[0] <= _SMALL:
                _encode_one(a, offs[i], i, nbytes, nchars, out, out_offs, escape, hexd,
                            s[0], s[1], s[2], s[3], s[4], s[5])


@njit(cache=True, nogil=True)
def _encode_large(a, offs, nbytes, nchars, out, out_offs, escape, hexd):
    # The maps _encode_small leaves, with scratch as large as each.
    for i in range(len(offs)):
        count = np.int64(read_varint(a, offs[i], len(a), VARINT_U64)[0])
        if count > _SMALL:
            s = np.empty((6, count), np.int64)
            _encode_one(a, offs[i], i, nbytes, nchars, out, out_offs, escape, hexd,
                        s[0], s[1], s[2], s[3], s[4], s[5])


def _encode(a, offs, nbytes, nchars, out, out_offs) -> None:
    scratch = np.empty(((len(offs) + _BLOCK - 1) // _BLOCK, 6, _SMALL), np.int64)
    _encode_small(a, offs, nbytes, nchars, out, out_offs, _ESCAPE, _HEX, scratch)
    _encode_large(a, offs, nbytes, nchars, out, out_offs, _ESCAPE, _HEX)


def json_texts(arena: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray, np.ndarray]:
    """The JSON text of each map starting at ``arena[offs[i]]``, then ``null``, as
    UTF-8: ``(texts, text_offs, text_lens, chars)`` (``chars``: code points of each;
    the last of each column is ``null``'s)."""
    offs = np.ascontiguousarray(offs, np.int64)
    nbytes = np.empty(len(offs) + 1, np.int64)
    chars = np.empty(len(offs) + 1, np.int64)
    nbytes[-1] = chars[-1] = len(_NULL)
    _encode(arena, offs, nbytes, chars, np.empty(0, np.uint8), offs)
    text_offs = np.cumsum(nbytes) - nbytes
    texts = np.empty(int(nbytes.sum()), np.uint8)
    texts[-len(_NULL):] = _NULL
    _encode(arena, offs, nbytes, chars, texts, text_offs)
    return texts, text_offs, nbytes, chars


__all__ = ["json_texts"]
