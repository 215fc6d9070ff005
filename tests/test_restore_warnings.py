"""What a restore that succeeds must still say (``report.warnings``, stderr even with
``--quiet``), and what the report says the index is as of.

- a time target the log ends before: an archive not brought up to date gives an older
  state (PostgreSQL fails such a recovery; SPEC section 3 restores to the end, so this
  warns);
- a sequence target met more than once (a writer reopened without recovery numbers
  from 0 again): the restore stops at the first (SPEC section 3), and says so;
- a gap in the history that ``allow_incomplete_history`` let the restore cross;
- a transaction open at the end of the log that records after a writer restart joined;
- ``last_commit_timestamp``: the timestamp of the last commit point applied (not the
  latest timestamp: the log's timestamps need not rise).
"""

from __future__ import annotations

import shutil

import pytest
from workloads import Begin, Ckpt, Commit, Del, Ins, LogBuilder, Upd

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.cli import main
from gpu_pitr.errors import IncompleteHistoryError

T = 1_800_000_000
V = [1.0, 2.0]


def _log(tmp_path, name="wal"):
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))          # seq 0
    b.add(Ins("b", V, ts=T + 10))     # seq 1
    b.add(Ins("c", V, ts=T + 5))      # seq 2: its stamp earlier than the one before
    return b, tmp_path / name


def _warned(index, text):
    return [w for w in index.report.warnings if text in w]


def _assert_joined_warning(d, backend, total: int, after: int, first) -> None:
    """A restore at two chunk sizes: transaction 7 discarded, and warned of as joined by
    ``after`` of its ``total`` records from ``first`` on (the restart)."""
    for chunk in (None, 64):
        got = gpu_pitr.restore(d, backend=backend, chunk_bytes=chunk)
        assert list(got.ids) == ["a", "b", "c"]
        assert got.report.transactions["in_flight_discarded"] == 1
        (w,) = _warned(got, "still open at the end of the log")
        assert w.startswith(
            f"transaction 7 is still open at the end of the log, and {after} of its "
            f"{total} records come after a writer restart (the first of them: seq 0 at "
            f"wal-0000000005f5e200.log offset {first.offset}): they are discarded with it")


def test_a_time_target_the_log_ends_before_is_warned_of(tmp_path):
    b, d = _log(tmp_path)
    b.write(d)
    got = gpu_pitr.restore(d, backend="cpu", to_time=T + 60)
    assert got.report.stop["reason"] == "end_of_log" and len(got) == 3
    (w,) = got.report.warnings
    assert w.startswith("the log ends before the target 2027-01-15T08:01:00Z: its latest "
                        "commit point is at 2027-01-15T08:00:10Z; ")
    # Inside the log (a later commit point stops it), at latest, exclusive of a later
    # one: no warning.
    assert gpu_pitr.restore(d, backend="cpu", to_time=T + 9).report.warnings == []
    assert gpu_pitr.restore(d, backend="cpu").report.warnings == []
    assert gpu_pitr.restore(d, backend="cpu", to_time=T + 10,
                            exclusive=True).report.warnings == []
    # Inclusive of the latest stamp: every commit point is at or before it; the warning
    # does not say the log ends before T and then that it reaches T.
    (w,) = _warned(gpu_pitr.restore(d, backend="cpu", to_time=T + 10), "ends before")
    assert w.startswith("the log ends before the target 2027-01-15T08:00:10Z is passed: its "
                        "latest commit point is stamped that second itself; ")


def test_a_time_target_past_every_u64_stays_a_time_target_and_is_warned_of(tmp_path):
    """docs/semantics.md: in the API a T >= 2^64 restores to the end of the log as
    "latest" does, but stays a time target (``target.kind`` is ``time``) and warns that
    the log ends before it; a negative T stops before the first commit point."""
    b, d = _log(tmp_path)
    b.write(d)
    for t in (2**64, 10**30):
        for exclusive in (False, True):
            got = gpu_pitr.restore(d, backend="cpu", to_time=t, exclusive=exclusive)
            assert len(got) == 3 and got.report.stop["reason"] == "end_of_log"
            assert got.report.target == {"kind": "time", "value": t, "exclusive": exclusive}
            (w,) = got.report.warnings
            assert w.startswith(f"the log ends before the target {t}: its latest commit "
                                "point is at 2027-01-15T08:00:10Z; "), w
    got = gpu_pitr.restore(d, backend="cpu", to_time=-1)
    assert len(got) == 0 and got.report.stop["reason"] == "target"
    assert got.report.target == {"kind": "time", "value": -1, "exclusive": False}
    assert got.report.warnings == []


def test_a_time_target_past_a_log_without_commit_points(tmp_path):
    b = LogBuilder()
    b.add(Begin(7, ts=T))
    b.add(Ins("x", V, ts=T))
    d = tmp_path / "wal"
    b.write(d)
    got = gpu_pitr.restore(d, backend="cpu", to_time=T + 60)
    assert len(got) == 0 and got.report.last_commit_timestamp is None
    assert _warned(got, "the log ends before the target")[0].split(": ")[1] == \
        "it has no commit point; if the log goes on elsewhere (an archive not brought up " \
        "to date), this index lacks it"


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_seq_target_met_twice_stops_at_the_first_and_says_so(tmp_path, backend):
    b, d = _log(tmp_path)
    b.reopen(created=0x5F5E200)       # a new file, seq from 0 again
    b.add(Upd("a", [3.0, 4.0], ts=T + 20))  # seq 0
    again = b.add(Del("b", ts=T + 21))      # seq 1 again
    b.write(d)
    # (chunk_bytes=64: a piece a record, the two seq 1 records counted in different ones)
    for exclusive, chunk in ((False, None), (True, None), (False, 64)):
        got = gpu_pitr.restore(d, backend=backend, to_seq=1, exclusive=exclusive,
                               allow_incomplete_history=False, chunk_bytes=chunk)
        assert got.report.stop["file"].endswith("wal-0000000005f5e100.log")
        assert list(got.ids) == (["a", "b"] if not exclusive else ["a"])
        (w,) = got.report.warnings
        assert w == (
            "seq 1 occurs 2 times in the log (the writer numbered from 0 again): the "
            "restore stopped at the first, wal-0000000005f5e100.log offset "
            f"{got.report.stop['offset']}; `gpu-pitr inspect {d} --first-seq 1 "
            "--last-seq 1` lists them")
    assert again.seq == 1
    # Met once: nothing to say.
    assert gpu_pitr.restore(d, backend="cpu", to_seq=2).report.warnings == []


def test_an_allowed_gap_in_the_history_is_warned_of_every_time(tmp_path):
    b = LogBuilder(first_seq=5)
    b.add(Ins("a", V, ts=T))
    d = tmp_path / "wal"
    b.write(d)
    with pytest.raises(IncompleteHistoryError):
        gpu_pitr.restore(d, backend="cpu")
    got = gpu_pitr.restore(d, backend="cpu", allow_incomplete_history=True)
    assert got.report.warnings == [
        "incomplete history, restored as allowed: the log starts at seq 5 "
        "(wal-0000000005f5e100.log offset 16), not 0; the state restored lacks what came "
        "before and may never have existed"]
    # A complete history allowed to be incomplete: nothing to say.
    b2, d2 = _log(tmp_path, "whole")
    b2.write(d2)
    assert gpu_pitr.restore(d2, backend="cpu", allow_incomplete_history=True
                            ).report.warnings == []


def test_a_base_restored_from_an_incomplete_history_is_warned_of(tmp_path):
    b = LogBuilder(first_seq=5)
    b.add(Ins("a", V, ts=T))
    d = tmp_path / "wal"
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", allow_incomplete_history=True),
                         tmp_path / "snap")
    got = gpu_pitr.restore(d, backend="cpu", base=snap, allow_incomplete_history=True)
    assert list(got.ids) == ["a"]
    assert got.report.warnings == [
        f"incomplete history, restored as allowed: the base snapshot {snap} was itself "
        "restored from an incomplete history; the state restored lacks what came before "
        "and may never have existed"]


def test_the_base_segment_gone_is_a_gap_warned_of(tmp_path):
    b, d = _log(tmp_path)
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=1), tmp_path / "snap")
    first = sorted(d.iterdir())[0]
    b.new_segment(0x5F5E200)
    b.add(Ins("z", V, ts=T + 30))
    b.write(d)
    first.unlink()  # the snapshot's segment, with records after its position, is gone
    with pytest.raises(IncompleteHistoryError, match="history after the snapshot"):
        gpu_pitr.restore(d, backend="cpu", base=snap)
    got = gpu_pitr.restore(d, backend="cpu", base=snap, allow_incomplete_history=True)
    assert list(got.ids) == ["a", "b", "z"]
    (w,) = got.report.warnings
    assert w.startswith("incomplete history, restored as allowed: the base snapshot's "
                        "segment wal-0000000005f5e100.log is gone, with records after its "
                        "position (offset ")


def test_last_commit_timestamp_is_of_the_last_commit_point_applied(tmp_path):
    b, d = _log(tmp_path)
    b.add(Begin(9, ts=T + 40))
    b.add(Ins("d", V, ts=T + 41))
    b.add(Commit(9, ts=T + 3))         # a commit stamped earlier than those before it
    b.write(d)

    def last(**kw):
        return gpu_pitr.restore(d, backend="cpu", **kw).report.last_commit_timestamp

    assert last() == T + 3
    assert last(to_seq=2) == T + 5      # seq 2 is a commit point of its own
    assert last(to_seq=2, exclusive=True) == T + 10
    assert last(to_seq=4) == T + 5      # inside transaction 9: not applied
    assert last(to_seq=0) == T
    assert last(to_seq=0, exclusive=True) is None
    assert last(to_time=T + 7) == T    # stops before the stamp T + 10
    # From a base: the base's last commit point, then the log's.
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=3), tmp_path / "snap")
    assert gpu_pitr.restore(d, backend="cpu", base=snap).report.last_commit_timestamp == T + 3
    assert gpu_pitr.restore(d, backend="cpu", base=snap, to_seq=4
                            ).report.last_commit_timestamp == T + 5


def test_the_summary_says_what_the_index_is_as_of(tmp_path, capsys):
    b, d = _log(tmp_path)
    b.add(Begin(9, ts=T + 40))
    d_rec = b.add(Ins("d", V, ts=T + 41))  # seq 4
    b.write(d)
    rc = main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "--to-seq", "4"])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"restored 3 ids, dim 2 -> {tmp_path / 'o.npz'} (backend cpu")
    assert lines[2] == ("stopped: after Insert wal-0000000005f5e100.log: offset "
                        f"{d_rec.offset}: seq 4 at "
                        "2027-01-15T08:00:41Z (1 transaction open there, not applied: 9)")
    assert lines[3] == "as of 2027-01-15T08:00:05Z: the last commit point applied"
    assert lines[4].startswith("read 5 records, ") and "1 segment; applied 3 commit " \
        "points: 3 inserts, 0 updates, 0 deletes" in lines[4]
    assert lines[5].endswith("; 0 anomalies") and lines[6].startswith("damage: 0 torn tails")
    # Warnings go to stderr, with --quiet too; one id is "1 id".
    shutil.rmtree(d)
    b1 = LogBuilder()
    b1.add(Ins("a", V, ts=T))
    b1.write(d)
    rc = main(["restore", str(d), "--out", str(tmp_path / "p.npz"), "--to-time", str(T + 1),
               "-q"])
    out, err = capsys.readouterr()
    assert (rc, out) == (0, "")
    assert err.startswith("gpu-pitr: warning: the log ends before the target "
                          "2027-01-15T08:00:01Z: its latest commit point is at "
                          "2027-01-15T08:00:00Z; ")
    rc = main(["restore", str(d), "--out", str(tmp_path / "p.npz")])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "") and out.startswith("restored 1 id, dim 2 -> ")
    assert "read 1 record, " in out and "applied 1 commit point: 1 insert, 0 updates" in out


def test_the_snapshot_summary_names_its_position_and_open_transactions(tmp_path, capsys):
    b, d = _log(tmp_path)
    b.add(Begin(9, ts=T + 40))
    b.add(Ins("d", V, ts=T + 41))
    b.write(d)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    rc = main(["snapshot", str(d), "--out", str(snaps / "s1")])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    size = (d / "wal-0000000005f5e100.log").stat().st_size
    assert out.splitlines()[-1] == (
        f"snapshot: {snaps / 's1'} covers the log up to wal-0000000005f5e100.log offset "
        f"{size} (1 open transaction kept, to apply at its commit)")
    assert main(["verify", str(snaps)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{snaps}: clean: 1 snapshot, 0 damaged"


def test_replacing_a_snapshot_of_another_point_is_warned_of(tmp_path, capsys):
    """A restore point lost to a reused name: said on stderr (the same point again, or
    a damaged snapshot replaced, is no loss: nothing said)."""
    b, d = _log(tmp_path)
    b.write(d)
    out = tmp_path / "snaps" / "s1"
    out.parent.mkdir()
    assert main(["snapshot", str(d), "--out", str(out), "--to-seq", "1", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["snapshot", str(d), "--out", str(out), "--to-seq", "1", "-q"]) == 0
    assert capsys.readouterr() == ("", "")  # the same point
    assert main(["snapshot", str(d), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().err == (
        f"gpu-pitr: warning: {out}: replaced a snapshot of another point (up to "
        "wal-0000000005f5e100.log offset 76, last commit point applied at "
        "2027-01-15T08:00:10Z): give each snapshot a name of its own to keep them all\n")
    assert list(gpu_pitr.restore(d, backend="cpu", base=out).ids) == ["a", "b", "c"]
    (out / "manifest.json.crc").write_text("0\n")  # damaged: nothing lost in replacing it
    assert main(["snapshot", str(d), "--out", str(out), "--to-seq", "1", "-q"]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_records_past_the_target_that_are_no_commit_point_show_the_log_went_on(tmp_path,
                                                                               backend):
    """An Abort or a Checkpoint stamped after T: the log reached past T, so the end-of-log
    state is the state at T (no warning); stamped at T or before, the warning stands."""
    from workloads import Abort, Ckpt

    for k, (tail, warned) in enumerate((
            ([Begin(4, ts=T + 100), Abort(4, ts=T + 102)], False),
            ([Ckpt(3, ts=T + 300)], False),
            ([Ckpt(3, ts=T + 50)], True))):
        b = LogBuilder()
        b.add(Ins("a", V, ts=T))
        for e in tail:
            b.add(e)
        d = tmp_path / f"w{k}"
        b.write(d)
        got = gpu_pitr.restore(d, backend=backend, to_time=T + 50)
        assert got.report.backend == backend
        assert got.report.stop["reason"] == "end_of_log" and list(got.ids) == ["a"]
        assert bool(_warned(got, "the log ends before the target")) is warned, k
        # Exclusive: a record stamped at T itself shows the log reached T.
        got = gpu_pitr.restore(d, backend=backend, to_time=T + 300, exclusive=True)
        assert bool(_warned(got, "ends before")) is (k != 1), k


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_record_stamped_ahead_of_its_neighbours_does_not_silence_the_warning(tmp_path,
                                                                                backend):
    """A Checkpoint stamped a day ahead (a clock stepped back after it), then records
    stamped as before: the log ends at T + 20, before a target of T + 50, and says so.
    It was judged by the greatest stamp read, so every T up to the stray one passed in
    silence (and ``strict`` restored). The last record read is where the log ends: one
    stamped past T there still shows the log went on (the test above)."""
    from gpu_pitr.errors import TargetNotReachedError

    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ckpt(0, ts=T + 86_400))
    b.add(Ins("b", V, ts=T + 20))
    d = tmp_path / "wal"
    b.write(d)
    for chunk in (None, 64):  # (64: a piece a record, the stray stamp in a piece before)
        for exclusive in (False, True):
            got = gpu_pitr.restore(d, backend=backend, to_time=T + 50, exclusive=exclusive,
                                   chunk_bytes=chunk)
            assert got.report.stop["reason"] == "end_of_log" and list(got.ids) == ["a", "b"]
            (w,) = _warned(got, "the log ends before the target")
            assert w.startswith("the log ends before the target 2027-01-15T08:00:50Z: its "
                                "latest commit point is at 2027-01-15T08:00:20Z; "), w
    with pytest.raises(TargetNotReachedError, match="the log ends before the target"):
        gpu_pitr.restore(d, backend=backend, to_time=T + 50, strict=True)


def test_a_base_with_no_log_after_it_is_warned_of(tmp_path):
    b, d = _log(tmp_path)
    b.write(d)
    snap = snapshot.save(gpu_pitr.restore(d, backend="cpu"), tmp_path / "snap")
    empty = tmp_path / "typo"
    empty.mkdir()
    got = gpu_pitr.restore(empty, backend="cpu", base=snap)
    assert list(got.ids) == ["a", "b", "c"]
    assert got.report.warnings == [
        f"the base snapshot's state alone, no log after it: no wal-<16 hex digits>.log "
        f"files in {empty}"]
    assert gpu_pitr.restore(d, backend="cpu", base=snap).report.warnings == []


def test_a_base_mid_segment_with_no_log_at_all_is_the_gap_error(tmp_path):
    """The records after a snapshot's position went with its segment: an empty WAL_DIR
    is a gap, not the snapshot's state (by --base and by --snapshots alike: the log
    alone, empty, would not serve either)."""
    from gpu_pitr.errors import IncompleteHistoryError

    b, d = _log(tmp_path)
    b.write(d)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=0), snaps / "early")
    empty = tmp_path / "typo"
    empty.mkdir()
    for how in ({"base": snaps / "early"}, {"snapshots": snaps}):
        with pytest.raises(IncompleteHistoryError, match="the base snapshot's segment "
                           "wal-.* is gone, with records after its position"):
            gpu_pitr.restore(empty, backend="cpu", **how)
        got = gpu_pitr.restore(empty, backend="cpu", allow_incomplete_history=True, **how)
        assert list(got.ids) == ["a"] and _warned(got, "incomplete history"), how


def test_a_time_stop_names_the_transactions_open_there(tmp_path, capsys):
    b, d = _log(tmp_path)
    b.add(Begin(9, ts=T + 40))
    b.add(Ins("d", V, ts=T + 41))
    b.add(Begin(10, ts=T + 42))
    b.add(Ins("e", V, ts=T + 43))
    commit = b.add(Commit(10, ts=T + 60))  # a commit point past T: the stop
    b.write(d)
    assert main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "--to-time",
                 str(T + 50)]) == 0
    stopped = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("stopped:")]
    assert stopped == [f"stopped: before CommitTransaction wal-0000000005f5e100.log: offset "
                       f"{commit.offset}: seq {commit.seq} at 2027-01-15T08:01:00Z "
                       "(2 transactions open there, not applied: 9, 10)"]
    # Named, not only counted: the operator who stopped before a bad transaction's
    # commit sees that it is the one left out; past five, how many more.
    b.add(Begin(11, ts=T + 61))
    for tx in range(12, 18):
        b.add(Begin(tx, ts=T + 61))
    last = b.add(Ins("f", V, ts=T + 62))
    b.write(d)
    assert main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "--to-seq",
                 str(last.seq)]) == 0
    stopped = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("stopped:")]
    assert stopped[0].endswith("(8 transactions open there, not applied: 9, 11, 12, 13, 14 "
                               "and 3 more)")


def test_the_snapshots_note_counts_only_those_that_would_serve_a_later_target(tmp_path):
    """A snapshot of another log is passed over as such, not counted as later than the
    target; an exclusive target is served only after a snapshot's latest stamp."""
    b, d = _log(tmp_path)
    b.write(d)
    snaps = tmp_path / "snaps"
    snapshot.save(gpu_pitr.restore(d, backend="cpu", to_seq=1), snaps / "own")
    other = LogBuilder(created=0x6000000)
    other.add(Ins("z", V, ts=T + 500))
    od = tmp_path / "other"
    other.write(od)
    snapshot.save(gpu_pitr.restore(od, backend="cpu"), snaps / "other")
    got = gpu_pitr.restore(d, backend="cpu", to_time=T + 5, snapshots=snaps)
    assert got.report.base is None and list(got.ids) == ["a"]
    notes = got.report.message.split("; ")
    assert any(n.startswith(f"snapshot {snaps / 'other'} is not of this log") for n in notes)
    assert got.report.message.endswith(
        f"no snapshot in {snaps} serves the target (1 snapshot later than it; the earliest "
        "serves --to-time 2027-01-15T08:00:10Z on): restored from the log alone")
    got = gpu_pitr.restore(d, backend="cpu", to_time=T + 10, exclusive=True, snapshots=snaps)
    assert got.report.message.endswith(
        "(1 snapshot later than it; the earliest serves --to-time after "
        "2027-01-15T08:00:10Z with --exclusive): restored from the log alone")
    # A sequence target the snapshot has covered: it names the first record of that seq.
    got = gpu_pitr.restore(d, backend="cpu", to_seq=0, snapshots=snaps)
    assert got.report.base is None
    assert got.report.message.endswith(
        "(1 snapshot later than it; each covers a record of seq 0, and the target is the "
        "first record of that number in the log (a writer reopened without recovery "
        "numbers from 0 again: a later one is a --to-time target)): restored from the log "
        "alone")


def test_the_snapshot_summary_of_an_empty_log_says_the_start(tmp_path, capsys):
    empty = tmp_path / "wal"
    empty.mkdir()
    assert main(["snapshot", str(empty), "--out", str(tmp_path / "s") + "/"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"snapshot: {tmp_path / 's'} covers the log up to the start of the log "
        "(0 open transactions kept, to apply at their commit)")


def _gap_log(tmp_path):
    """seq 0, 1 in one segment; seqs 2-4 gone (a segment deleted before it was
    archived); seq 5, 6 in the next."""
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))
    b.add(Ins("b", V, ts=T + 1))
    b.new_segment(0x5F5E200)
    after = b.add(Ins("c", V, ts=T + 5), seq=5)
    b.add(Del("a", ts=T + 6), seq=6)
    d = tmp_path / "wal"
    b.write(d)
    return d, after


GAP = ("records are missing from the log: the seq jumps from 1 to 5 at "
       "wal-0000000005f5e200.log offset 16 (3 seqs in all, up to the stop point: a segment "
       "deleted before it was archived, lost bytes, or a torn record's); the index restored "
       "lacks whatever they did. `gpu-pitr verify` lists each jump")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_records_missing_inside_the_log_are_warned_of(tmp_path, backend, capsys):
    """SPEC section 1 orders the log by file names, so the restore goes on across a seq
    jump (its state is the same as before); it says that records are missing."""
    d, after = _gap_log(tmp_path)
    got = gpu_pitr.restore(d, backend=backend)
    assert list(got.ids) == ["b", "c"] and got.report.warnings == [GAP]
    # Split into chunks of a record or two: the same jump, counted once.
    small = gpu_pitr.restore(d, backend=backend, chunk_bytes=64)
    assert small.report.warnings == [GAP]
    assert main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "-q"]) == 0
    assert capsys.readouterr().err == f"gpu-pitr: warning: {GAP}\n"
    # The stop record's own seq counts (what is missing may have come before it)...
    assert gpu_pitr.restore(d, backend=backend, to_time=T + 4).report.warnings == [GAP]
    assert gpu_pitr.restore(d, backend=backend, to_seq=5).report.warnings == [GAP]
    # ...but a jump past the stop point changes nothing restored.
    assert gpu_pitr.restore(d, backend=backend, to_seq=1).report.warnings == []
    assert gpu_pitr.restore(d, backend=backend, to_time=T + 1, exclusive=True
                            ).report.warnings == []
    assert after.seq == 5


def test_restarts_and_zero_filled_records_are_no_jump(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", V, ts=T))            # seq 0
    b.add(Ins("b", V, ts=T + 1))        # seq 1
    b.raw(bytes(24))                    # two zero-filled records (seq 0, length 0)
    b.add(Ins("c", V, ts=T + 2), seq=2)
    b.reopen(created=0x5F5E200)         # the writer reopened: seq from 0 again
    b.add(Ins("d", V, ts=T + 3), seq=0)
    b.add(Ins("e", V, ts=T + 4), seq=1)
    d = tmp_path / "wal"
    b.write(d)
    got = gpu_pitr.restore(d, backend="cpu", skip_corrupt=True)
    assert list(got.ids) == ["a", "b", "c", "d", "e"] and got.report.warnings == []


def test_seq_jumps_counted_across_chunks_and_at_the_top_of_uint64():
    import numpy as np

    from gpu_pitr.plan.seqjumps import SeqJumps

    top = 2**64 - 1
    j = SeqJumps()
    seq = lambda *s: np.array(s, np.uint64)  # noqa: E731
    lengths = lambda n: np.ones(n, np.uint32)  # noqa: E731
    assert j.add(seq(0, 1, 2), lengths(3)) is None
    assert j.add(seq(4, 5), lengths(2)) == 0  # 2 -> 4, across the chunks: at row 0
    assert j.add(seq(0, 9, 10), lengths(3)) is None  # a restart, then a later jump
    assert (j.count, j.missing, j.first) == (2, 1 + 8, (2, 4))
    assert SeqJumps().add(seq(7, 9), lengths(2)) == 1  # no record before: row 1
    near = SeqJumps()  # the largest seq has no successor: top -> 0 is a step back
    assert near.add(seq(top - 2, top, 0), lengths(3)) == 1
    assert (near.count, near.missing, near.first) == (1, 1, (top - 2, top))
    zeros = SeqJumps()  # zero-filled records (seq 0, length 0) take no part
    assert zeros.add(seq(3, 0, 0, 4), np.array([5, 0, 0, 5], np.uint32)) is None
    assert zeros.count == 0 and zeros.prev == 4


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_transaction_open_across_a_writer_restart_is_warned_of(tmp_path, backend):
    """A writer that crashed inside a transaction and restarted without aborting it:
    every record it wrote after the restart belongs to that transaction (SPEC section
    3) and is discarded with it at the end of the log. The result is SPEC's; the
    restore says so, naming where the restart is (it said nothing)."""
    b, d = _log(tmp_path)
    b.add(Begin(7, ts=T + 11))            # seq 3
    b.add(Ins("t", V, ts=T + 12))         # seq 4
    b.reopen(created=0x5F5E200)           # restarted: seq from 0 again
    first = b.add(Ins("x", V, ts=T + 20))  # seq 0, in transaction 7
    b.add(Del("a", ts=T + 21))
    b.write(d)
    _assert_joined_warning(d, backend, 3, 2, first)
    # Not when the restart is outside it, nor at a stop point before the end.
    b, d = _log(tmp_path, "wal2")
    b.add(Begin(7, ts=T + 11))
    b.add(Ins("t", V, ts=T + 12))
    b.add(Commit(7, ts=T + 13))
    b.reopen(created=0x5F5E200)
    b.add(Begin(8, ts=T + 20))
    b.add(Ins("x", V, ts=T + 21))
    b.write(d)
    assert not _warned(gpu_pitr.restore(d, backend=backend), "still open")
    b, d = _log(tmp_path, "wal3")
    b.add(Begin(7, ts=T + 11))
    b.add(Ins("t", V, ts=T + 12))
    b.reopen(created=0x5F5E200)
    b.add(Ins("x", V, ts=T + 20))
    b.write(d)
    assert not _warned(gpu_pitr.restore(d, backend=backend, to_seq=4), "still open")


def test_a_restart_joined_by_the_later_of_two_open_transactions_is_counted_in_it(tmp_path):
    """Two transactions open at the end of the log; the records after the restart join
    the later one (the most recently begun): the warning names it and counts its own
    records, not the earlier one's. And a restart whose first record of the transaction
    carries the very seq of the one before it (a checkpoint took seq 0): seq 1 again is
    a restart too."""
    b, d = _log(tmp_path)
    b.add(Begin(7, ts=T + 11))            # seq 3
    b.add(Ins("t", V, ts=T + 12))         # seq 4, in 7
    b.add(Begin(9, ts=T + 13))            # seq 5
    b.add(Ins("s", V, ts=T + 14))         # seq 6, in 9
    b.reopen(created=0x5F5E200)           # restarted: seq from 0 again
    first = b.add(Ins("x", V, ts=T + 20))  # seq 0, in 9
    b.add(Ins("y", V, ts=T + 21))         # seq 1, in 9
    b.write(d)
    for chunk in (None, 64):
        got = gpu_pitr.restore(d, backend="cpu", chunk_bytes=chunk)
        assert got.report.transactions["in_flight_discarded"] == 2
        (w,) = _warned(got, "still open at the end of the log")
        assert w.startswith(
            "transaction 9 is still open at the end of the log, and 2 of its 3 records come "
            f"after a writer restart (the first of them: seq 0 at wal-0000000005f5e200.log "
            f"offset {first.offset}): they are discarded with it")
    b = LogBuilder()
    b.add(Begin(7, ts=T))                 # seq 0
    b.add(Ins("t", V, ts=T + 1))          # seq 1, in 7
    b.reopen(created=0x5F5E200)
    b.add(Ckpt(5, ts=T + 2))              # seq 0
    again = b.add(Ins("x", V, ts=T + 3))  # seq 1 again, in 7
    d = tmp_path / "wal2"
    b.write(d)
    got = gpu_pitr.restore(d, backend="cpu")
    (w,) = _warned(got, "still open at the end of the log")
    assert w.startswith(
        "transaction 7 is still open at the end of the log, and 1 of its 2 records come "
        f"after a writer restart (the first of them: seq 1 at wal-0000000005f5e200.log "
        f"offset {again.offset})")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_restart_right_after_a_begin_is_warned_of(tmp_path, backend):
    """The writer crashed right after a BeginTransaction, before any record of it, and
    restarted: every record it wrote since joins that transaction (SPEC section 3) and is
    discarded with it. None of its records comes before the restart, so the seq never
    goes back among them: the seq of its begin tells (the restore said nothing)."""
    b, d = _log(tmp_path)
    b.add(Begin(7, ts=T + 11))            # seq 3: the writer crashes here
    b.reopen(created=0x5F5E200)           # restarted: seq from 0 again
    first = b.add(Ins("x", V, ts=T + 20))  # seq 0, in transaction 7
    for k in range(4):
        b.add(Ins(f"y{k}", V, ts=T + 21 + k))
    b.write(d)
    _assert_joined_warning(d, backend, 5, 5, first)
    # Open with no record at all, and begun after the restart with its records: nothing
    # to say (what is discarded is what an open transaction always loses).
    b, d = _log(tmp_path, "wal2")
    b.add(Begin(7, ts=T + 11))
    b.reopen(created=0x5F5E200)
    b.add(Begin(8, ts=T + 20))            # seq 0
    b.add(Ins("x", V, ts=T + 21))         # seq 1, in transaction 8
    b.write(d)
    assert not _warned(gpu_pitr.restore(d, backend=backend), "still open")


def test_a_torn_tail_after_the_stop_record_is_said_to_be_past_it(tmp_path, capsys):
    """The usual incident after a crash: the archive holds a torn tail from later on
    (the store killed after the bad ingest), and the restore to before the bad
    transaction reads past it. Its warning and the summary say it lies after the stop
    record (the state restored does not reach it), where a torn tail before the stop
    is warned of as before: a runbook reads that warning as "data lost"."""
    b, d = _log(tmp_path)
    b.add(Begin(9, ts=T + 40))                  # seq 3: the bad transaction
    b.add(Upd("a", [9.0, 9.0], ts=T + 41))
    b.add(Commit(9, ts=T + 42))                 # seq 5
    torn = b.add(Ins("e", V, ts=T + 50))        # seq 6: cut by the crash
    b.truncate(torn.file, torn.end - 3)
    b.new_segment(0x5F5E200)
    b.seq = 6
    b.add(Ins("e", V, ts=T + 60))               # re-sent after the restart
    b.write(d)
    lost = f"{d / torn.file}: offset {torn.offset}: torn tail, {torn.end - 3 - torn.offset} " \
        "bytes lost"
    rc = main(["restore", str(d), "--out", str(tmp_path / "o.npz"), "--to-transaction", "9",
               "--exclusive"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err == (f"gpu-pitr: warning: {lost} (after the stop point: the state restored "
                   "does not reach it)\n")
    assert "damage: 1 torn tail (1 beyond the stop record), 0 skipped" in out
    # Restored to a point after it (the latest), it is a torn tail the state crossed.
    rc = main(["restore", str(d), "--out", str(tmp_path / "p.npz"), "-q"])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (0, "", f"gpu-pitr: warning: {lost}\n")
