"""The temp files outputs are written to: clean-up after killed writers, writeback.

An output ``DEST`` is written to ``.DEST.tmp-<pid>-<8 hex>`` beside it, then renamed
onto it (``gpu_pitr.outputs.atomic_files``). A writer killed before the rename
(SIGKILL, power loss) leaves its temp file behind; the next successful write of the
same ``DEST`` removes those whose writer process is gone.

Large outputs are fsynced before the rename; ``start_writeback`` lets the disk start
on each piece as it is written, so the fsync has little left to wait for.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gpu_pitr import interrupts


@functools.cache
def _sync_file_range():
    # Linux's sync_file_range(2), through the C library (None where there is none).
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without
    waiting and without dropping them from the page cache: a hint, for files fsynced
    later (a 520 MB write then fsync: 0.40-0.48 s, with the hint after each 64 MiB:
    0.30-0.35 s, measured). Does nothing where the call is missing or fails."""
    func = _sync_file_range()
    if func is not None and nbytes > 0:
        func(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temp files of ``dest`` whose writer process no longer runs.

    Only regular files named as ``atomic_files`` names them, for this ``dest``, are
    touched; a temp of a live process (this one included) is left alone. The pid
    is checked on this host only: a temp written over a shared file system by
    another host's live process would be taken for stale, so keep such outputs
    out of shared directories. Best effort: a file that cannot be removed stays.

    Returns:
        The paths removed.
    """
    return remove_stale_entries(listing(dest.parent), re.escape(dest.name))


def listing(directory: Path) -> list[os.DirEntry]:
    """The entries of ``directory``, for a sweep (best effort): none when it cannot be
    listed."""
    try:
        return list(os.scandir(directory))
    except OSError:
        return []


def temp_path(dest: Path) -> Path:
    """A new temp name beside ``dest``: ``.<name>.tmp-<pid>-<8 hex>`` (what
    ``temp_pattern`` matches)."""
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def temp_pattern(name_pattern: str) -> re.Pattern:
    """The names ``atomic_files`` gives the temp files of the destinations whose names
    match ``name_pattern`` (a regular expression): group 1 is the destination's name,
    group 2 the writer's pid."""
    return re.compile(rf"\.({name_pattern})\.tmp-(\d+)-[0-9a-f]{{8}}")


def dead_writers(entries, pattern: re.Pattern):
    """``(entry, match)`` for each of ``entries`` whose name ``pattern`` matches whole and
    whose writer, the pid in the match's group 2, no longer runs on this host."""
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is not None and not pid_alive(int(match.group(2))):
            yield entry, match


# A temp file of another destination is removed only when it has not changed for this
# long: its pid may be of a writer on another host or in another pid namespace (a
# container) sharing the directory, which this host cannot see.
QUIET_SECONDS = 600
# Times a write makes the parent of its output again when it vanished between being
# made (or found) and the temp entry's creation in it: another writer's failed save
# removed the empty parent it had made (``snapshot.format._in_parent``). As git's
# ``raceproof_create_file`` does against a process pruning empty directories; each
# time takes another writer failing at that very moment, so a few are plenty.
PARENT_RETRIES = 8


def remove_stale_entries(entries, name_pattern: str, quiet: bool = False) -> list[Path]:
    """``remove_stale_temps`` for every destination named by ``name_pattern``, among
    ``entries`` (``os.DirEntry`` of one directory); with ``quiet``, only temps not
    changed for ``QUIET_SECONDS``."""
    return remove_dead(entries, temp_pattern(name_pattern), lambda e: e.is_file(
        follow_symlinks=False) and (not quiet or unchanged([e.path])))


def remove_dead(entries, pattern: re.Pattern, removable: Callable[[os.DirEntry], bool],
                remove: Callable[[str], None] = os.unlink) -> list[Path]:
    """``remove`` each of ``entries`` that ``dead_writers`` yields and ``removable``
    accepts. Best effort: what cannot be looked at or removed stays. Returns the paths
    removed."""
    removed = []
    for entry, _ in dead_writers(entries, pattern):
        try:
            if not removable(entry):
                continue
            remove(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def unchanged(paths) -> bool:
    """Whether none of ``paths`` changed in the last ``QUIET_SECONDS``."""
    since = time.time() - QUIET_SECONDS
    return all(os.stat(p, follow_symlinks=False).st_mtime <= since for p in paths)


def fsync_path(path: Path, flags: int) -> None:
    """fsync the file or directory (``os.O_DIRECTORY`` in ``flags``) at ``path``. A file
    system that cannot fsync a directory at all (EINVAL: VirtualBox's shared folders,
    some FUSE ones) is taken at its word, as PostgreSQL's ``fsync_fname_ext`` does: the
    rename is as durable as it can make it, and the command does not fail for it."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:
        if not (flags & os.O_DIRECTORY and err.errno in (errno.EINVAL, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


# What must happen just before this thread's next output is renamed into place, and
# what undoes it if that rename fails (``first_removing``): per thread, as two restores
# may write outputs at once. ``filling``: how many ``new_dir`` blocks this thread is
# inside, whose files (a dataset's report) are renamed into a temp directory, not into
# place: the directory's own rename is the output's.
_installing = threading.local()


def _pending() -> tuple[list[Callable[[], None]], list[Callable[[], None]]]:
    if not hasattr(_installing, "removals"):
        _installing.removals, _installing.undos, _installing.filling = [], [], 0
    return _installing.removals, _installing.undos


@contextmanager
def _filling() -> Iterator[None]:
    _pending()
    _installing.filling += 1
    try:
        yield
    finally:
        _installing.filling -= 1


@contextmanager
def first_removing(path: Path) -> Iterator[None]:
    """Inside the block, the first output renamed into place (``atomic_files``,
    ``new_dir``) first moves ``path`` out of the way, a file written beside it that is
    renamed into place after it: a writer killed between the two renames (SIGKILL, power
    loss) then leaves the new output and no ``path``, never the new output beside the
    previous run's ``path`` (a restore's --report-json describing another index).

    ``path`` is renamed aside (a temp name, which the sweeps remove once its writer is
    gone) and deleted when the block ends; if the output's own rename fails, it is put
    back (``install_failed``): nothing was replaced, so nothing is lost."""
    aside: Path | None = None

    def remove() -> None:
        nonlocal aside
        if not os.path.lexists(path):
            return
        moved = temp_path(path)
        os.rename(path, moved)
        aside = moved
        fsync_dir(path.parent)  # gone before the output's rename, on disk too

    def put_back() -> None:
        nonlocal aside
        if aside is not None and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # best effort: the rename's error counts
                os.rename(aside, path)
                aside = None

    removals, undos = _pending()
    removals.append(remove)
    undos.append(put_back)
    try:
        yield
    finally:
        for pending, step in ((removals, remove), (undos, put_back)):
            if step in pending:
                pending.remove(step)
        if aside is not None:
            with contextlib.suppress(OSError):
                os.unlink(aside)


def before_install() -> None:
    """Called by the writers just before their first rename: runs ``first_removing``'s
    removals, once."""
    removals, undos = _pending()
    if _installing.filling:  # a file of a directory not yet in place
        return
    if not removals:  # an output renamed into place before this one: nothing to put back
        undos.clear()
    while removals:
        removals.pop()()


def install_failed() -> None:
    """Called by the writers when their first rename failed (nothing was replaced):
    puts back what ``before_install`` moved aside."""
    _, undos = _pending()
    if _installing.filling:  # a file of a directory not yet in place
        return
    while undos:
        undos.pop()()


def install_dir(tmp: Path, out: Path, check: Callable[[Path], None]) -> None:
    """Rename the finished directory ``tmp`` (``temp_path(out)``, fsynced) onto ``out``.

    A missing or empty ``out`` is replaced in one step. An ``out`` with contents, which
    ``check(out)`` must accept (it raises otherwise), is renamed aside first
    (``.<name>.old-<pid>-<8 hex>``) and removed once ``tmp`` is in its place: ``out``
    never holds a half-written directory. ``remove_stale_dirs`` puts back an aside
    directory whose writer died between the two renames."""
    try:
        os.rename(tmp, out)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        check(out)
        aside = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, aside)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(aside, out)
            raise
        # The new one is in place: a stop landing in this fsync (Ctrl-C in a program that
        # calls the library: no command defers it) waits for it and for the removal, and
        # is raised after. Raised at once, it left the old one aside, whole, for as long
        # as the process lived: the sweeps pass over a live writer's directories.
        # (The old one stays aside until the fsync: swept later.)
        stop = _through_stops(lambda: fsync_renamed(out.parent))
        remove_tree(aside)
        if stop is not None:
            raise stop from None
    fsync_renamed(out.parent)


def _through_stops(step: Callable[[], None]) -> BaseException | None:
    """Run ``step`` to its end, again after each stop (Ctrl-C, SIGTERM) that lands in it:
    returns the last such stop, for the caller to raise once what must finish has."""
    stop = None
    while True:
        try:
            step()
            return stop
        except (KeyboardInterrupt, interrupts.Terminated) as err:
            stop = err


def remove_tree(path: Path) -> None:
    """``shutil.rmtree(path, ignore_errors=True)``, run to its end even when a stop lands
    in it (Ctrl-C in a program that calls the library: no command defers it), which is
    raised after. Stopped halfway, it left the rest of the directory for as long as the
    process lived: the sweeps pass over the directories of a writer still running."""
    stop = _through_stops(lambda: shutil.rmtree(path, ignore_errors=True))
    if stop is not None:
        raise stop


def fsync_renamed(directory: Path) -> None:
    """fsync ``directory`` after a rename into it: the output is in place, so a failure
    is ``NotSyncedError`` (not "nothing was left in its place")."""
    from gpu_pitr.errors import NotSyncedError

    try:
        fsync_dir(directory)
    except OSError as err:
        raise NotSyncedError(err) from err


@contextmanager
def new_dir(out: Path, check: Callable[[Path], None], restorable: Callable[[Path], bool],
            own_name: Callable[[str], bool],
            parent_gone: Callable[[], None] | None = None) -> Iterator[Path]:
    """A new hidden directory beside ``out`` (``temp_path``) for the block to fill.

    When the block succeeds the directory is fsynced and installed onto ``out``
    (``install_dir``, which ``check`` guards); on any failure it is removed and ``out``
    is left as it was. Leftovers of dead writers of ``out`` go first
    (``remove_stale_dirs``, which puts back an old ``out`` that ``restorable`` calls
    whole; ``own_name`` says which names the block writes into the directory).
    ``parent_gone``, if given, makes ``out``'s parent again when it is gone before the
    directory is made in it (``PARENT_RETRIES``); once the directory is there the
    parent is not empty, and no writer's clean-up (``rmdir``) can take it."""
    from gpu_pitr.errors import NotSyncedError

    remove_stale_dirs(out, restorable, own_name)
    tmp = temp_path(out)
    for attempt in range(PARENT_RETRIES + 1):
        try:
            tmp.mkdir()
            break
        except FileNotFoundError:
            if parent_gone is None or attempt == PARENT_RETRIES:
                raise
            parent_gone()
    try:
        try:
            with _filling():
                yield tmp
        except NotSyncedError as err:  # a file put in place in tmp, which goes below
            raise err.cause from err
        fsync_dir(tmp)
        interrupts.committing()  # no stop halfway through the renames
        try:
            before_install()
            install_dir(tmp, out, check)
        except NotSyncedError:
            raise  # in place, only not synced
        except BaseException:
            if os.path.lexists(tmp):  # not renamed into place (not a stop raised after)
                install_failed()
            raise
    except BaseException:
        remove_tree(tmp)
        raise


def remove_stale_dirs(out: Path, restorable: Callable[[Path], bool],
                      own_name: Callable[[str], bool]) -> None:
    """Remove the temp and aside directories of writers of ``out`` (``install_dir``)
    whose process is gone (this host's pids). A dead writer's aside directory is the
    old ``out``: it is put back instead when ``out`` is missing and ``restorable`` says
    it is whole. Only a directory that holds nothing but files ``own_name`` accepts is
    touched (``holds_only``). Best effort: what cannot be removed stays for a later
    write."""
    for entry, m in dead_writers(listing(out.parent), _dirs_of_writers(out, "tmp|old")):
        path = Path(entry.path)
        if not holds_only(entry, own_name):
            continue
        try:
            if m.group(1) == "old" and not os.path.lexists(out) and restorable(path):
                os.rename(path, out)
            else:
                shutil.rmtree(path)
        except OSError:
            pass


def holds_only(entry: os.DirEntry, own_name: Callable[[str], bool]) -> bool:
    """Whether ``entry`` is a directory (not a link to one) holding regular files whose
    names ``own_name`` accepts, and nothing else: what a killed writer left. A directory
    of someone else's that is only named like a writer's (``.photos.old-2023-12``, a
    pid and hex digits by chance) is not removed with it."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return False
        with os.scandir(entry.path) as inside:
            return all(e.is_file(follow_symlinks=False) and own_name(e.name) for e in inside)
    except OSError:
        return False


def _dirs_of_writers(out: Path, kinds: str) -> re.Pattern:
    """The names ``new_dir`` and ``install_dir`` give the directories of writers of
    ``out``: group 1 the kind (``tmp`` being written, ``old`` the previous ``out`` set
    aside), group 2 the writer's pid."""
    return re.compile(rf"\.{re.escape(out.name)}\.({kinds})-(\d+)-[0-9a-f]+")


def aside_dirs(out: Path) -> list[str]:
    """The paths of the previous ``out``s that writers set aside (``install_dir``) and
    did not remove: killed between their two renames. Sorted; none when ``out``'s
    directory cannot be listed."""
    pattern = _dirs_of_writers(out, "old")
    return sorted(e.path for e in listing(out.parent) if pattern.fullmatch(e.name))


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (or cannot be told apart from one)."""
    if pid <= 0:
        return True  # 0 and negatives name process groups, never a writer
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process; or no pid at all: not a name we wrote
    return True
