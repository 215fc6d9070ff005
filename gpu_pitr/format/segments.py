"""Discovery of segment files in a WAL directory, in log order (SPEC section 1)."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from gpu_pitr.format.layout import (
    HEADER_ID,
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    SEGMENT_NAME_RE,
)


@dataclass(frozen=True)
class Segment:
    """One ``wal-<hex>.log`` file: its path, size in bytes and creation second."""

    path: Path
    size: int
    created: int

    @property
    def name(self) -> str:
        return self.path.name


def not_a_directory(path: str | os.PathLike) -> str:
    """Why ``path``, which is not a directory, cannot be one: missing, or something else."""
    return "not a directory" if os.path.lexists(path) else "no such directory"


def list_segments(wal_dir: str | os.PathLike) -> list[Segment]:
    """Segment files of ``wal_dir`` in log order (file names sorted by bytes).

    Entries whose names are not ``wal-<16 lowercase hex>.log`` are ignored, and so
    are directories and special files (a FIFO would block a read) of such a name.
    A symbolic link to a missing file is listed, with size 0: a segment that
    cannot be read (its read says so) must not vanish from the log unnoticed.
    """
    wal_dir = Path(wal_dir)
    if not wal_dir.is_dir():
        from gpu_pitr.errors import WalError

        raise WalError(not_a_directory(wal_dir), file=str(wal_dir))
    try:
        entries = list(os.scandir(wal_dir))
    except OSError as err:
        from gpu_pitr.errors import DirectoryReadError

        raise DirectoryReadError(wal_dir, err) from err
    check_searchable(wal_dir)
    listed = sorted(
        (e for e in entries if SEGMENT_NAME_RE.fullmatch(e.name) and _listed(e)),
        key=lambda e: e.name.encode(),
    )
    return [Segment(path=wal_dir / e.name, size=_size(e), created=int(e.name[4:20], 16))
            for e in listed]


def check_searchable(directory: str | os.PathLike) -> None:
    """Raise ``DirectorySearchError`` when ``directory``'s names can be listed but its
    files cannot be opened (read permission without search, ``x``)."""
    if not os.access(directory, os.X_OK):
        from gpu_pitr.errors import DirectorySearchError

        raise DirectorySearchError(directory)


def last_with_records(segments: list[Segment]) -> int:
    """The index of the last of ``segments`` (in log order) that holds more than a
    segment header, or 0 when none does. The files after it hold no record yet: a
    writer rotating creates the new file (its header still in the write buffer, or
    synced alone) before it flushes the old one's buffer, so until a newer file holds a
    record, the old one is the one being written (its tail may be a record in progress,
    not a crash's torn tail). With no record anywhere, the first file may be that one
    (a writer that rotated before its first flush)."""
    for k in range(len(segments) - 1, -1, -1):
        if segments[k].size > HEADER_SIZE:
            return k
    return 0


# A segment's name but for the case of its letters (``WAL-….LOG``, upper-case hex).
_ANY_CASE_RE = re.compile(SEGMENT_NAME_RE.pattern, re.IGNORECASE)


def not_segment_files(wal_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(name, what)`` of each entry of ``wal_dir`` named like a segment that
    ``list_segments`` passes over (a directory, FIFO, socket, device, or a link to one;
    or a name that is a segment's but for the case of its letters, as a copy through a
    file system that folds case may leave), ``what`` for a person: not read, as SPEC
    section 1 wants, but not in silence."""
    try:
        entries = sorted((e for e in os.scandir(wal_dir) if _ANY_CASE_RE.fullmatch(e.name)
                          and not (SEGMENT_NAME_RE.fullmatch(e.name) and _listed(e))),
                         key=lambda e: e.name.encode())
    except OSError:
        return []
    out = []
    for e in entries:
        if not SEGMENT_NAME_RE.fullmatch(e.name):
            out.append((e.name, "named like a segment file but for the case of its letters "
                        "(segment names are lower case: wal-<16 hex digits>.log): not read"))
            continue
        try:
            mode = os.stat(e.path).st_mode
        except OSError:
            continue  # gone since the listing
        what = file_kind(mode)
        if e.is_symlink():
            what = f"a symbolic link to {what}"
        out.append((e.name, f"named like a segment file, but {what}: not read"))
    return out


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is (its ``st_mode``), for a person."""
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a symbolic link" if stat.S_ISLNK(mode) else "a device file")


class NotARegularFile(OSError):
    """What ``open_regular`` opened is not a regular file (``mode``: its ``st_mode``)."""

    def __init__(self, path, mode: int) -> None:
        super().__init__(f"{path}: is {file_kind(mode)}, not a regular file")
        self.filename, self.mode = str(path), mode


def open_regular(path, follow: bool = True) -> int:
    """``path`` opened read-only, as a file descriptor; ``NotARegularFile`` when it is not
    a regular file, other ``OSError``s as ``os.open`` raises them (``follow=False``: a
    symbolic link is not followed, ``ELOOP``). Opened without blocking: a FIFO put where
    a file belongs would otherwise wait for a writer, and with it the command, for
    ever."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow and os.path.islink(path):
            raise NotARegularFile(path, stat.S_IFLNK) from err
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARegularFile(path, mode)
    return fd


def read_regular(path, limit: int = -1, follow: bool = True) -> bytes | None:
    """The bytes of the regular file at ``path`` (at most ``limit``), None where there is
    nothing of that name; ``NotARegularFile`` and other ``OSError``s as ``open_regular``
    raises them (an archive's small files: the expire marker, the checksums)."""
    try:
        fd = open_regular(path, follow)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        return f.read(limit)


# Bytes asked of one read: macOS fails a read(2) or preadv(2) of more than INT_MAX
# (EINVAL) where Linux returns fewer; callers loop until they have what they asked.
_MAX_READ = 1 << 30


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Bytes of ``fd`` from ``offset`` read into ``view`` (a writable byte memoryview),
    as ``os.preadv``: fewer than asked near the end of the file, 0 at it. Where Python
    has no ``os.preadv`` (macOS before 11) the bytes are read with ``os.pread`` and
    copied in."""
    view = view[:_MAX_READ]
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[:len(data)] = data
    return len(data)


def _listed(entry: os.DirEntry) -> bool:
    """A regular file, or what a read would fail on (a link to nothing, a link loop)."""
    try:
        if entry.is_file():
            return True
    except OSError:  # not even its type can be known (a loop of links)
        return True
    return entry.is_symlink() and not os.path.exists(entry.path)


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size  # (the link's target's, as a read sees it)
    except OSError:  # a link to nothing, a loop: reading it says why
        return 0


def written_since(path: str | os.PathLike, at: int, lost: int) -> int | None:
    """The size of ``path`` now, when the torn tail read at ``at`` (``lost`` bytes, to
    the end of the file as it was read) was a write in progress: the file has grown
    since, and the record (or segment header) cut there is whole now. None otherwise:
    no bytes were lost (an empty file), it has not grown (a crash, or a writer stalled
    mid-record: they look the same), it cannot be read, or the record is still cut."""
    if lost <= 0:
        return None
    found = record_end(path, at)
    if found is None:
        return None
    end, size = found
    return size if size > at + lost and end <= size else None


def in_progress(size: int) -> str:
    """What a torn tail was, for a person, when ``written_since`` gave ``size``."""
    return (f"a write in progress: the file has grown to {size} bytes since it was read, "
            "where the record is whole")


def first_record_seq(path: str | os.PathLike) -> int | None:
    """The seq of the first record of a segment file (None: none there, or a second
    header first: a writer reopened; or the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE + RECORD_HEADER_SIZE)
    except OSError:
        return None
    rec = head[HEADER_SIZE:]
    if len(rec) < RECORD_HEADER_SIZE or rec[:len(HEADER_ID)] == HEADER_ID:
        return None
    return int.from_bytes(rec[:8], "little")


def record_end(path: str | os.PathLike, at: int) -> tuple[int, int] | None:
    """``(end, size)``: where the record (or second segment header) that starts at
    ``at`` in ``path`` ends, as its bytes there now say, and the file's size now. None
    when the file cannot be read or its record header is not all there yet."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = os.pread(f.fileno(), HEADER_SIZE, at)
    except OSError:
        return None
    if head[:len(HEADER_ID)] == HEADER_ID:  # a second header (as framed)
        return at + HEADER_SIZE, size
    if len(head) < RECORD_HEADER_SIZE:
        return None
    return at + RECORD_HEADER_SIZE + int.from_bytes(head[8:RECORD_HEADER_SIZE], "little"), size


def vanished(err: OSError) -> bool:
    """Whether opening a listed segment failed because the file was deleted after its
    directory was listed (a symbolic link to a missing file is not that)."""
    path = err.filename
    return err.errno == errno.ENOENT and path is not None and not os.path.lexists(path)


# Errors of an open that say nothing about the file: the process has no descriptor left
# (a service manager's ``ulimit -n``, a library caller's own files and sockets), or the
# system none or no memory for one. No segment is damaged by them.
_NOT_THE_FILES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))


def raise_if_not_the_files(err: OSError) -> None:
    """Raise ``FileReadError`` (one line naming the file, exit status of a read error;
    ``DirectoryReadError`` for a directory) when opening a segment failed for a reason
    that is not the file's (``EMFILE``...): judged a bad header instead,
    ``--skip-corrupt`` would skip a sound segment and restore without its records, and
    ``verify`` would call it damaged."""
    if err.errno in _NOT_THE_FILES and err.filename is not None:
        from gpu_pitr.errors import DirectoryReadError, FileReadError

        if os.path.isdir(err.filename):  # (a snapshot's directory: no "offset 0" in it)
            raise DirectoryReadError(err.filename, err) from err
        raise FileReadError(err.filename, 0, err) from err


def unreadable(err: OSError) -> str:
    """Why a segment file could not be opened or read, for its bad-header problem."""
    path = err.filename
    if vanished(err):
        return ("cannot read the file: deleted after the directory was listed (the "
                "writer's retention deletes its oldest segments at a checkpoint)")
    if (err.errno == errno.ENOENT and path is not None and os.path.islink(path)
            and not os.path.exists(path)):
        return f"cannot read the file: a symbolic link to {os.readlink(path)!r}, which is missing"
    from gpu_pitr.errors import os_reason

    return f"cannot read the file: {os_reason(err)}"
