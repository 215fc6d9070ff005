"""The archive's checksums: a copy changed after the writer deleted its segment is found.

The log's records carry no checksum, so a flipped bit in an archived vector decodes as
well as the original did. ``archive`` records the CRC-32 of each 1 MiB block of what it
copies (``.gpu-pitr-archive.sums``), and ``verify ARCHIVE`` names the block that
changed, a copy cut short, and a copy gone that ``expire`` did not delete.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from workloads import Clock

from gpu_pitr import archivesums, cli
from gpu_pitr.archive import GROWN, NEW, UNCHANGED, archive
from gpu_pitr.errors import OutputError
from gpu_pitr.format.entries import Insert
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.verify import verify_wal

MIB = 1 << 20


def _log(wal: Path, segments: int = 3, records: int = 2600) -> WalWriter:
    """``segments`` segment files of ``records`` 1 KiB vectors each (about 2.7 MB)."""
    clock = Clock(1_760_000_000)
    w = WalWriter(wal, clock=clock)
    for k in range(segments):
        if k:
            w.rotate()
        for i in range(records):
            w.append(Insert(f"s{k}-{i}", np.full(256, i, np.float32).tolist(), None, clock.t))
        w.flush()
    return w


def _block_crcs(data: bytes) -> tuple[int, ...]:
    """What the sums must hold, computed here with zlib, block by block."""
    return tuple(zlib.crc32(data[i:i + MIB]) for i in range(0, len(data), MIB))


def _archive_problems(path: Path) -> list:
    return [p for p in verify_wal(path).problems if p.kind.startswith(("archive", "bad_arch"))]


def _archived(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A log archived, then all but its newest segment deleted by retention."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal).close()
    assert archive(wal, arc).ok
    names = sorted(p.name for p in wal.glob("wal-*.log"))
    for name in names[:-1]:
        (wal / name).unlink()
    return wal, arc, names


def test_the_sums_are_each_blocks_crc_for_new_grown_and_older_copies(tmp_path):
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    w = _log(wal, segments=2)
    assert {s.action for s in archive(wal, arc).segments} == {NEW}
    sums = archivesums.read(arc)
    for p in wal.glob("wal-*.log"):
        data = p.read_bytes()
        assert len(data) > 2 * MIB
        assert sums[p.name] == archivesums.SegmentSums(len(data), _block_crcs(data))
    # The newest segment grows; its sums are of the bytes it holds now.
    for i in range(900):
        w.append(Insert(f"late{i}", [1.0] * 256, None, 1_760_000_100))
    w.close()
    result = archive(wal, arc)
    assert [s.action for s in result.segments] == [UNCHANGED, GROWN]
    newest = max(wal.glob("wal-*.log"))
    data = newest.read_bytes()
    assert archivesums.read(arc)[newest.name] == archivesums.SegmentSums(
        len(data), _block_crcs(data))
    assert _archive_problems(arc) == []
    # An archive made before there were sums: verify says the copies cannot be checked
    # (a notice: exit 0), and the next run records them from the copies it finds equal
    # to WAL_DIR's segments.
    (arc / archivesums.SUMS_NAME).unlink()
    [notice] = _archive_problems(arc)
    assert (notice.kind, notice.severity, notice.extra["segments"]) == (
        "archive_unchecked", "notice", 2)
    assert "2 segments of this archive" in notice.what
    assert cli.main(["verify", str(arc)]) == 0
    assert {s.action for s in archive(wal, arc).segments} == {UNCHANGED}
    assert archivesums.read(arc) == sums | {newest.name: archivesums.SegmentSums(
        len(data), _block_crcs(data))}
    assert _archive_problems(arc) == []


def test_a_copy_changed_after_its_segment_was_deleted_is_damage_naming_the_block(
        tmp_path, capsys):
    wal, arc, names = _archived(tmp_path)
    assert cli.main(["verify", str(arc)]) == 0
    capsys.readouterr()
    # One bit of a vector in the second block of the oldest copy: it still decodes.
    copy = arc / names[0]
    data = bytearray(copy.read_bytes())
    data[MIB + 1000] ^= 0x01
    copy.write_bytes(bytes(data))
    assert cli.main(["verify", str(arc)]) == 1
    out = capsys.readouterr().out
    assert (f"{names[0]}: offset {MIB}: damage: archive_changed: bytes {MIB} to "
            f"{2 * MIB - 1} are not the ones gpu-pitr archive copied") in out
    assert "DAMAGED: 1 damage" in out


def test_a_copy_cut_short_or_gone_is_damage_and_an_expired_one_is_not(tmp_path):
    wal, arc, names = _archived(tmp_path)
    size = (arc / names[0]).stat().st_size
    with open(arc / names[0], "r+b") as f:
        f.truncate(size - 5000)
    (arc / names[1]).unlink()
    found = {(p.kind, p.file, p.offset) for p in _archive_problems(arc)}
    assert found == {("archive_cut", names[0], size - 5000), ("archive_missing", names[1], 0)}
    # What expire deleted (the marker says where the archive begins) is not missing.
    (arc / ".gpu-pitr-expired").write_text(json.dumps(
        {"format": "gpu-pitr expire", "version": 1, "first_kept": names[2],
         "last_expired": names[1]}))
    (arc / names[0]).unlink()
    assert _archive_problems(arc) == []


def test_a_damaged_checksum_file_is_damage_and_archive_still_copies(tmp_path, capsys):
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    w = _log(wal, segments=1, records=50)
    assert archive(wal, arc).ok
    sums_path = arc / archivesums.SUMS_NAME
    doc = json.loads(sums_path.read_text())
    [entry] = doc["segments"].values()
    entry["crc32"] = f"{int(entry['crc32'], 16) ^ 1:08x}"
    sums_path.write_text(json.dumps(doc))
    damaged = sums_path.read_bytes()
    [problem] = _archive_problems(arc)
    assert (problem.kind, problem.file, problem.severity) == (
        "bad_archive_sums", archivesums.SUMS_NAME, "damage")
    assert "its own CRC-32 does not match its contents" in problem.what
    # The writer goes on; archive copies the new segment, keeps the damaged file for a
    # person to look at, and exits 1 saying so.
    w.rotate()
    w.append(Insert("after", [1.0], None, 1_760_000_500))
    w.close()
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out
    assert f"{sums_path}: its own CRC-32 does not match its contents" in out
    assert "no checksums were recorded by this run" in out
    assert "2 segments of " in out and "(1 new, 0 grown, 1 unchanged; 1 problem)" in out
    assert sums_path.read_bytes() == damaged
    assert len(list(arc.glob("wal-*.log"))) == 2


def test_a_checksum_file_of_another_program_says_to_move_it_aside_which_works(
        tmp_path, capsys):
    """Not JSON of ours: archive (exit 1) and verify each name the file and say what to do
    (one line each); the file is kept for a person to look at, and once it is moved
    aside, the next archive run records the sums again, as the line says."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=1, records=50).close()
    assert archive(wal, arc).ok
    sums_path = arc / archivesums.SUMS_NAME
    sums_path.write_bytes(b"not json\n")
    why = "not a checksum file gpu-pitr archive wrote (move it aside to go on: "
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{sums_path}: {why}") and len(out) == 2, out
    assert "next archive run records the sums" in out[0]
    [problem] = _archive_problems(arc)
    assert (problem.kind, problem.file, problem.offset) == (
        "bad_archive_sums", archivesums.SUMS_NAME, 0)
    assert problem.what.startswith(why) and "\n" not in problem.what
    assert sums_path.read_bytes() == b"not json\n"
    sums_path.rename(tmp_path / "aside")
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 0
    assert _archive_problems(arc) == [] and archivesums.read(arc) is not None


def test_a_checksum_file_that_cannot_be_written_leaves_the_copies_and_exits_1(
        tmp_path, monkeypatch, capsys):
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=1, records=50).close()

    def full(path, doc, then=None):
        raise OutputError(path, "JSON file", OSError(28, "No space left on device"))

    monkeypatch.setattr("gpu_pitr.outputs.write_json", full)
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out
    assert (f"{arc / archivesums.SUMS_NAME}: cannot write the JSON file: No space left on "
            "device; nothing was left in its place; no checksums were recorded by this run"
            ) in out
    assert [p.name for p in arc.glob("wal-*.log")] == [p.name for p in wal.glob("wal-*.log")]
    monkeypatch.undo()
    [notice] = _archive_problems(arc)
    assert notice.kind == "archive_unchecked"


def test_the_archive_kinds_have_the_documented_severities():
    from gpu_pitr.verify import KINDS

    assert {k: v for k, v in KINDS.items() if "archive" in k} == {  # docs/damage.md
        "archive_changed": "damage", "archive_cut": "damage", "archive_missing": "damage",
        "bad_archive_sums": "damage", "archive_unchecked": "notice"}


def test_a_run_stopped_by_a_signal_records_the_sums_of_the_copies_it_made(tmp_path):
    """Ctrl-C (or SIGTERM) after the first copy: the run stops at the next segment, and
    the copy it made has its sums recorded, so that the writer's retention deleting the
    segment before the next run does not leave the copy unchecked for ever."""
    import os
    import signal
    import time

    import pytest

    from gpu_pitr import interrupts

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=3, records=50).close()
    names = sorted(p.name for p in wal.glob("wal-*.log"))

    def stop_after_the_first(row):
        if row.name == names[0]:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here: a copy is in place, it records

    with pytest.raises(KeyboardInterrupt), interrupts.handle_signals():
        archive(wal, arc, on_segment=stop_after_the_first)
    assert sorted(p.name for p in arc.glob("wal-*.log")) == names[:1]
    sums = archivesums.read(arc)
    assert sums is not None and set(sums) == {names[0]}
    assert sums[names[0]].crcs == _block_crcs((arc / names[0]).read_bytes())
    for name in names:  # retention, before the next run
        (wal / name).unlink()
    assert _archive_problems(arc) == []


def test_a_checksum_file_that_is_not_a_file_is_damage_and_nothing_waits(tmp_path):
    """A FIFO where the checksum file belongs would make a plain open wait for a writer
    for ever (and archive hold its lock meanwhile); a link (to /dev/zero, to nothing) is
    not the file archive wrote either. Each is one line, at once."""
    import os
    import subprocess
    import sys

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=1, records=50).close()
    assert archive(wal, arc).ok
    sums_path = arc / archivesums.SUMS_NAME
    for make, kind in ((os.mkfifo, "a FIFO"),
                       (lambda p: p.symlink_to(tmp_path / "nothing"), "a symbolic link"),
                       (lambda p: p.symlink_to("/dev/zero"), "a symbolic link"),
                       (lambda p: p.mkdir(), "a directory")):
        if sums_path.is_dir() and not sums_path.is_symlink():
            sums_path.rmdir()
        else:
            sums_path.unlink()
        make(sums_path)
        want = f"not a checksum file gpu-pitr archive wrote: {kind}"
        for args in (["verify", str(arc)], ["archive", str(wal), "--out", str(arc)]):
            proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *args],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 1 and want in proc.stdout, (args, proc)
            assert "Traceback" not in proc.stderr


def test_a_copy_the_process_has_no_descriptor_for_is_not_passed_as_checked(
        tmp_path, no_descriptor_for, capsys):
    """A copy whose open for its check failed was passed over in silence ("the read of
    the log reports it"): out of descriptors (EMFILE, under ``ulimit -n``) the log's read
    had opened it, and a changed copy went unreported (600 changed copies under
    ``ulimit -n 20``: 33 to 43 named; here verify exited 0). Now one line naming it,
    exit 2, as when the log's own read is out of descriptors."""

    from gpu_pitr.format import segments

    wal, arc, names = _archived(tmp_path)
    copy = arc / names[0]
    data = bytearray(copy.read_bytes())
    data[MIB + 1000] ^= 0x01
    copy.write_bytes(bytes(data))
    no_descriptor_for(segments, "open_regular", copy)
    assert cli.main(["verify", str(arc)]) == 2
    assert capsys.readouterr().err == (
        f"gpu-pitr: error: {copy}: offset 0: cannot read: Too many open files\n")


def test_verify_stops_checking_the_copies_at_a_ctrl_c(tmp_path, monkeypatch):
    """The copies are checked on threads, which a Ctrl-C does not reach: each stops at
    its next read, rather than verify going on until every copy of a large archive has
    been read."""
    import os
    import signal
    import threading
    import time

    import pytest

    from gpu_pitr import interrupts

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=4, records=6000).close()
    assert archive(wal, arc).ok
    blocks = sum(archivesums.blocks(p.stat().st_size) for p in arc.glob("wal-*.log"))
    monkeypatch.setattr(archivesums, "_READ", archivesums.BLOCK)
    crc32, calls, lock = archivesums.crc32, [], threading.Lock()

    def crc32_then_stop(data, value=0):
        if threading.current_thread() is threading.main_thread():
            return crc32(data, value)  # the checksum file's own
        with lock:
            calls.append(len(data))
            first = len(calls) == 1
        if first:
            os.kill(os.getpid(), signal.SIGINT)
        # Until the main thread's handler has run (not a fixed sleep: on a loaded machine
        # it may not be scheduled for longer, and the other threads read on meanwhile).
        deadline = time.monotonic() + 10
        while interrupts._state.pending is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return crc32(data, value)

    monkeypatch.setattr(archivesums, "crc32", crc32_then_stop)
    with pytest.raises(KeyboardInterrupt), interrupts.handle_signals():
        verify_wal(arc)
    # Each thread stops at its next read (without the checks, the copies being read
    # when the Ctrl-C came were read to their ends: 14 blocks).
    assert blocks == 4 * 7 and len(calls) <= 5, len(calls)


def test_the_copies_left_unchecked_after_an_upgrade_are_named_as_they_are(tmp_path):
    """An archive made before there were sums: the next run records those of the
    segments WAL_DIR still holds; the notice names the others, not a range that takes
    in a segment whose copy is now checked."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=3, records=50).close()
    assert archive(wal, arc).ok
    (arc / archivesums.SUMS_NAME).unlink()  # as an older gpu-pitr left it
    names = sorted(p.name for p in wal.glob("wal-*.log"))
    (wal / names[0]).unlink()
    (wal / names[2]).unlink()
    assert archive(wal, arc).ok
    assert set(archivesums.read(arc)) == {names[1]}
    [notice] = _archive_problems(arc)
    assert notice.kind == "archive_unchecked"
    assert notice.what.startswith(f"2 segments of this archive ({names[0]} and {names[2]}) "
                                  "have no checksum recorded")


def test_sums_that_disagree_with_a_copy_equal_to_its_segment_are_a_conflict(tmp_path, capsys):
    """The copy still equals the segment, but not the checksums recorded when it was
    copied: both changed alike (a reflink copy shares the segment's blocks), or the
    checksum file was edited. archive says so instead of re-recording them (which would
    make verify call the archive intact), and verify names the block."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=2).close()
    assert archive(wal, arc).ok
    sums_path = arc / archivesums.SUMS_NAME
    doc = json.loads(sums_path.read_text())
    name = min(doc["segments"])
    hexes = doc["segments"][name]["crc32"]
    doc["segments"][name]["crc32"] = hexes[:8] + f"{int(hexes[8:16], 16) ^ 4:08x}" + hexes[16:]
    doc["check"] = archivesums._check(doc["segments"])
    sums_path.write_text(json.dumps(doc))
    edited = sums_path.read_bytes()
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out
    assert (f"{name}: CONFLICT: {arc / name}: offset {MIB}: equal to the segment, but bytes "
            f"{MIB} to {2 * MIB - 1} are not the ones archive recorded the checksum of") in out
    assert sums_path.read_bytes() == edited
    [changed] = _archive_problems(arc)
    assert (changed.kind, changed.file, changed.offset) == ("archive_changed", name, MIB)
    # Grown since, the same: the prefix is checked against its sums before the copy.
    with open(wal / name, "ab") as f:
        f.write(b"\0" * 12)
    result = archive(wal, arc)
    assert [s.action for s in result.segments] == ["conflict", "unchanged"]


def test_a_long_run_records_the_sums_as_it_goes(tmp_path, monkeypatch):
    """Written every SUMS_EVERY seconds, not only at the end: a SIGKILL (no finally
    runs) loses the sums of the last copies at most, not the whole run's."""
    import gpu_pitr.archive as archive_module

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=4, records=20).close()
    names = sorted(p.name for p in wal.glob("wal-*.log"))
    monkeypatch.setattr(archive_module, "SUMS_EVERY", 0.0)
    copy_one = archive_module._archive_one
    on_disk = []

    def watched(seg, *args, **kw):
        on_disk.append(sorted(archivesums.read(arc) or {}))
        return copy_one(seg, *args, **kw)

    monkeypatch.setattr(archive_module, "_archive_one", watched)
    assert archive(wal, arc).ok
    assert on_disk == [names[:k] for k in range(4)]
    assert sorted(archivesums.read(arc)) == names


def test_a_write_of_the_sums_that_fails_after_one_that_did_not_says_so(tmp_path, monkeypatch):
    """A long run wrote the file as it went, then the disk filled: the line must not say
    that no checksums were recorded, when the first copies' were."""
    import errno

    import gpu_pitr.archive as archive_module

    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=3, records=50).close()
    monkeypatch.setattr(archive_module, "SUMS_EVERY", 0.0)
    write, calls = archivesums.write, []

    def full_after_one(archive_dir, sums):
        calls.append(len(sums))
        if len(calls) > 1:
            raise OutputError(Path(archive_dir) / archivesums.SUMS_NAME, "JSON file",
                              OSError(errno.ENOSPC, "No space left on device"))
        write(archive_dir, sums)

    monkeypatch.setattr(archivesums, "write", full_after_one)
    result = archive(wal, arc)
    assert not result.ok and len(archivesums.read(arc)) == 1
    assert "no checksums were recorded" not in result.sums_line, result.sums_line
    assert "the copies made since were not recorded" in result.sums_line, result.sums_line


def test_a_copy_longer_than_its_sums_is_still_checked_against_them(tmp_path):
    """A run that grew a copy but could not record its new sums (a full disk, a SIGKILL)
    leaves sums shorter than the copy. The whole blocks they cover must still match
    the copy: else a copy changed alike with its segment (a reflink copy) is re-recorded
    by the next run, and verify calls it intact."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=2).close()
    assert archive(wal, arc).ok
    name = min(p.name for p in wal.glob("wal-*.log"))
    recorded = archivesums.read(arc)[name]
    assert recorded.size > MIB
    # The copy grown as the segment did, its sums not recorded (a run killed first).
    with open(wal / name, "ab") as f:
        f.write(b"\0" * 100)
    (arc / name).write_bytes((wal / name).read_bytes())
    # Then both changed alike in the first block, as damage to blocks a reflink copy
    # shares with its segment does.
    for path in (wal / name, arc / name):
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
    result = archive(wal, arc)
    [row] = [s for s in result.segments if s.name == name]
    assert row.action == "conflict", row
    assert archivesums.read(arc)[name] == recorded
    assert [(p.kind, p.offset) for p in _archive_problems(arc)
            if p.file == name][:1] == [("archive_changed", 0)]


def test_a_change_in_the_last_recorded_block_of_a_copy_that_grew_is_found(tmp_path):
    """A copy longer than its sums (bytes added after they were recorded) is checked
    over the bytes they cover, the block they end inside too: a byte changed there is
    archive_changed, as well as the notice for the bytes past them (summed over the
    copy's whole size instead, that last block covered other bytes and was skipped)."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=1, records=1500).close()  # ~1.6 MB: its second block partial
    assert archive(wal, arc).ok
    [copy] = arc.glob("wal-*.log")
    data = bytearray(copy.read_bytes())
    assert MIB < len(data) < 2 * MIB
    data[MIB + 100] ^= 0xFF
    copy.write_bytes(bytes(data) + b"\0" * 10)
    assert [(p.kind, p.offset) for p in _archive_problems(arc)] == [
        ("archive_changed", MIB), ("archive_unchecked", len(data))]


def test_a_checksum_file_of_a_newer_version_is_named_as_such_and_kept(tmp_path, capsys):
    """A checksum file a later gpu-pitr wrote (its own format, version 2) is not 'not
    ours': moved aside as that line says, the sums of the copies whose segments WAL_DIR
    no longer holds would be lost for good. The line says which version and to use a
    newer gpu-pitr; archive exits 1 and leaves the file as it was, verify names it."""
    wal, arc = tmp_path / "wal", tmp_path / "arc"
    _log(wal, segments=1, records=50).close()
    assert archive(wal, arc).ok
    sums_path = arc / archivesums.SUMS_NAME
    doc = json.loads(sums_path.read_bytes())
    raw = json.dumps({**doc, "version": 2, "block": 4096}).encode()
    sums_path.write_bytes(raw)
    why = ("version 2 of the archive's checksum file, written by a newer gpu-pitr: this one "
           "reads version 1")
    with pytest.raises(archivesums.SumsError, match=why):
        archivesums.read(arc)
    assert cli.main(["archive", str(wal), "--out", str(arc)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{sums_path}: {why}") and len(out) == 2, out
    assert "move it aside" not in out[0]
    assert sums_path.read_bytes() == raw
    [problem] = _archive_problems(arc)
    assert problem.kind == "bad_archive_sums" and problem.what.startswith(why)
