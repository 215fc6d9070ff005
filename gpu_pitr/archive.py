"""Keeping the segments the writer deletes: ``gpu-pitr archive WAL_DIR --to ARCHIVE``.

oxirs-vec deletes all but its newest three segments at every checkpoint (SPEC section
4), so restoring to a moment older than the oldest segment left needs those segments
from somewhere else: an archive, kept the way PostgreSQL's ``archive_command`` (or
pgBackRest's ``archive-push``) keeps one. A restore, ``inspect`` or ``verify`` then
takes ARCHIVE as its WAL directory.

Each run copies into ARCHIVE every segment of WAL_DIR that is not there yet or has
grown since (the writer only ever appends), each one atomically: written beside its
name, fsynced, renamed onto it, the directory fsynced. The archive never loses a
segment: one the writer has deleted stays, and one whose archived bytes are not a
prefix of the file (another store's log, a WAL directory put back from a backup) is
a conflict: the archive's copy is kept and the run exits 1, naming the file and the
first byte that differs. WAL_DIR is only read. One run at a time per archive (a lock
file, ``.gpu-pitr-archive.lock``, which no command takes for a segment).

The last segment is usually being written while it is copied: its copy may end
inside a record, which a restore from the archive reports as a torn tail, and the
next run copies it again, grown.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpu_pitr.errors import OutputError, WalError
from gpu_pitr.format.segments import list_segments, unreadable

LOCK_NAME = ".gpu-pitr-archive.lock"
# Bytes compared of a segment whose size did not change (its header and its end):
# the writer only appends, so a file of the same size is the same file unless it
# was replaced, which shows in its first or last bytes.
SAME_SIZE_CHECK = 1 << 16
_COPY_CHUNK = 8 << 20

NEW = "new"
GROWN = "grown"
UNCHANGED = "unchanged"
# Problems (the run exits 1):
CONFLICT = "conflict"
UNREADABLE = "unreadable"
LOST = "lost"
PROBLEMS = (CONFLICT, UNREADABLE, LOST)


class ArchiveError(WalError):
    """The archive cannot be used at all: it is inside WAL_DIR, not a directory, or
    another run holds its lock."""


@dataclass
class ArchivedSegment:
    """What a run did with one segment of WAL_DIR.

    ``action``: ``new`` (copied), ``grown`` (copied again, ``added`` bytes more),
    ``unchanged``, or a problem: ``conflict`` (the archive's copy differs, kept),
    ``unreadable`` (the segment could not be read), ``lost`` (the writer deleted it
    between the listing and the copy, and the archive has none of it).
    ``size``: the bytes the archive holds of it after the run.
    """

    name: str
    action: str
    size: int
    added: int = 0
    problem: str | None = None


@dataclass
class ArchiveResult:
    """One run of ``archive``: a row per segment of WAL_DIR, in log order."""

    wal_dir: str
    archive: str
    segments: list[ArchivedSegment] = field(default_factory=list)
    # Segment files in the archive after the run, and of those, the ones WAL_DIR no
    # longer has (deleted by the writer: the archive is where they live now).
    archived: int = 0
    only_in_archive: int = 0

    @property
    def problems(self) -> list[ArchivedSegment]:
        return [s for s in self.segments if s.action in PROBLEMS]

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, action: str) -> int:
        return sum(s.action == action for s in self.segments)

    def to_dict(self) -> dict:
        return {"wal_dir": self.wal_dir, "archive": self.archive, "ok": self.ok,
                "segments": [asdict(s) for s in self.segments], "archived": self.archived,
                "only_in_archive": self.only_in_archive}

    def lines(self, problems_only: bool = False) -> list[str]:
        """One line per segment copied or with a problem, then a summary
        (``problems_only``: the lines of the problems alone)."""
        out = []
        for s in self.segments:
            if s.action in PROBLEMS:
                out.append(f"{s.name}: {s.action.upper()}: {s.problem}")
            elif problems_only or s.action == UNCHANGED:
                continue
            elif s.action == NEW:
                out.append(f"{s.name}: new, {s.size} bytes")
            else:
                out.append(f"{s.name}: grown by {s.added} bytes, {s.size} bytes now")
        if problems_only:
            return out
        counts = ", ".join(f"{self.count(a)} {a}" for a in (NEW, GROWN, UNCHANGED))
        problems = len(self.problems)
        out.append(
            f"archive {self.archive}: {len(self.segments)} segments of {self.wal_dir} "
            f"({counts}; {problems} problem{'' if problems == 1 else 's'}); it holds "
            f"{self.archived} segments, {self.only_in_archive} of them no longer in WAL_DIR")
        return out


class _Conflict(Exception):
    """The archive's copy of a segment is not a prefix of the segment: one line."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class _SourceError(Exception):
    """Reading the segment in WAL_DIR failed."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


def archive(wal_dir: str | os.PathLike, archive_dir: str | os.PathLike) -> ArchiveResult:
    """Copy into ``archive_dir`` every segment of ``wal_dir`` that is new or has grown.

    ``archive_dir`` is created if missing (not its parents). It must not be
    ``wal_dir`` or inside it: nothing is ever written there. Problems with single
    segments (a conflict, an unreadable file, a file deleted before it could be
    copied) are listed in the result and the run goes on with the next one.

    Raises:
        ArchiveError: the archive is unusable (see the class), or WAL_DIR is not a
            directory (``WalError``).
        OutputError: a copy could not be written (a full disk, ...); the archive's
            previous copy of that segment is left as it was.
    """
    wal_dir, archive_dir = Path(wal_dir), Path(archive_dir)
    segments = list_segments(wal_dir)  # WalError if WAL_DIR is not a directory
    _check_apart(wal_dir, archive_dir)
    try:
        archive_dir.mkdir(exist_ok=True)
    except OSError as err:
        raise ArchiveError(f"cannot create the archive: {os.strerror(err.errno or 0)}",
                           file=str(archive_dir)) from err
    if not archive_dir.is_dir():
        raise ArchiveError("not a directory", file=str(archive_dir))
    result = ArchiveResult(str(wal_dir), str(archive_dir))
    with _locked(archive_dir):
        buf = bytearray(_COPY_CHUNK)
        for seg in segments:
            result.segments.append(_archive_one(seg.path, archive_dir / seg.name, buf))
        held = {s.name for s in list_segments(archive_dir)}
        result.archived = len(held)
        result.only_in_archive = len(held - {s.name for s in segments})
    return result


def inside(path: str | os.PathLike, wal_dir: str | os.PathLike) -> bool:
    """``path`` is ``wal_dir`` or under it (links resolved)."""
    wal = Path(os.path.realpath(wal_dir))
    real = Path(os.path.realpath(path))
    return real == wal or wal in real.parents


def _check_apart(wal_dir: Path, archive_dir: Path) -> None:
    if inside(archive_dir, wal_dir):
        raise ArchiveError(f"the archive is inside the WAL directory {wal_dir}, which is "
                           "never written to: give a directory outside it",
                           file=str(archive_dir))


class _locked:
    """An exclusive ``flock`` on the archive's lock file, refused at once if held."""

    def __init__(self, archive_dir: Path) -> None:
        self.path = archive_dir / LOCK_NAME
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(self.path, "archive's lock file", err) from err
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ArchiveError("another gpu-pitr archive is running on this archive "
                                   "(its lock is held); try again when it has finished",
                                   file=str(self.path)) from err
            raise OutputError(self.path, "archive's lock file", err) from err

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock


def _archive_one(src_path: Path, dest: Path, buf: bytearray) -> ArchivedSegment:
    name = src_path.name
    try:
        have = _archived_size(dest)
    except _Conflict as c:
        return ArchivedSegment(name, CONFLICT, 0, problem=c.line)
    try:
        src = open(src_path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as err:
        vanished = err.errno == errno.ENOENT and not os.path.islink(src_path)
        if vanished and have is not None:
            # Deleted by the writer's retention after the listing: the archive keeps
            # what it had, which may be all of it.
            return ArchivedSegment(name, UNCHANGED, have)
        if vanished:
            return ArchivedSegment(name, LOST, 0, problem=(
                "deleted from WAL_DIR (by the writer's retention) before it could be "
                "copied: run archive more often than the writer rotates segments"))
        return ArchivedSegment(name, UNREADABLE, have or 0,
                               problem=f"{src_path}: {unreadable(err)}")
    with src:
        try:
            size = os.fstat(src.fileno()).st_size
            if have is None:
                _copy(src, src_path, size, dest, None, buf)
                return ArchivedSegment(name, NEW, size, added=size)
            if size < have:
                raise _Conflict(f"{src_path}: {size} bytes, fewer than the {have} the "
                                "archive holds of it: not the file archived before")
            if size == have:
                _same_ends(src, src_path, dest, size)
                return ArchivedSegment(name, UNCHANGED, have)
            _copy(src, src_path, size, dest, have, buf)
            return ArchivedSegment(name, GROWN, size, added=size - have)
        except _Conflict as c:
            return ArchivedSegment(name, CONFLICT, have or 0,
                                   problem=f"{c.line}; the archive's copy is kept")
        except _SourceError as e:
            return ArchivedSegment(name, UNREADABLE, have or 0,
                                   problem=f"{src_path}: {unreadable(e.err)}")


def _archived_size(dest: Path) -> int | None:
    """Bytes the archive holds of a segment (None: none); its name taken by something
    that is not a readable file is a conflict."""
    import stat

    try:
        st = dest.stat()
    except FileNotFoundError:
        if not os.path.islink(dest):
            return None
        st = None
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise _Conflict(f"{dest}: in the archive, but not a file that can be read; "
                        "left as it is")
    return st.st_size


def _read_at(fd: int, pos: int, n: int) -> bytes:
    """Up to ``n`` bytes at ``pos`` (fewer only at the end of the file)."""
    out = bytearray()
    while len(out) < n:
        piece = os.pread(fd, n - len(out), pos + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _src_read_at(src, pos: int, n: int) -> bytes:
    try:
        return _read_at(src.fileno(), pos, n)
    except OSError as err:
        raise _SourceError(err) from err


def _first_difference(a, b) -> int:
    """Index of the first byte where ``a`` and ``b`` differ (``len`` of the shorter one
    when that is a prefix of the other)."""
    import numpy as np

    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(diff[0]) if len(diff) else n


def _differs(src_path: Path, at: int) -> _Conflict:
    return _Conflict(f"{src_path}: offset {at}: differs from the archive's copy: not the "
                     "file archived before")


def _shorter(src_path: Path, pos: int, size: int) -> _Conflict:
    return _Conflict(f"{src_path}: offset {pos}: the file got shorter while it was read "
                     f"({size} bytes when it was opened)")


def _same_ends(src, src_path: Path, dest: Path, size: int) -> None:
    """Compare the first 16 and the last ``SAME_SIZE_CHECK`` bytes of two equal-sized files."""
    with open(dest, "rb", buffering=0) as old:
        for pos, n in ((0, min(16, size)),
                       (max(0, size - SAME_SIZE_CHECK), min(size, SAME_SIZE_CHECK))):
            a, b = _src_read_at(src, pos, n), _read_at(old.fileno(), pos, n)
            if len(a) < n:
                raise _shorter(src_path, pos + len(a), size)
            if a != b:
                raise _differs(src_path, pos + _first_difference(a, b))


def _copy(src, src_path: Path, size: int, dest: Path, have: int | None,
          buf: bytearray) -> None:
    """``size`` bytes of ``src`` to ``dest``, atomically; the first ``have`` bytes must
    equal the archive's copy (else ``_Conflict``, and that copy is left as it was)."""
    from gpu_pitr.outputs import atomic_files

    if have:
        _same_prefix(src, src_path, dest, have, buf)
    try:
        with atomic_files(dest) as (tmp,), open(tmp, "wb", buffering=0) as out:
            pos = _copy_in_kernel(src.fileno(), out.fileno(), size)
            view = memoryview(buf)
            while pos < size:  # what the kernel did not copy, and why, if it failed
                n = _src_read_at_into(src, view[: min(len(buf), size - pos)], pos)
                if not n:
                    raise _shorter(src_path, pos, size)
                done = 0
                while done < n:
                    done += out.write(view[done:n])
                pos += n
    except OSError as err:
        raise OutputError(dest, "archive copy", err) from err


def _copy_in_kernel(src_fd: int, out_fd: int, size: int) -> int:
    """Bytes of ``src`` copied to ``out`` (both from offset 0) by ``copy_file_range``,
    which needs no trip through this process; it stops at the first error (a file
    system that cannot, an I/O error, a full disk), and the caller's plain read and
    write copy the rest, or say precisely what failed."""
    pos = 0
    while pos < size and hasattr(os, "copy_file_range"):
        try:
            n = os.copy_file_range(src_fd, out_fd, size - pos, pos, pos)
        except OSError:
            break
        if not n:
            break
        pos += n
    if pos:
        os.lseek(out_fd, pos, os.SEEK_SET)
    return pos


def _src_read_at_into(src, view: memoryview, pos: int) -> int:
    try:
        return os.preadv(src.fileno(), [view], pos)
    except OSError as err:
        raise _SourceError(err) from err


def _same_prefix(src, src_path: Path, dest: Path, have: int, buf: bytearray) -> None:
    """The first ``have`` bytes of ``src`` are the archive's copy ``dest``, else
    ``_Conflict`` naming the first byte that differs."""
    view = memoryview(buf)
    try:
        old = open(dest, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as err:
        raise OutputError(dest, "archive copy", err) from err
    with old:
        pos = 0
        while pos < have:
            n = _src_read_at_into(src, view[: min(len(buf), have - pos)], pos)
            if not n:
                raise _shorter(src_path, pos, have)
            try:
                before = _read_at(old.fileno(), pos, n)
            except OSError as err:
                raise OutputError(dest, "archive copy", err) from err
            if view[:n] != before:
                raise _differs(src_path, pos + _first_difference(view[:n], before))
            pos += n
