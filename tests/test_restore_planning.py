"""Questions asked before a restore, answered without restoring: the restorable window of
an archive and its snapshots (``inspect ARCHIVE --snapshots DIR``, ``snapshot.window``:
pgbackrest info's archive min and max), and which snapshot a restore would start from
and how much log it would read (``restore --dry-run``, ``pipeline.plan_restore``).

Every answer is checked against what the restore then does: the earliest moment restores
and a second before it fails; the latest time gives the latest state; the snapshot named
is the one the restore's report names, and the log counted is what its report counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_expire import _cli, _history, _same, _segments, private_copy
from workloads import Ins, LogBuilder, dir_state, restore_fast, restore_ref, segment_name

import gpu_pitr
from gpu_pitr import cli, plan_restore, snapshot
from gpu_pitr.errors import (
    BadSegmentError,
    IncompleteHistoryError,
    TargetBeforeBaseError,
    WalError,
)
from gpu_pitr.expire import expire
from gpu_pitr.format.segments import list_segments
from gpu_pitr.format.stats import utc_text
from gpu_pitr.snapshot.format import read_manifest

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return _history(tmp_path_factory.mktemp("planning"))


@pytest.fixture
def hist(history, tmp_path):
    """A private copy of the shared history (tests expire it)."""
    return private_copy(history, tmp_path)


# The restorable window: ``inspect ARCHIVE --snapshots DIR`` (``snapshot.window``), what
# pgbackrest info shows as the archive's min and max. Each bound it prints is checked
# against restores: the earliest moment restores and a second before it fails; the
# latest time gives the latest state; each snapshot's "log after it" is what a restore
# from it reads.


def test_the_window_after_an_expire_is_what_restores_reach(hist):
    arc, whole, snaps, times = hist
    assert expire(arc, snaps, keep=2).anchor == str(snaps / "s04")
    state = dir_state(arc), dir_state(snaps)
    doc = snapshot.window(arc, snaps)
    assert (dir_state(arc), dir_state(snaps)) == state  # read-only
    anchor = read_manifest(snaps / "s04")["position"]
    assert doc["restorable"]
    assert doc["earliest"]["from"] == "snapshot"
    assert doc["earliest"]["snapshot"] == str(snaps / "s04")
    earliest = doc["earliest"]["time"]
    assert earliest == anchor["max_timestamp"]
    _same(restore_fast(arc, to_time=earliest, snapshots=str(snaps)),
          restore_ref(whole, to_time=earliest))
    with pytest.raises(IncompleteHistoryError):
        gpu_pitr.restore(arc, to_time=earliest - 1, snapshots=str(snaps), backend="cpu")
    latest = doc["latest"]
    assert latest["from"] == "log_end" and latest["time"] is not None
    _same(restore_fast(arc, to_time=latest["time"], snapshots=str(snaps)),
          restore_ref(whole))
    last = max(_segments(arc))
    assert latest["last_record"]["file"] == last
    # Each snapshot kept starts a restore, and the log after it is what that restore reads.
    assert [(Path(r["snapshot"]).name, r["usable"]) for r in doc["snapshots"]] == \
        [("s04", True), ("s05", True)]
    for row in doc["snapshots"]:
        report = gpu_pitr.restore(arc, base=row["snapshot"], backend="cpu").report.to_dict()
        assert row["log_after"]["bytes"] == report["bytes_read"], row
        assert row["log_after"]["segments"] == report["segments"], row
        assert row["serves_time_from"] == read_manifest(row["snapshot"])["position"][
            "max_timestamp"]


def test_the_window_of_a_whole_history_starts_at_the_log_and_names_unusable_snapshots(
        hist, tmp_path):
    arc, whole, snaps, _ = hist
    doc = snapshot.window(arc, snaps)
    assert doc["earliest"]["from"] == "log_start" and doc["log"]["history"]["complete"]
    # No log at all: a restore gives a snapshot's own state alone, no moment between.
    (tmp_path / "empty").mkdir()
    doc_empty = snapshot.window(tmp_path / "empty", snaps)
    assert not doc_empty["restorable"] and doc_empty["earliest"] is None
    assert "NONE: no wal-<16 hex digits>.log files in " in cli.window_lines(doc_empty)[0]
    assert all(r["usable"] for r in doc["snapshots"]) and len(doc["snapshots"]) == 6
    # Expired, with an old snapshot put back: restores cannot start from it, and the
    # window says why rather than count it.
    shutil.copytree(snaps / "s01", tmp_path / "s01")
    assert expire(arc, snaps, keep=2).ok
    shutil.copytree(tmp_path / "s01", snaps / "s01")
    (snaps / "bad").mkdir()
    (snaps / "bad" / "manifest.json").write_text("{")
    doc = snapshot.window(arc, snaps)
    rows = {Path(r["snapshot"]).name: r for r in doc["snapshots"]}
    assert not rows["s01"]["usable"] and "expire" in rows["s01"]["why"]
    assert not rows["bad"]["usable"] and "position" not in rows["bad"]
    assert doc["earliest"]["snapshot"] == str(snaps / "s04")
    with pytest.raises(IncompleteHistoryError):
        gpu_pitr.restore(arc, to_time=rows["s01"]["serves_time_from"], snapshots=str(snaps),
                         backend="cpu")
    # No snapshot left that serves: nothing is restorable, and the text says so.
    for name in ("s04", "s05"):
        shutil.rmtree(snaps / name)
    doc = snapshot.window(arc, snaps)
    assert not doc["restorable"] and doc["earliest"] is None and doc["latest"] is None
    assert ": NONE: no snapshot can start a restore of this log (2 snapshots passed over" in \
        cli.window_lines(doc)[0]


def test_inspect_snapshots_on_the_command_line(hist, capsys):
    arc, _, snaps, _ = hist
    assert expire(arc, snaps, keep=3).ok
    assert cli.main(["inspect", str(arc), "--snapshots", str(snaps), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(json.dumps(snapshot.window(arc, snaps)))
    assert cli.main(["inspect", str(arc), "--snapshots", str(snaps)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"restorable window of {arc} with the snapshots in {snaps}:"
    assert lines[1].startswith(f"  earliest: {utc_text(doc['earliest']['time'])}, from "
                               "snapshot s03 (wal-")
    assert lines[2].startswith(f"  latest:   {utc_text(doc['latest']['time'])}, the end of "
                               "the log (wal-")
    assert [line.split()[0] for line in lines if line[:2] == "s0"] == ["s03", "s04", "s05"]
    assert lines[-1] == (f"to restore a moment T in the window: gpu-pitr restore {arc} "
                         f"--snapshots {snaps} --to-time T --out OUT")
    for bad in (["--records"], ["--transactions"], ["--since", "5"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(["inspect", str(arc), "--snapshots", str(snaps), *bad])
        assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        cli.main(["inspect", str(snaps / "s03"), "--snapshots", str(snaps)])
    assert stop.value.code == 2
    capsys.readouterr()
    # A directory that is not one of snapshots: one line naming it, exit 1.
    refused = _cli("inspect", str(arc), "--snapshots", str(snaps / "s03"))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"gpu-pitr: error: {snaps / 's03'}: is a snapshot")


# restore --dry-run: pipeline.plan_restore.


def _targets(arc: Path, times: list[int]) -> list[dict]:
    last = read_manifest(sorted(p for p in (arc.parent / "snaps").iterdir())[2])["position"]
    return [{}, *({"to_time": t} for t in times), {"to_time": times[3], "exclusive": True},
            {"to_seq": last["last_seq"]}, {"to_seq": last["last_seq"], "exclusive": True},
            {"to_seq": 3}]


def test_the_plan_names_the_base_and_the_log_the_restore_then_uses(hist):
    arc, _, snaps, times = hist
    for target in _targets(arc, times):
        plan = plan_restore(arc, snapshots=snaps, **target)
        report = gpu_pitr.restore(arc, snapshots=snaps, backend="cpu",
                                  **target).report.to_dict()
        base = report["base"]
        assert (plan["base"] and plan["base"]["path"]) == (base and base["path"]), target
        assert plan["read"]["bytes"] == report["bytes_read"], target
        assert plan["read"]["segments"] == report["segments"], target
        assert "; ".join(plan["notes"]) == report["message"], target
    # A named base: the same, and its refusal is the restore's.
    plan = plan_restore(arc, base=snaps / "s02", to_time=times[4])
    assert plan["base"]["path"] == str(snaps / "s02")
    with pytest.raises(TargetBeforeBaseError, match="the target is earlier than the base"):
        plan_restore(arc, base=snaps / "s04", to_time=times[2])


def test_the_plan_refuses_what_the_restore_refuses_before_reading(hist, tmp_path):
    arc, _, snaps, times = hist
    old = tmp_path / "s01"
    shutil.copytree(snaps / "s01", old)
    assert expire(arc, snaps, keep=2).ok
    # A base from before what expire kept (a copy kept elsewhere): refused, as the
    # restore refuses it, though it is intact and at or before the target.
    with pytest.raises(IncompleteHistoryError) as want:
        gpu_pitr.restore(arc, base=old, to_time=times[4], backend="cpu")
    with pytest.raises(IncompleteHistoryError, match="expire deleted the segments") as got:
        plan_restore(arc, base=old, to_time=times[4])
    assert str(got.value) == str(want.value)
    with pytest.raises(IncompleteHistoryError) as want:
        gpu_pitr.restore(arc, snapshots=snaps, to_time=times[1], backend="cpu")
    with pytest.raises(IncompleteHistoryError) as got:
        plan_restore(arc, snapshots=snaps, to_time=times[1])
    assert str(got.value) == str(want.value)  # the restore's own words
    assert "no snapshot in" in str(got.value)
    assert plan_restore(arc, snapshots=snaps, to_time=times[1],
                        allow_incomplete_history=True)["base"] is None
    # A log whose first record is not seq 0, no snapshot: named at its first record.
    log = LogBuilder(first_seq=5)
    log.add(Ins("a", [1.0], ts=10))
    wal = tmp_path / "late"
    log.write(wal)
    with pytest.raises(IncompleteHistoryError) as want:
        gpu_pitr.restore(wal, backend="cpu")
    with pytest.raises(IncompleteHistoryError, match="does not start at sequence number 0") as err:
        plan_restore(wal)
    assert str(err.value) == str(want.value)
    assert err.value.offset == 16 and err.value.seq == 5


def test_restore_dry_run_on_the_command_line_writes_nothing(hist, tmp_path, capsys):
    arc, _, snaps, times = hist
    out = tmp_path / "out"
    out.mkdir()
    state = dir_state(arc), dir_state(snaps)
    for command in ("restore", "snapshot"):
        target = out / ("x.npz" if command == "restore" else "snap")
        assert cli.main([command, str(arc), "--snapshots", str(snaps), "--to-time",
                         str(times[3]), "--out", str(target), "--report-json",
                         str(out / "r.json"), "--dry-run"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert (dir_state(arc), dir_state(snaps)) == state and not list(out.iterdir())
        report = gpu_pitr.restore(arc, snapshots=snaps, to_time=times[3],
                                  backend="cpu").report.to_dict()
        assert lines[:2] == ["dry run: nothing restored, nothing written",
                             f"target: time {utc_text(times[3])}"]
        assert lines[2].startswith(f"would start from snapshot {report['base']['path']} (")
        assert lines[3].startswith(f"would read {report['segments']} segments, "
                                   f"{report['bytes_read']} bytes of log, from wal-")
    # Refused as the restore would be: one line, exit 1; an output directory missing is
    # found as the restore finds it.
    refused = _cli("restore", str(arc), "--base", str(snaps / "s04"), "--to-time",
                   str(times[1]), "--out", str(out / "x.npz"), "--dry-run")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "the target is earlier than the base snapshot" in refused.stderr
    missing = _cli("restore", str(arc), "--out", str(tmp_path / "no" / "x.npz"), "--dry-run")
    assert (missing.returncode, missing.stderr) == (
        1, f"gpu-pitr: error: {tmp_path / 'no'}: no such directory for --out\n")
    # No target: no stop point for --stop-reading-at-target to stop reading at.
    assert cli.main(["restore", str(arc), "--snapshots", str(snaps), "--out",
                     str(out / "x.npz"), "--dry-run"]) == 0
    (read,) = [n for n in capsys.readouterr().out.splitlines() if n.startswith("would read")]
    last = sorted(arc.glob("wal-*.log"))[-1].name  # (the newest snapshot's segment)
    assert read.endswith(f" of log, from {last}: to the end of the log"), read
    with pytest.raises(SystemExit) as stop:
        cli.main(["restore", str(arc), "--out", str(out / "x.npz"), "--dry-run",
                  "--dask-scheduler", "tcp://nowhere:1"])
    assert stop.value.code == 2
    assert not list(out.iterdir())


# Adversarial review (planrev): each promise of the plan and the window checked on logs
# built to break it.


def _outcome(fn):
    """``("ok", value)`` or ``("error", type, words)``: what a refusal is compared by."""
    try:
        return "ok", fn()
    except WalError as err:
        return "error", type(err), str(err)


def _two_segments(tmp_path: Path) -> tuple[Path, Path, LogBuilder]:
    """A log of two segments, the second begun by a rotation, and a snapshot at the
    first record of the second (its position: that segment's offset 16, the header's
    end, with records after it)."""
    log = LogBuilder(created=1000)
    for k in range(3):
        log.add(Ins(f"a{k}", [float(k)], ts=10 + k))
    log.new_segment(2000)
    first = log.add(Ins("b0", [5.0], ts=20))
    log.add(Ins("b1", [6.0], ts=21))
    wal = tmp_path / "wal"
    log.write(wal)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    index = gpu_pitr.restore(wal, to_position=f"{first.file}:{first.offset}", exclusive=True,
                             backend="cpu")
    assert index.position["segment"] == first.file and index.position["offset"] == 16
    snapshot.save(index, snaps / "s1")
    return wal, snaps, log


def test_the_log_counted_from_a_segment_start_and_past_a_bad_header_is_what_is_read(
        tmp_path):
    # A base at a segment's header end: the restore reads (and counts) the header too.
    # A segment whose header is wrong: the restore reads its header alone, and counts
    # those bytes; the plan and the window counted the whole file.
    wal, snaps, _ = _two_segments(tmp_path)
    bad = wal / segment_name(3000)
    bad.write_bytes(b"WALV\x02\x00\x00\x00" + bytes(8) + bytes(40))
    for kw in ({"base": snaps / "s1"}, {"snapshots": snaps}, {}):
        report = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True,
                                  **kw).report.to_dict()
        assert report["skipped"][0]["file"] == str(bad)
        plan = plan_restore(wal, skip_corrupt=True, **kw)
        assert (plan["read"]["segments"], plan["read"]["bytes"]) == (
            report["segments"], report["bytes_read"]), kw
        assert plan["skipped"] == report["skipped"], kw
    row = snapshot.window(wal, snaps)["snapshots"][0]
    report = gpu_pitr.restore(wal, base=row["snapshot"], backend="cpu",
                              skip_corrupt=True).report.to_dict()
    assert (row["log_after"]["segments"], row["log_after"]["bytes"]) == (
        report["segments"], report["bytes_read"])


def test_the_plan_refuses_a_log_start_only_where_the_restore_does(tmp_path):
    # The first segment holds a torn record alone (a writer that crashed mid-write),
    # and the writer went on in a new file from seq 0: the restore's first record is
    # seq 0, and it restores; the plan took the torn record's seq for the first.
    log = LogBuilder(created=100, first_seq=44)
    torn = log.add(Ins("a", [1.0], ts=5))
    log.truncate(log.cur, torn.offset + 14)
    log.reopen(200)
    log.add(Ins("b", [2.0], ts=6))
    wal = log.write(tmp_path / "torn")
    report = gpu_pitr.restore(wal, backend="cpu").report.to_dict()
    plan = plan_restore(wal)
    assert (plan["read"]["segments"], plan["read"]["bytes"]) == (
        report["segments"], report["bytes_read"])
    # A writer reopened at once (a second header first): the first record, seq 5, is
    # after it; the restore refuses the log's start there, and so does the plan.
    log = LogBuilder(created=400)
    log.reopen()
    log.add(Ins("a", [1.0], ts=5), seq=5)
    wal = log.write(tmp_path / "reopened")
    want = _outcome(lambda: gpu_pitr.restore(wal, backend="cpu"))
    assert want[:2] == ("error", IncompleteHistoryError) and "offset 32: seq 5" in want[2]
    assert _outcome(lambda: plan_restore(wal)) == want
    # A first file of a few bytes whose header is wrong: the restore refuses the file
    # (BadSegmentError, damage, which the plan does not look for), not the log's start.
    log = LogBuilder(created=300, first_seq=7)
    log.add(Ins("a", [1.0], ts=5))
    log.put_file(segment_name(200), b"WALV\x02")
    wal = log.write(tmp_path / "bad")
    want = _outcome(lambda: gpu_pitr.restore(wal, backend="cpu"))
    assert want[:2] == ("error", BadSegmentError)
    assert _outcome(lambda: plan_restore(wal)) == want


def test_the_plan_refuses_a_base_the_log_does_not_go_on_from(tmp_path):
    # The base's segment deleted (the writer's retention) with records after its
    # position: the restore refuses it as it starts, before reading; so does the plan.
    wal, snaps, log = _two_segments(tmp_path)
    mid = tmp_path / "mid"  # in the first segment, before its second record
    snapshot.save(gpu_pitr.restore(wal, to_seq=1, exclusive=True, backend="cpu"), mid)
    assert read_manifest(mid)["position"]["segment"] == min(log.files)
    (wal / min(log.files)).unlink()
    want = _outcome(lambda: gpu_pitr.restore(wal, base=mid, backend="cpu"))
    assert want[:2] == ("error", IncompleteHistoryError) and "is gone" in want[2]
    assert _outcome(lambda: plan_restore(wal, base=mid)) == want
    (wal / max(log.files)).unlink()
    for kw in ({"base": snaps / "s1"}, {"snapshots": snaps}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu", **kw))
        assert want[:2] == ("error", IncompleteHistoryError), kw
        assert _outcome(lambda kw=kw: plan_restore(wal, **kw)) == want, kw
    # No segment left at all: --snapshots chooses it, and the restore refuses it; the
    # window says it is no start.
    row = snapshot.window(wal, snaps)["snapshots"][0]
    assert not row["usable"] and "the log does not go on from it" in row["why"]
    assert plan_restore(wal, snapshots=snaps, allow_incomplete_history=True)["base"]


def test_the_plan_says_the_restores_words_for_a_damaged_marker_and_an_empty_log(
        hist, tmp_path):
    arc, _, snaps, _ = hist
    assert expire(arc, snaps, keep=2).ok
    (snaps / "s05" / "manifest.json").write_text("{")
    (arc / ".gpu-pitr-expired").write_text("{")
    want = _outcome(lambda: gpu_pitr.restore(arc, snapshots=snaps, backend="cpu"))
    assert want[0] == "error" and "--snapshots: snapshot " in want[2]
    assert _outcome(lambda: plan_restore(arc, snapshots=snaps)) == want
    # No segment: the restore's message, which the plan's notes are.
    (tmp_path / "empty").mkdir()
    report = gpu_pitr.restore(tmp_path / "empty", backend="cpu").report
    plan = plan_restore(tmp_path / "empty")
    assert "; ".join(plan["notes"]) == report.message != ""
    assert plan["warnings"] == report.warnings
    # A base and no segment: the restore's warning, which the dry run prints.
    report = gpu_pitr.restore(tmp_path / "empty", base=snaps / "s04", backend="cpu").report
    assert plan_restore(tmp_path / "empty", base=snaps / "s04")["warnings"] == report.warnings


def _both_refuse(wal, snap: Path, words: str) -> None:
    """The restore from ``snap`` (``--base``, and ``--snapshots`` of its directory, its
    one snapshot) refuses the log at ``wal`` for an incomplete history, saying ``words``;
    the plan refuses it in the same words."""
    for kw in ({"base": snap}, {"snapshots": snap.parent}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu", **kw))
        assert want[:2] == ("error", IncompleteHistoryError), kw
        assert words in want[2]
        assert _outcome(lambda kw=kw: plan_restore(wal, **kw)) == want, kw


def test_a_base_whose_segment_is_gone_and_the_log_resumes_at_seq_zero(tmp_path):
    # A snapshot at the end of its segment, which is not in this log, whose first record
    # is seq 0 (another store's log, or this one's writer reopened after a gap): the
    # restore refuses it at that first record; the window called it a start, and the
    # plan said the restore would start from it.
    other = LogBuilder(created=10)
    for k in range(3):
        other.add(Ins(f"o{k}", [1.0], ts=k))
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(other.write(tmp_path / "other"), backend="cpu"),
                  snaps / "o")
    log = LogBuilder(created=100)
    log.add(Ins("a", [2.0], ts=50))
    wal = log.write(tmp_path / "wal")
    _both_refuse(wal, snaps / "o", "the log resumes at seq 0, not 3")
    # With --stop-reading-at-target, a target the base itself meets reads no log: the
    # restore restores it, and the dry run does not refuse it.
    kw = {"base": snaps / "o", "to_seq": 2}
    report = gpu_pitr.restore(wal, backend="cpu", read_after_stop=False, **kw).report
    assert report.segments == 0 and report.base["path"] == str(snaps / "o")
    assert plan_restore(wal, read_after_stop=False, **kw)["base"]["path"] == str(snaps / "o")
    want = _outcome(lambda: gpu_pitr.restore(wal, backend="cpu", **kw))
    assert want[0] == "error" and _outcome(lambda: plan_restore(wal, **kw)) == want
    doc = snapshot.window(wal, snaps)
    assert not doc["snapshots"][0]["usable"]
    assert "the log resumes at seq 0, not 3" in doc["snapshots"][0]["why"]
    assert doc["earliest"]["from"] == "log_start"


def test_a_snapshot_of_an_empty_log_before_a_log_not_from_seq_zero(tmp_path):
    # A snapshot of an empty log holds no record: the log after it must start at seq 0,
    # and the restore refuses one that starts at seq 5 (its start deleted). The plan
    # said the restore would start from it, and the window called it a start (and so
    # the archive restorable).
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    (tmp_path / "wal").mkdir()
    snapshot.save(gpu_pitr.restore(tmp_path / "wal", backend="cpu"), snaps / "empty")
    log = LogBuilder(first_seq=5)
    log.add(Ins("a", [1.0], ts=1))
    wal = log.write(tmp_path / "wal")
    _both_refuse(wal, snaps / "empty", "the base snapshot holds no record of the log")
    doc = snapshot.window(wal, snaps)
    assert not doc["snapshots"][0]["usable"]
    assert "the log does not start at sequence number 0" in doc["snapshots"][0]["why"]
    assert not doc["restorable"] and doc["earliest"] is None
    # With the log from seq 0 both start from it, as the restore does.
    log = LogBuilder()
    log.add(Ins("a", [1.0], ts=1))
    wal = log.write(tmp_path / "wal0")
    assert plan_restore(wal, snapshots=snaps)["base"]["path"] == str(snaps / "empty")
    assert gpu_pitr.restore(wal, backend="cpu", snapshots=snaps).report.base["path"] == \
        str(snaps / "empty")
    assert snapshot.window(wal, snaps)["snapshots"][0]["usable"]


def test_a_snapshot_of_zero_filled_records_only_inside_its_segment(tmp_path):
    # A snapshot of a log's zero-filled records alone (a seq 0 target stops at one) holds
    # no record: the log after it, here in the same segment, must start at seq 0 as a
    # restore of the whole log judges it. The restore refuses seq 5 there; the plan and
    # the window judged only a base whose segment is gone so, and let this one start.
    log = LogBuilder()
    log.raw(b"\0" * 12)  # (a file extended but never written)
    log.add(Ins("a", [1.0], ts=1), seq=5)
    wal = log.write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=0, skip_corrupt=True,
                                   allow_incomplete_history=True), snaps / "zeros")
    position = read_manifest(snaps / "zeros")["position"]
    assert position["segment"] == segment_name(0x5F5E100) and position["seq_runs"] == []
    _both_refuse(wal, snaps / "zeros", "the base snapshot holds no record of the log")
    doc = snapshot.window(wal, snaps)
    assert not doc["snapshots"][0]["usable"]
    assert "the log does not start at sequence number 0" in doc["snapshots"][0]["why"]
    # Allowed, both warn of the same gap.
    kw = {"base": snaps / "zeros", "allow_incomplete_history": True}
    assert _gap_warnings(plan_restore(wal, **kw)["warnings"]) == _gap_warnings(
        gpu_pitr.restore(wal, backend="cpu", **kw).report.warnings) == [
        "incomplete history, restored as allowed: the log starts at seq 5 "
        f"({segment_name(0x5F5E100)} offset 28), not 0; the state restored lacks what "
        "came before and may never have existed"]
    # Where the log after the zeros starts at seq 0, all three start from it.
    log = LogBuilder()
    log.raw(b"\0" * 12)
    log.add(Ins("a", [1.0], ts=1), seq=0)
    wal = log.write(tmp_path / "wal0")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=0, skip_corrupt=True),
                  tmp_path / "zeros0")
    shutil.rmtree(snaps / "zeros")
    (tmp_path / "zeros0").rename(snaps / "zeros")
    assert plan_restore(wal, snapshots=snaps)["base"]["path"] == str(snaps / "zeros")
    assert gpu_pitr.restore(wal, backend="cpu", snapshots=snaps).report.base["path"] == \
        str(snaps / "zeros")
    assert snapshot.window(wal, snaps)["snapshots"][0]["usable"]


def test_a_base_of_zero_filled_records_that_is_the_stop_judges_nothing_after_it(
        tmp_path):
    # (CI, 45th session) A seq 0 target, or an inclusive position target at a
    # zero-filled record, stops at that record: a restore of the whole log takes it as
    # the log's first record (seq 0) and judges nothing past its stop, so the seq 5
    # record after it is no gap. A snapshot of that restore holds no record of the log;
    # a restore to the same target from it is the base itself, and reading on past it
    # (the default), it judged that seq 5 record as the log's start and refused it. The
    # answer is the whole log's, and the plan agrees; allowed, no gap is warned of.
    log = LogBuilder()
    log.raw(bytes(12))
    log.add(Ins("a", [1.0], ts=1), seq=5)
    wal = log.write(tmp_path / "wal")
    name = segment_name(0x5F5E100)
    for k, target in enumerate(({"to_seq": 0}, {"to_position": (name, 16)})):
        snaps = tmp_path / f"snaps{k}"
        snaps.mkdir()
        for allow in (False, True):
            kw = {**target, "skip_corrupt": True, "allow_incomplete_history": allow}
            whole = gpu_pitr.restore(wal, backend="cpu", **kw)
            assert whole.id_list() == [] and whole.report.stop["seq"] == 0
            if not allow:
                snapshot.save(whole, snaps / "zeros")
            for how in ({"base": snaps / "zeros"}, {"snapshots": snaps}):
                for more in ({}, {"read_after_stop": False}):
                    got = gpu_pitr.restore(wal, backend="cpu", **how, **more, **kw)
                    assert got.report.base["path"] == str(snaps / "zeros"), (kw, how)
                    assert got.id_list() == [] and got.report.stop == whole.report.stop
                    assert not _gap_warnings(got.report.warnings), (kw, how, more)
                    plan = plan_restore(wal, **how, **more, **kw)
                    assert plan["base"]["path"] == str(snaps / "zeros")
                    assert not _gap_warnings(plan["warnings"]), (kw, how, more)
        # Past the base, to the end of the log, the seq 5 record is the log's start:
        # refused (allowed: warned of), as the whole log refuses it.
        kw = {"skip_corrupt": True, "base": snaps / "zeros"}
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu", **kw))
        assert want[:2] == ("error", IncompleteHistoryError)
        assert _outcome(lambda kw=kw: plan_restore(wal, **kw)) == want
        assert _outcome(lambda: gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True)
                        )[:2] == ("error", IncompleteHistoryError)


def test_a_base_of_two_zero_filled_records_or_more_holds_no_record(tmp_path):
    # A position target at the second (or a later) zero-filled record that leads the
    # log: with --skip-corrupt the restore skips those before it and takes it as the
    # log's first record, seq 0, as at the first. A snapshot of that holds no record of
    # the log either; but seq 0 went into its seqs twice, and a base with any seq but
    # its last was taken as one that holds a record: the log after it went unjudged, and
    # the seq 5 record after the zeros, which the whole log refuses as its start, was
    # restored from it with no word of the history missing before it.
    log = LogBuilder()
    log.raw(bytes(12 * 3))
    log.add(Ins("a", [1.0], ts=1), seq=5)
    log.add(Ins("b", [2.0], ts=2), seq=6)
    wal = log.write(tmp_path / "wal")
    name = segment_name(0x5F5E100)
    for offset, exclusive in ((28, False), (40, False), (40, True)):
        snaps = tmp_path / f"snaps{offset}{exclusive}"
        snaps.mkdir()
        snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_position=(name, offset),
                                       exclusive=exclusive, skip_corrupt=True),
                      snaps / "zeros")
        for target in ({}, {"to_seq": 5}, {"to_time": 1}):
            kw = {**target, "skip_corrupt": True}
            whole = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu", **kw))
            assert whole[:2] == ("error", IncompleteHistoryError)
            for how in ({"base": snaps / "zeros"}, {"snapshots": snaps}):
                got = _outcome(lambda kw=kw, how=how: gpu_pitr.restore(
                    wal, backend="cpu", **how, **kw))
                assert got[:2] == whole[:2], (offset, exclusive, kw, how)
                assert "seq 5: the log does not start at sequence number 0" in got[2]
                assert _outcome(lambda kw=kw, how=how: plan_restore(
                    wal, **how, **kw)) == got
        manifest = read_manifest(snaps / "zeros")
        assert manifest["position"]["covers_records"] is False
        # (Readers of before covers_records misjudge it: a version they refuse.)
        assert manifest["format_version"] == (2 if manifest["position"]["seq_runs"] else 1)
        if (offset, exclusive) == (40, False):  # (the window judges a zero record read
            # first as seq 0, as a restore without --skip-corrupt does: the others)
            assert not snapshot.window(wal, snaps)["snapshots"][0]["usable"]


def test_a_zero_filled_record_first_after_a_base_whose_segment_is_gone(tmp_path):
    # (review zeroaudit) The base's segment is gone and the next one starts with a
    # zero-filled record (a crash after the file was extended), then the seqs that go on
    # from the base. Without --skip-corrupt the restore and the plan refused it as "the
    # log resumes at seq 0 ... a writer reopened", and said --allow-incomplete-history,
    # which then failed at the zero record as damage. They name the zero record, and
    # --skip-corrupt, which restores the log after it.
    log = LogBuilder(created=1000)
    log.add(Ins("a", [1.0], ts=1))
    log.add(Ins("b", [2.0], ts=2))
    log.new_segment(2000)
    log.raw(bytes(12))
    log.add(Ins("c", [3.0], ts=3), seq=2)
    wal = Path(log.write(tmp_path / "wal"))
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=1), snaps / "s")
    (wal / segment_name(1000)).unlink()
    for how in ({"base": snaps / "s"}, {"snapshots": snaps}):
        want = _outcome(lambda how=how: gpu_pitr.restore(wal, backend="cpu", **how))
        assert want[:2] == ("error", IncompleteHistoryError)
        assert (f"{segment_name(2000)}: offset 16: seq 0: the first record right after the "
                f"base snapshot's position ({segment_name(1000)} offset 60), whose segment "
                "is gone, is zero-filled (12 zero bytes: no seq the writer gave, a crash "
                "after the file was extended), so it does not show that the log goes on "
                "at seq 2: --skip-corrupt (skip_corrupt=True) skips zero-filled records "
                "and judges the record after them") in want[2]
        assert "reopened" not in want[2]
        assert _outcome(lambda how=how: plan_restore(wal, **how)) == want
        got = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True, **how)
        assert got.id_list() == ["a", "b", "c"] and not _gap_warnings(got.report.warnings)
    why = snapshot.window(wal, snaps)["snapshots"][0]["why"]
    assert "is zero-filled" in why and "reopened" not in why


def _gap_warnings(warnings) -> list[str]:
    return [w for w in warnings if w.startswith("incomplete history, restored as allowed")]


def test_the_plan_warns_of_the_gap_a_restore_allowed_to_cross_it_warns_of(hist, tmp_path):
    # With --allow-incomplete-history the restore crosses a gap it can tell before
    # reading (the segments expire deleted, a log not from seq 0, a base the log does not
    # go on from) and warns of it: the dry run said nothing of it, as if the history
    # were whole.
    arc, _, snaps, times = hist
    expire(arc, snaps, keep=2)
    log = LogBuilder(first_seq=5)
    log.add(Ins("a", [1.0], ts=1))
    late = log.write(tmp_path / "late")
    (tmp_path / "empty").mkdir()
    bases = tmp_path / "bases"
    bases.mkdir()
    snapshot.save(gpu_pitr.restore(tmp_path / "empty", backend="cpu"), bases / "empty")
    other = LogBuilder(created=10)
    for k in range(3):
        other.add(Ins(f"o{k}", [1.0], ts=k))
    snapshot.save(gpu_pitr.restore(other.write(tmp_path / "other"), backend="cpu"),
                  bases / "o")
    log = LogBuilder(created=100)
    log.add(Ins("a", [2.0], ts=50))
    reopened = log.write(tmp_path / "reopened")
    cases = [(arc, {}), (arc, {"to_time": times[1]}), (late, {}),
             (late, {"base": bases / "empty"}), (reopened, {"base": bases / "o"})]
    for wal, kw in cases:
        report = gpu_pitr.restore(wal, backend="cpu", allow_incomplete_history=True, **kw)
        want = _gap_warnings(report.report.warnings)
        assert len(want) == 1, (wal, kw)
        got = plan_restore(wal, allow_incomplete_history=True, **kw)["warnings"]
        assert _gap_warnings(got) == want, (wal, kw)
    # A whole history, and a snapshot the log goes on from: no such warning.
    assert _gap_warnings(plan_restore(arc, snapshots=snaps,
                                      allow_incomplete_history=True)["warnings"]) == []


def test_the_latest_time_covers_the_snapshot_the_latest_restore_starts_from(tmp_path):
    # The writer's clock stepped back after a snapshot, whose segment its retention then
    # deleted: the log's newest stamp (50) is before the snapshot's (200). A --to-time
    # at the log's newest stamp passes the snapshot over (and the log alone lacks its
    # start): the window's latest time must be the snapshot's.
    log = LogBuilder(created=1000)
    log.add(Ins("a", [1.0], ts=100))
    last = log.add(Ins("b", [2.0], ts=200))
    log.new_segment(2000)
    log.add(Ins("c", [3.0], ts=50))
    wal = log.write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, to_position=f"{last.file}:{last.offset}",
                                   backend="cpu"), snaps / "s")
    (Path(wal) / last.file).unlink()
    latest = snapshot.window(wal, snaps)["latest"]
    assert latest["time"] == 200
    _same(restore_fast(wal, to_time=latest["time"], snapshots=str(snaps)),
          restore_fast(wal, snapshots=str(snaps)))
    assert "its newest record stamp, or its base snapshot's" in "\n".join(
        cli.window_lines(snapshot.window(wal, snaps)))


def test_a_strict_dry_run_refuses_what_a_strict_restore_refuses_before_reading(hist, tmp_path):
    """``--strict`` refuses a restore with no log to reach its target in (an empty WAL
    directory; a base with no log after it that is not itself the target): known before
    reading, so the dry run refuses it too, in the restore's words, exit 1."""
    from gpu_pitr.errors import TargetNotReachedError

    _, _, snaps, times = hist
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [({}, True), ({"base": snaps / "s02", "to_time": times[4]}, True),
             ({"base": snaps / "s02"}, True)]
    last_seq = read_manifest(snaps / "s02")["position"]["last_seq"]
    cases.append(({"base": snaps / "s02", "to_seq": last_seq}, False))  # the base is it
    for kwargs, refused in cases:
        plan = plan_restore(empty, **kwargs)  # without strict: warned of
        if not refused:
            plan_restore(empty, strict=True, **kwargs)
            gpu_pitr.restore(empty, strict=True, backend="cpu", **kwargs)
            continue
        assert plan["warnings"], kwargs
        with pytest.raises(TargetNotReachedError) as want:
            gpu_pitr.restore(empty, strict=True, backend="cpu", **kwargs)
        with pytest.raises(TargetNotReachedError) as got:
            plan_restore(empty, strict=True, **kwargs)
        assert str(got.value) == str(want.value), kwargs
    cli_run = _cli("restore", str(empty), "--base", str(snaps / "s02"), "--out",
                   str(tmp_path / "x.npz"), "--dry-run", "--strict")
    assert cli_run.returncode == 1 and cli_run.stderr.count("\n") == 1
    assert "strict: the state asked for was not reached" in cli_run.stderr
    assert not (tmp_path / "x.npz").exists()


def test_a_base_that_is_the_target_needs_no_log_after_it_when_none_is_read(tmp_path):
    """A snapshot taken mid-segment, whose segment the writer then deleted: the log after
    it is gone, so a restore past it is refused; but the snapshot's own state (its last
    record as the target, nothing after the stop read: what ``inspect SNAP`` prints,
    PostgreSQL's recovery_target = 'immediate') needs none of it, and is restored. The
    dry run says the same."""
    log = LogBuilder(created=1000)
    recs = [log.add(Ins(f"a{k}", [float(k)], ts=10 + k)) for k in range(3)]
    log.new_segment(2000)
    recs += [log.add(Ins(f"b{k}", [float(k)], ts=20 + k)) for k in range(2)]
    wal = Path(log.write(tmp_path / "wal"))
    at = f"{recs[1].file}:{recs[1].offset}"
    snap = tmp_path / "mid"
    snapshot.save(gpu_pitr.restore(wal, to_position=at, backend="cpu"), snap)
    (wal / recs[0].file).unlink()
    got = gpu_pitr.restore(wal, base=snap, to_position=at, read_after_stop=False,
                           backend="cpu")
    assert got.id_list() == ["a0", "a1"] and got.report.warnings == []
    assert got.report.stop["reason"] == "target" and got.report.records_read == 0
    plan = plan_restore(wal, base=snap, to_position=at, read_after_stop=False)
    assert plan["base"]["path"] == str(snap) and plan["warnings"] == []
    # Reading on after the stop (the default), or a later target: the gap is met.
    for kwargs in ({"to_position": at}, {"to_seq": 3}):
        with pytest.raises(IncompleteHistoryError, match="history after the snapshot") as want:
            gpu_pitr.restore(wal, base=snap, backend="cpu", **kwargs)
        with pytest.raises(IncompleteHistoryError) as err:
            plan_restore(wal, base=snap, **kwargs)
        assert str(err.value) == str(want.value)


def _window_text(doc: dict, wal: Path) -> str:
    """``doc`` as JSON with the WAL directory's name left out (to compare the windows of
    two copies of a log)."""
    return json.dumps(doc).replace(str(wal), "WAL")


def test_the_window_is_of_one_listing_of_a_log_being_written(tmp_path, monkeypatch):
    # The writer goes on while the window is read: after inspect's pass over the log it
    # appends to its segment and rotates to a new one. The window listed the log twice,
    # its counts and its last record from one listing, each snapshot's judgement and the
    # log after it from another: the log after the newest snapshot held a segment and
    # bytes that the log, which the window said ends before them, did not. Now it is the
    # window of the log as listed once, as a restore lists it once.
    from gpu_pitr.format import statwalk

    log = LogBuilder(created=1000)
    for k in range(3):
        log.add(Ins(f"a{k}", [float(k)], ts=10 + k))
    log.new_segment(2000)
    log.add(Ins("b0", [5.0], ts=20))
    listed = {name: bytes(data) for name, data in log.files.items()}
    log.add(Ins("b1", [6.0], ts=21))  # written during the window's pass
    log.new_segment(3000)
    log.add(Ins("c0", [7.0], ts=30))
    whole = Path(log.write(tmp_path / "whole"))
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for seq in (1, 3):
        snapshot.save(gpu_pitr.restore(whole, to_seq=seq, backend="cpu"), snaps / f"s{seq}")
    wal, before = tmp_path / "wal", tmp_path / "before"
    for d in (wal, before):
        d.mkdir()
        for name, data in listed.items():
            (d / name).write_bytes(data)
    scan_stats = statwalk.scan_stats

    def writer_goes_on(*args, **kwargs):
        stats = scan_stats(*args, **kwargs)
        if Path(args[0]) == wal:
            for name, data in log.files.items():
                (wal / name).write_bytes(bytes(data))
        return stats

    monkeypatch.setattr(statwalk, "scan_stats", writer_goes_on)
    doc = snapshot.window(wal, snaps)
    assert len(list(wal.iterdir())) == 3  # (the writer went on)
    want = snapshot.window(before, snaps)
    assert _window_text(doc, wal) == _window_text(want, before)
    newest = doc["snapshots"][-1]
    assert (doc["log"]["segments"], doc["latest"]["last_record"]["seq"]) == (2, 3)
    assert newest["log_after"]["segments"] == 1


def _bounds_are_what_restores_reach(wal, snaps) -> dict:
    """The window of ``wal`` and ``snaps``, its bounds checked against restores: a
    ``--to-time`` at the earliest time restores and one a second before it is refused
    (from the log's start: one before its first stamp gives the empty index); one at the
    latest time gives the state of ``--latest``."""
    doc = snapshot.window(wal, snaps)
    assert doc["restorable"]

    def restore(**kw):
        return restore_fast(wal, snapshots=str(snaps), **kw)

    earliest = doc["earliest"]["time"]
    if doc["earliest"]["from"] == "log_start":
        assert restore(to_time=doc["log"]["min_timestamp"] - 1).ids == []
    else:
        restore(to_time=earliest)
        with pytest.raises(IncompleteHistoryError):
            gpu_pitr.restore(wal, to_time=earliest - 1, snapshots=str(snaps), backend="cpu")
    _same(restore(to_time=doc["latest"]["time"]), restore())
    return doc


def test_the_bounds_of_the_window_are_what_restores_reach(history, hist, tmp_path):
    # The whole history, from the log's start.
    arc, _, snaps, _ = hist
    assert _bounds_are_what_restores_reach(arc, snaps)["earliest"]["from"] == "log_start"
    # The writer's own directory, its retention's deletions behind it (no expire marker:
    # the log starts past seq 0): the oldest snapshot the log goes on from.
    doc = _bounds_are_what_restores_reach(history[0], snaps)
    assert doc["earliest"]["from"] == "snapshot" and not doc["snapshots"][0]["usable"]
    # Expired, the oldest snapshot kept damaged (its manifest): the next one.
    assert expire(arc, snaps, keep=2).ok
    (snaps / "s04" / "manifest.json").write_text("{")
    doc = _bounds_are_what_restores_reach(arc, snaps)
    assert doc["earliest"]["snapshot"] == str(snaps / "s05")
    # The one left with its vectors cut short (its manifest intact): not a start, as
    # the restore, which passes it over for its checksums, finds: nothing serves now.
    time = doc["earliest"]["time"]
    vectors = snaps / "s05" / "vectors.f32"
    vectors.write_bytes(vectors.read_bytes()[:-4])
    doc = snapshot.window(arc, snaps)
    assert not doc["restorable"] and doc["earliest"] is None
    with pytest.raises(IncompleteHistoryError):
        gpu_pitr.restore(arc, to_time=time, snapshots=str(snaps), backend="cpu")
    row = next(r for r in doc["snapshots"] if r["snapshot"] == str(snaps / "s05"))
    assert not row["usable"] and "vectors.f32" in row["why"], row
    # The writer's clock stepped back, the log's start deleted: the earliest is the
    # oldest snapshot's newest stamp (200), not its last record's, nor the log's (50).
    log = LogBuilder(created=1000)
    log.add(Ins("a", [1.0], ts=100))
    log.add(Ins("b", [2.0], ts=200))
    log.new_segment(2000)
    log.add(Ins("c", [3.0], ts=50))
    log.add(Ins("d", [4.0], ts=60))
    wal = Path(log.write(tmp_path / "back"))
    back = tmp_path / "back_snaps"
    for seq in (1, 2):
        snapshot.save(gpu_pitr.restore(wal, to_seq=seq, backend="cpu"), back / f"s{seq}")
    (wal / min(log.files)).unlink()
    doc = _bounds_are_what_restores_reach(wal, back)
    assert (doc["earliest"]["time"], doc["latest"]["time"]) == (200, 200)


def test_the_log_after_each_position_counted_once_for_all_is_counted_alike(tmp_path):
    # The window counts the log after each snapshot from one count of the log's
    # segments (``counted_from``), not by adding up the segments after each one again
    # (snapshots x segments): the same bytes, for a position in each segment, at its
    # start, its end, past a bad header and where its segment is gone.
    wal, _, log = _two_segments(tmp_path)
    bad = Path(wal) / segment_name(3000)
    bad.write_bytes(b"WALV\x02\x00\x00\x00" + bytes(8) + bytes(40))
    (Path(wal) / segment_name(4000)).write_bytes(bytes(5))  # torn: part of a header
    segments = list_segments(wal)
    bad_headers = snapshot.header_bytes_if_bad(segments)
    assert set(bad_headers) == {bad.name, segment_name(4000)}
    counted = snapshot.counted_from(segments, bad_headers)
    positions = [{"segment": None}, {"segment": segment_name(1500), "offset": 40}]
    positions += [{"segment": seg.name, "offset": at} for seg in segments
                  for at in (0, 16, 17, seg.size)]
    for position in positions:
        want = snapshot.log_after(position, segments, bad_headers)
        assert snapshot.log_after(position, segments, bad_headers, counted) == want
        assert snapshot.log_after(position, segments) == want
    assert counted[0] == snapshot.log_after({"segment": None}, segments)["bytes"]


def _bad_middle(tmp_path: Path) -> tuple[Path, Path, list]:
    """A log of three segments whose second has a damaged header (version 2), and the
    records of the first and third (``Rec``s: where each is)."""
    log = LogBuilder(created=1000)
    recs = [log.add(Ins(f"a{k}", [float(k)], ts=10 + k)) for k in range(2)]
    log.put_file(segment_name(2000), b"WALV\x02\x00\x00\x00" + bytes(8) + bytes(40))
    log.new_segment(3000)
    recs += [log.add(Ins(f"c{k}", [float(k)], ts=30 + k)) for k in range(2)]
    wal = Path(log.write(tmp_path / "wal"))
    return wal, wal / segment_name(2000), recs


def test_the_plan_with_and_without_skip_corrupt_meets_a_damaged_header_as_the_restore(
        tmp_path, capsys):
    # A segment header the restore reads before its stop for certain: without
    # --skip-corrupt the restore fails there, with it the file is skipped and listed;
    # the dry run took no skip_corrupt, and said nothing of either.
    wal, bad, recs = _bad_middle(tmp_path)
    later = f"{recs[2].file}:{recs[2].offset}"
    for kw in ({}, {"to_position": later}, {"to_position": later, "exclusive": True}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu", **kw))
        assert want == ("error", BadSegmentError,
                        f"{bad}: offset 0: unsupported version 2 (expected 1)"), kw
        assert _outcome(lambda kw=kw: plan_restore(wal, **kw)) == want, kw
        report = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True,
                                  **kw).report.to_dict()
        plan = plan_restore(wal, skip_corrupt=True, **kw)
        assert plan["skipped"] == report["skipped"] != [], kw
        assert plan["warnings"] == report["warnings"] == [], kw
    # Before it for certain (a position target in an earlier segment): the restore
    # stops first, and passes it over (damage after the stop); so does the plan.
    first = f"{recs[0].file}:{recs[0].offset}"
    for skip in (False, True):
        report = gpu_pitr.restore(wal, backend="cpu", to_position=first,
                                  skip_corrupt=skip).report.to_dict()
        assert report["skipped"] == [] and report["damage_after_stop"] != []
        plan = plan_restore(wal, to_position=first, skip_corrupt=skip)
        assert (plan["skipped"], plan["warnings"]) == ([], [])
    # A time target: where it stops only reading tells; the plan says both outcomes.
    plan = plan_restore(wal, to_time=10)
    assert plan["warnings"] == [
        f"{bad}: offset 0: unsupported version 2 (expected 1): a restore that has not "
        "stopped at its target before this segment fails here (--skip-corrupt skips it)"]
    with pytest.raises(BadSegmentError):
        gpu_pitr.restore(wal, backend="cpu", to_time=31)
    assert gpu_pitr.restore(wal, backend="cpu", to_time=10).report.skipped == []
    # The command line passes --skip-corrupt on, and warns as the restore warns.
    out = tmp_path / "x.npz"
    args = ["restore", str(wal), "--out", str(out), "--skip-corrupt"]
    assert cli.main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert f"would skip {bad.name}: unsupported version 2 (expected 1) (--skip-corrupt)" in \
        dry.out.splitlines()
    assert cli.main([*args, "--quiet"]) == 0
    real = capsys.readouterr()
    assert dry.err == real.err == (f"gpu-pitr: warning: {bad}: offset 0: skipped: "
                                   "unsupported version 2 (expected 1)\n")
    refused = _cli("restore", str(wal), "--out", str(tmp_path / "y.npz"), "--dry-run")
    assert (refused.returncode, refused.stderr) == (
        1, f"gpu-pitr: error: {bad}: offset 0: unsupported version 2 (expected 1)\n")


def test_a_damaged_first_header_is_met_before_any_target_stops(tmp_path):
    # No record comes before it: whatever the target, the restore reads it first.
    log = LogBuilder(created=1000)
    log.put_file(segment_name(500), b"XXXX\x01\x00\x00\x00" + bytes(8))
    log.add(Ins("a", [1.0], ts=10))
    wal = log.write(tmp_path / "wal")
    want = _outcome(lambda: gpu_pitr.restore(wal, backend="cpu", to_time=10))
    assert want[:2] == ("error", BadSegmentError)
    assert _outcome(lambda: plan_restore(wal, to_time=10)) == want
    report = gpu_pitr.restore(wal, backend="cpu", to_time=10, skip_corrupt=True).report
    assert plan_restore(wal, to_time=10, skip_corrupt=True)["skipped"] == \
        report.to_dict()["skipped"] != []


def test_the_plan_warns_of_a_base_restored_past_damage_or_missing_records(tmp_path):
    # A base whose own restore skipped a damaged file (--skip-corrupt), or went past
    # seqs missing inside the log: the restore from it warns of both (its stored
    # reports say them), and --strict refuses the missing seqs; the dry run said
    # neither.
    from gpu_pitr.errors import TargetNotReachedError

    wal, _, recs = _bad_middle(tmp_path)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True,
                                   to_position=f"{recs[2].file}:{recs[2].offset}"),
                  snaps / "past_damage")
    log = LogBuilder(created=1000)
    for k, seq in enumerate((0, 1, 5, 6, 7)):
        log.add(Ins(f"j{k}", [float(k)], ts=10 + k), seq=seq)
    jumped = log.write(tmp_path / "jumped")
    snapshot.save(gpu_pitr.restore(jumped, backend="cpu", to_seq=6), snaps / "missing")
    for wal_dir, snap in ((wal, snaps / "past_damage"), (jumped, snaps / "missing")):
        report = gpu_pitr.restore(wal_dir, base=snap, backend="cpu").report
        assert len(report.warnings) == 1, report.warnings
        assert plan_restore(wal_dir, base=snap)["warnings"] == report.warnings
    assert "was restored past damage with skip_corrupt" in plan_restore(
        wal, base=snaps / "past_damage")["warnings"][0]
    with pytest.raises(TargetNotReachedError) as want:
        gpu_pitr.restore(jumped, base=snaps / "missing", backend="cpu", strict=True)
    with pytest.raises(TargetNotReachedError) as got:
        plan_restore(jumped, base=snaps / "missing", strict=True)
    assert str(got.value) == str(want.value)
    assert "records are missing from the log the base snapshot" in str(got.value)
    # No log after it at all: both, in the restore's order; and an entry named like a
    # segment that is not read, which the restore warns of first.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / segment_name(5)).mkdir()
    whole = tmp_path / "whole"  # (at the end of its segment: no gap after it)
    snapshot.save(gpu_pitr.restore(jumped, backend="cpu"), whole)
    for strict in (False, True):
        kw = {"base": whole, "strict": strict}
        want = _outcome(lambda kw=kw: gpu_pitr.restore(empty, backend="cpu", **kw).report)
        got = _outcome(lambda kw=kw: plan_restore(empty, **kw))
        if strict:
            assert got == want and "; also: the base snapshot's state alone" in got[2]
        else:
            assert got[1]["warnings"] == want[1].warnings and len(want[1].warnings) == 3
            assert want[1].warnings[0].startswith(f"{segment_name(5)}: named like a segment")


def test_a_wrong_seq_at_the_snapshots_position_is_refused_alike(tmp_path):
    """Already so before the dry run's skip_corrupt (a check, not a fix): the record at a
    base's position, and its last record, are read by ``base_mismatch``, which the
    plan's base choice (``_base_for``) shares with the restore."""
    def log_of(third: int) -> LogBuilder:
        log = LogBuilder(created=1000)
        for k in range(2):
            log.add(Ins(f"a{k}", [float(k)], ts=10 + k))
        log.add(Ins("a2", [2.0], ts=12), seq=third)
        log.new_segment(2000)
        log.add(Ins("b", [3.0], ts=20), seq=third + 1)
        return log

    wal = log_of(2).write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2, exclusive=True),
                  snaps / "s")
    assert read_manifest(snaps / "s")["position"]["seq"] == 2
    # The segment replaced by a log whose record at the position is seq 9 (its last
    # record before it the same bytes).
    shutil.rmtree(wal)
    wal = log_of(9).write(tmp_path / "wal")
    want = _outcome(lambda: gpu_pitr.restore(wal, base=snaps / "s", backend="cpu"))
    assert want[:2] == ("error", gpu_pitr.errors.BaseMismatchError)
    assert "the record there has seq 9, the snapshot recorded 2: not this log" in want[2]
    assert _outcome(lambda: plan_restore(wal, base=snaps / "s")) == want
    # --snapshots passes it over, as the restore does.
    report = gpu_pitr.restore(wal, snapshots=snaps, backend="cpu").report
    plan = plan_restore(wal, snapshots=snaps)
    assert plan["base"] is None and report.base is None
    assert "; ".join(plan["notes"]) == report.message != ""


def test_the_first_record_is_judged_past_the_damaged_headers_the_restore_goes_past(tmp_path):
    # With --skip-corrupt the restore skips a first file whose header is damaged, and
    # judges the log's start at the next file's first record (naming what it skipped);
    # the plan judged nothing past a damaged header, and said the restore would run.
    log = LogBuilder(created=1000, first_seq=5)
    log.put_file(segment_name(500), b"XXXX\x01\x00\x00\x00" + bytes(8))
    log.add(Ins("a", [1.0], ts=10))
    wal = log.write(tmp_path / "start")
    for skip in (False, True):
        want = _outcome(lambda skip=skip: gpu_pitr.restore(wal, backend="cpu",
                                                           skip_corrupt=skip))
        assert want[:2] == ("error", IncompleteHistoryError if skip else BadSegmentError)
        assert _outcome(lambda skip=skip: plan_restore(wal, skip_corrupt=skip)) == want
    assert "it is in what --skip-corrupt skipped: " in want[2]
    # After a base whose segment is gone (at its end): the first record after the
    # damaged file must be its last seq + 1. Skipped (--skip-corrupt), or passed over
    # after a base that is itself the stop (damage after it), the restore judges it.
    log = LogBuilder(created=1000)
    for k in range(3):
        log.add(Ins(f"a{k}", [float(k)], ts=10 + k))
    log.put_file(segment_name(2000), b"XXXX\x01\x00\x00\x00" + bytes(8))
    log.new_segment(3000)
    log.add(Ins("c", [3.0], ts=30), seq=9)
    wal = Path(log.write(tmp_path / "after"))
    snap = tmp_path / "snap"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2), snap)
    (wal / segment_name(1000)).unlink()
    for kw in ({"skip_corrupt": True}, {"to_seq": 2}, {"to_seq": 2, "skip_corrupt": True}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, base=snap, backend="cpu", **kw))
        assert want[:2] == ("error", IncompleteHistoryError), kw
        assert "the log resumes at seq 9, not 3" in want[2]
        assert _outcome(lambda kw=kw: plan_restore(wal, base=snap, **kw)) == want, kw


def test_the_first_record_is_judged_past_the_zero_filled_records_skip_corrupt_skips(
        tmp_path):
    # (review diff43) With --skip-corrupt the restore skips the zero-filled records
    # that lead the log it reads (12 zero bytes each: no seq the writer gave) and judges
    # the record after them; the plan judged the first zero record, as seq 0: it refused
    # a restore from a base whose segment is gone that runs, warned of a gap the restore
    # does not cross, and said a log that starts past seq 0 restores. Without
    # --skip-corrupt (or with a seq 0 target, which a zero record is) the restore judges
    # the zero record, as the plan does.
    log = LogBuilder(created=1000)
    for k in range(3):
        log.add(Ins(f"a{k}", [float(k)], ts=10 + k))
    log.new_segment(2000)
    log.raw(bytes(36))
    log.add(Ins("b", [2.0], ts=20))
    wal = Path(log.write(tmp_path / "wal"))
    snap = tmp_path / "snap"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2), snap)
    (wal / segment_name(1000)).unlink()
    for kw in ({}, {"allow_incomplete_history": True}, {"skip_corrupt": True},
               {"skip_corrupt": True, "allow_incomplete_history": True}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, base=snap, backend="cpu",
                                                       **kw).report.warnings)
        got = _outcome(lambda kw=kw: plan_restore(wal, base=snap, **kw))
        if want[0] == "ok":
            assert got[0] == "ok" and got[1]["warnings"] == want[1], kw
        elif want[1] is IncompleteHistoryError:
            assert got == want, kw
    # From the log's start: zeros (two files of them) before a record of seq 5.
    log = LogBuilder(created=1000, first_seq=5)
    log.raw(bytes(24))
    log.new_segment(2000)
    log.raw(bytes(12 * 5000))  # (more zeros than one read of them)
    log.add(Ins("a", [1.0], ts=10))
    wal = Path(log.write(tmp_path / "start"))
    for kw in ({"skip_corrupt": True}, {"skip_corrupt": True, "to_time": 10},
               {"skip_corrupt": True, "allow_incomplete_history": True}):
        want = _outcome(lambda kw=kw: gpu_pitr.restore(wal, backend="cpu",
                                                       **kw).report.warnings)
        got = _outcome(lambda kw=kw: plan_restore(wal, **kw))
        if want[0] == "ok":
            assert got[0] == "ok" and got[1]["warnings"] == want[1], kw
        else:
            assert want[1] is IncompleteHistoryError and got == want, kw
    assert _outcome(lambda: plan_restore(wal, skip_corrupt=True))[1] is \
        IncompleteHistoryError
    # A seq 0 target stops at the first zero record: nothing past it is judged.
    assert gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True, to_seq=0).report
    assert plan_restore(wal, skip_corrupt=True, to_seq=0)["warnings"] == []


def test_a_strict_plan_warns_that_a_skipped_file_may_leave_a_gap(tmp_path):
    # --skip-corrupt skips a segment whose header is damaged; where it held records,
    # their seqs are missing and a --strict restore refuses the gap, which the dry run
    # (reading no record of it) cannot tell: it passed in silence, and the restore then
    # refused (review walk43). Now it warns; without --strict it need not.
    from gpu_pitr.errors import TargetNotReachedError

    log = LogBuilder(created=1000)
    log.add(Ins("a", [1.0], ts=10))
    log.new_segment(2000)
    log.add(Ins("b", [2.0], ts=20))
    log.new_segment(3000)
    log.add(Ins("c", [3.0], ts=30))
    wal = Path(log.write(tmp_path / "wal"))
    bad = wal / segment_name(2000)
    data = bytearray(bad.read_bytes())
    data[4] = 2  # version 2: the whole file is skipped, its record with it
    bad.write_bytes(bytes(data))
    kw = {"skip_corrupt": True, "strict": True}
    with pytest.raises(TargetNotReachedError, match="records are missing"):
        gpu_pitr.restore(wal, backend="cpu", **kw)
    plan = plan_restore(wal, **kw)
    assert [s["file"] for s in plan["skipped"]] == [str(bad)]
    [warning] = [w for w in plan["warnings"] if "--strict refuses" in w]
    assert warning.startswith(f"{bad}: offset 0: unsupported version 2")
    assert not [w for w in plan_restore(wal, skip_corrupt=True)["warnings"]
                if "--strict refuses" in w]
    # A file with nothing past its header leaves no gap: nothing to warn of.
    bad.write_bytes(bytes(data[:16]))
    assert not [w for w in plan_restore(wal, **kw)["warnings"] if "--strict" in w]


def test_the_skipped_zeros_before_a_log_not_from_seq_zero_are_named_at_every_chunk_size(
        tmp_path):
    # A log that starts with a zero-filled record, then seq 1: with --skip-corrupt the
    # restore's error named the zeros it skipped only where a chunk boundary fell between
    # them and the first record (64-byte chunks), not with the default chunk, where the
    # first record is judged before the chunk's skips are listed (found by
    # tests/test_stop_reading.py's property in CI). Every chunk size says the same, and
    # so does the dry run.
    log = LogBuilder(created=1000, first_seq=1)
    log.raw(bytes(12))
    log.add(Ins("a", [1.0], ts=10))
    log.add(Ins("b", [2.0], ts=11))
    wal = Path(log.write(tmp_path / "wal"))
    texts = set()
    for chunk in (None, 64, 200, 4096):
        with pytest.raises(IncompleteHistoryError) as err:
            gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True, chunk_bytes=chunk)
        texts.add(str(err.value))
    [text] = texts
    assert "it is in what --skip-corrupt skipped" in text and "offset 27, zero-filled" in text
    with pytest.raises(IncompleteHistoryError) as err:
        plan_restore(wal, skip_corrupt=True)
    assert str(err.value) == text



def test_a_seq_or_transaction_target_with_no_log_to_read_is_not_found_alike(tmp_path):
    # (review planprop, its property test) No log is read at all (an empty WAL
    # directory, or none after the base): the restore ends its empty log without the
    # seq or transaction target and raises TargetNotFoundError, strict or not, before
    # strict's check; the dry run passed without strict, and with it refused the
    # target as not reached (TargetNotReachedError, in other words).
    from workloads import Begin

    from gpu_pitr.errors import TargetNotFoundError, TargetNotReachedError

    log = LogBuilder(created=1000)
    log.add(Ins("a", [1.0], ts=5))
    log.add(Begin(7, ts=6))
    log.add(Ins("b", [2.0], ts=7))
    wal = Path(log.write(tmp_path / "wal"))
    snap = tmp_path / "snap"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snap)
    empty = tmp_path / "empty"
    empty.mkdir()
    snaps = tmp_path / "snaps"  # (one damaged snapshot: the error says it was passed over)
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=0), snaps / "s")
    (snaps / "s" / "manifest.json.crc").write_text("00000000\n")
    cases = [{"to_seq": 3}, {"to_transaction": 7}, {"base": snap, "to_seq": 5},
             {"base": snap, "to_transaction": 7}, {"base": snap, "to_transaction": 9},
             {"snapshots": snaps, "to_seq": 5}]
    for kw in cases:
        for strict in (False, True):
            kw = {**kw, "strict": strict}
            want = _outcome(lambda kw=kw: gpu_pitr.restore(empty, backend="cpu", **kw))
            assert want[:2] == ("error", TargetNotFoundError), (kw, want)
            assert _outcome(lambda kw=kw: plan_restore(empty, **kw)) == want, kw
    assert "--snapshots: snapshot " in want[2]
    # A time target is no target the log lacks: passed, warned of, refused by strict.
    assert plan_restore(empty, base=snap, to_time=100)["warnings"]
    with pytest.raises(TargetNotReachedError):
        plan_restore(empty, base=snap, to_time=100, strict=True)
    # The base itself the target: nothing to find in the log.
    assert plan_restore(empty, base=snap, to_seq=2, strict=True)["base"]["path"] == str(snap)
