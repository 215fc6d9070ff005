"""The commands on a POSIX system without Linux's extras (macOS: the Linux-only attributes
are taken away and the results must not change), on a file system that cannot fsync a
directory, and a clear refusal on Windows."""

from __future__ import annotations

import errno
import json
import mmap
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpu_pitr import cli, hostmem, tempfiles
from gpu_pitr.format.entries import Delete, Insert, Update
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.synth import write_synthetic_wal

T0 = 1_700_000_000


def _not_linux(monkeypatch) -> None:
    """What macOS lacks: ``os.preadv`` before macOS 11; ``copy_file_range``,
    ``sched_getaffinity``, ``madvise(MADV_DONTNEED)`` as used and ``sync_file_range``
    always; and the platform is not Linux (no mapped reads)."""
    for name in ("preadv", "copy_file_range", "sched_getaffinity", "posix_fadvise"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    fields = ("sysname", "nodename", "release", "version", "machine")
    uname = SimpleNamespace(**{**dict(zip(fields, os.uname(), strict=True)),
                               "sysname": "Darwin"})
    monkeypatch.setattr(os, "uname", lambda: uname)
    monkeypatch.setattr(hostmem, "_madvise", None)  # looked up again: none
    monkeypatch.setattr(tempfiles, "_sync_file_range", lambda: None)  # no such symbol


def test_read_into_without_preadv(tmp_path: Path, monkeypatch) -> None:
    from gpu_pitr.format.segments import read_into

    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 40)
    fd = os.open(path, os.O_RDONLY)
    try:
        want = []
        for patched in (False, True):
            if patched:
                monkeypatch.delattr(os, "preadv", raising=False)
            buf = np.zeros(4096, np.uint8)
            got = [read_into(fd, memoryview(buf)[:4096], 100),
                   read_into(fd, memoryview(buf)[10:20], 10_230),  # 10 asked, 10 left
                   read_into(fd, memoryview(buf)[:8], 10_240)]  # at the end
            want.append((got, buf.tobytes()))
        assert want[0] == want[1]
        assert want[0][0] == [4096, 10, 0]
    finally:
        os.close(fd)


def test_read_into_asks_at_most_int_max(tmp_path: Path, monkeypatch) -> None:
    from gpu_pitr.format.segments import read_into

    # macOS fails a preadv(2) of more than INT_MAX bytes with EINVAL (Linux returns
    # fewer): a chunk or snapshot block that large must be read in parts.
    def preadv(fd, buffers, offset):
        if sum(len(b) for b in buffers) > 2**31 - 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return len(buffers[0])

    monkeypatch.setattr(os, "preadv", preadv)
    try:
        big = mmap.mmap(-1, (2 << 30) + 4096)  # never touched: no memory is used
    except (OSError, OverflowError, MemoryError):
        pytest.skip("no 2 GiB of address space")
    try:
        view = memoryview(big)
        assert 0 < read_into(0, view, 0) <= 2**31 - 1
        view.release()
    finally:
        big.close()


def _write_small(wal: Path) -> None:
    with WalWriter(wal, created=T0) as w:
        w.append(Insert("a", [1.0, 2.0], {"k": "v"}, T0 + 1))
        w.append(Insert("b", [3.0, 4.0], None, T0 + 2))
        w.append(Update("a", [5.0, 6.0], None, T0 + 3))
        w.rotate(created=T0 + 4)
        w.append(Delete("b", T0 + 5))


def _commands(root: Path) -> dict:
    """What each command gives on the logs in ``root``: exit statuses, outputs read back."""
    wal, big = root / "wal", root / "big"
    seen = {}
    argvs = {
        "inspect": ["inspect", str(big)],
        "verify": ["verify", str(big)],
        "restore": ["restore", str(big), "--out", str(root / "big.npz"), "-q",
                    "--chunk-size", "256K"],
        "restore-small": ["restore", str(wal), "--out", str(root / "small.npz"), "-q",
                          "--to-time", str(T0 + 4)],
        "snapshot": ["snapshot", str(big), "--out", str(root / "snap"), "-q"],
        "verify-snap": ["verify", str(root / "snap")],
        "restore-base": ["restore", str(big), "--base", str(root / "snap"),
                         "--out", str(root / "again.npz"), "-q"],
        "archive": ["archive", str(big), "--out", str(root / "arch"), "-q"],
    }
    for name, argv in argvs.items():
        seen[name] = cli.main(argv)
    # A segment grown since it was archived: the copy is checked against its sums.
    with WalWriter(big, created=T0 + 10**6) as w:  # a new segment, after the last
        w.append(Insert("late", [0.5] * 8, None, T0 + 10**6))
    seen["archive-again"] = cli.main(["archive", str(big), "--out", str(root / "arch"), "-q"])
    seen["verify-arch"] = cli.main(["verify", str(root / "arch"), "--json"])
    seen["restore-arch"] = cli.main(["restore", str(root / "arch"),
                                     "--out", str(root / "arch.npz"), "-q"])
    for name in ("big.npz", "small.npz", "again.npz", "arch.npz"):
        with np.load(root / name, allow_pickle=False) as npz:
            report = json.loads(str(npz["report"]))
            seen[name] = (npz["ids"].tolist(), npz["vectors"].tobytes(),
                          npz["metadata"].tolist(),
                          json.dumps([report[k] for k in ("stop", "records_read", "inserts",
                                                          "updates", "deletes", "torn_tails",
                                                          "anomalies")]).replace(str(root), ""))
    seen["archived"] = {p.name: p.read_bytes() for p in (root / "arch").glob("wal-*.log")}
    return seen


def test_commands_give_the_same_without_linux_extras(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    results = []
    for patched in (False, True):
        root = tmp_path / ("patched" if patched else "linux")
        _write_small(root / "wal")
        write_synthetic_wal(root / "big", total_bytes=2 << 20, dim=8, segments=2, seed=3)
        with monkeypatch.context() as m:
            if patched:
                _not_linux(m)
            results.append(_commands(root))
        out = capsys.readouterr()
        assert "Traceback" not in out.err, out.err
    linux, patched = results
    assert all(code == 0 for code in [v for v in linux.values() if isinstance(v, int)]), linux
    assert patched == linux


def test_windows_is_refused_in_one_line(tmp_path: Path) -> None:
    # Windows has no pread, flock, O_NOFOLLOW or fsync of a directory, and
    # os.kill(pid, 0) there is a Ctrl-C to that process group, not a liveness check.
    code = ("import os, sys; os.name = 'nt'; sys.argv = ['gpu-pitr', 'inspect', sys.argv[1]]; "
            "from gpu_pitr.__main__ import run; run()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "gpu-pitr: error: this system is not supported (os.name is 'nt'): gpu-pitr runs "
        "on Linux and macOS; on Windows, run it under WSL"]


def _directory_fsync_fails(monkeypatch, code: int) -> None:
    """``os.fsync`` of a directory fails with ``code``; of a file, it works."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_file_system_that_cannot_fsync_a_directory(tmp_path: Path, monkeypatch) -> None:
    # VirtualBox's shared folders (a laptop's VM) have no fsync for directories: EINVAL.
    # PostgreSQL lets that be; every write command here failed on it, after the rename,
    # saying "nothing was left in its place" beside the output it had just put there.
    _write_small(tmp_path / "wal")
    _directory_fsync_fails(monkeypatch, errno.EINVAL)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    wal, arch = str(tmp_path / "wal"), str(tmp_path / "arch")
    for argv in (["restore", wal, "--out", str(tmp_path / "x.npz")],
                 ["restore", wal, "--out", str(tmp_path / "x.parquet")],
                 ["snapshot", wal, "--out", str(snaps / "a"), "--to-seq", "2"],
                 ["snapshot", wal, "--out", str(snaps / "b")], ["archive", wal, "--out", arch],
                 ["expire", arch, "--snapshots", str(snaps), "--keep", "1"]):
        assert cli.main([*argv, "-q"]) == 0, argv
    with np.load(tmp_path / "x.npz", allow_pickle=False) as npz:
        assert npz["ids"].tolist() == ["a"]
    assert sorted(p.name for p in snaps.iterdir()) == ["b"]


def test_a_directory_fsync_that_fails_after_the_rename_says_so(tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    # EIO from the directory's fsync comes after the rename: the output is there, whole.
    # It said "cannot write ...; nothing was left in its place" beside it.
    _write_small(tmp_path / "wal")
    wal, out, arch = str(tmp_path / "wal"), tmp_path / "x.npz", str(tmp_path / "arch")
    os.mkdir(arch)  # (a directory archive creates is synced into its parent: said apart)
    _directory_fsync_fails(monkeypatch, errno.EIO)
    assert cli.main(["restore", wal, "--out", str(out), "-q"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"gpu-pitr: error: {out}: the npz output is written and in place, but its "
                    "directory could not be synced: Input/output error; a crash of the "
                    "system now may lose it")
    with np.load(out, allow_pickle=False) as npz:
        assert npz["ids"].tolist() == ["a"]
    assert cli.main(["archive", wal, "--out", arch, "-q"]) == 1
    err = capsys.readouterr().err
    assert "the archive copy is written and in place, but the archive directory could not " \
           "be synced: Input/output error" in err, err
    assert "nothing was left" not in err


def _fsync_of_fails(monkeypatch, directory: Path, code: int = errno.EIO) -> None:
    """``os.fsync`` of ``directory`` alone fails with ``code``."""
    real, ino = os.fsync, os.stat(directory).st_ino

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode) and st.st_ino == ino:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("again", [False, True], ids=["new", "replaced"])
def test_a_snapshot_whose_directory_fsync_fails_after_the_rename_says_so(
        tmp_path: Path, monkeypatch, capsys, again: bool) -> None:
    # The snapshot directory is renamed into place (tempfiles.install_dir), then its
    # parent is synced: an EIO there said "nothing was left in its place" beside it.
    _write_small(tmp_path / "wal")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["snapshot", str(tmp_path / "wal"), "--out", str(out / "snap"), "-q"]
    if again:
        assert cli.main(argv) == 0
    _fsync_of_fails(monkeypatch, out)
    assert cli.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"gpu-pitr: error: {out / 'snap'}: the snapshot output is written and in "
                    "place, but its directory could not be synced: Input/output error; a "
                    "crash of the system now may lose it")
    monkeypatch.undo()
    assert cli.main(["verify", str(out / "snap")]) == 0


def test_a_file_not_synced_inside_a_new_directory_is_not_in_place(tmp_path: Path,
                                                                  monkeypatch) -> None:
    # A file renamed into the hidden directory of new_dir (the dataset's report, in
    # scaleout) whose fsync of that directory fails: the directory is removed, so the
    # error is the fsync's, not NotSyncedError ("written and in place").
    from gpu_pitr.errors import NotSyncedError, OutputError
    from gpu_pitr.outputs import atomic_files

    out = tmp_path / "dataset"
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.path.samefile(
                f"/proc/self/fd/{fd}", tmp_dir[0]):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    tmp_dir = []
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        with tempfiles.new_dir(out, lambda p: None, lambda p: False, lambda n: False) as tmp:
            tmp_dir.append(tmp)
            with atomic_files(tmp / "report.json") as (name,):
                name.write_text("{}")
    assert not isinstance(info.value, NotSyncedError), info.value
    assert info.value.errno == errno.EIO
    assert not out.exists() and not tmp_dir[0].exists()
    assert "nothing was left in its place" in str(OutputError(out, "Parquet dataset",
                                                               info.value))


def test_a_dataset_part_not_synced_is_not_called_in_place(tmp_path: Path, monkeypatch) -> None:
    # A worker writes its Parquet part into the dataset's hidden directory, which the
    # failure removes: "written and in place" would be false.
    import pickle

    import gpu_pitr
    from gpu_pitr import scaleout
    from gpu_pitr.errors import NotSyncedError, OutputError

    pytest.importorskip("pyarrow")
    _write_small(tmp_path / "wal")
    index = gpu_pitr.restore(tmp_path / "wal", backend="cpu")
    hidden, shown = tmp_path / ".dataset.tmp", tmp_path / "dataset"
    hidden.mkdir()
    _fsync_of_fails(monkeypatch, hidden)
    with pytest.raises(OutputError) as info:
        scaleout._write_part(index, str(hidden / "part.parquet"),
                             json.dumps(index.report.to_dict()), str(shown / "part.parquet"))
    assert str(info.value) == (f"{shown / 'part.parquet'}: cannot write the parquet output: "
                               "Input/output error; nothing was left in its place")
    again = pickle.loads(pickle.dumps(NotSyncedError(OSError(errno.EIO, "Input/output error"))))
    assert again.cause.errno == errno.EIO


@pytest.mark.parametrize("fmt", ["npz", "snapshot"])
def test_an_index_not_synced_still_gets_its_report(tmp_path: Path, monkeypatch, capsys,
                                                   fmt: str) -> None:
    # The index is renamed into place inside the report's write (write_json's then());
    # its directory's fsync then failed (EIO), and the report, whose previous file had
    # already gone aside, was never renamed into place: an index in place with no report
    # beside it. The report follows the index in; the index's error is the one said.
    _write_small(tmp_path / "wal")
    out_dir, rep_dir = tmp_path / "out", tmp_path / "reports"
    out_dir.mkdir()
    rep_dir.mkdir()
    out = out_dir / ("x.npz" if fmt == "npz" else "snap")
    report = rep_dir / "r.json"
    report.write_text('{"old": true}\n')  # the previous run's: it must not stay
    _fsync_of_fails(monkeypatch, out_dir)
    argv = ["restore", str(tmp_path / "wal"), "--out", str(out), "--format", fmt, "-q"]
    assert cli.main([*argv, "--report-json", str(report)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"gpu-pitr: error: {out}: the {fmt} output is written and in place, but "
                    "its directory could not be synced: Input/output error; a crash of the "
                    "system now may lose it")
    doc = json.loads(report.read_text())
    assert doc["records_read"] == 4 and doc["stop"]["reason"] == "end_of_log"
    assert sorted(p.name for p in rep_dir.iterdir()) == ["r.json"]
    # In the same directory the report's own sync fails too: the index's error is said.
    report = out_dir / "r.json"
    assert cli.main([*argv, "--report-json", str(report)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"gpu-pitr: error: {out}: the {fmt} output is written and in "
                           "place"), line
    assert json.loads(report.read_text())["records_read"] == 4
