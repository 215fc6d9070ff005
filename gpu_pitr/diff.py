"""``gpu-pitr diff``: what differs between two restored states.

An operator who restored an index to before a bad ingest wants to see what the
incident changed: the ids only in one state, and the ids in both whose vector or
metadata differs. Either side is any output a restore writes (an ``.npz``, a
``.parquet``, a snapshot directory) or a ``RestoredIndex`` (or a loaded
``Snapshot``); a FAISS output holds no metadata, so it is refused.

Each side is read into one form: ids as a UTF-8 byte arena (as ``RestoredIndex``
holds them), float32 vectors, and per id the index of its metadata's JSON text
among the side's distinct texts. The texts are those of ``.npz``'s ``metadata``
member (``RestoredIndex.metadata_texts``: sorted keys, compact, ``"null"`` for none),
which the restore's writer makes canonical, so two maps are equal exactly when their
texts are. Ids are matched by their bytes: one code per distinct byte string over
both sides (``index._distinct_spans``, keyed by a 64-bit hash and checked byte for
byte), then ``np.intersect1d`` of the codes; no fixed-width NumPy strings (they
drop trailing NULs, and one long id makes every row as wide). Vectors compare as
their uint32 bits, so a NaN's payload and -0.0 count; metadata texts are matched the
same way as ids.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpu_pitr.errors import WalError, os_reason
from gpu_pitr.report import short_repr

#: The lists a diff gives, in the order they are shown.
LISTS = ("only_in_a", "only_in_b", "changed", "vector_changed", "metadata_changed")

#: Bytes of gathered vector rows compared at a time (two gathers of this size live).
_VECTOR_BYTES = 64 << 20

#: The first bytes of the files a restore writes, for a name without their suffix.
_MAGIC = {b"PK\x03\x04": "npz", b"PK\x05\x06": "npz", b"PAR1": "parquet"}


@dataclass
class DiffResult:
    """What differs between A and B.

    ``only_in_a``, ``only_in_b``: the ids one side has and the other lacks;
    ``changed``: the ids in both whose vector bits or metadata differ, of which
    ``vector_changed`` and ``metadata_changed`` are those whose vector, and those whose
    metadata, differ (an id can be in both). Each list is sorted by UTF-8 bytes, as an
    index's ids are; with a ``limit``, each holds its first ``limit`` ids and
    ``counts`` still counts them all. ``dims_differ``: both sides hold ids and their
    vectors have different lengths, so every id in both counts as changed.
    """

    a: str
    b: str
    format_a: str
    format_b: str
    ids_a: int
    ids_b: int
    dim_a: int | None
    dim_b: int | None
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    vector_changed: list[str] = field(default_factory=list)
    metadata_changed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    __repr__ = short_repr  # (a diff of a million ids: not a million in a notebook cell)

    @property
    def same(self) -> bool:
        """A and B hold the same ids, with the same vector bits and metadata."""
        return not any(self.counts[name] for name in ("only_in_a", "only_in_b", "changed"))

    @property
    def dims_differ(self) -> bool:
        return bool(self.ids_a and self.ids_b and self.dim_a != self.dim_b)

    def to_dict(self) -> dict:
        """The JSON document of ``gpu-pitr diff --json``."""
        doc = {"a": {"path": self.a, "format": self.format_a, "ids": self.ids_a,
                     "dim": self.dim_a},
               "b": {"path": self.b, "format": self.format_b, "ids": self.ids_b,
                     "dim": self.dim_b},
               "same": self.same, "dims_differ": self.dims_differ}
        for name in LISTS:
            doc[name] = {"count": self.counts[name], "ids": getattr(self, name)}
        return doc

    def lines(self) -> list[str]:
        """What ``gpu-pitr diff`` prints: each side, then each list with its count and
        the ids it holds (JSON strings, one a line), and how many more there are."""
        from gpu_pitr.format.dump import json_line

        def side(label: str, path: str, fmt: str, n: int, dim: int | None) -> str:
            # One line whatever the name holds (as errors say it), surrogates escaped.
            shown = " ".join(path.encode("utf-8", "backslashreplace").decode().splitlines())
            return (f"{label}: {shown} ({fmt}): {n:,} id{'' if n == 1 else 's'}"
                    + (f", dim {dim}" if n and dim is not None else ""))

        lines = [side("A", self.a, self.format_a, self.ids_a, self.dim_a),
                 side("B", self.b, self.format_b, self.ids_b, self.dim_b)]
        if self.dims_differ:
            lines.append(f"dimension differs ({self.dim_a} in A, {self.dim_b} in B): every "
                         "id in both counts as changed")
        if self.same:
            lines.append(f"same: {self.ids_a:,} ids, their vectors bit for bit and their "
                         "metadata")
            return lines
        counts = self.counts
        for name, title in (("only_in_a", "only in A"), ("only_in_b", "only in B"),
                            ("changed", "changed")):
            head = f"{title}: {counts[name]:,}"
            if name == "changed":
                head += (f" ({counts['vector_changed']:,} vector, "
                         f"{counts['metadata_changed']:,} metadata)")
            lines.append(head)
            ids = getattr(self, name)
            for ident in ids:
                what = ""
                if name == "changed":
                    parts = [kind for kind, among in (("vector", self.vector_changed),
                                                      ("metadata", self.metadata_changed))
                             if _holds(among, ident)]
                    what = f" ({', '.join(parts)})"
                lines.append(f"  {json_line(ident)}{what}")
            if ids and counts[name] > len(ids):  # (limit 0: the counts alone)
                lines.append(f"  ... and {counts[name] - len(ids):,} more")
        return lines


def _holds(ids: list[str], ident: str) -> bool:
    # Python compares str by code point, which is UTF-8 byte order: the lists' order.
    k = bisect.bisect_left(ids, ident)
    return k < len(ids) and ids[k] == ident


def diff(a, b, *, limit: int | None = None) -> DiffResult:
    """What differs between ``a`` and ``b``: each a path (an ``.npz``, a ``.parquet``,
    a snapshot directory) or a ``RestoredIndex`` (or a loaded ``Snapshot``).

    ``limit``: keep at most this many ids in each list (``counts`` counts them all):
    the ids are Python strings, and a diff of millions of ids would make them all
    only for a person to read the first few.

    Raises:
        WalError: a side that cannot be read, or is not an output a restore writes
            (``SnapshotError`` for a snapshot), one line naming the file.
        MissingExtraError: a ``.parquet`` or a snapshot without pyarrow installed.
        ValueError: a ``limit`` below 0.
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 0):
        raise ValueError(f"limit {limit!r}: a count of ids (0, 1, 2, ...) or None")
    sa, sb = _side(a), _side(b)
    na, nb = len(sa.id_offs), len(sb.id_offs)
    ca, cb = _codes(sa.ids, sb.ids)
    # The ids within a side are distinct (the loaders check they ascend strictly).
    _, ia, ib = np.intersect1d(ca, cb, assume_unique=True, return_indices=True)
    order = np.argsort(ia, kind="stable")  # A's row order, which is B's too: both sorted
    ia, ib = ia[order], ib[order]
    in_a = np.zeros(na, np.bool_)
    in_a[ia] = True
    in_b = np.zeros(nb, np.bool_)
    in_b[ib] = True
    vec = _vectors_differ(sa.vectors, sb.vectors, ia, ib)
    ma, mb = _codes(sa.texts, sb.texts)
    meta = ma[sa.which[ia]] != mb[sb.which[ib]]
    rows = {"only_in_a": (sa, np.flatnonzero(~in_a)), "only_in_b": (sb, np.flatnonzero(~in_b)),
            "changed": (sa, ia[vec | meta]), "vector_changed": (sa, ia[vec]),
            "metadata_changed": (sa, ia[meta])}
    return DiffResult(
        a=sa.name, b=sb.name, format_a=sa.fmt, format_b=sb.fmt, ids_a=na, ids_b=nb,
        dim_a=sa.dim, dim_b=sb.dim,
        **{name: side.id_strings(r if limit is None else r[:limit])
           for name, (side, r) in rows.items()},
        counts={name: len(r) for name, (_, r) in rows.items()})


def _vectors_differ(va: np.ndarray, vb: np.ndarray, ia: np.ndarray, ib: np.ndarray
                    ) -> np.ndarray:
    """Per common row, whether its vectors' bits differ (every row when the lengths do)."""
    if va.shape[1] != vb.shape[1]:
        return np.ones(len(ia), np.bool_)
    ba, bb = _bits(va), _bits(vb)
    out = np.empty(len(ia), np.bool_)
    step = max(1, _VECTOR_BYTES // max(4 * va.shape[1], 1))
    for lo in range(0, len(ia), step):  # a block of rows at a time, not all gathered
        hi = lo + step
        out[lo:hi] = (ba[ia[lo:hi]] != bb[ib[lo:hi]]).any(axis=1)
    return out


def _bits(vectors: np.ndarray) -> np.ndarray:
    """float32 vectors as their uint32 bit patterns (of the array's own byte order)."""
    return vectors.view(np.dtype(np.uint32).newbyteorder(vectors.dtype.byteorder))


def _codes(x: tuple, y: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One code per distinct byte string over two spans ``(arena, offs, lens)``: equal
    codes exactly where the bytes are equal."""
    from gpu_pitr.index import _distinct_spans

    arena = np.concatenate([x[0], y[0]]).astype(np.uint8, copy=False)
    offs = np.concatenate([np.asarray(x[1], np.int64),
                           np.asarray(y[1], np.int64) + len(x[0])])
    lens = np.concatenate([np.asarray(x[2], np.int64), np.asarray(y[2], np.int64)])
    if not len(offs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, which = _distinct_spans(arena, offs, lens)
    return which[:len(x[1])], which[len(x[1]):]


# ----------------------------------------------------------------------------- the sides
@dataclass
class _Side:
    """One side in the form the comparison takes (see the module's docstring)."""

    name: str
    fmt: str
    ids: tuple  # (arena uint8, offs int64, lens int64): UTF-8, ascending
    vectors: np.ndarray  # [n, d], float32 of any byte order
    texts: tuple  # (arena, offs, lens): the distinct metadata JSON texts, UTF-8
    which: np.ndarray  # per id, its text's index in ``texts`` (-1: the last)

    @property
    def id_offs(self) -> np.ndarray:
        return self.ids[1]

    @property
    def dim(self) -> int | None:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else None

    def id_strings(self, rows: np.ndarray) -> list[str]:
        arena, offs, lens = self.ids
        return [bytes(arena[o:o + n]).decode("utf-8")
                for o, n in zip(offs[rows].tolist(), lens[rows].tolist(), strict=True)]


def _side(x) -> _Side:
    from gpu_pitr.index import RestoredIndex

    if hasattr(x, "to_index") and not isinstance(x, RestoredIndex):  # a loaded Snapshot
        return _index_side(x.to_index(), str(x.path), "snapshot")
    if isinstance(x, RestoredIndex):
        return _index_side(x.to_host(), "RestoredIndex", "index")
    if not isinstance(x, str | os.PathLike):
        raise TypeError(f"diff takes paths or RestoredIndex objects, not {type(x).__name__}")
    path = os.fspath(x)
    fmt = output_kind(path)
    if fmt == "snapshot":
        from gpu_pitr import snapshot
        from gpu_pitr.scaleout import DATASET_REPORT

        if os.path.isfile(os.path.join(path, DATASET_REPORT)):
            # Shards hashed by id, each sorted alone: not one index in id order.
            raise WalError("a Parquet dataset (restore --write-on-workers), not a snapshot: "
                           "diff reads one .parquet (a restore without --write-on-workers) "
                           "or a snapshot", file=_name(path))

        _not_a_wal_dir(path)
        # Every checksum and the order of the ids checked; the vectors mapped, not read.
        return _index_side(snapshot.load(path, mmap=True).to_index(), _name(path), fmt)
    return (_npz_side if fmt == "npz" else _parquet_side)(path)


def _not_a_wal_dir(path) -> None:
    """Refuse a WAL directory (or an archive) given for a restored state, as the slip it
    is (recovery.md's step 8 diffs two restores of the archive: naming the archive itself
    is the easy mistake), rather than call it a snapshot whose manifest is missing."""
    from gpu_pitr.snapshot import holds_segments
    from gpu_pitr.snapshot.format import holds_snapshot_files

    if not holds_snapshot_files(path) and holds_segments(path):
        raise WalError("a WAL directory (it holds wal-<16 hex digits>.log files), "
                       "not a restored index: diff compares what restores wrote (gpu-pitr "
                       f"restore {_name(path)} --out X.npz, then diff X.npz)", file=_name(path))


def _name(path) -> str:
    return os.fsdecode(path)


def output_kind(path) -> str:
    """What a restore wrote at ``path``: ``snapshot`` (a directory, or a name ending in
    ``/``), ``npz`` or ``parquet``
    (by the name's suffix, else by the file's first bytes).

    Raises:
        WalError: a FAISS output (no metadata to compare), a file that cannot be opened
            or is none of these.
    """
    from gpu_pitr.outputs import SUFFIXES

    if os.path.isdir(path) or os.fsdecode(path).endswith(("/", os.sep)):
        return "snapshot"  # (a name ending in / is a directory's, as for restore --out)
    fmt = SUFFIXES.get(Path(os.fsdecode(path)).suffix.lower())
    if fmt is None:
        with _open(path) as f:
            fmt = _MAGIC.get(f.read(4))
        if fmt is None:
            raise WalError("not an output gpu-pitr writes that diff reads (an .npz, a "
                           ".parquet or a snapshot directory)", file=_name(path))
    if fmt == "faiss":
        raise WalError("a FAISS output holds no metadata: diff the .npz, .parquet or "
                       "snapshot output of the same restore", file=_name(path))
    return fmt


def _open(path):
    """``path`` opened for reading (``segments.open_regular``: a FIFO does not block),
    or a WalError naming it."""
    from gpu_pitr.format.segments import NotARegularFile, file_kind, open_regular

    try:
        return open(open_regular(path), "rb")
    except NotARegularFile as err:
        raise WalError(f"is {file_kind(err.mode)}, not a regular file",
                       file=_name(path)) from None
    except OSError as err:
        raise WalError(f"cannot be read: {os_reason(err)}", file=_name(path)) from None


def _index_side(index, name: str, fmt: str) -> _Side:
    texts, which = index.metadata_texts()
    vectors = np.asarray(index.vectors)
    if vectors.ndim != 2:
        vectors = vectors.reshape(len(index), -1)
    return _Side(name, fmt, (index._id_arena, index._id_offs, index._id_lens), vectors,
                 texts[:3], which)


def _utf8(strings: np.ndarray, what: str, path) -> tuple:
    """A NumPy unicode array as ``(arena, offs, lens)`` of UTF-8 (the rows hold no
    trailing NUL: NumPy's unicode arrays cannot)."""
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    chars = strings.dtype.itemsize // 4
    cps = np.ascontiguousarray(strings).view(
        np.dtype(np.uint32).newbyteorder(strings.dtype.byteorder)).reshape(n, chars)
    if chars and int(cps.max()) < 0x80:
        # ASCII (most ids): the code points are the bytes (np.char.encode: 0.5 us an id).
        return _packed(cps, np.char.str_len(strings).astype(np.int64))
    try:
        encoded = np.char.encode(strings, "utf-8")
    except UnicodeEncodeError as err:
        raise WalError(f"the {what} member holds text that is not Unicode ({err.reason})",
                       file=_name(path)) from None
    width = encoded.dtype.itemsize
    lens = np.char.str_len(encoded).astype(np.int64)
    if width == 0:
        return np.zeros(0, np.uint8), np.zeros(n, np.int64), lens
    return _packed(encoded.view(np.uint8).reshape(n, width), lens)


def _packed(grid: np.ndarray, lens: np.ndarray) -> tuple:
    """``(arena, offs, lens)`` of the rows of ``grid`` (one a string, one unit a byte),
    each cut to its length and packed back to back."""
    arena = grid[np.arange(grid.shape[1]) < lens[:, None]].astype(np.uint8, copy=False)
    return arena, np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), lens


def _npz_side(path) -> _Side:
    """An ``.npz`` a restore wrote (``outputs._write_npz``), checked as a snapshot's load
    checks its own: the members there, of their types and lengths, ids ascending."""
    import zipfile
    import zlib

    def bad(what: str) -> WalError:
        return WalError(what, file=_name(path))

    with _open(path) as f:
        if _MAGIC.get(f.read(4)) != "npz":
            raise bad("not an .npz (a ZIP archive of .npy members)")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as z:
                missing = [m for m in ("ids", "vectors", "metadata") if m not in z.files]
                if missing:
                    raise bad(f"not an .npz a restore wrote: no {missing[0]!r} member")
                ids, vectors, meta = z["ids"], z["vectors"], z["metadata"]
        except WalError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            reason = os_reason(err) if isinstance(err, OSError) and err.errno else err
            raise bad(f"cannot be read as an .npz: {' '.join(str(reason).split())}") from None
    n = len(ids) if ids.ndim == 1 else -1
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise bad(f"ids: expected unicode [n], got {ids.dtype} {list(ids.shape)}")
    if vectors.ndim != 2 or vectors.dtype.kind != "f" or vectors.dtype.itemsize != 4 \
            or vectors.shape[0] != n:
        raise bad(f"vectors: expected float32 [{n}, d], got {vectors.dtype} "
                  f"{list(vectors.shape)}")
    if meta.shape != (n,) or meta.dtype.kind != "U":
        raise bad(f"metadata: expected unicode [{n}], got {meta.dtype} {list(meta.shape)}")
    id_cols = _utf8(ids, "ids", path)
    _check_order(id_cols, path)
    texts, which = np.unique(meta, return_inverse=True)
    return _Side(_name(path), "npz", id_cols, vectors, _utf8(texts, "metadata", path),
                 which.reshape(-1).astype(np.int64))


def _check_order(ids: tuple, path) -> None:
    """The ids strictly ascending by their bytes (distinct, as the diff assumes), as a
    snapshot's load checks its own (the same words)."""
    from gpu_pitr.snapshot.format import _first_unsorted

    if len(ids[1]) > 1:
        row = _first_unsorted(*ids)
        if row >= 0:
            raise WalError(f"ids are not strictly ascending at row {row}", file=_name(path))


def _parquet_side(path) -> _Side:
    """A ``.parquet`` a restore wrote (``outputs.parquet_table``), its ids and metadata
    read as a snapshot's are (``snapshot.arrow.arenas_from_arrow``: types, nulls,
    offsets), its vectors a fixed_size_list<float32> without nulls, ids ascending."""
    from gpu_pitr.errors import missing_extra
    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.report import RestoreReport
    from gpu_pitr.snapshot.arrow import arenas_from_arrow

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise missing_extra(err, "pyarrow", "a .parquet needs pyarrow", "arrow") from None

    def bad(what: str) -> WalError:
        return WalError(what, file=_name(path))

    with _open(path) as f:
        try:
            table = pq.read_table(f, columns=["id", "vector", "metadata"])
        except (pa.ArrowException, OSError, ValueError, KeyError) as err:
            reason = os_reason(err) if isinstance(err, OSError) and err.errno else err
            raise bad(f"cannot be read as a .parquet a restore wrote: "
                      f"{' '.join(str(reason).split())}") from None
    col = table.column("vector")
    typ = col.type
    if not (pa.types.is_fixed_size_list(typ) and typ.value_type == pa.float32()):
        raise bad(f"vector: expected fixed_size_list<float32>[d], got {typ}")
    if col.null_count:
        raise bad("vector: null vectors")
    dim = typ.list_size
    parts = [chunk.flatten() for chunk in col.chunks]
    if any(p.null_count for p in parts):
        raise bad("vector: null values in vectors")
    flat = (np.concatenate([p.to_numpy(zero_copy_only=False) for p in parts])
            if parts else np.zeros(0, np.float32))
    vectors = flat.astype(np.float32, copy=False).reshape(len(table), dim)
    try:
        arenas = arenas_from_arrow(table.column("id"), table.column("metadata"))
    except ValueError as err:
        raise bad(str(err)) from None
    index = RestoredIndex(arenas[0], arenas[1], arenas[2], vectors, *arenas[3:],
                          RestoreReport.from_dict({}))
    _check_order((arenas[0], arenas[1], arenas[2]), path)
    return _index_side(index, _name(path), "parquet")
