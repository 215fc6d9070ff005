"""Order of ids by their UTF-8 bytes (the order of the restored index)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable

from gpu_pitr.format.payload import id_key, read_uint_le
from gpu_pitr.homes import HOME_SEED, seeded_home
from gpu_pitr.jit import njit


@register_jitable(inline="always")
def _byteswap(v):
    # The bytes of a uint64 in reverse order (one instruction once compiled).
    v = ((v & np.uint64(0x00000000FFFFFFFF)) << np.uint64(32)) | (v >> np.uint64(32))
    v = (((v & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16))
         | ((v >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)))
    return (((v & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8))
            | ((v >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)))


@register_jitable(inline="always")
def _word_be(x, i):
    # 8 bytes from ``x[i]`` as one big-endian word (a load and a byte swap once compiled).
    return _byteswap(read_uint_le(x, i, 8))


@register_jitable
def compare_ids(a, ao, an, b, bo, bn):
    """-1, 0 or 1 as the id ``a[ao:ao+an]`` sorts before, equal to or after
    ``b[bo:bo+bn]`` by bytes (a prefix first). Equal words are skipped 8 bytes at a
    time: ids share long prefixes (URIs)."""
    x = a[ao:ao + an]
    y = b[bo:bo + bn]
    m = min(an, bn)
    k = 0
    while k + 8 <= m and _word_be(x, k) == _word_be(y, k):
        k += 8
    while k < m:
        if x[k] != y[k]:
            return -1 if x[k] < y[k] else 1
        k += 1
    return -1 if an < bn else (1 if an > bn else 0)


@njit(cache=True, nogil=True, parallel=True)
def _span_keys(arena, offs, lens, out):
    for i in prange(len(offs)):
        out[i] = id_key(arena, offs[i], lens[i])


@njit(cache=True, nogil=True)
def _span_keys_serial(arena, offs, lens, out):
    for i in range(len(offs)):
        out[i] = id_key(arena, offs[i], lens[i])


def span_keys(arena: np.ndarray, offs: np.ndarray, lens: np.ndarray, *,
              parallel: bool = True) -> np.ndarray:
    """The 64-bit ``id_key`` of each byte string ``arena[offs[i]:offs[i]+lens[i]]`` (ids,
    metadata encodings): an accelerator for grouping, never an identity.

    ``parallel=False`` for a caller off the main thread, beside the main thread's own
    parallel steps (the snapshot's load): one core's loop that overlaps them. On
    Numba's ``workqueue`` layer a parallel call there would wait for theirs
    (``jit.OneRegionAtATime``), and on the others take cores they are using."""
    keys = np.empty(len(offs), np.uint64)
    (_span_keys if parallel else _span_keys_serial)(arena, offs, lens, keys)
    return keys


@register_jitable(inline="always")
def _padded_word(ids, o, n, at, end):
    # Bytes ``at..at+7`` of the id ``ids[o:o+n]`` as one big-endian word, zero padded past
    # its end (integer order == byte order): one load, masked, and a byte swap.
    rem = n - at
    if rem >= 8:
        return _word_be(ids, o + at)
    if rem <= 0:
        return np.uint64(0)
    if o + at + 8 <= end:
        keep = (np.uint64(1) << np.uint64(8 * rem)) - np.uint64(1)
        return _byteswap(read_uint_le(ids, o + at, 8) & keep)
    return _byteswap(read_uint_le(ids, o + at, rem))  # the last bytes of the arena


@njit(cache=True, nogil=True, parallel=True)
def _word_columns(ids, offs, lens, w0, out):
    # ``out[j, i]``: word ``w0 + j`` of id i, big-endian and zero padded. Every id is
    # read once for all the columns (the arena once per group of columns).
    end = len(ids)
    for i in prange(len(offs)):
        n = lens[i]
        o = offs[i]
        for j in range(out.shape[0]):
            out[j, i] = _padded_word(ids, o, n, 8 * (w0 + j), end)


def sorted_id_order(ids: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Permutation that sorts the ids ``ids[offs[i]:offs[i]+lens[i]]`` by bytes, stably.

    An LSD radix sort whose digits are, least significant first: the length (two ids
    equal after zero padding differ only by trailing zero bytes, so the shorter one, a
    prefix, comes first), then each 8-byte word of the ids, last word first. A word
    column with at most FEW_WORDS distinct words is one digit (its words' ranks); one
    with more is eight digits, its bytes (each byte's rank among the values found at
    that byte). A digit with one value is skipped (a shared prefix). Consecutive digits
    are combined into one while their values multiply to at most FEW_COMBINED, and
    each combined digit is one stable counting sort, on the Numba threads.
    The word columns are built a few at a time, each group in one pass over the ids;
    the leading words every id shares (``_shared_words``) are not built at all.
    """
    n = len(offs)
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    sort = _DigitSort(n)
    width, low = int(lens.max()), int(lens.min())
    if width - low + 1 <= FEW_COMBINED:
        sort.push(width - low + 1, _add_digit, (lens - low).astype(np.int32))
    else:  # lengths too far apart to count: sorted by them first
        sort.order = np.argsort(lens, kind="stable")
    n_words = (width + 7) // 8
    group = max(1, min(n_words, WORD_COLUMNS_BYTES // (8 * n)))
    shared = _shared_words(ids, offs, lens, n_words, group)
    cut = _radix_words(lens, n_words, shared)
    ranks = np.empty((group, n), np.int16)  # FEW_WORDS < 2**15
    tables = np.empty((8, 256), np.int32)
    for end in range(cut, shared, -group):
        w0 = max(shared, end - group)
        words = np.empty((end - w0, n), np.uint64)
        _word_columns(ids, offs, lens, w0, words)
        distinct = _dense_ranks_of_columns(words, ranks)
        for j in range(end - w0 - 1, -1, -1):
            if distinct[j] > 0:
                sort.push(int(distinct[j]), _add_digit, ranks[j])
                continue
            values = _byte_values(words[j], tables)
            for b in range(8):  # least significant byte first
                sort.push(int(values[b]), _add_byte_digit, words[j], 8 * b, tables[b])
        del words
    order = sort.finish()
    if cut < n_words:  # ids longer than the words sorted: their runs, by comparison
        _sort_long_runs(ids, offs, lens, order, shared, cut)
    return order


# Ids longer than this many 8-byte words may be few: then only the words of all but
# LONG_IDS_SHARE of the ids (and at least LONG_IDS_SAVE words fewer than the longest)
# are radix sorted, and the runs those words leave tied that hold a longer id are
# sorted by comparison. One 64 KiB id among 20k ids of 16 bytes made every id pay for
# 8,192 words: 769 ms against 2.7 ms.
LONG_IDS_WORDS = 8
LONG_IDS_SHARE = 1 / 1000
LONG_IDS_SAVE = 4


# The radix sort takes at most this many word columns an id past the shared words
# (LONG_IDS_WORDS at least), the rest of the longer ids sorted by comparison: a column
# costs tens of microseconds of Python whatever the ids, which only enough ids repay.
# Two ids, one of 16 MB, were 2M columns: 68 s and 3.8 GB (a future and a digit each).
# (With ids past that tied on every column, comparing costs about what the columns
# would: 1,000 ids of 64 KiB.)
RADIX_WORDS_PER_ID = 4


def _radix_words(lens: np.ndarray, n_words: int, shared: int) -> int:
    """How many leading words the radix sort takes (``n_words``: all of them)."""
    if n_words <= LONG_IDS_WORDS:
        return n_words
    n = len(lens)
    k = n - 1 - int(n * LONG_IDS_SHARE)  # the length all but that share are within
    cut = max(shared + 1, (int(np.partition(lens, k)[k]) + 7) // 8)
    cut = cut if n_words - cut >= LONG_IDS_SAVE else n_words
    return min(cut, shared + max(LONG_IDS_WORDS, RADIX_WORDS_PER_ID * n))


@register_jitable
def _same_words(ids, a_off, a_len, b_off, b_len, w0, w1, end):
    for w in range(w0, w1):
        if _padded_word(ids, a_off, a_len, 8 * w, end) != _padded_word(ids, b_off, b_len,
                                                                         8 * w, end):
            return False
    return True


@njit(cache=True, nogil=True)
def _sort_long_runs(ids, offs, lens, order, w0, w1):
    """Sort, by comparing bytes, each run of ``order`` whose ids agree on words
    ``w0..w1-1`` (the words before ``w0`` every id shares) and that holds an id longer
    than them: stably, in place (a merge sort)."""
    n = len(order)
    end = len(ids)
    covered = 8 * w1
    tmp = np.empty(n, np.int64)
    # The ids of a run agree on their first ``covered`` bytes (zero padded), so they
    # compare as their bytes past them, then their lengths: an id that ends before
    # them is a prefix of the others, and the radix sort put the ids tied here by
    # length already. (Compared from their first byte, 2,000 ids of 64 KiB differing
    # only in the last words took 3x as long as the radix sort of every word.)
    i = 0
    while i < n:
        a = order[i]
        longer = lens[a] > covered
        j = i + 1
        while j < n:
            b = order[j]
            if not _same_words(ids, offs[a], lens[a], offs[b], lens[b], w0, w1, end):
                break
            longer = longer or lens[b] > covered
            j += 1
        if longer and j - i > 1:
            merge_sort_spans(ids, offs, lens, order, i, j, tmp, covered)
        i = j


@register_jitable
def merge_sort_spans(ids, offs, lens, order, lo, hi, tmp, skip=0):
    """``order[lo:hi]`` (indices of spans ``ids[offs[k]:offs[k]+lens[k]]``) sorted
    stably by the spans' bytes past their first ``skip`` (those the caller knows they
    share): bottom-up, through ``tmp`` (as long as ``order``)."""
    width = 1
    src, dst = order, tmp
    in_tmp = False  # whether src is tmp
    while width < hi - lo:
        for a in range(lo, hi, 2 * width):
            merge_spans(ids, offs, lens, src, dst, a, min(a + width, hi),
                        min(a + 2 * width, hi), skip)
        src, dst = dst, src
        in_tmp = not in_tmp
        width *= 2
    if in_tmp:
        for k in range(lo, hi):
            order[k] = tmp[k]


@register_jitable
def merge_spans(ids, offs, lens, src, dst, a, m, b, skip=0):
    """``src[a:m]`` and ``src[m:b]``, each sorted by their spans' bytes past the first
    ``skip`` (as ``merge_sort_spans``), merged stably into ``dst[a:b]``; returns the
    comparisons made."""
    compares = 0
    i, j, k = a, m, a
    while i < m and j < b:
        compares += 1
        x, y = src[i], src[j]
        sx, sy = min(lens[x], skip), min(lens[y], skip)
        if compare_ids(ids, offs[y] + sy, lens[y] - sy, ids, offs[x] + sx,
                       lens[x] - sx) < 0:
            dst[k] = y
            j += 1
        else:  # equal: the left first (stable)
            dst[k] = x
            i += 1
        k += 1
    while i < m:
        dst[k] = src[i]
        i += 1
        k += 1
    while j < b:
        dst[k] = src[j]
        j += 1
        k += 1
    return compares


# The word columns built in one pass over the ids take at most this many bytes
# (at least one column): 3 columns for 1.2M ids.
WORD_COLUMNS_BYTES = 32 << 20


# Ids sampled to guess whether the ids share leading words worth a pass to find.
SHARED_SAMPLE = 64


def _shared_words(ids: np.ndarray, offs: np.ndarray, lens: np.ndarray, n_words: int,
                  group: int) -> int:
    """How many leading 8-byte words every id holds whole and equal to the first
    id's: word columns that are one value (a digit the sort would skip), so not built.

    Finding them is one pass over those bytes of every id; it is made only when a
    sample of the ids says it would save a pass over the ids (long shared prefixes,
    as URIs of one site have: 200-byte ids sharing 201 bytes took 29 passes of
    20M ids, 11 s, where 4 suffice).
    """
    n = len(offs)
    limit = min(n_words, int(lens[0]) // 8)
    if limit == 0 or -(-n_words // group) < 2:
        return 0
    step = max(1, n // SHARED_SAMPLE)
    sample = np.empty(1, np.int64)
    _shared_words_in_parts(ids, np.ascontiguousarray(offs[::step]),
                           np.ascontiguousarray(lens[::step]), offs[0], limit, sample)
    guess = int(sample[0])
    if -(-(n_words - guess) // group) == -(-n_words // group):
        return 0  # no pass saved even if every id shares what the sample does
    parts = np.empty(min(COUNT_PARTS, max(1, n // PARALLEL_COUNT_MIN)), np.int64)
    _shared_words_in_parts(ids, offs, lens, offs[0], guess, parts)
    return int(parts.min())


@njit(cache=True, nogil=True, parallel=True)
def _shared_words_in_parts(ids, offs, lens, first, limit, out):
    # out[p]: how many of the first ``limit`` words every id of part p holds whole and
    # equal to the words at ``first`` (the first id's). Words compare as loads.
    n = len(offs)
    parts = len(out)
    for p in prange(parts):
        k = limit
        for i in range(p * n // parts, (p + 1) * n // parts):
            o = offs[i]
            k = min(k, lens[i] // 8)
            w = 0
            while w < k and read_uint_le(ids, o + 8 * w, 8) == read_uint_le(ids, first + 8 * w, 8):
                w += 1
            k = w
            if k == 0:
                break
        out[p] = k


# A word column with at most this many distinct values is one digit (counted by rank).
FEW_WORDS = 4096
# Consecutive digits are combined into one while their values multiply to at most
# this many (the buckets of one counting sort).
FEW_COMBINED = 1 << 16
# From this many ids on, a counting sort runs on the Numba threads, in at most
# COUNT_PARTS parts (each counts into a table of up to FEW_COMBINED buckets).
PARALLEL_COUNT_MIN = 1 << 15
COUNT_PARTS = 16


class _DigitSort:
    """The LSD sort's state: the order so far (None: the input order) and the digit
    being combined (``combined`` holds values below ``m``)."""

    def __init__(self, n: int) -> None:
        self.order = None
        self.combined = np.empty(n, np.uint16)
        self.m = 1
        self.buffers = (np.empty(n, np.int64), np.empty(n, np.int64))
        self.parts = min(numba.get_num_threads(), COUNT_PARTS) if n >= PARALLEL_COUNT_MIN else 1

    def push(self, values: int, add, *args) -> None:
        """A more significant digit of ``values`` values: ``add(combined, m, *args)``
        puts it above the digits combined so far."""
        if values <= 1:
            return
        if self.m * values > FEW_COMBINED:
            self._count()
        add(self.combined, self.m, *args)
        self.m *= values

    def _count(self) -> None:
        if self.m <= 1:
            return
        # Into whichever buffer does not hold the order so far.
        out = self.buffers[1] if self.order is self.buffers[0] else self.buffers[0]
        first = self.order is None
        _counting_sort(out if first else self.order, self.combined, self.m, out, first,
                       self.parts)
        self.order = out
        self.m = 1

    def finish(self) -> np.ndarray:
        self._count()
        if self.order is None:
            return np.arange(len(self.combined), dtype=np.int64)
        return self.order


def _dense_ranks_of_columns(words: np.ndarray, ranks: np.ndarray) -> list[int]:
    """``_dense_ranks`` (limit FEW_WORDS) of each word column into ``ranks``, the columns
    on threads of their own (the compiled code releases the GIL). Not a ``prange``: with
    one, the sort's first call (compiling it) took 9.5 s instead of 7.1-7.4 s, and
    1.2M ids sorted no faster."""
    probes = np.zeros(len(words), np.int64)  # (counted for the tests: unread here)

    def rank(j: int) -> int:
        return _dense_ranks(words[j], FEW_WORDS, ranks[j], HOME_SEED, probes[j:j + 1])

    if len(words) == 1 or numba.get_num_threads() < 2:
        return [rank(j) for j in range(len(words))]
    with ThreadPoolExecutor(min(len(words), numba.get_num_threads()),
                            thread_name_prefix="gpu_pitr-sort") as pool:
        return list(pool.map(rank, range(len(words))))


@njit(cache=True, nogil=True)
def _dense_ranks(col, limit, rank, seed, probes):
    """How many distinct values ``col`` holds, with ``rank[i]`` the rank of ``col[i]``
    among them (0 for the least); -1 (and ``rank`` unspecified) when more than
    ``limit``. One pass through a small open-addressing table; ``probes[0]``: the
    slots it looked at past each value's home.

    The words are the ids' bytes, chosen by the store's users: homed at bits 40-53 of
    the word times a public odd constant, words picked to share them (that product is
    invertible) made one run that every one of the ids walked, 4,096 words deep (1M
    ids of three such words sorted in 2.6 s, of random ones 0.14 s). Homed by
    ``homes.seeded_home``."""
    cap = 16
    while cap < 4 * limit:
        cap *= 2
    mask = cap - 1
    keys = np.empty(cap, np.uint64)
    slot_of = np.full(cap, -1, np.int64)
    seen = np.empty(limit, np.uint64)
    m = 0
    walked = 0
    for i in range(len(col)):
        v = col[i]
        s = seeded_home(v, mask, seed)
        while slot_of[s] >= 0 and keys[s] != v:
            s = (s + 1) & mask
            walked += 1
        if slot_of[s] < 0:
            if m == limit:
                probes[0] = walked
                return -1
            keys[s] = v
            slot_of[s] = m
            seen[m] = v
            m += 1
        rank[i] = slot_of[s]
    probes[0] = walked
    by_value = np.argsort(seen[:m])
    to_rank = np.empty(m, np.int64)
    for r in range(m):
        to_rank[by_value[r]] = r
    for i in range(len(col)):
        rank[i] = to_rank[rank[i]]
    return m


@njit(cache=True, nogil=True)
def _byte_values(col, tables):
    """How many values each byte of the words in ``col`` takes (``[b]``: byte b, 0 the
    least significant), with ``tables[b, v]`` the rank of value v among them. One
    thread: 2.7 ms for 1.2M words; on the Numba threads 1.5 ms, but 1 s more to
    compile."""
    seen = np.zeros((8, 256), np.bool_)
    for i in range(len(col)):
        w = col[i]
        for b in range(8):
            seen[b, (w >> np.uint64(8 * b)) & np.uint64(255)] = True
    values = np.zeros(8, np.int64)
    for b in range(8):
        r = 0
        for v in range(256):
            tables[b, v] = r
            r += seen[b, v]
        values[b] = r
    return values


@njit(cache=True, nogil=True, parallel=True)
def _add_digit(combined, m, rank):
    # ``combined`` becomes the rank of (``rank``, then ``combined`` of ``m`` values).
    for i in prange(len(rank)):
        combined[i] = rank[i] * m + (combined[i] if m > 1 else 0)


@njit(cache=True, nogil=True, parallel=True)
def _add_byte_digit(combined, m, col, shift, table):
    # ``_add_digit`` of the ranks ``table`` gives the byte ``shift`` bits up in ``col``.
    s = np.uint64(shift)
    for i in prange(len(col)):
        r = table[np.int64((col[i] >> s) & np.uint64(255))]
        combined[i] = r * m + (combined[i] if m > 1 else 0)


@njit(cache=True, nogil=True, parallel=True)
def _counting_sort(order, rank, m, out, first, parts):
    """``out``: ``order`` (the identity when ``first``) stably sorted by
    ``rank[order[i]]`` (ranks 0..m-1). ``parts`` threads each count and place a
    part of ``order``; a part's items go after the parts before it in every bucket."""
    n = len(rank)
    start = np.zeros((parts, m), np.int64)
    for p in prange(parts):
        c = start[p]
        for i in range(p * n // parts, (p + 1) * n // parts):
            c[rank[i if first else order[i]]] += 1
    total = 0
    for r in range(m):
        for p in range(parts):
            k = start[p, r]
            start[p, r] = total
            total += k
    for p in prange(parts):
        c = start[p]
        for i in range(p * n // parts, (p + 1) * n // parts):
            o = i if first else order[i]
            r = rank[o]
            out[c[r]] = o
            c[r] += 1
