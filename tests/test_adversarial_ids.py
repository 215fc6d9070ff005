"""Ids chosen to share one 64-bit key, or one home slot, restore exactly, and the host
map does not line them up in one run of its probe table.

Ids are chosen by the store's users and ``payload.id_key`` is public and cheap to
steer (``tests/collisions.py``). The host map took a key's low bits as its home and
entered every id by its key: 64k ids of one key were one run that every probe walked
(a restore of them took 18 s; random ids, 0.06 s), and distinct keys sharing their low
bits did the same. Homes are now seeded per process (``homes.seeded_home``) and a key's
ids past the first are entered by a seeded hash of their bytes. The checks count slots,
not seconds: the old map held all of them in one run.
"""

from __future__ import annotations

import numpy as np
import pytest
import workloads as w
from collisions import colliding_ids, key_of, longest_run

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.resolve import hostmap

ONE_KEY = 0xDEADBEEF12345678


def _low_bits_ids(count: int, bits: int = 24) -> list[str]:
    """Ids of ``count`` distinct keys that share their low ``bits`` bits."""
    return [colliding_ids(1, key=(i << bits) | 0xABCDEF, prefix=b"low/", seed=i)[0]
            for i in range(1, count + 1)]


def _workload(ids: list[str], rng) -> w.LogBuilder:
    """Inserts of every id (a metadata map on some), then updates of a half, deletes of a
    third, re-inserts of some deleted and updates of some missing (which insert), and
    the first id updated, deleted and put back."""
    log = w.LogBuilder()
    ts = 1

    def vec():
        return rng.standard_normal(4).astype("<f4").tobytes()

    for i, ident in enumerate(ids):
        log.add(w.Ins(ident, vec(), {"n": str(i)} if i % 3 == 0 else None, ts))
    order = rng.permutation(len(ids))
    for k in order[: len(ids) // 2]:
        log.add(w.Upd(ids[k], vec(), {"u": "1"} if k % 2 else None, ts))
    gone = order[len(ids) // 3: 2 * len(ids) // 3]
    for k in gone:
        log.add(w.Del(ids[k], ts))
    for k in gone[::3]:
        log.add(w.Ins(ids[k], vec(), None, ts))
    for k in gone[1::3]:
        log.add(w.Upd(ids[k], vec(), None, ts))
    log.add(w.Del("never-inserted", ts))
    # The first id of a key is entered by the key, before the mark: found past it.
    log.add(w.Upd(ids[0], vec(), {"first": "1"}, ts))
    log.add(w.Del(ids[0], ts))
    log.add(w.Upd(ids[0], vec(), None, ts))  # (missing: inserted, now by its spill key)
    return log


@pytest.fixture
def tables(monkeypatch) -> list:
    """The shards' probe tables (and marks) of each restore, as ``result`` finds them."""
    seen = []
    real = hostmap.HostMap.result

    def result(self, *args, **kwargs):
        seen.append([(sh.h.copy(), int(sh.marks[0])) for sh in self.shards])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hostmap.HostMap, "result", result)
    return seen


def _slots_of(h: np.ndarray, key: int) -> int:
    """How many taken slots of the map ``h`` hold ``key`` (an empty slot, ``S_ROW`` 0,
    may keep the key of the id removed from it: CI drew one, for 1 seed in 12)."""
    taken = h[:, hostmap.S_ROW] != 0
    return int(np.count_nonzero(taken & (h[:, hostmap.S_KEY] == np.uint64(key).view(np.int64))))


def _longest_run(h: np.ndarray) -> int:
    """The most occupied slots of the map ``h`` in a row, around the end too."""
    return longest_run(h[:, hostmap.S_ROW] != 0)


@pytest.mark.parametrize("chunk_bytes", [None, 4096])
def test_ids_of_one_key_restore_exactly_and_are_not_one_run(tmp_path, tables, chunk_bytes):
    rng = np.random.default_rng(7)
    same = colliding_ids(3000, key=ONE_KEY)
    assert {key_of(s.encode()) for s in same} == {ONE_KEY}
    ids = same + [f"plain/{i}" for i in range(1000)]
    wal = _workload(ids, rng).write(tmp_path / "wal")
    got = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk_bytes)
    w.same_as_reference(wal, got)
    (shards,) = tables
    for h, marks in shards:
        # The key's first id and its mark at most; the old map held all 3,000 (at
        # least the 2,000 live ones) in one run.
        assert _slots_of(h, ONE_KEY) <= 2
        assert _longest_run(h) < 200
        assert marks <= 1


def test_ids_of_distinct_keys_sharing_low_bits_are_not_one_run(tmp_path, tables):
    rng = np.random.default_rng(8)
    ids = _low_bits_ids(600)
    assert len({key_of(s.encode()) for s in ids}) == 600
    assert len({key_of(s.encode()) & 0xFFFFFF for s in ids}) == 1
    wal = _workload(ids, rng).write(tmp_path / "wal")
    w.same_as_reference(wal, gpu_pitr.restore(wal, backend="cpu"))
    (shards,) = tables
    assert max(_longest_run(h) for h, _ in shards) < 100  # was one run of them all


def test_ids_of_one_key_move_in_from_a_base_snapshot(tmp_path, tables):
    """A base holding many ids of one key: the ones the log names move into the map
    (``hostmap._seed``, which finds and marks like the apply), and the result equals a
    restore of the whole log."""
    rng = np.random.default_rng(9)
    same = colliding_ids(1500, key=ONE_KEY)
    log = _workload(same, rng)
    first = log.write(tmp_path / "first")
    snapshot.save(gpu_pitr.restore(first, backend="cpu"), tmp_path / "snap")
    for k in rng.permutation(len(same))[:700]:  # more records after the base
        if k % 4:
            log.add(w.Upd(same[k], rng.standard_normal(4).astype("<f4").tobytes(), None, 2))
        else:
            log.add(w.Del(same[k], 2))
    wal = log.write(tmp_path / "wal")
    got = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "snap")
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))
    for h, marks in tables[1]:  # the restore from the base
        assert _slots_of(h, ONE_KEY) <= 2
        assert _longest_run(h) < 200 and marks <= 1


def test_marks_of_keys_whose_ids_are_all_deleted_go_at_the_next_growth(tmp_path, tables):
    """Two ids of each of 300 keys put and deleted (each key marked once), the ids of
    20 of the keys left, then 6,000 more ids, which grow the map: only the 20 keys'
    marks are copied into it (all 300 stayed for good: a log that puts and deletes
    ids of one key, key after key, grew the map with the log)."""
    rng = np.random.default_rng(10)
    pairs = [colliding_ids(2, key=(0x9E3779B97F4A7C15 * (i + 1)) % (1 << 64), seed=i)
             for i in range(300)]
    log = w.LogBuilder()
    for a, b in pairs:
        log.add(w.Ins(a, rng.standard_normal(4).astype("<f4").tobytes(), None, 1))
        log.add(w.Ins(b, rng.standard_normal(4).astype("<f4").tobytes(), {"b": a}, 1))
    for a, b in pairs[20:]:
        log.add(w.Del(b, 2))
        log.add(w.Del(a, 2))
    for i in range(6000):
        log.add(w.Ins(f"later/{i}", rng.standard_normal(4).astype("<f4").tobytes(), None, 3))
    wal = log.write(tmp_path / "wal")
    w.same_as_reference(wal, gpu_pitr.restore(wal, backend="cpu", chunk_bytes=4096))
    (shards,) = tables
    assert sum(marks for _, marks in shards) == 20
    assert sum(np.count_nonzero(h[:, hostmap.S_ROW] == hostmap.MARK) for h, _ in shards) == 20


def test_a_map_of_stale_marks_does_not_grow_with_the_log(tmp_path, tables, monkeypatch):
    """Two ids of each of 3,000 keys put and deleted, key after key: no id stays live,
    and the marks of the keys are all stale when the map fills. Dropped, they leave the
    map empty, so it is rehashed at its size (it doubled all the same: 4 slots for every
    key the log ever marked, a map that grew with the log, not the index)."""
    real_init = hostmap.HostMap.__init__
    monkeypatch.setattr(hostmap.HostMap, "__init__",
                        lambda self, total_bytes, shards=None: real_init(self, total_bytes, 1))
    rng = np.random.default_rng(11)
    log = w.LogBuilder()
    for i in range(3000):
        a, b = colliding_ids(2, key=(0x9E3779B97F4A7C15 * (i + 1)) % (1 << 64), seed=i)
        log.add(w.Ins(a, rng.standard_normal(4).astype("<f4").tobytes(), None, 1))
        log.add(w.Ins(b, rng.standard_normal(4).astype("<f4").tobytes(), None, 1))
        log.add(w.Del(a, 1))
        log.add(w.Del(b, 1))
    log.add(w.Ins("last", rng.standard_normal(4).astype("<f4").tobytes(), None, 2))
    wal = log.write(tmp_path / "wal")
    w.same_as_reference(wal, gpu_pitr.restore(wal, backend="cpu", chunk_bytes=4096))
    (shards,) = tables
    ((h, marks),) = shards  # (one shard: its map filled with 3,000 marks, 1,024 slots)
    assert h.shape[0] <= 2048 and marks <= 1024
