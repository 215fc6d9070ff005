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
