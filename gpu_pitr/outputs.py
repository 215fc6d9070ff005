"""What ``gpu-pitr restore`` writes: an .npz, a .parquet, a FAISS index or a snapshot directory.

The format comes from ``--format`` or from the name; every file appears atomically
(a temp name beside it, fsynced, renamed), so a failed restore leaves old outputs alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gpu_pitr import interrupts
from gpu_pitr.errors import (
    NoRoomError,
    NotSyncedError,
    OutputError,
    PartlyInPlaceError,
    UnwritableDirectoryError,
    WalError,
    WithoutItsJsonError,
    missing_extra,
)
from gpu_pitr.format.stats import plural
from gpu_pitr.npzfile import Pieces, write_npz
from gpu_pitr.tempfiles import (
    before_install,
    first_removing,
    fsync_path,
    fsync_renamed,
    install_failed,
    remove_stale_temps,
    temp_path,
)

FORMATS = ("npz", "parquet", "faiss", "snapshot")
SUFFIXES = {".npz": "npz", ".parquet": "parquet", ".faiss": "faiss"}
# The module each format needs beyond NumPy, and the extra that installs it.
_NEEDS = {"parquet": ("pyarrow", "arrow"), "faiss": ("faiss", "faiss"),
          "snapshot": ("pyarrow", "arrow")}
# Read back with ``pyarrow.parquet.read_schema(path).metadata``.
PARQUET_REPORT_KEY = b"gpu_pitr.report"


def output_format(out: str, fmt: str | None = None) -> str:
    """The format to write ``out`` in: ``fmt``, or the one its name implies.

    A name ending in ``/`` or naming an existing directory implies a snapshot;
    ``.npz``, ``.parquet`` and ``.faiss`` imply those formats (an existing directory
    with such a name is refused, unless ``fmt`` is ``snapshot``).

    Raises:
        ValueError: the name and ``fmt`` disagree, or neither says which format.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    suffix = Path(out).suffix.lower()
    if out.endswith(("/", os.sep)):
        implied, what = "snapshot", "a directory"
    elif Path(out).is_dir():
        if suffix in SUFFIXES and fmt != "snapshot":
            # x.npz/ from an earlier slip: neither replaced by a file nor taken for a
            # snapshot's place without being asked.
            raise ValueError(f"{out!r} is an existing directory with a {suffix} name: remove "
                             "it, or give --format snapshot to write a snapshot there")
        implied, what = "snapshot", "a directory"
    else:
        implied, what = SUFFIXES.get(suffix), f"a {suffix} name"
    if fmt is None:
        if implied is None:
            raise ValueError(
                f"cannot tell the format of {out!r} from its name: end it in .npz, .parquet "
                "or .faiss, or in / for a snapshot directory, or give --format")
        return implied
    if implied is not None and implied != fmt:
        wanted = "a snapshot, a directory" if fmt == "snapshot" else f"--format {fmt}"
        raise ValueError(f"{out!r} is {what}, which does not fit {wanted}")
    return fmt


def output_files(out: Path, fmt: str) -> list[Path]:
    """The files a restore to ``out`` writes (a snapshot: its directory)."""
    if fmt == "faiss":
        return [out, faiss_ids_path(out)]
    return [out]


def faiss_ids_path(out: Path) -> Path:
    """The sidecar of a FAISS output: one JSON string id per line, in row order."""
    return out.with_name(out.name + ".ids.jsonl")


def check_output(out: Path, fmt: str, dataset: bool = False) -> None:
    """Fail now, before a restore, if ``out`` cannot be written in ``fmt`` (``dataset``:
    as the Parquet dataset the Dask workers write, ``ShardedRestore.to_parquet``).

    Raises:
        MissingExtraError: the format's optional dependency is missing.
        OSError: no such directory, a directory where a file goes, or no permission.
    """
    if fmt in _NEEDS:
        _import_extra(fmt)
    if dataset:
        from gpu_pitr.scaleout import _check_dataset_target

        _check_dataset_target(Path(os.path.abspath(out)))
        where = out.parent
    elif fmt == "snapshot":
        from gpu_pitr.snapshot.format import _check_target

        # What save() would refuse after the restore (a file, a directory of other things).
        _check_target(Path(os.path.abspath(out)))
        where = out.parent
    else:
        for path in output_files(out, fmt):
            _check_replaceable(path)
        where = out.parent
    if not where.is_dir():
        raise no_directory(where, "--out")
    _probe(where / out.name)


def _import_extra(fmt: str):
    module, extra = _NEEDS[fmt]
    try:
        return __import__(module)
    except ImportError as err:
        raise missing_extra(err, module, f"--format {fmt} needs {module}", extra) from None


@interrupts.raises_stops
def write_output(index, out: str | os.PathLike, fmt: str) -> list[Path]:
    """Write the restored ``index`` to ``out`` in ``fmt`` (one of ``FORMATS``),
    atomically, as ``--out`` does; return the paths written. A cuda result is copied
    to the host first.

    Raises:
        WalError: the index cannot be held by the format (an id ending in NUL, or an
            id or metadata text past ``index.MAX_UNICODE_CHARS``, in an .npz; vectors
            of dimension 0 in a .parquet).
        NoRoomError: an .npz its file system has not the room for (an ``OutputError``,
            raised before any of it is written).
        ValueError: an unknown ``fmt``.
        MissingExtraError, OSError.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt in _NEEDS:
        _import_extra(fmt)  # MissingExtraError, saying which extra
    from gpu_pitr.snapshot.arrow import ArrowLimitError

    out = Path(out)
    index = index.to_host()
    try:
        if fmt == "snapshot":
            from gpu_pitr import snapshot

            snapshot.save(index, out)
            return [out]
        write = {"npz": _write_npz, "parquet": _write_parquet, "faiss": _write_faiss}[fmt]
        return write(index, out)
    except OutputError:
        raise
    except ArrowLimitError as err:
        # A traceback before (a map of more than 2 GiB of values in one record).
        raise WalError(f"the metadata of id {err.ident[:60]!r} alone passes what one Arrow "
                       f"map array holds ({err.limit:,} pairs, key bytes or value bytes), "
                       f"which a {fmt} output stores it in", file=str(out)) from None
    except OSError as err:
        raise OutputError(out, f"{fmt} output", err) from err


def _write_npz(index, out: Path) -> list[Path]:
    lossy = index.ids_ending_in_nul()
    if lossy:
        # NumPy's unicode arrays drop trailing NULs: two ids would become one.
        raise WalError(f"id {lossy[0]!r} ends with a NUL character, which the .npz "
                       f"ids array cannot hold ({plural(len(lossy), 'such id')}); write a "
                       ".parquet, FAISS or snapshot output, which hold it exactly",
                       file=str(out))
    report = json.dumps(index.report.to_dict())
    texts, which = index.metadata_texts()
    _npz_widths(index, out, texts, which)
    _npz_room(index, out, texts, which, len(report))
    with atomic_files(out) as (tmp,), open(tmp, "wb") as file:
        write_npz(file, {
            "ids": _ids_member(index),
            "vectors": np.asarray(index.vectors, dtype=np.float32),
            "metadata": _metadata_member(texts, which),
            "report": np.array(report),
        })
    return [out]


def _npz_widths(index, out: Path, texts: tuple, which: np.ndarray) -> None:
    """Refuse an .npz whose ids or metadata member NumPy has no dtype for (a row past
    ``MAX_UNICODE_CHARS`` characters), before writing any of it, naming the id."""
    from gpu_pitr.index import unicode_dtype

    for name, what, width, lens in (("ids", "an id", index.ids_width(), index.id_lengths()),
                                    ("metadata", "a metadata text", texts[3],
                                     texts[2][which])):
        try:
            unicode_dtype(width, what)
        except ValueError as err:
            row = int(np.argmax(lens))
            ident = index.rows(row, row + 1).id_list()[0]
            raise WalError(f"{err}, as the .npz's {name} member must be (id {ident[:60]!r}); "
                           "write a .parquet, FAISS or snapshot output, which hold it",
                           file=str(out)) from None


#: Bytes an .npz takes beyond its members' data: zip and .npy headers, about 250
#: bytes a member (4 members), with room. The file system's last partial block is added.
_NPZ_SLACK = 4096
#: A unicode member this large, and this many times the text it holds, is worth a word.
_WIDE_BYTES = 1 << 30
_WIDE_RATIO = 8


def _npz_room(index, out: Path, texts: tuple, which: np.ndarray, report_chars: int) -> None:
    """Refuse an .npz its file system has no room for, before writing any of it.

    Its unicode members are fixed-width (``<U``: four bytes a character, every row
    as wide as the longest), so one long id or one large metadata map among many ids
    makes the file far larger than the log: 20,000 ids and one 50 KB map are 4 GB
    of .npz. Rather than fill the disk and then fail, the restore says so and names
    the row that sets the width; one that fits but is inflated that much is a
    warning. (.parquet stores each row at its own length.)
    """
    import warnings

    n = len(index)
    # Per member: its characters a row, and the UTF-8 bytes of each row's text.
    members = {"ids": (index.ids_width(), index.id_lengths()),
               "metadata": (texts[3], texts[2][which])}
    need = (sum(4 * n * width for width, _ in members.values())
            + int(np.asarray(index.vectors).nbytes) + 4 * report_chars + _NPZ_SLACK)
    why = ""
    for name, (width, lens) in members.items():
        size, held = 4 * n * width, int(lens.sum())
        if size < _WIDE_BYTES or size < _WIDE_RATIO * max(held, 1):
            continue
        row = int(np.argmax(lens))
        ident = index.rows(row, row + 1).id_list()[0]
        whose = "id" if name == "ids" else "the metadata of id"
        why += (f"; its {name} member is {n:,} rows of {width:,} characters, {_gb(size)} "
                f"for {_gb(held)} of text (NumPy's unicode arrays are fixed-width: every "
                f"row as wide as the longest, {whose} {ident[:60]!r})")
    try:
        st = os.statvfs(out.parent)
    except OSError:
        st = None  # not ours to judge: the write reports what goes wrong
    if st is not None and not st.f_blocks:
        st = None  # a file system that gives no sizes (/proc, some FUSE): the same
    if st is not None and need + st.f_frsize > st.f_bavail * st.f_frsize:
        raise NoRoomError(out, f"{out}: the .npz would take {_gb(need)}, more than the "
                          f"{_gb(st.f_bavail * st.f_frsize)} free on its file system{why}; "
                          "write a .parquet instead, or make room")
    if why:
        warnings.warn(f"{out}: the .npz takes {_gb(need)}{why}; a .parquet output holds "
                      "each row at its own length", stacklevel=2)


def _gb(nbytes: int) -> str:
    if nbytes >= 10**9:
        return f"{nbytes / 1e9:.1f} GB"
    if nbytes >= 10**6:
        return f"{nbytes / 1e6:.1f} MB"
    return f"{nbytes / 1e3:.1f} kB" if nbytes >= 10**3 else f"{nbytes} bytes"


#: Bytes of an .npz unicode member (ids, metadata) made at a time.
_IDS_PIECE = 16 << 20


def _unicode_member(n: int, width: int, rows_of) -> Pieces:
    """A ``<U{width}`` member of ``n`` rows made as it is written: ``rows_of(lo, hi)``
    gives rows ``lo:hi``, _IDS_PIECE bytes of them at a time (NumPy unicode is 4 bytes
    a character, as wide as the longest row)."""
    rows = max(1, _IDS_PIECE // (4 * width))
    return Pieces(f"<U{width}", (n,), lambda: (
        rows_of(a, min(a + rows, n)) for a in range(0, n, rows)))


def _ids_member(index):
    """``index.ids`` as an .npz member: the array if made already, else made as it is
    written (5M ids of 230 bytes are 4.6 GB as NumPy unicode, against 1.15 GB of
    UTF-8)."""
    if "ids" in vars(index):
        return np.asarray(index.ids, dtype=np.str_)
    return _unicode_member(len(index), index.ids_width(), index.ids_rows)


def _metadata_member(texts: tuple, which: np.ndarray):
    """``index.metadata_json()`` as an .npz member made as it is written, from
    ``index.metadata_texts()``: the JSON of each distinct map is held once (500k ids of
    1 KB text chunks: 2.2 GB a copy of the whole member)."""
    from gpu_pitr.index import json_rows

    return _unicode_member(len(which), texts[3], lambda lo, hi: json_rows(texts, which[lo:hi]))


def parquet_table(index, report: bytes | None = None):
    """The index as a ``pyarrow.Table``: ``id`` string, ``vector``
    fixed_size_list<float32>[dim], ``metadata`` map<string, string> (null when absent),
    with the report as JSON under ``PARQUET_REPORT_KEY`` in the schema metadata
    (``report``: that JSON, made once by a caller making many tables of one index).
    """
    pa = _import_extra("parquet")
    from gpu_pitr.snapshot.arrow import ids_array, metadata_array

    vectors = np.ascontiguousarray(index.vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n == 0:
        vector_col = pa.array([], type=pa.list_(pa.float32(), dim))
    elif dim == 0:
        raise WalError("vectors of dimension 0 cannot be stored as a Parquet "
                       "fixed_size_list (use --format npz or faiss)")
    else:
        # One flat float32 array cut into rows of dim: no Python work per row.
        vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    table = pa.table({"id": ids_array(index), "vector": vector_col,
                      "metadata": metadata_array(index)})
    if report is None:
        report = json.dumps(index.report.to_dict()).encode()
    return table.replace_schema_metadata({PARQUET_REPORT_KEY: report})


#: Rows of a Parquet row group at most (``pq.write_table``'s default), and bytes of
#: ids, vectors and metadata at most (about; at least one row): each group is made as
#: it is written, its ids gathered into row order and its maps built then, so wide
#: rows (1 KB texts as metadata) do not make a group of gigabytes.
_PARQUET_ROWS = 1 << 20
_PARQUET_BYTES = 128 << 20
#: The only columns written with a dictionary: the metadata's keys and values repeat
#: across ids. Ids are unique and vectors rarely repeat, so a dictionary of theirs
#: only grows to pyarrow's limit (1 MiB) and falls back to plain pages within the
#: column chunk: bytes and time for nothing, and a chunk that fastparquet 2026.9
#: (pandas' other engine) reads with every id after the fallback as None.
_PARQUET_DICTIONARY = ["metadata.key_value.key", "metadata.key_value.value"]
#: ... and their dictionary may hold a row group's every distinct key and value (at
#: most about ``_PARQUET_BYTES``): values unique per id (a text chunk each) passed the
#: 1 MiB limit, and fastparquet read each value after the fallback as its key.
_PARQUET_DICTIONARY_BYTES = 2 * _PARQUET_BYTES


def _write_parquet(index, out: Path) -> list[Path]:
    import pyarrow.parquet as pq

    index = index.to_host()
    groups = index.row_groups(_PARQUET_ROWS, _PARQUET_BYTES)
    rows = groups[0][1] - groups[0][0] or 1
    report = json.dumps(index.report.to_dict()).encode()  # once, not per group
    try:
        first = parquet_table(index.rows(*groups[0]), report)
    except WalError as err:
        raise WalError(err.what, file=str(out)) from None
    pa = _import_extra("parquet")
    # An open file, not the temp's name: pyarrow takes a name for UTF-8 text, and a
    # name that is not (bytes a Linux name may hold: b'\xff.parquet') made a traceback
    # once the restore was done.
    with (atomic_files(out) as (tmp,), pa.OSFile(os.fsencode(tmp), "wb") as sink,
          pq.ParquetWriter(sink, first.schema, use_dictionary=_PARQUET_DICTIONARY,
                           dictionary_pagesize_limit=_PARQUET_DICTIONARY_BYTES) as writer):
        writer.write_table(first, row_group_size=rows)
        del first
        for lo, hi in groups[1:]:
            writer.write_table(parquet_table(index.rows(lo, hi), report), row_group_size=rows)
    return [out]


def _write_faiss(index, out: Path) -> list[Path]:
    faiss = _import_extra("faiss")
    vectors = np.ascontiguousarray(index.vectors, dtype=np.float32)
    n, dim = vectors.shape
    flat = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    if n:
        # FAISS ids are int64: the row number in sorted id order; the sidecar maps back.
        flat.add_with_ids(vectors, np.arange(n, dtype=np.int64))
    ids_path = faiss_ids_path(out)
    with atomic_files(out, ids_path) as (tmp, tmp_ids):
        with open(tmp, "wb") as file:
            # Through Python's file, not FAISS's own by name: that takes UTF-8 text only
            # (a name that is not made a traceback), and reported a failed write as a
            # RuntimeError; here it is the OSError the write raised.
            faiss.write_index(flat, faiss.PyCallbackIOWriter(file.write))
        with open(tmp_ids, "w", encoding="utf-8") as file:
            _write_id_lines(file, index)
    return [out, ids_path]


#: Ids of the FAISS sidecar made into Python strings at a time.
_SIDECAR_ROWS = 1 << 16




def _write_id_lines(file, index) -> None:
    """One JSON string per id, a line each: made a block of rows at a time (not a
    Python string of every id at once), each by ``json``'s C encoder directly."""
    from json.encoder import encode_basestring  # what json.dumps(str, ensure_ascii=False) calls

    from gpu_pitr.format.dump import LINE_BREAKS  # escaped: an id is one line however split

    n = len(index)
    for lo in range(0, n, _SIDECAR_ROWS):
        rows = index.rows(lo, min(n, lo + _SIDECAR_ROWS)).id_list()
        text = "\n".join(map(encode_basestring, rows)) + "\n"
        if any(chr(c) in text for c in LINE_BREAKS):
            text = text.translate(LINE_BREAKS)
        file.write(text)


@contextmanager
def atomic_files(*dests: Path, check: bool = True,
                 stale: bool = True) -> Iterator[tuple[Path, ...]]:
    """New, empty temp files beside each of ``dests``, for the block to write.

    When the block succeeds each is fsynced and renamed onto its destination, then
    the directories are fsynced; on any failure the temp files are removed and the
    destinations are left as they were. Of a set (a FAISS index and its sidecar), the
    previous files but the first are moved aside before the first rename: once it is
    done, a rename that fails (``PartlyInPlaceError``) or a kill leaves the new first
    file without them, never beside them, and a stop waits for the rest. A
    destination that is a directory, a device, a FIFO or a socket is refused first
    (not with ``check=False``: a probe of the directory, for a directory output).
    Killed writers' temp files of ``dests`` are removed before and after (not with
    ``stale=False``: a caller that cleaned the whole directory under a lock of its
    own, as ``archive`` does; each look lists the directory, so one per file of an
    archive of N copies was N squared).
    """
    tmps: list[Path] = []
    for dest in dests:
        if check:
            _check_replaceable(dest)
        # Before writing too, not only after: on a full disk a killed writer's temp holds
        # the room a retry needs.
        if stale:
            remove_stale_temps(dest)
    try:
        for dest in dests:
            tmp = temp_path(dest)
            # os.open, not mkstemp: the file gets the umask's permissions, like any new file.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            tmps.append(tmp)
        yield tuple(tmps)
        for tmp in tmps:
            fsync_path(tmp, os.O_RDONLY)
        interrupts.committing()  # a pending Ctrl-C stops here, not between renames
        placed, stop, asides = 0, None, {}
        try:
            with _renames_locked(dests):
                before_install()
                # The previous files of the set but the first (a FAISS index's id
                # sidecar) go aside first: a writer killed between the renames, or a
                # later rename that fails, leaves the new first file and none of them,
                # never the new index beside the old ids (row k named by another id).
                asides = _set_aside(dests[1:])
                while placed < len(dests):
                    try:
                        os.replace(tmps[placed], dests[placed])
                        placed += 1
                    except (KeyboardInterrupt, interrupts.Terminated) as err:
                        # Ctrl-C in a program that calls the library (no command defers
                        # it): before the first rename it stops here; after it, the set
                        # is completed first, and the stop raised after. Where it landed
                        # (as a rename returned, or before one began), the disk says.
                        placed = next((k for k, t in enumerate(tmps)
                                       if os.path.lexists(t)), len(tmps))
                        if not placed:
                            raise
                        stop = err
                    except OSError as err:
                        if not placed:
                            raise
                        raise PartlyInPlaceError(dests[placed], err) from err
        except BaseException:
            if not placed:  # nothing replaced: what went aside comes back
                _put_back(asides)
                asides = {}
                install_failed()
            raise
        finally:
            for aside in asides.values():
                with contextlib.suppress(OSError):  # (else swept as a dead writer's temp)
                    os.unlink(aside)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(dest.parent for dest in dests):
        fsync_renamed(directory)  # after the renames: a failure is NotSyncedError
    for directory in dict.fromkeys(dest.parent for dest in dests) if stale else ():
        _remove_killed_outputs(directory, [d for d in dests if d.parent == directory])
    if stop is not None:
        raise stop


def _set_aside(dests: tuple[Path, ...]) -> dict[Path, Path]:
    """Rename those of ``dests`` that exist to temp names beside them (the sweeps remove
    a dead writer's), the directory fsynced (gone before the new files come, on disk
    too); return ``{dest: aside}``. On a failure the ones moved are put back."""
    asides: dict[Path, Path] = {}
    try:
        for dest in dests:
            if os.path.lexists(dest):
                aside = temp_path(dest)
                os.rename(dest, aside)
                asides[dest] = aside
        for directory in dict.fromkeys(dest.parent for dest in asides):
            fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)
    except BaseException:
        _put_back(asides)
        raise
    return asides


def _put_back(asides: dict[Path, Path]) -> None:
    """Rename each file ``_set_aside`` moved back to its name; best effort (the error
    that made it undo counts)."""
    for dest, aside in asides.items():
        with contextlib.suppress(OSError):
            os.rename(aside, dest)


# The names of the files an output writes (``--out`` by format, ``--report-json``).
_OUTPUT_NAMES = r".+\.(?:npz|parquet|faiss|faiss\.ids\.jsonl|json)"


def _remove_killed_outputs(directory: Path, dests: tuple[Path, ...] | list[Path] = ()
                           ) -> None:
    """Remove the temp files that killed writers left in ``directory`` (their pid gone),
    from one listing: those of ``dests``' own names (any age), and those of any other output's
    name (one name per target, as docs/recovery.md has it, is never written twice: up
    to a whole index each) once unchanged for ``tempfiles.QUIET_SECONDS``. Best effort
    (a temp the first sweep removed is passed over by the second: it is gone)."""
    from gpu_pitr.tempfiles import listing, remove_stale_entries

    entries = listing(directory)
    for dest in dests:
        remove_stale_entries(entries, re.escape(dest.name))
    remove_stale_entries(entries, _OUTPUT_NAMES, quiet=True)


@contextmanager
def _renames_locked(dests: tuple[Path, ...]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory of ``dests`` while they are renamed
    into place, when there is more than one (a FAISS index and its id sidecar): another
    gpu-pitr writing the same outputs at the same moment (two cron jobs) renames its set
    before or after, never between, so the pair on disk is one run's. Best effort: where
    a directory cannot be locked (NFS's emulated flock refuses a read-only descriptor),
    the renames go on without it."""
    import fcntl

    fd = None
    if len(dests) > 1:
        try:
            fd = os.open(dests[0].parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def write_json(path: Path, doc, then=None) -> None:
    """``doc`` as a JSON file at ``path``, atomically. ``then()``, if given, runs once
    the JSON is written aside and before it is renamed into place: a restore writes its
    index there, so that a report that cannot be written fails the run before the
    index replaces the old one (and an index that cannot be written leaves no report).
    The old JSON is moved aside just before the index is renamed into place (and put
    back if that rename fails; removed once it is done), and once the index is there
    a Ctrl-C or SIGTERM waits for the JSON's rename: never the new index beside the
    previous run's report (a SIGKILL between the two renames leaves none).

    An index renamed into place whose directory then failed to sync (an
    ``OutputError`` from ``NotSyncedError``) is there all the same: its report follows
    it into place, and then that error is raised (also where the report's own sync
    fails: both are in place; a report that cannot be put in place says so instead)."""
    unsynced = None  # then()'s error for an index in place but not synced
    placed = False  # then() is done: the index is in place, whatever fails after
    try:
        text = json.dumps(doc, indent=2) + "\n"
        with contextlib.ExitStack() as after_then, atomic_files(path) as (tmp,):
            tmp.write_text(text, encoding="utf-8")
            if then is not None:
                try:
                    with first_removing(path):  # never the new index beside an old report
                        then()
                except OutputError as err:
                    if not isinstance(err.__cause__, NotSyncedError):
                        raise
                    unsynced = err
                # The index is in place: its report follows it, whatever stop comes.
                placed = True
                after_then.enter_context(interrupts.holding())
                if not os.path.lexists(tmp):
                    # Unchanged while then() wrote a large index, it was swept as a
                    # killed writer's by a run on another host or in another container
                    # (QUIET_SECONDS; this pid is not alive there): written again.
                    tmp.write_text(text, encoding="utf-8")
    except OutputError:
        raise  # then()'s own, naming its file
    except OSError as err:
        if placed and not isinstance(err, NotSyncedError):
            # Its fsync or rename failed (a new name in a full directory: ENOSPC at the
            # rename) once the index was in place: it said "nothing was left in its place".
            raise WithoutItsJsonError(path, err) from err
        if unsynced is None or not isinstance(err, NotSyncedError):
            raise OutputError(path, "JSON file", err) from err
        # (Else the report is in place too, only its sync failed as well: as below.)
    if unsynced is not None:
        raise unsynced


# Directories of a tree looked at by ``inside`` at most (a WAL directory has few).
_INSIDE_WALK = 4096


def inside(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """``path`` is ``directory`` or somewhere in its tree.

    By name once links are resolved; and by identity (device and inode): ``path`` or
    one of its existing parents is ``directory`` or a directory of its tree, seen
    through another mount (a bind mount, NFS, a file system mounted inside it).
    Symbolic links inside the tree are not followed (a link is not its target).
    """
    top = Path(os.path.realpath(directory))
    real = Path(os.path.realpath(path))
    if real == top or top in real.parents:
        return True
    mine = set()
    for p in (real, *real.parents):
        try:
            st = os.stat(p)
        except OSError:
            continue
        mine.add((st.st_dev, st.st_ino))
    for count, (root, _, _) in enumerate(os.walk(top)):
        if count >= _INSIDE_WALK:
            break
        try:
            st = os.stat(root)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in mine:
            return True
    return False


def check_writable(path: Path, what: str) -> None:
    """Fail now if a file cannot be created at ``path`` (its directory missing or read-only)."""
    _check_replaceable(path)
    if not path.parent.is_dir():
        raise no_directory(path.parent, what)
    _probe(path)


_NOT_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _check_replaceable(path: Path) -> None:
    """An output file is written aside, then renamed onto ``path``: refuse a directory
    there, and a device, FIFO or socket (``/dev/null``, or ``/dev/stdout`` through its
    link), which the rename would replace with a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # nothing there (or a dangling link, which the rename replaces)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path}: is a directory")
    for test, kind in _NOT_FILES:
        if test(mode):
            raise FileExistsError(f"{path}: exists and is {kind}, not a regular file: not "
                                  "replaced (outputs are written aside and renamed into "
                                  "place; give a file's path)")


def no_directory(where: Path, what: str) -> OSError:
    """The error for an output whose directory ``where`` is missing, or is a file."""
    if os.path.lexists(where):
        return NotADirectoryError(f"{where}: not a directory, for {what}")
    return FileNotFoundError(f"{where}: no such directory for {what}")


class _Probe(Exception):
    """Unwinds ``atomic_files`` once its temp file exists, so that nothing is renamed."""


def _probe(path: Path) -> None:
    # Creating a file is the only test of writability that also holds for root. It fails
    # on the temp file's name, which the person never gave: the error names the directory.
    try:
        with atomic_files(path, check=False):
            raise _Probe
    except _Probe:
        pass
    except OSError as err:
        raise UnwritableDirectoryError(path, err) from err
