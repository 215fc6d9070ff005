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
from workloads import Clock, dir_state, restore_fast, restore_ref

import gpu_pitr
from gpu_pitr import cli, snapshot
from gpu_pitr.archive import LOCK_NAME, ArchiveError, archive
from gpu_pitr.errors import IncompleteHistoryError, WalError
from gpu_pitr.expire import SEGMENT, SNAPSHOT, ExpireError, expire
from gpu_pitr.format.entries import Delete, Insert, Update
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.snapshot.format import read_manifest

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
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[4:])
    # The summary's earliest time is exact: a second earlier was given up, and fails
    # clearly (no snapshot serves it, and the log is cut).
    earliest = result.anchor_position["max_timestamp"]
    assert earliest > times[3]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, [earliest])
    with pytest.raises(IncompleteHistoryError, match="earlier history is missing"):
        gpu_pitr.restore(arc, to_time=earliest - 1, snapshots=str(snaps), backend="cpu")
    # A second run has nothing left to do.
    again = expire(arc, snaps, keep=2)
    assert again.ok and again.expired == [] and again.anchor == str(snaps / "s04")


def test_keep_since_keeps_every_moment_from_then_on(hist):
    arc, whole, snaps, times = hist
    result = expire(arc, snaps, keep_since=times[2])
    assert result.ok and result.anchor == str(snaps / "s02")
    assert sorted(p.name for p in snaps.iterdir()) == ["s02", "s03", "s04", "s05"]
    _kept_restores_equal_the_whole_log(arc, whole, snaps, times[2:])
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


def test_snapshots_of_another_log_delete_nothing(history, tmp_path):
    _, arc, _, _, _ = history
    (tmp_path / "other").mkdir()
    other = _history(tmp_path / "other", rounds=3, id_len=5)
    arc_copy = tmp_path / "arc"
    shutil.copytree(arc, arc_copy)
    arc_before, snaps_before = dir_state(arc_copy), dir_state(other[3])
    with pytest.raises(ExpireError, match="not of this archive's log; nothing deleted"):
        expire(arc_copy, other[3], keep=1)
    assert dir_state(arc_copy) == arc_before and dir_state(other[3]) == snaps_before


def test_an_anchor_whose_segment_the_archive_lacks_deletes_nothing(hist):
    arc, _, snaps, _ = hist
    name = read_manifest(snaps / "s05")["position"]["segment"]
    (arc / name).rename(arc / "aside")
    before = dir_state(arc)
    with pytest.raises(ExpireError, match=f"segment {name}, which the archive does not hold"):
        expire(arc, snaps, keep=1)
    assert dir_state(arc) == before


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
    with pytest.raises(WalError, match="snapshot directory not found"):
        expire(arc, tmp_path / "nowhere", keep=1)
    for bad in ({}, {"keep": 1, "keep_since": 5}, {"keep": 0}, {"keep": True},
                {"keep_since": "yesterday"}):
        with pytest.raises(ValueError):
            expire(arc, snaps, **bad)


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


def test_a_deletion_that_fails_is_a_problem_and_the_rest_goes_on(hist, monkeypatch):
    arc, _, snaps, _ = hist
    real_unlink = os.unlink
    victim = min(p.name for p in arc.glob("wal-*.log"))

    def unlink(path, *a, **k):
        if Path(path).name == victim:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    result = expire(arc, snaps, keep=1)
    assert not result.ok and [Path(e.path).name for e in result.problems] == [victim]
    assert (arc / victim).exists()
    assert "NOT DELETED: Permission denied" in result.problems[0].line(False)
    assert len([e for e in result.expired if e.kind == SEGMENT and e.problem is None]) > 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpu_pitr", *args], capture_output=True,
                          text=True, timeout=300)


def test_command_line(hist, capsys):
    arc, _, snaps, _ = hist
    for bad in (["--keep", "0"], ["--keep", "1", "--keep-since", "5"], [],
                ["--keep-since", "soon"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(["expire", str(arc), "--snapshots", str(snaps), *bad])
        assert stop.value.code == 2
    capsys.readouterr()
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
    assert lines[-1].endswith("Z on)")
    quiet = _cli("expire", str(arc), "--snapshots", str(snaps), "--keep", "1", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    refused = _cli("expire", str(snaps), "--snapshots", str(snaps), "--keep", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("gpu-pitr: error: ") and refused.stderr.count("\n") == 1
