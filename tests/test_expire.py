"""``gpu-pitr expire``: the archive's retention deletes only what no kept restore needs.

After an expire, every restore the retention promises (from the oldest snapshot kept
on) still equals the reference restore of the whole log, what it gives up fails with a
clear error, and nothing is deleted when the snapshots and the archive do not match,
the oldest kept snapshot is damaged (an older one is taken), or the retention is not
reached yet.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workloads import (
    Clock,
    Del,
    Ins,
    LogBuilder,
    dir_state,
    f32,
    restore_fast,
    restore_ref,
)

import gpu_pitr
from gpu_pitr import archivesums, cli, snapshot
from gpu_pitr.archive import EXPIRED, LOCK_NAME, UNCHANGED, ArchiveError, archive
from gpu_pitr.errors import IncompleteHistoryError, WalError
from gpu_pitr.expire import (
    MARKER_NAME,
    SEGMENT,
    SNAPSHOT,
    ExpireError,
    Expiry,
    expire,
    read_marker,
)
from gpu_pitr.format.entries import Delete, Insert, Update
from gpu_pitr.format.stats import utc_text
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.snapshot.format import read_manifest
from gpu_pitr.verify import verify_wal

pytest.importorskip("pyarrow")


def _same(got, want) -> None:
    assert (got.ids, got.vectors, got.metadata) == (want.ids, want.vectors, want.metadata)
    assert got.report["stop"]["reason"] == want.report["stop"]["reason"]


def _history(tmp_path: Path, rounds: int = 6, id_len: int = 1):
    """Rounds of: the writer appends (rotating often), archive runs, a snapshot of the
    archive is taken, the writer's retention deletes all but three segments.

    Returns ``(wal, arc, whole, snaps, times)``: ``whole`` holds every segment ever
    written; ``times[r]`` is a time between round r's records and the next round's.
    """
    wal, arc, whole, snaps = (tmp_path / n for n in ("wal", "arc", "whole", "snaps"))
    whole.mkdir()
    snaps.mkdir()
    clock = Clock(1_700_000_000)
    w = WalWriter(wal, clock=clock, max_segment_bytes=300)
    times = []
    for r in range(rounds):
        clock.t += 100
        for k in range(9):
            i = r * 9 + k
            key = f"{'x' * id_len}{i % 11}"
            if k % 4 == 1:
                w.append(Update(key, [float(i), -0.0], None, clock.t))
            else:
                w.append(Insert(key, [float(i), 1.5], {"r": str(r)} if k % 3 else None,
                                clock.t))
            if k % 5 == 4:
                w.append(Delete(f"{'x' * id_len}{(i * 7) % 11}", clock.t))
        w.flush()
        for p in wal.glob("wal-*.log"):
            shutil.copyfile(p, whole / p.name)
        assert archive(wal, arc).ok
        snapshot.save(gpu_pitr.restore(arc, backend="cpu"), snaps / f"s{r:02d}")
        times.append(clock.t + 50)
        names = sorted(p.name for p in wal.glob("wal-*.log"))
        for name in names[:-3]:
            (wal / name).unlink()
    w.close()
    for p in wal.glob("wal-*.log"):
        shutil.copyfile(p, whole / p.name)
    assert archive(wal, arc).ok
    return wal, arc, whole, snaps, times


def _segments(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("wal-*.log"))}


def _kept_restores_equal_the_whole_log(arc, whole, snaps, times) -> None:
    for target in [{}, *({"to_time": t} for t in times)]:
        _same(restore_fast(arc, snapshots=str(snaps), **target), restore_ref(whole, **target))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return _history(tmp_path_factory.mktemp("expire"))


@pytest.fixture
def hist(history, tmp_path):
    """A private copy of the shared history (tests delete from it)."""
    return private_copy(history, tmp_path)


def private_copy(history, tmp_path):
    """``(archive, whole log, snapshots, times)`` of ``_history``'s, the archive and the
    snapshots copied into ``tmp_path``."""
    _, arc, whole, snaps, times = history
    copies = []
    for d in (arc, snaps):
        shutil.copytree(d, tmp_path / d.name, symlinks=True)
        copies.append(tmp_path / d.name)
    return copies[0], whole, copies[1], times


def test_keep_n_deletes_the_older_snapshots_and_segments_and_kept_restores_are_exact(hist):
    arc, whole, snaps, times = hist
    before = _segments(arc)
    result = expire(arc, snaps, keep=2)
    assert result.ok and result.anchor == str(snaps / "s04")
    assert result.kept == [str(snaps / "s05"), str(snaps / "s04")]
    assert sorted(p.name for p in snaps.iterdir()) == ["s04", "s05"]
    anchor_segment = read_manifest(snaps / "s04")["position"]["segment"]
    gone = [n for n in before if n < anchor_segment]
    assert gone and {Path(e.path).name for e in result.expired if e.kind == SEGMENT} == set(gone)
    assert [Path(e.path).name for e in result.expired if e.kind == SNAPSHOT] == \
        ["s03", "s02", "s01", "s00"]
    # What is left is untouched, and every moment from the anchor on restores exactly.
    assert _segments(arc) == {n: b for n, b in before.items() if n >= anchor_segment}
    # The archive's checksums are of what is left, and verify finds every copy intact.
    assert set(archivesums.read(arc)) == set(_segments(arc))
    assert not [p for p in verify_wal(arc).problems if p.kind.startswith("archive")]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[4:])
    # The summary's earliest time is exact: a second earlier was given up, and fails
    # clearly (no snapshot serves it, and the log is cut).
    earliest = result.anchor_position["max_timestamp"]
    assert earliest > times[3]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, [earliest])
    got = restore_fast(arc, to_time=earliest + 1, exclusive=True, snapshots=str(snaps))
    _same(got, restore_ref(whole, to_time=earliest + 1, exclusive=True))
    with pytest.raises(IncompleteHistoryError):
        gpu_pitr.restore(arc, to_time=earliest, exclusive=True, snapshots=str(snaps),
                         backend="cpu")
    with pytest.raises(IncompleteHistoryError, match="expire deleted the segments before "
                       f"{anchor_segment}, and this restore starts at the start of the log"
                       ) as err:
        gpu_pitr.restore(arc, to_time=earliest - 1, snapshots=str(snaps), backend="cpu")
    # ... and says why no snapshot served: the earliest time they serve.
    assert str(err.value).endswith(
        f"; --snapshots: no snapshot in {snaps} serves the target (2 snapshots later than "
        f"it; the earliest serves --to-time {utc_text(earliest)} on)")
    # A second run has nothing left to do.
    again = expire(arc, snaps, keep=2)
    assert again.ok and again.expired == [] and again.anchor == str(snaps / "s04")


def test_keep_since_keeps_every_moment_from_then_on(hist):
    arc, whole, snaps, times = hist
    result = expire(arc, snaps, keep_since=times[2])
    assert result.ok and result.anchor == str(snaps / "s02")
    assert sorted(p.name for p in snaps.iterdir()) == ["s02", "s03", "s04", "s05"]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[2:])
    # At a snapshot's own latest stamp: it serves that moment (--to-time T is inclusive),
    # so it is the anchor, not the one before it.
    at = read_manifest(snaps / "s03")["position"]["max_timestamp"]
    assert read_manifest(snaps / "s04")["position"]["max_timestamp"] > at
    assert expire(arc, snaps, keep_since=at, dry_run=True).anchor == str(snaps / "s03")
    # ISO text takes the same path; a moment before every snapshot expires nothing.
    early = expire(arc, snaps, keep_since="2023-11-14T00:00:00Z", dry_run=True)
    assert early.anchor is None and early.expired == []
    assert "no snapshot serves a restore" in early.notes[-1]


def test_a_dry_run_deletes_nothing_and_names_what_a_run_deletes(hist):
    arc, _, snaps, _ = hist
    arc_before, snaps_before = dir_state(arc), dir_state(snaps)
    dry = expire(arc, snaps, keep=3, dry_run=True)
    assert dir_state(arc) == arc_before and dir_state(snaps) == snaps_before
    real = expire(arc, snaps, keep=3)
    assert [(e.kind, e.path, e.bytes) for e in dry.expired] == \
        [(e.kind, e.path, e.bytes) for e in real.expired]
    assert dry.expired and "would delete" in dry.summary() and "deleted" in real.summary()


def test_an_anchor_in_the_first_segment_deletes_no_segment_and_says_so(hist):
    arc, _, snaps, _ = hist
    before = _segments(arc)
    result = expire(arc, snaps, keep=6)
    assert result.anchor == str(snaps / "s00") and result.expired == []
    assert result.summary().endswith("no segment deleted: the archive's history is as it was")
    assert _segments(arc) == before and read_marker(arc) is None


def test_fewer_snapshots_than_kept_deletes_nothing(hist):
    arc, _, snaps, _ = hist
    arc_before, snaps_before = dir_state(arc), dir_state(snaps)
    result = expire(arc, snaps, keep=7)
    assert result.anchor is None and result.expired == [] and len(result.kept) == 6
    assert "fewer than the 7 to keep" in result.notes[0]
    assert dir_state(arc) == arc_before and dir_state(snaps) == snaps_before


def test_a_damaged_anchor_is_passed_over_for_an_older_one(hist):
    arc, whole, snaps, times = hist
    vectors = snaps / "s04" / "vectors.f32"
    data = bytearray(vectors.read_bytes())
    data[5] ^= 0x40
    vectors.write_bytes(bytes(data))
    result = expire(arc, snaps, keep=2)
    assert result.anchor == str(snaps / "s03")
    assert len(result.damaged) == 1 and "s04" in result.damaged[0]
    assert "passed over, left in place" in result.damaged[0]
    assert sorted(p.name for p in snaps.iterdir()) == ["s03", "s04", "s05"]
    # s04 is skipped by restores too (damaged): s03 and the log after it serve them.
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[3:])


def test_a_snapshot_whose_manifest_is_damaged_is_not_counted_nor_deleted(hist):
    arc, _, snaps, _ = hist
    (snaps / "s01" / "manifest.json").write_text("{")
    result = expire(arc, snaps, keep=1)
    assert result.anchor == str(snaps / "s05")
    assert sorted(p.name for p in snaps.iterdir()) == ["s01", "s05"]
    assert "s01" in result.damaged[0] and "not counted" in result.damaged[0]


def test_snapshots_of_another_log_are_neither_counted_nor_deleted(history, tmp_path):
    _, arc, _, _, _ = history
    (tmp_path / "other").mkdir()
    other = _history(tmp_path / "other", rounds=3, id_len=5)
    arc_copy = tmp_path / "arc"
    shutil.copytree(arc, arc_copy)
    arc_before, snaps_before = dir_state(arc_copy), dir_state(other[3])
    result = expire(arc_copy, other[3], keep=1)
    assert result.anchor is None and result.expired == [] and result.kept == []
    assert all("not this archive's log" in n for n in result.notes[:3])
    assert dir_state(arc_copy) == arc_before and dir_state(other[3]) == snaps_before


def test_a_snapshot_whose_segment_the_archive_lacks_is_not_counted(hist):
    """Taken of WAL_DIR ahead of the last archive run (or of another log): left alone,
    and the retention counts the others."""
    arc, _, snaps, _ = hist
    name = read_manifest(snaps / "s05")["position"]["segment"]
    (arc / name).rename(arc / "aside")
    result = expire(arc, snaps, keep=1)
    assert result.anchor == str(snaps / "s04") and (snaps / "s05").is_dir()
    assert any(f"s05: its segment {name} is not in the archive" in n for n in result.notes)


def _store(d: Path, ids: list[str], value: float, t0: int):
    """Two segments created at 1000 and 1001 (names equal across stores), two inserts each."""
    b = LogBuilder(created=1000)
    for k, i in enumerate(ids[:2]):
        b.add(Ins(i, f32(value), None, t0 + k))
    b.new_segment(1001)
    for k, i in enumerate(ids[2:]):
        b.add(Ins(i, f32(value), None, t0 + 10 + k))
    wal = Path(b.write(d / "wal"))
    assert archive(wal, d / "arc").ok
    return wal, d / "arc"


def test_a_store_of_the_same_layout_is_told_apart_by_its_records(tmp_path):
    """Two shards started in the same second: same segment names, offsets and sequence
    numbers. The CRC-32 of the last record each snapshot covered tells them apart, so
    one's snapshots, even in a shared directory, never expire the other's history."""
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    _, arc_a = _store(tmp_path / "A", ["a1", "a2", "a3", "a4"], 1.0, 100)
    _, arc_b = _store(tmp_path / "B", ["b1", "b2", "b3", "b4"], 2.0, 150)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(arc_b, to_time=150, backend="cpu"), snaps / "b_early")
    snapshot.save(gpu_pitr.restore(arc_b, backend="cpu"), snaps / "b_late")
    before = dir_state(tmp_path)
    result = expire(arc_a, snaps, keep=1)
    assert result.anchor is None and dir_state(tmp_path) == before
    assert any("differs from the one the snapshot recorded (CRC-32)" in n
               for n in result.notes)
    # With A's own snapshots beside B's: only A's count, only A's are deleted.
    snapshot.save(gpu_pitr.restore(arc_a, to_time=100, backend="cpu"), snaps / "a_early")
    snapshot.save(gpu_pitr.restore(arc_a, backend="cpu"), snaps / "a_late")
    result = expire(arc_a, snaps, keep=1)
    assert result.anchor == str(snaps / "a_late")
    assert sorted(p.name for p in snaps.iterdir()) == ["a_late", "b_early", "b_late"]
    assert len(list(arc_b.glob("wal-*.log"))) == 2


def test_a_writer_that_restarted_its_numbers_cannot_hide_the_expired_history(tmp_path):
    """The first segment kept starts at seq 0 again (a writer reopened without
    recovery): the expire marker still refuses restores that would start before it."""
    b = LogBuilder(created=1000)
    b.add(Ins("a", f32(1), None, 100))
    b.add(Ins("b", f32(1), None, 101))
    b.reopen(created=1001)
    b.add(Ins("c", f32(1), None, 102))
    b.add(Del("a", 103))
    wal = Path(b.write(tmp_path / "wal"))
    arc, snaps = tmp_path / "arc", tmp_path / "snaps"
    snaps.mkdir()
    assert archive(wal, arc).ok
    snapshot.save(gpu_pitr.restore(arc, to_time=100, backend="cpu"), snaps / "s1")
    snapshot.save(gpu_pitr.restore(arc, to_time=102, backend="cpu"), snaps / "s2")
    result = expire(arc, snaps, keep=1)
    assert [Path(e.path).name for e in result.expired] == ["s1", "wal-00000000000003e8.log"]
    assert read_marker(arc) == Expiry("wal-00000000000003e9.log", "wal-00000000000003e8.log")
    for kw in ({}, {"to_time": 101, "snapshots": str(snaps)}):
        with pytest.raises(IncompleteHistoryError, match="expire deleted the segments"):
            gpu_pitr.restore(arc, backend="cpu", **kw)
    # inspect says so too: its first record is seq 0, yet the history is not complete.
    from gpu_pitr.format.stats import stats_lines, wal_stats

    stats = wal_stats(arc)
    assert stats["history"]["first_record"]["seq"] == 0
    assert stats["history"]["complete"] is False
    assert stats["history"]["expired_before"] == "wal-00000000000003e9.log"
    assert stats_lines(stats)[1].startswith(
        "history: INCOMPLETE: gpu-pitr expire deleted the segments before "
        "wal-00000000000003e9.log; a restore needs a snapshot")
    (tmp_path / "copy").mkdir()
    shutil.copy(arc / MARKER_NAME, tmp_path / "copy")
    (tmp_path / "copy" / MARKER_NAME).write_text("{}")
    assert stats_lines(wal_stats(tmp_path / "copy"))[1].startswith(
        "history: UNKNOWN: its expire marker .gpu-pitr-expired: not a marker gpu-pitr "
        "expire wrote")
    # Allowed, it restores what is left, and a snapshot of it records the gap.
    left = gpu_pitr.restore(arc, allow_incomplete_history=True, backend="cpu")
    assert left.position["history_complete"] is False
    assert left.report.warnings == [
        "incomplete history, restored as allowed: gpu-pitr expire deleted the segments "
        "before wal-00000000000003e9.log; the state restored lacks what came before and "
        "may never have existed"]
    _same(restore_fast(arc, to_time=102, snapshots=str(snaps)), restore_ref(wal, to_time=102))
    _same(restore_fast(arc, snapshots=str(snaps)), restore_ref(wal))
    # archive does not copy the expired segment back from the WAL directory.
    again = archive(wal, arc)
    assert again.ok and [s.action for s in again.segments] == [EXPIRED, UNCHANGED]
    assert not (arc / "wal-00000000000003e8.log").exists()
    assert "1 expired" in again.lines()[-1]
    # verify says so (a notice: the archive is not damaged).
    checked = verify_wal(arc)
    assert checked.clean and [p.kind for p in checked.problems] == ["expired_history"]
    assert "expire deleted the segments before wal-00000000000003e9.log" in \
        checked.problems[0].what


def test_a_snapshot_of_an_incomplete_history_is_not_an_anchor(tmp_path):
    b = LogBuilder(created=1000)
    b.add(Ins("a", f32(1), None, 100))
    b.new_segment(1001)
    b.add(Ins("b", f32(2), None, 101))
    b.new_segment(1002)
    b.add(Ins("c", f32(3), None, 102))
    wal = Path(b.write(tmp_path / "wal"))
    arc, snaps = tmp_path / "arc", tmp_path / "snaps"
    snaps.mkdir()
    assert archive(wal, arc).ok
    (wal / "wal-00000000000003e8.log").unlink()  # the writer's retention
    cut = gpu_pitr.restore(wal, allow_incomplete_history=True, backend="cpu")
    snapshot.save(cut, snaps / "cut")
    # A restore based on it inherits the gap, and so must be allowed one.
    with pytest.raises(IncompleteHistoryError, match="base snapshot was restored from an "
                       "incomplete history"):
        gpu_pitr.restore(wal, base=str(snaps / "cut"), backend="cpu")
    based = gpu_pitr.restore(wal, base=str(snaps / "cut"), allow_incomplete_history=True,
                             backend="cpu")
    assert based.position["history_complete"] is False
    # --snapshots passes it over for the whole log of the archive, unless allowed.
    chosen = gpu_pitr.restore(arc, snapshots=str(snaps), backend="cpu")
    assert chosen.id_list() == ["a", "b", "c"] and chosen.report.base is None
    assert "restored from an incomplete history; passed over" in chosen.report.message
    allowed = gpu_pitr.restore(arc, snapshots=str(snaps), allow_incomplete_history=True,
                               backend="cpu")
    assert allowed.report.base["path"] == str(snaps / "cut")
    before = dir_state(arc)
    result = expire(arc, snaps, keep=1)
    assert result.anchor is None and dir_state(arc) == before
    assert "incomplete history" in result.notes[0]
    whole = gpu_pitr.restore(arc, backend="cpu")
    assert whole.position["history_complete"] is True and len(whole) == 3


def test_only_an_archive_is_touched_and_only_under_its_lock(hist, tmp_path):
    arc, whole, snaps, _ = hist
    before = dir_state(whole)
    with pytest.raises(ExpireError, match="not an archive made by gpu-pitr archive"):
        expire(whole, snaps, keep=1)
    assert dir_state(whole) == before
    with open(arc / LOCK_NAME, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArchiveError, match="another gpu-pitr archive or expire"):
            expire(arc, snaps, keep=1)
    with pytest.raises(WalError, match="nowhere: snapshot directory: no such directory"):
        expire(arc, tmp_path / "nowhere", keep=1)
    with pytest.raises(WalError, match="snapshot directory: not a directory"):
        expire(arc, arc / LOCK_NAME, keep=1)
    with pytest.raises(WalError, match="nowhere: archive directory: no such directory"):
        expire(tmp_path / "nowhere", snaps, keep=1)
    with pytest.raises(WalError, match="archive directory: not a directory"):
        expire(arc / LOCK_NAME, snaps, keep=1)
    for bad in ({}, {"keep": 1, "keep_since": 5}, {"keep": 0}, {"keep": True},
                {"keep_since": "yesterday"}):
        with pytest.raises(ValueError):
            expire(arc, snaps, **bad)


def test_a_lock_that_is_not_a_file_is_named_as_what_it_is(hist, tmp_path):
    # It is there: "no .gpu-pitr-archive.lock file in it" sent a person looking for a
    # file that exists.
    arc, _, snaps, _ = hist
    (arc / LOCK_NAME).unlink()
    os.symlink(tmp_path / "nowhere", arc / LOCK_NAME)
    before = dir_state(arc)
    with pytest.raises(ExpireError, match=f"{LOCK_NAME} is a symbolic link, not the lock "
                                          "file gpu-pitr archive makes"):
        expire(arc, snaps, keep=1)
    (arc / LOCK_NAME).unlink()
    (arc / LOCK_NAME).mkdir()
    with pytest.raises(ExpireError, match=f"{LOCK_NAME} is a directory, not the lock"):
        expire(arc, snaps, keep=1)
    assert dir_state(arc).keys() == before.keys()


def test_leftovers_of_killed_runs_are_swept_and_links_left_alone(hist, tmp_path):
    arc, _, snaps, _ = hist
    dead = snaps / ".s00.expired-999999999-0123abcd"
    shutil.copytree(snaps / "s00", dead)
    alive = snaps / f".s01.expired-{os.getpid()}-0123abcd"
    alive.mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(snaps / "s00", outside)
    (snaps / "s_link").symlink_to(outside)
    result = expire(arc, snaps, keep=1)
    assert not dead.exists() and alive.exists()
    assert (snaps / "s_link").is_symlink() and (outside / "manifest.json").exists()
    assert any("s_link is a symbolic link" in note for note in result.notes)


def test_hidden_directories_only_named_like_leftovers_are_not_deleted(hist):
    """A hidden directory of someone else's in SNAP_DIR whose name happens to fit what a
    killed run leaves (a name, a dead pid, hex digits: ``.photos.old-2023-12``) was
    deleted, whatever it held. Only directories holding snapshot files alone go."""
    arc, _, snaps, _ = hist
    theirs = [snaps / ".photos.old-2023-12", snaps / ".notes.tmp-20240101-ab",
              snaps / ".x.expired-2023-12345678", snaps / ".s00.tmp-999999999-0123abcd"]
    for d in theirs:
        d.mkdir()
        (d / "precious.txt").write_text("not gpu-pitr's")
    (snaps / ".s00.tmp-999999999-0123abcd" / "manifest.json").write_text("{}")
    assert expire(arc, snaps, keep=1).anchor is not None
    for d in theirs:
        assert (d / "precious.txt").read_text() == "not gpu-pitr's"


def test_a_snapshot_holding_other_files_is_not_deleted_with_them(hist):
    """A snapshot a person put a file into (notes, a report) was deleted whole, that file
    too, though ``verify`` says it is not part of the snapshot and a snapshot write
    refuses to replace such a directory "so that they are not lost"."""
    arc, _, snaps, _ = hist
    (snaps / "s01" / "NOTES.txt").write_text("why s01 matters")
    result = expire(arc, snaps, keep=1)
    assert (snaps / "s01" / "NOTES.txt").read_text() == "why s01 matters"
    assert any("s01 holds other files (NOTES.txt): not deleted" in n for n in result.notes)
    assert not (snaps / "s00").exists()  # the others go as before


def test_what_killed_snapshot_runs_left_is_swept(hist):
    """A killed ``gpu-pitr snapshot SNAP_DIR/<new name>`` left its temp directory for
    good: only a later write of the same name removed it (123 MB after a kill -9 on a
    600 MB log). One killed between the renames of a replacement hid the old snapshot.
    expire sweeps both (dead writers on this host) and puts the hidden snapshot back."""
    arc, _, snaps, _ = hist
    dead = 999_999_999  # no such process
    temp = snaps / f".s09.tmp-{dead}-0123abcd"
    shutil.copytree(snaps / "s00", temp)
    (snaps / f".s10.tmp-{dead}-4567abcd").write_bytes(b"")  # a writability probe
    os.rename(snaps / "s05", snaps / f".s05.old-{dead}-89abcdef")
    alive = snaps / f".s11.tmp-{os.getpid()}-0123abcd"  # a snapshot being written now
    alive.mkdir()
    result = expire(arc, snaps, keep=1)
    assert result.anchor == str(snaps / "s05")  # put back, then kept
    assert sorted(p.name for p in snaps.iterdir()) == [alive.name, "s05"]


def test_a_snapshot_whose_position_no_restore_wrote_is_no_anchor(hist):
    """A manifest that parses, checksum and all, whose position has the wrong types:
    expire took it as the snapshot to keep, deleted the older ones and their segments,
    and every restore then failed with a traceback."""
    import zlib

    arc, whole, snaps, times = hist
    manifest = snaps / "s05" / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    doc["position"]["seq_runs"] = "x"
    text = json.dumps(doc).encode()
    manifest.write_bytes(text)
    (snaps / "s05" / "manifest.json.crc").write_text(f"{zlib.crc32(text):08x}\n")
    result = expire(arc, snaps, keep=1)
    assert result.anchor == str(snaps / "s04")
    assert "s05" in result.damaged[0] and "position: seq_runs" in result.damaged[0]
    assert sorted(p.name for p in snaps.iterdir()) == ["s04", "s05"]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[4:])


def test_a_snapshot_given_as_the_directory_of_snapshots_is_refused(hist, tmp_path):
    """It holds no snapshot directory: read as one, expire deleted nothing and said
    "nothing expired", and a restore replayed the log alone, without a word."""
    arc, _, snaps, _ = hist
    with pytest.raises(WalError, match=r"s05: is a snapshot, not a directory of snapshots"):
        expire(arc, snaps / "s05", keep=1)
    with pytest.raises(WalError, match=r"s05: is a snapshot, not a directory of snapshots"):
        gpu_pitr.restore(arc, snapshots=snaps / "s05")
    assert sorted(p.name for p in snaps.iterdir()) == [f"s0{i}" for i in range(6)]


def _refuse_unlink(monkeypatch, victim: str) -> None:
    """``os.unlink`` of a file named ``victim`` fails as on a read-only file."""
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        if Path(path).name == victim:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_segment_that_cannot_be_deleted_stops_the_deletions_there(hist, monkeypatch):
    """What stays is every segment from one on: never a log with a hole in it, which a
    restore from its start would read across."""
    arc, whole, snaps, times = hist
    names = sorted(p.name for p in arc.glob("wal-*.log"))
    victim = names[1]
    _refuse_unlink(monkeypatch, victim)
    result = expire(arc, snaps, keep=1)
    monkeypatch.undo()
    assert not result.ok and [Path(e.path).name for e in result.problems] == [victim]
    assert "NOT DELETED: Permission denied" in result.problems[0].line(False)
    assert sorted(p.name for p in arc.glob("wal-*.log")) == names[1:]
    assert read_marker(arc) == Expiry(names[1], names[0])  # what is gone, no more
    assert "later segments kept as well" in result.notes[-1]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[5:])
    # A link among them stops it the same way; the next run goes on from there.
    (arc / victim).rename(arc / "real")
    (arc / victim).symlink_to(arc / "real")
    result = expire(arc, snaps, keep=1)
    assert "not a regular file" in result.problems[0].problem
    (arc / victim).unlink()
    assert expire(arc, snaps, keep=1).ok


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpu_pitr", *args], capture_output=True,
                          text=True, timeout=300)


def test_command_line(hist, capsys, monkeypatch):
    arc, _, snaps, times = hist
    for bad in (["--keep", "0"], ["--keep", "1", "--keep-since", "5"], [],
                ["--keep-since", "soon"], ["--keep-since", "7x"], ["--keep-since", "-1d"],
                ["--keep-since", "6M"], ["--keep-since", "1y"],
                ["--keep-since", "999999999999999w"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(["expire", str(arc), "--snapshots", str(snaps), *bad])
        assert stop.value.code == 2
    capsys.readouterr()
    for bad in ("0", "-1", "x", "1.5"):  # one message, whatever the wrong count
        with pytest.raises(SystemExit):
            cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", bad])
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"gpu-pitr expire: error: argument --keep: {bad!r}: keep at least 1 snapshot "
            "(1, 2, 3, ...)")
    # An age: so long before now (pgBackRest keeps by days), the same as the time it is.
    for age, seconds in (("1d", 86400), ("3h", 3 * 3600), ("2w", 14 * 86400), ("90 s", 90),
                         ("5m", 300)):
        monkeypatch.setattr(cli.time, "time", lambda s=seconds: times[2] + s + 0.7)
        docs = []
        for since in (age, str(times[2])):
            assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep-since",
                             since, "--dry-run", "--json"]) == 0
            docs.append(json.loads(capsys.readouterr().out))
        assert docs[0] == docs[1] and docs[0]["anchor"] == str(snaps / "s02")
    monkeypatch.undo()
    assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", "3",
                     "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["anchor"] == str(snaps / "s03") and doc["ok"]
    done = _cli("expire", str(arc), "--snapshots", str(snaps), "--keep", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"{snaps / 's02'}: deleted (snapshot, " in lines[0]
    assert lines[-1].startswith(f"expire {arc}: deleted 3 snapshots and ")
    assert f"restores reach back to {snaps / 's03'} (wal-" in lines[-1]
    assert lines[-1].endswith("Z with --exclusive)")
    quiet = _cli("expire", str(arc), "--snapshots", str(snaps), "--keep", "1", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    refused = _cli("expire", str(snaps), "--snapshots", str(snaps), "--keep", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("gpu-pitr: error: ") and refused.stderr.count("\n") == 1


def test_an_age_keep_since_cannot_use_says_why_and_deletes_nothing(hist, capsys):
    """An age in units expire does not take (months, years: their length varies) or
    one reaching back before 1970: exit 2, argparse's one error line naming the value
    and why, before anything is read or deleted."""
    arc, _, snaps, _ = hist
    before = dir_state(arc), dir_state(snaps)
    for age, why in (("6M", "an age is a number and one of s, m (minutes), h, d, w"),
                     ("3 months", "an age is a number and one of s, m (minutes)"),
                     ("1y", "an age is a number and one of s, m (minutes)"),
                     ("99999w", "reaches back before 1970")):
        with pytest.raises(SystemExit) as stop:
            cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep-since", age])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: gpu-pitr expire ") and "Traceback" not in err
        line = err.splitlines()[-1]
        assert line.startswith(f"gpu-pitr expire: error: argument --keep-since: {age!r}")
        assert why in line, line
    assert (dir_state(arc), dir_state(snaps)) == before


def test_the_marker_says_only_what_is_gone(hist, monkeypatch):
    """When the oldest segment cannot be deleted, nothing is gone: the marker is put
    back as it was (none), and a restore from the start of the log still works."""
    arc, whole, snaps, _ = hist
    _refuse_unlink(monkeypatch, min(p.name for p in arc.glob("wal-*.log")))
    result = expire(arc, snaps, keep=1)
    monkeypatch.undo()
    assert not result.ok and read_marker(arc) is None
    _same(restore_fast(arc), restore_ref(whole))


def test_snapshots_of_an_older_gpu_pitr_are_not_counted(hist):
    """Without the record checksum and the history flag, a snapshot cannot be shown to be
    of this archive's whole history: it neither counts nor goes."""
    from gpu_pitr.snapshot.format import load_snapshot, write_snapshot

    arc, _, snaps, _ = hist
    for name in ("s04", "s05"):
        snap = load_snapshot(snaps / name)
        pos = dict(snap.position)
        del pos["history_complete"]
        pos["last_record"] = {k: v for k, v in pos["last_record"].items()
                              if k in ("segment", "offset")}
        index = snap.to_index()
        shutil.rmtree(snaps / name)
        write_snapshot(snaps / name, index, position=pos, pending=snap.pending,
                       report=index.report.to_dict())
    result = expire(arc, snaps, keep=1)
    assert result.anchor == str(snaps / "s03")
    assert sum("written by an older gpu-pitr" in n for n in result.notes) == 2
    assert sorted(p.name for p in snaps.iterdir()) == ["s03", "s04", "s05"]


def _three_segments(tmp_path: Path) -> Path:
    b = LogBuilder(created=1000)
    b.add(Ins("a", f32(1), None, 100))
    b.add(Ins("b", f32(2), None, 101))
    b.new_segment(1001)
    b.add(Ins("c", f32(3), None, 102))
    b.new_segment(1002)
    b.add(Ins("d", f32(4), None, 103))
    return Path(b.write(tmp_path / "wal"))


def test_a_base_of_an_empty_log_needs_the_log_from_seq_0(tmp_path):
    """A snapshot taken before the first record: a log after it that lost its first
    segment is incomplete history (refused), and a snapshot of that says so."""
    (tmp_path / "empty").mkdir()
    snapshot.save(gpu_pitr.restore(tmp_path / "empty", backend="cpu"), tmp_path / "s0")
    wal = _three_segments(tmp_path)
    (wal / "wal-00000000000003e8.log").unlink()
    with pytest.raises(IncompleteHistoryError, match="does not start at sequence number 0: "
                       "earlier history is missing .the base snapshot holds no record of "
                       "the log .an empty log"):
        gpu_pitr.restore(wal, base=str(tmp_path / "s0"), backend="cpu")
    cut = gpu_pitr.restore(wal, base=str(tmp_path / "s0"), allow_incomplete_history=True,
                           backend="cpu")
    assert cut.position["history_complete"] is False and cut.id_list() == ["c", "d"]


def test_a_base_that_covers_the_newest_expired_segment_whole_goes_on(tmp_path):
    """A copy of a snapshot kept elsewhere, at the very end of the last segment expire
    deleted: the log goes on in the first segment kept, so the restore is whole."""
    wal = _three_segments(tmp_path)
    arc, snaps, first = tmp_path / "arc", tmp_path / "snaps", tmp_path / "first"
    snaps.mkdir()
    first.mkdir()
    assert archive(wal, arc).ok
    shutil.copyfile(wal / "wal-00000000000003e8.log", first / "wal-00000000000003e8.log")
    end = gpu_pitr.restore(first, backend="cpu")
    assert end.position["at_segment_end"]
    snapshot.save(end, tmp_path / "kept_elsewhere")
    snapshot.save(gpu_pitr.restore(arc, to_time=101, backend="cpu"), snaps / "anchor")
    result = expire(arc, snaps, keep=1)
    assert read_marker(arc) == Expiry("wal-00000000000003e9.log", "wal-00000000000003e8.log")
    assert [Path(e.path).name for e in result.expired] == ["wal-00000000000003e8.log"]
    _same(restore_fast(arc, base=str(tmp_path / "kept_elsewhere")), restore_ref(wal))


def test_a_bad_marker_is_refused_before_anything_is_deleted(hist, tmp_path):
    arc, whole, snaps, _ = hist
    (arc / MARKER_NAME).write_text("garbage")
    arc_before, snaps_before = dir_state(arc), dir_state(snaps)
    for dry_run in (True, False):
        with pytest.raises(WalError, match=f"{MARKER_NAME}: not a marker gpu-pitr expire "
                           "wrote"):
            expire(arc, snaps, keep=2, dry_run=dry_run)
    with pytest.raises(WalError, match="not a marker"):
        archive(whole, arc)
    assert dir_state(arc) == arc_before and dir_state(snaps) == snaps_before


def test_a_marker_that_is_a_fifo_is_refused_at_once(hist):
    """A FIFO at the marker's name: a plain open would wait for a writer for ever, and
    with it verify, a restore of the archive, and archive holding its lock."""
    arc, whole, snaps, _ = hist
    (arc / MARKER_NAME).unlink(missing_ok=True)
    os.mkfifo(arc / MARKER_NAME)
    for args in (["verify", str(arc)], ["archive", str(whole), "--out", str(arc)]):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1, proc
        assert "is a FIFO, not a regular file" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_checksum_file_that_cannot_be_rewritten_leaves_the_deletions_reported(
        hist, monkeypatch):
    """The segments are gone when expire drops their checksums: a full disk then (or a
    read-only checksum file) is a note, not an error that loses the run's result (and
    its --json) after the deletions were made; the names left in the file are harmless."""
    import errno

    from gpu_pitr.errors import OutputError

    arc, _, snaps, _ = hist

    def full(archive_dir, sums):
        raise OutputError(Path(archive_dir) / archivesums.SUMS_NAME, "JSON file",
                          OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(archivesums, "write", full)
    result = expire(arc, snaps, keep=2)
    assert [e for e in result.expired if e.kind == SEGMENT], result
    assert any(archivesums.SUMS_NAME in note and "No space left" in note
               for note in result.notes), result.notes
    assert not [p for p in verify_wal(arc).problems if p.kind.startswith("archive")]


def test_a_stop_once_a_snapshot_is_renamed_aside_still_removes_it(hist, monkeypatch):
    """Ctrl-C or SIGTERM right after a snapshot was renamed aside for deletion: the stop
    was raised there, and the whole snapshot stayed, hidden, until the next run. The
    stop now waits for that one snapshot's removal."""
    import signal
    import time

    from gpu_pitr import interrupts

    arc, _, snaps, _ = hist
    rename = os.rename

    def rename_then_signal(src, dst):
        rename(src, dst)
        if ".expired-" in str(dst):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here

    monkeypatch.setattr(os, "rename", rename_then_signal)
    with pytest.raises(interrupts.Terminated), interrupts.handle_signals():
        expire(arc, snaps, keep=1)
    monkeypatch.undo()
    left = sorted(p.name for p in snaps.iterdir())
    assert not [n for n in left if n.startswith(".")], left
    assert "s05" in left and len(left) == 5  # one deleted, then the stop


def test_a_marker_that_is_a_dangling_link_is_not_taken_for_no_expiry(hist, tmp_path):
    """A link to a marker that is gone is not "nothing expired": archive copied the
    expired segments back from WAL_DIR and verify called the archive clean, without
    its expired_history notice."""
    arc, whole, snaps, _ = hist
    assert expire(arc, snaps, keep=2).ok and (arc / MARKER_NAME).exists()
    (arc / MARKER_NAME).unlink()
    (arc / MARKER_NAME).symlink_to(tmp_path / "moved")
    before = dir_state(arc)
    with pytest.raises(WalError, match="a symbolic link to .*which is missing"):
        read_marker(arc)
    with pytest.raises(WalError, match="not a marker"):
        archive(whole, arc)
    assert dir_state(arc) == before


def test_no_intact_snapshot_old_enough_expires_nothing(hist, capsys):
    """Every snapshot from the one the retention would keep history from on is damaged
    (a checksum mismatch): nothing is deleted, each is named on stderr, and the
    summary says why nothing expired (exit 0: no deletion failed)."""
    arc, _, snaps, _ = hist
    for name in ("s00", "s01", "s02"):
        data = bytearray((snaps / name / "vectors.f32").read_bytes())
        data[0] ^= 1
        (snaps / name / "vectors.f32").write_bytes(bytes(data))
    before = (dir_state(arc), dir_state(snaps))
    assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", "4"]) == 0
    out, err = capsys.readouterr()
    assert (dir_state(arc), dir_state(snaps)) == before
    assert err.splitlines() == [
        f"gpu-pitr: warning: snapshot {snaps / name} is damaged ({snaps / name}/vectors.f32: "
        f"offset 0: CRC-32 mismatch in the block of bytes 0..{size}): passed over, left in "
        "place" for name, size in (("s02", (snaps / "s02" / "vectors.f32").stat().st_size),
                                   ("s01", (snaps / "s01" / "vectors.f32").stat().st_size),
                                   ("s00", (snaps / "s00" / "vectors.f32").stat().st_size))]
    assert out.splitlines() == [
        "no intact snapshot old enough to keep history from: nothing expired",
        f"expire {arc}: deleted 0 snapshots and 0 segments (0 bytes); kept 6 snapshots; "
        "nothing expired"]
