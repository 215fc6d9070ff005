"""Restores FROM A BASE SNAPSHOT warn as the restore of the whole log does.

Each case here was found by ``scripts/base_warnings_scope.py``, which compares the
warnings of restores from snapshots with tests/reference_base_warnings.py's model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import reference_warnings as rw
from workloads import Begin, Ckpt, Commit, Ins, LogBuilder

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import TargetNotReachedError

V = [1.0]


def _snap(wal, out: Path, **kw) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", **kw), out)
    return out


def _kinds(index) -> list[str]:
    return sorted(rw.classify(t) for t in index.report.warnings)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("base_kw", [{"to_time": 3},
                                     {"to_position": "wal-0000000005f5e200.log:16",
                                      "exclusive": True}],
                         ids=["time", "exclusive"])
def test_a_restart_at_the_position_of_a_base_that_stopped_before_it(tmp_path, base_kw,
                                                                    backend):
    """Transaction 7 open at the snapshot's position, where the writer restarted: the
    record there (Commit 9, seq 0) is numbered below the snapshot's last (seq 3), and x,
    seq 3, joins 7 after that restart. docs/semantics.md: restarts count "from the base's
    position on", and the restore of the whole log warns; from a snapshot whose own
    restore stopped at that record (a time target, an exclusive one) the restore did not
    compare it with the snapshot's last record (that comparison was left out for seq
    jumps, which the snapshot's stored report counts, and restarts with them), and said
    nothing (``joined_after_restart``: 44 of the 386 disagreements of
    ``base_warnings_scope.py --sample 13`` before the fixes)."""
    b = LogBuilder()
    b.add(Begin(7, ts=1))
    b.add(Ins("t", V, ts=1))
    b.add(Begin(9, ts=1))
    b.add(Ins("u", V, ts=1))             # seq 3, in 9: the base's last record
    b.reopen(created=0x5F5E200)
    b.add(Commit(9, ts=5))               # seq 0: the base's position
    b.add(Ckpt(0, ts=6))
    b.add(Ckpt(0, ts=6))
    x = b.add(Ins("x", V, ts=6))         # seq 3, in 7
    wal = b.write(tmp_path / "wal")
    snap = _snap(wal, tmp_path / "snap", **base_kw)
    assert snapshot.load(snap).position["offset"] == 16
    whole = gpu_pitr.restore(wal, backend=backend).report.warnings
    got = gpu_pitr.restore(wal, backend=backend, base=snap, chunk_bytes=64)
    assert got.report.warnings == whole
    (text,) = whole
    assert text.startswith(
        "transaction 7 is still open at the end of the log, and 1 of its 2 records come "
        f"after a writer restart (the first of them: seq 3 at {os.path.basename(x.file)} "
        f"offset {x.offset})")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_seq_target_met_by_the_base_and_again_later_is_warned_of(tmp_path, backend):
    """Seq 0 twice (a writer reopened without recovery): the restore from a snapshot
    whose last record is the first seq 0 is that snapshot's state, as the whole log's
    is, and reads the log after it; the whole log's restore warns that seq 0 occurs
    twice. The one from the base counted only the records it read, not the base's last:
    one, no warning (``seq_repeated``: 109 of the 386 disagreements of
    ``base_warnings_scope.py --sample 13`` before the fixes)."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=1))
    b.add(Ins("b", V, ts=2))
    b.reopen(created=0x5F5E200)
    b.add(Ins("c", V, ts=3))
    wal = b.write(tmp_path / "wal")
    snap = _snap(wal, tmp_path / "snap", to_seq=0)
    whole = gpu_pitr.restore(wal, backend=backend, to_seq=0).report.warnings
    got = gpu_pitr.restore(wal, backend=backend, base=snap, to_seq=0)
    assert got.report.stop["offset"] == 16 and got.report.records_read == 2
    assert got.report.warnings == whole
    assert _kinds(got) == ["seq_repeated"]
    assert whole[0].startswith("seq 0 occurs 2 times in the log")
    # Not read on: not known, from the base as from the log.
    assert gpu_pitr.restore(wal, backend=backend, base=snap, to_seq=0,
                            read_after_stop=False).report.warnings == []


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_time_target_the_bases_last_record_is_stamped_past_is_not_warned_of(
        tmp_path, backend):
    """A snapshot of the whole log, whose last record (a checkpoint) is stamped past T:
    the whole log's restore to T does not warn that the log ends before T (the writer's
    clock had passed T where the log ends, docs/semantics.md); the one from the snapshot
    read no record after it and warned, and strict refused it (``time_not_reached``: 230
    of the 386 disagreements of ``base_warnings_scope.py --sample 13`` before the fixes:
    a transaction still open at the end, or markers, stamped past T). Where the last
    record is not past T, both warn."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=1))
    b.add(Ckpt(0, ts=5))
    wal = b.write(tmp_path / "wal")
    snap = _snap(wal, tmp_path / "snap")
    for t, owed in ((3, []), (4, []), (5, ["time_not_reached"]), (7, ["time_not_reached"])):
        whole = gpu_pitr.restore(wal, backend=backend, to_time=t)
        got = gpu_pitr.restore(wal, backend=backend, base=snap, to_time=t)
        assert _kinds(whole) == _kinds(got) == owed, t
        assert got.report.warnings == whole.report.warnings
        if not owed:
            gpu_pitr.restore(wal, backend=backend, base=snap, to_time=t, strict=True)
        else:
            with pytest.raises(TargetNotReachedError):
                gpu_pitr.restore(wal, backend=backend, base=snap, to_time=t, strict=True)


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "older one damaged"])
def test_snapshots_start_from_the_one_taken_at_the_transaction_target(tmp_path, damaged):
    """docs/semantics.md: ``snapshots=`` starts from "the newest snapshot whose restore
    stops at the record a restore of the whole log stops at", and "a snapshot taken with
    --to-transaction X ... is the answer to the same target from it" (``base=`` it stops
    there, reading nothing before). The choice passed it over as past the target (X is
    closed at its position, no end of X after it), for an older snapshot or the log
    alone: the log read again for nothing, and an older damaged snapshot tried, and
    warned of, before it (3 of the 386 disagreements of ``base_warnings_scope.py --sample
    13`` before the fixes, in its ``snapshots=`` runs)."""
    b = LogBuilder()
    b.add(Begin(1, ts=1))
    b.add(Ins("a", V, ts=1))
    b.add(Commit(1, ts=2))
    b.new_segment(0x5F5E200)
    b.add(Ins("b", V, ts=3))
    wal = b.write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    older = _snap(wal, snaps / "a_older", to_seq=1)  # X open there: it serves too
    answer = _snap(wal, snaps / "b_answer", to_transaction=1)
    if damaged:  # a byte of its ids (it holds no vector): its checksum no longer holds
        data = bytearray((older / "ids.arrow").read_bytes())
        data[len(data) // 2] ^= 0x55
        (older / "ids.arrow").write_bytes(bytes(data))
    whole = gpu_pitr.restore(wal, backend="cpu", to_transaction=1)
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=1)
    assert got.report.base["path"] == str(answer), got.report.message
    assert got.report.warnings == [] and got.id_list() == whole.id_list() == ["a"]
    assert got.report.stop == whole.report.stop
    # Exclusive, that snapshot is past the target: the older one, or the log alone.
    ex = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=1,
                          exclusive=True)
    assert (ex.report.base or {}).get("path") == (None if damaged else str(older))
    assert ex.id_list() == [] and _kinds(ex) == (["snapshot_damaged"] if damaged else [])
