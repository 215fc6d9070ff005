"""Full disks (ENOSPC) and read-only file systems as an operator meets them, emulated.

A real full file system fails a write at a place of its choosing: a write, the fsync,
or the rename (ext4 gives ENOSPC at a rename whose new name needs a new directory
block). Each case here was first met on a real small tmpfs or ext4 image (FINDINGS of
the review that added this file); CI cannot mount, so the failing call is made to
raise the error the kernel gave.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from gpu_pitr import cli, outputs
from gpu_pitr.errors import OutputError
from gpu_pitr.synth import write_synthetic_wal


def _enospc_on_rename_to(monkeypatch, dest: Path) -> None:
    """``os.replace`` onto ``dest`` fails as ext4's does when the directory is full."""
    real = os.replace

    def replace(src, dst):
        if Path(dst) == dest:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)


@pytest.mark.parametrize("earlier", [False, True], ids=["first-run", "over-an-earlier-run"])
def test_a_report_whose_rename_fails_after_its_index_says_the_index_is_in_place(
        tmp_path, monkeypatch, capsys, earlier):
    """``--report-json`` on an ext4 directory whose last block had room for the report's
    temp name but not for its own: the index was renamed into place, then the report's
    rename failed with ENOSPC, and the run said "cannot write the JSON file: No space
    left on device; nothing was left in its place" while the new index was there (and
    the previous report gone). It now says the index is in place without its report."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    out, report = tmp_path / "x.npz", tmp_path / "report.json"
    base = ["restore", str(wal), "--out", str(out), "--report-json", str(report), "-q"]
    if earlier:
        assert cli.main([*base, "--to-seq", "3"]) == 0
    capsys.readouterr()
    _enospc_on_rename_to(monkeypatch, report)
    assert cli.main(base) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"gpu-pitr: error: {report}: cannot write the JSON file: No space "
                          "left on device; the output written with it is in place without "
                          "it"), err
    assert "nothing was left in its place" not in err
    # The new index (the latest point, not seq 3), no report, no temp file.
    assert sorted(os.listdir(tmp_path)) == ["wal", "x.npz"]
    import numpy as np

    with np.load(out) as z:
        assert json.loads(str(z["report"]))["target"]["kind"] == "latest"


def test_write_json_raises_an_output_error_naming_the_json_once_then_is_done(
        tmp_path, monkeypatch):
    """The library's side of the same: an ``OutputError`` (an ``OSError``) naming the
    JSON file, with the rename's errno, and the output ``then`` wrote left in place."""
    report, index = tmp_path / "r.json", tmp_path / "idx.bin"

    def then():
        with outputs.atomic_files(index) as (tmp,):
            tmp.write_bytes(b"index")

    _enospc_on_rename_to(monkeypatch, report)
    with pytest.raises(OutputError) as caught:
        outputs.write_json(report, {"new": 1}, then=then)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(report)
    assert "in place without it" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["idx.bin"]


def test_write_json_whose_own_rename_fails_before_then_says_nothing_was_replaced(
        tmp_path, monkeypatch):
    """Without ``then`` (expire's marker, archive's sums) a failed rename replaced
    nothing, and says so, as before."""
    path = tmp_path / "r.json"
    path.write_text("old\n")
    _enospc_on_rename_to(monkeypatch, path)
    with pytest.raises(OutputError, match="nothing was left in its place"):
        outputs.write_json(path, {"new": 1})
    assert sorted(os.listdir(tmp_path)) == ["r.json"]
    assert path.read_text() == "old\n"


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    import gpu_pitr

    wal = tmp_path_factory.mktemp("wal") / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    return gpu_pitr.restore(wal)


def test_a_save_that_fails_removes_the_directories_it_made_above_the_snapshot(
        tmp_path, monkeypatch, small_index):
    """``snapshot.save`` makes a missing parent; on a full tmpfs (ENOSPC at the first
    file's write) it said "nothing was left in its place" and left ``x/y`` behind,
    though its docstring says nothing is left but what was there. (ENOSPC at the fsync
    here: NFS and thin-provisioned disks report it there.)"""
    pytest.importorskip("pyarrow")
    import gpu_pitr.snapshot

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine\n")
    monkeypatch.setattr(os, "fsync", fsync)
    for target in (tmp_path / "a" / "b" / "snap", tmp_path / "x" / "y" / "z" / "snap"):
        with pytest.raises(OutputError) as caught:
            gpu_pitr.snapshot.save(small_index, target)
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(target)
        assert str(caught.value) == (f"{target}: cannot write the snapshot output: No space "
                                     "left on device; nothing was left in its place")
        assert sorted(os.listdir(tmp_path)) == ["x"]  # not a/ nor a/b/
        assert sorted(os.listdir(tmp_path / "x")) == ["keep"]  # x/ was there: kept
    monkeypatch.undo()
    assert gpu_pitr.snapshot.save(small_index, tmp_path / "a" / "b" / "snap").is_dir()


def test_a_save_under_a_file_says_not_a_directory(tmp_path, small_index):
    """A parent of the snapshot that is a file: ``mkdir(parents=True, exist_ok=True)``
    raised FileExistsError, and the line said "File exists" of a snapshot that does not."""
    pytest.importorskip("pyarrow")
    import gpu_pitr.snapshot

    (tmp_path / "file").write_text("x\n")
    for target in (tmp_path / "file" / "snap", tmp_path / "file" / "sub" / "snap"):
        with pytest.raises(OutputError) as caught:
            gpu_pitr.snapshot.save(small_index, target)
        assert caught.value.errno == errno.ENOTDIR
        assert str(caught.value) == (f"{target}: cannot write the snapshot output: Not a "
                                     "directory; nothing was left in its place")
        assert sorted(os.listdir(tmp_path)) == ["file"]


def test_expire_on_a_full_archive_reports_the_snapshots_it_deleted(tmp_path, monkeypatch,
                                                                   capsys):
    """``expire`` on an archive whose file system is full (why one runs it): the older
    snapshots (elsewhere) were deleted, then the marker, written before any segment goes,
    failed with ENOSPC, and the run ended with that error alone: ``--json`` printed
    nothing, so what was deleted was said nowhere. The marker's failure is now the
    first segment's problem: the run's JSON lists the snapshots deleted, exit 1."""
    pytest.importorskip("pyarrow")
    from gpu_pitr.archive import archive
    from gpu_pitr.expire import MARKER_NAME

    wal, arc, snaps = tmp_path / "wal", tmp_path / "arc", tmp_path / "snaps"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=3, seed=3)
    archive(wal, arc)
    snaps.mkdir()
    for name, seq in (("s1", 100), ("s2", 400)):
        assert cli.main(["snapshot", str(arc), "--to-seq", str(seq), "--out",
                         str(snaps / name), "-q"]) == 0
    segments = sorted(p.name for p in arc.glob("wal-*.log"))
    _enospc_on_rename_to(monkeypatch, arc / MARKER_NAME)
    capsys.readouterr()
    assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", "1",
                     "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    doc = json.loads(out)
    assert doc["ok"] is False
    deleted = [(e["kind"], Path(e["path"]).name, e["problem"]) for e in doc["expired"]]
    assert deleted[0] == ("snapshot", "s1", None)
    assert deleted[1][:2] == ("segment", segments[0])
    assert deleted[1][2].startswith(f"{arc / MARKER_NAME}: cannot write the JSON file: No "
                                    "space left on device")
    assert len(deleted) == 2
    assert sorted(p.name for p in arc.glob("wal-*.log")) == segments  # none went
    assert not (arc / MARKER_NAME).exists()
    assert sorted(os.listdir(snaps)) == ["s2"]
    # Once there is room, the next run deletes the segments.
    monkeypatch.undo()
    assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", "1", "-q"]) == 0
    assert len(list(arc.glob("wal-*.log"))) < len(segments)


class _FullStream:
    """A stdout or stderr on a full disk (``>>LOG 2>&1``, LOG's file system full):
    every write fails with ENOSPC."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def fileno(self) -> int:
        return self.fd


@pytest.mark.parametrize("command", ["verify", "diff"])
def test_verify_and_diff_with_stdout_and_stderr_on_a_full_disk_exit_2(
        tmp_path, monkeypatch, command):
    """``gpu-pitr verify WAL >>LOG 2>&1`` with LOG's disk full: stdout failed (an error,
    exit 2), then so did the error's line on stderr, whose OSError escaped: Python exited
    1, which from verify says the log is damaged (from diff: A and B differ)."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=16 << 10, dim=4, segments=1, seed=3)
    argv = ["verify", str(wal)] if command == "verify" else ["diff", str(wal), str(wal)]
    fd = os.open(os.devnull, os.O_WRONLY)  # what _stdout_gone puts in stdout's place
    try:
        monkeypatch.setattr("sys.stdout", _FullStream(fd))
        monkeypatch.setattr("sys.stderr", _FullStream(fd))
        assert cli.main(argv) == 2
    finally:
        os.close(fd)


def test_a_warning_to_a_full_stderr_does_not_fail_the_write(tmp_path, monkeypatch):
    """The command's warning printer (``cli.run`` installs it) raised the write's OSError
    where the warning was given: the .npz's size warning, given before the file is
    written, then failed a write that had room as "cannot write the npz output: No space
    left on device" (stderr's disk, not the output's). Python's own printer passes over
    an OSError; so does this one now. (Numba's cache warning is given inside its save,
    which swallowed it.)"""
    import warnings

    from workloads import Ins, LogBuilder, f32

    import gpu_pitr

    b = LogBuilder()
    b.add(Ins("x" * 400, f32(1, 2), None, 1))  # the ids member: 40 rows as wide as this
    for k in range(39):
        b.add(Ins(f"i{k}", f32(k, 0), None, 2 + k))
    index = gpu_pitr.restore(b.write(tmp_path / "wal"), backend="cpu")
    monkeypatch.setattr(outputs, "_WIDE_BYTES", 1)  # (1 GiB of such a member, else)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        monkeypatch.setattr("sys.stderr", _FullStream(fd))
        monkeypatch.setattr(warnings, "showwarning", cli._show_warning)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            outputs.write_output(index, tmp_path / "x.npz", "npz")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["wal", "x.npz"]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_failed_save_does_not_take_the_parent_from_a_save_beside_it(
        tmp_path, monkeypatch, small_index, depth):
    """Two saves into the same missing parent (``depth`` 2: into sibling parents under a
    missing one): A makes it, B finds it there, A fails and removes the (still empty)
    directory it made, then B makes its temp directory in it. B must not fail for
    that: as git's ``raceproof_create_file`` does against a process pruning empty
    directories, a save whose parent vanished under it makes it again."""
    pytest.importorskip("pyarrow")
    import threading

    import gpu_pitr.snapshot
    from gpu_pitr.snapshot import format as fmt

    top = tmp_path / "snaps"
    a_target = top / "a" / "snap" if depth == 2 else top / "a"
    b_target = top / "b" / "snap" if depth == 2 else top / "b"
    b_checked, a_done = threading.Event(), threading.Event()
    b_result: dict = {}
    mkdir, write_file = Path.mkdir, fmt._write_file

    def b_waits_at_its_first_mkdir(path, *args, **kwargs):
        if threading.current_thread().name == "B" and not b_checked.is_set():
            b_checked.set()  # B has found what it needs there: A fails now
            assert a_done.wait(30)
        return mkdir(path, *args, **kwargs)

    def failing_write(path, data):
        if threading.current_thread().name != "B":
            b.start()
            assert b_checked.wait(30)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_file(path, data)

    def save_b() -> None:
        try:
            b_result["path"] = gpu_pitr.snapshot.save(small_index, b_target)
        except BaseException as err:  # noqa: BLE001 - said by the assertion below
            b_result["error"] = err

    b = threading.Thread(target=save_b, name="B")
    monkeypatch.setattr(Path, "mkdir", b_waits_at_its_first_mkdir)
    monkeypatch.setattr(fmt, "_write_file", failing_write)
    with pytest.raises(OutputError, match="No space left on device"):
        gpu_pitr.snapshot.save(small_index, a_target)
    a_done.set()
    b.join(60)
    assert "error" not in b_result, b_result.get("error")
    assert b_result["path"] == b_target and gpu_pitr.snapshot.load(b_target).count >= 0
    assert not os.path.lexists(a_target)
    assert sorted(os.listdir(top)) == ["b"]
