"""``strict`` (``--strict``): a restore that may not have reached its target fails.

By default a restore that runs out of log before a time target, crosses records missing
inside the log, or finds no log at all returns what it has, with a warning (SPEC section
3 makes a time past the log's end its latest state). PostgreSQL ends such a recovery
with FATAL ("recovery ended before configured recovery target was reached"); a script
restoring with ``--strict`` gets that: exit 1, one line naming the file and offset where
the log falls short, nothing written. What the log holds exactly is still restored with
``--strict`` (torn tails, an allowed incomplete start, skipped records: each asked for or
harmless, and each still a warning).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from workloads import Begin, Commit, Del, Ins, LogBuilder

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.cli import main
from gpu_pitr.errors import TargetNotReachedError

T = 1_800_000_000
V = [1.0, 2.0]
SEG2 = 0x5F5E200


def _log(tmp_path):
    """Three inserts stamped T, T+10, T+5 in one segment."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 10))
    b.add(Ins("c", V, ts=T + 5))
    d = tmp_path / "wal"
    b.write(d)
    return b, d


def _gap_log(tmp_path):
    """seq 0, 1 in one segment; seqs 2-4 gone; seq 5, 6 in the next."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 1))
    b.new_segment(SEG2)
    jump = b.add(Ins("c", V, ts=T + 5), seq=5)
    b.add(Del("a", ts=T + 6), seq=6)
    d = tmp_path / "wal"
    b.write(d)
    return d, jump


def _same(a, b) -> None:
    assert list(a.ids) == list(b.ids)
    assert np.array_equal(a.vectors.view(np.uint32), b.vectors.view(np.uint32))
    assert list(a.metadata) == list(b.metadata)


def _seg(d, k=0) -> str:
    return str(sorted(d.glob("wal-*.log"))[k])


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_time_target_past_the_log_fails_naming_where_the_log_ends(tmp_path, backend):
    _, d = _log(tmp_path)
    lax = gpu_pitr.restore(d, backend=backend, to_time=T + 60)
    (warning,) = lax.report.warnings
    with pytest.raises(TargetNotReachedError) as err:
        gpu_pitr.restore(d, backend=backend, to_time=T + 60, strict=True)
    end = lax.position["offset"]
    assert end == (tmp_path / "wal" / lax.position["segment"]).stat().st_size
    assert (err.value.file, err.value.offset, err.value.seq) == (_seg(d), end, None)
    assert str(err.value) == (f"{_seg(d)}: offset {end}: {warning} (strict: the state "
                              "asked for was not reached; nothing restored)")
    assert warning.startswith("the log ends before the target 2027-01-15T08:01:00Z")
    # Stamped the target second itself (inclusive): not passed, so not reached either.
    with pytest.raises(TargetNotReachedError, match="is passed: its latest commit point is "
                       "stamped that second itself"):
        gpu_pitr.restore(d, backend=backend, to_time=T + 10, strict=True)
    # Reading stopped at the target makes no difference: the log ended first.
    with pytest.raises(TargetNotReachedError):
        gpu_pitr.restore(d, backend=backend, to_time=T + 60, strict=True,
                         read_after_stop=False)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_target_inside_the_log_restores_as_without_strict(tmp_path, backend):
    _, d = _log(tmp_path)
    for target in ({"to_time": T + 9}, {"to_time": T + 10, "exclusive": True},
                   {"to_seq": 1}, {"to_seq": 2, "exclusive": True}, {}):
        _same(gpu_pitr.restore(d, backend=backend, strict=True, **target),
              gpu_pitr.restore(d, backend=backend, **target))
    # A record stamped past T that is no commit point (a Begin) shows the log went on.
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Begin(7, ts=T + 20))
    b.add(Ins("x", V, ts=T + 20))
    b.write(tmp_path / "open")
    got = gpu_pitr.restore(tmp_path / "open", backend=backend, to_time=T + 1, strict=True)
    assert list(got.ids) == ["a"] and got.report.warnings == []


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_records_missing_inside_the_log_fail_at_the_jump(tmp_path, backend):
    d, jump = _gap_log(tmp_path)
    for target in ({}, {"to_time": T + 5}, {"to_seq": 5}):
        with pytest.raises(TargetNotReachedError) as err:
            gpu_pitr.restore(d, backend=backend, strict=True, **target)
        assert (err.value.file, err.value.offset, err.value.seq) == (_seg(d, 1), jump.offset, 5)
        assert "records are missing from the log: the seq jumps from 1 to 5" in str(err.value)
    # Two reasons at once: both said, the first one's place named.
    with pytest.raises(TargetNotReachedError) as err:
        gpu_pitr.restore(d, backend=backend, strict=True, to_time=T + 60)
    assert (err.value.file, err.value.offset) == (_seg(d, 1), jump.offset)
    assert "; also: the log ends before the target 2027-01-15T08:01:00Z" in str(err.value)
    # A jump past the stop point changes nothing restored: no failure.
    _same(gpu_pitr.restore(d, backend=backend, strict=True, to_seq=1),
          gpu_pitr.restore(d, backend=backend, to_seq=1))


def test_no_log_at_all_fails_naming_the_directory(tmp_path):
    empty = tmp_path / "typo"
    empty.mkdir()
    (tmp_path / "wal").mkdir()
    for target in ({}, {"to_time": T}):
        with pytest.raises(TargetNotReachedError) as err:
            gpu_pitr.restore(empty, backend="cpu", strict=True, **target)
        assert (err.value.file, err.value.offset) == (str(empty), None)
        assert str(err.value).startswith(
            f"{empty}: nothing to restore: no wal-<16 hex digits>.log files in {empty}")
    # A log of segments without records is the store's empty state: restored.
    b = LogBuilder()
    b.write(tmp_path / "headers")
    assert len(gpu_pitr.restore(tmp_path / "headers", backend="cpu", strict=True)) == 0


def test_a_base_with_no_log_after_it_fails(tmp_path):
    _, d = _log(tmp_path)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu"), tmp_path / "snap")
    empty = tmp_path / "typo"
    empty.mkdir()
    with pytest.raises(TargetNotReachedError, match="the base snapshot's state alone, no "
                       "log after it") as err:
        gpu_pitr.restore(empty, backend="cpu", base=snap, strict=True)
    assert err.value.file == str(empty)
    _same(gpu_pitr.restore(d, backend="cpu", base=snap, strict=True),
          gpu_pitr.restore(d, backend="cpu"))


def test_what_strict_does_not_refuse(tmp_path):
    """A torn tail whose next segment goes on at the next seq (a crash the writer
    recovered from: nothing is known lost), and a start of history the caller allowed
    to be missing: warned of, not refused."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 1))
    torn = b.add(Ins("c", V, ts=T + 2))
    b.new_segment(SEG2)
    b.add(Ins("d", V, ts=T + 3), seq=2)
    b.truncate(torn.file, torn.offset + 5)
    d = tmp_path / "crash"
    b.write(d)
    got = gpu_pitr.restore(d, backend="cpu", strict=True)
    assert list(got.ids) == ["a", "b", "d"] and got.report.torn_tails
    b = LogBuilder(first_seq=40)
    b.add(Ins("a", V, ts=T))
    b.write(tmp_path / "late")
    got = gpu_pitr.restore(tmp_path / "late", backend="cpu", strict=True,
                           allow_incomplete_history=True)
    assert list(got.ids) == ["a"] and got.report.warnings


def test_the_command_line_fails_and_writes_nothing(tmp_path, capsys):
    _, d = _log(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for cmd, out in (("restore", "o.npz"), ("restore", "o.parquet"), ("snapshot", "snap")):
        args = [cmd, str(d), "--out", str(tmp_path / out), "--to-time", str(T + 60),
                "--report-json", str(tmp_path / "r.json"), "--strict"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"gpu-pitr: error: {_seg(d)}: offset ") and "the log ends before the target" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]
        assert main(args[:-1] + ["-q"]) == 0
        assert "gpu-pitr: warning: the log ends before the target" in capsys.readouterr().err
        assert json.loads((tmp_path / "r.json").read_text())["stop"]["reason"] == "end_of_log"
        for p in tmp_path.iterdir():
            if p.name != "wal":
                p.unlink() if p.is_file() else shutil.rmtree(p)
    assert main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "--to-time",
                 str(T + 9), "--strict", "-q"]) == 0
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_strict_is_true_or_false(tmp_path):
    _, d = _log(tmp_path)
    with pytest.raises(ValueError, match="strict is True or False, not 'yes'"):
        gpu_pitr.restore(d, strict="yes")


def test_a_transaction_never_committed_before_a_time_target_is_the_log_ending(tmp_path):
    """The commit a time target waits for is not in the log: the state restored lacks a
    transaction that may have committed in a part of the log not here."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Begin(7, ts=T + 1))
    b.add(Ins("x", V, ts=T + 1))
    d = tmp_path / "wal"
    b.write(d)
    with pytest.raises(TargetNotReachedError, match="its latest commit point is at "):
        gpu_pitr.restore(d, backend="cpu", to_time=T + 1, strict=True)
    b.add(Commit(7, ts=T + 2))
    b.write(tmp_path / "done")
    got = gpu_pitr.restore(tmp_path / "done", backend="cpu", to_time=T + 1, strict=True)
    assert list(got.ids) == ["a"]


@pytest.mark.parametrize("target", [{"to_seq": 2}, {"to_transaction": 7}])
def test_a_base_that_meets_the_target_needs_no_log_after_it(tmp_path, target):
    """A seq or transaction target the base's own position meets is reached from the base
    alone: strict restores it (the warning that no log follows stays), as it does for the
    whole log; strict refused it, saying the target was not reached."""
    b = LogBuilder()
    b.add(Begin(7, ts=T))
    b.add(Ins("a", V, ts=T))
    b.add(Commit(7, ts=T + 1))  # seq 2, the log's last record
    d = tmp_path / "wal"
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", **target), tmp_path / "snap")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    got = gpu_pitr.restore(empty, backend="cpu", base=snap, strict=True, **target)
    _same(got, gpu_pitr.restore(d, backend="cpu", strict=True, **target))
    assert got.report.stop["reason"] == "target" and got.report.warnings == [
        "the base snapshot's state alone, no log after it: no wal-<16 hex digits>.log "
        f"files in {empty}"]


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("rotate", [False, True], ids=["same_segment", "next_segment"])
def test_records_missing_right_after_a_base_fail_as_from_the_log(tmp_path, rotate, backend):
    """Seqs missing between the base's last record and the first one read after it are
    missing inside the log: a restore of the whole log warns of them (strict refuses);
    from a snapshot taken before them (``--snapshots`` for a target past them) the jump
    was not seen at all, without a word even by default."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 1))  # seq 1: the base's last record
    if rotate:
        b.new_segment(SEG2)
    b.add(Ins("c", V, ts=T + 2), seq=5)
    b.add(Ins("d", V, ts=T + 3), seq=6)
    d = tmp_path / "wal"
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=1), tmp_path / "snap")
    whole = gpu_pitr.restore(d, backend=backend)
    got = gpu_pitr.restore(d, backend=backend, base=snap)
    _same(got, whole)
    assert got.report.warnings == whole.report.warnings and "the seq jumps from 1 to 5" in \
        got.report.warnings[0]
    with pytest.raises(TargetNotReachedError) as from_log:
        gpu_pitr.restore(d, backend=backend, strict=True)
    with pytest.raises(TargetNotReachedError, match="the seq jumps from 1 to 5") as err:
        gpu_pitr.restore(d, backend=backend, base=snap, strict=True)
    assert str(err.value) == str(from_log.value) and err.value.file == _seg(d, int(rotate))


def test_records_missing_in_the_log_a_base_covers_are_carried_forward(tmp_path):
    """A snapshot restored across a seq jump keeps the count in its stored report: a
    restore from it (and from a snapshot of that restore) warns as the whole log's does,
    and strict refuses; a snapshot before the jump, or a log without one, carries none."""
    d, jump = _gap_log(tmp_path)
    whole = gpu_pitr.restore(d, backend="cpu")
    assert whole.report.seq_jumps == {"jumps": 1, "missing": 3, "first": {
        "file": _seg(d, 1), "offset": jump.offset, "seq": 5, "previous": 1}}
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=5), tmp_path / "s5")
    again = snapshot.save(gpu_pitr.restore(d, backend="cpu", base=snap), tmp_path / "s6")
    for base in (snap, again):
        got = gpu_pitr.restore(d, backend="cpu", base=base)
        _same(got, whole)
        assert got.report.base["missing_seqs"] == 3 and got.report.seq_jumps["jumps"] == 0
        (w,) = got.report.warnings
        assert w.startswith(f"records are missing from the log the base snapshot {base} "
                            "covers: 3 seqs in all")
        with pytest.raises(TargetNotReachedError) as err:
            gpu_pitr.restore(d, backend="cpu", base=base, strict=True)
        assert err.value.file == str(base) and str(err.value).startswith(f"{base}: {w}")
    before = snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=1), tmp_path / "s1")
    got = gpu_pitr.restore(d, backend="cpu", base=before, to_seq=1)
    assert got.report.base["missing_seqs"] == 0 and got.report.warnings == []
    _, clean = _log(tmp_path / "clean")
    assert gpu_pitr.restore(clean, backend="cpu").report.seq_jumps == {
        "jumps": 0, "missing": 0, "first": None}


@pytest.mark.parametrize("rotate", [False, True], ids=["same_segment", "next_segment"])
@pytest.mark.parametrize("target", [{"to_seq": 5, "exclusive": True}, {"to_time": T + 2}],
                         ids=["seq_exclusive", "time"])
def test_a_jump_onto_a_base_s_stop_record_is_counted_once(tmp_path, rotate, target):
    """A base whose restore stopped just before its stop record (a time target, an
    exclusive one) counted a jump onto that record (the stop record's seq is judged):
    the restore from it, whose first record is that one, does not count it again. The
    whole log has one jump of 3 seqs; it was warned of twice (6 seqs)."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 1))  # seq 1: the base's last record
    if rotate:
        b.new_segment(SEG2)
    b.add(Ins("c", V, ts=T + 5), seq=5)  # the base's stop record, after the jump
    b.add(Ins("d", V, ts=T + 6), seq=6)
    d = tmp_path / "wal"
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", **target), tmp_path / "snap")
    whole = gpu_pitr.restore(d, backend="cpu")
    got = gpu_pitr.restore(d, backend="cpu", base=snap)
    _same(got, whole)
    assert got.report.base["missing_seqs"] + got.report.seq_jumps["missing"] == 3
    assert len(got.report.warnings) == 1 == len(whole.report.warnings)
