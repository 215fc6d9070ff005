"""Base snapshots (SPEC section 4): the state at a log position, on disk.

``save`` writes a restored index as a snapshot (format: ``format.py``,
documented in docs/snapshot-format.md); ``load`` reads one back, checksums
verified; ``choose`` picks, from a directory of snapshots, the newest intact one
a target can start from. What a position is, and how a restore resumes from it:
``base.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_pitr import _lazy_dir, _lazy_modules, interrupts

if TYPE_CHECKING:  # (imported when called: importing this package stays light)
    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.snapshot.format import Snapshot


@interrupts.raises_stops
def save(index: RestoredIndex, out_dir: str | os.PathLike) -> Path:
    """Write ``index`` (a ``RestoredIndex`` from ``gpu_pitr.restore``) as a snapshot.
    Raises ``OutputError`` (one line naming ``out_dir``) when it cannot be written."""
    from gpu_pitr.errors import OutputError
    from gpu_pitr.snapshot.format import write_snapshot

    if index.position is None:
        raise ValueError("this index carries no log position: snapshot a restore's result")
    shard = getattr(index.report, "id_shard", None)
    if shard:
        raise ValueError(f"this index holds shard {shard['index']} of {shard['count']} of the "
                         "ids, not the state: snapshot the shards merged (merge_shards)")
    try:
        return write_snapshot(out_dir, index.to_host(), position=index.position,
                              pending=index.pending, report=index.report.to_dict())
    except OutputError:
        raise
    except OSError as err:  # one line naming the snapshot, not its hidden temp directory
        raise OutputError(Path(out_dir), "snapshot output", err) from err


@interrupts.raises_stops
def load(path: str | os.PathLike, *, verify: bool = True, mmap: bool = False,
         key_table: bool = False) -> Snapshot:
    """The snapshot at ``path``, every file's checksum verified (``mmap``,
    ``key_table``: see ``load_snapshot``)."""
    from gpu_pitr.errors import WalError
    from gpu_pitr.hostmem import fill_once_pages
    from gpu_pitr.snapshot.format import (
        MAPPED_FILES,
        SnapshotError,
        holds_snapshot_files,
        load_snapshot,
        read_manifest,
    )

    # The slip check_snapshots_dir names the other way round: "DIR/manifest.json:
    # missing" would call the directory of snapshots a damaged snapshot.
    if not holds_snapshot_files(path) and os.path.isdir(path) and snapshot_dirs(path):
        raise SnapshotError("is a directory of snapshots, not a snapshot (--snapshots "
                            "takes it; --base takes one of the snapshots in it)",
                            file=str(path))
    if not holds_snapshot_files(path) and holds_segments(path):
        # (restore --base WAL_DIR, diff WAL_DIR ...: "manifest.json: missing" said a
        # snapshot was damaged.)
        raise SnapshotError("is a WAL directory (it holds wal-<16 hex digits>.log "
                            "segments), not a snapshot (gpu-pitr snapshot WAL_DIR --out "
                            "SNAP_DIR writes one)", file=str(path))
    try:  # the bytes it fills: the files it reads (a manifest that does not read: load says why)
        files = read_manifest(path)["files"]
        need = sum(int(f["size"]) for name, f in files.items()
                   if not (mmap and name in MAPPED_FILES))
    except (OSError, ValueError, KeyError, TypeError, WalError):
        need = None
    with fill_once_pages(need):
        return load_snapshot(path, verify=verify, mmap=mmap, key_table=key_table)


def holds_segments(path) -> bool:
    """Whether ``path`` is a directory with a segment file in it (False where it cannot
    be listed: the load names that)."""
    from gpu_pitr.format.segments import list_segments

    try:
        return os.path.isdir(path) and bool(list_segments(path))
    except (OSError, ValueError):
        return False


def verify(path) -> dict:
    """Check the snapshot at ``path`` as ``load`` does (the manifest, every block's
    CRC-32, the Arrow data, the order of the ids) without keeping it: the vectors
    are mapped, not read into memory.

    Returns ``{"snapshot", "clean", "count", "dim", "position", "bytes", "other_files"}``
    (``bytes``: of every file checked; ``other_files``: names in the directory that are
    not the snapshot's, not checked). Raises ``SnapshotError`` naming the file (and the byte
    offset of the first bad block), ``MissingExtraError`` without pyarrow.
    """
    from gpu_pitr.snapshot.format import MANIFEST, MANIFEST_CRC, load_snapshot, other_files

    root = Path(path)
    for attempt in range(3):
        snap = load_snapshot(path, verify=True, mmap=True)
        checked = sum(int(f["size"]) for f in snap.manifest["files"].values())
        try:
            checked += sum(os.path.getsize(root / name) for name in (MANIFEST, MANIFEST_CRC))
            break
        except OSError:  # replaced since (a writer's swap, between its two renames)
            if attempt == 2:
                raise
    return {"snapshot": str(path), "clean": True, "count": snap.count, "dim": snap.dim,
            "position": snap.position, "bytes": checked, "other_files": other_files(root)}


def snapshot_dirs(directory) -> list[str]:
    """The snapshot directories in ``directory``, by name: what ``--snapshots`` looks at.

    Hidden names (a writer's temp dirs) are left out. A directory of snapshot file
    names only counts even when its manifest is gone, so that it is reported as
    damaged rather than skipped. Raises ``DirectoryReadError`` (an ``OSError``, one
    line naming it) if ``directory`` cannot be listed.
    """
    from gpu_pitr.errors import DirectoryReadError
    from gpu_pitr.snapshot.format import holds_snapshot_files

    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as err:
        raise DirectoryReadError(directory, err) from err
    return [e.path for e in entries
            if not e.name.startswith(".") and e.is_dir() and holds_snapshot_files(e.path)]


def check_snapshots_dir(directory) -> None:
    """A WalError naming ``directory``, given as a directory of snapshots (``--snapshots``,
    expire's SNAP_DIR), unless it is one: it must be a directory, and not a snapshot
    itself, which holds no snapshot directory and would be passed over without a word
    (a restore from the log alone, an expire of nothing)."""
    from gpu_pitr.errors import WalError
    from gpu_pitr.format.segments import not_a_directory
    from gpu_pitr.snapshot.format import holds_snapshot_files

    if not os.path.isdir(directory):
        raise WalError(f"snapshot directory: {not_a_directory(directory)}",
                       file=str(directory))
    if holds_snapshot_files(directory):
        raise WalError("is a snapshot, not a directory of snapshots (--base takes a "
                       "snapshot; --snapshots takes the directory that holds them)",
                       file=str(directory))


def log_order(position: dict) -> tuple:
    """Sort key of a snapshot's log position: a snapshot of the start of the log first,
    then by segment file name and offset (log order)."""
    segment = position.get("segment")
    return (segment is not None, (segment or "").encode(), int(position.get("offset") or 0))


#: How the note of a ``choose`` that found no snapshot to start from ends.
FROM_LOG_ALONE = ": restored from the log alone"


def choose(directory, target: dict, exclusive: bool = False, allow_incomplete: bool = False,
           *, mmap: bool = False, key_table: bool = False, segments=None):
    """The newest intact snapshot in ``directory`` that ``target`` can start from.

    Returns ``(snapshot or None, notes, damaged)``: notes say which snapshot was
    used, which were passed over and why, and when none serves (the log alone is read);
    ``damaged``: those of the notes that name a damaged snapshot (a backup that will
    not serve when it is needed: a restore warns of each).
    A snapshot restored from an incomplete history is passed over too, unless
    ``allow_incomplete``, and, given ``segments`` (the log to restore, in log order), one
    that is not of that log (``base.base_mismatch``: another store's, in a directory
    shards share, or one the log does not reach yet) or, unless ``allow_incomplete``,
    one the log does not go on from (``base.base_gap``: its segment gone, the log
    resuming later: another store's, or this one's across a gap; an older snapshot or
    the log alone may serve). ``mmap``, ``key_table``: see ``load_snapshot``.
    """
    from gpu_pitr.errors import WalError
    from gpu_pitr.format.stats import plural, utc_text
    from gpu_pitr.snapshot.base import base_gap, base_mismatch, target_problem
    from gpu_pitr.snapshot.format import load_snapshot, read_manifest, trouble

    directory = Path(directory)
    check_snapshots_dir(directory)
    notes: list[str] = []
    damaged: list[str] = []
    usable = []
    later = []  # would serve but for the target: the latest commit stamp of each (the
    # earliest --to-time it serves)
    manifests = {}
    gaps = 0  # passed over: the log does not go on from them

    def passed_over(path: Path, position: dict) -> tuple[str, str] | None:
        # Why the snapshot at ``path`` cannot start this restore (what, note), or None.
        if position.get("history_complete") is False and not allow_incomplete:
            return "history", (f"snapshot {path} was restored from an incomplete history; "
                               "passed over (--allow-incomplete-history takes it)")
        mismatch = None if segments is None else base_mismatch(position, segments)
        if mismatch is not None:
            return "mismatch", f"snapshot {path} is not of this log ({mismatch}); passed over"
        # (No log at all: the snapshot's state is the restore's, or the restore's gap
        # error; the log alone, empty, would not serve.)
        gap = (None if not segments or allow_incomplete
               else base_gap(position, segments, look=True))
        if gap is not None:
            # Another store's (a directory shards share), or this one's across a gap: an
            # older snapshot, or the log alone, may serve.
            return "gap", (f"snapshot {path}: the log does not go on from it ({gap}); passed "
                           "over (--allow-incomplete-history takes it)")
        if target_problem(position, target, exclusive) is not None:
            return "later", ""
        return None

    for path in map(Path, snapshot_dirs(directory)):
        try:
            manifests[str(path)] = read_manifest(path)
            position = manifests[str(path)]["position"]
        except WalError as err:
            damaged.append(f"snapshot {path} {trouble(err)} ({err}); passed over")
            notes.append(damaged[-1])
            continue
        why = passed_over(path, position)
        if why is None:
            usable.append((log_order(position), str(path)))
        elif why[0] == "later":
            later.append(position.get("max_timestamp"))
        else:
            gaps += why[0] == "gap"
            notes.append(why[1])
    usable.sort(reverse=True)
    absent = False  # a transaction target no record of the log names (begun or ended)
    if "to_transaction" in target and usable and segments:
        usable, absent = _before_transaction_end(
            usable, manifests, int(target["to_transaction"]), segments, notes, exclusive)
    for k, (_, path) in enumerate(usable):
        try:
            snap = load_snapshot(path, mmap=mmap, key_table=key_table)
        except WalError as err:
            damaged.append(f"snapshot {path} {trouble(err)} ({err}); " + (
                "trying an older one" if k + 1 < len(usable) else "no older one serves"))
            notes.append(damaged[-1])
            continue
        why = None if snap.manifest == manifests[path] else passed_over(Path(path),
                                                                          snap.position)
        if why is not None:
            # Replaced since its manifest was read (``snapshot --out`` of the same name
            # from cron): judged by what was loaded, which may be of a later point.
            notes.append(f"snapshot {path} was replaced while this restore chose it, by "
                         "one that does not serve it; passed over")
            continue
        notes.append(f"started from snapshot {path}")
        if absent:
            # (What the restore's error says: the log was read for it, not just the
            # part after this snapshot.)
            snap.transaction_absent = int(target["to_transaction"])
        return snap, notes, damaged
    stamps = [t for t in later if t is not None]
    earliest = "" if not stamps or "to_time" not in target else (
        f"; the earliest serves --to-time after {utc_text(min(stamps))} with --exclusive"
        if exclusive else f"; the earliest serves --to-time {utc_text(min(stamps))} on")
    if later and "to_seq" in target:
        # The first record of that number (SPEC section 3): numbers repeat after a writer
        # reopened without recovery, and a later record of it needs a time target.
        earliest = (f"; each covers a record of seq {target['to_seq']}, and the target is "
                    "the first record of that number in the log (a writer reopened without "
                    "recovery numbers from 0 again: a later one is a --to-time target)")
    notes.append(f"no snapshot in {directory} serves the target"
                 + (f" ({plural(len(later), 'snapshot')} later than it{earliest})"
                    if later else "")
                 + (f" ({plural(gaps, 'snapshot')} the log does not go on from)"
                    if gaps else "")
                 + FROM_LOG_ALONE)
    return None, notes, damaged


def _before_transaction_end(usable: list, manifests: dict, txn: int, segments: list,
                            notes: list[str], exclusive: bool = False) -> tuple[list, bool]:
    """Of ``usable`` (newest first), the snapshots a transaction target X can start from.
    No manifest says where X ended, so the log's markers of X are found first (one
    framing pass, ``format.dump.transaction_markers``). The target is the first end of
    X that closes an open X (SPEC section 3: an end of X not open is an anomaly, not the
    target), found by following X open or closed along its markers in log order from
    what is known: nothing open at the log's start, and at each snapshot's position (oldest
    first) X open exactly where that snapshot's pending transactions hold it (where the
    log is whole the two agree; where its early segments were deleted, a snapshot taken
    before that knows of a Begin the log no longer holds). A snapshot is kept exactly
    when the restore from it (X open where its pending transactions hold it) stops at
    that record: so a stray end before a snapshot does not pass it over, and one past
    the target (X ended before it, or begun again after it: an id reused) is, but for
    one taken at the target itself (``snapshot --to-transaction X``, inclusive, whose
    last record is that end: its state is the answer, as the restore from it knows by
    its stored report; X is closed at its position, so no end of X follows it there, and
    it was passed over for an older snapshot, or the log alone). Where no
    record ends X at all, every snapshot is kept: the restore from the newest says why
    (never begun, or still open); where ends of X close nothing, none is (the restore of
    the whole log names the first stray one). Also returned: whether no record of the
    log names X at all (the restore's error then says so as a restore of the whole log
    does, not that the snapshot may be past the target)."""
    from gpu_pitr.format.dump import transaction_markers
    from gpu_pitr.format.layout import BEGIN_TRANSACTION
    from gpu_pitr.format.stats import plural
    from gpu_pitr.snapshot.format import pending_transactions

    markers = [(log_order({"segment": name, "offset": offset}), kind)
               for kind, name, offset in transaction_markers(segments, txn)]
    if all(kind == BEGIN_TRANSACTION for _, kind in markers):
        return usable, not markers

    def open_at(path: str) -> bool:
        return any(t == txn for t, _ in pending_transactions(manifests[path]["position"]))

    def first_end(key: tuple, is_open: bool, until: tuple | None = None) -> tuple | None:
        # The end of X a restore from ``key`` (X open there or not) stops at, among the
        # markers before ``until``; None: none.
        for at, kind in markers:
            if at < key:
                continue
            if until is not None and at >= until:
                break
            if kind == BEGIN_TRANSACTION:
                is_open = True  # (a Begin of an open X: an anomaly, X still open)
            elif is_open:
                return at
        return None

    # (A snapshot's position at a marker's offset is before it: its restore reads it.)
    starts = [(log_order({}), False)] + [(key, open_at(path)) for key, path in sorted(usable)]
    target = None
    for k, (key, is_open) in enumerate(starts):
        target = first_end(key, is_open, starts[k + 1][0] if k + 1 < len(starts) else None)
        if target is not None:
            break
    from gpu_pitr.pipeline import taken_at_transaction

    def answers(path: str) -> bool:
        # Taken --to-transaction X (inclusive) and stopped at the target's record (its
        # stored report says so, as ``pipeline._base_is_the_stop`` reads it).
        doc = manifests[path]
        last = doc["position"].get("last_record") or {}
        return (target is not None and taken_at_transaction(doc, txn, exclusive)
                and isinstance(last.get("segment"), str)
                and log_order({"segment": last["segment"], "offset": last.get("offset")})
                == target)

    kept = []
    passed: dict[str, int] = {}  # why -> how many: one note each
    for key, path in usable:
        end = first_end(key, open_at(path))
        if target is not None and (end == target or answers(path)):
            kept.append((key, path))
        else:
            # The target is before it (an id used again after it: the restore from it
            # would stop at a later use's end); or it is before the target, but what it
            # holds open differs from what the log's markers say (an earlier end, or
            # none); or no start finds an end that closes an open X at all.
            why = ("absent" if target is None else "before" if key > target
                   else "none" if end is None else "other")
            passed[why] = passed.get(why, 0) + 1
    at = "" if target is None else f"{target[1].decode()} offset {target[2]}"
    for why, count in passed.items():
        it = "it" if count == 1 else "them"
        notes.append(f"{plural(count, 'snapshot')} passed over: " + {
            "before": f"transaction {txn} ends before {it} (the target, its first end "
                      f"that closes it, is at {at})",
            "none": f"a restore from {it} would find no record that ends transaction "
                    f"{txn} while it is open",
            "other": f"a restore from {it} would stop at another end of transaction "
                     f"{txn} than the target ({at})",
            "absent": f"no record ends transaction {txn} while it is open, as the log's "
                      f"markers of it show from the log's start and from {it} (each end "
                      "closes nothing: an anomaly)"}[why])
    return kept, False


def window(wal_dir, directory) -> dict:
    """The moments a restore of ``wal_dir`` with ``--snapshots directory`` can reach, from
    the log's statistics (``inspect``'s pass) and the snapshots' manifests, each data
    file's size checked against its manifest (checksums not checked: ``verify`` does):
    ``inspect WAL_DIR --snapshots DIR``, as ``pgbackrest info`` shows each backup's WAL
    range and the archive's min and max. Operators asked "what
    is the earliest and latest moment I can restore to?", and had to put it together from
    ``inspect`` of each directory, or from what ``expire`` last printed.

    Returns a JSON-able document: ``earliest`` (the start of the log when its history is
    complete, else the oldest snapshot a restore can start from: ``--to-time`` serves T
    from its latest commit stamp on; ``null`` when nothing serves), ``latest`` (the end
    of the log: a ``--to-time`` at or after ``time``, the newest record stamp of the log
    and of the snapshot the latest restore starts from, gives that state, no commit point
    being stamped later than its own record; both ``null``, and
    ``restorable`` false, when nothing serves, or ``wal_dir`` holds no segment: a restore
    then gives a snapshot's own state alone, no moment between), the log (``history``, first and
    last records, ``seq_breaks`` and ``damage`` counts: a target past one may warn or fail)
    and every snapshot, oldest first, with whether it can start a restore of this log, why
    not (judged as ``choose`` judges them), the earliest ``--to-time`` it serves, and
    the log after its position, which a restore from it reads. Raises ``WalError`` (one
    line naming the directory) when either cannot be read, or ``directory`` is not a
    directory of snapshots.
    """
    from gpu_pitr.errors import WalError
    from gpu_pitr.expire import read_marker
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.format.stats import wal_stats
    from gpu_pitr.snapshot.format import check_sizes, read_manifest, trouble

    directory = Path(directory)
    check_snapshots_dir(directory)
    # One listing for the counts and every judgement: the writer rotates and deletes
    # segments at checkpoints, and a second listing could name a segment the counts lack
    # or lack one they hold (as a restore lists the log once, and ``log_end`` for Dask).
    segments = list_segments(wal_dir)
    stats = wal_stats(wal_dir, segments=segments)
    try:
        expiry = read_marker(wal_dir)
    except WalError:  # (stats' history says what is wrong with it; restores refuse it)
        expiry = None
    bad_headers = header_bytes_if_bad(segments)
    counted = counted_from(segments, bad_headers)
    rows = []
    for path in snapshot_dirs(directory):
        row = {"snapshot": path, "usable": False, "why": None}
        try:
            manifest = read_manifest(path)
            check_sizes(path, manifest)
        except WalError as err:
            row["why"] = f"{trouble(err)}: {err}"
            rows.append(row)
            continue
        position = manifest["position"]
        row.update(count=manifest["count"], dim=manifest["dim"],
                   position=position_brief(position),
                   serves_time_from=serves_time_from(position),
                   log_after=log_after(position, segments, bad_headers, counted))
        row["why"] = _not_a_start(position, segments, expiry)
        row["usable"] = row["why"] is None
        rows.append(row)
    rows.sort(key=lambda r: (0, log_order(r["position"])) if "position" in r else (1, ()))
    usable = [r for r in rows if r["usable"]]
    history = stats["history"]
    seg_stats = stats["segments"]
    stamps = [s["max_timestamp"] for s in seg_stats if s["max_timestamp"] is not None]
    with_records = [s for s in seg_stats if s["first_seq"] is not None]
    first = history.get("first_record")
    last = None if not with_records else {"file": with_records[-1]["name"],
                                          "seq": with_records[-1]["last_seq"]}
    if history.get("expire_marker_problem") or not segments:
        # (Restores refuse the directory while its marker is so. With no log at all, a
        # restore gives a snapshot's own state, warning of it: no moment between.)
        earliest = None
    elif history["complete"] or (first is None and not history.get("expired_before")):
        earliest = {"from": "log_start", "snapshot": None, "time": None, "position": None}
    elif usable:
        oldest = usable[0]
        earliest = {"from": "snapshot", "snapshot": oldest["snapshot"],
                    "time": oldest["serves_time_from"], "position": oldest["position"]}
    else:
        earliest = None
    # A --to-time at or after the newest stamp of the log and of the snapshot the latest
    # restore starts from (the newest usable one) gives the latest state: one before that
    # snapshot's stamp passes it over (a writer's clock stepped back after it, or its
    # later records deleted), and the restore is another one's, or the log's alone.
    base_stamp = usable[-1]["serves_time_from"] if usable else None
    newest = max([*stamps, *([] if base_stamp is None else [base_stamp])], default=None)
    latest = None if earliest is None else {
        "from": "log_end", "time": newest, "last_record": last}
    return {"wal_dir": str(wal_dir), "snapshots_dir": str(directory),
            "restorable": earliest is not None, "earliest": earliest, "latest": latest,
            "log": {**stats["totals"], "history": history, "last_record": last,
                    "min_timestamp": min((s["min_timestamp"] for s in seg_stats
                                          if s["min_timestamp"] is not None), default=None),
                    "max_timestamp": max(stamps) if stamps else None,
                    "seq_breaks": len(stats["seq_restarts"]),
                    "damage": len(stats["damage"])},
            "snapshots": rows}


def serves_time_from(position: dict) -> int | None:
    """The earliest ``--to-time`` a snapshot at ``position`` serves: its latest commit
    stamp, which is not its last commit's where the writer's clock stepped back
    (``base.target_problem``; manifests of older versions have the last one only)."""
    return position.get("max_timestamp", position.get("timestamp"))


def position_brief(position: dict) -> dict:
    """A manifest's position without its seq runs and open transactions (thousands of
    entries, which ``inspect SNAP --json`` shows)."""
    return {k: position.get(k) for k in ("segment", "offset", "seq", "last_seq", "timestamp",
                                         "max_timestamp", "history_complete")}


def _not_a_start(position: dict, segments, expiry) -> str | None:
    """Why a restore of the log of ``segments`` cannot start from the snapshot at
    ``position`` whatever its target (None: it can), as ``choose`` and the restore's
    expire check judge it without ``--allow-incomplete-history``."""
    from gpu_pitr.snapshot.base import base_gap, base_mismatch

    if position.get("history_complete") is False:
        return ("restored from an incomplete history: a restore takes it only with "
                "--allow-incomplete-history")
    mismatch = base_mismatch(position, segments)
    if mismatch is not None:
        return f"not of this log: {mismatch}"
    if expiry is not None and not expiry.kept_from(position):
        return (f"before the segments gpu-pitr expire kept (the first kept: "
                f"{expiry.first_kept})")
    # (With no segment at all too: a snapshot with records after its position is then
    # refused by the restore that ``choose`` lets start from it.)
    gap = base_gap(position, segments, look=True)
    if gap is not None:
        return f"the log does not go on from it: {gap}"
    # Where its segment is gone and the log resumes at seq 0 (a writer reopened, or
    # another log), ``base_gap`` leaves it to the restore, which refuses it at that first
    # record: so does this.
    from gpu_pitr.errors import IncompleteHistoryError
    from gpu_pitr.pipeline import _check_resume, _resume_point

    later, starts, resume, _ = _resume_point(position, segments)
    try:
        _check_resume(position, later, starts, resume)
    except IncompleteHistoryError as err:
        return f"the log does not go on from it: {err.what}"
    return None


def log_after(position: dict, segments, bad_headers: dict | None = None,
              counted: list[int] | None = None) -> dict:
    """The segments and bytes of the log after ``position``: what a restore from the
    snapshot reads (all of it by default; up to the stop with --stop-reading-at-target),
    counted as the restore's report counts it (``bytes_read``, ``segments``): from the
    restore's own resume point (``base.resume_at``), each segment as its framer counts
    it (``base.counted_bytes``: a damaged header's bytes alone, which is all the restore
    reads of that file). ``bad_headers``: ``header_bytes_if_bad`` of the log, read once
    for many positions (None: read here, for the segments after ``position``).
    ``counted``: ``counted_from(segments, bad_headers)``, for many positions (None: the
    segments after ``position`` are added up here: for each of 200 snapshots of an
    archive of 5,000 segments, 0.6 s in all)."""
    from gpu_pitr.format.layout import HEADER_SIZE
    from gpu_pitr.snapshot.base import counted_bytes, resume_at

    rest, start = resume_at(position, segments)
    if bad_headers is None:
        bad_headers = header_bytes_if_bad(rest)
    if counted is None or not rest:
        total = sum(counted_bytes(seg.size, start if k == 0 else HEADER_SIZE,
                                  bad_headers.get(seg.name)) for k, seg in enumerate(rest))
    else:  # the first read from ``start``, the others (``segments``' last ones) whole
        total = (counted_bytes(rest[0].size, start, bad_headers.get(rest[0].name))
                 + counted[len(segments) - len(rest) + 1])
    return {"segments": len(rest), "bytes": total,
            "first_segment": rest[0].name if rest else None}


def counted_from(segments, bad_headers: dict) -> list[int]:
    """``[k]``: the bytes a restore's report counts for ``segments[k:]``, each read from
    its header's end (``log_after``'s count past a position's own segment); ``[len]``:
    0. ``bad_headers``: ``header_bytes_if_bad(segments)``."""
    from itertools import accumulate

    from gpu_pitr.format.layout import HEADER_SIZE
    from gpu_pitr.snapshot.base import counted_bytes

    each = [counted_bytes(seg.size, HEADER_SIZE, bad_headers.get(seg.name))
            for seg in reversed(segments)]
    return [*reversed(list(accumulate(each, initial=0)))]


def header_bytes_if_bad(segments) -> dict[str, int]:
    """``{segment name: bytes of its header read}`` of the segments whose header is not
    right (``header_problem_of``): a restore reads nothing more of such a file, and
    counts those bytes alone. One read of 16 bytes a segment."""
    bad = {}
    for seg in segments:
        problem, nbytes = header_problem_of(seg.path)
        if problem is not None:
            bad[seg.name] = nbytes
    return bad


def header_problem_of(path) -> tuple[str | None, int]:
    """What is wrong with the header of the segment file at ``path`` (None: nothing;
    ``"torn"``: shorter than a header, a prefix of one), judged as the restore's framer
    judges it (``format.frame.header_problem``), and how many of its bytes were read (0:
    it cannot be read)."""
    from gpu_pitr.format.frame import header_problem
    from gpu_pitr.format.layout import HEADER_SIZE

    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError as err:
        return header_problem(err), 0
    return header_problem(head), len(head)


def first_log_record(segments, start: int | None = None, skip_zeros: bool = False,
                     stop: tuple[str, int] | None = None,
                     zero_runs: list | None = None) -> tuple | None:
    """``(segment, seq, offset)`` of the first record a restore reads in ``segments`` (in
    log order), from byte ``start`` of the first (a base's position in its own segment,
    ``base.resume_at``; None: its header's end), as the files' bytes there say: the
    files before it hold headers at most (a writer reopened writes a second one), or a
    torn record alone (a writer that crashed mid-write). A zero-filled record is a record
    of seq 0 there, as the restore judges it (whether it decodes is damage, for the
    restore to find). ``skip_zeros``: as a restore with --skip-corrupt judges it, which
    skips the zero-filled records that lead what it reads (they carry no seq the writer
    gave): the first record after them, but not past ``stop`` (``(segment, offset)`` of
    a position target, whose record the restore stops at). None where that is not known
    from them: a damaged header (the restore refuses the file, or with --skip-corrupt
    goes on), a file that cannot be read, or no record at all. Read by ``plan_restore``
    and ``window`` for what the restore judges of its first record (after a base too:
    ``pipeline._check_resume``). ``zero_runs``: where given, each run of zero-filled
    records skipped is appended, ``(segment, start, end)`` (the restore's ``skipped``
    lists them, and its error of a log not from seq 0 names the first)."""
    from gpu_pitr.format.layout import HEADER_ID, HEADER_SIZE, RECORD_HEADER_SIZE

    for k, seg in enumerate(segments):
        problem = header_problem_of(seg.path)[0]
        at = max(HEADER_SIZE, start or 0) if k == 0 else HEADER_SIZE
        if problem == "torn" or (problem is None and seg.size <= at):
            continue  # (a header alone, or part of one: the log goes on in a later file)
        if problem is not None:
            return None
        try:
            with open(seg.path, "rb") as f:
                while True:
                    head = os.pread(f.fileno(), HEADER_SIZE, at)
                    if head[:len(HEADER_ID)] == HEADER_ID and at + HEADER_SIZE <= seg.size:
                        at += HEADER_SIZE  # a second header: the writer reopened
                    elif skip_zeros and head[:RECORD_HEADER_SIZE] == ZERO_RECORD:
                        limit = stop[1] if stop is not None and stop[0] == seg.name \
                            else seg.size
                        end = _zero_records_end(f.fileno(), at, min(seg.size, limit))
                        if end == at:
                            break  # (the position target's record)
                        if zero_runs is not None:
                            zero_runs.append((seg, at, end))
                        at = end
                    else:
                        break
        except OSError:
            return None
        if at + RECORD_HEADER_SIZE > seg.size or head[:len(HEADER_ID)] == HEADER_ID or (
                at + RECORD_HEADER_SIZE + int.from_bytes(head[8:12], "little") > seg.size):
            continue  # headers, then a torn tail: no record in the file
        return seg, int.from_bytes(head[:8], "little"), at
    return None


ZERO_RECORD = bytes(12)  # a zero-filled record (format.zerofill): seq 0, length 0


def _zero_records_end(fd: int, at: int, end: int) -> int:
    """Where the run of zero-filled records (12 zero bytes each) from ``at`` of the file
    ``fd`` ends, read in blocks up to byte ``end`` (a preallocated file holds megabytes
    of them): past the last whole one."""
    pos = at
    while pos < end:
        block = os.pread(fd, min(1 << 20, end - pos), pos)
        if not block:
            break
        zeros = len(block) - len(block.lstrip(b"\0"))
        pos += zeros
        if zeros < len(block):
            break
    return at + (pos - at) // len(ZERO_RECORD) * len(ZERO_RECORD)


__getattr__ = _lazy_modules(__name__, ("arrow", "base", "format"))
__dir__ = _lazy_dir(__name__, *__getattr__.names)
