"""Builders of WAL directories: a small LogBuilder for hand-written cases, and hypothesis
strategies for random ones (every operation type, transactions and anomalies, nested
batches, several segments, writer restarts, non-monotonic timestamps, awkward ids and
floats, and optional damage).

Entries are plain tuples, the same shape tests/reference.py decodes to:
``("insert"|"update", id, vector_bytes, meta|None, ts)``, ``("delete", id, ts)``,
``("batch", [entries], ts)``, ``("checkpoint", seqno, ts)``,
``("begin"|"commit"|"abort", txid, ts)``. Vectors are raw little-endian f32 bytes so that
NaN payloads survive; use :func:`f32` / :func:`bits` to make them.

Payloads are encoded with the project's ``gpu_pitr.format.codec.encode_entry`` when it is
importable (``USE_PROJECT_CODEC``), else with the small encoder below. Damage is raw byte
surgery.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

MAGIC_V1 = b"WALV\x01\x00\x00\x00"


# ----------------------------------------------------------------------------- values
def f32(*vals: float) -> bytes:
    return struct.pack(f"<{len(vals)}f", *vals)


def bits(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}I", *words)


def _vb(vec) -> bytes:
    return vec if isinstance(vec, bytes | bytearray) else f32(*vec)


def Ins(ident: str, vec, meta: dict | None = None, ts: int = 0) -> tuple:
    return ("insert", ident, _vb(vec), meta, ts)


def Upd(ident: str, vec, meta: dict | None = None, ts: int = 0) -> tuple:
    return ("update", ident, _vb(vec), meta, ts)


def Del(ident: str, ts: int = 0) -> tuple:
    return ("delete", ident, ts)


def Batch(entries: list, ts: int = 0) -> tuple:
    return ("batch", list(entries), ts)


def Ckpt(seqno: int, ts: int = 0) -> tuple:
    return ("checkpoint", seqno, ts)


def Begin(tx: int, ts: int = 0) -> tuple:
    return ("begin", tx, ts)


def Commit(tx: int, ts: int = 0) -> tuple:
    return ("commit", tx, ts)


def Abort(tx: int, ts: int = 0) -> tuple:
    return ("abort", tx, ts)


# ----------------------------------------------------------------------------- encoding
def varint(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def _s(x: str) -> bytes:
    b = x.encode("utf-8")
    return varint(len(b)) + b


_VARIANT = {
    "insert": 0,
    "update": 1,
    "delete": 2,
    "batch": 3,
    "checkpoint": 4,
    "begin": 5,
    "commit": 6,
    "abort": 7,
}


def local_encode_entry(e: tuple) -> bytes:
    out = varint(_VARIANT[e[0]])
    if e[0] in ("insert", "update"):
        _, ident, vec, meta, ts = e
        out += _s(ident) + varint(len(vec) // 4) + bytes(vec)
        if meta is None:
            out += b"\x00"
        else:
            out += b"\x01" + varint(len(meta))
            for k, v in meta.items():
                out += _s(k) + _s(v)
        return out + varint(ts)
    if e[0] == "delete":
        return out + _s(e[1]) + varint(e[2])
    if e[0] == "batch":
        out += varint(len(e[1]))
        for sub in e[1]:
            out += local_encode_entry(sub)
        return out + varint(e[2])
    return out + varint(e[1]) + varint(e[2])


try:  # the project's codec, when it exists
    from gpu_pitr.format import codec as _codec
    from gpu_pitr.format import entries as _entries

    USE_PROJECT_CODEC = hasattr(_codec, "encode_entry")
except ImportError:  # pragma: no cover - until the codec lands
    USE_PROJECT_CODEC = False


def to_project_entry(e: tuple):
    """The project's dataclass for a tuple entry (Rust field names)."""
    import numpy as np

    E = _entries
    k = e[0]
    if k in ("insert", "update"):
        cls = E.Insert if k == "insert" else E.Update
        vec = np.frombuffer(bytes(e[2]), dtype="<f4").copy()
        meta = None if e[3] is None else dict(e[3])
        return cls(id=e[1], vector=vec, metadata=meta, timestamp=e[4])
    if k == "delete":
        return E.Delete(id=e[1], timestamp=e[2])
    if k == "batch":
        return E.Batch(entries=[to_project_entry(x) for x in e[1]], timestamp=e[2])
    if k == "checkpoint":
        return E.Checkpoint(sequence_number=e[1], timestamp=e[2])
    cls = {"begin": E.BeginTransaction, "commit": E.CommitTransaction, "abort": E.AbortTransaction}
    return cls[k](transaction_id=e[1], timestamp=e[2])


def encode_entry(e: tuple) -> bytes:
    if USE_PROJECT_CODEC:
        return bytes(_codec.encode_entry(to_project_entry(e)))
    return local_encode_entry(e)


try:  # the project's framing, when it exists
    from gpu_pitr.format.writer import encode_header, encode_record
except ImportError:  # pragma: no cover

    def encode_header(created: int) -> bytes:
        return MAGIC_V1 + struct.pack("<Q", created)

    def encode_record(seq: int, payload: bytes) -> bytes:
        return struct.pack("<QI", seq, len(payload)) + payload


def segment_name(created: int) -> str:
    return f"wal-{created:016x}.log"


# ----------------------------------------------------------------------------- builder
class Clock:
    """A writer's clock for tests: each call is one second later (``t`` the last)."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 1
        return self.t


@dataclass(frozen=True)
class Rec:
    """Where a record landed: file name, its first byte, one past its last, its seq."""

    file: str
    offset: int
    end: int
    seq: int


class LogBuilder:
    """Builds segment files byte by byte; ``write(dir)`` puts them on disk.

    ``add(entry)`` appends a record with the writer's next seq and returns its ``Rec``.
    ``reopen()`` models a writer reopened without recovery: seq restarts at 0, and a
    second header is appended to the current file (same second) or a new file is begun.
    """

    def __init__(self, created: int = 0x5F5E100, first_seq: int = 0, header: bool = True):
        self.files: dict[str, bytearray] = {}
        self.cur = ""
        self.seq = first_seq
        self.new_segment(created, header=header)

    def new_segment(self, created: int, header: bool = True) -> str:
        name = segment_name(created)
        self.files[name] = bytearray(encode_header(created) if header else b"")
        self.cur = name
        return name

    def reopen(self, created: int | None = None) -> None:
        """Writer reopened: seq back to 0; same second -> second header in the same file."""
        self.seq = 0
        cur_created = int(self.cur[4:20], 16)
        if created is None or created == cur_created:
            self.files[self.cur] += encode_header(cur_created)
        else:
            self.new_segment(created)

    def add_payload(self, payload: bytes, seq: int | None = None) -> Rec:
        if seq is None:
            seq = self.seq
            self.seq += 1
        buf = self.files[self.cur]
        off = len(buf)
        buf += encode_record(seq, payload)
        return Rec(self.cur, off, len(buf), seq)

    def add(self, entry: tuple, seq: int | None = None, trailing: bytes = b"") -> Rec:
        return self.add_payload(encode_entry(entry) + trailing, seq)

    def raw(self, data: bytes, file: str | None = None) -> int:
        buf = self.files[file or self.cur]
        off = len(buf)
        buf += data
        return off

    def put_file(self, name: str, data: bytes) -> None:
        self.files[name] = bytearray(data)

    def truncate(self, file: str, size: int) -> None:
        del self.files[file][size:]

    def write(self, wal_dir) -> str:
        os.makedirs(wal_dir, exist_ok=True)
        for name, data in self.files.items():
            with open(os.path.join(wal_dir, name), "wb") as f:
                f.write(bytes(data))
        return str(wal_dir)


# ----------------------------------------------------------------------------- random
ID_POOL = [
    "a",
    "a\x00",
    "\x00",
    "",
    "a\x00b",
    "ab",
    "abc",
    "b",
    "é",
    "e\u0301",
    "日本",
    "日本語",
    "🙂",
    "\U0010ffff",
    "A",
    "a ",
]

FLOAT_BITS = [
    0x00000000,  # 0.0
    0x80000000,  # -0.0
    0x3F800000,  # 1.0
    0xBF800000,  # -1.0
    0x7F800000,  # inf
    0xFF800000,  # -inf
    0x7FC00000,  # quiet NaN
    0x7FC12345,  # quiet NaN with a payload
    0xFFC00001,  # negative NaN with a payload
    0x7F800001,  # signalling NaN
    0x7FA00000,  # signalling NaN, other payload
    0x00000001,  # smallest denormal
    0x7F7FFFFF,  # max float
]

TS_STARTS = [0, 5, 240, 300, 70_000, 1_700_000_000, 5_000_000_000, 2**63 + 12345]

GARBAGE_KINDS = [
    "bad_marker",  # first byte 255
    "unknown_variant",  # variant 8..250
    "u64_marker_variant",  # variant index with the u64 marker 253 (invalid for a u32)
    "truncated",  # a valid payload cut short
    "bad_utf8",  # Insert whose id is not UTF-8
    "huge_count",  # Batch whose count is larger than the payload
    "huge_vec",  # Insert whose vector count is larger than the payload
    "bad_option",  # option tag 2
    "u128_ts",  # Delete whose timestamp uses the u128 marker 254
    "empty",  # zero-length payload
    "random",  # random bytes: may or may not decode
]


def listed_at(monkeypatch, module, name: str, size: int) -> None:
    """``module``'s ``list_segments`` lists segment ``name`` as ``size`` bytes long: what a
    listing taken before a writer's last bytes says (every command reads a segment up to
    the size it was listed with). Composes with ``listed_gone``."""
    from gpu_pitr.format import segments

    real = module.list_segments

    def listing(wal_dir):
        return [segments.Segment(s.path, size, s.created) if s.name == name else s
                for s in real(wal_dir)]

    monkeypatch.setattr(module, "list_segments", listing)


def listed_gone(monkeypatch, module, name: str) -> None:
    """``module``'s ``list_segments`` lists a segment ``name`` that is gone when it is
    opened: the writer's retention deleted it between the listing and the read."""
    from gpu_pitr.format import segments

    real = module.list_segments

    def listing(wal_dir):
        gone = segments.Segment(Path(wal_dir) / name, 5000, int(name[4:20], 16))
        return sorted(real(wal_dir) + [gone], key=lambda s: s.name.encode())

    monkeypatch.setattr(module, "list_segments", listing)


class FailingLibc:
    """Stands in for ``gpu_pitr.format.mapped._libc``: its file mappings (``what`` =
    "mmap") or the faulting in of their pages ("madvise") fail with errno ``code``
    every ``every``-th time; anonymous mappings (memory put back) work."""

    def __init__(self, what: str, code: int, every: int = 1) -> None:
        from gpu_pitr.format import mapped

        self.real = mapped._load_libc()
        self.what, self.code, self.every, self.calls = what, code, every, 0

    def _fail(self) -> bool:
        self.calls += 1
        if self.calls % self.every == 0:
            ctypes.set_errno(self.code)
            return True
        return False

    def mmap(self, addr, size, prot, flags, fd, off):
        if self.what == "mmap" and not flags & mmap.MAP_ANONYMOUS and self._fail():
            return None  # MAP_FAILED
        return self.real.mmap(addr, size, prot, flags, fd, off)

    def madvise(self, addr, size, advice):
        if self.what == "madvise" and self._fail():
            return -1
        return self.real.madvise(addr, size, advice)


def garbage_payload(kind: str, rnd: bytes, valid: bytes) -> bytes:
    """An (almost always) undecodable payload of the given kind."""
    if kind == "bad_marker":
        return b"\xff" + rnd
    if kind == "unknown_variant":
        return bytes([8 + (rnd[0] if rnd else 0) % 243]) + rnd
    if kind == "u64_marker_variant":
        return b"\xfd" + b"\x00" * 8 + b"\x02\x01a\x00"
    if kind == "truncated":
        return valid[: max(0, len(valid) - 1 - (rnd[0] if rnd else 0) % max(1, len(valid)))]
    if kind == "bad_utf8":
        return b"\x00\x02\xff\xfe\x00\x00\x00"
    if kind == "huge_count":
        return b"\x03\xfc\xff\xff\xff\x7f\x00"
    if kind == "huge_vec":
        return b"\x00\x01a\xfd\xff\xff\xff\xff\xff\xff\xff\x1f\x00\x00"
    if kind == "bad_option":
        return b"\x00\x01a\x00\x02\x00"
    if kind == "u128_ts":
        return b"\x02\x01a\xfe" + b"\x00" * 16
    if kind == "empty":
        return b""
    return rnd


@dataclass
class Workload:
    files: dict[str, bytes]
    timestamps: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # what was drawn, for failure reports

    def write(self, wal_dir) -> str:
        os.makedirs(wal_dir, exist_ok=True)
        for name, data in self.files.items():
            with open(os.path.join(wal_dir, name), "wb") as f:
                f.write(data)
        return str(wal_dir)

    def __repr__(self) -> str:  # shown by hypothesis on failure
        sizes = {n: len(d) for n, d in self.files.items()}
        return f"Workload(files={sizes}, steps={self.steps})"


ids_st = st.one_of(st.sampled_from(ID_POOL), st.text(max_size=4))
meta_st = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(
        st.sampled_from(["k", "", "ключ", "k\x00", "z"]),
        st.one_of(st.sampled_from(["", "v", "\x00", "値"]), st.text(max_size=3)),
        max_size=3,
    ),
)


@st.composite
def vectors_st(draw, dim: int) -> bytes:
    words = draw(
        st.lists(
            st.one_of(st.sampled_from(FLOAT_BITS), st.integers(0, 2**32 - 1)),
            min_size=dim,
            max_size=dim,
        )
    )
    return bits(*words)


@st.composite
def workloads(draw, max_steps: int = 30, damage: bool = True) -> Workload:
    """A random WAL directory, as file name -> bytes."""
    created = draw(st.integers(1, 2**40))
    first_seq = 0 if draw(st.integers(0, 5)) else draw(st.integers(1, 300))
    b = LogBuilder(created=created, first_seq=first_seq)
    dim = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 16]))  # 16: rows of whole cache lines
    ts = draw(st.sampled_from(TS_STARTS))
    timestamps: list[int] = []
    seqs: list[int] = []
    steps: list[str] = []
    open_tx: list[int] = []
    next_tx = draw(st.integers(0, 3))

    def tick() -> int:
        nonlocal ts
        ts = max(0, min(2**64 - 1, ts + draw(st.integers(-3, 6))))
        timestamps.append(ts)
        return ts

    def vec() -> bytes:
        d = dim if draw(st.integers(0, 29)) else draw(st.integers(0, 4))
        return draw(vectors_st(d))

    def data_entry(depth: int) -> tuple:
        kind = draw(st.sampled_from(["insert", "insert", "update", "delete", "batch"]))
        if kind == "batch" and depth >= 3:
            kind = "insert"
        if kind == "insert":
            return Ins(draw(ids_st), vec(), draw(meta_st), tick())
        if kind == "update":
            return Upd(draw(ids_st), vec(), draw(meta_st), tick())
        if kind == "delete":
            return Del(draw(ids_st), tick())
        n = draw(st.integers(0, 3))
        return Batch([data_entry(depth + 1) for _ in range(n)], tick())

    def add(entry: tuple, trailing: bytes = b"") -> None:
        r = b.add(entry, trailing=trailing)
        seqs.append(r.seq)

    n_steps = draw(st.integers(0, max_steps))
    damaged = damage and draw(st.booleans())
    kinds = (
        ["data"] * 8
        + ["begin"] * 2
        + ["commit"] * 2
        + ["abort", "checkpoint", "rotate", "restart_same", "restart_new"]
        + (["garbage", "trailing", "bad_file", "short_file", "junk_file", "zeros"]
           if damaged else [])
    )
    for _ in range(n_steps):
        kind = draw(st.sampled_from(kinds))
        steps.append(kind)
        if kind == "data":
            add(data_entry(0))
        elif kind == "begin":
            if open_tx and not draw(st.integers(0, 5)):  # anomaly: begin of an open id
                add(Begin(draw(st.sampled_from(open_tx)), tick()))
            else:
                add(Begin(next_tx, tick()))
                open_tx.append(next_tx)
                next_tx += draw(st.integers(1, 2**20)) if not draw(st.integers(0, 9)) else 1
        elif kind in ("commit", "abort"):
            if open_tx and draw(st.integers(0, 5)):
                tx = draw(st.sampled_from(open_tx))
                open_tx.remove(tx)
            else:  # anomaly: commit/abort of an id not open
                tx = draw(st.integers(0, next_tx + 2))
                if tx in open_tx:
                    open_tx.remove(tx)
            add((kind, tx, tick()))
        elif kind == "checkpoint":
            add(Ckpt(draw(st.integers(0, 2**64 - 1)), tick()))
        elif kind == "rotate":
            created += draw(st.integers(1, 5000))
            b.new_segment(created)
        elif kind == "restart_same":
            b.reopen()
            open_tx.clear()
        elif kind == "restart_new":
            created += draw(st.integers(1, 5000))
            b.reopen(created)
            open_tx.clear()
        elif kind == "garbage":
            g = draw(st.sampled_from(GARBAGE_KINDS))
            steps[-1] = f"garbage:{g}"
            rnd = draw(st.binary(min_size=0, max_size=12))
            r = b.add_payload(garbage_payload(g, rnd, encode_entry(data_entry(0))))
            seqs.append(r.seq)
        elif kind == "zeros":  # a file extended but never written, then written on
            n = draw(st.sampled_from([12, 24, 36, 120, 5, 30]))
            steps[-1] = f"zeros:{n}"
            b.raw(bytes(n))
        elif kind == "trailing":
            add(data_entry(0), trailing=draw(st.binary(min_size=1, max_size=5)))
        elif kind in ("bad_file", "short_file"):
            created += draw(st.integers(1, 5000))
            if kind == "bad_file":
                head = draw(st.sampled_from([b"WALX\x01\x00\x00\x00", b"WALV\x02\x00\x00\x00"]))
                body = head + struct.pack("<Q", created)
                body += encode_record(0, encode_entry(Ins("x", vec(), None, tick())))
            else:
                full = encode_header(created)
                body = draw(
                    st.one_of(
                        st.integers(0, 15).map(lambda n, f=full: f[:n]),
                        st.binary(min_size=1, max_size=15),
                    )
                )
            b.put_file(segment_name(created), body)
            # the writer goes on in a later file
            created += draw(st.integers(1, 5000))
            b.new_segment(created)
        elif kind == "junk_file":  # not a segment name: ignored
            name = draw(st.sampled_from(["wal-1.log", "WAL-0000000000000001.log", "x.txt"]))
            b.put_file(name, draw(st.binary(max_size=20)))
            if name.startswith("wal-"):
                b.put_file("wal-000000000000000G.log", b"junk")

    if damaged and draw(st.integers(0, 2)) == 0:  # a torn tail somewhere
        names = sorted((n for n in b.files if n.startswith("wal-")), key=str.encode)
        name = draw(st.sampled_from(names))
        size = len(b.files[name])
        if size:
            cut = draw(st.integers(0, size - 1))
            b.truncate(name, cut)
            steps.append(f"torn:{name}@{cut}")
    return Workload(
        files={n: bytes(d) for n, d in b.files.items()},
        timestamps=timestamps,
        seqs=seqs,
        steps=steps,
    )


@st.composite
def targets(draw, w: Workload) -> dict:
    """Restore keyword arguments: latest, a time (workload timestamps +-1), or a seq."""
    kind = draw(st.sampled_from(["latest", "latest", "time", "time", "time", "seq", "seq"]))
    kw: dict = {}
    if kind == "time":
        base = draw(st.sampled_from(w.timestamps)) if w.timestamps else draw(st.integers(0, 9))
        kw["to_time"] = max(0, base + draw(st.sampled_from([-1, 0, 0, 1])))
        kw["exclusive"] = draw(st.booleans())
    elif kind == "seq":
        present = sorted(set(w.seqs))
        absent = [max(present, default=-1) + 1, 2**64 - 1]
        kw["to_seq"] = draw(st.sampled_from(present + absent if present else absent))
        kw["exclusive"] = draw(st.booleans())
    return damage_options(draw, kw)


def damage_options(draw, kw: dict) -> dict:
    """``kw`` with the options that change what damage and gaps do drawn too
    (``skip_corrupt``; ``allow_incomplete_history`` one time in three): what every
    target's random restore arguments end with."""
    kw["skip_corrupt"] = draw(st.booleans())
    kw["allow_incomplete_history"] = draw(st.integers(0, 2)) == 0
    return kw


# ----------------------------------------------------------------------------- harness
@dataclass
class View:
    """A restore's result, normalised: what the tests compare."""

    ids: list[str]
    vectors: list[bytes]  # raw LE float32 bytes per id
    metadata: list
    report: dict
    dim: int | None


#: Hypothesis examples of the tests that run the cuda executor (the simulator in CI).
CUDA_EXAMPLES = int(os.environ.get("GPU_PITR_CUDA_EXAMPLES", "40"))
#: The settings of such a test.
CUDA_SETTINGS = settings(
    max_examples=CUDA_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fast_restore_function():
    """``gpu_pitr.restore`` (the function, even if the submodule shadows it), or None."""
    import types

    if os.environ.get("GPU_PITR_TESTS_IMPL") == "reference":
        return None
    try:
        import gpu_pitr

        fn = gpu_pitr.restore
        if isinstance(fn, types.ModuleType):
            fn = fn.restore
    except (ImportError, AttributeError):
        return None
    return fn


def fast_available() -> bool:
    return fast_restore_function() is not None


def restore_ref(wal_dir, **kw) -> View:
    """The reference restore, raising the package's error classes like the fast path."""
    import reference

    from gpu_pitr import errors

    kw.pop("chunk_bytes", None)
    kw.pop("backend", None)
    res = reference.restore(wal_dir, **kw)
    if res.error is not None:
        e = res.error
        raise getattr(errors, e.cls)("reference", file=e.file, offset=e.offset, seq=e.seq)
    return View(res.ids, res.vectors, res.metadata, reference.report_dict(res), res.dim)


def restore_fast(wal_dir, **kw) -> View:
    import numpy as np

    kw.setdefault("backend", os.environ.get("GPU_PITR_TESTS_BACKEND", "cpu"))
    idx = fast_restore_function()(wal_dir, **kw)
    host = idx.to_host() if hasattr(idx, "to_host") else idx
    vecs = np.asarray(host.vectors)
    assert vecs.dtype == np.float32, vecs.dtype
    ids = host.id_list()  # exact: NumPy's fixed-width strings drop trailing NULs
    assert vecs.ndim == 2 and vecs.shape[0] == len(ids), (vecs.shape, len(ids))
    rows = [
        np.ascontiguousarray(vecs[i]).astype("<f4", copy=False).tobytes() for i in range(len(ids))
    ]
    dim = int(vecs.shape[1]) if len(ids) else None
    return View(ids, rows, list(host.metadata), host.report.to_dict(), dim)


def restore_cuda(wal_dir, **kw) -> View:
    """``restore_fast`` on the cuda executor (under the simulator without a GPU). It
    ran there, or fell back to the cpu executor saying why (colliding keys, a batch
    nested past the kernels' stack): never the cpu executor unannounced."""
    kw.setdefault("backend", "cuda")
    view = restore_fast(wal_dir, **kw)
    assert view.report["backend"] == kw["backend"] or view.report["message"].startswith(
        "cuda executor: "), view.report
    return view


#: The restores a hand-written SPEC case runs on: the reference always, and both
#: executors of the package where it is installed.
IMPLS = ["reference"] + (["cpu", "cuda"] if fast_available() else [])


def impl_restore(name: str):
    """The restore function of an ``IMPLS`` name."""
    return {"reference": restore_ref, "cpu": restore_fast, "cuda": restore_cuda}[name]


def dir_state(path) -> dict:
    """``path`` and every entry under it: contents, size, mtime and mode.

    Equal before and after a command when the command left the directory as it was.
    """
    path = Path(path)
    state = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        st_ = entry.lstat()
        data = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else None
        state[str(entry.relative_to(path))] = (data, st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return state


def restore_impl(wal_dir, **kw) -> View:
    """The fast path on the CPU backend if it exists, else the reference."""
    return restore_fast(wal_dir, **kw) if fast_available() else restore_ref(wal_dir, **kw)


def outcome(fn) -> tuple:
    """``(fn(), None)``, or ``(None, err)`` when it raises a ``WalError``."""
    from gpu_pitr.errors import WalError

    try:
        return fn(), None
    except WalError as err:
        return None, err


def same_as_reference(wal, got) -> None:
    """The restore ``got`` of the log ``wal`` (to its end) has the reference's ids,
    vector bytes, metadata and apply counters."""
    import reference

    ref = reference.restore(wal)
    assert ref.error is None
    host = got.to_host()
    assert host.id_list() == ref.ids
    assert [v.tobytes() for v in host.vectors] == ref.vectors
    assert host.metadata == ref.metadata
    for key in ("inserts", "updates", "updates_of_missing", "deletes", "deletes_of_missing"):
        assert getattr(got.report, key) == getattr(ref, key), key


def index_view(index) -> tuple:
    """What two restores that agree share: ids, vector bits and shape, metadata, dim."""
    import numpy as np

    host = index.to_host()
    return (host.id_list(), np.asarray(host.vectors).tobytes(), host.vectors.shape,
            list(host.metadata_json()), host.report.dim)


def restore_answer(outcome) -> tuple:
    """What a restore from snapshots shares with the whole log's (``outcome``: an
    ``outcome()`` pair): the index and the stop, or the error's type and place (the
    counters count only the log read, and with ``read_after_stop=False`` so does the
    rest of the report)."""
    idx, err = outcome
    if err is not None:
        return ("error", type(err).__name__, os.path.basename(err.file or ""), err.offset,
                err.seq)
    s = idx.report.stop
    return ("ok", index_view(idx), s["reason"], os.path.basename(s.get("file") or ""),
            s.get("offset"), s.get("seq"), s.get("timestamp"), s.get("record"))


def target_outcome(wal_dir, **kw) -> tuple:
    """What a restore gives, for comparing it with the restore of another target that
    names the same record (``to_position`` or ``to_transaction`` with ``to_seq``): the
    error's kind and line, or the index and the report but for ``timings``, ``backend``,
    ``message`` and ``target``. The executor asked for (``backend``) must have run: a
    fall-back would compare cpu with cpu."""
    import gpu_pitr
    from gpu_pitr import errors

    try:
        idx = gpu_pitr.restore(wal_dir, **kw)
    except errors.WalError as err:
        return ("error", type(err).__name__, str(err))
    assert idx.report.backend == kw["backend"], idx.report.message
    report = idx.report.to_dict()
    for key in ("timings", "backend", "message", "target"):
        report.pop(key)
    return ("ok", index_view(idx), report)


# What a merged report must carry exactly as the whole restore's does (timings differ).
SHARD_REPORT_KEYS = (
    "target", "stop", "last_commit_timestamp", "segments", "records_read",
    "commit_points_applied", "inserts", "updates", "updates_of_missing", "deletes",
    "deletes_of_missing", "transactions", "anomalies", "torn_tails", "skipped",
    "damage_after_stop", "trailing_bytes", "first_seq", "ids", "dim", "bytes_read",
    "warnings")


def _id_keys(index):
    from gpu_pitr.resolve.idsort import span_keys

    return span_keys(index._id_arena, index._id_offs, index._id_lens)


def check_shards_equal_whole(wal_dir, count: int, **kw) -> str:
    """Restore ``wal_dir`` whole and as ``count`` shards of the ids (``id_shard``);
    the shards joined must equal the whole exactly, and a whole that fails must fail
    every shard the same way. Returns "error" or "equal"."""
    import numpy as np

    import gpu_pitr
    from gpu_pitr.resolve.idshard import IdShard, id_shard_mask, merge_shards

    whole, err = outcome(lambda: gpu_pitr.restore(wal_dir, **kw))
    parts = [outcome(lambda k=k: gpu_pitr.restore(wal_dir, id_shard=(k, count), **kw))
             for k in range(count)]
    if err is not None:
        for got, shard_err in parts:
            assert got is None, f"shard restored where the whole failed: {err}"
            assert type(shard_err) is type(err), (shard_err, err)
            assert (shard_err.file, shard_err.offset, shard_err.seq) == (
                err.file, err.offset, err.seq), (str(shard_err), str(err))
        return "error"
    shards = [got for got, shard_err in parts]
    assert all(s is not None for s in shards), [e for _, e in parts]
    for k, s in enumerate(shards):
        assert s.report.id_shard == {"index": k, "count": count}
        assert np.all(id_shard_mask(_id_keys(s), IdShard(k, count)))
        assert s.report.stop == whole.report.stop
    assert sum(len(s) for s in shards) == len(whole)
    merged = merge_shards(shards[::-1])  # any order
    assert index_view(merged) == index_view(whole)
    got, want = merged.report.to_dict(), whole.report.to_dict()
    assert {k: got[k] for k in SHARD_REPORT_KEYS} == {k: want[k] for k in SHARD_REPORT_KEYS}
    # The same notes; the cuda executor falls back to the cpu in the shards holding two
    # ids of one 64-bit key, as in the whole, and only in those. Each restore names the
    # first reason it met to fall back (a shard without the whole's colliding ids may
    # meet another, later in the log: a batch nested too deep), so those notes are
    # compared as "some shard fell back where the whole did".
    def notes(message):
        every = set(message.split("; "))
        falls = {n for n in every if n.startswith("cuda executor: ")}
        return every - falls, falls

    (got_notes, got_falls), (want_notes, want_falls) = notes(got["message"]), notes(
        want["message"])
    assert got_notes == want_notes, (got["message"], want["message"])
    assert bool(got_falls) == bool(want_falls), (got["message"], want["message"])
    ran = set(got["backend"].split(","))
    assert want["backend"] in ran and ran <= {want["backend"], kw.get("backend", "auto")}
    assert merged.report.id_shard is None
    assert merged.position == whole.position and merged.pending == whole.pending
    return "equal"
