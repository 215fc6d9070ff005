"""SPEC §3 by hand: one small case per rule, each against values written out here.

Every case runs against both executors of the package (cuda under the simulator) when
it is installed, and always against tests/reference.py too, so these are also the
reference's own check.
"""

from __future__ import annotations

import os
import struct

import pytest
import workloads as w
from workloads import (
    Abort,
    Batch,
    Begin,
    Ckpt,
    Commit,
    Del,
    Ins,
    LogBuilder,
    Upd,
    bits,
    f32,
)

from gpu_pitr.errors import TargetNotFoundError


@pytest.fixture(params=w.IMPLS)
def restore(request):
    return w.impl_restore(request.param)


def write_log(tmp_path, *entries, first_seq=0):
    """One segment holding ``entries`` in order; returns (dir, [Rec per entry])."""
    b = LogBuilder(first_seq=first_seq)
    recs = [b.add(e) for e in entries]
    return b.write(tmp_path / "wal"), recs


def state(view) -> dict:
    return {i: (v, m) for i, v, m in zip(view.ids, view.vectors, view.metadata, strict=True)}


def stop_of(view) -> dict:
    s = dict(view.report["stop"])
    if s.get("file") is not None:
        s["file"] = os.path.basename(str(s["file"]))
    return {k: s.get(k) for k in ("reason", "file", "offset", "seq", "timestamp")}


def stop_at(rec, ts) -> dict:
    return {
        "reason": "target",
        "file": rec.file,
        "offset": rec.offset,
        "seq": rec.seq,
        "timestamp": ts,
    }


END = {"reason": "end_of_log", "file": None, "offset": None, "seq": None, "timestamp": None}


# ----------------------------------------------------------------------------- Insert
def test_insert_new_id(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0, 2.0], {"k": "v"}, ts=1))
    v = restore(d)
    assert state(v) == {"a": (f32(1.0, 2.0), {"k": "v"})}
    assert v.report["inserts"] == 1
    assert v.report["commit_points_applied"] == 1
    assert stop_of(v) == END


def test_insert_existing_replaces_vector_and_metadata(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Ins("a", [2.0], None, 2))
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), None)}
    assert v.report["inserts"] == 2


def test_insert_with_empty_metadata_is_not_absent(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], {}, 1), Ins("b", [2.0], None, 2))
    v = restore(d)
    assert v.metadata == [{}, None]


# ----------------------------------------------------------------------------- Update
def test_update_with_metadata_replaces_it(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Upd("a", [2.0], {"x": "y"}, 2))
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), {"x": "y"})}
    assert (v.report["updates"], v.report["updates_of_missing"]) == (1, 0)


def test_update_without_metadata_keeps_previous_metadata(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Upd("a", [2.0], None, 2))
    assert state(restore(d)) == {"a": (f32(2.0), {"k": "v"})}


def test_update_with_empty_metadata_replaces_with_empty(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Upd("a", [2.0], {}, 2))
    assert state(restore(d)) == {"a": (f32(2.0), {})}


def test_update_of_missing_id_creates_it_and_is_counted(restore, tmp_path):
    d, _ = write_log(tmp_path, Upd("a", [3.0], None, 1), Upd("b", [4.0], {"m": "n"}, 2))
    v = restore(d)
    assert state(v) == {"a": (f32(3.0), None), "b": (f32(4.0), {"m": "n"})}
    assert (v.report["updates"], v.report["updates_of_missing"]) == (2, 2)
    assert v.report["inserts"] == 0


def test_update_after_delete_does_not_revive_old_metadata(restore, tmp_path):
    d, _ = write_log(
        tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Del("a", 2), Upd("a", [2.0], None, 3)
    )
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), None)}
    assert v.report["updates_of_missing"] == 1


def test_update_keeps_metadata_set_by_earlier_update(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Ins("a", [1.0], None, 1),
        Upd("a", [2.0], {"k": "1"}, 2),
        Upd("a", [3.0], None, 3),
    )
    assert state(restore(d)) == {"a": (f32(3.0), {"k": "1"})}


# ----------------------------------------------------------------------------- Delete
def test_delete_removes_id(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], None, 1), Ins("b", [2.0], None, 2), Del("a", 3))
    v = restore(d)
    assert v.ids == ["b"]
    assert (v.report["deletes"], v.report["deletes_of_missing"]) == (1, 0)


def test_delete_of_missing_id_is_counted_and_has_no_effect(restore, tmp_path):
    d, _ = write_log(tmp_path, Del("z", 1), Ins("a", [1.0], None, 2), Del("a\x00", 3))
    v = restore(d)
    assert state(v) == {"a": (f32(1.0), None)}
    assert v.report["deletes_of_missing"] == 2
    assert v.report["commit_points_applied"] == 3


def test_insert_after_delete(restore, tmp_path):
    d, _ = write_log(
        tmp_path, Ins("a", [1.0], {"k": "v"}, 1), Del("a", 2), Ins("a", [5.0], None, 3)
    )
    assert state(restore(d)) == {"a": (f32(5.0), None)}


def test_delete_everything_gives_empty_index(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], None, 1), Del("a", 2))
    v = restore(d)
    assert v.ids == [] and v.vectors == [] and v.metadata == []


# ----------------------------------------------------------------------------- Batch
def test_batch_entries_apply_in_order(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Batch(
            [
                Ins("a", [1.0], {"k": "v"}, 1),
                Upd("a", [2.0], None, 1),
                Ins("b", [3.0], None, 1),
                Del("b", 1),
            ],
            ts=5,
        ),
    )
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), {"k": "v"})}
    r = v.report
    assert (r["inserts"], r["updates"], r["deletes"], r["commit_points_applied"]) == (2, 1, 1, 1)


def test_nested_batches_are_flattened(restore, tmp_path):
    inner = Batch([Upd("a", [2.0], None, 9), Batch([Ins("c", [7.0], None, 9)], 9)], 9)
    d, _ = write_log(tmp_path, Batch([Ins("a", [1.0], None, 1), inner, Del("a", 1)], ts=3))
    v = restore(d)
    assert state(v) == {"c": (f32(7.0), None)}
    assert v.report["commit_points_applied"] == 1
    assert (v.report["inserts"], v.report["updates"], v.report["deletes"]) == (2, 1, 1)


def test_batch_is_one_atomic_step_for_a_time_target(restore, tmp_path):
    # inner timestamps do not split a batch: the batch's own timestamp decides
    d, recs = write_log(
        tmp_path,
        Ins("x", [0.0], None, 1),
        Batch([Ins("a", [1.0], None, 2), Ins("b", [2.0], None, 200)], ts=100),
    )
    v = restore(d, to_time=50)
    assert v.ids == ["x"]
    assert stop_of(v) == stop_at(recs[1], 100)
    v = restore(d, to_time=2)
    assert v.ids == ["x"]
    assert restore(d, to_time=100).ids == ["a", "b", "x"]
    assert restore(d, to_time=100, exclusive=True).ids == ["x"]


def test_empty_batch_is_a_commit_point(restore, tmp_path):
    d, recs = write_log(tmp_path, Batch([], 5), Ins("a", [1.0], None, 7))
    v = restore(d)
    assert v.ids == ["a"]
    assert v.report["commit_points_applied"] == 2
    v = restore(d, to_time=6)
    assert v.ids == [] and v.report["commit_points_applied"] == 1
    assert stop_of(v) == stop_at(recs[1], 7)


def test_batch_inside_transaction_belongs_to_it(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Batch([Ins("a", [1.0], None, 1), Batch([Ins("b", [2.0], None, 1)], 1)], 1),
        Abort(1, 2),
        Begin(2, 3),
        Batch([Ins("c", [3.0], None, 3)], 3),
        Commit(2, 4),
    )
    v = restore(d)
    assert v.ids == ["c"]
    assert v.report["commit_points_applied"] == 1


# ----------------------------------------------------------------------------- commit points
def test_each_data_record_outside_a_transaction_is_a_commit_point(restore, tmp_path):
    d, _ = write_log(
        tmp_path, Ins("a", [1.0], None, 1), Upd("a", [2.0], None, 2), Del("b", 3), Batch([], 4)
    )
    assert restore(d).report["commit_points_applied"] == 4


def test_committed_transaction_applies_its_records_in_log_order(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], {"k": "v"}, 1),
        Upd("a", [2.0], None, 1),
        Ins("b", [3.0], None, 1),
        Del("b", 1),
        Commit(1, 2),
    )
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), {"k": "v"})}
    assert v.report["commit_points_applied"] == 1
    assert v.report["transactions"]["committed"] == 1


def test_empty_committed_transaction_is_a_commit_point(restore, tmp_path):
    d, _ = write_log(tmp_path, Begin(1, 1), Commit(1, 2))
    v = restore(d)
    assert v.ids == []
    assert v.report["commit_points_applied"] == 1
    assert v.report["transactions"]["committed"] == 1


def test_aborted_transaction_is_discarded(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Ins("x", [1.0], None, 1),
        Begin(1, 2),
        Ins("a", [2.0], None, 2),
        Del("x", 2),
        Abort(1, 3),
    )
    v = restore(d)
    assert state(v) == {"x": (f32(1.0), None)}
    assert v.report["transactions"]["aborted"] == 1
    assert v.report["commit_points_applied"] == 1
    assert v.report["deletes"] == 0 and v.report["inserts"] == 1


def test_transaction_open_at_end_of_log_is_discarded(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("x", [1.0], None, 1), Begin(4, 2), Ins("a", [2.0], None, 2))
    v = restore(d)
    assert v.ids == ["x"]
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 1}


def test_nested_data_belongs_to_most_recently_begun_open_transaction(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], None, 1),  # -> 1
        Begin(2, 1),
        Ins("b", [2.0], None, 1),  # -> 2
        Commit(1, 2),  # applies a only
        Ins("c", [3.0], None, 2),  # -> 2 (still open)
        Abort(2, 3),  # discards b and c
    )
    v = restore(d)
    assert v.ids == ["a"]
    assert v.report["transactions"] == {"committed": 1, "aborted": 1, "in_flight_discarded": 0}


def test_inner_transaction_commits_while_outer_stays_open(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Begin(2, 1),
        Ins("b", [2.0], None, 1),  # -> 2
        Commit(2, 2),
        Ins("a", [1.0], None, 3),  # -> 1, never committed
    )
    v = restore(d)
    assert v.ids == ["b"]
    assert v.report["transactions"] == {"committed": 1, "aborted": 0, "in_flight_discarded": 1}


def test_transactions_apply_in_commit_order(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], None, 1),  # -> 1
        Begin(2, 1),
        Ins("a", [2.0], None, 1),  # -> 2
        Commit(2, 2),  # a = 2
        Commit(1, 3),  # a = 1: transaction 1 commits last
    )
    assert state(restore(d)) == {"a": (f32(1.0), None)}


def test_commit_point_of_transaction_has_commit_record_timestamp(restore, tmp_path):
    d, recs = write_log(
        tmp_path, Begin(1, 1), Ins("a", [1.0], None, 1), Commit(1, 10), Ins("b", [2.0], None, 20)
    )
    v = restore(d, to_time=5)
    assert v.ids == []
    assert stop_of(v) == stop_at(recs[2], 10)
    assert restore(d, to_time=10).ids == ["a"]
    assert restore(d, to_time=10, exclusive=True).ids == []


def test_begin_of_open_transaction_is_an_anomaly_and_changes_nothing(restore, tmp_path):
    d, recs = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], None, 1),
        Begin(1, 2),  # anomaly
        Ins("b", [2.0], None, 2),
        Commit(1, 3),
    )
    v = restore(d)
    assert v.ids == ["a", "b"]
    assert len(v.report["anomalies"]) == 1
    a = v.report["anomalies"][0]
    assert (os.path.basename(a["file"]), a["offset"]) == (recs[2].file, recs[2].offset)
    assert v.report["transactions"]["committed"] == 1


def test_begin_of_an_open_transaction_does_not_make_it_the_most_recently_begun(
        restore, tmp_path):
    """A Begin for an id already open "changes nothing" (SPEC §3): with 2 begun after 1,
    a second Begin of 1 leaves 2 the owner of the data records that follow."""
    d, recs = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], None, 1),  # -> 1
        Begin(2, 2),
        Ins("b", [2.0], None, 2),  # -> 2
        Begin(1, 3),  # anomaly: 1 is open
        Ins("c", [3.0], None, 3),  # -> 2, still the most recently begun
        Commit(1, 4),  # applies a only
        Abort(2, 5),  # discards b and c
    )
    v = restore(d)
    assert state(v) == {"a": (f32(1.0), None)}
    assert [a["offset"] for a in v.report["anomalies"]] == [recs[4].offset]
    assert v.report["transactions"] == {"committed": 1, "aborted": 1, "in_flight_discarded": 0}


def test_commit_of_unknown_transaction_is_an_anomaly(restore, tmp_path):
    d, recs = write_log(tmp_path, Ins("a", [1.0], None, 1), Commit(7, 2), Abort(8, 3))
    v = restore(d)
    assert v.ids == ["a"]
    assert [(os.path.basename(a["file"]), a["offset"]) for a in v.report["anomalies"]] == [
        (recs[1].file, recs[1].offset),
        (recs[2].file, recs[2].offset),
    ]
    assert v.report["commit_points_applied"] == 1
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 0}


def test_commit_after_abort_is_an_anomaly(restore, tmp_path):
    d, _ = write_log(tmp_path, Begin(1, 1), Ins("a", [1.0], None, 1), Abort(1, 2), Commit(1, 3))
    v = restore(d)
    assert v.ids == []
    assert len(v.report["anomalies"]) == 1
    assert v.report["transactions"]["aborted"] == 1


def test_transaction_id_can_be_reused_after_commit(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Begin(1, 1),
        Ins("a", [1.0], None, 1),
        Commit(1, 2),
        Begin(1, 3),
        Ins("b", [2.0], None, 3),
        Commit(1, 4),
    )
    v = restore(d)
    assert v.ids == ["a", "b"]
    assert v.report["anomalies"] == []
    assert v.report["transactions"]["committed"] == 2


def test_an_id_ended_below_the_top_of_the_stack_is_not_open(restore, tmp_path):
    """Transaction 1 commits while 2 (begun after it) stays open: 1 is closed, whatever
    its place in the stack. Begun again, it is a new transaction; ended twice, the
    second end is an anomaly. (A mutant that looked ids up in the stack without
    checking that they are still open passed every other test.)"""
    d, _ = write_log(tmp_path, Begin(1, 1), Ins("a", [1.0], None, 1), Begin(2, 2),
                     Commit(1, 3), Begin(1, 4), Ins("a", [2.0], None, 5), Commit(2, 6),
                     Abort(1, 7))
    v = restore(d)
    assert state(v) == {"a": (f32(1.0), None)}
    assert v.report["anomalies"] == []
    assert v.report["transactions"] == {"committed": 2, "aborted": 1,
                                        "in_flight_discarded": 0}
    d, recs = write_log(tmp_path / "2", Begin(1, 1), Ins("a", [1.0], None, 1), Begin(2, 2),
                        Commit(1, 3), Commit(1, 4), Commit(2, 5))
    v = restore(d)
    assert v.ids == ["a"] and v.report["commit_points_applied"] == 2
    assert [a["offset"] for a in v.report["anomalies"]] == [recs[4].offset]
    assert v.report["transactions"]["committed"] == 2


def test_anomalous_commit_timestamp_does_not_stop_a_time_target(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", [1.0], None, 1), Commit(9, 100), Ins("b", [2.0], None, 2))
    assert restore(d, to_time=5).ids == ["a", "b"]


def test_checkpoint_carries_no_data_and_is_not_a_commit_point(restore, tmp_path):
    d, _ = write_log(
        tmp_path, Ins("a", [1.0], None, 1), Ckpt(0, 100), Ins("b", [2.0], None, 2), Ckpt(7, 3)
    )
    v = restore(d, to_time=5)
    assert v.ids == ["a", "b"]
    assert v.report["commit_points_applied"] == 2
    assert stop_of(v) == END


def test_markers_timestamps_do_not_matter(restore, tmp_path):
    # Begin and Abort carry large timestamps; only commit points are compared with T
    d, _ = write_log(
        tmp_path,
        Begin(1, 1000),
        Abort(1, 1000),
        Ins("a", [1.0], None, 1),
        Begin(2, 1000),
        Ins("b", [1.0], None, 1000),
        Commit(2, 2),
    )
    assert restore(d, to_time=5).ids == ["a", "b"]


def _prefix_colliding_ids() -> tuple[str, str]:
    """An 8-byte ASCII id and a 16-byte one beginning with it, with the same 64-bit id
    key: FNV-1a's state after the long id's first word, xored with a chosen second
    word, meets the short id's (their lengths seed the two apart)."""
    import random

    from gpu_pitr.format.payload import FNV_OFFSET, FNV_PRIME

    off, prime, mask = int(FNV_OFFSET), int(FNV_PRIME), (1 << 64) - 1
    rng = random.Random(8)
    while True:
        w1 = bytes(rng.randrange(0x21, 0x7F) for _ in range(8))
        x = int.from_bytes(w1, "little")
        w2 = ((((off ^ 16) ^ x) * prime) & mask) ^ (off ^ 8) ^ x
        raw = w2.to_bytes(8, "little")
        if 0 < min(raw) and max(raw) < 0x80:
            return w1.decode(), (w1 + raw).decode()


def test_an_id_and_a_longer_one_it_begins_stay_apart_when_their_keys_collide(
        restore, tmp_path):
    """Ids compare exactly: a hit on the map's key is confirmed by the id's length and
    bytes. Here the longer id is entered first and the shorter one is its prefix, so
    comparing the shorter one's bytes alone would take it for the longer one."""
    import numpy as np

    from gpu_pitr.resolve.idsort import span_keys

    short, long = _prefix_colliding_ids()
    raw = np.frombuffer((short + long).encode(), np.uint8)
    keys = span_keys(raw, np.array([0, 8]), np.array([8, 16]), parallel=False)
    assert keys[0] == keys[1] and long.startswith(short)
    d, _ = write_log(tmp_path, Ins(long, [1.0], None, 1), Ins(short, [2.0], {"k": "s"}, 2),
                     Upd(long, [3.0], None, 3))
    v = restore(d)
    assert state(v) == {short: (f32(2.0), {"k": "s"}), long: (f32(3.0), None)}
    assert v.report["inserts"] == 2 and v.report["updates"] == 1


@pytest.mark.parametrize("chunk_bytes", [None, 64])
def test_transactions_in_flight_at_a_time_stop_stay_counted_after_more_chunks(
        restore, tmp_path, chunk_bytes):
    """Transactions open where a time target stops are in flight there, however much of
    the log is read after the stop (in later chunks, checked for damage only)."""
    b = LogBuilder()
    b.add(Begin(1, 1))
    b.add(Ins("a", [1.0], None, 1))
    b.add(Begin(2, 2))
    b.add(Ins("b", [2.0], None, 2))
    stop = b.add(Commit(2, 100))  # the first commit point past T: 1 and 2 still open
    for k in range(50):
        b.add(Ins(f"p{k}", [float(k)], None, 200))
    d = b.write(tmp_path / "wal")
    v = restore(d, to_time=5, chunk_bytes=chunk_bytes)
    assert v.ids == []
    assert stop_of(v) == stop_at(stop, 100)
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 2}


# ----------------------------------------------------------------------------- targets
def _abc(tmp_path, tss=(10, 20, 30)):
    return write_log(
        tmp_path, *(Ins(i, [float(t)], None, t) for i, t in zip("abc", tss, strict=True))
    )


def test_time_target_is_inclusive(restore, tmp_path):
    d, recs = _abc(tmp_path)
    v = restore(d, to_time=20)
    assert v.ids == ["a", "b"]
    assert stop_of(v) == stop_at(recs[2], 30)
    assert v.report["commit_points_applied"] == 2


def test_time_target_exclusive_stops_at_equal_timestamp(restore, tmp_path):
    d, recs = _abc(tmp_path)
    v = restore(d, to_time=20, exclusive=True)
    assert v.ids == ["a"]
    assert stop_of(v) == stop_at(recs[1], 20)


def test_time_target_zero_is_inclusive_too(restore, tmp_path):
    """T = 0 (the epoch) keeps the commit points stamped 0; only a negative T (or 0,
    exclusive) stops before them."""
    d, recs = write_log(tmp_path, Ins("a", [1.0], None, 0), Ins("b", [2.0], None, 1))
    assert restore(d, to_time=0).ids == ["a"]
    assert restore(d, to_time="1970-01-01T00:00:00Z").ids == ["a"]
    v = restore(d, to_time=0, exclusive=True)
    assert v.ids == [] and stop_of(v) == stop_at(recs[0], 0)
    assert restore(d, to_time=-1).ids == []


def test_time_target_between_commit_points(restore, tmp_path):
    d, recs = _abc(tmp_path)
    for exclusive in (False, True):
        v = restore(d, to_time=25, exclusive=exclusive)
        assert v.ids == ["a", "b"]
        assert stop_of(v) == stop_at(recs[2], 30)


def test_time_target_before_everything_gives_empty_index(restore, tmp_path):
    d, recs = _abc(tmp_path)
    v = restore(d, to_time=9)
    assert v.ids == []
    assert stop_of(v) == stop_at(recs[0], 10)
    assert v.report["commit_points_applied"] == 0


def test_time_target_after_everything_reaches_end_of_log(restore, tmp_path):
    d, _ = _abc(tmp_path)
    v = restore(d, to_time=30)
    assert v.ids == ["a", "b", "c"]
    assert stop_of(v) == END
    assert restore(d, to_time=2**64 - 1, exclusive=True).ids == ["a", "b", "c"]
    # past every u64 timestamp (the API takes any int; the CLI refuses these)
    for t in (2**64, 2**70):
        for exclusive in (False, True):
            v = restore(d, to_time=t, exclusive=exclusive)
            assert v.ids == ["a", "b", "c"] and stop_of(v) == END


def test_later_commit_points_with_earlier_timestamps_are_not_applied(restore, tmp_path):
    d, recs = _abc(tmp_path, tss=(10, 30, 15))
    v = restore(d, to_time=20)
    assert v.ids == ["a"]  # not a filter: c (ts 15) comes after the stop
    assert stop_of(v) == stop_at(recs[1], 30)
    v = restore(d, to_time=15, exclusive=True)
    assert v.ids == ["a"]
    assert stop_of(v) == stop_at(recs[1], 30)


def test_time_target_with_timestamps_going_back_and_equal(restore, tmp_path):
    d, recs = write_log(
        tmp_path,
        Ins("a", [1.0], None, 5),
        Ins("b", [2.0], None, 3),
        Ins("c", [3.0], None, 5),
        Ins("d", [4.0], None, 6),
        Ins("e", [5.0], None, 1),
    )
    assert restore(d, to_time=5).ids == ["a", "b", "c"]
    v = restore(d, to_time=5, exclusive=True)
    assert v.ids == []
    assert stop_of(v) == stop_at(recs[0], 5)
    v = restore(d, to_time=4)
    assert v.ids == [] and stop_of(v) == stop_at(recs[0], 5)


def test_time_target_with_large_timestamps(restore, tmp_path):
    big = 2**64 - 2
    d, recs = write_log(tmp_path, Ins("a", [1.0], None, 2**32), Ins("b", [2.0], None, big))
    v = restore(d, to_time=2**40)
    assert v.ids == ["a"]
    assert stop_of(v) == stop_at(recs[1], big)
    assert restore(d, to_time=big).ids == ["a", "b"]


def test_seq_target_is_inclusive(restore, tmp_path):
    d, recs = _abc(tmp_path)
    v = restore(d, to_seq=1)
    assert v.ids == ["a", "b"]
    assert stop_of(v)["reason"] == "target"
    assert stop_of(v)["seq"] == 1
    assert (stop_of(v)["file"], stop_of(v)["offset"]) == (recs[1].file, recs[1].offset)
    assert restore(d, to_seq=0).ids == ["a"]


def _x_txn_y(tmp_path):
    """x, then transaction 1 inserting a (seqs 1-3), then y: a seq for every place."""
    return write_log(
        tmp_path,
        Ins("x", [0.0], None, 1),  # seq 0
        Begin(1, 2),  # seq 1
        Ins("a", [1.0], None, 2),  # seq 2
        Commit(1, 3),  # seq 3
        Ins("y", [2.0], None, 4),  # seq 4
    )


def test_seq_target_inside_transaction_does_not_apply_it(restore, tmp_path):
    d, _ = _x_txn_y(tmp_path)
    assert restore(d, to_seq=1).ids == ["x"]
    assert restore(d, to_seq=2).ids == ["x"]
    v = restore(d, to_seq=3)
    assert v.ids == ["a", "x"]
    assert v.report["transactions"]["committed"] == 1


def test_seq_target_is_the_first_record_in_log_order_with_that_seq(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    b.add(Ins("b", [2.0], None, 2))  # seq 1
    b.add(Ins("c", [3.0], None, 3))  # seq 2
    b.reopen()  # second header, seq back to 0
    b.add(Ins("d", [4.0], None, 4))  # seq 0
    r = b.add(Ins("e", [5.0], None, 5))  # seq 1
    b.add(Ins("f", [6.0], None, 6))  # seq 2
    b.reopen(created=0x7000000)  # new segment, seq back to 0
    b.add(Ins("g", [7.0], None, 7))  # seq 0
    d = b.write(tmp_path / "wal")
    assert restore(d, to_seq=1).ids == ["a", "b"]
    assert restore(d, to_seq=2).ids == ["a", "b", "c"]
    assert restore(d).ids == list("abcdefg")
    assert r.seq == 1


def test_seq_target_on_a_marker_record(restore, tmp_path):
    d, recs = write_log(tmp_path, Ins("a", [1.0], None, 1), Ckpt(0, 2), Ins("b", [2.0], None, 3))
    v = restore(d, to_seq=1)
    assert v.ids == ["a"]
    assert (stop_of(v)["file"], stop_of(v)["offset"], stop_of(v)["seq"]) == (
        recs[1].file,
        recs[1].offset,
        1,
    )


def test_exclusive_seq_target_stops_just_before_its_record(restore, tmp_path):
    """PostgreSQL's recovery_target_inclusive = off for a log position: the record
    numbered N is not applied, wherever it is; the stop names it."""
    d, recs = _x_txn_y(tmp_path)
    for n, want in [(0, []), (1, ["x"]), (2, ["x"]), (3, ["x"]), (4, ["a", "x"])]:
        v = restore(d, to_seq=n, exclusive=True)
        assert v.ids == want, n
        assert (stop_of(v)["file"], stop_of(v)["offset"], stop_of(v)["seq"]) == (
            recs[n].file, recs[n].offset, n)
        assert v.report["transactions"]["committed"] == (n == 4)
    with pytest.raises(TargetNotFoundError):
        restore(d, to_seq=5, exclusive=True)


def test_exclusive_seq_target_stops_before_the_first_record_with_that_seq(restore, tmp_path):
    """Sequence numbers repeat after a writer reopens: an exclusive target stops just
    before the first record numbered N in log order and names that one, not a later
    record with the same number (the walk goes on past the stop, checking damage)."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    first = b.add(Ins("b", [2.0], None, 2))  # seq 1
    b.reopen()  # second header, seq back to 0
    b.add(Ins("c", [3.0], None, 3))  # seq 0
    b.add(Ins("d", [4.0], None, 4))  # seq 1
    d = b.write(tmp_path / "wal")
    v = restore(d, to_seq=1, exclusive=True)
    assert v.ids == ["a"]
    assert stop_of(v) == stop_at(first, 2)


def test_exclusive_seq_target_on_a_record_that_does_not_decode(restore, tmp_path):
    """The target's number is in its header: the restore stops before the record
    without decoding it, and lists its damage as after the stop point."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    bad = b.add_payload(b"\x09")  # seq 1: unknown variant
    b.add(Ins("b", [2.0], None, 3))  # seq 2
    d = b.write(tmp_path / "wal")
    v = restore(d, to_seq=1, exclusive=True)
    assert v.ids == ["a"]
    assert (stop_of(v)["offset"], stop_of(v)["seq"], stop_of(v)["timestamp"]) == (
        bad.offset, 1, None)
    assert [(os.path.basename(e["file"]), e["seq"]) for e in v.report["damage_after_stop"]] == [
        (os.path.basename(bad.file), 1)]


def test_seq_target_not_found_is_an_error(restore, tmp_path):
    d, _ = _abc(tmp_path)
    with pytest.raises(TargetNotFoundError):
        restore(d, to_seq=3)
    with pytest.raises(TargetNotFoundError):
        restore(d, to_seq=2**64 - 1)


def test_latest_applies_every_commit_point(restore, tmp_path):
    d, _ = _abc(tmp_path, tss=(30, 10, 20))
    v = restore(d)
    assert v.ids == ["a", "b", "c"]
    assert v.report["commit_points_applied"] == 3
    assert stop_of(v) == END


# ----------------------------------------------------------------------------- log order
def test_segments_apply_in_file_name_order_not_timestamp_or_seq_order(restore, tmp_path):
    b = LogBuilder(created=0x200, first_seq=5)
    b.add(Ins("a", [2.0], None, 1))  # later file, early timestamp
    b.new_segment(0x100)
    b.seq = 0
    b.add(Ins("a", [1.0], None, 100))  # earlier file (log order first)
    d = b.write(tmp_path / "wal")
    v = restore(d)
    assert state(v) == {"a": (f32(2.0), None)}
    v = restore(d, to_time=50)
    assert v.ids == []


def test_second_header_in_the_same_file_is_skipped(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.reopen()
    b.reopen()
    b.add(Ins("b", [2.0], None, 2))
    d = b.write(tmp_path / "wal")
    v = restore(d)
    assert v.ids == ["a", "b"]
    assert v.report["torn_tails"] == [] and v.report["skipped"] == []


def test_segment_with_header_only(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.new_segment(0x6000000)
    b.new_segment(0x6000001)
    b.add(Ins("b", [2.0], None, 2))
    assert restore(b.write(tmp_path / "wal")).ids == ["a", "b"]


def test_files_that_are_not_segments_are_ignored(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    for name in (
        "wal-1.log",
        "WAL-0000000000000001.log",
        "wal-000000000000000A.log",
        "wal-0000000000000001.log.bak",
        "notes.txt",
        "wal-00000000000000001.log",
    ):
        b.put_file(name, b"garbage that is not a WAL")
    d = b.write(tmp_path / "wal")
    os.mkdir(os.path.join(d, "wal-0000000000000002.logdir"))
    v = restore(d)
    assert v.ids == ["a"]
    assert v.report["skipped"] == [] and v.report["torn_tails"] == []


def test_spec_example_payload(restore, tmp_path):
    payload = bytes.fromhex("00 02 76 31 01 00 00 80 3f 00 fb e8 03")
    b = LogBuilder()
    b.add_payload(payload)
    v = restore(b.write(tmp_path / "wal"))
    assert state(v) == {"v1": (f32(1.0), None)}


def test_non_minimal_varints_are_accepted(restore, tmp_path):
    # Insert{id:"v1", vector:[1.0], metadata:Some({"k":"v"}), timestamp:1000} with every
    # varint in a wider form than needed
    payload = (
        b"\xfb\x00\x00"  # variant 0 as u16
        + b"\xfc\x02\x00\x00\x00v1"  # id length as u32
        + b"\xfd\x01"
        + b"\x00" * 7
        + f32(1.0)  # vector count as u64
        + b"\x01\xfb\x01\x00"  # Some, 1 pair (u16)
        + b"\x01k\xfc\x01\x00\x00\x00v"
        + b"\xfd"
        + struct.pack("<Q", 1000)  # timestamp as u64
    )
    b = LogBuilder()
    b.add_payload(payload)
    d = b.write(tmp_path / "wal")
    v = restore(d)
    assert state(v) == {"v1": (f32(1.0), {"k": "v"})}
    assert restore(d, to_time=999).ids == []


def test_metadata_with_duplicate_keys_keeps_the_last(restore, tmp_path):
    payload = b"\x00\x01a\x01" + f32(1.0) + b"\x01\x02\x01k\x011\x01k\x012\x05"
    b = LogBuilder()
    b.add_payload(payload)
    v = restore(b.write(tmp_path / "wal"))
    assert state(v) == {"a": (f32(1.0), {"k": "2"})}


# ----------------------------------------------------------------------------- exactness
def test_vectors_are_bit_exact(restore, tmp_path):
    vec = bits(*w.FLOAT_BITS)
    d, _ = write_log(
        tmp_path,
        Ins("a", vec, None, 1),
        Batch([Upd("b", vec[::-1][::-1], None, 2)], 2),
        Begin(1, 3),
        Ins("c", bits(*reversed(w.FLOAT_BITS)), None, 3),
        Commit(1, 3),
    )
    v = restore(d)
    assert v.vectors == [vec, vec, bits(*reversed(w.FLOAT_BITS))]
    assert v.dim == len(w.FLOAT_BITS)


def test_signalling_nan_and_negative_zero_survive_update(restore, tmp_path):
    d, _ = write_log(
        tmp_path, Ins("a", [1.0, 1.0], None, 1), Upd("a", bits(0x7F800001, 0x80000000), None, 2)
    )
    assert restore(d).vectors == [bits(0x7F800001, 0x80000000)]


def test_ids_are_compared_exactly(restore, tmp_path):
    ids = ["a", "a\x00", "\x00", "", "a\x00b", "é", "e\u0301", "A", "a "]
    d, _ = write_log(tmp_path, *(Ins(i, [float(n)], None, n) for n, i in enumerate(ids)))
    v = restore(d)
    assert sorted(v.ids) == sorted(ids)
    assert state(v)["a\x00"] == (f32(1.0), None)
    assert state(v)["a"] == (f32(0.0), None)
    assert state(v)[""] == (f32(3.0), None)


def test_delete_does_not_touch_ids_with_a_shared_prefix(restore, tmp_path):
    d, _ = write_log(
        tmp_path,
        Ins("a", [1.0], None, 1),
        Ins("ab", [2.0], None, 2),
        Ins("a\x00", [3.0], None, 3),
        Del("a", 4),
    )
    assert restore(d).ids == ["a\x00", "ab"]


def test_ids_sorted_by_utf8_bytes(restore, tmp_path):
    ids = ["🙂", "b", "\U00010000", "日", "\uffff", "é", "a", "Z", "\x7f", "ab", ""]
    d, _ = write_log(tmp_path, *(Ins(i, [1.0], None, 1) for i in ids))
    assert restore(d).ids == [
        "",
        "Z",
        "a",
        "ab",
        "b",
        "\x7f",
        "é",
        "日",
        "\uffff",
        "\U00010000",
        "🙂",
    ]


def test_metadata_strings_are_exact(restore, tmp_path):
    meta = {"": "", "ключ": "値", "k\x00": "\x00", "e\u0301": "é"}
    d, _ = write_log(tmp_path, Ins("a", [1.0], meta, 1))
    assert restore(d).metadata == [meta]


def test_zero_dimension_vectors(restore, tmp_path):
    d, _ = write_log(tmp_path, Ins("a", b"", None, 1), Ins("b", b"", {"k": "v"}, 2))
    v = restore(d)
    assert v.ids == ["a", "b"]
    assert v.vectors == [b"", b""]


def test_many_distinct_ids_are_never_merged(restore, tmp_path):
    # enough ids that a 32-bit hash would collide; long shared prefixes defeat hashing a
    # prefix only; every third id is deleted again
    n = 60_000
    prefix = "p" * 300
    ids = [f"id{i}" for i in range(n)] + [f"{prefix}{i}" for i in range(200)]
    b = LogBuilder()
    for k in range(0, len(ids), 1000):
        b.add(Batch([Ins(i, [float(j)], None, 1) for j, i in enumerate(ids[k : k + 1000])], 1))
    b.add(Batch([Del(i, 2) for i in ids[::3]], 2))
    v = restore(b.write(tmp_path / "wal"))
    keep = sorted(set(ids) - set(ids[::3]), key=str.encode)
    assert v.ids == keep
    expect = {i: f32(float(j % 1000)) for j, i in enumerate(ids)}
    assert v.vectors == [expect[i] for i in keep]
    assert v.report["deletes_of_missing"] == 0


# ----------------------------------------------------------------------------- the report
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_the_report_holds_every_field_spec_section_3_lists(tmp_path, backend):
    """SPEC §3 "The report", field by field, on one log that gives each a value other
    than its default. The property tests compare the counts with tests/reference.py, but
    leave out ``timings`` (the reference has none): here each stage must have been timed
    (a stage whose time was never added stayed 0.0 without a test failing)."""
    import gpu_pitr

    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Begin(1, 2))
    b.add(Upd("b", [2.0], {"k": "v"}, 2))  # an update of a missing id
    b.add(Commit(1, 3))
    b.add(Begin(2, 3))
    b.add(Ins("c", [3.0], None, 3))
    b.add(Abort(2, 4))
    stray = b.add(Commit(9, 4))  # an anomaly
    b.add(Ckpt(3, 4))
    b.add(Batch([Del("z", 4), Del("a", 4)], 4))  # a delete of a missing id
    b.add(Begin(5, 5))
    b.add(Ins("e", [5.0], None, 5))
    stop = b.add(Commit(5, 6))  # the first commit point past T: 5 is in flight there
    torn_at = b.raw(b"\x07\x00\x00")  # a torn tail, after the stop: still listed
    b.new_segment(0x6000000)
    b.add(Ins("f", [6.0], None, 7))
    d = b.write(tmp_path / "wal")
    size = sum(len(data) for data in b.files.values())

    r = gpu_pitr.restore(d, backend=backend, to_time=5).report.to_dict()
    assert r["target"] == {"kind": "time", "value": 5, "exclusive": False}
    assert stop_of(w.View([], [], [], r, None)) == stop_at(stop, 6)
    assert (r["records_read"], r["commit_points_applied"]) == (14, 3)
    assert (r["inserts"], r["updates"], r["deletes"]) == (1, 1, 2)
    assert (r["updates_of_missing"], r["deletes_of_missing"]) == (1, 1)
    assert r["transactions"] == {"committed": 1, "aborted": 1, "in_flight_discarded": 1}
    assert [(os.path.basename(a["file"]), a["offset"], a["seq"], a["transaction_id"])
            for a in r["anomalies"]] == [(stray.file, stray.offset, stray.seq, 9)]
    assert [(os.path.basename(t["file"]), t["offset"], t["bytes_lost"])
            for t in r["torn_tails"]] == [(stop.file, torn_at, 3)]
    assert r["skipped"] == [] and r["damage_after_stop"] == [] and r["base"] is None
    assert r["bytes_read"] == size
    stages = ("discover", "read", "frame", "decode", "plan", "apply", "finish")
    assert set(r["timings"]) == {*stages, "compile", "total"}
    # each within the whole (reading and framing overlap: threads, so no sum)
    assert all(0 <= r["timings"][s] <= r["timings"]["total"] for s in stages)
    # the stages that run compiled code over the records take time on any machine
    assert r["timings"]["decode"] > 0 and r["timings"]["apply"] > 0


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_every_integer_field_is_read_in_every_width_it_may_take(tmp_path, backend):
    """SPEC §1: a reader accepts any varint form that decodes to the field's type. The
    variant index (a u32) in its 2- and 4-byte forms, at the top and inside a batch;
    transaction ids, checkpoint numbers, counts, lengths and timestamps up to 8 bytes.
    (test_non_minimal_varints_are_accepted has the variant index in its u16 form only.)"""
    import gpu_pitr

    def u16(v):
        return b"\xfb" + struct.pack("<H", v)

    def u32(v):
        return b"\xfc" + struct.pack("<I", v)

    def u64(v):
        return b"\xfd" + struct.pack("<Q", v)

    def text(s, width):
        return width(len(s)) + s.encode()

    b = LogBuilder()
    b.add_payload(u32(5) + u64(7) + u16(1))  # BeginTransaction 7
    b.add_payload(
        u16(3) + u32(2)  # Batch of 2
        + u32(0) + text("a", u16) + u32(1) + f32(1.0)  # Insert "a" [1.0]
        + b"\x01" + u64(1) + text("k", u16) + text("v", u32) + u64(2)  # Some({k: v})
        + u16(2) + text("z", u64) + u32(2)  # Delete "z" (missing)
        + u64(2))  # the batch's timestamp
    b.add_payload(u16(6) + u32(7) + u64(3))  # CommitTransaction 7 at 3
    b.add_payload(u32(4) + u16(0) + u16(3))  # Checkpoint
    b.add_payload(u32(5) + u16(8) + u32(4))  # BeginTransaction 8
    b.add_payload(b"\x00\x01b\x01" + f32(5.0) + b"\x00\x04")  # Insert "b", minimal
    b.add_payload(u32(7) + u64(8) + u16(4))  # AbortTransaction 8
    b.add_payload(u32(1) + text("a", u64) + u16(1) + f32(2.0) + b"\x00" + u32(5))  # Update
    d = b.write(tmp_path / "wal")

    idx = gpu_pitr.restore(d, backend=backend)
    assert idx.id_list() == ["a"] and list(idx.metadata) == [{"k": "v"}]
    assert idx.to_host().vectors.tobytes() == f32(2.0)
    r = idx.report
    assert r.skipped == [] and r.trailing_bytes == [] and r.anomalies == []
    assert r.transactions == {"committed": 1, "aborted": 1, "in_flight_discarded": 0}
    assert (r.commit_points_applied, r.deletes_of_missing) == (2, 1)
    at_3 = gpu_pitr.restore(d, backend=backend, to_time=4, exclusive=True)
    assert at_3.to_host().vectors.tobytes() == f32(1.0)
    assert at_3.report.stop["seq"] == 7
