"""Keeping the segments the writer deletes: ``gpu-pitr archive WAL_DIR --out ARCHIVE``.

oxirs-vec deletes all but its newest three segments at every checkpoint (SPEC section
4), so restoring to a moment older than the oldest segment left needs those segments
from somewhere else: an archive, kept the way PostgreSQL's ``archive_command`` (or
pgBackRest's ``archive-push``) keeps one. A restore, ``inspect`` or ``verify`` then
takes ARCHIVE as its WAL directory.

Each run copies into ARCHIVE every segment of WAL_DIR that is not there yet or has
grown since (the writer only ever appends), each one atomically: written beside its
name with the segment's permission bits, fsynced, renamed onto it, the directory
fsynced. The archive never loses a segment: one the writer has deleted stays, and one
whose archived bytes are not a prefix of the file (another store's log, a WAL
directory put back from a backup, a crash that lost bytes the writer had not synced)
is a conflict: the archive's copy is kept and the run exits 1, naming the file and the
first byte that differs. WAL_DIR is only read (and must not be the archive, nor hold
it, by path or by identity). One run at a time per archive (a lock file,
``.gpu-pitr-archive.lock``, which no command takes for a segment).

The last segment is usually being written while it is copied, and a writer's
buffer reaches the file in pieces that need not end where a record does. So the copy
of the newest segment ends where a record does (``whole_records``): at the end of
the record its bytes end inside, when the file holds that record whole by the time it
is framed, else where that record starts, its bytes ``pending`` for the next run. The
archive then holds whole records, and ``verify ARCHIVE`` beside a live writer finds
no torn tail. Once a newer segment shows the writer went on without finishing the
record (a crash), the segment is no longer the newest and is copied as it stands.
A newer file that holds no record yet (empty, or a header alone) does not show that:
a writer rotating creates the new file before it flushes the old one's buffer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpu_pitr import archivesums, interrupts
from gpu_pitr.errors import DirectoryReadError, NotSyncedError, WalError, os_reason
from gpu_pitr.format.layout import HEADER_ID, HEADER_SIZE, RECORD_HEADER_SIZE, SEGMENT_NAME_RE
from gpu_pitr.format.segments import (
    NotARegularFile,
    Segment,
    file_kind,
    first_record_seq,
    last_with_records,
    list_segments,
    not_segment_files,
    open_regular,
    raise_if_not_the_files,
    read_into,
    record_end,
    unreadable,
)
from gpu_pitr.format.stats import plural
from gpu_pitr.outputs import atomic_files, fsync_path, inside

LOCK_NAME = ".gpu-pitr-archive.lock"
_COPY_CHUNK = 8 << 20
# Seconds between writes of the checksum file during a run (and once at its end).
SUMS_EVERY = 5.0
# Bytes the kernel copies per call: a Ctrl-C is acted on between two calls.
_KERNEL_CHUNK = 64 << 20

NEW = "new"
GROWN = "grown"
UNCHANGED = "unchanged"
# Before the first segment an ``expire`` kept: not copied back (it was deleted on purpose).
EXPIRED = "expired"
# Problems (the run exits 1):
CONFLICT = "conflict"
UNREADABLE = "unreadable"
LOST = "lost"
FAILED = "failed"
MISSED = "missed"
PROBLEMS = (CONFLICT, UNREADABLE, LOST, FAILED, MISSED)


class ArchiveError(WalError):
    """The archive cannot be used at all: it is WAL_DIR or inside it, it is not a
    directory or cannot be created, or its lock cannot be taken (another run holds it)."""


class _Vanished(ArchiveError):
    """The archive directory, or the lock file in it, was removed while this run was
    starting (before it held the lock): another run that had created it failed with
    nothing copied and removed it again (``_held``). The run starts again."""


# Starts of a run (``_Vanished``): each one lost takes another run's failure at that
# very moment.
_START_TRIES = 8


@dataclass
class ArchivedSegment:
    """What a run did with one segment of WAL_DIR.

    ``action``: ``new`` (copied), ``grown`` (copied again, ``added`` bytes more),
    ``unchanged``, ``expired`` (before the first segment ``expire`` kept: not copied
    back), or a problem: ``conflict`` (the archive's copy differs, or is not
    a file that can be read: kept), ``unreadable`` (the segment could not be read),
    ``lost`` (the writer deleted it between the listing and the copy, and the archive
    has not all of it), ``failed`` (the copy could not be written: a full disk, ...;
    the previous copy is left as it was), ``missed`` (copied, new, but its first
    record's seq does not follow the archive's segment before it, which WAL_DIR no
    longer has: the writer deleted segments between them before any run copied them).
    ``size``: the bytes the archive holds of it after the run. ``pending``: bytes of the
    newest segment past them, a record the writer has not finished yet (its buffer
    reached the file in the middle of it): left for the next run, so that the archive
    holds whole records only.
    """

    name: str
    action: str
    size: int
    added: int = 0
    problem: str | None = None
    pending: int = 0

    def line(self, problems_only: bool = False) -> str | None:
        """Its line for a person: None when it is unchanged (or, with ``problems_only``,
        not a problem)."""
        if self.action in PROBLEMS:
            return f"{self.name}: {self.action.upper()}: {self.problem}"
        if problems_only or self.action in (UNCHANGED, EXPIRED):
            return None
        left = (f" ({self.pending} more bytes of a record the writer has not finished: "
                "the next run copies them)" if self.pending else "")
        if self.action == NEW:
            return f"{self.name}: new, {self.size} bytes{left}"
        return f"{self.name}: grown by {self.added} bytes, {self.size} bytes now{left}"


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
    # The archive's checksum file could not be used (``archivesums.SumsError``'s line):
    # the segments are still copied, but no sums are recorded, and the run exits 1.
    sums_problem: str | None = None
    # The checksum file was written by this run before ``sums_problem`` came.
    sums_written: bool = False
    # Entries of WAL_DIR named like a segment that are not one (``not_segment_files``:
    # a directory, FIFO, a link to one, a name in upper case): not copied, but said.
    not_segments: list[str] = field(default_factory=list)
    # The run created the archive directory, failed, and removed it again: it had
    # copied nothing into it (``_held``).
    removed: bool = False

    @property
    def problems(self) -> list[ArchivedSegment]:
        return [s for s in self.segments if s.action in PROBLEMS]

    @property
    def ok(self) -> bool:
        return not self.problems and self.sums_problem is None

    @property
    def sums_line(self) -> str | None:
        """The line of ``sums_problem`` (None: the checksum file was fine)."""
        if self.sums_problem is None:
            return None
        if self.sums_written:
            return (f"{self.sums_problem}; the checksums of the copies made since were not "
                    "recorded")
        return f"{self.sums_problem}; no checksums were recorded by this run"

    def count(self, action: str) -> int:
        return sum(s.action == action for s in self.segments)

    def to_dict(self) -> dict:
        return {"wal_dir": self.wal_dir, "archive": self.archive, "ok": self.ok,
                "segments": [asdict(s) for s in self.segments], "archived": self.archived,
                "only_in_archive": self.only_in_archive, "sums_problem": self.sums_problem,
                "not_segments": self.not_segments, "removed": self.removed}

    def lines(self, problems_only: bool = False) -> list[str]:
        """One line per segment copied or with a problem, then a summary
        (``problems_only``: the lines of the problems alone)."""
        out = [line for s in self.segments if (line := s.line(problems_only)) is not None]
        if self.sums_line is not None:
            out.append(self.sums_line)
        if problems_only:
            return out
        counts = ", ".join(f"{self.count(a)} {a}" for a in (NEW, GROWN, UNCHANGED, EXPIRED)
                           if a != EXPIRED or self.count(a))
        pending = sum(s.pending for s in self.segments)
        waiting = (f"; {pending} bytes of a record the writer has not finished wait for the "
                   "next run" if pending else "")
        problems = len(self.problems) + (self.sums_problem is not None)
        out.append(
            f"archive {self.archive}: {plural(len(self.segments), 'segment')} of {self.wal_dir} "
            f"({counts}; {plural(problems, 'problem')}); it holds "
            f"{plural(self.archived, 'segment')}, {self.only_in_archive} of them no longer in "
            f"WAL_DIR{waiting}"
            + (f"; {self.archive} was removed again: this run created it and copied nothing "
               "into it" if self.removed else ""))
        return out


class _Conflict(Exception):
    """The archive's copy of a segment is not a prefix of the segment: one line."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class _WriteFailed(Exception):
    """Writing the copy into the archive failed (its temp file is gone)."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


class _SourceError(Exception):
    """Reading the segment in WAL_DIR failed (at byte ``offset``, where known)."""

    def __init__(self, err: OSError, offset: int | None = None) -> None:
        super().__init__(str(err))
        self.err = err
        self.offset = offset


def archive(wal_dir: str | os.PathLike, archive_dir: str | os.PathLike, *,
            on_segment: Callable[[ArchivedSegment], None] | None = None) -> ArchiveResult:
    """Copy into ``archive_dir`` every segment of ``wal_dir`` that is new or has grown.

    ``on_segment`` is called with each segment's row as soon as it is done (the
    command line prints its line then, so an interrupted run has said what it did).

    ``archive_dir`` is created if missing (not its parents), and removed again if the
    run fails having put nothing into it (``ArchiveResult.removed``). It must not be
    ``wal_dir`` or inside it (``inside``): nothing is ever written there. Problems
    with single segments (a conflict, an unreadable file, a file deleted before it
    could be copied, a copy that could not be written) are listed in the result and
    the run goes on with the next one.

    Raises:
        ArchiveError: the archive cannot be used at all (see the class).
        WalError: WAL_DIR is not a directory.
    """
    wal_dir, archive_dir = Path(wal_dir), Path(archive_dir)
    segments = list_segments(wal_dir)
    if inside(archive_dir, wal_dir):
        raise ArchiveError(f"the archive is the WAL directory {wal_dir} or inside it, "
                           "which is never written to: give a directory outside it",
                           file=str(archive_dir))
    result = ArchiveResult(str(wal_dir), str(archive_dir), not_segments=[
        f"{wal_dir / name}: {what}" for name, what in not_segment_files(wal_dir)])
    for attempt in range(_START_TRIES):
        created = _make_dir(archive_dir)
        try:
            with _held(archive_dir, created, result):
                _run(wal_dir, archive_dir, segments, result, on_segment)
        except _Vanished:  # (raised before the lock is held: nothing done yet)
            if attempt == _START_TRIES - 1:
                raise
            continue
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _run(wal_dir: Path, archive_dir: Path, segments: list[Segment], result: ArchiveResult,
         on_segment: Callable[[ArchivedSegment], None] | None) -> None:
    """The run itself, the archive's lock held: its rows go into ``result``."""
    from gpu_pitr.expire import read_marker

    _remove_stale_temps(archive_dir)
    expiry = read_marker(archive_dir)
    first_kept = expiry.first_kept.encode() if expiry is not None else b""
    try:
        sums = archivesums.read(archive_dir) or {}
    except archivesums.SumsError as err:
        # Left as it is for a person to look at; the copies go on (the writer's
        # retention does not wait), without sums.
        sums, result.sums_problem = None, str(err)
    recorded = dict(sums or {})

    def record_sums() -> None:
        if sums is None or sums == recorded or result.sums_problem is not None:
            return
        try:
            # Not stopped by the Ctrl-C being handled: the copies are in place, and
            # once the writer deletes their segments no later run can record them.
            with interrupts.holding():
                archivesums.write(archive_dir, sums)
            result.sums_written = True
        except OSError as err:  # the copies stand; verify names them unchecked
            result.sums_problem = str(err)
        recorded.clear()
        recorded.update(sums)

    buf = bytearray(_COPY_CHUNK)
    # Files after it hold a header at most: the writer may still be flushing it.
    being_written = last_with_records(segments)
    written = time.monotonic()
    try:
        for k, seg in enumerate(segments):
            interrupts.check()
            if seg.name.encode() < first_kept:
                result.segments.append(ArchivedSegment(seg.name, EXPIRED, 0))
            else:
                result.segments.append(_archive_one(seg, archive_dir / seg.name, buf,
                                                    newest=k >= being_written, sums=sums))
            if on_segment is not None:
                on_segment(result.segments[-1])
            if time.monotonic() - written >= SUMS_EVERY:
                # A long run (a first one, over many segments) records as it goes:
                # a SIGKILL loses the sums of the last seconds' copies at most.
                record_sums()
                written = time.monotonic()
    finally:  # an interrupted run too records the sums of what it copied
        record_sums()
    missed = _check_missed(result, archive_dir, {s.name for s in segments})
    if missed is not None and on_segment is not None:
        on_segment(missed)  # its row again, now a problem
    held = {s.name for s in list_segments(archive_dir) if s.path.is_file()
            and not s.path.is_symlink()}
    try:  # as WAL_DIR is now: the writer may have deleted some during the run
        now = {s.name for s in list_segments(wal_dir)}
    except OSError:
        now = {s.name for s in segments}
    result.archived = len(held)
    result.only_in_archive = len(held - now)


@contextlib.contextmanager
def _held(archive_dir: Path, created: bool, result: ArchiveResult) -> Iterator[None]:
    """The archive's lock, held for the run. A directory this run created is removed
    again when the run fails (its rows hold a problem, or it raised: a Ctrl-C, an error)
    with nothing but its own lock file in it, as initdb and pg_basebackup remove the
    directory they made when they fail: an empty archive left behind would read as
    one, with nothing in it. A directory that was there, one that got a copy, and one
    another process put anything into are kept (``_remove_if_only_locked``)."""
    lock = archive_lock(archive_dir)
    try:
        lock.__enter__()
    except BaseException:
        if created:  # (another run holding it has put its lock file there: kept)
            with contextlib.suppress(OSError):
                os.rmdir(archive_dir)
        raise
    try:
        try:
            yield
        except BaseException:
            if created:
                _remove_if_only_locked(archive_dir, lock)
            raise
        if created and not result.ok:
            result.removed = _remove_if_only_locked(archive_dir, lock)
    finally:
        lock.__exit__()


def _remove_if_only_locked(archive_dir: Path, lock: archive_lock) -> bool:
    """Remove ``archive_dir`` when it holds the lock file ``lock`` holds and nothing
    else; True when it is gone. Done before the lock is released: a second run that
    opened the lock file before it was unlinked finds it held and stops, and one that
    opens it after makes a new one, which ``rmdir`` (refusing a directory not empty)
    then keeps, as it keeps any file another process put there meanwhile. Never an
    error: the run's own problem is what the caller says."""
    try:
        if os.listdir(archive_dir) != [LOCK_NAME]:
            return False
        mine, there = os.fstat(lock.fd), os.lstat(lock.path)
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
            return False  # not the file this run locked
        os.unlink(lock.path)
        os.rmdir(archive_dir)
    except OSError:  # not empty any more (ENOTEMPTY), gone (ENOENT), ...: left as it is
        return False
    with contextlib.suppress(OSError):  # as _make_dir synced its parent to keep it
        fsync_path(archive_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    return True


def _make_dir(archive_dir: Path) -> bool:
    """The archive directory, created (and its parent fsynced) if missing: True when
    this call created it. One that
    exists must be empty or an archive (it holds the lock file the first run made):
    any other, a writer's live WAL directory given as --out by a slip included, is
    refused. Copying into it would put back what the writer's retention deleted, and
    its lock file would then let ``expire`` delete the writer's segments."""
    if os.path.lexists(archive_dir) and not archive_dir.is_dir():
        raise ArchiveError("exists and is not a directory", file=str(archive_dir))
    try:
        archive_dir.mkdir()
    except FileExistsError:
        _check_existing(archive_dir)
        return False
    except FileNotFoundError as err:
        raise ArchiveError("cannot create the archive: its parent directory does not exist",
                           file=str(archive_dir)) from err
    except OSError as err:
        raise ArchiveError(f"cannot create the archive: {os_reason(err)}",
                           file=str(archive_dir)) from err
    try:
        fsync_path(archive_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        # A parent we may create in but not read (mode -wx): it cannot be opened to be
        # synced. As PostgreSQL's fsync_fname does for a directory it cannot open, go
        # on: every copy is synced, and so is the archive directory after each rename.
        pass
    except OSError as err:
        raise ArchiveError(f"created, but its parent directory could not be synced: "
                           f"{os_reason(err)}", file=str(archive_dir)) from err
    return True


def _check_existing(archive_dir: Path) -> None:
    try:
        names = sorted(os.listdir(archive_dir))
    except OSError as err:
        kind = _Vanished if err.errno == errno.ENOENT else ArchiveError
        raise kind(f"cannot list the archive: {os_reason(err)}",
                   file=str(archive_dir)) from err
    if names and LOCK_NAME not in names:
        segments = sum(bool(SEGMENT_NAME_RE.fullmatch(n)) for n in names)
        what = (f"{plural(segments, 'segment file')} (a WAL directory?)" if segments
                else f"{names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else ""))
        raise ArchiveError(f"not an archive made by gpu-pitr archive, and not empty: it holds "
                           f"{what}; give a new or empty directory", file=str(archive_dir))


class archive_lock:
    """An exclusive ``flock`` on the archive's lock file, refused at once if held (by
    ``archive`` or ``expire``). The lock file is never followed if it is a symbolic link."""

    def __init__(self, archive_dir: Path) -> None:
        self.path = archive_dir / LOCK_NAME
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o666)
        except OSError as err:
            why = ("it is a symbolic link" if err.errno == errno.ELOOP else os_reason(err))
            kind = _Vanished if err.errno == errno.ENOENT else ArchiveError
            raise kind(f"cannot take the archive's lock: {why}", file=str(self.path)) from err
        try:
            mode = os.fstat(self.fd).st_mode
        except OSError as err:
            os.close(self.fd)
            raise ArchiveError(f"cannot take the archive's lock: {os_reason(err)}",
                               file=str(self.path)) from err
        if not stat.S_ISREG(mode):  # a FIFO opens read-write without blocking: refused,
            os.close(self.fd)       # as expire refuses it
            raise ArchiveError(f"cannot take the archive's lock: it is {file_kind(mode)}, not "
                               "the lock file gpu-pitr archive makes", file=str(self.path))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                why = ("another gpu-pitr archive or expire is running on this archive; "
                       "try again when it has finished")
            else:
                why = os_reason(err)
            raise ArchiveError(f"cannot take the archive's lock: {why}",
                               file=str(self.path)) from err
        # The file locked must still be the one at its name: a run that created the
        # archive and failed unlinks it (under its lock) before it removes the
        # directory, and a lock on the file it unlinked would let this run work beside
        # one that has made the archive again since (on a new lock file).
        try:
            there = os.lstat(self.path)
            mine = os.fstat(self.fd)
            same = (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        except OSError as err:
            os.close(self.fd)
            raise ArchiveError(f"cannot take the archive's lock: {os_reason(err)}",
                               file=str(self.path)) from err
        if not same:
            os.close(self.fd)
            raise _Vanished("cannot take the archive's lock: the lock file was removed "
                            "meanwhile (a run that created the archive failed and removed "
                            "it)", file=str(self.path))

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock


def _remove_stale_temps(archive_dir: Path) -> None:
    """The temp files that killed runs left, whatever segment they were copying."""
    from gpu_pitr.tempfiles import remove_stale_entries

    try:
        entries = list(os.scandir(archive_dir))
    except OSError as err:
        raise DirectoryReadError(archive_dir, err) from err
    remove_stale_entries(entries, SEGMENT_NAME_RE.pattern)


def _archive_one(seg: Segment, dest: Path, buf: bytearray, newest: bool = False,
                 sums: dict | None = None) -> ArchivedSegment:
    """Copy what ``seg`` holds beyond the archive's copy at ``dest``; ``newest``: the
    segment a writer may be appending to (its copy ends at a record boundary when the
    file allows, ``whole_records``). The block sums of a copy written, or of one found
    equal to the segment that has none recorded at its size, go into ``sums`` (by
    name; None: none are recorded)."""
    name = seg.name
    try:
        have = _archived_size(dest)
    except _Conflict as c:
        return ArchivedSegment(name, CONFLICT, 0, problem=c.line)
    try:
        # Opened without blocking, and only if a regular file: a FIFO put in its place
        # since the listing would otherwise hang the run, holding the archive's lock.
        src = open(open_regular(seg.path), "rb", buffering=0)  # noqa: SIM115 - closed below
    except NotARegularFile as err:
        return ArchivedSegment(name, UNREADABLE, have or 0, problem=(
            f"{seg.path}: is {file_kind(err.mode)} now, not the file the directory listed: "
            "not read"))
    except OSError as err:
        if err.errno != errno.ENOENT or os.path.islink(seg.path):
            return ArchivedSegment(name, UNREADABLE, have or 0,
                                   problem=f"{seg.path}: {unreadable(err)}")
        # Deleted (by the writer's retention) after the listing.
        if (have or 0) >= seg.size:  # all of it is in the archive (or it was empty)
            return ArchivedSegment(name, UNCHANGED, have or 0)
        held = f"the archive holds {have} of its {seg.size} bytes" if have else \
            "the archive has none of it"
        return ArchivedSegment(name, LOST, have or 0, problem=(
            f"{seg.path}: deleted (by the writer's retention) before it could be copied: "
            f"{held}; run archive more often than the writer rotates segments"))
    with src:
        try:
            st = os.fstat(src.fileno())
            size = st.st_size
            if newest and size != have and size >= (have or 0):
                # Never less than an earlier run copied (a version that copied a record
                # being written as it stood).
                size = max(whole_records(seg.path, size), have or 0)
            pending = max(0, st.st_size - size)
            if have is None:
                _record(sums, name, _copy(src, seg.path, size, st.st_mode, dest, None, buf))
                return ArchivedSegment(name, NEW, size, added=size, pending=pending)
            if size < have:
                raise _Conflict(
                    f"{seg.path}: offset {size}: the file ends there, {have - size} bytes "
                    "before the archive's copy does: it was truncated or replaced (a crash "
                    "of the writer's host that lost bytes not yet synced does this)")
            recorded = None if sums is None else sums.get(name)
            if size == have:
                # (Recorded now if it had none: a copy made before there were sums, or
                # by a run killed before it recorded them.)
                _record(sums, name, _same_prefix(src, seg.path, dest, size, buf, recorded))
                return ArchivedSegment(name, UNCHANGED, have, pending=pending)
            _record(sums, name, _copy(src, seg.path, size, st.st_mode, dest, have, buf,
                                      recorded))
            return ArchivedSegment(name, GROWN, size, added=size - have, pending=pending)
        except _Conflict as c:
            return ArchivedSegment(name, CONFLICT, have or 0,
                                   problem=f"{c.line}; the archive's copy is kept")
        except _SourceError as e:
            at = "" if e.offset is None else f"offset {e.offset}: "
            return ArchivedSegment(name, UNREADABLE, have or 0,
                                   problem=f"{seg.path}: {at}{unreadable(e.err)}")
        except _WriteFailed as e:
            if isinstance(e.err, NotSyncedError):
                return ArchivedSegment(name, FAILED, size, problem=(
                    f"{dest}: the archive copy is written and in place, but the archive "
                    f"directory could not be synced: {os_reason(e.err.cause)}; a crash of "
                    "the system now may lose it"))
            kept = "the previous copy is kept" if have else "nothing was left in its place"
            return ArchivedSegment(name, FAILED, have or 0, problem=(
                f"{dest}: cannot write the archive copy: {os_reason(e.err)}; {kept}"))


def _record(sums: dict | None, name: str, entry: archivesums.SegmentSums) -> None:
    if sums is not None:
        sums[name] = entry


def _check_missed(result: ArchiveResult, archive_dir: Path, listed: set
                  ) -> ArchivedSegment | None:
    """Segments the writer deleted before any run copied them: the first segment this
    run copied new does not go on from the archive's segment before it, when WAL_DIR no
    longer has that one (retention deletes the oldest first, so only there can a
    segment have gone unseen). Its row becomes ``missed`` (returned), and the run exits
    1. A seq of 0 is a writer reopened, not a gap; ``verify`` judges anything else."""
    new = next((s for s in result.segments if s.action == NEW), None)
    if new is None:
        return None
    before = [s for s in list_segments(archive_dir) if s.name.encode() < new.name.encode()]
    if not before or before[-1].name in listed:
        return None
    # A copy taken while the writer's header was still in its buffer (a segment just
    # created by a rotation) holds no record: the seq to go on from is in the one before.
    empty = []
    while len(before) > 1 and before[-1].size <= HEADER_SIZE:
        empty.append(before.pop().name)
    prev = before[-1]
    last = _last_seq(prev)
    first = _first_seq(archive_dir / new.name)
    if last is None or first is None or first == 0 or first <= last + 1:
        return None
    also = (f" ({', '.join(reversed(empty))} after it was copied before the writer had "
            "written a record there)" if empty else "")
    new.action = MISSED
    new.problem = (
        f"copied ({new.size} bytes), but its first record is seq {first} and the "
        f"archive's {prev.name} ends at seq {last}{also}: {first - last - 1} records were in "
        "segments the writer deleted before archive copied them (they are not in the "
        "archive: restores across them lack what they did); run archive more often than "
        "the writer rotates segments")
    return new


def _framed(seg: Segment):
    """The framed pieces of one segment file (its first ``seg.size`` bytes), read with
    the restore's own passes; ``OSError`` if it cannot be read."""
    from gpu_pitr.format.frame import header_problem
    from gpu_pitr.format.readahead import framed_pieces, scan_chunk_bytes

    return framed_pieces([seg], scan_chunk_bytes([seg], _COPY_CHUNK), header_problem)


def _last_seq(seg: Segment) -> int | None:
    """The seq of the last record of a segment file that the writer numbered: a torn
    record's too, when its seq was written; zero-filled records are none, and nor is a
    torn one whose bytes are all zeros (what a file extended but never written leaves,
    short of a whole zero record: taken as seq 0, a next segment from the seq after the
    last record was named missed)."""
    from gpu_pitr.format import zerofill

    last = None
    try:
        for item in _framed(seg):
            if item.problem is not None:
                return None
            n = item.n
            keep = ~zerofill.zero_records(item.length[:n], item.seq[:n])
            if keep.any():
                last = int(item.seq[:n][keep][-1])
            if item.torn is not None and item.torn[1] >= 8:
                with open(seg.path, "rb") as f:
                    f.seek(item.torn[0])
                    head = f.read(min(item.torn[1], RECORD_HEADER_SIZE))
                if head[:len(HEADER_ID)] != HEADER_ID and any(head):
                    last = int.from_bytes(head[:8], "little")
    except OSError as err:
        raise_if_not_the_files(err)  # out of descriptors: the check is not passed over
        return None
    return last


def _first_seq(path: Path) -> int | None:
    """The seq of the first record of a segment file that the writer numbered
    (``first_record_seq``): zero-filled records that lead it (a crash after the file was
    extended) are none, as ``_last_seq`` passes over those that end one. Their seq 0
    is not a writer reopened: read as one, a segment gone before it went unnamed."""
    from gpu_pitr.snapshot import first_log_record

    first = first_record_seq(path)
    if first != 0:
        return first
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    found = first_log_record([Segment(path, size, 0)], skip_zeros=True)
    return None if found is None else found[1]


def whole_records(path: Path, size: int) -> int:
    """How much of the segment at ``path`` to copy, its first ``size`` bytes listed:
    ``size`` when they end where a record does; else the end of the record (or second
    segment header) they end inside, when the file holds it whole now (a writer's
    buffer flushed in the middle of it, then the rest); else where that record starts:
    the writer has not finished it (its buffer waits for more records), and the next
    run copies it. A segment header being written is copied as it stands. Framed with
    the restore's own passes; a file that cannot be read is left to the copy to
    report."""
    if size < HEADER_SIZE:  # the header itself being written
        torn = (0, size)
    else:
        torn = None
        try:
            for item in _framed(Segment(path, size, 0)):
                if item.problem is None and item.torn is not None:
                    torn = item.torn
        except OSError:
            return size
    if torn is None:
        return size
    found = record_end(path, torn[0])
    if found is not None and size < found[0] <= found[1]:
        return found[0]
    return torn[0] if torn[0] >= HEADER_SIZE else size


def _archived_size(dest: Path) -> int | None:
    """Bytes the archive holds of a segment (None: none). Its name taken by a link or
    by something that is not a regular file is a conflict: that is not a copy."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _Conflict(f"{dest}: cannot read the archive's copy: {os_reason(err)}; left as "
                        "it is") from err
    if stat.S_ISLNK(st.st_mode):
        raise _Conflict(f"{dest}: in the archive, but a symbolic link, not a copy; left as "
                        "it is")
    if not stat.S_ISREG(st.st_mode):
        raise _Conflict(f"{dest}: in the archive, but not a file; left as it is")
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


def _first_difference(a, b) -> int:
    """Index of the first byte where ``a`` and ``b`` differ (``len`` of the shorter one
    when that is a prefix of the other)."""
    import numpy as np

    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(diff[0]) if len(diff) else n


def _differs(src_path: Path, at: int) -> _Conflict:
    return _Conflict(f"{src_path}: offset {at}: differs from the archive's copy: one of "
                     "them changed since it was archived (a segment rewritten in place, "
                     "another store's, or the copy damaged)")


def _shorter(src_path: Path, pos: int, size: int) -> _Conflict:
    return _Conflict(f"{src_path}: offset {pos}: the file got shorter while it was read "
                     f"({size} bytes when it was opened)")


def _open_copy(dest: Path):
    """The archive's copy, for reading; a copy that cannot be read is a conflict."""
    try:
        # (not followed, nor waited on: a link or FIFO put there since it was looked at)
        return open(open_regular(dest, follow=False), "rb", buffering=0)  # noqa: SIM115
    except NotARegularFile as err:
        raise _Conflict(f"{dest}: in the archive, but {file_kind(err.mode)}, not a copy; "
                        "left as it is") from err
    except OSError as err:
        raise _Conflict(f"{dest}: cannot read the archive's copy: {os_reason(err)}") from err


def _read_copy(old, dest: Path, pos: int, n: int) -> bytes:
    try:
        return _read_at(old.fileno(), pos, n)
    except OSError as err:
        raise _Conflict(f"{dest}: offset {pos}: cannot read the archive's copy: "
                        f"{os_reason(err)}") from err


def _same_prefix(src, src_path: Path, dest: Path, have: int, buf: bytearray,
                 recorded: archivesums.SegmentSums | None = None
                 ) -> archivesums.SegmentSums:
    """The first ``have`` bytes of ``src`` are the archive's copy ``dest``, else
    ``_Conflict`` naming the first byte that differs; returns their block sums.

    Sums ``recorded`` for a copy of ``have`` bytes (or of fewer: each whole block they
    cover) must be theirs too, else
    ``_Conflict``: the segment and its copy both changed alike since the copy was made
    (a reflink copy on btrfs or XFS shares the segment's disk blocks, so damage to
    them reaches both), or the checksum file was edited. Re-recording them here would
    make ``verify`` call the archive intact."""
    block_sums = archivesums.BlockSums()
    view = memoryview(buf)
    with _open_copy(dest) as old:
        pos = 0
        while pos < have:
            interrupts.check()
            n = _src_read_at_into(src, view[: min(len(buf), have - pos)], pos)
            if not n:
                raise _shorter(src_path, pos, have)
            before = _read_copy(old, dest, pos, n)
            if view[:n] != before:
                raise _differs(src_path, pos + _first_difference(view[:n], before))
            block_sums.feed(before)
            pos += n
    found = block_sums.result()
    # Where the copy grew past the sums (a run that could not record them), the blocks
    # before their last, partial one.
    k = (None if recorded is None or recorded.size > have
         else recorded.first_difference(found))
    if k is not None:
        start, end = recorded.block_range(k)
        raise _Conflict(
            f"{dest}: offset {start}: equal to the segment, but bytes {start} to {end - 1} "
            "are not the ones archive recorded the checksum of when it copied them: the "
            "segment and its copy changed alike since (a reflink copy shares the "
            "segment's disk blocks: damage to them reaches both), or the "
            f"checksum file was edited; verify the archive, and check {src_path}")
    return found


def _copy(src, src_path: Path, size: int, mode: int, dest: Path, have: int | None,
          buf: bytearray, recorded: archivesums.SegmentSums | None = None
          ) -> archivesums.SegmentSums:
    """``size`` bytes of ``src`` to ``dest`` with ``src``'s permission bits, atomically;
    the first ``have`` bytes must equal the archive's copy and the sums ``recorded`` of
    it (``_same_prefix``; else ``_Conflict``, and that copy is left as it was). Returns
    the block sums of the copy, read back from it before it is renamed into place."""
    if have:
        _same_prefix(src, src_path, dest, have, buf, recorded)
    try:
        # (killed runs' temp files were removed when this run took the archive's lock)
        with atomic_files(dest, stale=False) as (tmp,), open(tmp, "r+b", buffering=0) as out:
            # The segment's bits, and always the owner's read and write: the archive
            # reads its copies back (and fsyncs them by name) on later runs.
            with contextlib.suppress(OSError):  # a file system without modes (vfat)
                os.fchmod(out.fileno(), (stat.S_IMODE(mode) & 0o777) | 0o600)
            pos = _copy_in_kernel(src.fileno(), out.fileno(), size)
            view = memoryview(buf)
            while pos < size:  # what the kernel did not copy, and why, if it failed
                interrupts.check()
                n = _src_read_at_into(src, view[: min(len(buf), size - pos)], pos)
                if not n:
                    raise _shorter(src_path, pos, size)
                done = 0
                while done < n:
                    done += out.write(view[done:n])
                pos += n
            try:
                return archivesums.file_sums(out.fileno(), size)
            except EOFError as err:  # pragma: no cover - the copy was just written whole
                raise OSError(errno.EIO, "the copy reads back shorter than written") from err
    except OSError as err:
        raise _WriteFailed(err) from err


def _copy_in_kernel(src_fd: int, out_fd: int, size: int) -> int:
    """Bytes of ``src`` copied to ``out`` (both from offset 0) by ``copy_file_range``,
    which needs no trip through this process; it stops at the first error (a file
    system that cannot, an I/O error, a full disk), and the caller's plain read and
    write copy the rest, or say precisely what failed."""
    pos = 0
    while pos < size and hasattr(os, "copy_file_range"):
        interrupts.check()
        try:
            n = os.copy_file_range(src_fd, out_fd, min(size - pos, _KERNEL_CHUNK), pos, pos)
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
        return read_into(src.fileno(), view, pos)
    except OSError as err:
        raise _SourceError(err, pos) from err
