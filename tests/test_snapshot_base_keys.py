"""The table a restore from a base snapshot finds base rows with (``snapshot.base``).

Ids are chosen by the store's users and their ``id_key`` is cheap to collide
(``tests/collisions.py``). The table held one slot per row from a home of the key's
low bits: every row of one key, or of keys sharing their low bits, made one run of
slots, walked by every insert and every query that met it (16k ids of one key took
1.45 s to restore from a base, 32k 5.8 s). It now holds each key once, from a seeded
home, its other rows chained from it. These tests check the table's shape and what
it finds, not how long it takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import workloads as w
from collisions import colliding_ids, key_of, longest_run, unfmix

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.homes import HOME_SEED
from gpu_pitr.snapshot.base import LazyBase, _fill_key_table, _key_table, _take_rows

ONE_KEY = 0xDEADBEEF12345678


def _longest_run(slots: np.ndarray) -> int:
    """The most slots of the key table in a row that are taken (it wraps around)."""
    return longest_run(slots != -1)


def _taker(keys, table):
    moved = np.zeros(len(keys), np.bool_)
    out = np.empty(len(keys), np.int64)

    def take(query):
        m = _take_rows(np.asarray(query, np.uint64), *table, keys, moved, out)
        return sorted(out[:m].tolist())

    return take, moved


def test_rows_of_one_key_take_one_slot():
    """4,000 rows of one key among 4,000 of others: one slot for the key (it was one
    slot per row: a run of 4,000), every row of it found by one query, once."""
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64 - 1, 8000, dtype=np.uint64)
    same = rng.permutation(8000)[:4000]
    keys[same] = np.uint64(ONE_KEY)
    table = _key_table(keys)
    slots = table[0]
    assert np.count_nonzero(slots != -1) == len(np.unique(keys))
    assert _longest_run(slots) < 200
    take, moved = _taker(keys, table)
    query = np.full(3000, ONE_KEY, np.uint64)  # the key again and again in one query
    assert take(query) == sorted(same.tolist())
    other = int(np.flatnonzero(keys != np.uint64(ONE_KEY))[0])
    assert take([ONE_KEY, keys[other]]) == [other]
    assert moved.sum() == 4001


@pytest.mark.parametrize("kind", ["low_bits", "seed_0_home"])
def test_keys_sharing_a_home_are_spread_by_the_seed(kind):
    """Keys chosen to share their low bits (the old home), or to share a home under
    seed 0: spread over the table by any other seed, not one run."""
    n = 4096
    rng = np.random.default_rng(4)
    if kind == "low_bits":
        keys = (rng.integers(1, 2**40, n).astype(np.uint64) << np.uint64(24)) | np.uint64(5)
    else:
        keys = np.array([unfmix((i << 32) | 5) for i in range(1, n + 1)], np.uint64)
        assert _longest_run(_key_table(keys, 0)[0]) == n  # the seed is what spreads them
    for seed in (HOME_SEED, 1, 0x9E3779B97F4A7C15):
        table = _key_table(keys, seed)
        assert np.count_nonzero(table[0] != -1) == n
        assert _longest_run(table[0]) < 200, seed
        take, moved = _taker(keys, table)
        assert take(keys[::-1]) == list(range(n)) and moved.all()


def test_a_key_taken_is_not_walked_again():
    """Once a key's rows have moved, a query of it stops at its slot: its chain of rows
    is not read again (made to name another key's row here: were it walked, that row
    would move)."""
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64)
    keys[100:400] = np.uint64(ONE_KEY)
    table = _key_table(keys)
    take, moved = _taker(keys, table)
    assert take([ONE_KEY]) == list(range(100, 400))
    chain = table[1]
    chain[:] = -1
    chain[100] = 7  # row 7 is another key's, not moved
    assert take([ONE_KEY] * 50) == [] and not moved[7]
    assert take([keys[7]]) == [7]


@pytest.mark.parametrize("wide", [False, True], ids=["32-bit", "64-bit"])
def test_takes_match_a_model(wide):
    """Random keys of one to 300 rows, some sharing their top bits (the slot's tag)
    or their low bits; queries in random rounds, repeated keys and unknown keys among
    them: each round takes exactly the rows not taken before whose key it names. Both
    slot widths (64-bit slots hold more than 2**30 rows)."""
    rng = np.random.default_rng(6)
    distinct = np.concatenate([
        rng.integers(0, 2**64 - 1, 300, dtype=np.uint64),
        rng.integers(0, 2**20, 100).astype(np.uint64),  # tag 0, and each other's
        (rng.integers(0, 2**40, 100).astype(np.uint64) << np.uint64(24)) | np.uint64(9),
    ])
    counts = rng.choice([1, 1, 1, 2, 3, 50, 300], len(distinct))
    keys = np.repeat(distinct, counts)
    keys = keys[rng.permutation(len(keys))]
    if wide:
        slots = np.full(len(_key_table(keys)[0]), -1, np.int64)
        chain = np.empty(len(keys), np.int64)
        _fill_key_table(keys, slots, chain, HOME_SEED)
        table = (slots, chain, HOME_SEED)
    else:
        table = _key_table(keys)
        assert table[0].dtype == np.int32
    assert np.count_nonzero(table[0] != -1) == len(distinct)
    take, moved = _taker(keys, table)
    rows_of: dict[int, list[int]] = {}
    for r, k in enumerate(keys.tolist()):
        rows_of.setdefault(k, []).append(r)
    left = set(range(len(keys)))
    pool = np.concatenate([distinct, rng.integers(0, 2**64 - 1, 200, dtype=np.uint64)])
    for _ in range(40):
        query = pool[rng.integers(0, len(pool), rng.integers(0, 60))]
        want = sorted(r for k in set(query.tolist()) for r in rows_of.get(k, ()) if r in left)
        assert take(query) == want
        left -= set(want)
    assert set(take(pool)) == left and moved.all()


@pytest.mark.parametrize(("slots", "tag_bits"), [(1 << 15, 0), (1 << 12, 3)])
def test_slots_with_few_bits_or_none_left_for_the_tag(slots, tag_bits):
    """A slot's row bits follow the table's size, and its tag takes what is left: none
    at all in 32-bit slots past 2^30 rows. 16-bit slots stand in for them here (the
    table's code takes any width): with no tag, and with 3 bits, every key's rows are
    taken exactly, keys sharing their top bits among them."""
    from gpu_pitr.snapshot.base import _row_bits, _tag_bits

    table = np.full(slots, -1, np.int16)
    assert _tag_bits(table, _row_bits(table)) == tag_bits
    rng = np.random.default_rng(slots)
    distinct = rng.integers(0, 2**64 - 1, slots // 8, dtype=np.uint64)
    distinct[::2] &= np.uint64(2**60 - 1)  # their top bits alike
    keys = np.repeat(distinct, rng.choice([1, 1, 2, 3], len(distinct)))[: slots // 2]
    keys = keys[rng.permutation(len(keys))]
    chain = np.empty(len(keys), np.int64)
    _fill_key_table(keys, table, chain, HOME_SEED)
    assert np.count_nonzero(table != -1) == len(np.unique(keys))
    take, moved = _taker(keys, (table, chain, HOME_SEED))
    for k in np.unique(keys)[::3]:
        assert take([k]) == np.flatnonzero(keys == k).tolist()
    assert take(keys) == np.flatnonzero(~np.isin(keys, np.unique(keys)[::3])).tolist()
    assert moved.all()


def _vec(i: int) -> list[float]:
    return [float(i), -float(i) / 4]


@pytest.mark.parametrize("shard", [None, (0, 2), (1, 2)])
def test_a_base_of_ids_sharing_one_key_restores_exactly(tmp_path, shard):
    """A base of 2,000 ids of one key and 300 others; after it, some of those ids are
    updated, deleted, put again, and 300 new ids of the same key come: the restore from
    the base equals the restore of the whole log, and the expected rows, in chunks
    small enough that the key is named by many of them (and in id shards: the key's
    rows are all in one, or all out)."""
    same = colliding_ids(2300, key=ONE_KEY)
    assert {key_of(s.encode()) for s in same[:5]} == {ONE_KEY}
    others = [f"r{i:04d}" for i in range(300)]
    want: dict[str, tuple] = {}

    def put(batch, kind, ident, i, meta=None):
        batch.append((w.Ins if kind == "ins" else w.Upd)(ident, _vec(i), meta, ts=1))
        if kind == "upd" and meta is None:  # an update without metadata keeps the row's
            meta = want[ident][1]
        want[ident] = (_vec(i), meta)

    wal = w.LogBuilder()
    batch: list = []
    for i, ident in enumerate(same[:2000] + others):
        put(batch, "ins", ident, i, {"n": str(i)} if i % 3 else None)
    for k in range(0, len(batch), 500):
        wal.add(w.Batch(batch[k:k + 500], ts=1))
    first = Path(wal.write(tmp_path / "wal1"))
    snapshot.save(gpu_pitr.restore(first, backend="cpu"), tmp_path / "snap")
    for i, ident in enumerate(same[:60]):
        batch = []
        put(batch, "upd", ident, 10_000 + i)
        wal.add(batch[0])
    for ident in same[100:400] + others[:20]:
        wal.add(w.Del(ident, ts=2))
        del want[ident]
    for i, ident in enumerate(same[150:170] + same[2000:]):
        batch = []
        put(batch, "ins", ident, 20_000 + i, {"again": "1"})
        wal.add(batch[0])
    d = Path(wal.write(tmp_path / "wal2"))
    kw = {} if shard is None else {"id_shard": shard}
    got = gpu_pitr.restore(d, backend="cpu", base=tmp_path / "snap", chunk_bytes=4096, **kw)
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(d, backend="cpu", **kw))
    if shard is None:
        assert got.id_list() == sorted(want, key=str.encode)
        for k, ident in enumerate(got.id_list()):
            vec, meta = want[ident]
            assert got.vectors[k].tolist() == vec
            assert got.metadata[k] == meta, ident
    else:
        sizes = len(got), len(gpu_pitr.restore(d, backend="cpu", base=tmp_path / "snap",
                                               id_shard=(1 - shard[0], 2)))
        assert sum(sizes) == len(want)


def test_lazy_base_moves_each_row_of_a_key_once(tmp_path):
    """LazyBase over a real snapshot of ids of one key: the first query of the key
    moves every row of it, later ones none; the rest are left for the merge."""
    same = colliding_ids(500, key=ONE_KEY)
    wal = w.LogBuilder()
    wal.add(w.Batch([w.Ins(s, [1.0]) for s in same + ["a", "b"]], ts=1))
    d = Path(wal.write(tmp_path / "wal"))
    snapshot.save(gpu_pitr.restore(d, backend="cpu"), tmp_path / "snap")
    for prepared in (False, True):
        snap = snapshot.load(tmp_path / "snap", key_table=prepared)
        assert (snap.key_table is not None) == prepared
        lazy = LazyBase(snap)
        assert np.count_nonzero(lazy.table[0] != -1) == 3
        rows = lazy.take(np.full(10, ONE_KEY, np.uint64))
        assert len(rows) == 500 and len(set(rows.tolist())) == 500
        assert len(lazy.take(np.full(10, ONE_KEY, np.uint64))) == 0
        assert lazy.untouched() == 2
