"""RestoredIndex: the state at the stop point, ids sorted by their UTF-8 bytes."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from numba import prange

from gpu_pitr.format.codec import decode_varint
from gpu_pitr.jit import njit
from gpu_pitr.metajson import json_texts
from gpu_pitr.report import RestoreReport
from gpu_pitr.resolve.idsort import compare_ids, span_keys


@njit(cache=True, parallel=True)
def _ucs4(arena, offs, lens, out):
    # UTF-8 (validated at decode time) to UCS-4 code points, one id per row.
    for i in prange(len(offs)):
        p = offs[i]
        end = p + lens[i]
        j = 0
        while p < end:
            b = np.uint32(arena[p])
            if b < 0x80:
                cp = b
                p += 1
            elif b < 0xE0:
                cp = (((b & np.uint32(0x1F)) << np.uint32(6))
                      | (np.uint32(arena[p + 1]) & np.uint32(0x3F)))
                p += 2
            elif b < 0xF0:
                cp = (((b & np.uint32(0x0F)) << np.uint32(12))
                      | ((np.uint32(arena[p + 1]) & np.uint32(0x3F)) << np.uint32(6))
                      | (np.uint32(arena[p + 2]) & np.uint32(0x3F)))
                p += 3
            else:
                cp = (((b & np.uint32(0x07)) << np.uint32(18))
                      | ((np.uint32(arena[p + 1]) & np.uint32(0x3F)) << np.uint32(12))
                      | ((np.uint32(arena[p + 2]) & np.uint32(0x3F)) << np.uint32(6))
                      | (np.uint32(arena[p + 3]) & np.uint32(0x3F)))
                p += 4
            out[i, j] = cp
            j += 1


@njit(cache=True, parallel=True)
def _all_equal_to(arena, offs, lens, rep):
    # Whether every span equals the span of row rep[i] (its key's first row).
    differ = 0
    for i in prange(len(offs)):
        r = rep[i]
        if compare_ids(arena, offs[i], lens[i], arena, offs[r], lens[r]) != 0:
            differ += 1
    return differ == 0


def _distinct_spans(arena: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> tuple:
    """``(first, which)``: the first row of each distinct byte string
    ``arena[offs[i]:offs[i]+lens[i]]``, and per row the index of its own in ``first``.

    Grouped by a 64-bit key, then every row checked against its group's first row
    byte for byte; where two strings share a key, by the bytes themselves.
    """
    _, first, which = np.unique(span_keys(arena, offs, lens), return_index=True,
                                return_inverse=True)
    if _all_equal_to(arena, offs, lens, first[which]):
        return first, which.reshape(-1)
    seen: dict[bytes, int] = {}
    which = np.empty(len(offs), np.int64)
    for j, (o, m) in enumerate(zip(offs.tolist(), lens.tolist(), strict=True)):
        which[j] = seen.setdefault(arena[o:o + m].tobytes(), len(seen))
    return np.unique(which, return_index=True)[1], which


#: Rows of ``metadata_json`` made at a time.
_JSON_ROWS = 1 << 16

#: The most characters a NumPy unicode dtype holds: its itemsize (4 bytes a character)
#: is a C int. ``np.dtype("<U536870912")`` is a TypeError ("not understood").
MAX_UNICODE_CHARS = (2**31 - 1) // 4


def unicode_dtype(width: int, what: str) -> np.dtype:
    """``<U{width}``, or a ValueError naming ``what`` when NumPy has no such dtype (an
    id of 600 MB made ``ids``, and every .npz output of it, a TypeError traceback)."""
    if width > MAX_UNICODE_CHARS:
        raise ValueError(f"{what} of {width:,} characters: longer than a NumPy unicode "
                         f"array holds ({MAX_UNICODE_CHARS:,})")
    return np.dtype(f"<U{width}")


def json_rows(texts: tuple, which: np.ndarray) -> np.ndarray:
    """Rows of ``RestoredIndex.metadata_json``: per id in ``which``, its text of
    ``metadata_texts()``' ``texts`` (-1: the last, ``"null"``)."""
    arena, offs, lens, width = texts
    dtype = unicode_dtype(width, "a metadata text")
    cps = np.zeros((len(which), width), np.uint32)
    if len(which):
        _ucs4(arena, offs[which], lens[which], cps)
    return cps.view(dtype).reshape(len(which))


def decode_metadata(raw: bytes) -> dict[str, str]:
    """A bincode ``HashMap<String, String>`` (already validated): later keys win."""
    count, p = decode_varint(raw, 0, 64)
    out: dict[str, str] = {}
    for _ in range(count):
        n, p = decode_varint(raw, p, 64)
        key = raw[p:p + n].decode("utf-8")
        p += n
        n, p = decode_varint(raw, p, 64)
        out[key] = raw[p:p + n].decode("utf-8")
        p += n
    return out


class RestoredIndex:
    """The restored index: ``ids``, ``vectors``, ``metadata`` and the ``report``.

    Ids and metadata are kept as byte arenas and turned into Python objects
    only when first asked for. With the cuda executor ``vectors`` is a CuPy
    array on the device; ``to_host()`` gives a copy whose vectors are NumPy.
    """

    def __init__(self, id_arena, id_offs, id_lens, vectors, meta_arena, meta_offs, meta_lens,
                 report: RestoreReport) -> None:
        self._id_arena = id_arena
        self._id_offs = id_offs
        self._id_lens = id_lens
        self.vectors = vectors
        self._meta_arena = meta_arena
        self._meta_offs = meta_offs
        self._meta_lens = meta_lens
        self.report = report
        # Where in the log this state stands, and the raw records of the
        # transactions open there: what a snapshot of it needs to be resumed
        # (set by the restore; see gpu_pitr.snapshot.base).
        self.position: dict | None = None
        self.pending: bytes = b""

    def __repr__(self) -> str:
        # Its shape, not its data (nor the object's address alone). Vectors of (0, 0):
        # no dimension known yet (an empty log's), the report's ``dim`` (None) says which.
        shape = tuple(getattr(self.vectors, "shape", ()))
        dim = shape[1] if len(shape) == 2 and shape != (0, 0) else self.report.dim
        return f"RestoredIndex(ids={len(self)}, dim={dim}, backend={self.backend!r})"

    @property
    def backend(self) -> str:
        return self.report.backend

    def __len__(self) -> int:
        return len(self._id_offs)

    @cached_property
    def ids(self) -> np.ndarray:
        """Unicode array of the ids, sorted by UTF-8 bytes.

        NumPy's fixed-width strings drop trailing NUL characters; ``id_list()``
        is exact for such ids. Read-only: it is made once from the index's own ids,
        and outputs may write it as it is (``ids.copy()`` to change one).
        """
        ids = self.ids_rows(0, len(self))
        ids.flags.writeable = False
        return ids

    def ids_width(self) -> int:
        """The characters of ``ids``' dtype (the longest id's UTF-8 bytes; at least 1)."""
        return max(int(self._id_lens.max()) if len(self) else 1, 1)

    def id_lengths(self) -> np.ndarray:
        """The UTF-8 bytes of each id, in index order."""
        return self._id_lens

    def ids_rows(self, lo: int, hi: int) -> np.ndarray:
        """``ids[lo:hi]``, made without making the rest (``ids`` is four bytes a
        character: an ``.npz`` writer takes it a few rows at a time)."""
        width = self.ids_width()
        dtype = unicode_dtype(width, "an id")
        cps = np.zeros((hi - lo, width), np.uint32)
        if hi > lo:
            _ucs4(self._id_arena, self._id_offs[lo:hi], self._id_lens[lo:hi], cps)
        return cps.view(dtype).reshape(hi - lo)

    def id_list(self) -> list[str]:
        """The ids as exact Python strings, in index order."""
        a = self._id_arena
        return [bytes(a[o:o + n]).decode("utf-8") for o, n in zip(
            self._id_offs.tolist(), self._id_lens.tolist(), strict=True)]

    def ids_ending_in_nul(self) -> list[str]:
        """The ids (exact) that ``ids`` cannot hold: those ending in a NUL character."""
        offs, lens, a = self._id_offs, self._id_lens, self._id_arena
        bad = np.zeros(len(offs), np.bool_)
        some = lens > 0
        bad[some] = a[(offs + lens - 1)[some]] == 0
        return [bytes(a[o:o + n]).decode("utf-8")
                for o, n in zip(offs[bad].tolist(), lens[bad].tolist(), strict=True)]

    @cached_property
    def metadata(self) -> list[dict[str, str] | None]:
        a = self._meta_arena
        return [None if o < 0 else decode_metadata(bytes(a[o:o + n])) for o, n in zip(
            self._meta_offs.tolist(), self._meta_lens.tolist(), strict=True)]

    def metadata_json(self) -> np.ndarray:
        """One JSON object per id (``"null"`` when absent): sorted keys, compact."""
        texts, which = self.metadata_texts()
        out = np.empty(len(which), unicode_dtype(texts[3], "a metadata text"))
        for lo in range(0, len(which), _JSON_ROWS):
            out[lo:lo + _JSON_ROWS] = json_rows(texts, which[lo:lo + _JSON_ROWS])
        return out

    def metadata_texts(self) -> tuple[tuple, np.ndarray]:
        """``(texts, which)``: ``texts`` is ``(arena, offs, lens, width)``, the JSON
        (UTF-8) of each distinct metadata map, then ``"null"``, and the characters of
        the longest (at least 4); ``which`` per id the index of its text (-1: no
        metadata, the last). ``json_rows`` makes rows of ``metadata_json``."""
        n = len(self._meta_offs)
        which = np.full(n, -1, np.int64)
        a = self._meta_arena
        present = np.flatnonzero(self._meta_offs >= 0)
        distinct = np.zeros(0, np.int64)
        if len(present):
            # Most ids carry no metadata, and stores repeat a few maps over many ids:
            # each distinct encoding is made into JSON once.
            offs, lens = self._meta_offs[present], self._meta_lens[present]
            first, k = _distinct_spans(a, offs, lens)
            # Encoded in arena order: ids' order visits the maps at random (a
            # cache and TLB miss each; 500k 1 KB maps took 2.3x as long).
            distinct = offs[first]
            order = np.argsort(distinct, kind="stable")
            rank = np.empty(len(order), np.int64)
            rank[order] = np.arange(len(order))
            which[present] = rank[k]
            distinct = distinct[order]
        arena, offs, lens, chars = json_texts(a, distinct)
        return (arena, offs, lens, int(chars.max())), which

    def rows(self, lo: int, hi: int) -> RestoredIndex:
        """Rows ``lo:hi`` as an index of their own (views of this one's columns, the
        same arenas and report): what an output writes a piece at a time."""
        return RestoredIndex(self._id_arena, self._id_offs[lo:hi], self._id_lens[lo:hi],
                             self.vectors[lo:hi], self._meta_arena, self._meta_offs[lo:hi],
                             self._meta_lens[lo:hi], self.report)

    def row_groups(self, max_rows: int, max_bytes: int) -> list[tuple[int, int]]:
        """``(lo, hi)`` of consecutive rows covering the index, each at most
        ``max_rows`` rows and about ``max_bytes`` of ids, vectors and metadata (rows of
        the average size; at least one row a group, and one group when empty)."""
        n = len(self)
        row = 0.0
        if n:
            present = self._meta_offs >= 0
            dim = self.vectors.shape[1] if self.vectors.ndim == 2 else 0
            row = 4 * dim + (int(self._id_lens.sum())
                             + int(self._meta_lens[present].sum())) / n
        step = int(max(1, min(max_rows, max_bytes // max(row, 1))))
        return [(a, min(n, a + step)) for a in range(0, max(n, 1), step)]

    def to_host(self) -> RestoredIndex:
        """This index with its vectors in host memory (a NumPy array)."""
        if isinstance(self.vectors, np.ndarray):
            return self
        host = RestoredIndex(self._id_arena, self._id_offs, self._id_lens,
                             self.vectors.get(), self._meta_arena, self._meta_offs,
                             self._meta_lens, self.report)
        host.position, host.pending = self.position, self.pending
        return host
