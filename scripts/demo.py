"""Demo: write a small oxirs-vec WAL, inspect it, find a bad ingest in its records, and
restore it to 10:02, before the ingest; again from a snapshot, and from an archive of
the segments after the writer has deleted one.

Run by ``./scripts/demo`` inside the project's .venv. Everything goes to a temp directory.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

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


def vec(*xs: float) -> list[float]:
    return [float(x) for x in xs]


def write_demo_wal(wal_dir: Path) -> None:
    """A morning of writes; at 10:03 a bad ingest deletes two documents and adds junk."""
    wal = WalWriter(wal_dir, created=T0)
    for i in range(1, 5):
        meta = {"title": f"doc {i}", "lang": "en" if i % 2 else "fr"}
        wal.append(Insert(f"doc-{i}", vec(i, 0, 0, 1), meta, T0 + i))
    wal.append(
        Batch(
            [
                Insert("doc-5", vec(5, 0, 0, 1), {"title": "doc 5"}, T0 + 30),
                Insert("doc-6", vec(6, 0, 0, 1), None, T0 + 30),
                Update("doc-1", vec(1, 1, 0, 1), {"title": "doc 1 (revised)"}, T0 + 30),
            ],
            T0 + 30,
        )
    )
    wal.append(BeginTransaction(1, T0 + 60))
    wal.append(Update("doc-2", vec(2, 2, 0, 1), None, T0 + 61))
    wal.append(Delete("doc-3", T0 + 62))
    wal.append(CommitTransaction(1, T0 + 70))
    wal.append(BeginTransaction(2, T0 + 80))
    wal.append(Delete("doc-4", T0 + 81))
    wal.append(AbortTransaction(2, T0 + 82))
    seq = wal.append(Update("doc-5", vec(5, 5, 0, 1), None, T0 + 105))
    wal.append(Checkpoint(seq, T0 + 110))
    wal.rotate(created=T0 + 115)
    wal.append(Insert("doc-7", vec(7, 0, 0, 1), {"title": "doc 7"}, T0 + 118))
    # 10:03: the bad ingest.
    wal.append(Delete("doc-1", T0 + 180))
    wal.append(Delete("doc-2", T0 + 180))
    wal.append(
        Batch([Insert(f"junk-{i}", vec(0, 0, 0, 0), None, T0 + 181) for i in range(3)], T0 + 181)
    )
    wal.close()


def gpu_pitr(*args: str) -> None:
    print(f"\n$ gpu-pitr {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "gpu_pitr", *args], check=True)


def say_if_same(how: str, npz_path: Path, want: np.ndarray) -> None:
    """Whether the restore in ``npz_path`` holds ``want``'s vectors, bit for bit."""
    with np.load(npz_path, allow_pickle=False) as npz:
        same = np.array_equal(npz["vectors"].view(np.uint32), want.view(np.uint32))
    print(f"\n{how}: {'the same index' if same else 'A DIFFERENT INDEX'}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gpu-pitr-demo-") as tmp:
        wal_dir, out = Path(tmp) / "wal", Path(tmp) / "at-1002.npz"
        write_demo_wal(wal_dir)
        gpu_pitr("inspect", str(wal_dir))
        # What happened after 10:02, record by record: the bad ingest begins at 10:03.
        gpu_pitr("inspect", str(wal_dir), "--records", "--since", "2026-11-26T10:02:00Z")
        gpu_pitr("restore", str(wal_dir), "--to-time", "2026-11-26T10:02:00Z", "--out", str(out))

        print(f"\n{out.name}, read back with numpy.load(allow_pickle=False):")
        with np.load(out, allow_pickle=False) as npz:
            for id_, vector, meta in zip(npz["ids"], npz["vectors"], npz["metadata"], strict=True):
                print(f"  {id_:<6} {vector}  {meta}")
            want = npz["vectors"]

        # The writer deletes old segments at checkpoints: keep a snapshot, restore from it.
        snap, again = Path(tmp) / "snap-1001", Path(tmp) / "again-1002.npz"
        gpu_pitr("snapshot", str(wal_dir), "--to-time", "2026-11-26T10:01:00Z",
                 "--out", str(snap))
        gpu_pitr("restore", str(wal_dir), "--base", str(snap),
                 "--to-time", "2026-11-26T10:02:00Z", "--out", str(again))
        say_if_same("from the snapshot", again, want)

        # ... and keep the segments themselves: archive them as they are written, then
        # the writer's retention deleting the older one costs nothing.
        archive, third = Path(tmp) / "archive", Path(tmp) / "archived-1002.npz"
        gpu_pitr("archive", str(wal_dir), "--out", str(archive))
        oldest = min(wal_dir.glob("wal-*.log"))
        oldest.unlink()
        print(f"\n(the writer's retention deletes {oldest.name})")
        gpu_pitr("restore", str(archive), "--to-time", "2026-11-26T10:02:00Z", "--quiet",
                 "--out", str(third))
        say_if_same("from the archive", third, want)


if __name__ == "__main__":
    main()
