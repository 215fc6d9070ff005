"""Discovery of segment files in a WAL directory, in log order (SPEC section 1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpu_pitr.format.layout import SEGMENT_NAME_RE


@dataclass(frozen=True)
class Segment:
    """One ``wal-<hex>.log`` file: its path, size in bytes and creation second."""

    path: Path
    size: int
    created: int

    @property
    def name(self) -> str:
        return self.path.name


def list_segments(wal_dir: str | os.PathLike) -> list[Segment]:
    """Segment files of ``wal_dir`` in log order (file names sorted by bytes).

    Files whose names are not ``wal-<16 lowercase hex>.log`` are ignored.
    """
    wal_dir = Path(wal_dir)
    if not wal_dir.is_dir():
        from gpu_pitr.errors import WalError

        raise WalError("not a directory", file=str(wal_dir))
    names = sorted(
        (e.name for e in os.scandir(wal_dir) if SEGMENT_NAME_RE.match(e.name) and e.is_file()),
        key=lambda n: n.encode(),
    )
    return [
        Segment(path=wal_dir / n, size=(wal_dir / n).stat().st_size, created=int(n[4:20], 16))
        for n in names
    ]
