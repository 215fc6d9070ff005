"""The cpu executor's id and metadata arenas stay O(live bytes), not O(log).

Every metadata map applied and every id re-created appends to an arena; garbage is
squeezed out once the arena passes twice its live bytes (plus a slack, made tiny
here so that small logs compact many times). Results must not change.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import hostmem
from gpu_pitr.resolve import hostmap


@settings(max_examples=int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")) // 3,
          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compaction_changes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", data.draw(st.sampled_from([0, 7, 64])))
    _fast_equals_reference(data, tmp_path)


def _fast_equals_reference(data, tmp_path) -> None:
    """A drawn workload and target restored by the cpu executor (in chunks of a drawn
    size) and by the reference: the same state, or the same error."""
    work = data.draw(w.workloads(damage=False))
    wal = work.write(tempfile.mkdtemp(dir=tmp_path))  # its own: tmp_path is every example's
    kw = data.draw(w.targets(work))
    try:
        ref = w.restore_ref(wal, **kw)
    except gpu_pitr.errors.WalError as err:
        ref = type(err)
    try:
        got = w.restore_fast(wal, chunk_bytes=data.draw(st.sampled_from([64, 1000])), **kw)
    except gpu_pitr.errors.WalError as err:
        got = type(err)
    if isinstance(ref, type):
        assert got is ref
    else:
        assert (got.ids, got.vectors, got.metadata) == (ref.ids, ref.vectors, ref.metadata)


@settings(max_examples=int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")) // 5,
          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arenas_grown_on_demand_change_nothing(data, tmp_path, monkeypatch):
    """With every reservation refused (a log larger than half the RAM), the arenas
    grow as entries need, each growth copying the used bytes and handing the old
    pages back a few bytes at a time: results must not change (the test below makes
    sure that arenas do grow)."""
    monkeypatch.setattr(hostmap, "_reserve", lambda shape, dtype, limit, empty=np.empty:
                        empty((8,) + tuple(shape[1:]), dtype))  # 8 bytes, 8 rows
    monkeypatch.setattr(hostmem, "RELEASE_BLOCK", data.draw(st.sampled_from([1, 100, 5000])))
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", data.draw(st.sampled_from([0, 64])))
    _fast_equals_reference(data, tmp_path)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_arenas_grown_many_times_keep_every_byte(tmp_path, monkeypatch, block):
    """Arenas of 8 bytes grow (and compact) many times under 600 inserts, updates,
    deletes and re-inserts of ids and metadata of 1-90 bytes: equal to the reference."""
    from gpu_pitr import hostmem

    monkeypatch.setattr(hostmap, "_reserve", lambda shape, dtype, limit, empty=np.empty:
                        empty((8,) + tuple(shape[1:]), dtype))
    monkeypatch.setattr(hostmem, "RELEASE_BLOCK", block)
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", 64)
    grown = []
    real = hostmap._grow_arena
    monkeypatch.setattr(hostmap, "_grow_arena", lambda *a: grown.append(a[1]) or real(*a))
    log = w.LogBuilder()
    for i in range(600):
        ident = f"urn:{'é' * (i % 40)}:{i % 150}"
        if i % 9 == 4:
            log.add(w.Del(ident, ts=i))
        else:
            log.add(w.Upd(ident, [float(i), -0.0], {"k": "v" * (i % 90)} if i % 5 else None,
                          ts=i))
    wal = log.write(tmp_path / "wal")
    ref = w.restore_ref(wal)
    got = w.restore_fast(wal, chunk_bytes=256)
    assert (got.ids, got.vectors, got.metadata) == (ref.ids, ref.vectors, ref.metadata)
    assert len(grown) >= 10 and max(grown) > 1000


@pytest.mark.parametrize("spare", [True, False])
def test_rows_reserved_for_even_shards_when_room_for_any_is_refused(tmp_path, monkeypatch,
                                                                    spare):
    """When room for any one shard to hold every row passes what the OS is asked for,
    rows are reserved for even shards (an eighth to spare): a restore needs no growth
    then; with no rows to spare at all, the shards past their share grow the rows
    (copied, the old pages handed back): the same result either way."""
    real = hostmap.HostMap.set_dim
    reserved, grown = [], []

    def set_dim(self, dim):
        most = self._total_bytes // (4 * dim + 17) + 16
        self._limit = self.n_shards * most * 4 * dim - 1  # the full room is refused
        real(self, dim)
        reserved.append((self.rows.shape[0], self.n_shards * most, most))
        if not spare:  # no room to spare: growth must carry every row so far
            self._grow_rows(16)

    real_grow = hostmap.HostMap._grow_rows

    def grow(self, cap, reserve=False):
        grown.append(cap)
        return real_grow(self, cap, reserve)

    monkeypatch.setattr(hostmap.HostMap, "set_dim", set_dim)
    monkeypatch.setattr(hostmap.HostMap, "_grow_rows", grow)
    monkeypatch.setattr(hostmem, "RELEASE_BLOCK", 4096)
    log = w.LogBuilder()
    for i in range(3000):
        log.add(w.Upd(f"k{i * 7919 % 2000}", [float(i), 1.0, 2.0, 3.0], None, ts=i))
    wal = log.write(tmp_path / "wal")
    got = w.restore_fast(wal, backend="cpu", chunk_bytes=16 << 10)
    ref = w.restore_ref(wal)
    assert (got.ids, got.vectors, got.metadata) == (ref.ids, ref.vectors, ref.metadata)
    rows, full, most = reserved[0]
    assert rows < full and rows >= most
    if spare:
        assert grown == [rows]  # the reservation alone
    else:
        assert len(grown) > 3  # grown from 16 rows, over and over


def test_arenas_stay_bounded_under_churn(tmp_path, monkeypatch):
    """40 000 metadata updates and re-inserts of 50 ids: the arenas never hold more
    than twice the live bytes plus the slack."""
    slack = 4096
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", slack)
    peak = {"meta": 0, "ids": 0, "live": 0}
    original = hostmap._Shard.compact

    def watch(self):
        original(self)
        live_meta = int(self.row_meta_len[: self.n_rows][
            (self.row_id_len[: self.n_rows] >= 0) & (self.row_meta_off[: self.n_rows] >= 0)
        ].sum())
        live_ids = int(self.row_id_len[: self.n_rows][self.row_id_len[: self.n_rows] >= 0].sum())
        assert self.meta_used <= max(2 * live_meta, slack) + 2 * 4096
        assert self.ids_used <= max(2 * live_ids, slack) + 2 * 4096
        peak["meta"] = max(peak["meta"], self.meta_used)

    monkeypatch.setattr(hostmap._Shard, "compact", watch)
    log = w.LogBuilder()
    for i in range(40_000):
        ident = f"id-{i % 50:04d}"
        if i % 7 == 0 and i < 39_900:
            log.add(w.Del(ident, ts=i))
        else:
            log.add(w.Upd(ident, [float(i)], {"step": str(i), "pad": "x" * 40}, ts=i))
    wal = log.write(tmp_path / "wal")
    got = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=64 << 10)
    assert len(got) == 50 and peak["meta"] > 0
    last = {m["step"] for m in got.metadata}
    assert max(map(int, last)) == 39_999
    assert np.array_equal(got.vectors[:, 0] > 39_000, np.ones(50, bool))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_hit_check_compares_ids_like_numpy(data):
    """A map hit is confirmed by comparing id bytes 8 at a time, then the rest one
    by one: equal to NumPy's comparison for every length, offset, and place of a
    difference (in a whole word or in the tail)."""
    n = data.draw(st.integers(0, 41))
    ao, bo = data.draw(st.integers(0, 9)), data.draw(st.integers(0, 9))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(0, 256, ao + n + 3, dtype=np.uint8)
    b = rng.integers(0, 256, bo + n + 5, dtype=np.uint8)
    b[bo:bo + n] = a[ao:ao + n]
    if n and data.draw(st.booleans()):
        b[bo + data.draw(st.integers(0, n - 1))] ^= np.uint8(1 << data.draw(st.integers(0, 7)))
    want = bool(np.array_equal(a[ao:ao + n], b[bo:bo + n]))
    assert hostmap._same_bytes(a, ao, b, bo, n) is want


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rows_permute_in_place_exactly(data):
    """The in-place row permutation (cycles cut at evenly spaced positions and moved on
    several threads, the rest followed one by one) equals a gather, for permutations
    with one long cycle, many short ones, fixed points, fewer rows than cuts."""
    from gpu_pitr.resolve.hostmap import PERMUTE_CUTS, permute_rows_in_place

    n = data.draw(st.sampled_from([1, 2, 7, PERMUTE_CUTS - 1, PERMUTE_CUTS + 3, 5000, 40_000]))
    kind = data.draw(st.sampled_from(["random", "one_cycle", "swaps", "identity"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        perm = rng.permutation(n)
    elif kind == "one_cycle":
        order = rng.permutation(n)
        perm = np.empty(n, np.int64)
        perm[order] = np.roll(order, 1)
    elif kind == "swaps":
        perm = np.arange(n)
        for a, b in rng.integers(0, n, (n // 3, 2)):
            perm[[a, b]] = perm[[b, a]]
    else:
        perm = np.arange(n)
    perm = perm.astype(np.int64)
    rows = rng.integers(0, 256, (n, 12), dtype=np.uint8)
    want = rows[perm].copy()
    permute_rows_in_place(rows, perm)
    assert np.array_equal(rows, want)


def test_wide_rows_are_permuted_with_few_saved_aside(monkeypatch):
    """Each cut of the permutation's cycles saves its row aside: with 1024 cuts (fewer
    rows: every row) one vector of 4M floats restored with 2.1 GB of memory for 16 MB
    of index. Wide rows are cut at most PERMUTE_SAVED_BYTES of them apart, and still
    permute exactly."""
    cuts_seen = []
    real = hostmap._permute_rows_in_place
    monkeypatch.setattr(hostmap, "_permute_rows_in_place", lambda rows, perm, cuts: (
        cuts_seen.append(len(cuts)), real(rows, perm, cuts)))
    monkeypatch.setattr(hostmap, "PERMUTE_SAVED_BYTES", 8 * 4096, raising=False)
    rng = np.random.default_rng(5)
    for n, width in ((300, 4096), (300, 64 * 4096), (5, 12)):
        rows = rng.integers(0, 256, (n, width), dtype=np.uint8)
        perm = rng.permutation(n).astype(np.int64)
        want = rows[perm].copy()
        cuts_seen.clear()
        hostmap.permute_rows_in_place(rows, perm)
        assert np.array_equal(rows, want)
        assert cuts_seen[0] * width <= max(8 * 4096, width)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_live_rows_go_first_and_dead_rows_past_them_stay(data):
    """The index's rows are its live rows, first in id order: the permutation moves a
    dead row only to make room for a live one (a shard's rows start a block apart, so
    one id in the second shard is row 64: all 65 rows were moved, 1 GB of them for a
    vector of 4M floats)."""
    used = data.draw(st.integers(1, 300))
    live = np.array(data.draw(st.permutations(range(used)))[:data.draw(
        st.integers(0, used))], np.int64)
    perm = hostmap._live_first(live, used)
    assert sorted(perm.tolist()) == list(range(used))
    assert perm[:len(live)].tolist() == live.tolist()
    moved = {int(t) for t in np.flatnonzero(perm != np.arange(used))}
    assert all(t < len(live) or t in set(live.tolist()) for t in moved)
    assert hostmap._live_first(np.array([64]), 65).tolist() == [64, *range(1, 64), 0]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_map_rehashes_into_memory_never_zeroed(data):
    """``_rehash_into`` is handed ``np.empty`` memory (zeroed there, written before it
    is read, so its pages are not the kernel's zero page): whatever the table held
    before, every live row is in it once under the key it was entered by, deleted rows
    are not, and the old map's marks are copied (nothing else of it), each entry
    reachable from its seeded home, also when keys share a home or a key."""
    from gpu_pitr.homes import seeded_home
    from gpu_pitr.resolve.hostmap import MARK, S_KEY, S_ROW, SLOT, _rehash_into

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.integers(0, 300))
    n_marks = data.draw(st.integers(0, 20))
    slots = 1 << data.draw(st.integers(max(1, (2 * (n + n_marks)).bit_length()), 12))
    seed = np.uint64(data.draw(st.integers(0, 2**64 - 1)))
    keys = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    if n and data.draw(st.booleans()):  # many share a key
        keys[rng.random(n) < 0.5] = keys[0]
    id_len = np.where(rng.random(n) < 0.2, -1, 5).astype(np.int64)
    old = np.zeros((64, SLOT), np.int64)  # its rows are not read, only its marks
    old[:, S_KEY] = rng.integers(-2**63, 2**63 - 1, 64, dtype=np.int64)
    old[:, S_ROW] = rng.integers(1, 1000, 64)
    at = rng.permutation(64)[:n_marks]
    old[at, S_ROW] = MARK
    junk = data.draw(st.sampled_from([-1, 1, 7, 2**40]))
    h = np.full((slots, SLOT), junk, np.int64)
    _rehash_into(h, n, id_len, keys, old, n_marks, seed)
    held = sorted((int(k), int(v)) for k, v in h if v != 0)
    want = [(int(keys[r]), r + 1) for r in range(n) if id_len[r] >= 0]
    assert held == sorted(want + [(int(k), MARK) for k in old[at, S_KEY]])
    mask = slots - 1
    for s in np.flatnonzero(h[:, S_ROW]):  # reachable from its home by linear probing
        t = int(seeded_home(h[s, S_KEY], mask, seed))
        while t != s:
            assert h[t, S_ROW] != 0
            t = (t + 1) & mask


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_columns_gathered_in_id_order_equal_numpy(data):
    """``_in_order`` (the five columns of ``HostMap.result`` gathered from rows side by
    side in one parallel pass) equals NumPy's fancy indexing of each column, for any
    order, repeats included."""
    from gpu_pitr.resolve.hostmap import _in_order

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.sampled_from([0, 1, 5, 1000]))
    cols = [rng.integers(-2**40, 2**40, n) for _ in range(5)]
    order = rng.integers(0, n, data.draw(st.integers(0, 2 * n))) if n else np.zeros(0, int)
    got = _in_order(order.astype(np.int64), np.stack(cols, axis=1).reshape(n, 5))
    for g, c in zip(got, cols, strict=True):
        assert g.dtype == c.dtype and np.array_equal(g, c[order])


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_shard_lists_exactly_its_own_entries(data):
    """``_own_entries``: a shard's entries in apply order from ``order[k0]``'s entry
    ``e0`` on (records of several entries, records of none, any resume point), each
    with the index in ``order`` of its record, against a plain loop; within an id shard
    of a restore (``id_shard``) too, whose test on the key's top bits (the keys come
    in as int64) is written out here on Python ints."""
    from gpu_pitr.resolve.hostmap import _own_entries, shard_of

    n_rec = data.draw(st.integers(1, 30))
    nent = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n_rec, max_size=n_rec)),
                    np.int64)
    efirst = np.concatenate(([0], np.cumsum(nent)[:-1])).astype(np.int64)
    n_ent = int(nent.sum())
    keys = np.array(data.draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n_ent,
                                       max_size=n_ent)), np.int64)
    order = np.array(data.draw(st.permutations(range(n_rec))), np.int64)
    n_shards = data.draw(st.sampled_from([1, 2, 4]))
    shard = data.draw(st.integers(0, n_shards - 1))
    k0 = data.draw(st.integers(0, n_rec - 1))
    e0 = data.draw(st.integers(0, n_ent))
    id_count = data.draw(st.sampled_from([1, 2, 3, 7]))
    id_index = data.draw(st.integers(0, id_count - 1))

    def in_id_shard(key: int) -> bool:
        return ((key % 2**64) >> 40) * id_count >> 24 == id_index

    want = [(e, k) for k in range(k0, n_rec)
            for e in range(efirst[order[k]] if k > k0 else max(efirst[order[k]], e0),
                           efirst[order[k]] + nent[order[k]])
            if shard_of(int(keys[e]), n_shards) == shard and in_id_shard(int(keys[e]))]
    mine = np.full(max(n_ent, 1), -7, np.int64)
    mine_k = np.full(max(n_ent, 1), -7, np.int64)
    m = _own_entries(order, k0, e0, efirst, nent, keys, shard, n_shards, id_index, id_count,
                     mine, mine_k)
    assert list(zip(mine[:m].tolist(), mine_k[:m].tolist(), strict=True)) == want


@pytest.mark.parametrize("shards", [1, 2, 8])
def test_the_garbage_allowed_does_not_grow_with_the_shards(shards: int) -> None:
    """Within a memory budget (``share_slack``), COMPACT_SLACK is the garbage an arena
    may hold over all shards together: with the whole each, a machine of 8 cores held
    8 x 32 MiB of each arena (a 48M --memory-budget restore of 512 ids with 10 KB
    metadata maps peaked 167 MiB above its baseline, against 74 MiB with the shares).
    Without a budget each shard has the whole (fewer compactions: faster)."""
    hm = hostmap.HostMap(1 << 20, shards=shards)
    assert [sh.meta_limit for sh in hm.shards] == [hostmap.COMPACT_SLACK] * shards
    hm.share_slack()
    assert sum(sh.meta_limit for sh in hm.shards) == hostmap.COMPACT_SLACK
    assert sum(sh.ids_limit for sh in hm.shards) == hostmap.COMPACT_SLACK
    assert sum(sh.slack for sh in hm.shards) == hostmap.COMPACT_SLACK


def test_a_restore_within_a_budget_shares_the_slack(tmp_path, monkeypatch) -> None:
    calls = []
    real = hostmap.HostMap.share_slack
    monkeypatch.setattr(hostmap.HostMap, "share_slack",
                        lambda self: calls.append(self.n_shards) or real(self))
    b = w.LogBuilder()
    b.add(w.Ins("a", w.f32(1.0), {"k": "v"}, 1))
    b.write(tmp_path)
    assert gpu_pitr.restore(tmp_path, backend="cpu").id_list() == ["a"]
    assert calls == []
    assert gpu_pitr.restore(tmp_path, backend="cpu", memory_budget="40M").id_list() == ["a"]
    assert len(calls) == 1
