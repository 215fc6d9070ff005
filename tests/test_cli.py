"""The ``gpu-pitr`` command line, run as a real subprocess (``python -m gpu_pitr``).

Every command is checked to leave the WAL directory byte-for-byte unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from reference import frame_log
from workloads import dir_state

import gpu_pitr
from gpu_pitr.errors import WalError
from gpu_pitr.format.entries import (
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    Delete,
    Insert,
    Update,
)
from gpu_pitr.format.writer import WalWriter

T0 = int(datetime(2026, 11, 26, 10, 0, tzinfo=UTC).timestamp())
# -0.0, +inf and a quiet NaN with a payload: must come back bit for bit.
ODD = np.array([0x80000000, 0x7F800000, 0x7FC12345], dtype="<u4").view("<f4")


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def write_wal(wal_dir: Path) -> Path:
    """Two segments: inserts, a batch, a committed and an aborted transaction, a checkpoint,
    a delete at exactly 10:02:00 and a transaction still open at the end.
    """
    wal = WalWriter(wal_dir, created=T0)
    wal.append(Insert("a", f32(1, 2, 3), {"k": "1"}, T0 + 1))  # seq 0
    wal.append(Insert("b", f32(4, 5, 6), None, T0 + 2))  # 1
    wal.append(Insert("c-é", ODD, {"lang": "fr", "ü": "ß"}, T0 + 3))  # 2
    wal.append(  # 3
        Batch(
            [
                Insert("d", f32(7, 7, 7), None, T0 + 10),
                Update("a", f32(1, 1, 1), None, T0 + 10),
                Delete("b", T0 + 10),
            ],
            T0 + 10,
        )
    )
    wal.append(BeginTransaction(1, T0 + 20))  # 4
    wal.append(Update("c-é", f32(9, 9, 9), {"lang": "de"}, T0 + 21))  # 5
    wal.append(Insert("e", f32(5, 5, 5), None, T0 + 22))  # 6
    wal.append(CommitTransaction(1, T0 + 30))  # 7
    wal.append(BeginTransaction(2, T0 + 40))  # 8
    wal.append(Delete("a", T0 + 41))  # 9
    wal.append(AbortTransaction(2, T0 + 42))  # 10
    wal.append(Checkpoint(10, T0 + 50))  # 11
    wal.rotate(T0 + 60)
    wal.append(Delete("d", T0 + 120))  # 12, at 10:02:00
    wal.append(Insert("f", f32(6, 6, 6), {"x": "y"}, T0 + 130))  # 13
    wal.append(BeginTransaction(3, T0 + 140))  # 14
    wal.append(Insert("g", f32(0, 0, 0), None, T0 + 141))  # 15, never committed
    wal.close()
    return wal_dir


A = ("a", [1, 1, 1], {"k": "1"})
C_FR = ("c-é", ODD, {"lang": "fr", "ü": "ß"})
C_DE = ("c-é", [9, 9, 9], {"lang": "de"})
D = ("d", [7, 7, 7], None)
E = ("e", [5, 5, 5], None)
F = ("f", [6, 6, 6], {"x": "y"})
AFTER_BATCH = [A, C_FR, D]  # up to 10:00:10 (seq 3)
AFTER_TXN = [A, C_DE, D, E]  # up to 10:00:30 (seq 7) and until 10:02:00 exclusive
AT_1002 = [A, C_DE, E]
LATEST = [A, C_DE, E, F]


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return write_wal(tmp_path / "wal")


def cli(
    *args: object, wal_dir: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m gpu_pitr ARGS``; with ``wal_dir``, assert the command left it unchanged."""
    before = dir_state(wal_dir) if wal_dir is not None and wal_dir.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_pitr", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if before is not None:
        assert dir_state(wal_dir) == before, f"{args} changed the WAL directory"
    return proc


def restore_npz(wal_dir: Path, out: Path, *args: object, warned: tuple = ()) -> dict:
    """``restore --out OUT.npz`` (exit 0, stderr only the ``warned`` lines), loaded."""
    proc = cli("restore", wal_dir, "--out", out, *args, wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"gpu-pitr: warning: {w}" for w in warned]
    with np.load(out, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def assert_index(npz: dict, expected: list[tuple]) -> None:
    assert list(npz["ids"]) == [id_ for id_, _, _ in expected]
    assert npz["ids"].dtype.kind == "U"
    assert npz["vectors"].dtype == np.float32
    assert npz["vectors"].shape == (len(expected), 3)
    for row, (_, vector, _) in zip(npz["vectors"], expected, strict=True):
        assert row.view("<u4").tolist() == np.asarray(vector, dtype="<f4").view("<u4").tolist()
    assert npz["metadata"].dtype.kind == "U"
    assert [json.loads(m) for m in npz["metadata"]] == [meta for _, _, meta in expected]
    assert npz["report"].shape == ()
    assert isinstance(json.loads(str(npz["report"])), dict)


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu-pitr: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_restore_latest_is_the_default(wal_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "latest.npz"
    proc = cli("restore", wal_dir, "--out", out, wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    assert "restored 4 ids, dim 3" in proc.stdout
    assert "stopped: at the end of the log" in proc.stdout
    with np.load(out, allow_pickle=False) as npz:
        assert_index(dict(npz), LATEST)
    assert_index(restore_npz(wal_dir, tmp_path / "l2.npz", "--latest"), LATEST)


@pytest.mark.parametrize(
    "target",
    [
        "2026-11-26T10:02:00Z",
        "2026-11-26T11:02:00+01:00",
        "2026-11-26T10:02:00.500+00:00",
        str(T0 + 120),
        f"{T0 + 120}.5",  # what `date +%s.%N` prints, rounded down
    ],
)
def test_restore_to_time_iso_and_unix(wal_dir: Path, tmp_path: Path, target: str) -> None:
    assert_index(restore_npz(wal_dir, tmp_path / "o.npz", "--to-time", target), AT_1002)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("2026-11-26T10:02:00Z", AFTER_TXN),
        # Fractions round up when exclusive: >= 10:01:59.5 is >= 10:02:00, and
        # >= 10:02:00.5 is >= 10:02:01, which keeps the delete stamped 10:02:00.
        ("2026-11-26T10:01:59.5Z", AFTER_TXN),
        ("2026-11-26T10:02:00.5Z", AT_1002),
        ("2026-11-26T10:02:00.0000001Z", AT_1002),
        (str(T0 + 120), AFTER_TXN),
        (f"{T0 + 119}.5", AFTER_TXN),
        (f"{T0 + 120}.000000001", AT_1002),
    ],
)
def test_restore_exclusive(wal_dir: Path, tmp_path: Path, target: str, expected: list) -> None:
    npz = restore_npz(wal_dir, tmp_path / "o.npz", "--to-time", target, "--exclusive")
    assert_index(npz, expected)


@pytest.mark.parametrize(("seq", "expected"), [(6, AFTER_BATCH), (7, AFTER_TXN)])
def test_restore_to_seq(wal_dir: Path, tmp_path: Path, seq: int, expected: list) -> None:
    # seq 6 is inside transaction 1, which is not yet committed there.
    assert_index(restore_npz(wal_dir, tmp_path / "o.npz", "--to-seq", seq), expected)


def test_restore_to_seq_exclusive_stops_before_the_record(wal_dir: Path, tmp_path: Path) -> None:
    # seq 7 commits transaction 1: exclusive, the state just before it.
    out = tmp_path / "o.npz"
    proc = cli("restore", wal_dir, "--out", out, "--to-seq", "7", "--exclusive",
               wal_dir=wal_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert lines[1] == "target: seq 7, exclusive"
    assert lines[2].startswith("stopped: before CommitTransaction ")
    # Transaction 1 is open there: not applied (its commit is the record stopped before).
    assert lines[2].endswith(": seq 7 at 2026-11-26T10:00:30Z (1 transaction open there, "
                             "not applied: 1)")
    with np.load(out, allow_pickle=False) as npz:
        assert_index(dict(npz), AFTER_BATCH)
    proc = cli("restore", wal_dir, "--out", out, "--to-seq", "7", wal_dir=wal_dir)
    assert proc.stdout.splitlines()[2].startswith("stopped: after CommitTransaction ")


def test_out_name_is_kept_exactly(wal_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "restored.bin"
    assert_index(restore_npz(wal_dir, out, "--format", "npz"), LATEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored.bin", "wal"]


def test_empty_wal_dir_restores_an_empty_index(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    # Not an error (SPEC section 2), but said on stderr: a WAL_DIR may be the wrong one.
    npz = restore_npz(wal, tmp_path / "o.npz", warned=(
        f"nothing to restore: no wal-<16 hex digits>.log files in {wal}",))
    assert npz["ids"].shape == (0,)
    assert npz["vectors"].shape[0] == 0
    assert npz["metadata"].shape == (0,)
    # The summary has no dimension to give (the report's dim is null).
    proc = cli("restore", wal, "--out", tmp_path / "p.npz", wal_dir=wal)
    assert proc.stdout.startswith(f"restored 0 ids -> {tmp_path / 'p.npz'} (backend ")


def test_a_wal_dir_without_segments_says_what_it_may_be_instead(
    wal_dir: Path, tmp_path: Path
) -> None:
    """Empty is not an error (SPEC 2), but a snapshot or the WAL's parent given as WAL_DIR
    is named, by the API's report and by every command."""
    import gpu_pitr
    from gpu_pitr import snapshot

    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal_dir, backend="cpu"), snaps / "s1")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "wal-0000000000000001.LOG").write_bytes(b"")  # not a segment name
    none = "no wal-<16 hex digits>.log files in {}"
    messages = {
        snaps / "s1": none + ": it is a gpu-pitr snapshot; give it as --base (base= in the "
        "API), with the WAL directory as WAL_DIR",
        snaps: none + ": it holds gpu-pitr snapshots; give it as --snapshots (snapshots= in "
        "the API), with the WAL directory as WAL_DIR",
        tmp_path: none + f", but {wal_dir} has some: is that the WAL directory?",
        empty: none,
    }
    for path, message in messages.items():
        report = gpu_pitr.restore(path, backend="cpu").report
        assert report.message == "nothing to restore: " + message.format(path)
    assert gpu_pitr.restore(wal_dir, backend="cpu").report.message == ""

    s1 = snaps / "s1"
    proc = cli("restore", s1, "--out", tmp_path / "o.npz", wal_dir=s1)
    said = "nothing to restore: " + messages[s1].format(s1)
    assert proc.returncode == 0 and proc.stderr == f"gpu-pitr: warning: {said}\n"
    assert said in proc.stdout.splitlines()
    # inspect lists a directory of snapshots and verify checks each snapshot in it
    # (test_snapshot_format.py); of a directory with nothing at all, they say so.
    proc = cli("inspect", snaps, wal_dir=snaps)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"snapshots in {snaps}: 1, 0 with a damaged manifest")
    assert f"gpu-pitr restore WAL_DIR --snapshots {snaps} " in proc.stdout
    proc = cli("verify", empty, wal_dir=empty)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["note: " + messages[empty].format(empty)]
    # a WAL directory with segments gets no note
    assert cli("verify", wal_dir, wal_dir=wal_dir).stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["--to-time", "2026-11-26T10:02:00"],  # ISO without a zone
        ["--to-time", "yesterday"],
        ["--to-time", "-5"],
        ["--to-time", "1969-12-31T23:59:59Z"],  # before the epoch
        ["--to-time", str(2**64)],
        ["--to-time", "1e9"],
        ["--to-time", "2026-11-26T10:02:00.5"],
        ["--to-time", "20261126100200Z"],  # no T: not 00:20:00, "1" between date and time
        ["--to-time", "9999-366T00:00Z"],  # no day 366 (not an OverflowError's traceback)
        # ISO-8601's 10:30, which datetime.fromisoformat read as 10:00:00.5
        ["--to-time", "2026-11-26T10.5Z"],
        ["--to-seq", "-1"],
        ["--to-seq", "1", "--latest"],
        ["--exclusive"],  # no target to leave out
        ["--latest", "--exclusive"],
        ["--to-time", "1", "--to-seq", "1"],
        ["--backend", "tpu"],
    ],
)
def test_usage_errors_exit_2(wal_dir: Path, tmp_path: Path, args: list) -> None:
    out = tmp_path / "o.npz"
    proc = cli("restore", wal_dir, "--out", out, *args, wal_dir=wal_dir)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"gpu-pitr {version('gpu-pitr')}\n"


def test_iso_without_zone_says_so(wal_dir: Path, tmp_path: Path) -> None:
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--to-time", "2026-11-26T10:02")
    assert proc.returncode == 2
    assert "time zone" in proc.stderr


def corrupt_record(wal_dir: Path, seq: int) -> tuple[str, int, int]:
    """Give the record with ``seq`` an unknown variant; return its file, start and end."""
    for item in frame_log(wal_dir):
        if item[0] == "record" and item[4] == seq:
            _, name, offset, end, _, _ = item
            path = wal_dir / name
            data = bytearray(path.read_bytes())
            data[offset + 12] = 99
            path.write_bytes(bytes(data))
            return name, offset, end
    raise AssertionError(f"no record with seq {seq}")


def error_offset(line: str) -> int:
    return int(line.split(": offset ")[1].split(":")[0])


def test_corrupt_record_is_one_line_naming_file_and_offset(wal_dir: Path, tmp_path: Path) -> None:
    name, start, end = corrupt_record(wal_dir, 5)
    out = tmp_path / "o.npz"
    out.write_bytes(b"the previous restore")
    proc = cli("restore", wal_dir, "--out", out, wal_dir=wal_dir)
    line = assert_one_error_line(proc, name, "seq 5")
    assert start <= error_offset(line) < end
    # Atomic: the old OUT is intact and no temp file is left beside it.
    assert out.read_bytes() == b"the previous restore"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "wal"]


def test_a_seq_target_no_record_carries_is_one_line_naming_the_wal_dir(
        wal_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.npz"
    out.write_bytes(b"the previous restore")
    proc = cli("restore", wal_dir, "--out", out, "--to-seq", 99, wal_dir=wal_dir)
    assert_one_error_line(proc, f"gpu-pitr: error: {wal_dir}: no record has sequence "
                                "number 99 (", "seq 0 to 15")
    assert out.read_bytes() == b"the previous restore"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "wal"]


def test_a_vector_of_another_dimension_is_one_line_naming_its_record(tmp_path: Path) -> None:
    """Fatal with --skip-corrupt too (SPEC: it is not damage to skip)."""
    wal_dir = tmp_path / "wal"
    with WalWriter(wal_dir, created=T0) as wal:
        wal.append(Insert("a", f32(1, 2, 3), None, T0 + 1))
        wal.append(Insert("b", f32(1, 2, 3, 4), None, T0 + 2))  # seq 1
    name, start, end = next((item[1], item[2], item[3]) for item in frame_log(wal_dir)
                            if item[0] == "record" and item[4] == 1)
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--skip-corrupt",
               wal_dir=wal_dir)
    line = assert_one_error_line(proc, f"{wal_dir / name}: offset ", ": seq 1: ",
                                 "vector of length 4 differs from the index dimension 3")
    assert start <= error_offset(line) < end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]


def test_damage_after_the_stop_point_is_not_fatal(wal_dir: Path, tmp_path: Path) -> None:
    corrupt_record(wal_dir, 5)
    npz = restore_npz(wal_dir, tmp_path / "o.npz", "--to-seq", 3)
    assert_index(npz, AFTER_BATCH)


def test_skip_corrupt(wal_dir: Path, tmp_path: Path) -> None:
    corrupt_record(wal_dir, 13)  # Insert f
    seg = wal_dir / f"wal-{T0 + 60:016x}.log"
    at = gpu_pitr.restore(wal_dir, backend="cpu", skip_corrupt=True).report.skipped[0]["offset"]
    npz = restore_npz(wal_dir, tmp_path / "o.npz", "--skip-corrupt",
                      warned=(f"{seg}: offset {at}: seq 13: skipped: unknown variant",))
    assert_index(npz, AT_1002)
    skipped = json.loads(str(npz["report"]))["skipped"]
    assert [(Path(s["file"]).name, s["seq"]) for s in skipped] == [(seg.name, 13)]


def test_missing_wal_dir_is_one_line(tmp_path: Path) -> None:
    proc = cli("restore", tmp_path / "nope", "--out", tmp_path / "o.npz")
    assert_one_error_line(proc, f"{tmp_path / 'nope'}: no such directory")
    assert not (tmp_path / "o.npz").exists()


def test_an_out_whose_directory_is_missing_or_a_file_is_one_line(wal_dir: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for parent, why in (("nope", "no such directory for --out"),
                        ("file", "not a directory, for --out")):
        proc = cli("restore", wal_dir, "--out", tmp_path / parent / "o.npz")
        assert_one_error_line(proc, f"{tmp_path / parent}: {why}")
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--report-json",
               tmp_path / "file" / "r.json")
    assert_one_error_line(proc, f"{tmp_path / 'file'}: not a directory, for --report-json")
    assert not (tmp_path / "o.npz").exists()


def test_wal_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "wal-0000000000000001.log").write_bytes(b"")
    for command, out in (("restore", "o.npz"), ("snapshot", "snap")):
        proc = cli(command, tmp_path / "wal-0000000000000001.log", "--out", tmp_path / out)
        assert_one_error_line(proc, "wal-0000000000000001.log: not a directory")
    assert_one_error_line(cli("inspect", tmp_path / "wal-0000000000000001.log"),
                          "not a directory")
    with pytest.raises(WalError, match="no such directory"):
        gpu_pitr.restore(tmp_path / "nope")
    with pytest.raises(WalError, match="WAL directory: not a directory"):
        gpu_pitr.restore(tmp_path / "wal-0000000000000001.log")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal-0000000000000001.log"]


def test_unwritable_out_dir_is_one_line(wal_dir: Path, tmp_path: Path) -> None:
    proc = cli("restore", wal_dir, "--out", tmp_path / "missing" / "o.npz", wal_dir=wal_dir)
    assert_one_error_line(proc, "missing")


def test_a_directory_that_refuses_new_files_is_named_not_a_temp_file(tmp_path: Path,
                                                                    monkeypatch) -> None:
    # The check creates a temp file (the only test that holds for root too); its name,
    # .o.npz.tmp-PID-HEX, is not one the person gave, so the line names the directory.
    from contextlib import contextmanager

    from gpu_pitr import outputs

    @contextmanager
    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".o.npz.tmp-1-0a1b2c3d"))
        yield

    monkeypatch.setattr(outputs, "atomic_files", refused)
    for check in (lambda: outputs.check_output(tmp_path / "o.npz", "npz"),
                  lambda: outputs.check_writable(tmp_path / "o.npz", "--report-json")):
        with pytest.raises(OSError) as err:
            check()
        assert str(err.value) == f"{tmp_path}: cannot create o.npz there: Permission denied"


@pytest.mark.parametrize("where", ["o.npz", "sub/o.npz", "."])
def test_out_inside_wal_dir_is_refused(wal_dir: Path, where: str) -> None:
    (wal_dir / "sub").mkdir()
    proc = cli("restore", wal_dir, "--out", wal_dir / where, wal_dir=wal_dir)
    assert proc.returncode == 2
    assert "inside WAL_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_out_inside_wal_dir_through_a_symlink_is_refused(wal_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(wal_dir)
    proc = cli("restore", wal_dir, "--out", tmp_path / "link" / "o.npz", wal_dir=wal_dir)
    assert proc.returncode == 2
    assert "inside WAL_DIR" in proc.stderr


def cuda_visible(env: dict) -> bool:
    """Would ``--backend cuda`` under ``env`` find a device: a GPU CuPy sees, or the simulator?"""
    if env.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return True
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean no GPU
        return False


@pytest.mark.parametrize("simulator", ["1", None])
def test_backend_cuda(wal_dir: Path, tmp_path: Path, simulator: str | None) -> None:
    # conftest turns the simulator on for the whole run: also try without it.
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator is not None:
        env["NUMBA_ENABLE_CUDASIM"] = simulator
    out = tmp_path / "o.npz"
    proc = cli("restore", wal_dir, "--out", out, "--backend", "cuda", wal_dir=wal_dir, env=env)
    if cuda_visible(env):
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # the simulator's wrapping NumPy scalars warn no one
        with np.load(out, allow_pickle=False) as npz:
            assert_index(dict(npz), LATEST)
    else:
        assert_one_error_line(proc, "cuda")
        assert not out.exists()


def make_read_only(path: Path) -> None:
    for entry in [*path.rglob("*"), path]:
        entry.chmod(stat.S_IMODE(entry.stat().st_mode) & ~0o222)


def test_read_only_wal_dir(wal_dir: Path, tmp_path: Path) -> None:
    # Root ignores the mode bits, so what is asserted is that nothing changed.
    make_read_only(wal_dir)
    try:
        assert_index(restore_npz(wal_dir, tmp_path / "o.npz", "--to-seq", 7), AFTER_TXN)
        assert cli("inspect", wal_dir, wal_dir=wal_dir).returncode == 0
        assert cli("inspect", wal_dir, "--json", wal_dir=wal_dir).returncode == 0
        proc = cli("restore", wal_dir, "--out", wal_dir / "o.npz", wal_dir=wal_dir)
        assert proc.returncode == 2
    finally:
        for entry in [*wal_dir.rglob("*"), wal_dir]:
            entry.chmod(stat.S_IMODE(entry.stat().st_mode) | 0o200)


def write_damaged_wal(wal_dir: Path) -> dict:
    """A WAL with every kind of thing ``inspect`` reports; returns where each one is."""
    wal = WalWriter(wal_dir, created=T0)
    wal.append(Insert("a", f32(1), None, T0 + 1))  # 0
    wal.append(Batch([Insert("b", f32(2), None, T0 + 2), Delete("a", T0 + 2)], T0 + 2))  # 1
    wal.append(Checkpoint(1, T0 + 3))  # 2
    wal.append(BeginTransaction(5, T0 + 4))  # 3
    wal.append(BeginTransaction(5, T0 + 5))  # 4: anomaly
    wal.append(Insert("c", f32(3), None, T0 + 6))  # 5
    wal.append(CommitTransaction(5, T0 + 7))  # 6
    wal.append(AbortTransaction(9, T0 + 8))  # 7: anomaly
    wal.append(BeginTransaction(6, T0 + 9))  # 8
    wal.append(Insert("d", f32(4), None, T0 + 10))  # 9
    wal.append(AbortTransaction(6, T0 + 11))  # 10
    wal.append(Insert("e", f32(5), None, T0 + 12))  # 11: made undecodable below
    wal.append(Insert("f", f32(6), None, T0 + 13))  # 12: given 3 trailing bytes below
    wal.close()
    # Reopened without recovery: a new segment, seq back to 0.
    wal = WalWriter(wal_dir, created=T0 + 100)
    wal.append(Insert("g", f32(7), {"m": "n"}, T0 + 101))  # 0
    wal.append(BeginTransaction(7, T0 + 102))  # 1: open at the end
    wal.close()

    first, second = (f"wal-{created:016x}.log" for created in (T0, T0 + 100))
    records = {(i[1], i[4]): i for i in frame_log(wal_dir) if i[0] == "record"}
    _, _, e_offset, _, _, _ = records[(first, 11)]
    _, _, f_offset, f_end, _, f_payload = records[(first, 12)]
    data = bytearray((wal_dir / first).read_bytes())
    data[e_offset + 12] = 99
    data[f_offset + 8 : f_offset + 12] = (len(f_payload) + 3).to_bytes(4, "little")
    (wal_dir / first).write_bytes(bytes(data[:f_end]) + b"xyz")
    second_size = (wal_dir / second).stat().st_size
    with open(wal_dir / second, "ab") as f:
        f.write(b"\x02\x00\x00\x00\x00\x00\x00")  # the first 7 bytes of a record
    bad = f"wal-{T0 + 200:016x}.log"
    (wal_dir / bad).write_bytes(b"NOPE" + bytes(20))
    empty = f"wal-{T0 + 300:016x}.log"
    (wal_dir / empty).write_bytes(b"")
    (wal_dir / "notes.txt").write_text("not a segment")
    return {
        "first": first,
        "second": second,
        "bad": bad,
        "empty": empty,
        "e_offset": e_offset,
        "f_offset": f_offset,
        "torn_offset": second_size,
        "checkpoint_offset": records[(first, 2)][2],
        "begin5_offset": records[(first, 4)][2],
        "abort9_offset": records[(first, 7)][2],
    }


def test_inspect_json(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    proc = cli("inspect", wal_dir, "--json", wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)

    segs = {s["name"]: s for s in doc["segments"]}
    assert list(segs) == [w["first"], w["second"], w["bad"], w["empty"]]
    first = segs[w["first"]]
    assert first["size"] == (wal_dir / w["first"]).stat().st_size
    assert (first["created"], first["records"]) == (T0, 13)
    assert (first["first_seq"], first["last_seq"]) == (0, 12)
    # Record 11 does not decode: its timestamp is unknown.
    assert (first["min_timestamp"], first["max_timestamp"]) == (T0 + 1, T0 + 13)
    second = segs[w["second"]]
    assert (second["created"], second["records"], second["first_seq"], second["last_seq"]) == (
        T0 + 100,
        2,
        0,
        1,
    )
    assert segs[w["bad"]]["created"] is None and segs[w["bad"]]["records"] == 0
    assert doc["totals"] == {
        "segments": 4,
        "bytes": sum((wal_dir / name).stat().st_size for name in segs),
        "records": 15,
    }

    assert doc["records_by_variant"] == {
        "Insert": 5,
        "Update": 0,
        "Delete": 0,
        "Batch": 1,
        "Checkpoint": 1,
        "BeginTransaction": 4,
        "CommitTransaction": 1,
        "AbortTransaction": 2,
    }
    nested = {k: v for k, v in doc["batch_entries_by_variant"].items() if v}
    assert nested == {"Insert": 1, "Delete": 1}
    assert doc["checkpoints"] == [
        {
            "file": w["first"],
            "offset": w["checkpoint_offset"],
            "seq": 2,
            "sequence_number": 1,
            "timestamp": T0 + 3,
        }
    ]
    txns = doc["transactions"]
    assert (txns["committed"], txns["aborted"], txns["open_at_end"]) == (1, 1, [7])
    assert [(a["offset"], a["seq"], a["transaction_id"]) for a in txns["anomalies"]] == [
        (w["begin5_offset"], 4, 5),
        (w["abort9_offset"], 7, 9),
    ]
    assert doc["seq_restarts"] == [{"file": w["second"], "offset": 16, "from": 12, "to": 0}]
    assert [(d["kind"], d["file"], d["offset"], d["seq"], d["bytes"]) for d in doc["damage"]] == [
        ("undecodable", w["first"], w["e_offset"], 11, None),
        ("trailing_bytes", w["first"], w["f_offset"], 12, 3),
        ("torn_tail", w["second"], w["torn_offset"], None, 7),
        ("bad_header", w["bad"], 0, None, None),
        ("torn_tail", w["empty"], 0, None, 0),
    ]
    assert "unknown variant 99" in doc["damage"][0]["what"]


def test_inspect_text(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    proc = cli("inspect", wal_dir, wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for name in (w["first"], w["second"], w["bad"], w["empty"]):
        assert name in text
    assert "2026-11-26T10:00:00Z" in text
    assert "1 committed, 1 aborted, 1 open at end (7)" in text
    assert f"{w['second']}: offset 16: 12 -> 0" in text
    assert f"{w['first']}: offset {w['e_offset']}: seq 11: undecodable" in text
    assert "3 trailing bytes" in text
    assert f"{w['second']}: offset {w['torn_offset']}: torn tail, 7 bytes lost" in text
    assert "bad header: wrong magic" in text


def test_inspect_then_restore_a_clean_wal(wal_dir: Path) -> None:
    doc = json.loads(cli("inspect", wal_dir, "--json", wal_dir=wal_dir).stdout)
    assert doc["damage"] == [] and doc["seq_restarts"] == []
    assert doc["totals"]["records"] == 16
    assert doc["transactions"]["open_at_end"] == [3]


def test_inspect_missing_dir_is_one_line(tmp_path: Path) -> None:
    assert_one_error_line(cli("inspect", tmp_path / "nope"), "nope", "no such directory")


def test_auto_says_why_the_cpu_executor_ran_where_cupy_sees_no_gpu(wal_dir: Path,
                                                                    monkeypatch) -> None:
    from gpu_pitr.executors import device

    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    why = "CuPy sees no GPU (CUDARuntimeError: cudaErrorNoDevice: no CUDA-capable device)"
    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda allow_simulator: why)
    got = gpu_pitr.restore(wal_dir, backend="auto")
    assert got.report.backend == "cpu"
    assert got.report.message == f"backend auto: the cpu executor ran, as {why}"
    # Without CuPy the cpu executor is what was asked for: nothing said.
    monkeypatch.setattr(device, "cuda_unavailable_reason",
                        lambda allow_simulator: "CuPy is not installed (pip install ...)")
    assert gpu_pitr.restore(wal_dir, backend="auto").report.message == ""
    with pytest.raises(gpu_pitr.errors.BackendUnavailableError, match="--backend cuda: CuPy"):
        gpu_pitr.restore(wal_dir, backend="cuda")


def test_what_a_restore_went_past_is_warned_of_on_stderr_with_quiet_too(tmp_path: Path) -> None:
    # Damage that is not fatal is still news to the operator: a torn tail (the rest of
    # its file unread), each record or file --skip-corrupt skipped. Not only in the
    # report, and not dropped by --quiet, which drops the bar and the summary.
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    path = {k: wal_dir / w[k] for k in ("first", "second", "bad")}
    want = [
        f"gpu-pitr: warning: {path['second']}: offset {w['torn_offset']}: torn tail, "
        "7 bytes lost",
        # the byte where decoding failed (the variant, after the 12-byte record header)
        f"gpu-pitr: warning: {path['first']}: offset {w['e_offset'] + 12}: seq 11: skipped: "
        "unknown variant",
        f"gpu-pitr: warning: {path['bad']}: offset 0: skipped: wrong magic b'NOPE' "
        "(expected b'WALV')",
    ]  # the empty segment's torn tail lost no bytes: nothing to warn of
    for quiet in ([], ["-q"]):
        proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--skip-corrupt", *quiet,
                   wal_dir=wal_dir)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines() == want
        assert ("damage: 2 torn tails, 2 skipped" in proc.stdout) is not bool(quiet)
    # Past the first WARN_EACH of a kind, a count.
    from gpu_pitr.cli import WARN_EACH, restore_warnings

    many = [{"file": "f", "offset": i, "bytes_lost": 1} for i in range(WARN_EACH + 3)]
    lines = restore_warnings({"torn_tails": many, "skipped": [], "warnings": ["w"]})
    assert lines[WARN_EACH - 1] == f"f: offset {WARN_EACH - 1}: torn tail, 1 bytes lost"
    assert lines[WARN_EACH:] == ["3 more torn tails (the report lists every one)", "w"]


def test_a_wal_dir_without_segments_is_warned_of_with_quiet_too(tmp_path: Path) -> None:
    # Not an error (SPEC section 2: an empty index and a report that says so), but a
    # WAL_DIR one level too high restores nothing: rc 0 with nothing said would pass
    # unnoticed in a script.
    wal_dir = tmp_path / "store" / "wal"
    write_wal(wal_dir)
    proc = cli("restore", tmp_path / "store", "--out", tmp_path / "o.npz", "-q")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == (f"gpu-pitr: warning: nothing to restore: no wal-<16 hex digits>.log "
                           f"files in {tmp_path / 'store'}, but {wal_dir} has some: is that "
                           "the WAL directory?\n")


def test_stdout_that_cannot_be_written_is_named_and_verify_says_2(wal_dir: Path,
                                                                  tmp_path: Path) -> None:
    # "[Errno 28] No space left on device" named nothing, and verify's 1 means damage.
    # A command that changes files goes on to its end (archive stopped after its first
    # segment's line), then says so and exits 1, as GNU tools do; so do --help and
    # --version (``ls --help > /dev/full``: "write error", exit 2).
    error = "gpu-pitr: error: stdout: cannot write: No space left on device"
    done = " (the {} went on to its end: only what it printed there is lost)"
    for args, rc, said in (
            (("verify", wal_dir), 2, ""), (("inspect", wal_dir), 1, ""),
            # (inspect --records printed "[Errno 28] No space left on device")
            (("inspect", "--records", wal_dir), 1, ""),
            (("inspect", "--records", "--json", "--limit", "1", wal_dir), 1, ""),
            (("restore", wal_dir, "--out", tmp_path / "o.npz"), 1, done.format("restore")),
            (("archive", wal_dir, "--out", tmp_path / "arc"), 1, done.format("archive")),
            (("archive", wal_dir, "--out", tmp_path / "arc2", "--json"), 1,
             done.format("archive")),
            # (argparse dropped the error: exit 0, nothing said)
            (("--help",), 1, ""), (("--version",), 1, ""), (("restore", "--help"), 1, "")):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                                  stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
        assert (proc.returncode, proc.stderr) == (rc, f"{error}{said}\n"), args
    with np.load(tmp_path / "o.npz", allow_pickle=False) as npz:
        assert list(npz["ids"]) == [id_ for id_, _, _ in LATEST]
    for arc in ("arc", "arc2"):
        assert sorted(p.name for p in (tmp_path / arc).glob("wal-*.log")) == sorted(
            p.name for p in wal_dir.glob("wal-*.log"))


def test_more_segments_than_the_process_may_hold_open(tmp_path):
    """An archive of many segments (here 300, under a limit of 64 open files) is read a
    file at a time: each segment's descriptor is closed after its last piece, and
    verify keeps a few to look at damaged bytes again (each segment here ends with a
    header of another second: damage it looks at)."""
    import resource

    from workloads import Ins, LogBuilder, encode_header

    b = LogBuilder(created=1000)
    for s in range(300):
        b.add(Ins(f"id{s % 7}", [float(s)], None, s))
        b.raw(encode_header(1))  # appended mid-file, another second: header_mismatch
        b.new_segment(1001 + s)
    wal = Path(b.write(tmp_path / "wal"))

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    before = dir_state(wal)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    runs = {  # in this order: the later ones use what the earlier wrote
        "restore": ["restore", wal, "--out", tmp_path / "o.npz", "--backend", "cpu"],
        "verify": ["verify", wal],
        "inspect": ["inspect", wal],
        "records": ["inspect", wal, "--records"],
        "transactions": ["inspect", wal, "--transactions"],
        "dry-run": ["restore", wal, "--out", tmp_path / "d.npz", "--dry-run"],
        "snapshot": ["snapshot", wal, "--out", snaps / "s1", "--to-time", 150,
                     "--backend", "cpu"],
        "from snapshots": ["restore", wal, "--out", tmp_path / "s.npz", "--snapshots", snaps,
                           "--backend", "cpu"],
    }
    for name, args in runs.items():
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                              capture_output=True, text=True, timeout=600,
                              preexec_fn=limited)
        assert "Too many open files" not in proc.stdout + proc.stderr, name
        assert proc.returncode == (1 if name == "verify" else 0), (name, proc.stderr)
    assert dir_state(wal) == before
    for out in ("o.npz", "s.npz"):
        with np.load(tmp_path / out, allow_pickle=False) as npz:
            assert list(npz["ids"]) == [f"id{k}" for k in range(7)]
            assert npz["vectors"][:, 0].tolist() == [
                float(max(s for s in range(300) if s % 7 == k)) for k in range(7)]
    problems = cli("verify", wal, "--json")
    kinds = [p["kind"] for p in json.loads(problems.stdout)["problems"]]
    assert kinds == ["header_mismatch"] * 300


def test_zero_filled_records_on_the_command_line(tmp_path):
    """Zeros where records should be: without --skip-corrupt one line that says so;
    with it one warning, one report entry and the summary's count of the records."""
    from workloads import Ins, LogBuilder

    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    start = b.raw(bytes(1200))  # 100 records of 12 zero bytes
    b.add(Ins("c", [3.0], None, 2))
    wal = Path(b.write(tmp_path / "wal"))
    out = tmp_path / "o.npz"
    proc = cli("restore", wal, "--out", out, "--backend", "cpu", wal_dir=wal)
    assert proc.returncode == 1 and not out.exists()
    (line,) = proc.stderr.strip().splitlines()
    assert f"offset {start + 11}: seq 0: payload truncated" in line and "12 zero bytes" in line
    proc = cli("restore", wal, "--out", out, "--backend", "cpu", "--skip-corrupt", wal_dir=wal)
    assert proc.returncode == 0, proc.stderr
    (warning,) = proc.stderr.strip().splitlines()
    assert f"offset {start + 11}: seq 0: skipped: zero-filled: 100 records" in warning
    assert "1 skipped (one a run of 100 zero-filled records)" in proc.stdout
    with np.load(out, allow_pickle=False) as npz:
        assert list(npz["ids"]) == ["a", "c"]
        (skip,) = json.loads(str(npz["report"]))["skipped"]
    assert (skip["start"], skip["records"], skip["bytes"]) == (start, 100, 1200)


@pytest.mark.parametrize("name, value, fragment", [
    ("NUMPY_MADVISE_HUGEPAGE", "garbage", "NUMPY_MADVISE_HUGEPAGE='garbage' is not a whole number"),
    ("NUMBA_NUM_THREADS", "0", "NUMBA_NUM_THREADS='0': Numba needs at least 1 thread"),
    ("NUMBA_NUM_THREADS", "abc", "NUMBA_NUM_THREADS='abc' is not a whole number"),
    ("NUMBA_DISABLE_JIT", "x", "NUMBA_DISABLE_JIT='x' is not a whole number"),
    ("NUMBA_DISABLE_JIT", "1", "NUMBA_DISABLE_JIT='1': gpu-pitr's loops are compiled"),
    ("NUMBA_THREADING_LAYER", "xyz", "NUMBA_THREADING_LAYER='xyz' is not a Numba threading"),
    ("NUMBA_THREADING_LAYER", "tbb", "NUMBA_THREADING_LAYER='tbb': Numba cannot start"),
    ("GPU_PITR_MAP_READS", "maybe", "GPU_PITR_MAP_READS='maybe' is neither on (1, on, yes, "
     "true) nor off (0, off, no, false)"),
    ("GPU_PITR_CUDA_OVERLAP", "2", "GPU_PITR_CUDA_OVERLAP='2' is neither on"),
])
def test_environment_numpy_and_numba_cannot_use_is_one_line(
    wal_dir: Path, tmp_path: Path, name: str, value: str, fragment: str
) -> None:
    # Those libraries raise while imported or starting threads: a traceback of their
    # internals, where the user needs the variable named.
    out = tmp_path / "out.npz"
    proc = cli("restore", wal_dir, "--out", out, wal_dir=wal_dir,
               env={**os.environ, name: value})
    if value == "tbb" and importlib.util.find_spec("tbb") is not None:
        assert proc.returncode == 0, proc.stderr  # the layer starts where tbb is installed
        return
    assert_one_error_line(proc, fragment)
    assert not out.exists()
    # verify's 1 says "damage found"; a setting that stops it is 2, as stdout is
    # (and diff's 1 says "they differ")
    for args in (("verify", wal_dir), ("diff", out, out)):
        proc = cli(*args, wal_dir=wal_dir, env={**os.environ, name: value})
        assert (proc.returncode, proc.stdout) == (2, ""), (args, proc.stderr)
        assert proc.stderr.startswith("gpu-pitr: error: ") and fragment in proc.stderr


def test_environment_values_the_libraries_accept_still_run(wal_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0", "NUMBA_DISABLE_JIT": "0",
           "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "1"}
    proc = cli("restore", wal_dir, "--out", out, "--quiet", wal_dir=wal_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        assert list(npz["ids"]) == [id_ for id_, _, _ in LATEST]


COMMANDS = ("restore", "snapshot", "inspect", "verify", "diff", "archive", "expire")


def _help(capsys, *args: str) -> str:
    """``gpu-pitr ARGS --help``'s text, in this process (argparse exits 0 after it)."""
    from gpu_pitr import cli as cli_module

    with pytest.raises(SystemExit) as done:
        cli_module.main([*args, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone


def test_help_texts_say_what_the_commands_take_and_exit_with(capsys) -> None:
    """The --help texts said less than the commands do: verify's not that it checks a
    directory of snapshots (inspect's did), nor that a stdout it cannot write is exit 2;
    archive's exit 1 left out a copy that cannot be written, segments the writer deleted
    before any run copied them and an unusable checksum file;
    --allow-incomplete-history spoke only of a first record that is not seq 0; --quiet
    left out that warnings still print; --backend had no help (nor its default)."""
    assert "a snapshot or a directory of snapshots" in _help(capsys)
    verify_help = _help(capsys, "verify")
    assert "given a directory of snapshots: each one" in verify_help
    assert ("2: usage error, WAL_DIR unreadable, out of memory, or stdout that cannot be "
            "written") in verify_help  # out of memory: 2 since 81b4488, said since
    archive_help = _help(capsys, "archive")
    for words in ("segments the writer deleted before any run copied them",
                  "a copy that could not be written", "a checksum file that cannot be used"):
        assert words in archive_help
    for command in ("restore", "snapshot"):
        assert "accept a gap in the history (a log whose first record is not seq 0, " \
            "segments expire deleted, a base the log does not go on from)" \
            in _help(capsys, command)
    assert "90s" in _help(capsys, "expire")  # an age in seconds is taken too
    restore_help = _help(capsys, "restore")
    assert "(errors and warnings still print, on stderr)" in restore_help
    assert "the executor: cpu, cuda (an error where no GPU is usable) or auto (the default" \
        in restore_help


def test_every_option_of_every_command_is_in_the_readme(capsys) -> None:
    """An option a command's --help lists and the README never names is one nobody
    reads about: every one is in the README's "Command line" section."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Command line"):readme.index("## Python API")]
    for command in COMMANDS:
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", _help(capsys, command)))
        options -= {"--help"}
        missing = sorted(o for o in options if o not in section)
        assert not missing, (command, missing)


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_out_of_memory_is_one_line_and_not_damage(wal_dir: Path, tmp_path: Path, monkeypatch,
                                                  capsys, command) -> None:
    """Python's own MemoryError has no text (bytearray(n), a list that cannot grow):
    the line said "out of memory: ;". An out-of-memory verify exited 1, its "damage
    found", which a backup job reads as a damaged log: it is 2, as a log it could not
    read."""
    from gpu_pitr import cli, verify

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(gpu_pitr, "restore", no_memory)
    monkeypatch.setattr(verify, "verify_wal", no_memory)
    args = ["--out", str(tmp_path / "o.npz")] if command == "restore" else []
    status = cli.main([command, str(wal_dir), *args])
    hint = ("; a smaller --chunk-size or a --memory-budget needs less besides the index"
            if command == "restore" else "")
    assert (status, capsys.readouterr().err) == (
        1 if command == "restore" else 2,
        f"gpu-pitr: error: out of memory: an allocation failed{hint}\n")
    assert sorted(os.listdir(tmp_path)) == ["wal"]
    if command == "verify":  # and the README says so, where it lists verify's exits
        readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text()
                          .split())
        assert "2 on a usage error, an unreadable `WAL_DIR` (a segment cut while it is " \
            "read included), memory that ran out or a stdout" in readme


def test_out_of_gpu_memory_suggests_the_cpu_backend_not_a_chunk_size(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """CuPy's OutOfMemoryError is a MemoryError: the line said to lower --chunk-size or
    give a --memory-budget, which leave GPU memory as it was (the index is built there).
    A host MemoryError keeps that hint."""
    from gpu_pitr import cli as cli_module

    OutOfMemoryError = type("OutOfMemoryError", (MemoryError,),
                            {"__module__": "cupy.cuda.memory"})
    for err, hint in ((OutOfMemoryError("Out of memory allocating 4,294,967,296 bytes"),
                       "; GPU memory: --backend cpu restores in host memory"),
                      (MemoryError("Unable to allocate 4.00 GiB"),
                       "; a smaller --chunk-size or a --memory-budget needs less besides "
                       "the index")):
        def fail(*args, err=err, **kwargs):
            raise err

        monkeypatch.setattr(gpu_pitr, "restore", fail)
        wal = tmp_path / "wal"
        wal.mkdir(exist_ok=True)
        code = cli_module.main(["restore", str(wal), "--out", str(tmp_path / "x.npz"),
                                "--quiet"])
        assert code == 1
        assert capsys.readouterr().err == f"gpu-pitr: error: out of memory: {err}{hint}\n"


def test_restore_help_says_what_the_new_targets_take(capsys) -> None:
    """--to-transaction's help did not say that a reused id means its first use (and is
    warned of), nor --to-position's that inspect's `wal-...log: offset N` is taken."""
    text = " ".join(_help(capsys, "restore").split())
    assert "an id a restarted writer used again is matched at its first use, with a " \
           "warning" in text
    assert "(`wal-...log: offset N`, quoted, or wal-...log:N;" in text


def test_an_undecodable_record_names_what_to_do_next(tmp_path):
    """A record that does not decode, before the stop point, is fatal (SPEC section 2):
    the one error line also says what the operator can do (walk3's incident run: the
    line named the record but not ``--skip-corrupt``, nor that an earlier target
    needs no option); with ``--skip-corrupt`` given, or from ``inspect``, no such
    advice."""
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", wal_dir=wal_dir)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"gpu-pitr: error: {wal_dir / w['first']}: offset ")
    assert proc.stderr.endswith(f"(record at offset {w['e_offset']}); --skip-corrupt "
                                "restores past it (and reports it), and a target before "
                                "it needs no option\n"), proc.stderr
    assert not (tmp_path / "o.npz").exists()
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--to-seq", "10", "-q",
               wal_dir=wal_dir)
    assert proc.returncode == 0 and (tmp_path / "o.npz").exists()
    proc = cli("snapshot", wal_dir, "--out", tmp_path / "s", wal_dir=wal_dir)
    assert proc.returncode == 1 and "--skip-corrupt restores past it" in proc.stderr


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_text_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path, encoding):
    # Ids and metadata are any Unicode text; a terminal in a legacy locale (or
    # PYTHONIOENCODING in a job's environment) cannot print them. The lines stay whole,
    # with JSON's escapes where the encoding lacks a character, and --json lines stay
    # JSON (a surrogate pair past U+FFFF, not Python's \U0001f600).
    wal = tmp_path / "wal"
    ident, meta = "ключ-😀-é", {"k": "значение"}
    with WalWriter(wal) as w:
        w.append(Insert(id=ident, vector=[1.0, 2.0], metadata=meta, timestamp=100))
    env = {**os.environ, "PYTHONIOENCODING": encoding}

    def run(*args) -> str:
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "inspect", str(wal),
                               "--records", *args], capture_output=True, env=env,
                              timeout=600)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        return proc.stdout.decode(encoding)

    # The id as the line quotes it, JSON's way, reads back as the id.
    line = run()
    assert json.loads(line[line.index("Insert ") + 7:line.index(" dim ")]) == ident, line
    assert "é" in line if encoding == "latin-1" else "\\u00e9" in line
    [doc] = [json.loads(text) for text in run("--json").splitlines()]
    assert doc["entry"]["id"] == ident and doc["entry"]["metadata"] == meta
    assert "Insert" in run("--id", ident)
    # An error naming such a path: the same escapes on stderr (not Python's \\x.. there
    # and \\u.... on stdout for one directory).
    missing = tmp_path / "kä-😀-каталог"
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "inspect", str(missing)],
                          capture_output=True, env=env, timeout=600)
    assert proc.returncode == 1

    def shown(ch: str) -> str:  # as the encoding holds it, else JSON's escape
        try:
            ch.encode(encoding)
            return ch
        except UnicodeEncodeError:
            return json.dumps(ch)[1:-1]

    assert proc.stderr.decode(encoding).rstrip("\n") == (
        f"gpu-pitr: error: {''.join(map(shown, str(missing)))}: no such directory")


def test_a_usage_error_with_no_stderr_still_exits_2(monkeypatch) -> None:
    """Started with stderr closed (``2>&-``) Python has no ``sys.stderr``: argparse's own
    message writer drops the error's line and exits 2; the parser's override wrote to
    None, and the AttributeError made it exit 1 (a traceback printed nowhere)."""
    from gpu_pitr import cli as cli_module

    monkeypatch.setattr(sys, "stderr", None)
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(["restore", "--no-such-option"])
    assert exit_.value.code == 2
