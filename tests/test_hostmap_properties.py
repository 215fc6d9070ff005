"""Property tests of the host map's probe table: ids chosen to collide are exact.

The map (``resolve/hostmap.py``) homes keys by ``homes.seeded_home`` and enters a key's
ids past its first by their spill key behind a mark. Its invariants are checked two ways:

* the table functions (``_find``, ``_mark``, ``_remove_slot``, ``_rehash_into``) against
  a dict, on tables of 4 to 16 slots where runs wrap around the end, with keys made to
  share a home, ids made to share a key, and keys equal to other ids' spill keys;
* restores (the real compiled ``_apply`` and ``_seed``) of logs over such ids, with the
  seed fixed (``hostmap.HOME_SEED``, read at each call) so the made homes collide, maps
  that start at 4 slots and rehash mid-chunk, 1 to 4 shards, tiny chunks, id shards and
  base snapshots, against ``tests/reference.py``; each restore's final tables are checked
  too (every live id found once from its home, marks counted, room left).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import reference
import workloads as w
from collisions import colliding_ids, key_of, unfmix
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import homes, snapshot
from gpu_pitr.resolve import hostmap
from gpu_pitr.resolve.hostmap import MARK, MUST_MARK, S_KEY, S_ROW, SLOT

EXAMPLES = int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=max(10, EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The seed the restores below run with (``hostmap.HOME_SEED`` patched), so that the keys
#: made for it share their home.
SEED = np.uint64(0x243F6A8885A308D3)
#: Made homes hold for every table up to this many slots.
HOME_BITS = 24
_M = (1 << 64) - 1


def _signed(k: int) -> np.int64:
    return np.int64(k - (1 << 64) if k >= 1 << 63 else k)


def key_at(slot_bits: int, tag: int, seed) -> int:
    """A key (unsigned) whose seeded home under ``seed`` is the slot of the low
    ``HOME_BITS`` bits ``slot_bits`` in every table of up to 2^HOME_BITS slots; ``tag``
    picks one of many (bits 32 and up vary with it: the keys fall in different
    shards)."""
    return unfmix(((tag << HOME_BITS) | slot_bits) & _M) ^ int(seed)


LAST = (1 << HOME_BITS) - 1  # the last slot of any table: runs from it wrap around


def spill_key(b: bytes, seed) -> int:
    """``homes.seeded_bytes_key`` of ``b`` (unsigned)."""
    buf = np.frombuffer(b, np.uint8).copy()
    return int(homes.seeded_bytes_key(buf, 0, len(buf), np.uint64(seed))) & _M


def home(key, mask: int, seed) -> int:
    return int(homes.seeded_home(_signed(int(key) & _M), mask, np.uint64(seed)))


# ---------------------------------------------------------------- the table's invariants
def check_table(h, marks: int, seed, live: dict, ids, row_id_off, row_id_len) -> None:
    """Every invariant the map keeps. ``live``: id bytes -> (row, id key) of every id
    the map must hold (and only those)."""
    slots = h.shape[0]
    mask = slots - 1
    rows = h[:, S_ROW]
    full = rows != 0
    # Room: at most half the slots taken (an empty one ends every probe).
    assert 2 * int(full.sum()) <= slots, (int(full.sum()), slots)
    is_mark = rows == MARK
    assert int(is_mark.sum()) == marks, (int(is_mark.sum()), marks)
    mark_keys = h[is_mark, S_KEY]
    assert len(set(mark_keys.tolist())) == len(mark_keys), "a key marked twice"
    # Each live row in exactly one slot, and no other row.
    held = sorted(rows[full & ~is_mark].tolist())
    assert held == sorted(r + 1 for r, _ in live.values()), "rows in the map != live rows"
    assert not np.any(rows < MARK)
    # Every entry reachable from its home: no empty slot between them.
    for s in np.flatnonzero(full):
        t = home(h[s, S_KEY], mask, seed)
        while t != s:
            assert full[t], f"slot {s} (home {t}) cut off by empty slot {t}"
            t = (t + 1) & mask
    # Each live id found where it is, by its key or (behind its key's mark) its spill key.
    by_key: dict[int, int] = {}
    for b, (r, key) in live.items():
        buf = np.frombuffer(b, np.uint8).copy()
        s, row, slot_key = hostmap._find(buf, 0, len(buf), _signed(key), h, ids, row_id_off,
                                         row_id_len, np.uint64(seed))
        assert row == r, (b, row, r)
        assert h[s, S_ROW] == r + 1 and h[s, S_KEY] == slot_key
        spill = spill_key(b, seed)
        assert int(slot_key) & _M in (key & _M, spill)
        if int(slot_key) & _M != key & _M:
            assert _signed(key) in mark_keys, "an id entered by its spill key, its key unmarked"
        elif spill != key & _M:
            by_key[key] = by_key.get(key, 0) + 1
    # The point of the marks: no key holds two ids by itself (one run every probe walks).
    assert all(c == 1 for c in by_key.values()), by_key


# ------------------------------------------------------- the table functions, on a model
class Table:
    """The table functions driven as ``_apply`` drives them, beside a dict."""

    def __init__(self, slots: int, seed, n_ids: int) -> None:
        self.seed = np.uint64(seed)
        self.h = np.zeros((slots, SLOT), np.int64)
        self.ids = np.zeros(1 << 14, np.uint8)
        self.used = 0
        # No spare rows: a slot's row read out of bounds would be another id's.
        self.row_id_off = np.full(n_ids, -1, np.int64)
        self.row_id_len = np.full(n_ids, -1, np.int64)
        self.row_key = np.zeros(n_ids, np.int64)
        self.marks = np.zeros(1, np.int64)
        self.n_rows = 0
        self.free: list[int] = []
        self.live: dict[bytes, tuple[int, int]] = {}

    def find(self, b: bytes, key: int):
        buf = np.frombuffer(b, np.uint8).copy()
        return buf, hostmap._find(buf, 0, len(buf), _signed(key), self.h, self.ids,
                                  self.row_id_off, self.row_id_len, self.seed)

    def rehash(self, slots: int) -> None:
        new = np.full((slots, SLOT), 7, np.int64)  # _rehash_into zeroes it
        hostmap._rehash_into(new, self.n_rows, self.row_id_len, self.row_key, self.h,
                             int(self.marks[0]), self.seed)
        self.h = new

    def insert(self, b: bytes, key: int) -> None:
        buf, (s, row, slot_key) = self.find(b, key)
        if row >= 0:
            assert self.live[b][0] == row
            return
        assert b not in self.live
        h = self.h
        assert h[s, S_ROW] == 0, "the slot for an absent id is not empty"
        if 2 * (len(self.live) + int(self.marks[0]) + 2) > h.shape[0]:  # _room's NEED_MAP
            self.rehash(2 * h.shape[0])
            buf, (s, row, slot_key) = self.find(b, key)
        if row == MUST_MARK:
            s, slot_key = hostmap._mark(s, _signed(key), self.h, buf, 0, len(buf), self.seed,
                                        self.marks)
        assert self.h[s, S_ROW] == 0
        row = self.free.pop() if self.free else self.n_rows
        self.n_rows = max(self.n_rows, row + 1)
        self.ids[self.used:self.used + len(b)] = buf
        self.row_id_off[row], self.row_id_len[row] = self.used, len(b)
        self.row_key[row] = slot_key
        self.used += len(b)
        self.h[s, S_KEY], self.h[s, S_ROW] = slot_key, row + 1
        self.live[b] = (row, key)

    def delete(self, b: bytes, key: int) -> None:
        _, (s, row, _) = self.find(b, key)
        if b not in self.live:
            assert row < 0, "a deleted id found"
            return
        assert row == self.live[b][0]
        hostmap._remove_slot(s, self.h, self.seed)
        self.row_id_len[row] = -1
        self.free.append(row)
        del self.live[b]

    def check(self, universe: dict) -> None:
        check_table(self.h, int(self.marks[0]), self.seed, self.live, self.ids,
                    self.row_id_off, self.row_id_len)
        for b, key in universe.items():
            if b not in self.live:
                _, (s, row, _) = self.find(b, key)
                assert row < 0 and self.h[s, S_ROW] == 0, f"absent {b!r} found"


#: The keys an id of the model may have: how it is made (see ``_model_keys``).
KEY_KINDS = ["last_a", "last_b", "last_a", "zero", "last_but_one", "spill0", "spill1",
             "random"]


def _model_keys(kinds: list[str], names: list[bytes], seed, rnd: list[int]) -> dict:
    made = {
        "last_a": key_at(LAST, 1, seed), "last_b": key_at(LAST, 2, seed),
        "zero": key_at(0, 3, seed), "last_but_one": key_at(LAST - 1, 4, seed),
        # keys equal to the spill keys of ids 0 and 1: entries by key and by spill key
        # in one run, compared byte for byte
        "spill0": spill_key(names[0], seed), "spill1": spill_key(names[1], seed),
    }
    return {b: (made[k] if k != "random" else r) for b, k, r in zip(names, kinds, rnd,
                                                                      strict=True)}


@settings(SETTINGS, max_examples=max(20, 2 * EXAMPLES))
@given(data=st.data())
def test_table_functions_keep_every_id_once_and_reachable(data):
    seed = data.draw(st.sampled_from([0, int(SEED), int(hostmap.HOME_SEED), _M]), label="seed")
    n = data.draw(st.integers(3, 14), label="ids")
    names = [f"id{i}".encode() * (1 + i % 3) for i in range(n)]
    kinds = data.draw(st.lists(st.sampled_from(KEY_KINDS), min_size=n, max_size=n),
                      label="key kinds")
    rnd = data.draw(st.lists(st.integers(0, _M), min_size=n, max_size=n), label="random keys")
    universe = _model_keys(kinds, names, seed, rnd)
    t = Table(data.draw(st.sampled_from([4, 8, 16]), label="slots"), seed, n)
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["ins", "ins", "ins", "del", "del",
                                                        "rehash"]),
                                       st.integers(0, n - 1)), min_size=10, max_size=100),
                    label="ops")
    for op, i in ops:
        b = names[i]
        if op == "ins":
            t.insert(b, universe[b])
        elif op == "del":
            t.delete(b, universe[b])
        else:  # a rehash into the same size (entries in a new order) or twice it
            t.rehash(t.h.shape[0] * (1 + i % 2))
        t.check(universe)


def test_marks_of_many_keys_leave_room_and_end_every_probe():
    """Keys marked and all their ids deleted keep their marks: ``_room`` counts them,
    so the table grows and a probe for an absent id still ends (an empty slot)."""
    seed = SEED
    t = Table(4, seed, 80)
    universe = {}
    for k in range(40):
        key = key_at(LAST, 100 + k, seed)  # all homed at the last slot: one long run
        pair = [f"m{k}/a".encode(), f"m{k}/b".encode()]
        for b in pair:
            universe[b] = key
            t.insert(b, key)
        t.check(universe)
        for b in pair:
            t.delete(b, key)
        t.check(universe)
    assert int(t.marks[0]) == 40 and not t.live
    assert t.h.shape[0] >= 2 * (40 + 2)
    for b, key in universe.items():  # every one comes back
        t.insert(b, key)
    t.check(universe)


# ---------------------------------------------------------------- restores of such ids
def _pools(seed) -> dict[str, list[str]]:
    """The ids a restore draws from, made for ``seed``: (a) ids of one key (one of them
    homed at the last slot under ``seed``); (b) ids of distinct keys homed at the last
    slot and slot 0 (runs wrap around the end); (s) ids whose key is the spill key of an
    (a) id; (c) plain ids and awkward ones."""
    one = colliding_ids(8, key=0xDEADBEEF12345678, prefix=b"one/")
    last = colliding_ids(8, key=key_at(LAST, 7, seed), prefix=b"two/")
    homed = [colliding_ids(1, key=key_at(LAST if i % 3 else 0, 200 + i, seed),
                           prefix=b"home/", seed=i)[0] for i in range(12)]
    spilled = [colliding_ids(1, key=spill_key(one[i].encode(), seed), prefix=b"sp/",
                             seed=i)[0] for i in range(2)]
    plain = [f"plain/{i}" for i in range(6)] + ["", "a", "é", "\x00", "日本語"]
    return {"one": one, "last": last, "homed": homed, "spilled": spilled, "plain": plain}


POOLS = _pools(SEED)
UNIVERSE = [i for pool in POOLS.values() for i in pool]


def test_the_pools_collide_as_made():
    assert {key_of(i.encode()) for i in POOLS["one"]} == {0xDEADBEEF12345678}
    assert len({key_of(i.encode()) for i in POOLS["last"]}) == 1
    for mask in (3, 1023, (1 << 20) - 1):
        assert {home(key_of(i.encode()), mask, SEED) for i in POOLS["last"]} == {mask}
        homes_ = {home(key_of(i.encode()), mask, SEED) for i in POOLS["homed"]}
        assert homes_ == {0, mask}
    assert len({key_of(i.encode()) for i in POOLS["homed"]}) == len(POOLS["homed"])
    assert [key_of(i.encode()) for i in POOLS["spilled"]] == [
        spill_key(i.encode(), SEED) for i in POOLS["one"][:2]]


@contextlib.contextmanager
def map_setup(seed, shards: int, slots: int, checked: list):
    """Restores run with ``seed`` (None: the process's), ``shards`` shards whose maps
    start at ``slots`` slots, and each restore's final tables checked (``checked``: one
    entry each)."""
    with pytest.MonkeyPatch.context() as mp:
        if seed is not None:
            mp.setattr(hostmap, "HOME_SEED", np.uint64(seed))
        real_init, real_result = hostmap.HostMap.__init__, hostmap.HostMap.result

        def init(self, total_bytes, *args, **kwargs):
            real_init(self, total_bytes, shards=shards)
            for sh in self.shards:
                sh.h = np.zeros((slots, SLOT), np.int64)

        def result(self, *args, **kwargs):
            grew = []
            for sh in self.shards:
                live = {}
                for r in range(sh.n_rows):
                    if sh.row_id_len[r] >= 0:
                        off = sh.row_id_off[r]
                        b = sh.ids[off:off + sh.row_id_len[r]].tobytes()
                        live[b] = (r, key_of(b))
                check_table(sh.h, int(sh.marks[0]), hostmap.HOME_SEED, live, sh.ids,
                            sh.row_id_off, sh.row_id_len)
                grew.append((sh.h.shape[0], int(sh.marks[0])))
            checked.append(grew)
            return real_result(self, *args, **kwargs)

        mp.setattr(hostmap.HostMap, "__init__", init)
        mp.setattr(hostmap.HostMap, "result", result)
        yield


@st.composite
def steps(draw, max_steps: int = 60) -> list:
    """Data entries (and batches of them) over ``UNIVERSE``, ids of the pools drawn
    more often than not; inserts of present ids, updates of missing ones, deletes of
    both."""
    pool = st.sampled_from(list(POOLS))
    ident = pool.flatmap(lambda p: st.sampled_from(POOLS[p]))
    leaf = st.tuples(st.sampled_from(["ins", "ins", "upd", "del"]), ident,
                     st.sampled_from([None, None, "m"]))
    step = st.one_of(leaf, leaf, leaf, st.lists(leaf, min_size=1, max_size=5))
    return draw(st.lists(step, min_size=max_steps // 6, max_size=max_steps))


def _entries(steps_: list) -> list[tuple]:
    out = []
    n = 0

    def entry(leaf):
        nonlocal n
        op, ident, meta = leaf
        n += 1
        if op == "del":
            return w.Del(ident, 1)
        vec = w.f32(float(n), float(UNIVERSE.index(ident)))
        m = {"n": str(n)} if meta else None
        return (w.Ins if op == "ins" else w.Upd)(ident, vec, m, 1)

    for s in steps_:
        out.append(w.Batch([entry(x) for x in s], 1) if isinstance(s, list) else entry(s))
    return out


def _log(entries: list[tuple]) -> w.LogBuilder:
    log = w.LogBuilder()
    for e in entries:
        log.add(e)
    return log


CHUNKS = st.sampled_from([None, 64, 160, 600])
SHARDS = st.sampled_from([1, 2, 4])
SLOTS = st.sampled_from([4, 8, 16, 1024])
SEEDS = st.sampled_from([int(SEED), int(SEED), None])


@SETTINGS
@given(steps_=steps(), chunk=CHUNKS, shards=SHARDS, slots=SLOTS, seed=SEEDS,
       id_shards=st.sampled_from([0, 0, 0, 2, 3]))
def test_restores_of_colliding_ids_equal_the_reference(steps_, chunk, shards, slots, seed,
                                                        id_shards):
    checked = []
    with tempfile.TemporaryDirectory() as d, map_setup(seed, shards, slots, checked):
        wal = _log(_entries(steps_)).write(Path(d) / "wal")
        got = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk)
        w.same_as_reference(wal, got)
        if id_shards:
            assert w.check_shards_equal_whole(wal, id_shards, backend="cpu",
                                              chunk_bytes=chunk) == "equal"
    event(f"maps grew: {any(n > slots for n, _ in checked[0])}")
    event(f"marks: {sum(m for _, m in checked[0]) > 0}")


@settings(SETTINGS, max_examples=max(5, EXAMPLES // 3))
@given(steps_=steps(max_steps=40), more=steps(max_steps=30), chunk=CHUNKS, shards=SHARDS,
       slots=SLOTS)
def test_restores_from_a_base_of_colliding_ids_equal_the_reference(steps_, more, chunk,
                                                                    shards, slots):
    """The base's ids the log names move into the map (``_seed``: found and marked as
    the apply does), the rest at the finish or by the merge."""
    checked = []
    with tempfile.TemporaryDirectory() as d, map_setup(SEED, shards, slots, checked):
        d = Path(d)
        entries = _entries(steps_ + more)
        log = _log(entries[:len(steps_)])
        snapshot.save(gpu_pitr.restore(log.write(d / "first"), backend="cpu"), d / "snap")
        for e in entries[len(steps_):]:
            log.add(e)
        wal = log.write(d / "wal")
        got = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk, base=d / "snap")
        assert w.index_view(got) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))
        ref = reference.restore(wal)
        assert got.to_host().id_list() == ref.ids
        assert [v.tobytes() for v in got.to_host().vectors] == ref.vectors


def test_a_restore_of_many_marked_keys_emptied_leaves_room(tmp_path):
    """600 keys of two ids each, inserted and deleted: the map grows for the marks
    alone (a map of 1,024 slots holds 510 entries), and the marks of keys emptied by
    then are dropped there, not copied into the larger map; every probe ends; then an
    id of every fifth key comes back."""
    pairs = [colliding_ids(2, key=key_at(LAST, 1000 + k, SEED), prefix=b"mk/", seed=k)
             for k in range(600)]
    log = w.LogBuilder()
    for k, pair in enumerate(pairs):
        log.add(w.Batch([w.Ins(i, w.f32(k, 0.0), None, 1) for i in pair], 1))
        log.add(w.Batch([w.Del(i, 1) for i in pair], 1))
    for k, pair in enumerate(pairs[::5]):
        log.add(w.Upd(pair[1], w.f32(k, 1.0), {"k": str(k)}, 1))
    wal = log.write(tmp_path / "wal")
    for shards, chunk in ((1, None), (2, 4096)):
        checked = []
        with map_setup(SEED, shards, 1024, checked):
            w.same_as_reference(wal, gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk))
        ((*tables,),) = checked
        if shards == 1:  # (two maps of 1,024 hold 300 marks each: no growth)
            assert sum(marks for _, marks in tables) < 600  # (kept for good: 600)
        for slots, marks in tables:
            assert slots >= 2 * (marks + 2)


def test_spill_keys_of_ids_differing_in_length_and_trailing_zeros_differ():
    """The spill key took the length xored in beside the first word: ``a``, ``b\\0`` and
    ``c\\0\\0`` were one key whatever the seed (and the empty id's was always 0); the
    length now goes through the finaliser first."""
    from gpu_pitr.homes import seeded_bytes_key

    ids = [b"", b"a", b"b\x00", b"c\x00\x00", b"\x00", b"a" * 8 + b"\x01", b"a" * 8 + b"\x00\x01"]
    empty = set()
    for seed in (0, 1, 0xDEADBEEF, int(hostmap.HOME_SEED)):
        keys = [int(seeded_bytes_key(np.frombuffer(i, np.uint8), 0, len(i), np.uint64(seed)))
                for i in ids]
        assert len(set(keys)) == len(ids)
        empty.add(keys[0])
    assert len(empty) == 4
