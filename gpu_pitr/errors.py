"""Errors a restore can raise: each renders as one line naming file and byte offset."""

from __future__ import annotations

from pathlib import Path


class WalError(Exception):
    """A data error in a WAL directory, a snapshot or a restore target.

    ``str(err)`` is one line: ``<file>: offset <n>: seq <s>: <what>`` (parts
    that do not apply are left out). Pickles whole (a restore on a Dask worker
    raises it where the result is gathered).
    """

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        offset: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.what = what
        self.file = file
        self.offset = offset
        self.seq = seq
        super().__init__(self._line())

    def _line(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        if self.seq is not None:
            parts.append(f"seq {self.seq}")
        parts.append(self.what)
        # One line whatever a path holds (a newline in a file name): ``file`` keeps it.
        return " ".join(": ".join(parts).splitlines())


class CorruptRecordError(WalError):
    """A payload that does not decode, before the stop point."""


class BadSegmentError(WalError):
    """A ``wal-*.log`` file with the wrong magic or version, needed by the restore."""


class DimensionMismatchError(WalError):
    """An applied record whose vector length differs from the index dimension."""


class IncompleteHistoryError(WalError):
    """The log does not start at sequence number 0 and no base covers the gap."""


class BaseMismatchError(WalError):
    """A base snapshot that is not of the log being restored: the log ends before its
    position, or the records there are not those it recorded (another store's
    snapshot, or a log not archived that far yet)."""


class TargetNotFoundError(WalError):
    """A target no record meets: a sequence number no record carries, a transaction
    that never ends, a position where no whole record starts."""


class BackendUnavailableError(WalError):
    """The requested executor cannot run here (e.g. ``cuda`` without a GPU)."""


class TargetBeforeBaseError(WalError):
    """A restore target earlier than the base snapshot's position."""


class TargetNotReachedError(WalError):
    """Under ``strict`` (``--strict``): a restore that ran but may not have reached the
    state asked for, which by default is a warning: the log ends before a time target,
    records are missing inside it, or there is no log at all (PostgreSQL ends such a
    recovery with "recovery ended before configured recovery target was reached").
    Raised before anything is written."""


class MissingExtraError(ImportError):
    """An optional dependency a command needs is not installed; says which extra has it."""


class ForkedOpenMPError(RuntimeError):
    """Parallel code called in a process forked from one that had started GNU OpenMP's
    threads (Numba's ``omp`` layer, its default on Linux): that runtime does not survive
    a fork, and Numba would end the child with SIGTERM instead (a
    ``multiprocessing.Pool`` waited for its task forever)."""


class CompilerOffError(RuntimeError):
    """A compiled loop of gpu_pitr called with Numba's compiler off
    (``NUMBA_DISABLE_JIT=1``): the loops then run as NumPy code in Python, whose integer
    rules are not the compiled ones (uint64 and int64 make float64), and the package's
    intrinsics have no Python form. One line naming the setting, not a TypeError from
    inside a loop."""


def missing_extra(err: ImportError, module: str, needs: str, extra: str) -> MissingExtraError:
    """The one line for ``err``, raised importing ``module``: ``needs`` (what needs it)
    and the extra to install where it is not installed; where it is but fails to import
    (a build for NumPy 1 under NumPy 2, say, which pip keeps: the extra's bound is met),
    that, and why: installing the extra would not change it."""
    if isinstance(err, ModuleNotFoundError) and err.name == module:
        return MissingExtraError(f"{needs}: pip install 'gpu-pitr[{extra}]'")
    return MissingExtraError(f"{needs}, which is installed here but does not import "
                             f"({type(err).__name__}: {err}): upgrade or reinstall it")


def os_reason(cause: OSError) -> str:
    """The text of an ``OSError`` without its ``[Errno n]`` prefix and file name."""
    import os

    return os.strerror(cause.errno) if cause.errno else (cause.strerror or str(cause))


def _remade(cls, args: tuple, attrs: dict):
    # A one-line OSError unpickled (from a Dask worker): made without calling
    # cls.__init__, whose arguments are not the exception's args, then given its
    # attributes back. (Pickled as OSError pickles, one failed to unpickle.)
    err = cls.__new__(cls, *args)
    OSError.__init__(err, *args)
    for name, value in attrs.items():
        setattr(err, name, value)
    return err


class _OneLineOSError(OSError):
    """An ``OSError`` whose text is one line naming the file (no ``[Errno n]`` prefix)."""

    def __init__(self, path, line: str, cause: OSError) -> None:
        super().__init__(cause.errno, " ".join(line.splitlines()))  # ``filename``: as it is
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        attrs = {"filename": self.filename, **self.__dict__}
        return _remade, (type(self), (self.errno, self.strerror), attrs)


class NotSyncedError(OSError):
    """Outputs renamed into place whose directory then failed to fsync (EIO): written,
    but a crash of the system may still lose the rename. ``cause``: the fsync's error."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.cause = cause

    def __reduce__(self):  # (pickled by a scale-out worker: OSError's takes two args)
        return type(self), (self.cause,)


class PartlyInPlaceError(OSError):
    """Outputs renamed into place as a set (a FAISS index and its id sidecar) whose
    first were renamed and a later one, ``missing``, failed to be (EIO): it is not
    there, its previous version removed first (it described other files). ``cause``:
    the rename's error."""

    def __init__(self, missing, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.missing = str(missing)
        self.cause = cause

    def __reduce__(self):  # (pickled by a scale-out worker: OSError's takes two args)
        return type(self), (self.missing, self.cause)


class OutputError(_OneLineOSError):
    """An output that could not be written (a full disk, a lost mount, ...): one line
    naming it. The output was written aside, so nothing was left in its place; or
    (``NotSyncedError``) it is in place but its directory could not be synced; or
    (``PartlyInPlaceError``) it is in place but a file that goes with it is missing."""

    def __init__(self, path, what: str, cause: OSError) -> None:
        if isinstance(cause, NotSyncedError):
            line = (f"{path}: the {what} is written and in place, but its directory "
                    f"could not be synced: {os_reason(cause.cause)}; a crash of the system "
                    "now may lose it")
        elif isinstance(cause, PartlyInPlaceError):
            line = (f"{path}: the {what} is in place, but {cause.missing} could not be "
                    f"renamed into place beside it: {os_reason(cause.cause)}; it is "
                    "missing (the previous one was removed: it described the output "
                    "replaced): write the output again")
        else:
            line = (f"{path}: cannot write the {what}: {os_reason(cause)}; "
                    "nothing was left in its place")
        super().__init__(path, line, cause)


class NoRoomError(OutputError):
    """An output refused before any of it is written: its file system has not the room
    for it (``errno`` ENOSPC), said on one line naming it (the previous file there, if
    any, untouched). An output error, not a ``WalError``: the log is not at fault."""

    def __init__(self, path, line: str) -> None:
        import errno

        _OneLineOSError.__init__(self, path, line, OSError(errno.ENOSPC, line))


class WithoutItsJsonError(OutputError):
    """The JSON file written with an output (``--report-json``: ``write_json``'s
    ``then``) that could not be put in place once that output was (a full directory's
    rename, a lost mount): one line naming it, saying the output is in place without it
    and its previous version is gone (it described the output replaced)."""

    def __init__(self, path, cause: OSError) -> None:
        _OneLineOSError.__init__(self, path, (
            f"{path}: cannot write the JSON file: {os_reason(cause)}; the output written "
            "with it is in place without it (a previous JSON file there is removed: it "
            "described the output replaced): write them again"), cause)


class WalDirectoryInUseError(_OneLineOSError):
    """Another ``WalWriter`` has the WAL directory open: one line naming it."""

    def __init__(self, path, cause: OSError) -> None:
        super().__init__(path, f"{path}: another WalWriter has this WAL directory open "
                               f"(two would interleave their records); close it first",
                         cause)


class UnwritableDirectoryError(_OneLineOSError):
    """A directory an output was to be created in refuses new files (no permission, a
    read-only file system): one line naming the directory and the output, checked
    before a restore starts."""

    def __init__(self, path, cause: OSError) -> None:
        import errno
        import os

        path = Path(path)
        size = len(os.fsencode(path.name))
        extra = 0
        if cause.errno == errno.ENAMETOOLONG and size <= _NAME_MAX:
            from gpu_pitr.tempfiles import temp_path

            extra = len(os.fsencode(temp_path(path).name)) - size
        if size <= _NAME_MAX < size + extra:
            # The name is one the file system takes; the temp file's, longer, is not
            # (else the whole path is too long: PATH_MAX, not the name, said below).
            super().__init__(path, (
                f"{path}: name too long to be written atomically: it is written beside "
                f"its place first, under a name {extra} bytes longer (a pid and a random part), so "
                f"it can be "
                f"{_NAME_MAX - extra} bytes long at most (it is {size})"), cause)
            return
        super().__init__(path.parent, f"{path.parent}: cannot create {path.name} there: "
                         f"{os_reason(cause)}", cause)


# The longest file name most Linux file systems take, in bytes (NAME_MAX).
_NAME_MAX = 255


class FileReadError(_OneLineOSError):
    """A file of the log that could not be read past its header (an I/O error, a file
    that went away): one line naming it and the byte offset."""

    def __init__(self, path, offset: int, cause: OSError) -> None:
        super().__init__(path, f"{path}: offset {offset}: cannot read: {os_reason(cause)}", cause)


class FileShrankError(_OneLineOSError):
    """A segment that ended, while it was read, before the size it had when the restore
    listed it (truncated or replaced: a writer only appends): one line naming it and the
    byte offset. Not a torn tail: the bytes lost are unknown, and the records after them
    may be in the log's later files."""

    def __init__(self, path, offset: int, listed: int) -> None:
        import errno

        super().__init__(path, f"{path}: offset {offset}: the file ends there while it is "
                         f"read, {listed - offset} bytes short of its size when listed: it "
                         "was truncated or replaced during the run",
                         OSError(errno.EIO, "file shrank"))


class DirectoryReadError(_OneLineOSError):
    """A directory (WAL_DIR, an archive) whose entries cannot be listed: one line naming it."""

    def __init__(self, path, cause: OSError) -> None:
        super().__init__(path, f"{path}: cannot list the directory: {os_reason(cause)}", cause)


class DirectorySearchError(_OneLineOSError):
    """A directory whose names can be listed but whose files cannot be opened (read
    permission without search, ``x``): one line naming the directory, not the first
    file that failed to open, as if that file were the trouble."""

    def __init__(self, path) -> None:
        import errno

        super().__init__(path, f"{path}: cannot search the directory: Permission denied (its "
                         "names can be listed, but no file in it can be opened without the x "
                         "permission)", PermissionError(errno.EACCES, "Permission denied"))
