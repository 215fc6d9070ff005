"""Sizes past what small logs reach: wide vectors, offsets past 4 GiB, large counts.

The runs that prove these at full size (logs of 5-12 GB, a segment past 4 GiB, records
past 2**31 bytes) are too large for the suite; the tests here reach the same code with
small logs and lowered thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import hostmem
from gpu_pitr.errors import WalError
from gpu_pitr.executors.cpu import CpuExecutor
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.frame import frame_records
from gpu_pitr.format.layout import BATCH, DELETE, INSERT, RECORD_HEADER_SIZE
from gpu_pitr.format.payload import MAX_BATCH_DEPTH, OK
from gpu_pitr.index import RestoredIndex, json_rows
from gpu_pitr.outputs import write_output
from gpu_pitr.resolve import hostmap


def test_a_refused_reservation_starts_small_in_bytes_whatever_the_row_width():
    """A reservation the OS would refuse starts from a stub of at most
    RESERVE_STUB_BYTES, not 65,536 rows of any width: 65,536 vectors of 100,000
    floats are 24.4 GiB, which an 11.5 GB log of such vectors (10 ids) asked for."""
    shapes = []

    def empty(shape, dtype):
        shapes.append(tuple(shape))
        return np.empty(0, dtype)

    hostmap._reserve((1 << 40, 400_000), np.uint8, 1 << 30, empty)
    hostmap._reserve((1 << 40, 16), np.uint8, 1 << 30, empty)
    hostmap._reserve((1 << 40, 1 << 30), np.uint8, 1 << 30, empty)  # one row passes it
    hostmap._reserve((1 << 40,), np.uint8, 1 << 30, empty)  # an arena
    assert shapes == [(hostmap.RESERVE_STUB_BYTES // 400_000, 400_000),
                      (hostmap.RESERVE_STUB_ROWS, 16), (1, 1 << 30),
                      (hostmap.RESERVE_STUB_ROWS,)]


def test_wide_vectors_restore_when_the_reservation_is_refused(tmp_path, monkeypatch):
    """A log too large for its rows to be reserved (here: any) with vectors of 20,000
    floats: the rows start from a stub of bytes, not of 65,536 rows (5.2 GB asked for,
    an out-of-memory error), and grow as ids need them."""
    real_init = hostmap.HostMap.__init__

    def init(self, *args, **kw):
        real_init(self, *args, **kw)
        self._limit = 0  # every reservation refused, as for a log past half the RAM

    asked = []
    real_empty = hostmem.aligned_empty

    def aligned_empty(shape, dtype):
        asked.append(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return real_empty(shape, dtype)

    monkeypatch.setattr(hostmap.HostMap, "__init__", init)
    monkeypatch.setattr(hostmap, "aligned_empty", aligned_empty)
    dim = 20_000
    log = w.LogBuilder()
    for i in range(6):
        vec = np.full(dim, i, np.float32)
        vec[-1] = -i
        log.add(w.Upd(f"k{i % 3}", vec.tolist(), None, ts=i))
    wal = log.write(tmp_path / "wal")
    got = w.restore_fast(wal, backend="cpu")
    ref = w.restore_ref(wal)
    assert (got.ids, got.vectors, got.metadata) == (ref.ids, ref.vectors, ref.metadata)
    assert asked and max(asked) <= 1 << 30


def _batch_nested(depth: int) -> tuple:
    """A batch of two inserts, nested ``depth`` batches deep."""
    entry = w.Batch([w.Ins("a", [1.0, 2.0], {"k": "v"}, ts=5), w.Del("b", ts=6)], ts=7)
    for level in range(depth - 1):
        entry = w.Batch([entry], ts=8 + level)
    return entry


@pytest.mark.parametrize("depth", [1, 3, MAX_BATCH_DEPTH + 5])
def test_a_batchs_stack_does_not_grow_with_its_payload_length(depth):
    """The cpu executor decodes a batch with a stack as deep as its nesting needs, not
    one of ``stack_for(payload length)`` slots: 4 bytes a byte of payload, 8.7 GB for a
    2.2 GB batch of 540,000 inserts (out of memory under a 10 GB address-space limit).
    Here the payload says it is 2**47 bytes long (its entry ends long before: what
    follows would be trailing bytes): a stack of that bound is 512 TiB."""
    payload = w.encode_entry(_batch_nested(depth))
    buf = np.frombuffer(w.encode_record(0, payload) + bytes(64), np.uint8).copy()
    cols = ChunkColumns(4)
    n, _, _ = frame_records(buf, 0, len(buf) - 64, cols.off, cols.length, cols.seq)
    assert n == 1
    cols.length[0] = 1 << 47
    CpuExecutor(len(buf)).decode(buf, cols, 0, 1)
    outer_ts = 7 if depth == 1 else 8 + depth - 2
    assert (cols.status[0], cols.kind[0], cols.ts[0], cols.nent[0]) == (OK, BATCH, outer_ts, 2)
    assert cols.stop[0] == RECORD_HEADER_SIZE + len(payload)
    e = cols.efirst[0]
    assert list(cols.e_op[e:e + 2]) == [INSERT, DELETE]
    assert [bytes(buf[o:o + k]) for o, k in zip(cols.e_id_off[e:e + 2],
                                                 cols.e_id_len[e:e + 2], strict=True)] == [
        b"a", b"b"]
    assert cols.e_dim[e] == 2
    assert list(buf[cols.e_vec_off[e]:cols.e_vec_off[e] + 8].view("<f4")) == [1.0, 2.0]


def _two_ids(tmp_path):
    log = w.LogBuilder()
    log.add(w.Ins("a" * 10, [1.0], ts=1))
    log.add(w.Ins("b", [2.0], {"k": "v" * 20}, ts=2))
    return gpu_pitr.restore(log.write(tmp_path / "wal"), backend="cpu")


@pytest.mark.parametrize("member", ["ids", "metadata"])
def test_an_npz_numpy_cannot_hold_is_refused_in_one_line(tmp_path, monkeypatch, member):
    """An id (or metadata text) of 2**29 characters or more has no NumPy unicode dtype
    (``np.dtype("<U536870912")`` is a TypeError): an .npz of it is refused with a
    WalError naming the output, before anything is written, not a traceback (a 600 MB
    id did that). Other formats hold it. Widths faked: such ids are 512 MiB."""
    index = _two_ids(tmp_path)
    if member == "ids":
        monkeypatch.setattr(RestoredIndex, "ids_width", lambda self: (2**31 - 1) // 4 + 1)
        want = r"an id of 536,870,912 characters.*id 'aaaaaaaaaa'"
    else:
        real = RestoredIndex.metadata_texts

        def texts(self):
            (arena, offs, lens, _), which = real(self)
            return (arena, offs, lens, (2**31 - 1) // 4 + 1), which

        monkeypatch.setattr(RestoredIndex, "metadata_texts", texts)
        want = r"a metadata text of 536,870,912 characters.*id 'b'"
    out = tmp_path / "o.npz"
    with pytest.raises(WalError, match=want) as err:
        write_output(index, out, "npz")
    assert err.value.file == str(out)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]


def test_ids_numpy_cannot_hold_raise_a_value_error(tmp_path, monkeypatch):
    """``index.ids`` (and ``metadata_json``) of a row NumPy has no dtype for: a
    ValueError saying so, raised before the rows' code points are allocated."""
    index = _two_ids(tmp_path)
    monkeypatch.setattr(RestoredIndex, "ids_width", lambda self: (2**31 - 1) // 4 + 1)
    with pytest.raises(ValueError, match="an id of 536,870,912 characters"):
        index.ids_rows(0, 2)
    assert list(json_rows((*index.metadata_texts()[0][:3], 30), np.array([0, -1]))) == [
        '{"k":"vvvvvvvvvvvvvvvvvvvv"}', "null"]
    with pytest.raises(ValueError, match="a metadata text of 536,870,912 characters"):
        json_rows((*index.metadata_texts()[0][:3], (2**31 - 1) // 4 + 1), np.array([0]))


@pytest.mark.parametrize("fmt", ["parquet", "snapshot"])
def test_metadata_one_arrow_array_cannot_hold_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                     fmt):
    """A map whose keys or values pass one Arrow array's 32-bit offsets (more than 2 GiB,
    which one record can hold) has no ``map<string, string>`` array: a .parquet or
    snapshot of it is a WalError naming the output and the id, not a ValueError
    traceback. The limit lowered: such a map is 2 GiB."""
    pytest.importorskip("pyarrow")
    from gpu_pitr.snapshot import arrow

    index = _two_ids(tmp_path)
    monkeypatch.setattr(arrow, "ARRAY_LIMIT", 15)
    out = tmp_path / ("o.parquet" if fmt == "parquet" else "snap")
    with pytest.raises(WalError, match=r"metadata of id 'b' alone passes .* \(15 pairs") as err:
        write_output(index, out, fmt)
    assert err.value.file == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]
