"""A writer's segment rotation, caught in the middle (found by an operator drill).

oxirs-vec's ``rotate_wal_file`` (and ``WalWriter.rotate``) creates the new segment,
its header still in the write buffer (or synced alone), before it flushes the old
segment's buffer. Until then the old file may end inside a record that is still
being written, with a newer file beside it that holds no record. A snapshot or an
archive run taken then must not treat that record as a crash's torn tail and go on
past it: the record reaches the old file a moment later.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.archive import archive
from gpu_pitr.errors import BaseMismatchError, IncompleteHistoryError
from gpu_pitr.format.codec import encode_entry
from gpu_pitr.format.entries import Insert
from gpu_pitr.format.segments import list_segments
from gpu_pitr.format.writer import encode_header, encode_record
from gpu_pitr.snapshot.base import base_gap
from gpu_pitr.verify import verify_wal

T0 = 1_795_687_200
A = f"wal-{T0:016x}.log"
B = f"wal-{T0 + 10:016x}.log"


def _record(seq: int, key: str) -> bytes:
    vector = np.full(4, seq, np.float32)
    return encode_record(seq, encode_entry(Insert(key, vector, None, T0 + seq)))


RECORDS = [_record(seq, key) for seq, key in enumerate("abcde")]
CUT = 20  # bytes of record 3 ("d") in the old file when the rotation is caught


def _mid_rotation(wal: Path, new_file: bytes) -> None:
    """Records 0-2 and 20 bytes of record 3 in A; B created, holding ``new_file``."""
    wal.mkdir(parents=True, exist_ok=True)
    (wal / A).write_bytes(encode_header(T0) + b"".join(RECORDS[:3]) + RECORDS[3][:CUT])
    (wal / B).write_bytes(new_file)


def _rotation_done(wal: Path) -> None:
    """The old buffer flushed (record 3 whole in A), then record 4 in B."""
    with open(wal / A, "ab") as f:
        f.write(RECORDS[3][CUT:])
    (wal / B).write_bytes(encode_header(T0 + 10) + RECORDS[4])


@pytest.mark.parametrize("new_file", [b"", encode_header(T0 + 10)],
                         ids=["new-file-empty", "new-file-header-only"])
def test_snapshot_mid_rotation_stays_before_the_record_in_progress(tmp_path, new_file):
    wal = tmp_path / "wal"
    _mid_rotation(wal, new_file)
    mid = gpu_pitr.restore(wal, backend="cpu")
    assert list(mid.ids) == ["a", "b", "c"]
    pos = mid.position
    end_of_c = 16 + sum(map(len, RECORDS[:3]))
    assert (pos["segment"], pos["offset"]) == (A, end_of_c)
    assert pos["at_torn_tail"] and not pos["at_segment_end"]
    snapshot.save(mid, tmp_path / "snaps" / "s1")
    _rotation_done(wal)
    whole = gpu_pitr.restore(wal, backend="cpu")
    assert list(whole.ids) == list("abcde")
    for kw in ({"base": tmp_path / "snaps" / "s1"}, {"snapshots": tmp_path / "snaps"}):
        got = gpu_pitr.restore(wal, backend="cpu", **kw)
        assert got.report.base is not None
        assert w.index_view(got) == w.index_view(whole)


def test_snapshot_at_a_torn_tail_whose_segment_is_gone(tmp_path):
    """Retention deleted the snapshot's segment: the next file's first seq tells a
    record that was finished there (lost with the file: a gap) from a crash's torn
    tail (the writer went on with the torn record's seq)."""
    wal = tmp_path / "wal"
    _mid_rotation(wal, b"")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), tmp_path / "s1")
    position = snapshot.load(tmp_path / "s1").position
    (wal / A).unlink()
    # The record in progress was finished in A, then B went on at seq 4: it is lost.
    (wal / B).write_bytes(encode_header(T0 + 10) + RECORDS[4])
    segments = list_segments(wal)
    assert "resumes at seq 4" in base_gap(position, segments, look=True)
    with pytest.raises(IncompleteHistoryError, match="resumes at seq 4, not 3"):
        gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "s1")
    # A crash tore record 3; the writer, recovered, wrote seq 3 again in B.
    (wal / B).write_bytes(encode_header(T0 + 10) + _record(3, "x"))
    assert base_gap(position, list_segments(wal), look=True) is None
    got = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "s1")
    assert list(got.ids) == ["a", "b", "c", "x"]


def test_a_snapshot_placed_past_the_record_in_progress_is_refused(tmp_path):
    """Snapshots of versions before 2026-12-05 put ``latest``'s position in the newest
    file: they skip the record the rotation was still writing. Found by its bytes:
    ``--base`` refuses it, ``--snapshots`` passes over it, ``expire`` keeps no history
    for it (the same check)."""
    wal = tmp_path / "wal"
    _mid_rotation(wal, b"")
    old = gpu_pitr.restore(wal, backend="cpu")
    old.position = {**old.position, "segment": B, "offset": 0, "at_segment_end": True,
                    "at_torn_tail": False, "segment_size": 0}
    snapshot.save(old, tmp_path / "snaps" / "old")
    # Before the rotation is done, the snapshot is right (the log holds no more).
    got = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "snaps" / "old")
    assert list(got.ids) == ["a", "b", "c"]
    _rotation_done(wal)
    end_of_c = 16 + sum(map(len, RECORDS[:3]))
    with pytest.raises(BaseMismatchError, match=f"offset {end_of_c}: a record the snapshot "
                       "does not cover") as err:
        gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "snaps" / "old")
    assert "\n" not in str(err.value)
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=tmp_path / "snaps")
    assert list(got.ids) == list("abcde") and got.report.base is None
    assert "a record the snapshot does not cover" in got.report.message


def test_not_a_record_after_the_last_one_is_not_refused(tmp_path):
    """A crash's torn tail, zero-filled bytes, or a writer's second header after the
    snapshot's last record are no record it skipped."""
    wal = tmp_path / "wal"
    _mid_rotation(wal, b"")
    old = gpu_pitr.restore(wal, backend="cpu")
    old.position = {**old.position, "segment": B, "offset": 0, "at_segment_end": True,
                    "at_torn_tail": False, "segment_size": 0}
    snapshot.save(old, tmp_path / "old")
    end_of_c = 16 + sum(map(len, RECORDS[:3]))
    head = (wal / A).read_bytes()[:end_of_c]
    for tail in (RECORDS[3][:CUT], bytes(12), encode_header(T0)):
        (wal / A).write_bytes(head + tail)
        (wal / B).write_bytes(encode_header(T0 + 10) + RECORDS[4])
        got = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "old",
                               allow_incomplete_history=True)
        assert list(got.ids) == ["a", "b", "c", "e"], tail


def test_archive_mid_rotation_copies_whole_records(tmp_path):
    wal, arch = tmp_path / "wal", tmp_path / "arch"
    _mid_rotation(wal, b"")
    first = archive(wal, arch)
    by_name = {s.name: s for s in first.segments}
    end_of_c = 16 + sum(map(len, RECORDS[:3]))
    assert (by_name[A].size, by_name[A].pending) == (end_of_c, CUT)
    assert os.path.getsize(arch / A) == end_of_c
    assert verify_wal(arch).damage == 0  # (the empty new file: a notice)
    _rotation_done(wal)
    archive(wal, arch)
    assert (arch / A).read_bytes() == (wal / A).read_bytes()
    assert (arch / B).read_bytes() == (wal / B).read_bytes()
    assert list(gpu_pitr.restore(arch, backend="cpu").ids) == list("abcde")


@pytest.mark.parametrize("first_file", [b"", encode_header(T0)],
                         ids=["first-file-empty", "first-file-header-only"])
def test_a_writer_that_rotated_before_its_first_flush(tmp_path, first_file):
    """No file holds a record yet: the first may still get the buffered ones (found by
    the review of the fix above: the position went into the newest file)."""
    wal = tmp_path / "wal"
    wal.mkdir()
    (wal / A).write_bytes(first_file)
    (wal / B).write_bytes(b"")
    mid = gpu_pitr.restore(wal, backend="cpu")
    assert len(mid) == 0 and mid.position["segment"] == A
    snapshot.save(mid, tmp_path / "snaps" / "s1")
    # The old buffer flushed (header and records 0-2), then record 3 in the new file.
    (wal / A).write_bytes(encode_header(T0) + b"".join(RECORDS[:3]))
    (wal / B).write_bytes(encode_header(T0 + 10) + RECORDS[3])
    whole = gpu_pitr.restore(wal, backend="cpu")
    assert list(whole.ids) == list("abcd") and whole.report.torn_tails == []
    for kw in ({"base": tmp_path / "snaps" / "s1"}, {"snapshots": tmp_path / "snaps"}):
        got = gpu_pitr.restore(wal, backend="cpu", **kw)
        assert got.report.base is not None
        assert w.index_view(got) == w.index_view(whole)
