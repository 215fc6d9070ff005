"""Retention: ``gpu-pitr expire ARCHIVE_DIR --snapshots SNAP_DIR --keep N``.

``gpu-pitr archive`` never deletes a segment, so an archive grows without end.
``expire`` is its retention, as pgBackRest's ``expire`` is for backups and their WAL:
it keeps the newest N snapshots of SNAP_DIR (``keep``), or the ones needed to restore
any moment at or after T (``keep_since``), and deletes the older snapshots and the
archived segments that come wholly before the oldest snapshot kept: the *anchor*.
Every restore from the anchor's position on stays possible (``restore ARCHIVE_DIR
--snapshots SNAP_DIR``); the moments before it are given up.

What keeps it from deleting what is still needed:
- only a directory that ``gpu-pitr archive`` made (it holds the archive's lock file)
  is touched, never a writer's WAL directory, and only under that lock (never while
  ``archive`` copies into it);
- only snapshots of this archive's log count, and are ever deleted: the segment of
  each one's position is in the archive and long enough, and the records at its
  position carry the sequence numbers (and the last one the CRC-32) it recorded. A
  snapshot restored from an incomplete history does not count either;
- a snapshot holding other files (notes, a report) is not deleted, so that they are
  not lost with it (a snapshot write refuses to replace it, for the same reason);
- the anchor is checked whole first (every checksum, as ``verify`` does); a damaged
  one is passed over, and left in place, for the next older one;
- with fewer than N snapshots (or none that serves T) nothing is deleted: the
  retention is not reached yet;
- before a segment is deleted, a marker (``.gpu-pitr-expired``: the first segment
  kept, the newest deleted) is written into the archive, and set back to the truth
  if a segment cannot be deleted: restores then refuse to start before it even
  when the first segment left starts at sequence number 0 (a writer reopened without
  recovery numbers from 0 again), and ``archive`` does not copy an expired segment
  back;
- segments go oldest first, stopping at the first that cannot be deleted: the rest
  of the log never has a hole;
- snapshots go first (each renamed to a hidden name, the directory fsynced, then
  removed), segments after: a run killed midway has deleted less than asked, never
  more, and the next run finishes it (and removes what killed runs left hidden).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpu_pitr import interrupts
from gpu_pitr.errors import WalError, os_reason
from gpu_pitr.format.layout import SEGMENT_NAME_RE
from gpu_pitr.format.segments import check_searchable, not_a_directory
from gpu_pitr.format.stats import plural

SNAPSHOT = "snapshot"
SEGMENT = "segment"
# In the archive, once segments are expired: the first segment kept (``read_marker``).
MARKER_NAME = ".gpu-pitr-expired"
MARKER_FORMAT = "gpu-pitr expire"
_MARKER_MAX = 4096
# A snapshot being deleted: ``.<name>.expired-<pid>-<8 hex>`` beside it (hidden, so no
# restore takes it for a snapshot once it is renamed).
_ASIDE = re.compile(r"\.(.+)\.expired-(\d+)-[0-9a-f]{8}")


class ExpireError(WalError):
    """The directory given as the archive is not one ``gpu-pitr archive`` made."""


@dataclass
class Expired:
    """A snapshot or segment deleted (or, in a dry run, that would be)."""

    kind: str
    path: str
    bytes: int
    problem: str | None = None  # the deletion failed: why (it is still there)

    def line(self, dry_run: bool) -> str:
        if self.problem is not None:
            return f"{self.path}: NOT DELETED: {self.problem}"
        return f"{self.path}: {'would be deleted' if dry_run else 'deleted'} ({self.kind}, " \
               f"{self.bytes} bytes)"


@dataclass
class ExpireResult:
    """One run of ``expire``.

    ``anchor``: the oldest snapshot kept (None: nothing was expired, ``notes`` say why);
    ``kept``: every snapshot kept, newest first; ``expired``: the snapshots, then the
    segments, deleted (or that would be, with ``dry_run``); ``notes``: snapshots passed
    over (links, of another log, of an older gpu-pitr, of an incomplete history), segments
    kept after one that could not be deleted, and why nothing was expired; ``damaged``:
    snapshots that are damaged (not counted, passed over as the anchor, left in place:
    ``gpu-pitr verify`` says more).
    """

    archive: str
    snapshots: str
    dry_run: bool
    anchor: str | None = None
    anchor_position: dict | None = None
    kept: list[str] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Expired]:
        return [e for e in self.expired if e.problem is not None]

    @property
    def ok(self) -> bool:
        return not self.problems

    def _of(self, kind: str) -> list[Expired]:
        return [e for e in self.expired if e.kind == kind and e.problem is None]

    def to_dict(self) -> dict:
        position = self.anchor_position
        if position is not None:
            position = {k: v for k, v in position.items() if k not in ("seq_runs", "pending")}
        return {"archive": self.archive, "snapshots": self.snapshots, "dry_run": self.dry_run,
                "ok": self.ok, "anchor": self.anchor, "anchor_position": position,
                "kept": self.kept, "expired": [asdict(e) for e in self.expired],
                "notes": self.notes, "damaged": self.damaged}

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        snaps, segs = self._of(SNAPSHOT), self._of(SEGMENT)
        total = sum(e.bytes for e in snaps + segs)
        line = (f"expire {self.archive}: {verb} {plural(len(snaps), 'snapshot')} and "
                f"{plural(len(segs), 'segment')} ({total} bytes); kept "
                f"{plural(len(self.kept), 'snapshot')}")
        if self.anchor is None:
            return line + "; nothing expired"
        if not segs:
            line += "; no segment deleted: the archive's history is as it was"
        else:
            pos = self.anchor_position or {}
            line += (f"; restores reach back to {self.anchor} ({pos['segment']} offset "
                     f"{pos['offset']}")
            if pos.get("max_timestamp") is not None:
                from gpu_pitr.format.stats import utc_text

                x = utc_text(int(pos["max_timestamp"]))
                line += f": --to-time T for T >= {x}, T > {x} with --exclusive"
            line += ")"
        if self.problems:
            line += f"; {plural(len(self.problems), 'problem')}"
        return line


def expire(archive_dir: str | os.PathLike, snapshots_dir: str | os.PathLike, *,
           keep: int | None = None, keep_since=None, dry_run: bool = False,
           on_expired: Callable[[Expired], None] | None = None) -> ExpireResult:
    """Delete the snapshots of ``snapshots_dir`` and the segments of ``archive_dir`` that
    the retention no longer needs (see the module's text).

    Give exactly one of ``keep`` (the newest ``keep`` snapshots are kept, at least 1)
    and ``keep_since`` (any time ``to_time`` takes: every moment from it on stays
    restorable). ``dry_run``: delete nothing, say what would be. ``on_expired`` is
    called with each deletion as soon as it is done.

    Raises:
        ValueError: neither or both of ``keep``/``keep_since``, ``keep`` < 1, a bad time.
        ExpireError: not an archive made by ``gpu-pitr archive``.
        ArchiveError: its lock is held (``archive`` or ``expire`` runs on it).
        WalError: a directory missing or not listable.
        MissingExtraError: pyarrow (the ``snapshot`` extra) is needed to check the anchor.
    """
    from gpu_pitr.archive import archive_lock
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.format.times import parse_time

    if (keep is None) == (keep_since is None):
        raise ValueError("give exactly one of keep and keep_since")
    if keep is not None and (isinstance(keep, bool) or int(keep) != keep or keep < 1):
        raise ValueError(f"keep must be a whole number of snapshots, at least 1, not {keep!r}")
    since = None if keep_since is None else parse_time(keep_since)
    archive_dir, snapshots_dir = Path(archive_dir), Path(snapshots_dir)
    _check_archive(archive_dir)
    from gpu_pitr.snapshot import check_snapshots_dir

    check_snapshots_dir(snapshots_dir)
    result = ExpireResult(str(archive_dir), str(snapshots_dir), dry_run)
    with archive_lock(archive_dir):
        before = read_marker(archive_dir)  # a marker that is not one: refused, nothing deleted
        if not dry_run:
            _remove_stale_asides(snapshots_dir)
        segments = list_segments(archive_dir)
        snaps = _snapshots(snapshots_dir, result, {s.name: s for s in segments})
        first = _first_candidate(snaps, keep, since, result.notes)
        at = None if first is None else _anchor(snaps, first, result)
        if at is None:
            result.kept = [path for path, _ in snaps]
            return result
        path, position = snaps[at]
        result.anchor, result.anchor_position = path, position
        result.kept = [p for p, _ in snaps[: at + 1]]
        old_snaps = [p for p, _ in snaps[at + 1:]]
        name = position.get("segment")
        old_segs = [s.path for s in segments
                    if name is not None and s.name.encode() < name.encode()]
        _delete(result, old_snaps, old_segs, name, before, snapshots_dir, archive_dir,
                on_expired)
    return result


@dataclass(frozen=True)
class Expiry:
    """What ``expire`` deleted from an archive: every segment before ``first_kept``;
    ``last_expired`` is the newest of them (a base snapshot that covered it whole can
    still go on at ``first_kept``)."""

    first_kept: str
    last_expired: str | None = None

    def kept_from(self, position: dict) -> bool:
        """Whether a restore that starts at ``position`` (a base snapshot's; ``{}``: the
        start of the log) starts in what was kept: at or after ``first_kept``, or at the
        end of the newest segment expired (a base covering it whole goes on after it)."""
        start = position.get("segment")
        return start is not None and (start.encode() >= self.first_kept.encode() or (
            bool(position.get("at_segment_end")) and start == self.last_expired))


def read_marker(wal_dir) -> Expiry | None:
    """The marker ``expire`` left in ``wal_dir`` (None: nothing was expired there).

    Restores read it: history before ``first_kept`` is gone even when the first segment
    left starts at sequence number 0 (a writer reopened without recovery restarts its
    numbers), and ``archive`` does not copy an expired segment back. Raises ``WalError``
    naming the marker when it cannot be read or is not one ``expire`` wrote.
    """
    from gpu_pitr.format.segments import NotARegularFile, file_kind, read_regular

    path = Path(wal_dir) / MARKER_NAME
    try:
        raw = read_regular(path, _MARKER_MAX + 1)  # a FIFO there is not waited on
    except NotARegularFile as err:
        raise WalError(f"is {file_kind(err.mode)}, not a regular file",
                       file=str(path)) from err
    except OSError as err:
        if isinstance(err, PermissionError):
            check_searchable(wal_dir)  # the directory's fault, not the marker's
        raise WalError(f"cannot read: {os_reason(err)}", file=str(path)) from err
    if raw is None:
        if os.path.islink(path):  # not "nothing expired": the marker may be what is missing
            raise WalError(f"is a symbolic link to {os.readlink(path)!r}, which is missing, "
                           f"not a marker {MARKER_FORMAT} wrote (restore it, or delete it only "
                           "if no expire ever ran here)", file=str(path))
        return None
    try:
        if len(raw) > _MARKER_MAX:
            raise ValueError("too long")
        doc = json.loads(raw)
        expiry = Expiry(doc["first_kept"], doc.get("last_expired"))
        if doc.get("format") != MARKER_FORMAT or not all(
                isinstance(n, str) and SEGMENT_NAME_RE.fullmatch(n)
                for n in (expiry.first_kept, expiry.last_expired or expiry.first_kept)):
            raise ValueError(doc)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise WalError(f"not a marker {MARKER_FORMAT} wrote (restore it, or delete it only "
                       "if no expire ever ran here)", file=str(path)) from err
    return expiry


def _set_marker(archive_dir: Path, expiry: Expiry | None) -> None:
    """Write (atomically) or remove the archive's marker."""
    from gpu_pitr.outputs import fsync_path, write_json

    path = archive_dir / MARKER_NAME
    if expiry is None:
        path.unlink(missing_ok=True)
        fsync_path(archive_dir, os.O_RDONLY | os.O_DIRECTORY)
        return
    write_json(path, {"format": MARKER_FORMAT, "version": 1,
                      "first_kept": expiry.first_kept, "last_expired": expiry.last_expired})


def _check_archive(archive_dir: Path) -> None:
    """``archive_dir`` is an archive ``gpu-pitr archive`` made: it holds the lock file."""
    from gpu_pitr.archive import LOCK_NAME

    if not archive_dir.is_dir():
        raise WalError(f"archive directory: {not_a_directory(archive_dir)}",
                       file=str(archive_dir))
    try:
        st = os.lstat(archive_dir / LOCK_NAME)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise ExpireError(f"cannot read {LOCK_NAME}: {os_reason(err)}",
                          file=str(archive_dir)) from err
    if st is not None and not stat.S_ISREG(st.st_mode):
        from gpu_pitr.format.segments import file_kind

        # (archive refuses it too, as its lock: not "no such file", which it is not)
        raise ExpireError(f"{LOCK_NAME} is {file_kind(st.st_mode)}, not the lock file gpu-pitr "
                          "archive makes: nothing is deleted", file=str(archive_dir))
    if st is None:
        raise ExpireError(
            f"not an archive made by gpu-pitr archive (no {LOCK_NAME} file in it): expire "
            "never deletes from a writer's WAL directory", file=str(archive_dir))


def _snapshots(snapshots_dir: Path, result: ExpireResult,
               segments: dict) -> list[tuple[str, dict]]:
    """``(path, position)`` of the snapshots that count, newest first: their manifests
    read, they are of this archive's log and of its whole history. The others are
    neither counted nor deleted (``notes``, ``damaged`` say which and why)."""
    from gpu_pitr.snapshot import log_order, snapshot_dirs
    from gpu_pitr.snapshot.format import read_manifest, trouble

    found = []
    for path in snapshot_dirs(snapshots_dir):
        if os.path.islink(path):
            result.notes.append(f"snapshot {path} is a symbolic link: not counted, left in "
                                "place")
            continue
        try:
            position = read_manifest(path)["position"]
        except WalError as err:
            result.damaged.append(f"snapshot {path} {trouble(err)} ({err}): not counted, left in "
                                  "place")
            continue
        why = _not_of_archive(position, segments)
        if why is None and "history_complete" not in position:
            why = ("written by an older gpu-pitr, without what expire checks (take a new "
                   "snapshot)")
        elif why is None and position["history_complete"] is not True:
            why = ("it was restored from an incomplete history "
                   "(--allow-incomplete-history)")
        if why is not None:
            result.notes.append(f"snapshot {path}: {why}: not counted, left in place")
            continue
        found.append((log_order(position), path, position))
    found.sort(key=lambda s: (s[0], s[1].encode()), reverse=True)
    return [(path, position) for _, path, position in found]


def _first_candidate(snaps, keep, since, notes: list[str]) -> int | None:
    """Index in ``snaps`` of the newest snapshot that may be the anchor (None: none)."""
    from gpu_pitr.format.stats import seconds_text
    from gpu_pitr.snapshot.base import target_problem

    if keep is not None:
        if len(snaps) < keep:
            notes.append(f"{plural(len(snaps), 'snapshot')}, fewer than the {keep} to keep: "
                         "nothing expired")
            return None
        return keep - 1
    for i, (_, position) in enumerate(snaps):
        if target_problem(position, {"to_time": since}, False) is None:
            return i
    notes.append(f"no snapshot serves a restore to {seconds_text(since)}: every "
                 "segment is still needed; nothing expired")
    return None


def _anchor(snaps, first: int, result: ExpireResult) -> int | None:
    """The first snapshot from ``first`` on (older) that checks whole."""
    from gpu_pitr.snapshot import verify
    from gpu_pitr.snapshot.format import trouble

    for i in range(first, len(snaps)):
        interrupts.check()
        path = snaps[i][0]
        try:
            verify(path)
        except WalError as err:
            result.damaged.append(f"snapshot {path} {trouble(err)} ({err}): passed over, left in "
                                  "place")
            continue
        return i
    result.notes.append("no intact snapshot old enough to keep history from: nothing expired")
    return None


def _not_of_archive(position: dict, segments: dict) -> str | None:
    """Why a snapshot at ``position`` is not of this archive's log (None: it is).

    Its segment must be in the archive and reach its offset; then
    ``snapshot.base.record_mismatch``.
    """
    from gpu_pitr.snapshot.base import record_mismatch

    name = position.get("segment")
    if name is None:
        return None  # a snapshot of an empty log: no segment comes before it
    seg = segments.get(name)
    if seg is None:
        return (f"its segment {name} is not in the archive (expired, not archived yet: "
                "run gpu-pitr archive, or of another log)")
    offset = int(position["offset"])
    if offset > seg.size:
        return (f"{seg.path} ends before its position (offset {offset}): not archived this "
                "far yet (run gpu-pitr archive), or not this archive's log")
    return record_mismatch(position, segments, "this archive's log")


def _delete(result: ExpireResult, snaps: list[str], segments: list[Path], first_kept: str,
            before: Expiry | None, snapshots_dir: Path, archive_dir: Path,
            on_expired) -> None:
    """Delete the snapshots, then the segments before ``first_kept`` (or, in a dry run,
    list them). The marker is written before the first segment goes, and set back to
    the truth if one cannot go."""
    from gpu_pitr.outputs import fsync_path
    from gpu_pitr.snapshot.format import other_files

    def done(item: Expired) -> None:
        result.expired.append(item)
        if on_expired is not None:
            on_expired(item)

    for path in snaps:
        interrupts.check()
        others = other_files(path)
        if others:  # as a snapshot write over it refuses to: they are not the snapshot's
            result.notes.append(f"snapshot {path} holds other files ({', '.join(others)}): "
                                "not deleted, so that they are not lost (move them out, "
                                "and the next run deletes it)")
            continue
        size = _tree_bytes(Path(path))
        if result.dry_run:
            done(Expired(SNAPSHOT, path, size))
            continue
        p = Path(path)
        aside = p.parent / f".{p.name}.expired-{os.getpid()}-{secrets.token_hex(4)}"
        # A Ctrl-C waits for this one snapshot's removal: it left the snapshot hidden
        # aside, whole, until the next run.
        with interrupts.holding():
            try:
                os.rename(p, aside)
                fsync_path(snapshots_dir, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as err:
                done(Expired(SNAPSHOT, path, size, problem=os_reason(err)))
                continue
            shutil.rmtree(aside, ignore_errors=True)  # hidden now: a leftover is swept later
        done(Expired(SNAPSHOT, path, size))
    # Oldest first, stopping at the first that cannot go: what stays is always every
    # segment from one on, never a log with a hole a restore would read across.
    unlinked: list[str] = []
    if segments and not result.dry_run:
        try:
            _set_marker(archive_dir, Expiry(first_kept, segments[-1].name))
        except OSError as err:
            # A full archive (the marker is written beside its name, then renamed): no
            # segment goes without it. Said as a segment not deleted, beside the snapshots
            # that were: the run stopped with the error alone (--json printed nothing of
            # the snapshots deleted), on the file system expire is run to free.
            done(Expired(SEGMENT, str(segments[0]), 0, problem=str(err)))
            result.notes.append(
                f"{plural(len(segments), 'segment')} before the anchor kept: the marker "
                f"{MARKER_NAME} must be written before any goes (make a few kB of room in "
                "the archive and run expire again)")
            return
    for k, seg in enumerate(segments):
        interrupts.check()
        try:
            st = os.lstat(seg)
            if not stat.S_ISREG(st.st_mode):
                raise _Stop("not a regular file (a link?)")
            if not result.dry_run:
                os.unlink(seg)
                unlinked.append(seg.name)
        except FileNotFoundError:
            unlinked.append(seg.name)
            continue
        except (OSError, _Stop) as err:
            why = str(err) if isinstance(err, _Stop) else os_reason(err)
            done(Expired(SEGMENT, str(seg), 0, problem=why))
            if not result.dry_run:  # the marker says what is gone, no more
                _set_marker(archive_dir, Expiry(seg.name, segments[k - 1].name) if k else before)
            later = len(segments) - k - 1
            if later:
                result.notes.append(f"{plural(later, 'later segment')} kept as well, so that no "
                                    "restore reads across a hole in the log")
            break
        done(Expired(SEGMENT, str(seg), st.st_size))
    if unlinked and not result.dry_run:
        fsync_path(archive_dir, os.O_RDONLY | os.O_DIRECTORY)
        _forget_sums(archive_dir, unlinked, result.notes)


def _forget_sums(archive_dir: Path, names: list[str], notes: list[str]) -> None:
    """The archive's checksums of the segments deleted, dropped (a checksum file that
    cannot be read is left for ``verify`` to name; one left with the deleted names, by
    a run killed first or one that could not write it, a note in ``notes``, is
    harmless: ``verify`` passes over the names the marker says are expired)."""
    from gpu_pitr import archivesums

    try:
        sums = archivesums.read(archive_dir)
    except archivesums.SumsError:
        return
    if sums is not None and any(name in sums for name in names):
        for name in names:
            sums.pop(name, None)
        try:
            archivesums.write(archive_dir, sums)
        except OSError as err:  # the segments are gone: the run's result still stands
            notes.append(f"{err} (the old one, which stays, lists the deleted segments "
                         "too: harmless, verify passes over the expired ones)")


class _Stop(Exception):
    """A segment that is not deleted, and with it every later one."""


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# What a killed ``gpu-pitr snapshot`` leaves in SNAP_DIR: its temp directory (or its
# writability probe, an empty file) ``.<name>.tmp-<pid>-<hex>``, or the old snapshot it had
# renamed aside, ``.<name>.old-<pid>-<hex>`` (tempfiles.install_dir).
_WRITER_LEFTOVER = re.compile(r"\.(.+)\.(?:tmp|old)-(\d+)-[0-9a-f]+")


def _remove_stale_asides(snapshots_dir: Path) -> None:
    """Remove what killed runs left: hidden snapshot directories renamed for deletion, and
    the temp directories of killed ``snapshot`` runs (an aside old snapshot is put back
    where its name is free, as the next write of that name would)."""
    from gpu_pitr.snapshot.format import SNAPSHOT_FILES, is_snapshot
    from gpu_pitr.tempfiles import dead_writers, holds_only, listing, remove_stale_dirs

    # Only directories holding snapshot files alone: a hidden directory of someone
    # else's in SNAP_DIR named alike by chance (``.photos.old-2023-12``) is left alone.
    ours = SNAPSHOT_FILES.__contains__
    entries = listing(snapshots_dir)
    for entry, _ in dead_writers(entries, _ASIDE):
        if holds_only(entry, ours):
            shutil.rmtree(entry.path, ignore_errors=True)
    for entry, match in dead_writers(entries, _WRITER_LEFTOVER):
        if entry.is_dir(follow_symlinks=False):
            remove_stale_dirs(snapshots_dir / match.group(1), is_snapshot, ours)
        elif entry.is_file(follow_symlinks=False) and entry.stat().st_size == 0:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)  # a probe of the output directory
