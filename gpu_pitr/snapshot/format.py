"""The snapshot directory (SPEC section 4): its writer, its manifest checks and its loader.

A snapshot is a directory (byte by byte in docs/snapshot-format.md)::

    manifest.json      JSON object: format, format_version, count, dim, position,
                       created, report, checksum, files (size + CRC-32 per block)
    manifest.json.crc  CRC-32 of manifest.json's bytes: 8 lowercase hex digits, "\\n"
    vectors.f32        count x dim float32, little-endian, row-major, rows in id order
    ids.arrow          Arrow IPC file, one column ``id: large_string`` (not null)
    metadata.arrow     Arrow IPC file, one column ``metadata: map<string, string>``
    pending.wal        the caller's ``pending`` blob, verbatim (may be empty)

Every data file is checksummed in blocks of ``checksum.block_size`` bytes, so the
loader reads and verifies blocks in parallel and names the first bad one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numba import prange

from gpu_pitr.crc import crc32
from gpu_pitr.errors import WalError
from gpu_pitr.format.layout import SEGMENT_NAME_RE, VARIANT_NAMES
from gpu_pitr.format.segments import (
    NotARegularFile,
    file_kind,
    open_regular,
    raise_if_not_the_files,
    read_into,
)
from gpu_pitr.index import RestoredIndex
from gpu_pitr.jit import NO_REFCOUNTS, njit
from gpu_pitr.resolve.idsort import compare_ids
from gpu_pitr.snapshot.arrow import (
    id_arenas,
    ids_array,
    meta_arenas,
    metadata_chunks,
    require_pyarrow,
)
from gpu_pitr.tempfiles import PARENT_RETRIES, new_dir, start_writeback

FORMAT_NAME = "gpu_pitr.snapshot"
#: The newest version written (``manifest_version``: 1 where nothing needs 2).
FORMAT_VERSION = 2
#: The versions this reader reads: every one a gpu-pitr ever wrote.
READ_VERSIONS = (1, 2)

MANIFEST = "manifest.json"
MANIFEST_CRC = "manifest.json.crc"
VECTORS = "vectors.f32"
IDS = "ids.arrow"
METADATA = "metadata.arrow"
PENDING = "pending.wal"
DATA_FILES = (VECTORS, IDS, METADATA, PENDING)
MAPPED_FILES = (VECTORS, IDS, METADATA)  # with load_snapshot(mmap=True)
SNAPSHOT_FILES = frozenset((MANIFEST, MANIFEST_CRC, *DATA_FILES))
#: Bytes of manifest.json at most, written or read: a larger file is refused before it
#: is read (a 3 GiB one, sparse or garbage, was read whole and parsed: 6.4 GB of RSS and
#: 23 s, or "out of memory: " under a limit). A manifest is a few kB and the per-block
#: checksums (16 KB for a 1 TiB snapshot); what grows with a pathological log is the
#: position's open transactions and pending record runs (a writer that begins one per
#: insert and never commits: about 100 bytes each) and the report's damage lists (1.4M
#: skipped records made a 196 MB report): this is millions of them beyond that.
MANIFEST_MAX = 1 << 30
#: Bytes of manifest.json.crc read at most (it is 9).
_CRC_MAX = 4096

ID_COLUMN = "id"
METADATA_COLUMN = "metadata"
CHECKSUM = "crc32"
# Blocks checksummed (and read) one per task: small enough to spread a file over
# the cores, large enough that a task's overhead is noise.
BLOCK_SIZE = 16 << 20
_READERS = min(16, os.cpu_count() or 1)
_HEX8 = re.compile(r"[0-9a-f]{8}")


class SnapshotError(WalError):
    """A snapshot that cannot be used: missing, damaged, of another version, or a
    path that cannot be written. One line naming the file (and the byte offset of
    the first bad block where known)."""


class NewerFormatError(SnapshotError):
    """A snapshot of a later ``format_version`` than this reader reads: a newer gpu-pitr
    wrote it. Not damage: it is passed over as a damaged one is, but said as what it is
    (``trouble``), so that a fleet upgraded host by host does not read as snapshots
    going bad."""


def trouble(err: Exception) -> str:
    """What a snapshot that ``err`` refused is, for the lines that pass over it."""
    return ("was written by a newer gpu-pitr" if isinstance(err, NewerFormatError)
            else "is damaged")


@dataclass(eq=False, repr=False)
class Snapshot:
    """A loaded snapshot: the state in RestoredIndex's form, and where in the log it stands.

    ``vectors`` is float32 ``[count, dim]`` (``(0, 0)`` when ``dim`` is None); ids are
    sorted by their UTF-8 bytes; ``meta_offs`` is -1 where a row has no metadata.
    Equal only to itself (hashable), as a ``RestoredIndex`` is: the generated ``==``
    compared the arrays, a ValueError for two loads of one snapshot; ``diff`` compares
    states.
    """

    path: Path
    manifest: dict
    position: dict
    dim: int | None
    count: int
    id_arena: np.ndarray
    id_offs: np.ndarray
    id_lens: np.ndarray
    vectors: np.ndarray
    meta_arena: np.ndarray
    meta_offs: np.ndarray
    meta_lens: np.ndarray
    pending: bytes
    # With ``load_snapshot(key_table=True)``: ``(keys, table)`` of ``id_key_table``.
    key_table: tuple | None = None

    def __repr__(self) -> str:
        # The generated one printed the manifest (the report and its damage lists) and
        # the pending records' bytes, each as long as they are.
        where = (f"{self.position.get('segment')}:{self.position.get('offset')}"
                 if isinstance(self.position, dict) else None)
        return (f"Snapshot(path={str(self.path)!r}, count={self.count}, dim={self.dim}, "
                f"position={where!r})")

    def to_index(self, report=None) -> RestoredIndex:
        """The snapshot's state as a RestoredIndex carrying ``report`` (by default the
        report of the restore that wrote the snapshot, as its manifest keeps it), and
        the snapshot's log position (``snapshot.save`` of it writes the same snapshot).
        Its arrays are the snapshot's, as read-only views: a change to them would
        change every later restore from this ``Snapshot`` (``.copy()`` to change one)."""
        if report is None:
            from gpu_pitr.report import RestoreReport

            report = RestoreReport.from_dict(self.manifest.get("report") or {})
        index = RestoredIndex(*map(_read_only, (
            self.id_arena, self.id_offs, self.id_lens, self.vectors, self.meta_arena,
            self.meta_offs, self.meta_lens)), report)
        index.position, index.pending = self.position, self.pending
        return index


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


# ----------------------------------------------------------------------------- writing
def write_snapshot(out_dir, index, *, position: dict, pending: bytes = b"",
                   report: dict | None = None) -> Path:
    """Write ``index`` as a snapshot directory at ``out_dir``, atomically.

    Everything is written into a hidden sibling ``.<name>.tmp-<pid>-<hex>``, each file
    and the directory fsynced, then renamed onto ``out_dir``. An existing empty
    directory or snapshot there is replaced (an old snapshot is renamed aside first,
    then removed); anything else there is refused before anything is written.

    Args:
        out_dir: the snapshot directory to create or replace.
        index: a ``RestoredIndex`` (vectors may be on the device).
        position: the log position the state stands at, stored verbatim (JSON).
        pending: raw WAL records of the transactions open at ``position``.
        report: the restore report as a dict (JSON), stored verbatim.

    Returns:
        The snapshot's path (absolute).

    Raises:
        SnapshotError: ``out_dir`` holds something that is not a snapshot.
        ValueError, TypeError: an index, position or report that cannot be stored.
        OSError: the filesystem failed; nothing is left behind but what was there.
    """
    pa = require_pyarrow()
    out = Path(os.path.abspath(out_dir))
    if not isinstance(position, dict):
        raise TypeError(f"position must be a dict, not {type(position).__name__}")
    if report is not None and not isinstance(report, dict):
        raise TypeError(f"report must be a dict or None, not {type(report).__name__}")
    _json(position)  # fail on what JSON cannot hold before writing anything
    _json(report)
    host = index.to_host() if hasattr(index, "to_host") else index
    count = len(host._id_offs)
    vectors = np.asarray(host.vectors)
    dim = _index_dim(host, vectors, count)
    _check_target(out)
    with (_in_parent(out) as make_parent,
          new_dir(out, _check_target, is_snapshot, SNAPSHOT_FILES.__contains__,
                  parent_gone=make_parent) as tmp):
        files = {}
        flat = np.ascontiguousarray(vectors[:count] if count else vectors[:0], dtype="<f4")
        files[VECTORS] = _write_file(tmp / VECTORS, flat.reshape(-1).view(np.uint8))
        id_field = pa.field(ID_COLUMN, pa.large_string(), nullable=False)
        files[IDS] = _write_ipc(tmp / IDS, pa, id_field, [ids_array(host)])
        meta_field = pa.field(METADATA_COLUMN, pa.map_(pa.string(), pa.string()))
        # The maps as record batches made as they are written (one group of rows at a
        # time): not the whole index's keys and values in memory at once.
        batches = (chunk for lo, hi in host.row_groups(META_BATCH_ROWS, META_BATCH_BYTES)
                   for chunk in metadata_chunks(host.rows(lo, hi)))
        files[METADATA] = _write_ipc(tmp / METADATA, pa, meta_field, batches)
        files[PENDING] = _write_file(tmp / PENDING, bytes(pending))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": manifest_version(position),
            "count": count,
            "dim": dim,
            "position": position,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "written_by": written_by(),
            "report": report,
            "checksum": {"algorithm": CHECKSUM, "block_size": BLOCK_SIZE},
            "files": files,
        }
        text = (_json(manifest, indent=1) + "\n").encode("utf-8")
        if len(text) > MANIFEST_MAX:
            # Written, it would be refused by every load: not written at all.
            raise SnapshotError(
                f"the manifest would be {len(text):,} bytes, more than the "
                f"{MANIFEST_MAX:,} a manifest may be (the position's open transactions: "
                f"{len(position.get('pending', {}).get('transactions', [])):,}; the "
                "report's damage lists): not written", file=str(out))
        _write_file(tmp / MANIFEST, text)
        _write_file(tmp / MANIFEST_CRC, f"{crc32(text):08x}\n".encode("ascii"))
    return out


@contextmanager
def _in_parent(out: Path) -> Iterator[Callable[[], None]]:
    """``out``'s parent directory, made (with its own missing parents) if missing, for the
    block to write ``out`` into, killed writes there removed first. The directories it
    made are removed again when the block fails (each if still empty): a save that failed
    for a full disk left the new directories above its snapshot. A parent that is a file
    is ``NotADirectoryError`` naming it (``mkdir`` said "File exists").

    Another save into the same new parent may find it made by this one, and then see it
    removed by this one's failure before it has put anything there (``rmdir`` takes an
    empty directory): the block gets the function that makes the parents again, for
    ``new_dir`` to call then, and a parent gone while they are made is made again too
    (``PARENT_RETRIES``). The failure of one save so never fails another."""
    made: list[Path] = []

    def make() -> None:
        for attempt in range(PARENT_RETRIES + 1):
            try:
                _make_parents(out, made)
                return
            except FileNotFoundError:  # one above it was removed since it was looked at
                if attempt == PARENT_RETRIES:
                    raise

    try:
        make()
        remove_killed_writes(out.parent)
        yield make
    except BaseException:
        _remove_dirs(made)
        raise


def _make_parents(out: Path, made: list[Path]) -> None:
    """Make the missing directories above ``out``, top first, adding to ``made`` those
    made here (another writer may make one meanwhile: then it is theirs)."""
    for parent in reversed([out.parent, *out.parent.parents]):
        if parent.is_dir():
            continue
        if os.path.lexists(parent):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        try:
            parent.mkdir()
        except FileExistsError:  # made by another writer meanwhile
            if not parent.is_dir():
                raise
            continue
        if parent not in made:  # (made again: this save's still)
            made.append(parent)


def _remove_dirs(made: list[Path]) -> None:
    """Remove the directories ``made``, deepest first, where still empty (``rmdir``: one
    another writer has put anything into stays); best effort."""
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:
            return  # not empty (another writer's): nor are those above it


def _json(value, indent=None) -> str:
    text = json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False,
                      allow_nan=False)
    # A lone surrogate (a path given with bytes that are not UTF-8, in the report's
    # ``stop.file``) has no UTF-8 bytes: written as its escape, which loads back the same.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _index_dim(host, vectors: np.ndarray, count: int) -> int | None:
    # The report knows a dimension fixed by vectors since deleted; an index without
    # rows and without one has (0, 0) vectors.
    dim = getattr(getattr(host, "report", None), "dim", None)
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise ValueError(f"vectors must be float32 [n, dim], not {vectors.dtype} "
                         f"{vectors.shape}")
    if dim is None and (count or vectors.shape[1]):
        dim = int(vectors.shape[1])
    if count and vectors.shape != (count, dim):
        raise ValueError(f"vectors have shape {vectors.shape}, expected ({count}, {dim})")
    return None if dim is None else int(dim)


def remove_killed_writes(parent: Path) -> list[Path]:
    """Remove the temp directories that killed writes of a snapshot of any name left in
    ``parent``: their writer gone (this host's pids), holding snapshot files only, and
    nothing in them changed for ``tempfiles.QUIET_SECONDS`` (its pid may be of a writer
    on another host or in another pid namespace sharing the directory). ``new_dir`` removes
    those of the name it writes; snapshots named apart each time (by date, as they
    should be) are never written twice, so theirs were left, up to a whole snapshot
    each, hidden from ``inspect`` and ``verify``, until ``expire`` ran. Best effort.
    Returns the paths removed."""
    import shutil

    from gpu_pitr.tempfiles import holds_only, listing, remove_dead, temp_pattern, unchanged

    def killed(entry) -> bool:
        if not holds_only(entry, SNAPSHOT_FILES.__contains__):
            return False
        names = os.listdir(entry.path)
        return unchanged(
            [entry.path, *(os.path.join(entry.path, n) for n in names)])

    # (a snapshot of any name being written: ``.<name>.tmp-<pid>-<8 hex>``)
    return remove_dead(listing(parent), temp_pattern(".+"), killed, shutil.rmtree)


#: Rows, and bytes of ids, vectors and maps (about), of a record batch of metadata.arrow.
META_BATCH_ROWS = 1 << 20
META_BATCH_BYTES = 128 << 20


def _write_ipc(path: Path, pa, field, arrays) -> dict:
    """Write ``arrays`` as an Arrow IPC file of one column, straight into the file (not
    built in memory first: 5M ids of 230 bytes took 1.1 GiB more), fsync it; return
    its manifest entry."""
    schema = pa.schema([field])
    with open(path, "xb") as f:
        sink = _Checksummed(f)
        with pa.ipc.new_file(pa.PythonFile(sink, mode="w"), schema) as writer:
            for arr in arrays:
                writer.write_batch(pa.record_batch([arr], schema=schema))
        return sink.finish()


def _write_file(path: Path, data) -> dict:
    """Write ``data`` (bytes-like), fsync it; return its manifest entry."""
    with open(path, "xb") as f:
        sink = _Checksummed(f)
        sink.write(data)
        return sink.finish()


class _Checksummed:
    """A file written through this: the CRC-32 of every BLOCK_SIZE block as it goes
    (the manifest's checksums), each block's writeback started once it is whole."""

    closed = False

    def __init__(self, f) -> None:
        self.f = f
        self.crcs: list[str] = []
        self.crc = 0
        self.fill = 0  # bytes of the block being written
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        at = 0
        while at < len(view):
            piece = view[at:at + BLOCK_SIZE - self.fill]
            self.crc = crc32(piece, self.crc)
            self.f.write(piece)
            self.fill += len(piece)
            self.size += len(piece)
            at += len(piece)
            if self.fill == BLOCK_SIZE:  # blocks start at multiples of BLOCK_SIZE
                self.crcs.append(f"{self.crc:08x}")
                self.f.flush()
                start_writeback(self.f.fileno(), self.size - BLOCK_SIZE, BLOCK_SIZE)
                self.crc = self.fill = 0
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:  # the caller closes the file
        pass

    def finish(self) -> dict:
        """Fsync the file; its manifest entry."""
        if self.fill:
            self.crcs.append(f"{self.crc:08x}")
        self.f.flush()
        os.fsync(self.f.fileno())
        return {"size": self.size, CHECKSUM: self.crcs}


def _check_target(out: Path) -> None:
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise SnapshotError("exists and is a file or a symlink, not a directory: not replaced",
                            file=str(out))
    if any(out.iterdir()) and not is_snapshot(out):
        others = other_files(out) if holds_snapshot_files(out) else []
        if others:
            raise SnapshotError(f"holds a snapshot and other files ({', '.join(others)}): not "
                                "replaced, so that they are not lost", file=str(out))
        raise SnapshotError("is a directory that is neither empty nor a snapshot: "
                            "not replaced", file=str(out))


# ----------------------------------------------------------------------------- manifest
def is_snapshot(path) -> bool:
    """Whether ``path`` is a snapshot directory (intact or not).

    True for a directory holding ``manifest.json`` and only snapshot file names,
    whose manifest, when it parses, names this format. Damage is not checked:
    ``read_manifest`` and ``load_snapshot`` do that.
    """
    p = Path(path)
    try:
        if p.is_symlink() or not p.is_dir():
            return False
        names = set(os.listdir(p))
        if MANIFEST not in names or not names <= SNAPSHOT_FILES:
            return False
        # Not ``read_bytes``: a FIFO there blocked ``snapshot --out`` and ``expire`` for
        # ever, and a file of gigabytes was read whole.
        fd = open_regular(p / MANIFEST)
        with open(fd, "rb") as f:
            raw = _read_capped(f, MANIFEST_MAX)
    except OSError as err:
        raise_if_not_the_files(err)  # out of descriptors: not "no snapshot"
        return False
    if raw is None:
        return True  # too large to be a manifest: damage, which read_manifest names
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # (nested too deep: Python's parser gives up)
        return True  # torn: still ours by its file names
    return not isinstance(doc, dict) or doc.get("format") == FORMAT_NAME


def holds_snapshot_files(path) -> bool:
    """Whether ``path`` is a directory that holds a snapshot, intact or not: snapshot
    file names only (at least one), or two of them or more beside other files, and no
    segment file.

    Looser than ``is_snapshot``: a snapshot whose manifest is gone still counts, so
    that ``verify`` calls it a damaged snapshot rather than an empty log, and so does
    one a person put another file into (a ``--report-json`` beside it, notes): its
    manifest names its files, and the others are not part of it (``other_files``).
    """
    try:
        names = set(os.listdir(path)) if os.path.isdir(path) else set()
    except OSError as err:
        raise_if_not_the_files(err)
        return False
    if any(SEGMENT_NAME_RE.fullmatch(n) for n in names):
        return False
    return bool(names) and (names <= SNAPSHOT_FILES or len(names & SNAPSHOT_FILES) >= 2)


def other_files(path) -> list[str]:
    """The names in the snapshot directory ``path`` that are not a snapshot's files
    (sorted): a restore and ``verify`` leave them alone."""
    try:
        return sorted(set(os.listdir(path)) - SNAPSHOT_FILES)
    except OSError:  # gone meanwhile (another writer's swap): none to keep
        return []


def read_manifest(path) -> dict:
    """The manifest of the snapshot at ``path``, its checksum and fields validated.

    Reads only ``manifest.json`` and ``manifest.json.crc``.

    Raises:
        SnapshotError: missing or damaged manifest, another format version, or
            fields that do not fit together.
    """
    return _whole(Path(path), _read_manifest_once)


def _aside_hint(root: Path) -> str:
    """Where the snapshot ``root`` is, when a write that replaced it was killed between
    its two renames (``tempfiles.install_dir``): the old one set aside, whole. The next
    write of ``root`` puts it back; until then this says where it is."""
    from gpu_pitr.tempfiles import aside_dirs

    if os.path.lexists(root):
        return ""
    aside = [p for p in aside_dirs(root) if os.path.isfile(os.path.join(p, MANIFEST))]
    if not aside:
        return ""
    return (f" (a write that was replacing it was killed: the snapshot it replaced is "
            f"{aside[-1]}; rename it back, or write the snapshot again)")


def _read_manifest_once(root: Path) -> dict:
    mpath = root / MANIFEST
    if not root.is_dir():
        from gpu_pitr.format.segments import not_a_directory

        # Why, where no hint says where it went: a path mistyped is not a damaged snapshot.
        raise SnapshotError("not a snapshot directory"
                            + (_aside_hint(root) or f": {not_a_directory(root)}"),
                            file=str(root))
    raw = _read_small(mpath, MANIFEST_MAX)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # (nested too deep: Python's parser gives up)
        doc = None
    # A newer version may checksum differently: say which version it is first.
    if isinstance(doc, dict) and doc.get("format") == FORMAT_NAME:
        version = doc.get("format_version")
        if type(version) is not int or version not in READ_VERSIONS:
            newer = type(version) is int and version > FORMAT_VERSION
            writer = doc.get("written_by")
            # (Its own words for the version, where it says them: pip install that.)
            by = writer if isinstance(writer, str) and _WRITER.fullmatch(writer) \
                else "a newer gpu-pitr"
            raise (NewerFormatError if newer else SnapshotError)(
                f"format version {version!r} is not supported (this reader reads versions "
                f"{', '.join(map(str, READ_VERSIONS))})"
                + (f": written by {by}; restore from it with that version or a later one "
                   f"(this is gpu-pitr {_version()})" if newer else ""), file=str(mpath))
    crc_path = root / MANIFEST_CRC
    text = _read_small(crc_path, _CRC_MAX).decode("ascii", "replace")
    expect = text[:8]
    if not (_HEX8.fullmatch(expect) and text[8:] == "\n"):
        raise SnapshotError("not a CRC-32 (8 lowercase hex digits and a newline)",
                            file=str(crc_path))
    got = crc32(raw)
    if got != int(expect, 16):
        raise SnapshotError(f"CRC-32 {got:08x} does not match {expect} in {MANIFEST_CRC}: "
                            "torn or edited", file=str(mpath))
    if not isinstance(doc, dict):
        raise SnapshotError("not a JSON object", file=str(mpath))
    _check_manifest(doc, str(mpath))
    _legacy_history(doc)
    return doc


def pending_transactions(position: dict) -> list:
    """The ``[id, records]`` of the transactions open at a log ``position`` (a
    restore's, or a snapshot's): none where it has no ``pending`` (a snapshot loads
    without one, and a base that is a restore's stop gives its own position)."""
    return (position.get("pending") or {}).get("transactions") or []


#: ``written_by`` as a newer version's error message quotes it: "gpu-pitr" and a version
#: (not any text a manifest holds: one line, and no instructions of its own).
_WRITER = re.compile(r"gpu-pitr [0-9A-Za-z.+!-]{1,40}")


def _version() -> str:
    from gpu_pitr import __version__

    return __version__


def written_by() -> str:
    """The manifest's ``written_by``: this gpu-pitr's version (pgBackRest records its own
    in each backup's manifest): which version wrote a snapshot, for the one that reads it
    (a newer format's refusal says which version to install) and for a bug report."""
    return f"gpu-pitr {_version()}"


def manifest_version(position: dict) -> int:
    """The ``format_version`` a snapshot at ``position`` is written with: 2 where a
    version-1 reader would restore from it wrongly and say nothing, 1 elsewhere (every
    gpu-pitr since the format's first reads those right).

    Version-1 readers take the position's keys they know and pass over the rest. Two
    keys came later and change what a restore from the snapshot must do:
    ``pending.record_runs`` (2026-12-05; a version-1 reader of before then looks for
    ``pending.records``, finds none, and drops the records of the transactions open at
    the position: their commit applied only what followed it) and ``history_complete``
    false (2026-12-03; a reader of before then uses a state restored across a gap as
    complete, with no option and no warning). Snapshots holding either say 2, which
    every older reader refuses by name before reading anything else. So does one whose
    ``covers_records`` (2026-12-07) is false while its ``seq_runs`` hold the seq 0 of
    zero-filled records: a reader of before then takes it as holding a record of the
    log and does not judge the log after it from its start.
    """
    pending = position.get("pending")
    if isinstance(pending, dict) and pending.get("record_runs"):
        return 2
    if position.get("history_complete") is False:
        return 2
    if position.get("covers_records") is False and position.get("seq_runs"):
        return 2
    return 1


def _legacy_history(doc: dict) -> None:
    """A snapshot written before ``history_complete`` was recorded (2026-12-03) by a
    restore that allowed an incomplete history may have been restored across a gap:
    whether it met one was not recorded, so it counts as incomplete (``--base`` and
    ``--snapshots`` take it only with ``--allow-incomplete-history``, as they would the
    snapshot a current version writes), not as complete."""
    position, report = doc["position"], doc.get("report")
    if ("history_complete" not in position and isinstance(report, dict)
            and report.get("incomplete_history_allowed") is True):
        position["history_complete"] = False


def _read_small(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; a SnapshotError naming it if it holds more than ``limit``
    (judged from its size before anything is read)."""
    fd = _open_regular(path, "cannot be read")
    try:
        with open(fd, "rb") as f:
            raw = _read_capped(f, limit)
    except OSError as err:
        raise SnapshotError(f"cannot be read: {err.strerror}", file=str(path)) from None
    if raw is None:
        raise SnapshotError(f"holds more than {limit:,} bytes, more than a snapshot's "
                            f"{path.name} can be: not read", file=str(path))
    return raw


def _read_capped(f, limit: int) -> bytes | None:
    """The bytes of the open regular file ``f``, None if it holds more than ``limit``:
    its size says so before a read, and a file that grew meanwhile is read no further
    than ``limit`` + 1."""
    if os.fstat(f.fileno()).st_size > limit:
        return None
    raw = f.read(limit + 1)
    return None if len(raw) > limit else raw


def _open_regular(path: Path, verb: str) -> int:
    """``path`` opened read-only (``segments.open_regular``: a FIFO put where a snapshot
    file belongs would block every restore, verify and expire, which holds the
    archive's lock, for ever); a SnapshotError if it is missing, cannot be opened, or is
    not a regular file."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise SnapshotError("missing", file=str(path)) from None
    except NotARegularFile as err:
        raise SnapshotError(f"is {file_kind(err.mode)}, not a regular file",
                            file=str(path)) from None
    except OSError as err:
        raise SnapshotError(f"{verb}: {err.strerror}", file=str(path)) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest(doc: dict, where: str) -> None:
    def bad(what: str):
        raise SnapshotError(what, file=where)

    if doc.get("format") != FORMAT_NAME:
        bad(f"format {doc.get('format')!r} is not {FORMAT_NAME!r}")
    count, dim = doc.get("count"), doc.get("dim")
    if not _is_int(count):
        bad(f"count {count!r} is not a non-negative integer")
    if dim is not None and not _is_int(dim):
        bad(f"dim {dim!r} is neither null nor a non-negative integer")
    if dim is None and count:
        bad(f"count {count} with dim null: rows need a dimension")
    if not isinstance(doc.get("position"), dict):
        bad("position is not an object")
    if not isinstance(doc.get("created"), str):
        bad("created is not a string")
    if "written_by" in doc and not isinstance(doc["written_by"], str):
        bad("written_by is not a string")
    if doc.get("report") is not None and not isinstance(doc["report"], dict):
        bad("report is neither null nor an object")
    checksum = doc.get("checksum")
    if (not isinstance(checksum, dict) or checksum.get("algorithm") != CHECKSUM
            or not _is_int(checksum.get("block_size")) or checksum["block_size"] == 0):
        bad(f"checksum {checksum!r} is not {{'algorithm': 'crc32', 'block_size': n > 0}}")
    block = checksum["block_size"]
    files = doc.get("files")
    if not isinstance(files, dict) or set(files) != set(DATA_FILES):
        bad(f"files must list exactly {', '.join(DATA_FILES)}")
    for name in DATA_FILES:
        entry = files[name]
        size = entry.get("size") if isinstance(entry, dict) else None
        crcs = entry.get(CHECKSUM) if isinstance(entry, dict) else None
        if not _is_int(size):
            bad(f"files.{name}.size {size!r} is not a non-negative integer")
        if (not isinstance(crcs, list) or len(crcs) != -(-size // block)
                or not all(isinstance(c, str) and _HEX8.fullmatch(c) for c in crcs)):
            bad(f"files.{name}.{CHECKSUM} is not one CRC-32 per {block}-byte block")
    expected = count * (dim or 0) * 4
    if files[VECTORS]["size"] != expected:
        bad(f"count {count} x dim {dim} x 4 bytes = {expected}, but {VECTORS} is listed "
            f"with {files[VECTORS]['size']} bytes")
    problem = position_problem(doc["position"])
    if problem is not None:
        bad(f"position: {problem}")


_U64 = 1 << 64


def _is_u64(value) -> bool:
    return _is_int(value) and value < _U64


def position_problem(pos: dict) -> str | None:
    """Why a manifest's ``position`` cannot be one a restore wrote (None: it can be).

    Only the shapes are checked (types and ranges of the keys the restore, ``expire``,
    ``inspect`` and ``verify`` read); keys a version does not write may be absent (the
    format stores any object: ``{}`` is a position of no segment).
    """
    def u64_or_none(key):
        v = pos.get(key)
        return None if v is None or _is_u64(v) else f"{key} {v!r} is not null or 0..2^64-1"

    seg = pos.get("segment")
    if seg is not None and not (isinstance(seg, str) and SEGMENT_NAME_RE.fullmatch(seg)):
        return f"segment {seg!r} is neither null nor a segment file name"
    if (seg is not None or pos.get("offset") is not None) and not _is_int(pos.get("offset")):
        return f"offset {pos.get('offset')!r} is not a non-negative integer"
    for key in ("seq", "last_seq", "timestamp", "max_timestamp", "segment_size"):
        if (why := u64_or_none(key)) is not None:
            return why
    for key in ("at_segment_end", "at_torn_tail", "history_complete", "covers_records"):
        if key in pos and not isinstance(pos[key], bool):
            return f"{key} {pos[key]!r} is not true or false"
    runs = pos.get("seq_runs") or []
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(map(_is_u64, r)) and r[0] <= r[1]
            for r in runs):
        return "seq_runs is not a list of [first, last] sequence numbers"
    last = pos.get("last_record")
    if last is not None:
        if (not isinstance(last, dict) or not isinstance(last.get("segment"), str)
                or not SEGMENT_NAME_RE.fullmatch(last["segment"])
                or not _is_int(last.get("offset"))
                or not (last.get("length") is None
                        or (_is_int(last["length"]) and 12 <= last["length"] <= (1 << 32) + 12))
                or not (last.get("crc32") is None
                        or (_is_int(last["crc32"]) and last["crc32"] < 1 << 32))
                or not (last.get("record") is None or last["record"] in VARIANT_NAMES)
                or not (last.get("timestamp") is None or _is_u64(last["timestamp"]))):
            return (f"last_record {last!r} is not {{segment, offset[, length, crc32, "
                    "record, timestamp]}")
    pending = pos.get("pending")
    if pending is not None:
        if not isinstance(pending, dict):
            return "pending is not an object"
        txns = pending.get("transactions") or []
        runs = pending.get("record_runs")
        legacy = pending.get("records")
        if (not isinstance(txns, list) or not all(
                isinstance(t, list) and len(t) == 2 and all(map(_is_u64, t)) for t in txns)):
            return "pending.transactions is not a list of [id, records]"
        if runs is not None and (not isinstance(runs, list) or not all(
                isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                and _is_int(r[1]) and _is_int(r[2]) for r in runs)):
            return "pending.record_runs is not a list of [file, offset, records]"
        if legacy is not None and (not isinstance(legacy, list) or not all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                and _is_int(r[1]) for r in legacy)):
            return "pending.records is not a list of [file, offset]"
    return None


# ----------------------------------------------------------------------------- loading
def load_snapshot(path, *, verify: bool = True, mmap: bool = False,
                  key_table: bool = False) -> Snapshot:
    """Load the snapshot at ``path``.

    Sizes are checked against the manifest before anything is allocated, and the
    Arrow data is always validated (schema, row count, offsets, UTF-8). ``verify``
    adds every block's CRC-32 (on a thread pool, as blocks are read) and the check
    that the ids are strictly ascending by bytes.

    Args:
        path: the snapshot directory.
        verify: check every file's checksums and the order of the ids.
        mmap: map ``vectors.f32``, ``ids.arrow`` and ``metadata.arrow`` read-only
            instead of reading them into memory (the checksums are computed over the
            mapping; a restore then copies the rows it keeps once, straight into its
            result; ``id_arena`` is then a read-only view). A file that cannot be
            mapped is read. A file must not be truncated while mapped: reading past
            its end is a SIGBUS, as with any mapped file.
        key_table: also build the table from id key to row that a restore from
            the snapshot uses (``Snapshot.key_table``), on a thread of its own while
            the metadata converts.

    A snapshot replaced while it is read (``snapshot --out`` of the same name, which
    renames the old directory aside and the new one into place) is read again, whole:
    a reader sees the old one or the new one, not the manifest of one and the files of
    the other, which would look damaged.

    Raises:
        SnapshotError: naming the file (and the byte offset of the first bad block).
    """
    pa = require_pyarrow()
    return _whole(Path(path), lambda root: _load_once(pa, root, verify, mmap, key_table))


def _whole(root: Path, read):
    """``read(root)``, again when it fails because the snapshot at ``root`` was replaced
    meanwhile (``install_dir``: the old directory renamed aside, the new one renamed
    into place, the old one removed): what it read was of one snapshot, whole."""
    for attempt in range(_SWAP_RETRIES):
        before = _identity(root)
        try:
            return read(root)
        except SnapshotError:
            if attempt + 1 == _SWAP_RETRIES:
                raise
            now = _identity(root)
            if now is None and before is not None:
                time.sleep(_SWAP_WAIT)  # between a writer's two renames: the new one next
                now = _identity(root)
            if now == before:
                raise  # the same directory (or none all along): the error is its own
    raise AssertionError("unreachable")


#: Reads of a snapshot replaced while it was read, at most, and the wait for the new
#: directory when none was in place (a writer's two renames are microseconds apart).
_SWAP_RETRIES = 4
_SWAP_WAIT = 0.01


def _identity(root: Path) -> tuple[int, int, int] | None:
    """The directory at ``root`` as (device, inode, change time); None where there is
    none. The change time tells a new directory that got a removed one's inode number
    apart, and a rename or removal in it changes it too."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _load_once(pa, root: Path, verify: bool, mmap: bool, key_table: bool) -> Snapshot:
    manifest = _read_manifest_once(root)
    count, dim = manifest["count"], manifest["dim"]
    block = manifest["checksum"]["block_size"]
    files = manifest["files"]
    fds: dict[str, int] = {}
    pool = ThreadPoolExecutor(_READERS)
    side = None  # builds the key table
    try:
        for name in DATA_FILES:
            fds[name] = _open_checked(root / name, files[name]["size"])
        bufs, jobs = {}, {}
        # The small files first: their rows are converted while the vectors arrive.
        for name in (IDS, METADATA, PENDING, VECTORS):
            size = files[name]["size"]
            bufs[name] = _map(root / name, size) if mmap and name in MAPPED_FILES else None
            mapped = bufs[name] is not None
            if not mapped:
                bufs[name] = np.empty(size, np.uint8)
            jobs[name] = [] if mapped and not verify else [
                (a, pool.submit(_block, fds[name], bufs[name], a, min(a + block, size),
                                not mapped, verify))
                for a in range(0, size, block)]
        for name in (IDS, METADATA, PENDING):
            _check_blocks(root / name, jobs[name], files[name], block, verify)
        side = ThreadPoolExecutor(1) if key_table else None
        arenas, keys = _rows(pa, root, bufs[IDS], bufs[METADATA], count, verify, side)
        _check_blocks(root / VECTORS, jobs[VECTORS], files[VECTORS], block, verify)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if side is not None:
            side.shutdown(wait=True, cancel_futures=True)
        for fd in fds.values():
            os.close(fd)
    if count:
        vectors = bufs[VECTORS].view("<f4").reshape(count, dim or 0)
    else:
        vectors = np.zeros((0, dim or 0), np.float32)
    id_arena, id_offs, id_lens, meta_arena, meta_offs, meta_lens = arenas
    return Snapshot(
        path=root, manifest=manifest, position=manifest["position"], dim=dim, count=count,
        id_arena=id_arena, id_offs=id_offs, id_lens=id_lens, vectors=vectors,
        meta_arena=meta_arena, meta_offs=meta_offs, meta_lens=meta_lens,
        pending=bufs[PENDING].tobytes(), key_table=keys,
    )


def _check_blocks(path: Path, jobs: list, entry: dict, block: int, verify: bool) -> None:
    # In file order: the error names the first bad block.
    for a, fut in jobs:
        got = fut.result()
        if isinstance(got, str):
            raise SnapshotError(got, file=str(path), offset=a)
        if verify and got != int(entry[CHECKSUM][a // block], 16):
            end = min(a + block, entry["size"])
            raise SnapshotError(f"CRC-32 mismatch in the block of bytes {a}..{end}",
                                file=str(path), offset=a)


def _rows(pa, root: Path, ids_buf: np.ndarray, meta_buf: np.ndarray, count: int,
          verify: bool, side=None) -> tuple:
    """``(arenas, key_table)``: RestoredIndex's id and metadata arenas from the two
    Arrow files, checked; with ``side`` (an executor), the key table too, built
    there while the metadata converts (else None)."""
    ids = _column(pa, root / IDS, ids_buf, ID_COLUMN, pa.large_string(), count)
    if ids.null_count:
        raise SnapshotError("null ids", file=str(root / IDS))
    try:
        id_arena, id_offs, id_lens = id_arenas(ids)
    except ValueError as err:
        raise SnapshotError(str(err), file=str(root / IDS)) from None
    id_arena = _writable(id_arena, ids_buf)
    keys = None
    if side is not None:
        from gpu_pitr.snapshot.base import id_key_table

        keys = side.submit(id_key_table, id_arena, id_offs, id_lens, parallel=False)
    meta = _column(pa, root / METADATA, meta_buf, METADATA_COLUMN,
                   pa.map_(pa.string(), pa.string()), count)
    try:
        meta_cols = meta_arenas(meta)
    except ValueError as err:
        raise SnapshotError(str(err), file=str(root / METADATA)) from None
    row = _first_unsorted(id_arena, id_offs, id_lens) if verify and count > 1 else -1
    if row >= 0:
        raise SnapshotError(f"ids are not strictly ascending at row {row}",
                            file=str(root / IDS))
    return (id_arena, id_offs, id_lens, *meta_cols), None if keys is None else keys.result()


def _writable(view: np.ndarray, base: np.ndarray) -> np.ndarray:
    # Arrow hands its buffers out read-only; the bytes are ``base``'s, which is writable
    # when it was read (a mapped file stays read-only: a restore copies from it).
    start = view.ctypes.data - base.ctypes.data
    if view.flags.writeable or not len(view):
        return view if len(view) else np.zeros(0, np.uint8)
    if 0 <= start and start + len(view) <= len(base):
        return base[start:start + len(view)]
    return view.copy()


def check_sizes(path, manifest: dict) -> None:
    """Each data file of the snapshot at ``path`` is there, a regular file of the size
    its ``manifest`` (``read_manifest``) says: a look without a read, for the lines that
    judge many snapshots (``inspect --snapshots``); a file cut short or missing is found,
    a flipped bit only by the checksums. Raises ``SnapshotError`` naming the file."""
    files = manifest["files"]
    for name in DATA_FILES:
        os.close(_open_checked(Path(path) / name, files[name]["size"]))


def _open_checked(path: Path, size: int) -> int:
    fd = _open_regular(path, "cannot be opened")
    actual = os.fstat(fd).st_size
    if actual != size:
        os.close(fd)
        raise SnapshotError(f"{actual} bytes, the manifest says {size}", file=str(path),
                            offset=min(actual, size))
    return fd


def _map(path: Path, size: int) -> np.ndarray | None:
    """The file mapped read-only, or None where it cannot be (a file system without
    mmap): then it is read like the others."""
    if size == 0:
        return np.zeros(0, np.uint8)
    try:
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))
    except (OSError, ValueError):
        return None


def _block(fd: int, buf: np.ndarray, a: int, b: int, read: bool, verify: bool):
    """Read ``buf[a:b]`` from ``fd`` (unless mapped) and return its CRC-32 (0 unless
    ``verify``), or a message if the file ended early."""
    view = memoryview(buf)[a:b]
    if read:
        got = 0
        while got < b - a:
            try:
                n = read_into(fd, view[got:], a + got)
            except OSError as err:
                return f"cannot be read: {err.strerror}"
            if n == 0:
                return f"file ended at byte {a + got} while reading"
            got += n
    return crc32(view) if verify else 0


def _column(pa, path: Path, buf: np.ndarray, name: str, typ, count: int):
    try:
        reader = pa.ipc.open_file(pa.py_buffer(buf))
        schema = reader.schema
        if len(schema) != 1 or schema[0].name != name or schema[0].type != typ:
            raise SnapshotError(f"schema is {schema.to_string(show_schema_metadata=False)!r}"
                                f", expected one column {name}: {typ}", file=str(path))
        if _compressed(buf):
            # Refused from the metadata, before read_all inflated it (a few KiB of a
            # tampered file can become GiBs); _in_place below is the net.
            raise SnapshotError(_COMPRESSED, file=str(path))
        column = reader.read_all().column(0)
        for chunk in column.chunks:
            chunk.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as err:
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SnapshotError(f"not a valid Arrow IPC file: {line}", file=str(path)) from None
    if not _in_place(pa.py_buffer(buf), column):
        # A compressed body (LZ4, ZSTD) is inflated into new buffers: a few KiB of a
        # tampered file can become GiBs, and a snapshot verify called clean was not one
        # another reader of the format can map.
        raise SnapshotError(_COMPRESSED, file=str(path))
    if len(column) != count:
        raise SnapshotError(f"{len(column)} rows, the manifest count is {count}",
                            file=str(path))
    return column


_COMPRESSED = "compressed record batches: the format's Arrow files are uncompressed"


def _compressed(buf) -> bool:
    """Whether a record batch (or dictionary batch) that the footer of the Arrow IPC file
    ``buf`` lists is compressed: the ``compression`` field of its ``RecordBatch``
    message (Arrow's File.fbs, Message.fbs), read from the flatbuffers without reading
    any body. False where the metadata cannot be followed: Arrow's reader then says
    what is wrong, and ``_in_place`` still refuses a body it inflated."""
    view = memoryview(buf).cast("B")
    try:
        size = len(view)
        if size < 18 or bytes(view[size - 6:]) != b"ARROW1":
            return False
        start = size - 10 - _fb(view, size - 10, "<i")  # int32 footer length, ARROW1
        footer = start + _fb(view, start, "<I")
        blocks = []
        for which in (2, 3):  # Footer.dictionaries, Footer.recordBatches: [Block]
            at = _fb_field(view, footer, which)
            if at is None:
                continue
            vec = at + _fb(view, at, "<I")
            count = _fb(view, vec, "<I")
            if vec + 4 + 24 * count > size:
                return False
            # Block: int64 offset, int32 metaDataLength, pad, int64 bodyLength.
            blocks += [_fb(view, vec + 4 + 24 * k, "<q") for k in range(count)]
        for offset in blocks:
            # An encapsulated message: 0xFFFFFFFF, int32 length (or, before Arrow 0.15,
            # the length alone), then the Message flatbuffer.
            root = offset + (8 if _fb(view, offset, "<I") == 0xFFFFFFFF else 4)
            message = root + _fb(view, root, "<I")
            at = _fb_field(view, message, 1)  # header_type: 2 DictionaryBatch, 3 RecordBatch
            kind = view[at] if at is not None else 0
            at = _fb_field(view, message, 2)  # header
            if kind not in (2, 3) or at is None:
                continue
            batch = at + _fb(view, at, "<I")
            if kind == 2:  # DictionaryBatch.data: RecordBatch
                at = _fb_field(view, batch, 1)
                if at is None:
                    continue
                batch = at + _fb(view, at, "<I")
            if _fb_field(view, batch, 3) is not None:  # RecordBatch.compression
                return True
    except (struct.error, IndexError):
        return False
    return False


def _fb(view, at: int, fmt: str) -> int:
    """The scalar ``fmt`` at ``at`` of ``view``; struct.error outside it (a negative
    offset too, which unpack_from would take from the end)."""
    if at < 0:
        raise struct.error("offset before the file")
    return struct.unpack_from(fmt, view, at)[0]


def _fb_field(view, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` is, None if absent."""
    vtable = table - _fb(view, table, "<i")
    slot = 4 + 2 * index
    if slot + 2 > _fb(view, vtable, "<H"):
        return None
    rel = _fb(view, vtable + slot, "<H")
    return table + rel if rel else None


def _in_place(whole, column) -> bool:
    """Whether every buffer of ``column`` lies in ``whole``, the file's bytes: read in
    place, as an uncompressed IPC file is."""
    lo, hi = whole.address, whole.address + whole.size
    return all(b is None or not b.size or lo <= b.address and b.address + b.size <= hi
               for chunk in column.chunks for b in chunk.buffers())


# The order check's parts (each the first unsorted row of its own, on the Numba threads).
_ORDER_PARTS = 16


def _first_unsorted(arena, offs, lens) -> int:
    """The first row whose id is not greater than the one before it, or -1."""
    firsts = np.empty(_ORDER_PARTS, np.int64)
    _first_unsorted_in_parts(arena, offs, lens, firsts)
    first = int(firsts.min())
    return first if first < len(offs) else -1


@njit(cache=True, parallel=True, nogil=True, **NO_REFCOUNTS)
def _first_unsorted_in_parts(arena, offs, lens, firsts):
    # firsts[p]: the first unsorted row of part p of rows 1..n-1 (n if none). Without
    # reference counts (and so no reduction, which allocates): 1.08M ids, 7.6-11.4 ms
    # against 11.6-13.7 ms.
    n = len(offs)
    parts = len(firsts)
    for p in prange(parts):
        firsts[p] = n
        for i in range(1 + p * (n - 1) // parts, 1 + (p + 1) * (n - 1) // parts):
            if compare_ids(arena, offs[i - 1], lens[i - 1], arena, offs[i], lens[i]) >= 0:
                firsts[p] = i
                break
