"""Position targets (``to_position``, ``--to-position FILE:OFFSET``): PostgreSQL's
``recovery_target_lsn`` with ``recovery_target_inclusive``.

The target is the record whose header starts at byte OFFSET of segment FILE, as
``gpu-pitr inspect --records`` prints it: the commit points complete at it are applied
(exclusive: those complete before it), exactly as a seq target at that record's seq
where seqs are unique; where the writer restarted and seqs repeat, a position still names
the second record of a seq. Checked against tests/reference.py on random logs (damage,
restarts, anomalies, zero-filled records), against the seq target on both executors, by
hand for the cases around it (inside a transaction, a batch, a restart), the errors
(no record starts there, a torn tail, past the end, no such file), base snapshots and
``--snapshots``, strict, the shards, the command line and the report.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import workloads as w
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import frame_log
from test_restore_properties import SETTINGS, run_case

import gpu_pitr
from gpu_pitr import errors, snapshot
from gpu_pitr.cli import main


def _records(wal_dir) -> list[tuple[str, int, int]]:
    """Every framed record of the log in log order: (file, offset, seq)."""
    return [(i[1], i[2], i[4]) for i in frame_log(wal_dir) if i[0] == "record"]


def _not_records(wal_dir) -> list[tuple[str, int]]:
    """Positions no whole record starts at: inside a record, a torn tail, past a file's
    end, a file that is not there."""
    items = frame_log(wal_dir)
    out = [(i[1], i[2] + 1) for i in items if i[0] == "record"][:3]
    out += [(i[1], i[2]) for i in items if i[0] == "torn"]
    names = sorted({i[1] for i in items})
    out += [(name, os.path.getsize(os.path.join(wal_dir, name))) for name in names[:1]]
    out.append(("wal-ffffffffffffffff.log", 16))
    return out


@st.composite
def _position_targets(draw, wl: w.Workload) -> dict:
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        records = [(f, o) for f, o, _ in _records(d)]
        wrong = _not_records(d)
    pick = draw(st.sampled_from(records)) if records and draw(st.integers(0, 5)) else (
        draw(st.sampled_from(wrong)))
    kw = {"to_position": pick if draw(st.booleans()) else f"{pick[0]}:{pick[1]}"}
    kw["exclusive"] = draw(st.booleans())
    return w.damage_options(draw, kw)


@pytest.mark.parametrize("chunk_bytes", [None, 64], ids=["default", "c64"])
@SETTINGS
@given(data=st.data())
def test_random_logs_equal_the_reference(chunk_bytes, data):
    """Random damaged logs (restarts: seqs repeat; torn tails, zero-filled records,
    undecodable ones, anomalies), a record's position or one that is none."""
    wl = data.draw(w.workloads(), label="workload")
    kw = data.draw(_position_targets(wl), label="target")
    run_case(wl, kw, chunk_bytes)


def _outcome(wal_dir, **kw):
    got = w.target_outcome(wal_dir, **kw)
    if got[0] == "ok":
        # A seq that repeats after a restart is warned of with a seq target (which record
        # it stopped at): a position names one.
        got[2]["warnings"] = [m for m in got[2]["warnings"]
                              if " times in the log (the " not in m]
    return got


@w.CUDA_SETTINGS
@given(data=st.data())
def test_equals_the_seq_target_of_its_record_on_both_executors(data):
    """The first record of its seq in log order: its position is the seq target,
    inclusive and exclusive, whole report and all; the cuda executor agrees."""
    wl = data.draw(w.workloads(damage=False), label="workload")
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        records = _records(d)
        firsts = [r for k, r in enumerate(records) if r[2] not in {s for _, _, s in records[:k]}]
        assume(firsts)
        file, offset, seq = data.draw(st.sampled_from(firsts), label="record")
        common = dict(exclusive=data.draw(st.booleans(), label="exclusive"),
                      allow_incomplete_history=True,
                      chunk_bytes=data.draw(st.sampled_from([None, 64])))
        want = _outcome(d, backend="cpu", to_seq=seq, **common)
        for backend in ("cpu", "cuda"):
            got = _outcome(d, backend=backend, to_position=(file, offset), **common)
            assert got == want, backend


def _restarted(tmp_path):
    """Two records of each seq 0..2: the writer reopened without recovery, in the same
    second (a second header in the same file) and in a file of its own."""
    b = w.LogBuilder()
    recs = [b.add(w.Ins("a", [1.0], None, 1)), b.add(w.Ins("b", [2.0], None, 2)),
            b.add(w.Del("a", 3))]
    b.reopen()  # same second: a header, then seq 0 again in the same file
    recs += [b.add(w.Ins("c", [3.0], None, 4)), b.add(w.Ins("d", [4.0], None, 5))]
    b.reopen(0x5F5E200)  # a file of its own
    recs += [b.add(w.Ins("e", [5.0], None, 6)), b.add(w.Del("b", 7))]
    return b.write(tmp_path / "wal"), recs


def _ids(wal, **kw) -> list[str]:
    return gpu_pitr.restore(wal, backend="cpu", allow_incomplete_history=True, **kw).id_list()


def test_a_position_names_the_second_record_of_a_seq(tmp_path):
    """After a writer restart --to-seq 1 can only name the first record of seq 1 (SPEC
    section 3); each later one is a position."""
    wal, recs = _restarted(tmp_path)
    assert [r.seq for r in recs] == [0, 1, 2, 0, 1, 0, 1]
    assert _ids(wal, to_seq=1) == ["a", "b"]
    want = [["a"], ["a", "b"], ["b"], ["b", "c"], ["b", "c", "d"], ["b", "c", "d", "e"],
            ["c", "d", "e"]]
    for k, r in enumerate(recs):
        got = gpu_pitr.restore(wal, backend="cpu", to_position=f"{r.file}:{r.offset}")
        assert got.id_list() == want[k], r
        assert (os.path.basename(got.report.stop["file"]), got.report.stop["offset"],
                got.report.stop["seq"]) == (r.file, r.offset, r.seq)
        assert _ids(wal, to_position=(r.file, r.offset), exclusive=True) == (
            want[k - 1] if k else [])
    # No seq warning either: the position is one record.
    got = gpu_pitr.restore(wal, backend="cpu", to_position=(recs[4].file, recs[4].offset))
    assert not [m for m in got.report.warnings if "occurs" in m]


def test_a_record_inside_an_open_transaction(tmp_path):
    """Inside X (not yet committed there): X is in flight at the stop, not applied."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    begin = b.add(w.Begin(5, 2))
    inside = b.add(w.Ins("x", [2.0], None, 3))
    commit = b.add(w.Commit(5, 4))
    b.add(w.Ins("b", [3.0], None, 5))
    wal = b.write(tmp_path)
    for r, exclusive, ids, open_ in ((inside, False, ["a"], 1), (inside, True, ["a"], 1),
                                     (begin, False, ["a"], 1), (begin, True, ["a"], 0),
                                     (commit, False, ["a", "x"], 0),
                                     (commit, True, ["a"], 1)):
        got = gpu_pitr.restore(wal, backend="cpu", to_position=(r.file, r.offset),
                               exclusive=exclusive)
        assert got.id_list() == ids, (r, exclusive)
        assert got.report.transactions["in_flight_discarded"] == open_, (r, exclusive)
    got = gpu_pitr.restore(wal, backend="cpu", to_position=(inside.file, inside.offset))
    assert got.report.stop["record"] == "Insert"


def test_a_batch_record_is_one_step(tmp_path):
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    batch = b.add(w.Batch([w.Ins("b", [2.0], None, 2), w.Del("a", 2),
                           w.Batch([w.Ins("c", [3.0], None, 2)], 2)], 2))
    b.add(w.Ins("d", [4.0], None, 3))
    wal = b.write(tmp_path)
    at = (batch.file, batch.offset)
    assert _ids(wal, to_position=at) == ["b", "c"]
    assert _ids(wal, to_position=at, exclusive=True) == ["a"]
    got = gpu_pitr.restore(wal, backend="cpu", to_position=at)
    assert got.report.stop["record"] == "Batch" and got.report.stop["seq"] == batch.seq


# ---------------------------------------------------------------- errors
def _small(tmp_path):
    b = w.LogBuilder()
    recs = [b.add(w.Ins("a", [1.0], None, 1)), b.add(w.Ins("b", [2.0], None, 2)),
            b.add(w.Ins("c", [3.0], None, 3))]
    return b.write(tmp_path / "wal"), recs


def _error(wal, **kw) -> errors.WalError:
    with pytest.raises(errors.TargetNotFoundError) as err:
        gpu_pitr.restore(wal, backend="cpu", **kw)
    assert "\n" not in str(err.value)
    return err.value


def test_no_record_starts_there_names_the_nearest(tmp_path):
    wal, (r0, r1, r2) = _small(tmp_path)
    err = _error(wal, to_position=(r1.file, r1.offset + 3))
    assert (err.file, err.offset) == (os.path.join(wal, r1.file), r1.offset + 3)
    assert str(err) == (
        f"{wal}/{r1.file}: offset {r1.offset + 3}: position target: no record starts "
        f"there; the nearest record starts before it at offset {r1.offset} (seq 1), after "
        f"it at offset {r2.offset} (seq 2)")
    # In the file's header: the first record is the nearest.
    err = _error(wal, to_position=f"{r0.file}:4")
    assert str(err).endswith(f"no record starts there; the nearest record starts after it "
                             f"at offset {r0.offset} (seq 0)")


def test_past_the_end_and_no_such_file(tmp_path):
    wal, (_, _, r2) = _small(tmp_path)
    err = _error(wal, to_position=(r2.file, r2.end), exclusive=True)
    assert str(err).endswith(f"position target: past the end of the file ({r2.end} bytes); "
                             f"the nearest record starts before it at offset {r2.offset} "
                             "(seq 2)")
    err = _error(wal, to_position="wal-ffffffffffffffff.log:16")
    assert err.file == os.path.join(wal, "wal-ffffffffffffffff.log") and err.offset == 16
    assert "no segment wal-ffffffffffffffff.log in the WAL directory (it would come after " \
        f"the log's last segment, {r2.file}: an archive not brought up to date?)" in str(err)
    err = _error(wal, to_position="wal-0000000000000001.log:16")
    assert "it would come before the log's first segment" in str(err)


def test_a_torn_tail_is_never_reached(tmp_path):
    """PostgreSQL never recovers to a position past the end of the valid log: a torn
    record (a crash mid-write) is no record, inclusive or exclusive, skip_corrupt or
    not, and inside its bytes neither."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    last = b.add(w.Ins("b", [2.0], None, 2))
    torn = b.add(w.Ins("c", [3.0], None, 3))
    b.truncate(torn.file, torn.end - 2)
    wal = b.write(tmp_path)
    for offset in (torn.offset, torn.offset + 5):
        for kw in ({}, {"exclusive": True}, {"skip_corrupt": True}):
            err = _error(wal, to_position=(torn.file, offset), **kw)
            assert str(err) == (
                f"{wal}/{torn.file}: offset {offset}: position target: in the file's torn "
                f"tail: the file ends {torn.end - 2 - torn.offset} bytes into the record "
                f"that starts at offset {torn.offset}, which is not whole (a crash "
                "mid-write): no record there is ever reached; the nearest record starts "
                f"before it at offset {last.offset} (seq 1)")
    # The record before it is reached, and the tail after the stop is said to be.
    got = gpu_pitr.restore(wal, backend="cpu", to_position=(last.file, last.offset))
    assert got.id_list() == ["a", "b"]


def test_a_write_in_progress_is_not_called_a_crash(tmp_path, monkeypatch):
    """A live log listed while the writer was mid-record: the record at the position
    was cut by the listing, not by a crash, and is whole now. The error says so (run
    again), not that it is never reached."""
    from gpu_pitr import pipeline

    b = w.LogBuilder()
    first = b.add(w.Ins("a", [1.0], None, 1))
    last = b.add(w.Ins("b", [2.0], None, 2))
    wal = b.write(tmp_path)
    w.listed_at(monkeypatch, pipeline, last.file, last.offset + 5)
    err = _error(wal, to_position=(last.file, last.offset))
    assert str(err) == (
        f"{wal}/{last.file}: offset {last.offset}: position target: in the file's torn "
        f"tail as it was listed: the file ended 5 bytes into the record that starts at "
        f"offset {last.offset} (a write in progress: the file has grown to {last.end} "
        "bytes since it was read, where the record is whole): run the restore again to "
        f"read it; the nearest record starts before it at offset {first.offset} (seq 0)")
    assert "crash" not in str(err) and "never reached" not in str(err)


def test_a_record_appended_since_the_listing_is_not_past_the_end(tmp_path, monkeypatch):
    """A live log listed before the writer appended the record at the position: the
    offset is past the end of the file as it was listed, not of the file; run again."""
    from gpu_pitr import pipeline

    b = w.LogBuilder()
    first = b.add(w.Ins("a", [1.0], None, 1))
    last = b.add(w.Ins("b", [2.0], None, 2))
    wal = b.write(tmp_path)
    w.listed_at(monkeypatch, pipeline, last.file, last.offset)
    err = _error(wal, to_position=(last.file, last.offset))
    assert str(err) == (
        f"{wal}/{last.file}: offset {last.offset}: position target: past the end of the "
        f"file as it was listed ({last.offset} bytes; it has grown to {last.end} since: a "
        "writer appending to it): run the restore again to read it; the nearest record "
        f"starts before it at offset {first.offset} (seq 0)")
    # Past the end of the file as it is now too: both sizes, not the listing's alone as
    # the file's (it is larger now).
    err = _error(wal, to_position=(last.file, last.end))
    assert str(err).endswith(
        f"position target: past the end of the file as it was listed ({last.offset} bytes) "
        f"and as it is now ({last.end}: a writer appending to it); the nearest record "
        f"starts before it at offset {first.offset} (seq 0)")


def test_a_segment_deleted_since_the_listing_is_not_a_damaged_header(tmp_path, monkeypatch):
    """The writer's retention deleted the position's segment between the listing and
    the check: the file cannot be read, its header is not damaged."""
    from gpu_pitr import pipeline

    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    wal = b.write(tmp_path)
    w.listed_gone(monkeypatch, pipeline, "wal-0000000005f5e000.log")
    err = _error(wal, to_position="wal-0000000005f5e000.log:16")
    assert str(err) == (
        f"{wal}/wal-0000000005f5e000.log: offset 16: position target: cannot read the "
        "file: deleted after the directory was listed (the writer's retention deletes its "
        "oldest segments at a checkpoint): no record in it can be read")


def test_an_entry_that_is_not_a_segment_file_says_what_it_is(tmp_path):
    """A directory named like a segment is not read (SPEC section 1): the position's
    error says what is there, not that the segment was deleted or mistyped."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.new_segment(0x5F5E300)
    b.add(w.Ins("b", [2.0], None, 2))
    wal = b.write(tmp_path)
    os.mkdir(os.path.join(wal, "wal-0000000005f5e200.log"))
    err = _error(wal, to_position="wal-0000000005f5e200.log:16")
    assert str(err) == (
        f"{wal}/wal-0000000005f5e200.log: offset 16: no segment wal-0000000005f5e200.log "
        "in the WAL directory: an entry named like a segment file, but a directory: not "
        "read")


def test_a_damaged_header_and_a_zero_filled_record(tmp_path):
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.new_segment(0x5F5E200)
    b.add(w.Ins("b", [2.0], None, 2))
    b.files["wal-0000000005f5e200.log"][0:4] = b"XXXX"
    zeros_at = b.raw(bytes(24), "wal-0000000005f5e100.log")  # two zero-filled records
    wal = b.write(tmp_path)
    err = _error(wal, to_position="wal-0000000005f5e200.log:16")
    assert "position target: its header is damaged (wrong magic b'XXXX'): no record in " \
        "it can be read" in str(err)
    # A zero-filled record is a record (undecodable): a seq target's rules.
    first, second = (("wal-0000000005f5e100.log", zeros_at + k) for k in (0, 12))
    assert _ids(wal, to_position=first, exclusive=True) == ["a"]  # need not decode
    for at in (first, second):
        with pytest.raises(errors.CorruptRecordError):  # reached: must decode
            gpu_pitr.restore(wal, backend="cpu", to_position=at)
    got = gpu_pitr.restore(wal, backend="cpu", to_position=second, skip_corrupt=True)
    assert got.id_list() == ["a"] and got.report.stop["offset"] == second[1]


def test_a_path_must_be_in_the_wal_directory(tmp_path):
    wal, (r0, _, _) = _small(tmp_path)
    got = gpu_pitr.restore(wal, backend="cpu", to_position=f"{wal}/{r0.file}:{r0.offset}")
    assert got.id_list() == ["a"] and got.report.target["value"] == f"{r0.file}:{r0.offset}"
    assert _ids(wal, to_position=(os.path.join(wal, ".", r0.file), r0.offset)) == ["a"]
    other = tmp_path / "other"
    other.mkdir()
    err = _error(wal, to_position=(str(other / r0.file), r0.offset))
    assert str(err) == (f"{other / r0.file}: offset {r0.offset}: the position's file is not "
                        f"in the WAL directory {wal}: give the segment's name alone, or its "
                        "path there")


@pytest.mark.parametrize("kw, match", [
    ({"to_position": "wal-0000000005f5e100.log:16", "to_seq": 1}, "at most one of"),
    ({"to_position": "wal-0000000005f5e100.log:16", "to_transaction": 1}, "at most one of"),
    ({"to_position": "wal-0000000005f5e100.log"}, "is FILE:OFFSET"),
    ({"to_position": "wal-0000000005f5e100.log:-1"}, "is FILE:OFFSET"),
    ({"to_position": "wal-0000000005f5e100.log:0x10"}, "is FILE:OFFSET"),
    ({"to_position": "segment.log:16"}, "not a segment file name"),
    ({"to_position": "WAL-0000000005F5E100.log:16"}, "not a segment file name"),
    ({"to_position": ("wal-0000000005f5e100.log", -1)}, "negative"),
    ({"to_position": ("wal-0000000005f5e100.log", True)}, "must be an integer"),
    ({"to_position": ("wal-0000000005f5e100.log", "16")}, "must be an integer"),
    ({"to_position": 16}, "is FILE:OFFSET"),
])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        gpu_pitr.restore(tmp_path, **kw)


# ---------------------------------------------------------------- base snapshots
@SETTINGS
@given(data=st.data())
def test_random_snapshots_give_the_whole_logs_answer(data):
    """``snapshots=`` with a position target gives what the whole log gives, for
    snapshots at random targets (positions among them) of random damaged logs, any
    chunk size, reading on past the stop or not; and ``base=`` each of them gives it or
    is refused as later than the target."""
    wl = data.draw(w.workloads(), label="log")
    with tempfile.TemporaryDirectory() as d:
        wal = wl.write(os.path.join(d, "wal"))
        records = [(f, o) for f, o, _ in _records(wal)]
        assume(records)
        flags = dict(skip_corrupt=data.draw(st.booleans()),
                     allow_incomplete_history=data.draw(st.booleans()))
        snaps = os.path.join(d, "snaps")
        os.mkdir(snaps)
        for k in range(data.draw(st.integers(1, 4), label="snapshots")):
            at = data.draw(st.one_of(w.targets(wl), st.builds(
                dict, to_position=st.sampled_from(records), exclusive=st.booleans())),
                label="snapshot target")
            at.update(flags)
            made, err = w.outcome(lambda at=at: gpu_pitr.restore(wal, backend="cpu", **at))
            if err is None:
                snapshot.save(made, os.path.join(snaps, f"s{k}"))
        kw = dict(to_position=data.draw(st.sampled_from(records), label="position"),
                  exclusive=data.draw(st.booleans()), backend="cpu", **flags)
        whole = w.outcome(lambda: gpu_pitr.restore(wal, **kw))
        more = dict(chunk_bytes=data.draw(st.sampled_from([64, 200, None])),
                    read_after_stop=data.draw(st.booleans()))
        got = w.outcome(lambda: gpu_pitr.restore(wal, snapshots=snaps, **more, **kw))
        assert w.restore_answer(got) == w.restore_answer(whole), (
            str(got[1]), str(whole[1]), got[0] and got[0].report.message)
        for name in sorted(os.listdir(snaps)):
            got = w.outcome(lambda name=name: gpu_pitr.restore(
                wal, base=os.path.join(snaps, name), **more, **kw))
            if isinstance(got[1], errors.TargetBeforeBaseError):
                continue
            if isinstance(got[1], errors.IncompleteHistoryError) or (
                    whole[1] is not None and got[1] is None):
                continue  # (a base may start past damage or a gap the whole log fails at)
            assert w.restore_answer(got) == w.restore_answer(whole), (
                name, str(got[1]), str(whole[1]))
        if data.draw(st.integers(0, 4), label="shards") == 0:
            w.check_shards_equal_whole(wal, 2, snapshots=snaps, **kw)


def test_a_stop_at_a_base_whose_segment_is_gone_keeps_its_kind_and_stamp(tmp_path):
    """(review smallscope) A snapshot whose own restore stopped past its last record (an
    exclusive target at the next one): a restore whose target is that last record stops
    at the base, and its stop's kind and stamp were read again from the log. With the
    segment since expired they were null; the snapshot stores them now, and the stop is
    the whole log's."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    begin = b.add(w.Begin(1, 2))
    b.new_segment(0x5F5E200)
    nxt = b.add(w.Ins("b", [2.0], None, 3))
    b.add(w.Abort(1, 4))
    wal = b.write(tmp_path / "wal")
    whole = gpu_pitr.restore(wal, backend="cpu", to_position=(begin.file, begin.offset))
    assert (whole.report.stop["timestamp"], whole.report.stop["record"]) == (
        2, "BeginTransaction")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_position=(nxt.file, nxt.offset),
                                   exclusive=True), snaps / "s")
    last = json.loads((snaps / "s" / "manifest.json").read_text())["position"]["last_record"]
    assert (last["record"], last["timestamp"]) == ("BeginTransaction", 2)
    os.unlink(os.path.join(wal, begin.file))
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps,
                           to_position=(begin.file, begin.offset))
    assert got.report.base["path"] == str(snaps / "s")
    assert got.id_list() == whole.id_list() and got.report.stop == whole.report.stop


def _snapshot_log(tmp_path):
    wal, recs = _restarted(tmp_path)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    return wal, recs, snaps


def test_snapshots_serve_inclusive_and_exclusive_targets_as_the_whole_log(tmp_path):
    """A snapshot taken with the same position target, inclusive or exclusive, at every
    record: ``snapshots=`` picks the newest whose position is at or before the target
    (inclusive: or just after its record, whose state is the answer); the answer, the
    stop included (record kind and stamp), is the whole log's."""
    wal, recs, snaps = _snapshot_log(tmp_path)
    for k, r in enumerate(recs):
        for exclusive in (False, True):
            snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_position=(r.file, r.offset),
                                           exclusive=exclusive), snaps / f"s{k}{exclusive}")
    for k, r in enumerate(recs):
        for exclusive in (False, True):
            kw = dict(backend="cpu", to_position=(r.file, r.offset), exclusive=exclusive)
            whole = gpu_pitr.restore(wal, **kw)
            got = gpu_pitr.restore(wal, snapshots=snaps, **kw)
            # Inclusive: the one taken exclusive of the next record covers this one last
            # (the newest that serves); exclusive: the one taken exclusive of it.
            newest = f"s{k + 1}True" if not exclusive and k + 1 < len(recs) else (
                f"s{k}{exclusive}")
            assert f"started from snapshot {snaps / newest}" in got.report.message
            assert w.index_view(got) == w.index_view(whole), (k, exclusive)
            assert got.report.stop == whole.report.stop, (k, exclusive)


def test_a_base_past_the_target_is_refused(tmp_path):
    wal, recs, snaps = _snapshot_log(tmp_path)
    r = recs[4]
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_position=(r.file, r.offset)),
                  snaps / "at")
    with pytest.raises(errors.TargetBeforeBaseError) as err:
        gpu_pitr.restore(wal, backend="cpu", base=snaps / "at",
                         to_position=(recs[3].file, recs[3].offset))
    assert str(err.value) == (
        f"{snaps / 'at'}: the target is earlier than the base snapshot: the snapshot's "
        f"position, {r.file} offset {r.end}, is past the record at {r.file} offset "
        f"{recs[3].offset}: it covers records after the target")
    with pytest.raises(errors.TargetBeforeBaseError, match="which the target .exclusive. "
                       "stops before"):
        gpu_pitr.restore(wal, backend="cpu", base=snaps / "at", exclusive=True,
                         to_position=(r.file, r.offset))
    # The same record inclusive: the base is the answer, the log after it not needed.
    got = gpu_pitr.restore(wal, backend="cpu", base=snaps / "at",
                           to_position=(r.file, r.offset))
    whole = gpu_pitr.restore(wal, backend="cpu", to_position=(r.file, r.offset))
    assert w.index_view(got) == w.index_view(whole) and got.report.stop == whole.report.stop
    # --snapshots with every snapshot past the target: the log alone.
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps,
                           to_position=(recs[0].file, recs[0].offset))
    assert got.report.base is None and got.id_list() == ["a"]


def test_a_base_at_the_target_reports_the_stop_record(tmp_path):
    """A base whose last record is the target but whose own restore stopped elsewhere
    (a time target, just before the next record): the stop's record kind and stamp are
    read from the log, as the whole log's restore reports them (they were None); a seq
    target's too."""
    wal, recs, snaps = _snapshot_log(tmp_path)
    r = recs[3]  # seq 0 again, stamped 4
    for made, kw in (({"to_time": 4}, {"to_position": (r.file, r.offset)}),
                     ({"to_time": 3}, {"to_seq": 2})):
        snapshot.save(gpu_pitr.restore(wal, backend="cpu", **made), snaps / "t")
        whole = gpu_pitr.restore(wal, backend="cpu", **kw)
        got = gpu_pitr.restore(wal, backend="cpu", base=snaps / "t", **kw)
        assert got.report.stop == whole.report.stop
        assert got.report.stop["record"] in ("Insert", "Delete")
        assert got.report.stop["timestamp"] in (3, 4)


def test_strict_refuses_records_missing_before_the_position(tmp_path):
    """As a seq target: a jump in seq up to the stop record (onto it included) is a
    warning, strict an error; records missing after it are not judged."""
    b = w.LogBuilder()
    first = b.add(w.Ins("a", [1.0], None, 1))
    b.seq += 3  # three records lost
    at = b.add(w.Ins("b", [2.0], None, 2))
    b.add(w.Ins("c", [3.0], None, 3))
    wal = b.write(tmp_path)
    got = gpu_pitr.restore(wal, backend="cpu", to_position=(at.file, at.offset))
    assert [m for m in got.report.warnings if "records are missing" in m]
    for exclusive in (False, True):
        for kw in ({"to_position": (at.file, at.offset)}, {"to_seq": at.seq}):
            with pytest.raises(errors.TargetNotReachedError):
                gpu_pitr.restore(wal, backend="cpu", strict=True, exclusive=exclusive, **kw)
    got = gpu_pitr.restore(wal, backend="cpu", to_position=(first.file, first.offset),
                           strict=True)
    assert got.id_list() == ["a"]


def test_stop_reading_at_the_target(tmp_path):
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    at = b.add(w.Ins("b", [2.0], None, 2))
    for k in range(50):
        b.add(w.Ins(f"later{k}", [3.0], None, 5))
    wal = b.write(tmp_path)
    for exclusive in (False, True):
        kw = dict(backend="cpu", to_position=(at.file, at.offset), exclusive=exclusive)
        whole = gpu_pitr.restore(wal, **kw)
        early = gpu_pitr.restore(wal, read_after_stop=False, **kw)
        assert w.index_view(early) == w.index_view(whole)
        assert early.report.records_read == 2 and early.report.bytes_read == at.end
        assert whole.report.records_read == 52


def test_a_base_ending_at_the_target_serves_after_its_segment_is_gone(tmp_path):
    """The writer's retention deleted the segment a snapshot's last record is in (what a
    snapshot is for): an inclusive position target at that record is the snapshot's
    state, as ``--to-seq`` of its seq is, not an error that the segment is gone. Any
    other position in it is still one (nothing there is read)."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    last = b.add(w.Ins("b", [2.0], None, 2))
    wal = b.write(tmp_path / "wal")
    snap = tmp_path / "snaps" / "s"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snap)
    b.new_segment(0x5F5E200)
    b.add(w.Ckpt(2, 3))
    b.add(w.Ins("c", [3.0], None, 4))
    b.write(wal)
    os.remove(os.path.join(wal, last.file))
    want = gpu_pitr.restore(wal, backend="cpu", base=snap, to_seq=last.seq)
    for kw in ({"base": snap}, {"snapshots": snap.parent}):
        got = gpu_pitr.restore(wal, backend="cpu", to_position=(last.file, last.offset), **kw)
        assert w.index_view(got) == w.index_view(want) and got.id_list() == ["a", "b"]
        assert got.report.stop == want.report.stop
        assert (got.report.stop["file"], got.report.stop["offset"]) == (
            os.path.join(wal, last.file), last.offset)
        for other in ({"exclusive": True}, {"to_position": (last.file, 16)}):
            err = _error(wal, **{"to_position": (last.file, last.offset), **kw, **other})
            assert f"no segment {last.file} in the WAL directory" in str(err)
    # That snapshot damaged, none serves: the log alone (allowed: it starts at seq 2)
    # has no such segment, and the error says so, not that the log changed.
    (snap / "vectors.f32").write_bytes(b"")
    err = _error(wal, to_position=(last.file, last.offset), snapshots=snap.parent,
                 allow_incomplete_history=True)
    assert str(err).startswith(
        f"{wal}/{last.file}: offset {last.offset}: no segment {last.file} in the WAL "
        "directory, and no base snapshot whose last record is the target was used; "
        f"--snapshots: snapshot {snap} is damaged")


def test_inspect_names_a_command_that_gives_back_a_snapshot_past_a_restart(tmp_path,
                                                                             capsys):
    """``inspect SNAP`` names the restore of exactly its state. Where the seq of its last
    record occurs earlier in the log it covers (a writer restart), ``--to-seq`` names
    that first record, before the base, and fails (the target is earlier than the
    base): the command names the record by its position instead."""
    import shlex

    wal, recs = _restarted(tmp_path)
    snap = tmp_path / "snaps" / "p"
    snap.parent.mkdir()
    at = recs[4]  # the second record of seq 1
    assert main(["snapshot", wal, "--to-position", f"{at.file}:{at.offset}", "--out",
                 str(snap), "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(snap)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines()
                if x.startswith("last record covered"))
    assert line == (f"last record covered: seq 1 (this state exactly: gpu-pitr restore "
                    f"WAL_DIR --base {snap} --to-position {at.file}:{at.offset} "
                    "--stop-reading-at-target --out OUT)")
    command = shlex.split(line.split("exactly: gpu-pitr ", 1)[1].rstrip(")"))
    command = [wal if a == "WAL_DIR" else str(tmp_path / "o.npz") if a == "OUT" else a
               for a in command]
    assert main([*command, "-q"]) == 0
    got = np.load(tmp_path / "o.npz", allow_pickle=False)
    assert list(got["ids"]) == snapshot.load(snap).to_index().id_list() == ["b", "c", "d"]


def test_the_shards_together_equal_the_whole(tmp_path):
    wal, recs = _restarted(tmp_path)
    for r in (recs[1], recs[4]):
        for exclusive in (False, True):
            assert w.check_shards_equal_whole(wal, 3, to_position=(r.file, r.offset),
                                              exclusive=exclusive) == "equal"


def test_on_a_dask_cluster(tmp_path, monkeypatch):
    """``restore_on_dask``: the position's FILE given as a path is judged where it was
    given (relative to the caller's directory), the workers get the segment's name."""
    distributed = pytest.importorskip("distributed")
    from gpu_pitr.scaleout import restore_on_dask

    wal, recs = _restarted(tmp_path)
    r = recs[4]
    monkeypatch.chdir(tmp_path)
    want = gpu_pitr.restore(wal, backend="cpu", to_position=(r.file, r.offset))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        got = restore_on_dask(client, wal, shards=2, backend="cpu",
                              to_position=f"wal/{r.file}:{r.offset}")
        assert w.index_view(got) == w.index_view(want)
        assert got.report.stop == want.report.stop
        assert got.report.target == {"kind": "position", "value": f"{r.file}:{r.offset}",
                                     "exclusive": False}
        with pytest.raises(errors.TargetNotFoundError, match="not in the WAL directory"):
            restore_on_dask(client, wal, shards=2, backend="cpu",
                            to_position=f"elsewhere/{r.file}:{r.offset}")
        with pytest.raises(errors.TargetNotFoundError, match="no record starts there"):
            restore_on_dask(client, wal, shards=2, backend="cpu",
                            to_position=f"{r.file}:{r.offset + 1}")


# ---------------------------------------------------------------- command line
def test_cli_restores_to_a_position_and_reports_it(tmp_path, capsys):
    wal, recs = _restarted(tmp_path)
    r = recs[4]  # the second record of seq 1
    out, report = tmp_path / "o.npz", tmp_path / "r.json"
    assert main(["restore", wal, "--to-position", f"{r.file}:{r.offset}", "--backend", "cpu",
                 "--allow-incomplete-history", "--out", str(out),
                 "--report-json", str(report)]) == 0
    said = capsys.readouterr().out
    assert f"target: position {r.file}:{r.offset}\n" in said
    assert f"stopped: after Insert {r.file}: offset {r.offset}: seq 1 at " in said
    doc = json.loads(report.read_text())
    assert doc["target"] == {"kind": "position", "value": f"{r.file}:{r.offset}",
                             "exclusive": False}
    assert doc["stop"]["offset"] == r.offset and doc["ids"] == 3
    assert main(["restore", wal, "--to-position", f"{wal}/{r.file}:{r.offset}", "--exclusive",
                 "--backend", "cpu", "--out", str(out), "--report-json", str(report)]) == 0
    said = capsys.readouterr().out
    assert f"target: position {r.file}:{r.offset}, exclusive\n" in said
    assert "stopped: before Insert" in said
    assert json.loads(report.read_text())["ids"] == 2
    snap = tmp_path / "snap"
    assert main(["snapshot", wal, "--to-position", f"{r.file}:{r.offset}", "--backend", "cpu",
                 "--quiet", "--out", str(snap)]) == 0
    assert snapshot.load(snap).manifest["report"]["target"]["kind"] == "position"
    # inspect --records prints the position: the same FILE and OFFSET.
    assert main(["inspect", wal, "--records", "--first-seq", "1", "--last-seq", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": seq")[0] for line in lines] == [
        f"{r.file}: offset {recs[1].offset}", f"{r.file}: offset {r.offset}",
        f"{recs[6].file}: offset {recs[6].offset}"]


@pytest.mark.parametrize("args", [
    ["--to-position", "wal-0000000005f5e100.log:16", "--to-seq", "1"],
    ["--to-position", "wal-0000000005f5e100.log:16", "--latest"],
    ["--to-position", "wal-0000000005f5e100.log"],
    ["--to-position", "16"],
    ["--to-position", "wal-0000000005f5e100.log:x"],
    ["--to-position", "notes.txt:16"],
])
def test_cli_usage_errors(tmp_path, capsys, args):
    wal, _ = _small(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["restore", wal, "--out", str(tmp_path / "o.npz"), *args])
    assert exit_.value.code == 2
    assert not (tmp_path / "o.npz").exists()


def test_cli_error_when_no_record_starts_there(tmp_path, capsys):
    wal, (r0, r1, r2) = _small(tmp_path)
    before = w.dir_state(wal)
    assert main(["restore", wal, "--to-position", f"{r1.file}:{r1.offset + 1}", "--backend",
                 "cpu", "--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"gpu-pitr: error: {wal}/{r1.file}: offset {r1.offset + 1}: position "
                   f"target: no record starts there; the nearest record starts before it at "
                   f"offset {r1.offset} (seq 1), after it at offset {r2.offset} (seq 2)"]
    assert not (tmp_path / "o.npz").exists() and w.dir_state(wal) == before


def test_cli_takes_the_place_as_inspect_prints_it(tmp_path, capsys):
    """``wal-...log: offset N`` as `inspect --records` and the `begin:`/`end:` lines of
    `inspect --transactions` print it (the runbook has the operator paste it) is the
    position FILE:N; a whole line pasted is refused with the form to give instead."""
    wal, (r0, r1, r2) = _small(tmp_path)
    assert main(["inspect", wal, "--records", "--first-seq", "1", "--last-seq", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    place = line.split(": seq")[0]
    assert place == f"{r1.file}: offset {r1.offset}"
    out = tmp_path / "o.npz"
    for pasted in (place, f"{wal}/{place}"):
        assert main(["restore", wal, "--to-position", pasted, "--exclusive", "--backend",
                     "cpu", "--out", str(out)]) == 0
        said = capsys.readouterr().out
        assert f"target: position {r1.file}:{r1.offset}, exclusive\n" in said
        assert f"stopped: before Insert {r1.file}: offset {r1.offset}: seq 1 at " in said
    assert gpu_pitr.restore(wal, backend="cpu", to_position=place).report.stop["offset"] \
        == r1.offset
    out.unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["restore", wal, "--to-position", line, "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"not {line!r} (give it as {r1.file}:{r1.offset})")
