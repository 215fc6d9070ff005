"""``gpu-pitr archive``: the segments the writer deletes are kept, whole and exact.

The archive must let a restore reach what the WAL directory no longer holds: after
rounds of writing, archiving and the writer's retention (all but the newest three
segments deleted), restoring the archive equals restoring the whole log. It copies
atomically, never changes WAL_DIR, never overwrites a copy with different bytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import reference
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from workloads import (
    Begin,
    Clock,
    Commit,
    Ins,
    LogBuilder,
    Upd,
    dir_state,
    encode_header,
    f32,
    restore_fast,
    restore_ref,
)

import gpu_pitr
from gpu_pitr import archivesums, cli, snapshot
from gpu_pitr.archive import (
    CONFLICT,
    GROWN,
    LOCK_NAME,
    LOST,
    MISSED,
    NEW,
    UNCHANGED,
    UNREADABLE,
    ArchiveError,
    _archive_one,
    archive,
)
from gpu_pitr.archivesums import SUMS_NAME
from gpu_pitr.format.entries import Delete, Insert
from gpu_pitr.format.segments import Segment, list_segments
from gpu_pitr.format.writer import WalWriter, encode_record
from gpu_pitr.synth import write_synthetic_wal


def assert_same_state(got, want) -> None:
    """The same index, and the same stop point and counts in the report."""
    assert (got.ids, got.vectors, got.metadata) == (want.ids, want.vectors, want.metadata)
    for key in ("commit_points_applied", "inserts", "updates", "updates_of_missing",
                "deletes", "deletes_of_missing", "transactions"):
        assert got.report[key] == want.report[key], key
    assert got.report["stop"]["reason"] == want.report["stop"]["reason"]


def _segments(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("wal-*.log"))}


def _retention(wal: Path, keep: int = 3) -> list[str]:
    """What oxirs-vec's checkpoint cleanup does: delete all but the newest ``keep``."""
    names = sorted(p.name for p in wal.glob("wal-*.log"))
    for name in names[:-keep]:
        (wal / name).unlink()
    return names[:-keep]


def test_archive_keeps_what_retention_deletes_and_restores_equal_the_whole_log(tmp_path):
    """Rounds of: the writer appends (rotating often), archive runs, retention deletes.
    The archive then holds every byte ever written, and restores from it (to the latest
    state and to a time in the middle) equal the reference restore of the whole log."""
    wal, arc, whole = tmp_path / "wal", tmp_path / "arc", tmp_path / "whole"
    snap = tmp_path / "snap"
    clock = Clock(1_700_000_000)
    w = WalWriter(wal, clock=clock, max_segment_bytes=400)
    deleted: list[str] = []
    mid = None
    for round_ in range(6):
        for k in range(12):
            i = round_ * 12 + k
            w.append(Insert(f"id{i % 17}", [float(i), -0.0], {"r": str(round_)},
                                       clock.t))
            if k % 5 == 4:
                w.append(Delete(f"id{(i * 7) % 17}", clock.t))
        w.flush()
        # The whole log, as it would be had nothing been deleted.
        whole.mkdir(exist_ok=True)
        for p in wal.glob("wal-*.log"):
            shutil.copyfile(p, whole / p.name)
        before = dir_state(wal)
        result = archive(wal, arc)
        assert result.ok and dir_state(wal) == before
        assert {s.action for s in result.segments} <= {NEW, GROWN, UNCHANGED}
        if round_ == 2:
            mid = clock.t
            # A snapshot of the live WAL directory serves restores of the archive.
            snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snap)
        deleted += _retention(wal)
    w.close()
    result = archive(wal, arc)
    assert result.ok
    assert deleted and result.only_in_archive == len(deleted)
    assert result.archived == len(_segments(whole))
    assert _segments(arc) == _segments(whole)
    for target in ({}, {"to_time": mid}):
        assert_same_state(restore_fast(arc, **target), restore_ref(whole, **target))
    based = restore_fast(arc, base=str(snap))
    assert based.report["base"]["path"] == str(snap)
    want = restore_ref(whole)  # the counts of a restore from a base are the log's after it
    assert (based.ids, based.vectors, based.metadata) == (want.ids, want.vectors, want.metadata)
    # The WAL directory alone has lost its history; the archive has not.
    assert restore_fast(arc).report["first_seq"] == 0
    with pytest.raises(Exception, match="history"):
        restore_fast(wal)


def test_a_grown_segment_is_copied_again_and_a_torn_live_tail_completes(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", f32(1, 2), {"k": "v"}, 1))
    b.add(Begin(7, 2))
    rec = b.add(Ins("b", f32(3, 4), None, 3))
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    b.write(wal)
    name = rec.file
    full = bytes(b.files[name])
    # Copied while the writer was in the middle of its last record: up to that record,
    # which the next run copies (the archive holds whole records, no torn tail).
    (wal / name).write_bytes(full[: rec.end - 3])
    first = archive(wal, arc)
    assert [(s.action, s.size, s.pending) for s in first.segments] == [
        (NEW, rec.offset, rec.end - 3 - rec.offset)]
    held = rec.end - 3 - rec.offset
    assert first.lines()[0] == (f"{name}: new, {rec.offset} bytes ({held} more bytes of a "
                                "record the writer has not finished: the next run copies "
                                "them)")
    assert first.lines()[1].endswith(
        f"0 of them no longer in WAL_DIR; {held} bytes of a record the writer has not "
        "finished wait for the next run")
    again = archive(wal, arc)  # unchanged: no line of its own, the summary says so
    assert [(s.action, s.pending) for s in again.segments] == [(UNCHANGED, held)]
    assert len(again.lines()) == 1 and again.lines()[0].endswith("wait for the next run")
    assert restore_fast(arc).report["torn_tails"] == []
    # The writer finishes the record and commits.
    b.add(Commit(7, 4))
    b.add(Upd("a", f32(5, 6), None, 5))
    b.write(wal)
    second = archive(wal, arc)
    size = len(b.files[name])
    assert [(s.action, s.size, s.added, s.pending) for s in second.segments] == [
        (GROWN, size, size - rec.offset, 0)]
    assert second.lines()[0] == f"{name}: grown by {size - rec.offset} bytes, {size} bytes now"
    assert (arc / name).read_bytes() == bytes(b.files[name])
    got = restore_fast(arc)
    assert got.ids == ["a", "b"] and got.report["torn_tails"] == []
    assert_same_state(got, restore_ref(wal))
    third = archive(wal, arc)
    assert [s.action for s in third.segments] == [UNCHANGED]


def _two_runs(tmp_path) -> tuple[Path, Path, str, bytes]:
    b = LogBuilder()
    for i in range(40):
        b.add(Ins(f"x{i}", f32(i, i), None, i))
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    b.write(wal)
    assert archive(wal, arc).ok
    name = b.cur
    return wal, arc, name, bytes(b.files[name])


@pytest.mark.parametrize("case", ["grown", "same_size", "shorter"])
def test_a_copy_that_is_not_a_prefix_is_a_conflict_and_is_kept(tmp_path, case):
    """The archive's bytes are never replaced by different ones: one line naming the
    file and the first byte that differs, exit 1, the copy and WAL_DIR as they were."""
    wal, arc, name, data = _two_runs(tmp_path)
    changed = bytearray(data)
    changed[100] ^= 0xFF  # inside the first record after the header
    if case == "grown":
        changed += b"\x00" * 40
    elif case == "shorter":
        changed = changed[:-30]
    else:
        changed[100] ^= 0xFF  # undone: the two ends are what is compared
        changed[-5] ^= 0xFF
    (wal / name).write_bytes(changed)
    kept = (arc / name).read_bytes()
    before = dir_state(wal)
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out",
                           str(arc)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert (arc / name).read_bytes() == kept and dir_state(wal) == before
    line = {"grown": "offset 100: differs from the archive's copy",
            "same_size": f"offset {len(data) - 5}: differs from the archive's copy",
            "shorter": f"offset {len(data) - 30}: the file ends there, 30 bytes before the "
                       "archive's copy does: it was truncated or replaced"}[case]
    problem = [x for x in proc.stdout.splitlines() if CONFLICT.upper() in x]
    assert len(problem) == 1 and f"{name}: CONFLICT: {wal / name}" in problem[0]
    assert line in problem[0] and problem[0].endswith("the archive's copy is kept")
    assert not [p for p in arc.iterdir() if ".tmp-" in p.name]


def test_unreadable_and_vanished_segments_are_problems_and_the_rest_is_copied(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    later = "wal-00000000ffffffff.log"
    (wal / later).symlink_to(tmp_path / "unmounted" / "wal.log")
    result = archive(wal, arc)
    assert [(s.name, s.action) for s in result.segments] == [(name, UNCHANGED),
                                                             (later, UNREADABLE)]
    assert "a symbolic link to" in result.segments[1].problem and not result.ok
    # Deleted by the writer between the listing and the copy.
    gone = Segment(wal / "wal-00000000fffffffe.log", len(data), 0)
    lost = _archive_one(gone, arc / gone.name, bytearray(64))
    assert (lost.action, lost.size) == (LOST, 0) and "the archive has none of it" in lost.problem
    shutil.copyfile(wal / name, arc / gone.name)
    kept = _archive_one(gone, arc / gone.name, bytearray(64))
    assert (kept.action, kept.size) == (UNCHANGED, len(data))


def test_cli_json_quiet_and_exit_codes(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    with open(wal / name, "ab") as f:
        f.write(b"\x01\x02")  # a torn tail, as a live writer leaves one
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 0
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out",
                           str(arc), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["archived"] == 1 and doc["only_in_archive"] == 0
    assert doc["segments"] == [{"name": name, "action": UNCHANGED, "size": len(data),
                                "added": 0, "problem": None, "pending": 2}]
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out",
                           str(arc), "-q"], capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    for out in (wal, wal / "sub"):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(wal),
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "is inside WAL_DIR" in proc.stderr
    assert not (wal / "sub").exists()
    with pytest.raises(ArchiveError, match="is the WAL directory .* or inside it"):
        archive(wal, wal / "sub")


def test_one_run_at_a_time(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    fd = os.open(arc / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArchiveError, match="another gpu-pitr archive or expire is running"):
            archive(wal, arc)
    finally:
        os.close(fd)
    assert archive(wal, arc).ok


def test_a_copy_that_cannot_be_written_leaves_the_previous_one(tmp_path):
    """A full disk, modelled by a file-size limit: the segment's line names the copy and
    why (the run goes on with the others), exit 1, the previous copy byte for byte and
    no temp file left."""
    import resource

    wal, arc, name, data = _two_runs(tmp_path)
    with open(wal / name, "ab") as f:
        f.write(b"\x00" * (64 << 10))
    kept = (arc / name).read_bytes()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))

    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out",
                           str(arc)], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.splitlines()[0] == (
        f"{name}: FAILED: {arc / name}: cannot write the archive copy: File too large; "
        "the previous copy is kept")
    assert (arc / name).read_bytes() == kept
    assert sorted(p.name for p in arc.iterdir()) == sorted([LOCK_NAME, SUMS_NAME, name])


def test_runs_beside_a_live_writer_never_conflict_and_end_equal(tmp_path):
    """A writer appending and rotating on a thread (small buffer: records reach the file
    in pieces) while archive runs again and again: no run finds a problem, each copy is
    a prefix of its segment, and a last run after the writer closed holds every byte."""
    import threading

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    clock = Clock(1_800_000_000)
    w = WalWriter(wal, clock=clock, max_segment_bytes=6000, buffer_size=100)
    done = threading.Event()

    def write():
        try:
            for i in range(1500):
                w.append(Insert(f"v{i % 97}", [float(i)] * 8, {"i": str(i)} if i % 3 else None,
                                clock.t))
                if i % 50 == 0:
                    w.flush()
        finally:
            w.close()
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    runs = 0
    while not done.is_set() or runs == 0:
        result = archive(wal, arc)
        runs += 1
        assert result.ok, result.lines()
        for name, data in _segments(arc).items():
            assert (wal / name).read_bytes().startswith(data)
    thread.join()
    assert archive(wal, arc).ok
    assert _segments(arc) == _segments(wal) and len(_segments(wal)) > 3
    assert_same_state(restore_fast(arc), restore_ref(wal))


def test_a_directory_that_is_not_an_archive_is_not_written_to(tmp_path):
    """Only a new or empty directory becomes an archive: the arguments swapped by a slip
    (the live WAL_DIR as --out) would put back what retention deleted, and the lock file
    would then let expire delete the writer's segments."""
    wal, arc, name, data = _two_runs(tmp_path)
    live = tmp_path / "live"
    shutil.copytree(wal, live)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    (other / "b").mkdir()
    left = len(_segments(live))
    for out, what in ((live, f"{left} segment file{'s' if left > 1 else ''} (a WAL directory?)"),
                      (other, "b and 1 more")):
        before = dir_state(out)
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "archive", str(arc), "--out",
                               str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and dir_state(out) == before, proc.stderr
        assert proc.stderr == (f"gpu-pitr: error: {out}: not an archive made by gpu-pitr "
                               f"archive, and not empty: it holds {what}; give a new or "
                               "empty directory\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert archive(wal, empty).ok and _segments(empty) == _segments(wal)
    assert archive(wal, empty).ok  # an archive now: its lock file says so


def test_an_archive_that_cannot_be_made_is_one_line_naming_it(tmp_path, capsys):
    """An --out whose parent is missing (a mistyped path: not made, as mkdir -p would)
    or that is a file: exit 1, one line naming it and why; nothing is made."""
    wal, _, _, _ = _two_runs(tmp_path)
    (tmp_path / "file").write_bytes(b"precious")
    before = dir_state(tmp_path)
    for out, why in ((tmp_path / "nope" / "arc",
                      "cannot create the archive: its parent directory does not exist"),
                     (tmp_path / "file", "exists and is not a directory")):
        assert cli.main(["archive", str(wal), "--out", str(out)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == f"gpu-pitr: error: {out}: {why}\n"
    assert dir_state(tmp_path) == before


def test_a_name_in_the_archive_that_is_not_a_file_is_a_conflict(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    (arc / name).unlink()
    (arc / name).mkdir()
    result = archive(wal, arc)
    assert [(s.action, s.problem) for s in result.segments] == [
        (CONFLICT, f"{arc / name}: in the archive, but not a file; left as it is")]
    assert (arc / name).is_dir() and not result.ok


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 5), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("new")),
    st.tuples(st.just("retention"), st.integers(1, 3)),
    st.tuples(st.just("archive")),
), max_size=25))
# Found by the search: an 8-byte torn tail of zeros (seq 0), deleted, then a segment
# whose first record is seq 2**56.
@example(ops=[("new",), ("append", 0, bytes(4)), ("append", 0, bytes(4)), ("archive",),
              ("new",), ("retention", 1), ("append", 0, bytes(7) + b"\x01\x00"),
              ("append", 0, bytes(3))])
def test_random_histories_of_appends_rotations_and_retention(tmp_path_factory, ops):
    """Against a model: after every run the archive holds, for each segment WAL_DIR
    still has, exactly its bytes (the newest holding more than a header: up to a record
    not whole yet, framed by tests/reference.py), and for each one deleted, the bytes of
    its last run; every run's actions say what changed; nothing is ever a problem but
    ``missed``, and that only where it can be (its bytes copied all the same)."""
    root = tmp_path_factory.mktemp("h")
    wal, arc = root / "wal", root / "arc"
    wal.mkdir()
    created = 0x6000_0000
    archived: dict[str, bytes] = {}
    for op in [*ops, ("archive",)]:
        names = sorted(p.name for p in wal.iterdir())
        if op[0] == "append" and names:
            with open(wal / names[op[1] % len(names)], "ab") as f:
                f.write(op[2])
        elif op[0] == "new":
            created += 1
            (wal / f"wal-{created:016x}.log").write_bytes(b"WALV\x01\x00\x00\x00"
                                                           + created.to_bytes(8, "little"))
        elif op[0] == "retention":
            for name in names[:-op[1]]:
                (wal / name).unlink()
        elif op[0] == "archive":
            now = {p.name: p.read_bytes() for p in wal.iterdir()}
            if now:  # the newest segment's copy ends before a record not yet whole
                # (newer files of a header or less do not count: a writer rotating
                # creates the next file before it flushes the one it leaves)
                order = sorted(now, key=str.encode)
                newest = ([n for n in order if len(now[n]) > 16] or order)[-1]
                torn = [t[2] for t in reference.frame_log(wal)
                        if t[0] == "torn" and t[1] == newest and t[2] >= 16]
                now[newest] = now[newest][:torn[0]] if torn else now[newest]
            result = archive(wal, arc)
            # Random bytes make random seqs: the first new segment's first record may
            # not follow the seq the archive's segment before it ends at. When WAL_DIR
            # no longer has that one, archive names it missed, and copies it all the same.
            missed = [s.name for s in result.segments if s.action == MISSED]
            assert len(missed) <= 1 and result.ok == (not missed)
            for name in missed:
                before = sorted(n for n in archived if n < name)
                assert name not in archived and before and before[-1] not in now
            want = {n: (NEW if n not in archived else GROWN if len(d) > len(archived[n])
                        else UNCHANGED) for n, d in now.items()}
            assert {s.name: NEW if s.action == MISSED else s.action
                    for s in result.segments} == want
            archived.update(now)
            assert _segments(arc) == archived
            assert result.only_in_archive == len(set(archived) - set(now))
            # Every copy has its block sums, of the bytes it holds (zlib's CRC-32 here).
            assert (archivesums.read(arc) or {}) == {n: archivesums.SegmentSums(
                len(d), tuple(zlib.crc32(d[i:i + archivesums.BLOCK])
                              for i in range(0, len(d), archivesums.BLOCK)))
                for n, d in archived.items()}


@pytest.mark.parametrize("kernel_copies", [0, 1000, None], ids=["refused", "partly", "all"])
def test_copies_are_exact_whether_the_kernel_copies_all_part_or_none(tmp_path, monkeypatch,
                                                                      kernel_copies):
    """``copy_file_range`` may be refused by the file system (EXDEV, ENOSYS, ...) at the
    start or midway; the plain copy goes on from where it stopped."""
    import errno as errno_

    from gpu_pitr import archive as archive_mod

    real = os.copy_file_range
    copied = [0]

    def flaky(src, dst, count, offset_src=None, offset_dst=None):
        if kernel_copies is not None and copied[0] >= kernel_copies:
            raise OSError(errno_.EXDEV, "Invalid cross-device link")
        if kernel_copies is not None:
            count = min(count, kernel_copies - copied[0])
        n = real(src, dst, count, offset_src, offset_dst)
        copied[0] += n
        return n

    monkeypatch.setattr(archive_mod.os, "copy_file_range", flaky)
    monkeypatch.setattr(archive_mod, "_COPY_CHUNK", 777)  # many pieces for the plain copy
    wal, arc, name, data = _two_runs(tmp_path)
    more = encode_record(40, bytes(range(256)) * 9)  # whole: the newest segment's copy
    with open(wal / name, "ab") as f:                # ends where a record does
        f.write(more)
    result = archive(wal, arc)
    assert [(s.action, s.added) for s in result.segments] == [(GROWN, len(more))]
    assert (arc / name).read_bytes() == data + more
    assert copied[0] == (min(kernel_copies, len(data)) if kernel_copies is not None
                         else 2 * len(data) + len(more))


def test_verify_of_the_archive_names_a_segment_missed_between_runs(tmp_path, capsys):
    """What the README promises: a segment the writer deleted before any run copied it
    leaves a sequence-number gap, which ``verify ARCHIVE`` reports as damage (exit 1)."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    clock = Clock(1_750_000_000)
    w = WalWriter(wal, clock=clock)
    for k in range(3):
        for i in range(4):
            w.append(Insert(f"s{k}-{i}", [1.0, float(i)], None, clock.t))
        w.flush()
        if k == 0:
            assert archive(wal, arc).ok
        if k < 2:
            w.rotate()
    w.close()
    missed = sorted(p.name for p in wal.glob("wal-*.log"))[1]
    (wal / missed).unlink()  # retention ran before the next archive run
    assert archive(wal, arc).ok
    assert cli.main(["verify", str(arc)]) == 1
    out = capsys.readouterr().out
    assert "seq jumps from 3 to 8" in out


def test_an_empty_wal_dir_archives_nothing_and_says_so_unless_quiet(tmp_path):
    (tmp_path / "wal").mkdir()
    cmd = [sys.executable, "-m", "gpu_pitr", "archive", str(tmp_path / "wal"), "--out",
           str(tmp_path / "arc")]
    loud = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0
    assert loud.stderr.startswith("note: no wal-<16 hex digits>.log files in ")
    assert "0 segments of" in loud.stdout
    quiet = subprocess.run([*cmd, "-q"], capture_output=True, text=True, timeout=300)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_a_link_in_the_archive_is_not_taken_for_a_copy(tmp_path):
    """An archive entry that links to the segment itself would vanish with it."""
    wal, arc, name, data = _two_runs(tmp_path)
    (arc / name).unlink()
    (arc / name).symlink_to(wal / name)
    result = archive(wal, arc)
    assert [(s.action, s.problem) for s in result.segments] == [
        (CONFLICT, f"{arc / name}: in the archive, but a symbolic link, not a copy; left as "
                   "it is")]
    assert (arc / name).is_symlink()


def test_a_segment_deleted_after_the_listing_with_bytes_not_yet_copied_is_lost(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    gone = Segment(path=wal / "gone" / name, size=len(data) + 50, created=0)
    lost = _archive_one(gone, arc / name, bytearray(64))
    assert (lost.action, lost.size) == (LOST, len(data))
    assert f"the archive holds {len(data)} of its {len(data) + 50} bytes" in lost.problem
    whole = _archive_one(Segment(gone.path, len(data), 0), arc / name, bytearray(64))
    assert (whole.action, whole.size, whole.problem) == (UNCHANGED, len(data), None)


@pytest.mark.parametrize("mode, kept", [(0o600, 0o600), (0o640, 0o640), (0o044, 0o644)])
def test_copies_keep_the_segments_permission_bits(tmp_path, mode, kept):
    """The segment's bits, plus the owner's read and write: later runs read the copy."""
    wal, arc, name, data = _two_runs(tmp_path)
    (wal / name).chmod(mode)
    with open(wal / name, "ab") as f:
        f.write(encode_record(40, b"\x00"))
    assert archive(wal, arc).ok
    assert (arc / name).stat().st_mode & 0o777 == kept


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    (arc / LOCK_NAME).unlink()
    (arc / LOCK_NAME).symlink_to(wal / "planted")
    with pytest.raises(ArchiveError, match="cannot take the archive's lock: it is a symbolic"):
        archive(wal, arc)
    assert not (wal / "planted").exists()


def test_another_mount_of_the_wal_dir_is_refused(tmp_path, monkeypatch):
    """A bind mount (or NFS) of WAL_DIR has another path but the same device and inode;
    simulated here by making ``os.stat`` of the other path answer for WAL_DIR."""
    from gpu_pitr import outputs

    wal, arc, name, data = _two_runs(tmp_path)
    mount = tmp_path / "mnt"
    mount.mkdir()
    real_stat = os.stat

    def stat_(p, *a, **k):
        return real_stat(wal if os.fspath(p) == os.fspath(mount) else p, *a, **k)

    monkeypatch.setattr(outputs.os, "stat", stat_)
    with pytest.raises(ArchiveError, match="is the WAL directory .* or inside it"):
        archive(wal, mount / "arc")
    with pytest.raises(ArchiveError, match="is the WAL directory .* or inside it"):
        archive(wal, mount)
    assert not (mount / "arc").exists()
    assert archive(wal, tmp_path / "elsewhere").ok


def test_a_stale_temp_of_a_segment_gone_from_wal_dir_is_removed(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = arc / f".wal-00000000000000aa.log.tmp-{int(dead.stdout)}-0123abcd"
    mine = arc / f".wal-00000000000000aa.log.tmp-{os.getpid()}-0123abcd"
    stale.write_bytes(b"half a copy")
    mine.write_bytes(b"a live run's copy")
    assert archive(wal, arc).ok
    assert not stale.exists() and mine.exists()


def test_a_name_with_a_trailing_newline_is_not_a_segment(tmp_path):
    wal, arc, name, data = _two_runs(tmp_path)
    (wal / (name[:-4] + "0.log\n")).write_bytes(data)
    assert [s.name for s in list_segments(wal)] == [name]
    assert [s.name for s in archive(wal, arc).segments] == [name]


def test_a_mount_of_a_directory_of_the_wal_tree_is_refused_too(tmp_path, monkeypatch):
    """A bind mount of WAL_DIR/sub (or a file system mounted inside WAL_DIR): the
    archive's path names neither, but its identity is a directory of WAL_DIR's tree.
    Simulated by making ``os.stat`` of the mount point answer for WAL_DIR/sub."""
    from gpu_pitr import outputs

    wal, arc, name, data = _two_runs(tmp_path)
    (wal / "sub").mkdir()
    mount = tmp_path / "subbind"
    mount.mkdir()
    real_stat = os.stat

    def stat_(p, *a, **k):
        return real_stat(wal / "sub" if os.fspath(p) == os.fspath(mount) else p, *a, **k)

    monkeypatch.setattr(outputs.os, "stat", stat_)
    for target in (mount, mount / "arc"):
        with pytest.raises(ArchiveError, match="is the WAL directory .* or inside it"):
            archive(wal, target)
    assert sorted(os.listdir(mount)) == [] and sorted(os.listdir(wal / "sub")) == []
    # restore's --out is checked the same way, the output itself included.
    for out in (str(mount / "o.npz"), f"{mount}/"):
        with pytest.raises(SystemExit) as usage:
            cli.main(["restore", str(wal), "--out", out])
        assert usage.value.code == 2
    monkeypatch.undo()
    assert cli.main(["restore", str(wal), "--out", str(mount / "o.npz"), "-q"]) == 0


def test_a_read_error_inside_a_segment_names_its_offset(tmp_path, monkeypatch):
    from gpu_pitr import archive as archive_mod

    wal, arc, name, data = _two_runs(tmp_path)
    with open(wal / name, "ab") as f:
        f.write(b"\x00" * 10)
    real = os.preadv

    def failing(fd, bufs, pos, *a):
        if os.readlink(f"/proc/self/fd/{fd}") == str(wal / name) and pos >= 512:
            raise OSError(5, "Input/output error")
        return real(fd, bufs, pos, *a)

    monkeypatch.setattr(archive_mod, "_COPY_CHUNK", 512)
    monkeypatch.setattr(archive_mod.os, "preadv", failing)
    result = archive(wal, arc)
    assert [(s.action, s.problem) for s in result.segments] == [
        (UNREADABLE, f"{wal / name}: offset 512: cannot read the file: Input/output error")]
    assert (arc / name).read_bytes() == data


def test_the_counts_are_of_files_as_wal_dir_is_at_the_end(tmp_path, monkeypatch):
    """A segment the writer deleted during the run counts as no longer in WAL_DIR, an
    empty one deleted loses nothing, and a link in the archive is not a held copy."""
    from gpu_pitr import archive as archive_mod

    wal, arc, name, data = _two_runs(tmp_path)
    empty = "wal-00000000ffff0000.log"
    (wal / empty).write_bytes(b"")
    (arc / "wal-0000000000000001.log").symlink_to(wal / name)
    listed = list_segments(wal)

    def listing_then_retention(d):
        if Path(d) == wal and (wal / name).exists():
            for p in wal.iterdir():
                p.unlink()
            return listed
        return list_segments(d)

    monkeypatch.setattr(archive_mod, "list_segments", listing_then_retention)
    result = archive(wal, arc)
    assert [(s.name, s.action) for s in result.segments] == [(name, UNCHANGED),
                                                             (empty, UNCHANGED)]
    assert (result.archived, result.only_in_archive) == (1, 1)


def test_a_directory_that_cannot_be_listed_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """WAL_DIR or the archive unlistable (EACCES without root's powers): one line naming
    the directory, from every command (verify: exit 2, it found no damage)."""
    import errno as errno_

    wal, arc, name, data = _two_runs(tmp_path)
    real = os.scandir
    denied = {str(wal)}

    def scandir(p="."):
        if os.fspath(p) in denied:
            raise PermissionError(errno_.EACCES, "Permission denied", os.fspath(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    for argv, code in ((["inspect", str(wal)], 1), (["verify", str(wal)], 2),
                       (["archive", str(wal), "--out", str(arc)], 1)):
        assert cli.main(argv) == code
        assert capsys.readouterr().err == (
            f"gpu-pitr: error: {wal}: cannot list the directory: Permission denied\n")
    denied = {str(arc)}
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    assert capsys.readouterr().err == (
        f"gpu-pitr: error: {arc}: cannot list the directory: Permission denied\n")


def _live_log(tmp_path: Path):
    """Two segments; the newest one's last record is what a writer is writing."""
    b = LogBuilder()
    b.add(Ins("a", [1.0, 2.0], None, 10))
    b.new_segment(0x6000000)
    b.add(Ins("b", [3.0, 4.0], {"k": "v"}, 11))
    last = b.add(Ins("c", [5.0, 6.0], None, 12))
    wal = Path(b.write(tmp_path / "wal"))
    return wal, last, (wal / last.file).read_bytes()


@pytest.mark.parametrize("cut", [5, 12, 20])  # inside the record header; in the payload
def test_the_newest_segments_copy_goes_on_to_the_end_of_the_record_being_written(
        tmp_path, monkeypatch, cut):
    """The writer's buffer reached the file up to inside a record when archive took its
    size, and the rest a moment later (here: as archive frames it): the copy ends where
    the record does, so ``verify`` of the archive finds no torn tail."""
    import gpu_pitr.archive as archive_module
    from gpu_pitr.verify import verify_wal

    wal, last, data = _live_log(tmp_path)
    path = wal / last.file
    path.write_bytes(data[:last.offset + cut])
    real = archive_module.record_end

    def writer_goes_on(p, at):
        if p == path and path.stat().st_size < len(data):
            with open(path, "ab") as f:
                f.write(data[last.offset + cut:])
        return real(p, at)

    monkeypatch.setattr(archive_module, "record_end", writer_goes_on)
    arc = tmp_path / "arc"
    result = archive(wal, arc)
    assert [(s.name, s.action, s.size) for s in result.segments][-1] == (
        last.file, NEW, len(data))
    assert _segments(arc) == _segments(wal) and verify_wal(arc).problems == []


def test_a_record_the_writer_has_not_finished_is_left_for_the_next_run(tmp_path):
    """No more bytes came by the time archive looked again (a writer's buffer waiting
    for more records, a stalled writer, or a crash): the newest segment's copy ends
    where that record starts, so the archive holds whole records and ``verify`` of it
    finds no torn tail; a later run copies the record once the writer has finished it,
    or as it stands once a newer segment shows the writer has gone on without it."""
    from gpu_pitr.archive import whole_records
    from gpu_pitr.verify import verify_wal

    wal, last, data = _live_log(tmp_path)
    path = wal / last.file
    for cut in (1, 12, 20):  # inside the record header; the header whole; the payload
        path.write_bytes(data[:last.offset + cut])
        arc = tmp_path / f"arc{cut}"
        assert [(s.action, s.size, s.pending) for s in archive(wal, arc).segments][-1] == (
            NEW, last.offset, cut)
        assert verify_wal(arc).problems == []
        assert whole_records(path, last.offset + cut) == last.offset
    path.write_bytes(data)
    assert [(s.action, s.size, s.pending) for s in archive(wal, arc).segments][-1] == (
        GROWN, len(data), 0)
    assert verify_wal(arc).problems == [] and _segments(arc) == _segments(wal)
    # A crash: the record stays torn, and the writer starts a new segment.
    path.write_bytes(data[:last.offset + 20])
    arc = tmp_path / "arc_crash"
    assert archive(wal, arc).segments[-1].size == last.offset
    b = LogBuilder(created=0x6000001)
    b.add(Ins("d", [7.0, 8.0], None, 13), seq=0)
    b.write(wal)
    assert [(s.action, s.size) for s in archive(wal, arc).segments][-2:] == [
        (GROWN, last.offset + 20), (NEW, len(b.files[b.cur]))]
    # (the writer reopened: seq from 0, a notice)
    assert [p.kind for p in verify_wal(arc).problems] == ["torn_tail", "seq_restart"]
    # Where the size given ends: at a record boundary it stays; inside a record, the
    # record's end when the file holds it, the second segment header's likewise.
    path.write_bytes(data)
    assert whole_records(path, last.offset) == last.offset
    assert whole_records(path, last.offset + 3) == len(data)
    assert whole_records(path, len(data)) == len(data)
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 10))
    at = b.raw(encode_header(0x5F5E100))
    b.add(Ins("b", [2.0], None, 11), seq=0)
    two = Path(b.write(tmp_path / "two"))
    one = next(two.iterdir())
    assert whole_records(one, at + 9) == at + 16
    assert whole_records(one, 7) == 16  # a header being written
    cut = tmp_path / "cut" / one.name  # ...and no more of it in the file yet: as it stands
    cut.parent.mkdir()
    cut.write_bytes(one.read_bytes()[:7])
    assert whole_records(cut, 7) == 7


def test_a_copy_made_inside_the_record_being_written_is_never_cut_back(tmp_path):
    """An archive whose copy of the newest segment ends inside the record being written
    (copied as it stood: a version before ``whole_records``, or a copy by hand). The
    writer has added a byte of that record since, and has not finished it: the copy is
    not shorter than before (a conflict, "truncated"), it stays as it is; once the
    record is whole the rest is copied."""
    wal, last, data = _live_log(tmp_path)
    path = wal / last.file
    arc = tmp_path / "arc"
    path.write_bytes(data[:last.offset + 12])
    archive(wal, arc)
    shutil.copyfile(path, arc / last.file)  # the copy as it stood, inside the record
    path.write_bytes(data[:last.offset + 13])
    got = archive(wal, arc)
    assert got.ok and got.problems == [], got.lines()
    assert [(s.action, s.size) for s in got.segments][-1] == (UNCHANGED, last.offset + 12)
    assert (arc / last.file).read_bytes() == data[:last.offset + 12]
    path.write_bytes(data)
    assert [(s.action, s.size) for s in archive(wal, arc).segments][-1] == (GROWN, len(data))
    assert _segments(arc) == _segments(wal)


def test_segments_the_writer_deleted_before_any_run_copied_them_are_named(tmp_path,
                                                                          capsys):
    """Retention deleted segments between two runs before either saw them: the first
    segment the later run copies does not go on from the archive's last one, which
    WAL_DIR no longer has. That run says so (``missed``, exit 1), once."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))                 # seq 0, 1: segment A
    b.add(Ins("b", [2.0], None, 2))
    names = [b.cur]
    for k, ident in enumerate("cdef"):              # B: 2, 3 ... E: 8, 9
        names.append(b.new_segment(0x6000000 + k))
        b.add(Ins(ident, [3.0], None, 3 + k))
        b.add(Ins(ident + "2", [3.0], None, 3 + k))
    wal, arc, full = tmp_path / "wal", tmp_path / "arc", tmp_path / "full"
    b.write(full)
    wal.mkdir()

    def writer_has(*which):  # WAL_DIR as the writer and its retention left it
        for p in wal.iterdir():
            p.unlink()
        for i in which:
            shutil.copyfile(full / names[i], wal / names[i])

    writer_has(0)
    assert archive(wal, arc).ok
    writer_has(1, 2)  # A deleted after the run copied it: nothing missed
    assert archive(wal, arc).ok
    writer_has(4)  # D (seq 6, 7) deleted before any run saw it
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{names[4]}: MISSED: copied ({(full / names[4]).stat().st_size} bytes), but its "
        f"first record is seq 8 and the archive's {names[2]} ends at seq 5: 2 records "
        "were in segments the writer deleted before archive copied them (they are not in "
        "the archive: restores across them lack what they did); run archive more often "
        "than the writer rotates segments"]
    assert [(s.name, s.action) for s in archive(wal, arc).segments] == [
        (names[4], UNCHANGED)]  # said once
    # A writer reopened without recovery numbers from 0: no gap to name.
    b2 = LogBuilder()
    b2.add(Ins("a", [1.0], None, 1))
    first = b2.cur
    later = b2.new_segment(0x6000000)
    b2.add(Ins("b", [1.0], None, 2), seq=0)
    full2, wal2, arc2 = _first_archived(tmp_path, b2, first, "2")
    (wal2 / first).unlink()
    shutil.copyfile(full2 / later, wal2 / later)
    assert [s.action for s in archive(wal2, arc2).segments] == [NEW]


def test_zero_filled_records_leading_the_first_segment_copied_hide_no_missed_one(tmp_path):
    """The first segment a run copies after segments the writer deleted unseen starts
    with zero-filled records (a crash after the file was extended), then seq 8 where the
    archive's last segment ends at seq 5. Their seq 0 is none the writer gave (as
    ``verify`` of the archive judges them, and as the end of a segment's are): not a
    writer reopened. The run took it for one and named nothing (exit 0); it names the
    2 records missed. Zeros before a seq 0 are a writer reopened still."""
    for first_seq, missed in ((8, True), (0, False)):
        b = LogBuilder()
        b.add(Ins("a", [1.0], None, 1))             # seq 0, 1: segment A
        b.add(Ins("b", [2.0], None, 2))
        first = b.cur
        b.new_segment(0x6000000)                    # B: seq 2 .. 7, deleted unseen
        for k in range(6):
            b.add(Ins(f"c{k}", [3.0], None, 3))
        later = b.new_segment(0x6000001)            # C: zeros, then seq 8 (or 0)
        b.raw(bytes(12 * 3))
        b.add(Ins("d", [4.0], None, 4), seq=first_seq)
        full, wal, arc = _first_archived(tmp_path, b, first, str(first_seq))
        (wal / first).unlink()
        shutil.copyfile(full / later, wal / later)
        got = archive(wal, arc)
        assert [(s.name, s.action) for s in got.segments] == [
            (later, MISSED if missed else NEW)]
        assert got.ok == (not missed)
        if missed:
            assert got.segments[0].problem.startswith(
                f"copied (74 bytes), but its first record is seq 8 and the archive's "
                f"{first} ends at seq 1: 6 records were in segments the writer deleted")


def _first_archived(tmp_path, b, first: str, tag: str = ""):
    """``b``'s log written whole to ``full<tag>``; a WAL directory ``wal<tag>`` holding
    only its file ``first``, archived into ``arc<tag>``. Returns the three."""
    full, wal, arc = (tmp_path / f"{name}{tag}" for name in ("full", "wal", "arc"))
    b.write(full)
    wal.mkdir()
    shutil.copyfile(full / first, wal / first)
    assert archive(wal, arc).ok
    return full, wal, arc


def test_a_torn_record_whose_seq_was_written_is_where_the_next_segment_goes_on_from(
        tmp_path):
    """The archive's copy of a segment ends in a torn record of 8 bytes: its seq, no
    more (a crash). The writer's next segment starts at the seq after it: no records
    went missing, nothing is named (taken from the whole record before, seq 1, this
    was a "missed" segment of one record)."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))                 # seq 0
    b.add(Ins("b", [2.0], None, 2))                 # seq 1
    torn = b.add(Ins("c", [3.0], None, 3))          # seq 2: only its seq is written
    first = b.cur
    b.truncate(first, torn.offset + 8)
    later = b.new_segment(0x6000000)
    b.add(Ins("d", [4.0], None, 4), seq=3)
    full, wal, arc = _first_archived(tmp_path, b, first)
    shutil.copyfile(full / first, arc / first)  # (the copy as it stands, torn record too)
    (wal / first).unlink()
    shutil.copyfile(full / later, wal / later)
    got = archive(wal, arc)
    assert [(s.name, s.action) for s in got.segments] == [(later, NEW)] and got.ok


def test_a_torn_tail_of_zeros_is_no_seq_the_next_segment_goes_on_from(tmp_path):
    """The archive's copy of a segment ends in zeros the writer never wrote (a crash
    after the file was extended): a zero-filled record, then 8 to 11 zero bytes, short of
    another. Those are no seq (as the whole zero record is none): the next segment
    starts at the seq after the last record, seq 2, and nothing is named. Taken as a
    torn record of seq 0, it was named missed ("ends at seq 0: 1 records were in
    segments the writer deleted"), which ``verify`` of the archive does not find."""
    for tail in (8, 11):
        b = LogBuilder()
        b.add(Ins("a", [1.0], None, 1))             # seq 0
        b.add(Ins("b", [2.0], None, 2))             # seq 1
        b.raw(bytes(12 + tail))
        first = b.cur
        later = b.new_segment(0x6000000)
        b.add(Ins("d", [4.0], None, 4), seq=2)
        full, wal, arc = _first_archived(tmp_path, b, first, str(tail))
        shutil.copyfile(full / first, arc / first)  # (the copy as it stands, zeros too)
        (wal / first).unlink()
        shutil.copyfile(full / later, wal / later)
        got = archive(wal, arc)
        assert [(s.name, s.action) for s in got.segments] == [(later, NEW)] and got.ok


def test_a_segment_copied_while_still_empty_then_deleted_is_not_a_silent_gap(tmp_path,
                                                                            capsys):
    """A run copies the newest segment while it is still empty (a rotation created it,
    its header still in the writer's buffer); the writer fills it and rotates on, and
    retention deletes it before the next run. The records it held are not in the
    archive: that run names the gap (``missed``, exit 1), from the seq of the segment
    before the empty copy, as it does when the copy held a record."""
    clock = Clock(1_780_000_000)
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    w = WalWriter(wal, clock=clock, max_segment_bytes=4000, buffer_size=1024)
    for _ in range(30):
        w.append(Insert(f"v{w.next_seq % 7}", [1.0] * 8, None, clock.t))
    w.rotate()
    names = sorted(p.name for p in wal.iterdir())
    assert [(wal / n).stat().st_size for n in names][-1] == 0
    assert archive(wal, arc).ok
    for _ in range(600):
        w.append(Insert(f"v{w.next_seq % 7}", [1.0] * 8, None, clock.t))
    w.close()
    _retention(wal)
    assert names[-1] not in {p.name for p in wal.iterdir()}
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and ": MISSED: copied (" in err[0], err
    assert (f"the archive's {names[0]} ends at seq 29 ({names[1]} after it was copied "
            "before the writer had written a record there)") in err[0]


def test_a_parent_that_can_be_written_but_not_read_takes_a_new_archive(tmp_path,
                                                                       monkeypatch, capsys):
    """A parent directory of mode -wx (a user may create in it, not open it): the new
    archive's parent cannot be opened to be synced. The first run copies all the same
    (it used to fail with a bare "[Errno 13] Permission denied" naming the parent, and
    leave an empty directory behind for a second run to fill)."""
    from gpu_pitr import archive as archive_module

    wal, arc, name, data = _two_runs(tmp_path)
    new = tmp_path / "drop" / "arc"
    new.parent.mkdir()
    real = archive_module.fsync_path

    def no_read(path, flags):  # what the kernel says to a non-root user, for -wx
        if Path(path) == new.parent:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags)

    monkeypatch.setattr(archive_module, "fsync_path", no_read)
    assert cli.main(["archive", str(wal), "--out", str(new), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert _segments(new) == _segments(wal)


def test_a_copy_that_changed_in_the_middle_is_a_conflict_even_at_the_same_size(tmp_path):
    """A bit flipped in the middle of the archive's copy of a segment larger than 64 KiB
    (a bad disk; or the segment rewritten in place) is a conflict on the next run, not
    ``unchanged``: its bytes are compared whole, as those of a grown segment are."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    w = WalWriter(wal, created=1_770_000_000, buffer_size=4096)
    for i in range(3000):
        w.append(Insert(f"v{i % 100}", [float(i)] * 64, None, 1_770_000_000 + i))
    w.close()
    assert archive(wal, arc).ok
    (copy,) = arc.glob("wal-*.log")
    data = bytearray(copy.read_bytes())
    assert len(data) > 4 * (1 << 16)
    at = len(data) // 3
    data[at] ^= 1
    copy.write_bytes(bytes(data))
    (row,) = archive(wal, arc).segments
    assert row.action == CONFLICT and f"offset {at}: differs" in row.problem


def test_a_reader_of_stdout_that_goes_away_does_not_stop_the_copy(tmp_path):
    """``gpu-pitr archive WAL --out A | head -1`` from cron: the pipe closes before the
    lines are written; every segment is still copied (the writer may delete the rest
    next)."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=1 << 20, segments=4, dim=8)
    arc = tmp_path / "arc"
    cmd = [sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out", str(arc)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first segment's line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err == b""
    assert sorted(p.name for p in arc.iterdir() if p.name.startswith("wal-")) == sorted(
        p.name for p in wal.iterdir())
    for seg in wal.iterdir():
        assert (arc / seg.name).read_bytes() == seg.read_bytes()


def test_a_directory_that_lists_but_cannot_be_searched_is_named(tmp_path, monkeypatch, capsys):
    """WAL_DIR readable but not searchable (mode r-- without root's powers): its names
    list, but every open fails, the expire marker's first. The line names the directory,
    not a marker file that is not there (verify: exit 2, it found no damage)."""
    wal, arc, name, data = _two_runs(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if os.fspath(p) == str(wal) and mode & os.X_OK else real(p, mode, **kw)))
    real_open = open

    def denied_open(p, *args, **kwargs):  # what the kernel then does to every open
        if isinstance(p, (str, os.PathLike)) and os.path.dirname(os.fspath(p)) == str(wal):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied_open)
    line = (f"gpu-pitr: error: {wal}: cannot search the directory: Permission denied (its "
            "names can be listed, but no file in it can be opened without the x permission)\n")
    for argv, code in ((["restore", str(wal), "--out", str(tmp_path / "o.npz")], 1),
                       (["inspect", str(wal)], 1), (["verify", str(wal)], 2),
                       (["archive", str(wal), "--out", str(arc)], 1)):
        assert cli.main(argv) == code, argv
        assert capsys.readouterr().err == line, argv
    assert not (tmp_path / "o.npz").exists()


def test_the_archive_is_listed_a_bounded_number_of_times_however_many_copies(
        tmp_path, monkeypatch):
    """Killed runs' temp files are removed once, under the archive's lock; each copy
    used to list the whole archive twice more (its own stale temps, before and after),
    so a first run over 5,000 segments spent 13 of its 17 s in those listings. A
    killed run's temp of a segment copied now is still removed."""
    from gpu_pitr import tempfiles

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    b = LogBuilder()
    for k in range(60):
        if k:
            b.new_segment(0x5F5E100 + k)
        b.add(Ins(f"id{k}", [float(k)], None, 1000 + k))
    first = sorted(b.files)[0]
    wal.mkdir()
    (wal / first).write_bytes(b.files[first])
    assert archive(wal, arc).ok  # an archive now, of one segment
    b.write(wal)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = arc / f".{sorted(b.files)[7]}.tmp-{int(dead.stdout)}-0123abcd"
    stale.write_bytes(b"half a copy")
    listed = []
    real = os.scandir

    def scandir(path="."):
        if Path(path) == arc:
            listed.append(path)
        return real(path)

    monkeypatch.setattr(tempfiles.os, "scandir", scandir)
    result = archive(wal, arc)
    assert result.ok and [s.action for s in result.segments] == ["unchanged"] + ["new"] * 59
    assert not stale.exists()
    assert len(listed) <= 8, len(listed)  # (the sums file is written atomically too)
    assert sorted(p.name for p in arc.iterdir() if p.name.startswith("wal-")) == sorted(b.files)


def _returns_within(call, seconds: float = 10.0):
    """``call()``'s result, or a failure if it blocks (a FIFO opened for reading waits
    for a writer: the writer opened here afterwards lets the stuck thread go)."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as err:  # noqa: BLE001 - handed to the test
            out.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return out


def test_a_segment_replaced_by_a_fifo_after_the_listing_does_not_hang_the_run(tmp_path):
    """A FIFO put where a listed segment was: a plain open waits for a writer for ever,
    and the run holds the archive's lock meanwhile (every later run is refused)."""
    wal, arc, name, data = _two_runs(tmp_path)
    fifo = wal / "wal-0000000000000001.log"
    os.mkfifo(fifo)
    out = _returns_within(lambda: _archive_one(Segment(fifo, 100, 1), arc / fifo.name,
                                               bytearray(64)))
    if not out:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the run waits on the FIFO")
    assert (out[0].action, out[0].problem) == (
        UNREADABLE, f"{fifo}: is a FIFO now, not the file the directory listed: not read")
    assert not (arc / fifo.name).exists()


def test_an_archive_copy_replaced_by_a_fifo_is_a_conflict_not_a_wait(tmp_path):
    from gpu_pitr.archive import _Conflict, _open_copy

    fifo = tmp_path / "wal-0000000000000001.log"
    os.mkfifo(fifo)
    out = _returns_within(lambda: _open_copy(fifo))
    if not out:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the run waits on the FIFO")
    assert isinstance(out[0], _Conflict) and "a FIFO, not a copy" in out[0].line


def test_a_lock_file_that_is_a_fifo_is_refused_as_expire_refuses_it(tmp_path):
    """A FIFO opens read-write without blocking and takes a flock: archive went on with
    it as its lock, while expire refuses that archive (not the lock file archive makes)."""
    wal, arc, name, data = _two_runs(tmp_path)
    (arc / LOCK_NAME).unlink()
    os.mkfifo(arc / LOCK_NAME)
    with open(wal / name, "ab") as f:
        f.write(encode_record(40, b"\x00"))
    with pytest.raises(ArchiveError, match="cannot take the archive's lock: it is a FIFO"):
        archive(wal, arc)
    assert (arc / name).read_bytes() == data


def test_entries_named_like_segments_that_are_not_files_are_said(tmp_path, capsys):
    """As restore, inspect and verify do (SPEC section 1: not read, but not in silence):
    an archive run that passes them over exits 0 with a warning naming each."""
    wal, arc, name, data = _two_runs(tmp_path)
    (wal / "wal-0000000000000001.log").mkdir()
    os.mkfifo(wal / "wal-0000000000000002.log")
    (wal / name.upper()).write_bytes(data)
    before = dir_state(wal)
    result = archive(wal, arc)
    assert result.ok and result.not_segments == [
        f"{wal / name.upper()}: named like a segment file but for the case of its letters "
        "(segment names are lower case: wal-<16 hex digits>.log): not read",
        f"{wal}/wal-0000000000000001.log: named like a segment file, but a directory: not read",
        f"{wal}/wal-0000000000000002.log: named like a segment file, but a FIFO: not read"]
    assert cli.main(["archive", str(wal), "--out", str(arc), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"gpu-pitr: warning: {line}" for line in result.not_segments]
    assert dir_state(wal) == before


def _wal_whose_first_segment_cannot_be_read(tmp_path, also_good: bool = False
                                            ) -> tuple[Path, Path]:
    """A WAL directory whose first segment is a link to a missing file (it cannot be
    read: a source that fails as root does too), and with ``also_good`` a readable one
    after it."""
    wal = tmp_path / "wal"
    wal.mkdir(parents=True)
    bad = wal / "wal-0000000000000001.log"
    bad.symlink_to(tmp_path / "missing")
    if also_good:
        b = LogBuilder(created=2)
        b.add(Ins("a", f32(1, 2), None, 0))
        b.write(wal)
    return wal, bad


def test_a_new_archive_its_run_put_nothing_into_is_removed_again(tmp_path, capsys):
    """As initdb and pg_basebackup remove the directory they created when they fail: a
    run that made ARCHIVE_DIR and copied nothing into it (its only segment unreadable)
    exits 1 with the problem's one line naming the file, and leaves no empty archive
    behind to be mistaken for a good one (or refused later as 'not empty')."""
    wal, bad = _wal_whose_first_segment_cannot_be_read(tmp_path)
    arc = tmp_path / "arc"
    result = archive(wal, arc)
    assert [s.action for s in result.segments] == [UNREADABLE] and not result.ok
    assert result.removed and not os.path.lexists(arc)
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{bad.name}: UNREADABLE: {bad}: cannot read the file: a symbolic "
                      f"link to '{tmp_path / 'missing'}', which is missing")
    assert out[1].endswith(f"; {arc} was removed again: this run created it and copied "
                           "nothing into it")
    assert len(out) == 2 and not os.path.lexists(arc)
    assert cli.main(["archive", str(wal), "--out", str(arc), "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines() == out[:1]
    assert cli.main(["archive", str(wal), "--out", str(arc), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert not os.path.lexists(arc)


def test_an_archive_directory_that_was_there_or_got_a_copy_is_kept(tmp_path):
    """Only a directory this run created, and only while it holds nothing but the
    run's own lock file: an empty directory given as --out stays (someone made it), so
    does a new one that got a copy of a later segment, one another process put a file
    into during the run, and a new one whose run succeeded with nothing to copy."""
    wal, _ = _wal_whose_first_segment_cannot_be_read(tmp_path)
    given = tmp_path / "given"
    given.mkdir()
    result = archive(wal, given)
    assert not result.ok and not result.removed and os.listdir(given) == [LOCK_NAME]

    both, _ = _wal_whose_first_segment_cannot_be_read(tmp_path / "b", also_good=True)
    arc = tmp_path / "b" / "arc"
    result = archive(both, arc)
    assert [s.action for s in result.segments] == [UNREADABLE, NEW]
    good = both / result.segments[1].name
    assert not result.removed and _segments(arc) == {good.name: good.read_bytes()}

    shared = tmp_path / "shared"

    def another_writer(row) -> None:  # another process's file, there before the end
        (shared / "theirs").write_bytes(b"x")

    result = archive(wal, shared, on_segment=another_writer)
    assert not result.ok and not result.removed
    assert sorted(os.listdir(shared)) == sorted([LOCK_NAME, "theirs"])

    empty_wal = tmp_path / "empty_wal"
    empty_wal.mkdir()
    result = archive(empty_wal, tmp_path / "first")
    assert result.ok and not result.removed and (tmp_path / "first").is_dir()


def test_a_new_archive_is_removed_when_its_first_copy_is_interrupted(tmp_path, monkeypatch):
    """A Ctrl-C (or any error) in the middle of the first copy into a new archive: the
    copy's temp file is removed, and so is the directory the run made."""
    wal, _, _, _ = _two_runs(tmp_path)
    new = tmp_path / "new"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gpu_pitr.archive._copy_in_kernel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        archive(wal, new)
    assert not os.path.lexists(new)
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):  # a directory that was there: kept
        archive(wal, existing)
    assert os.listdir(existing) == [LOCK_NAME]


@pytest.mark.parametrize("when", ["before_the_lock_file_is_opened", "before_it_is_locked"])
def test_a_run_whose_new_archive_another_run_removed_as_it_started_starts_again(
        tmp_path, monkeypatch, when):
    """Another run made ARCHIVE_DIR, failed with nothing copied and removed it again
    while this one, finding the directory there, was starting: this run makes it again
    and copies, rather than failing with 'No such file or directory' (its lock file
    gone), or, having locked the lock file the other had unlinked, working beside a
    third run that made the archive again since."""
    import gpu_pitr.archive as archive_module

    wal, _, _, _ = _two_runs(tmp_path)
    arc = tmp_path / "new"
    arc.mkdir()  # as the other run made it
    removed = []

    def removed_by_the_other_run() -> None:
        if not removed:
            removed.append(True)
            if (arc / LOCK_NAME).exists():
                (arc / LOCK_NAME).unlink()
            arc.rmdir()

    if when == "before_the_lock_file_is_opened":
        enter = archive_module.archive_lock.__enter__

        def late_enter(self):
            removed_by_the_other_run()
            return enter(self)

        monkeypatch.setattr(archive_module.archive_lock, "__enter__", late_enter)
    else:
        flock = fcntl.flock

        def late_flock(fd, op):
            removed_by_the_other_run()
            return flock(fd, op)

        monkeypatch.setattr(fcntl, "flock", late_flock)
    result = archive(wal, arc)
    assert removed and result.ok and _segments(arc) == _segments(wal)
