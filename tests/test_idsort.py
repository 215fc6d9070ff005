"""The order of the restored index: ids sorted by their UTF-8 bytes, exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_pitr.homes import HOME_SEED
from gpu_pitr.resolve.idsort import sorted_id_order


def _arena(ids: list[bytes]):
    lens = np.array([len(b) for b in ids], np.int64)
    offs = np.cumsum(lens) - lens
    arena = np.frombuffer(b"".join(ids) or b"\0", np.uint8).copy()
    return arena, offs, lens


# Shared prefixes, NULs, high bytes and lengths around the 8-byte words.
_ID = st.builds(lambda p, s: p + s,
                st.sampled_from([b"", b"https://data.example.org/item/", b"\xff" * 7, b"a\0"]),
                st.binary(max_size=19))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ID, max_size=60))
def test_ids_sort_by_bytes(ids):
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)
    # Equal ids keep their order (the sort is stable).
    assert all(order[k] < order[k + 1] for k in range(len(ids) - 1)
               if ids[order[k]] == ids[order[k + 1]])


def test_ids_longer_than_a_16_bit_length_sort_by_bytes():
    # Equal after zero padding, so only the lengths order them: 65535 and 65536 bytes
    # (as 16-bit numbers 65535 and 0).
    short = b"x" * 65_535
    ids = [short + b"\0", b"y", short, b"x"]
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)


@settings(max_examples=300, deadline=None)
@given(_ID, _ID)
def test_compare_ids_is_byte_order(a, b):
    from gpu_pitr.resolve.idsort import compare_ids

    arena, offs, lens = _arena([a, b])
    want = (a > b) - (a < b)
    assert compare_ids(arena, offs[0], lens[0], arena, offs[1], lens[1]) == want
    assert compare_ids(arena, offs[1], lens[1], arena, offs[0], lens[0]) == -want


@settings(max_examples=200, deadline=None)
@given(st.sets(_ID, max_size=80), st.data())
def test_merge_of_two_sorted_lists(ids, data):
    """The parallel merge of the executor's ids (rows anywhere) with the base rows not
    moved in (cut into parts at ids of the first list) equals a plain sort, and each
    id's spans and vector come along."""
    from gpu_pitr.snapshot.base import _merge_into

    ids = sorted(ids)
    in_a = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    a = [x for x, f in zip(ids, in_a, strict=True) if f]
    b_kept = [x for x, f in zip(ids, in_a, strict=True) if not f]
    # The base holds its kept ids among others that moved into the executor.
    moved = data.draw(st.lists(st.booleans(), min_size=len(b_kept), max_size=len(b_kept)))
    b, rest = [], []
    for x, m in zip(b_kept, moved, strict=True):
        if m:
            b.append(b"moved:" + x)
        rest.append(len(b))
        b.append(x)
    a_arena, a_offs, a_lens = _arena(a)
    b_arena, b_offs, b_lens = _arena(b)
    a_row = np.array(data.draw(st.permutations(range(len(a)))), np.int64)
    a_rows = np.zeros((len(a), 2), np.float32)
    a_rows[a_row, 0] = np.arange(len(a))  # a's id i is in row a_row[i]
    b_rows = np.zeros((len(b), 2), np.float32)
    b_rows[:, 1] = np.arange(len(b))
    a_meta = np.where(np.arange(len(a)) % 2, 10 * np.arange(len(a)), -1)
    b_meta = np.where(np.arange(len(b)) % 3, 10 * np.arange(len(b)), -1)
    n = len(a) + len(rest)
    cols = [np.empty(n, np.int64) for _ in range(4)]
    out = np.empty((n, 2), np.float32)
    _merge_into(a_arena, a_offs, a_lens, a_meta, a_lens + 1, a_row, a_rows,
                b_arena, np.array(rest, np.int64), b_offs, b_lens, b_meta, b_lens + 1, b_rows,
                len(a_arena), 5000, *cols, out)
    arena = np.concatenate([a_arena, b_arena]).tobytes()
    assert [arena[o:o + k] for o, k in zip(cols[0], cols[1], strict=True)] == ids
    for k, x in enumerate(ids):
        if x in a:
            i = a.index(x)
            want = (i, 0.0, a_meta[i], len(x) + 1)
        else:
            r = b.index(x)
            want = (0.0, r, b_meta[r] + 5000 if b_meta[r] >= 0 else -1, len(x) + 1)
        assert (*out[k].tolist(), cols[2][k], cols[3][k]) == want


@pytest.mark.parametrize("layout", ["a after b", "a before b", "alternate", "a in the middle",
                                    "a empty", "b empty"])
def test_merge_parts_are_equal_stretches_of_the_result(layout):
    """Each part of the parallel merge writes as many rows as any other (to one row),
    however the two lists interleave, and its cuts are where a plain merge is at that
    row: a log whose new ids all sort after the base's gives no thread all the work."""
    from gpu_pitr.snapshot.base import MERGE_PARTS, merge_cuts

    ids = [b"id:%07d" % i for i in range(1000)]
    pick = {"a after b": lambda i: i >= 900, "a before b": lambda i: i < 37,
            "alternate": lambda i: i % 2 == 0, "a in the middle": lambda i: 400 <= i < 450,
            "a empty": lambda i: False, "b empty": lambda i: True}[layout]
    a = [x for i, x in enumerate(ids) if pick(i)]
    b = [x for i, x in enumerate(ids) if not pick(i)]
    a_arena, a_offs, a_lens = _arena(a)
    b_arena, b_offs, b_lens = _arena(b[::-1])  # rest names b's rows out of storage order
    rest = np.arange(len(b) - 1, -1, -1, dtype=np.int64)
    cut_a, cut_b = merge_cuts(a_arena, a_offs, a_lens, b_arena, rest, b_offs, b_lens)
    assert len(cut_a) == MERGE_PARTS + 1
    sizes = np.diff(cut_a + cut_b)
    assert sizes.sum() == len(ids) and sizes.max() - sizes.min() <= 1
    for ca, cb in zip(cut_a.tolist(), cut_b.tolist(), strict=True):
        # The first ca + cb rows of the merge hold exactly a[:ca] and b[:cb].
        assert sorted(a[:ca] + b[:cb]) == ids[:ca + cb]


def test_joined_arenas_equal_concatenate():
    """The merge's arenas are joined on the Numba threads in 4 MiB steps: every split
    of the two parts around a step boundary equals ``np.concatenate``."""
    from gpu_pitr.snapshot.base import _joined

    rng = np.random.default_rng(3)
    step = 1 << 22
    for na, nb in [(0, 0), (0, 5), (5, 0), (3, step + 7), (step, step), (step + 1, 2 * step + 3),
                   (2 * step - 1, 1)]:
        a = rng.integers(0, 256, na, dtype=np.uint8)
        b = rng.integers(0, 256, nb, dtype=np.uint8)
        assert np.array_equal(_joined(a, b), np.concatenate([a, b])), (na, nb)


def test_many_ids_sort_by_bytes_with_counting_on_the_numba_threads():
    """Enough ids that every counting sort runs on the Numba threads (a part's ids after the
    parts before it in each bucket): still byte order, repeated ids in input order."""
    from gpu_pitr.resolve.idsort import PARALLEL_COUNT_MIN
    from gpu_pitr.synth import synthetic_id

    rng = np.random.default_rng(11)
    nums = rng.integers(0, PARALLEL_COUNT_MIN, PARALLEL_COUNT_MIN + 1000)  # repeats too
    ids = [synthetic_id(int(x)).encode() for x in nums]
    order = sorted_id_order(*_arena(ids))
    assert order.tolist() == sorted(range(len(ids)), key=lambda i: ids[i])


@settings(max_examples=150, deadline=None)
@given(st.lists(_ID, max_size=60), st.sampled_from([0, 1, 2, 3]),
       st.sampled_from([2, 3, 5, 300]))
def test_ids_sort_by_bytes_with_any_digit_limits(id_list, few_words, few_combined):
    """With tiny limits most word columns sort byte by byte and few digits combine (a
    count of lengths too far apart falls back to sorting by them): the same byte order,
    ties in input order."""
    import gpu_pitr.resolve.idsort as idsort

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(idsort, "FEW_WORDS", few_words)
        mp.setattr(idsort, "FEW_COMBINED", few_combined)
        order = sorted_id_order(*_arena(id_list))
    assert order.tolist() == sorted(range(len(id_list)), key=lambda i: id_list[i])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 70), st.booleans())
def test_byte_values_rank_each_byte_among_those_present(seed, card, high):
    from gpu_pitr.resolve.idsort import _byte_values

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**64, card, dtype=np.uint64, endpoint=False)
    if high:
        pool |= np.uint64(0xFF << 56)
    col = pool[rng.integers(0, card, 300)]
    tables = np.full((8, 256), -7, np.int32)
    values = _byte_values(col, tables)
    for b in range(8):
        present = np.unique((col >> np.uint64(8 * b)) & np.uint64(255)).astype(np.int64)
        assert values[b] == len(present)
        assert np.array_equal(tables[b, present], np.arange(len(present)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.integers(0, 2**32 - 1), st.booleans())
def test_dense_ranks_are_the_ranks_of_the_distinct_words(card, seed, high):
    from gpu_pitr.resolve.idsort import _dense_ranks

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**64, card, dtype=np.uint64, endpoint=False)
    if high:
        pool |= np.uint64(1 << 63)  # words at the top of the range rank as unsigned
    col = pool[rng.integers(0, card, 500)]
    values, inverse = np.unique(col, return_inverse=True)
    rank = np.empty(len(col), np.int32)
    probes = np.zeros(1, np.int64)
    assert _dense_ranks(col, len(values), rank, HOME_SEED, probes) == len(values)
    assert np.array_equal(rank, inverse)
    if len(values) > 1:  # one distinct value more than allowed: refused
        assert _dense_ranks(col, len(values) - 1, rank, HOME_SEED, probes) == -1


def test_words_chosen_to_share_a_home_do_not_line_up_in_one_run():
    """A word column is ranked through an open-addressing table, and the words are the
    ids' bytes, which the store's users choose. Homed at bits 40-53 of the word times a
    public odd constant (invertible), 4,096 words picked to share them made one run:
    20,000 ids of them walked 37 million slots (a sort of 1M ids of such words took 2.6 s,
    of random ones 0.14 s). The home is seeded now: about one slot an id."""
    from gpu_pitr.resolve.idsort import FEW_WORDS, _dense_ranks

    rng = np.random.default_rng(3)
    home = rng.integers(0, 2**64, 3 * FEW_WORDS, dtype=np.uint64) & ~np.uint64(0x3FFF << 40)
    with np.errstate(over="ignore"):  # the old home of every word: 0
        words = np.unique(home * np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64)))[:FEW_WORDS]
    assert len(words) == FEW_WORDS
    col = words[rng.integers(0, FEW_WORDS, 20_000)]
    values, inverse = np.unique(col, return_inverse=True)
    rank = np.empty(len(col), np.int16)
    probes = np.zeros(1, np.int64)
    assert _dense_ranks(col, FEW_WORDS, rank, HOME_SEED, probes) == len(values)
    assert np.array_equal(rank, inverse)
    assert probes[0] <= len(col), probes[0]  # one run: 37 million


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.integers(0, 2**32 - 1), st.integers(0, 401), st.integers(1, 5),
       st.booleans())
def test_counting_sort_is_a_stable_sort_by_rank(m, seed, n, parts, first):
    """In any number of parts (some empty), from a given order or from the identity."""
    from gpu_pitr.resolve.idsort import _counting_sort

    rng = np.random.default_rng(seed)
    rank = rng.integers(0, m, n).astype(np.uint16)
    order = np.arange(n) if first else rng.permutation(n).astype(np.int64)
    out = np.full(n, -1, np.int64)
    _counting_sort(order if not first else out, rank, m, out, first, parts)
    assert np.array_equal(out, order[np.argsort(rank[order], kind="stable")])


def test_ids_sort_by_bytes_either_side_of_the_counting_limit():
    """A word column with FEW_WORDS distinct words is counted, one with a word more is
    sorted byte by byte: both give byte order, ties in input order."""
    from gpu_pitr.resolve.idsort import FEW_WORDS

    rng = np.random.default_rng(5)
    for distinct in (FEW_WORDS, FEW_WORDS + 1):
        words = np.unique(rng.integers(0, 2**64, 2 * distinct, dtype=np.uint64,
                                       endpoint=False))[:distinct]
        assert len(words) == distinct
        picks = np.concatenate([np.arange(distinct), rng.integers(0, distinct, 500)])
        # The first 8 bytes (one word column) hold exactly ``distinct`` words.
        ids = [int(words[k]).to_bytes(8, "big") + b"/" + bytes([k % 3])
               for k in rng.permutation(picks)]
        order = sorted_id_order(*_arena(ids))
        assert order.tolist() == sorted(range(len(ids)), key=lambda i: ids[i]), distinct


@settings(max_examples=100, deadline=None)
@given(st.lists(_ID, max_size=60), st.integers(1, 4))
def test_ids_sort_by_bytes_with_word_columns_built_a_few_at_a_time(id_list, columns):
    """However many word columns one pass over the ids builds, the same byte order."""
    import gpu_pitr.resolve.idsort as idsort

    arena, offs, lens = _arena(id_list)
    saved = idsort.WORD_COLUMNS_BYTES
    idsort.WORD_COLUMNS_BYTES = 8 * max(len(offs), 1) * columns
    try:
        order = sorted_id_order(arena, offs, lens)
    finally:
        idsort.WORD_COLUMNS_BYTES = saved
    assert [id_list[i] for i in order] == sorted(id_list)


def _shared_words_truth(ids: list[bytes]) -> int:
    """Leading 8-byte words every id holds whole and equal to the first id's."""
    k = 0
    while all(len(i) >= 8 * (k + 1) and i[8 * k:8 * k + 8] == ids[0][8 * k:8 * k + 8]
              for i in ids):
        k += 1
    return k


# Ids of one site: a shared prefix of 0-40 bytes (across word boundaries), then a
# suffix; some ids end inside the prefix (a shorter id is a prefix of the others).
_SITE = st.integers(0, 40).flatmap(lambda n: st.lists(
    st.one_of(st.builds(lambda s: b"https://example.org/corpus/abcdefghijklm"[:n] + s,
                        st.binary(max_size=20)),
              st.builds(lambda k: b"https://example.org/corpus/abcdefghijklm"[:k],
                        st.integers(0, n))),
    min_size=1, max_size=50))


@settings(max_examples=200, deadline=None)
@given(_SITE, st.integers(1, 3))
def test_shared_leading_words_are_found_exactly_and_not_sorted(ids, columns):
    """The words every id shares are found exactly, whatever the sample says, and
    the ids sort by bytes with them left out."""
    import gpu_pitr.resolve.idsort as idsort

    arena, offs, lens = _arena(ids)
    n_words = (int(lens.max()) + 7) // 8
    if n_words >= 2:
        # One column a pass: any shared word found saves a pass, so it is looked for
        # (with one word, one pass either way: not looked for).
        assert idsort._shared_words(arena, offs, lens, n_words, 1) == _shared_words_truth(ids)
    if n_words:
        # A pass that could not be saved is not looked for.
        assert idsort._shared_words(arena, offs, lens, n_words, n_words) == 0
    saved = idsort.WORD_COLUMNS_BYTES, idsort.SHARED_SAMPLE
    idsort.WORD_COLUMNS_BYTES = 8 * len(offs) * columns
    idsort.SHARED_SAMPLE = 2  # a sample that misses most ids
    try:
        order = sorted_id_order(arena, offs, lens)
    finally:
        idsort.WORD_COLUMNS_BYTES, idsort.SHARED_SAMPLE = saved
    assert [ids[i] for i in order] == sorted(ids)
    assert all(order[k] < order[k + 1] for k in range(len(ids) - 1)
               if ids[order[k]] == ids[order[k + 1]])


def test_ids_sharing_a_long_prefix_build_only_the_words_that_differ(monkeypatch):
    """200 shared bytes of 216-byte ids: 2 of the 27 word columns are built."""
    import gpu_pitr.resolve.idsort as idsort

    rng = np.random.default_rng(3)
    prefix = b"https://example.org/" + b"x" * 180
    ids = [prefix + b"%016d" % k for k in rng.permutation(5000)]
    ids += [prefix[:190] + b"%016d" % 1]  # one shorter id, parting in word 23
    built = []
    real = idsort._word_columns

    def spy(ids_, offs, lens, w0, out):
        built.extend(range(w0, w0 + len(out)))
        return real(ids_, offs, lens, w0, out)

    monkeypatch.setattr(idsort, "_word_columns", spy)
    monkeypatch.setattr(idsort, "WORD_COLUMNS_BYTES", 8 * len(ids))
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)
    assert sorted(built) == list(range(23, 27))


def _digit_values(ids: list[bytes]) -> list[int]:
    """The values of each digit of the LSD sort, least significant first, worked out
    here from the ids: the length, then per 8-byte word (last first) its distinct words
    if at most FEW_WORDS, else its 8 bytes' distinct values (last byte first)."""
    from gpu_pitr.resolve.idsort import FEW_WORDS

    lens = [len(x) for x in ids]
    digits = [max(lens) - min(lens) + 1]
    n_words = (max(lens) + 7) // 8
    for w in range(n_words - 1, -1, -1):
        words = [x[8 * w:8 * w + 8].ljust(8, b"\0") for x in ids]
        if len(set(words)) <= FEW_WORDS:
            digits.append(len(set(words)))
        else:
            digits += [len({word[b] for word in words}) for b in range(7, -1, -1)]
    return digits


def test_digits_combine_until_their_values_would_not_fit(monkeypatch):
    """Word columns of 300, 200 and 2 distinct words, then one of random words (more
    than FEW_WORDS: a digit per byte), then a few trailing bytes: consecutive digits
    are counted as one while their values multiply to at most FEW_COMBINED, and no
    further. Byte order, ties in input order."""
    import gpu_pitr.resolve.idsort as idsort
    from gpu_pitr.resolve.idsort import FEW_COMBINED

    rng = np.random.default_rng(7)
    words = [rng.integers(0, 2**64, k, dtype=np.uint64, endpoint=False) for k in (300, 200, 2)]
    ids = []
    for _ in range(6000):
        a, b, c = (int(rng.choice(w)).to_bytes(8, "big") for w in words)
        many = int(rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)).to_bytes(8, "big")
        tail = bytes([int(rng.integers(0, 2))]) * int(rng.integers(0, 3))
        ids.append(a + b + c + (many if rng.integers(0, 4) else b"") + tail)
    ids += ids[:500]  # repeats: equal ids keep their input order
    want, m = [], 1  # the counting sorts a greedy combination makes
    for values in _digit_values(ids):
        if values > 1:
            if m * values > FEW_COMBINED:
                want.append(m)
                m = 1
            m *= values
    want.append(m)
    # With these words: the random word's first byte (256 values) and the 2 are one
    # sort, the 200 and the 300 the last (60,000 values).
    assert want[-2:] == [256 * 2, 200 * 300]
    counted = []
    saved = idsort._counting_sort

    def counting_sort(order, rank, m, out, first, parts):
        counted.append(m)
        assert rank.max() < m
        saved(order, rank, m, out, first, parts)

    monkeypatch.setattr(idsort, "_counting_sort", counting_sort)
    order = sorted_id_order(*_arena(ids))
    assert order.tolist() == sorted(range(len(ids)), key=lambda i: ids[i])
    assert counted == want


# Ids of skewed lengths: most short, a few long, with shared prefixes and ties in the
# words the radix sort takes (a long id extending a short one, two long ones sharing
# their first words, equal ids).
_SKEWED = st.lists(st.one_of(
    st.binary(max_size=12),
    st.builds(lambda p, s: p + s, st.sampled_from([b"", b"abcdefgh", b"abcdefghij"]),
              st.binary(min_size=20, max_size=90))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_SKEWED, st.sampled_from([0.0, 0.1, 0.5]), st.integers(1, 3))
def test_ids_longer_than_the_radix_words_sort_by_comparison(ids, share, save):
    """With only the words of most ids radix sorted, the runs they leave tied that hold
    a longer id are sorted by comparison: the same byte order, stably."""
    import gpu_pitr.resolve.idsort as idsort

    saved = idsort.LONG_IDS_WORDS, idsort.LONG_IDS_SHARE, idsort.LONG_IDS_SAVE
    idsort.LONG_IDS_WORDS, idsort.LONG_IDS_SHARE, idsort.LONG_IDS_SAVE = 0, share, save
    try:
        order = sorted_id_order(*_arena(ids))
    finally:
        idsort.LONG_IDS_WORDS, idsort.LONG_IDS_SHARE, idsort.LONG_IDS_SAVE = saved
    assert [ids[i] for i in order] == sorted(ids)
    assert all(order[k] < order[k + 1] for k in range(len(ids) - 1)
               if ids[order[k]] == ids[order[k + 1]])


def test_one_long_id_does_not_make_every_id_pay_for_its_words(monkeypatch):
    """One 64 KiB id among 20k ids of 16 bytes: 2 words radix sorted, not 8,192, and the
    long ones that tie a short one on them sorted by comparison."""
    import gpu_pitr.resolve.idsort as idsort

    rng = np.random.default_rng(0)
    ids = [rng.integers(97, 123, 16, dtype=np.uint8).tobytes() for _ in range(20_000)]
    ids += [b"z" * 65_536, ids[5] + b"q" * 70_000, ids[5] + b"a" * 65_536, ids[5]]
    built, runs = [], []
    real_columns, real_runs = idsort._word_columns, idsort._sort_long_runs
    monkeypatch.setattr(idsort, "_word_columns", lambda i, o, n, w0, out: (
        built.extend(range(w0, w0 + len(out))), real_columns(i, o, n, w0, out)))
    monkeypatch.setattr(idsort, "_sort_long_runs", lambda *a: (
        runs.append(a[4:]), real_runs(*a)))
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)
    assert sorted(built) == [0, 1] and runs == [(0, 2)]


def test_few_ids_long_or_not_are_not_radix_sorted_a_word_at_a_time(monkeypatch):
    """Each word column the radix sort takes costs a pass of Python whatever the ids:
    two ids, one of 16 MB, were 2M columns (68 s, 3.8 GB). With few ids a few columns
    an id are built past the shared words, the rest sorted by comparison: also where
    every id is long (all ids past the share)."""
    import gpu_pitr.resolve.idsort as idsort

    prefix = b"p" * 24_000
    ids = [b"a", prefix + b"b" * 40_000, prefix + b"a" * 50_000, prefix, prefix + b"b" * 40_000,
           b"z" * 60_000]
    built = []
    real_columns = idsort._word_columns
    monkeypatch.setattr(idsort, "_word_columns", lambda i, o, n, w0, out: (
        built.extend(range(w0, w0 + len(out))), real_columns(i, o, n, w0, out)))
    for case in (ids, ids[1:5]):
        built.clear()
        order = sorted_id_order(*_arena(case))
        assert [case[i] for i in order] == sorted(case)
        assert order.tolist() == sorted(range(len(case)), key=lambda i: (case[i], i))
        assert len(built) <= max(idsort.LONG_IDS_WORDS, idsort.RADIX_WORDS_PER_ID * len(case))


# Pieces that put NULs, prefixes and equal words at and across the 8-byte words.
_PIECE = st.sampled_from([b"", b"\0", b"\0" * 7, b"\0" * 8, b"a" * 8, b"a" * 9, b"a" * 16,
                          b"\xff", b"b"])
_LONG_ID = st.builds(lambda p, parts: p + b"".join(parts),
                     st.sampled_from([b"", b"x" * 8, b"x" * 16, b"x" * 80]),
                     st.lists(_PIECE, max_size=14))


@settings(max_examples=300, deadline=None)
@given(st.lists(_LONG_ID, min_size=2, max_size=12), st.integers(0, 4), st.integers(1, 3),
       st.sampled_from([4, 1 << 16]))
def test_runs_tied_past_the_radix_words_sort_by_their_other_bytes(ids, per_id, few,
                                                                  combined):
    """The radix sort takes few words (RADIX_WORDS_PER_ID, LONG_IDS_WORDS made small);
    the runs it leaves tied are sorted by the bytes past its words and then length:
    ids ending with NULs, prefixes of others, equal ids and ids ending at a word's
    edge sort as their bytes, stably (also with the lengths sorted by argsort)."""
    import gpu_pitr.resolve.idsort as idsort

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(idsort, "RADIX_WORDS_PER_ID", per_id)
        mp.setattr(idsort, "LONG_IDS_WORDS", few)
        mp.setattr(idsort, "LONG_IDS_SAVE", 1)
        mp.setattr(idsort, "FEW_COMBINED", combined)
        order = sorted_id_order(*_arena(ids))
    assert order.tolist() == sorted(range(len(ids)), key=lambda i: (ids[i], i))
