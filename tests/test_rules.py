"""Rules from docs/semantics.md and docs/damage.md that had no dedicated test.

Each restore runs on both executors (``backend="cpu"`` and ``backend="cuda"``; in CI
the kernels run in Numba's CUDA simulator, tests/conftest.py). Expected values are
written out by hand.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import workloads as w
from workloads import (
    Abort,
    Batch,
    Begin,
    Ckpt,
    Commit,
    Del,
    Ins,
    LogBuilder,
    Upd,
    dir_state,
    f32,
)

import gpu_pitr
from gpu_pitr.errors import (
    CorruptRecordError,
    DimensionMismatchError,
    TargetNotFoundError,
)
from gpu_pitr.executors import cuda as cuda_executor

BACKENDS = ["cpu", "cuda"]
# The error-precedence rules are also stated by the reference restore: check it there too.
ERROR_IMPLS = [*BACKENDS, "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def restore(wal_dir, backend, **kw) -> w.View:
    if backend == "reference":
        return w.restore_ref(wal_dir, **kw)
    return w.restore_fast(wal_dir, backend=backend, **kw)


def base(path) -> str:
    return os.path.basename(str(path))


def state(view) -> dict:
    return {i: (v, m) for i, v, m in zip(view.ids, view.vectors, view.metadata, strict=True)}


def stop_of(view) -> dict:
    s = dict(view.report["stop"])
    if s.get("file") is not None:
        s["file"] = base(s["file"])
    return {k: s.get(k) for k in ("reason", "file", "offset", "seq", "timestamp", "record")}


def assert_error_names(err, cls, rec) -> None:
    """``err`` is exactly ``cls`` and names ``rec``: its file, its seq, an offset inside it."""
    assert type(err) is cls, repr(err)
    assert base(err.file) == rec.file, (err.file, rec)
    assert err.seq == rec.seq, (err.seq, rec)
    assert err.offset is not None and rec.offset <= err.offset < rec.end, (err.offset, rec)


# ----------------------------------------------------------------------------- rule 1
def test_transaction_open_at_a_time_target_stop_point_counts_as_in_flight(backend, tmp_path):
    b = LogBuilder()
    b.add(Begin(1, 1))  # seq 0
    b.add(Ins("a", [1.0], {"t": "x"}, 2))  # seq 1, belongs to transaction 1
    b.add(Ins("b", [2.0], None, 5))  # seq 2: 1 is still open, so b belongs to it too
    commit = b.add(Commit(1, 20))  # seq 3
    d = b.write(tmp_path / "wal")
    v = restore(d, backend, to_time=10)
    # SPEC §3: a data record written while a transaction is open belongs to it, so b is
    # not an autocommit record here, and nothing is committed by T=10.
    assert state(v) == {}
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 1}
    assert v.report["commit_points_applied"] == 0
    assert stop_of(v) == {
        "reason": "target",
        "file": commit.file,
        "offset": commit.offset,
        "seq": 3,
        "timestamp": 20,
        "record": "CommitTransaction",
    }


def test_transaction_open_at_a_time_target_with_an_autocommit_record_before_it(backend, tmp_path):
    # The brief's case: b is written before the Begin so that it is its own commit point.
    b = LogBuilder()
    b.add(Ins("b", [2.0], None, 5))  # seq 0: autocommit, ts 5
    b.add(Begin(1, 6))  # seq 1
    b.add(Ins("a", [1.0], None, 7))  # seq 2: in transaction 1
    b.add(Del("b", 8))  # seq 3: in transaction 1
    commit = b.add(Commit(1, 20))  # seq 4
    b.add(Ins("c", [3.0], None, 21))  # seq 5
    d = b.write(tmp_path / "wal")
    v = restore(d, backend, to_time=10)
    assert state(v) == {"b": (f32(2.0), None)}
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 1}
    assert v.report["commit_points_applied"] == 1
    assert (v.report["inserts"], v.report["deletes"]) == (1, 0)
    assert stop_of(v) == {
        "reason": "target",
        "file": commit.file,
        "offset": commit.offset,
        "seq": 4,
        "timestamp": 20,
        "record": "CommitTransaction",
    }
    # Past the commit the same transaction is committed, not in flight.
    v = restore(d, backend, to_time=20)
    assert state(v) == {"a": (f32(1.0), None)}
    assert v.report["transactions"] == {"committed": 1, "aborted": 0, "in_flight_discarded": 0}


def test_two_transactions_open_at_a_time_target_stop_point(backend, tmp_path):
    b = LogBuilder()
    b.add(Begin(1, 1))
    b.add(Ins("a", [1.0], None, 2))
    b.add(Begin(2, 3))
    b.add(Ins("b", [2.0], None, 4))
    b.add(Abort(2, 5))  # aborted before the stop
    b.add(Begin(3, 6))
    b.add(Ins("c", [3.0], None, 7))
    stop = b.add(Commit(3, 30))  # first commit point past T=10
    b.add(Commit(1, 31))
    v = restore(b.write(tmp_path / "wal"), backend, to_time=10)
    assert state(v) == {}
    assert v.report["transactions"] == {"committed": 0, "aborted": 1, "in_flight_discarded": 2}
    assert (stop_of(v)["offset"], stop_of(v)["seq"]) == (stop.offset, stop.seq)


# ----------------------------------------------------------------------------- rule 2
SEQ_TARGET_GARBAGE = {
    "bad_marker": b"\xff\x01\x02",
    "truncated_insert": b"\x00\x05ab",  # the variant (Insert) decodes, the rest does not
    "bad_utf8_id": w.garbage_payload("bad_utf8", b"", b""),
}


@pytest.mark.parametrize("payload", SEQ_TARGET_GARBAGE.values(), ids=SEQ_TARGET_GARBAGE.keys())
def test_undecodable_seq_target_record_with_skip_corrupt_is_skipped_and_stops_there(
    backend, tmp_path, payload
):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    b.add(Ins("x", [9.0], None, 2))  # seq 1
    b.add(Del("x", 3))  # seq 2
    bad = b.add_payload(payload)  # seq 3
    b.add(Ins("b", [2.0], None, 4))  # seq 4
    d = b.write(tmp_path / "wal")

    v = restore(d, backend, to_seq=3, skip_corrupt=True)
    assert state(v) == {"a": (f32(1.0), None)}
    assert v.report["commit_points_applied"] == 3
    skipped = v.report["skipped"]
    assert len(skipped) == 1, skipped
    assert (base(skipped[0]["file"]), skipped[0]["seq"]) == (bad.file, 3)
    assert bad.offset <= skipped[0]["offset"] < bad.end
    assert v.report["damage_after_stop"] == []
    assert stop_of(v) == {
        "reason": "target",
        "file": bad.file,
        "offset": bad.offset,
        "seq": 3,
        "timestamp": None,
        "record": None,
    }

    with pytest.raises(CorruptRecordError) as info:
        restore(d, backend, to_seq=3)
    assert_error_names(info.value, CorruptRecordError, bad)
    line = str(info.value)
    assert "\n" not in line and bad.file in line and f"offset {info.value.offset}" in line


def test_undecodable_seq_target_inside_a_transaction_with_skip_corrupt(backend, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    b.add(Begin(1, 2))  # seq 1
    b.add(Ins("b", [2.0], None, 3))  # seq 2
    bad = b.add_payload(b"\xff")  # seq 3, inside transaction 1
    b.add(Commit(1, 4))  # seq 4
    v = restore(b.write(tmp_path / "wal"), backend, to_seq=3, skip_corrupt=True)
    assert state(v) == {"a": (f32(1.0), None)}
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 1}
    assert (stop_of(v)["seq"], stop_of(v)["offset"], stop_of(v)["timestamp"]) == (
        3,
        bad.offset,
        None,
    )


# ----------------------------------------------------------------------------- rule 3
@pytest.mark.parametrize("impl", ERROR_IMPLS)
def test_dimension_mismatch_before_a_corrupt_record_wins(impl, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    mismatch = b.add(Ins("b", [1.0, 2.0], None, 2))
    b.add_payload(b"\xff")
    b.add(Ins("c", [3.0], None, 3))
    with pytest.raises(DimensionMismatchError) as info:
        restore(b.write(tmp_path / "wal"), impl)
    assert_error_names(info.value, DimensionMismatchError, mismatch)


@pytest.mark.parametrize("impl", ERROR_IMPLS)
def test_corrupt_record_before_a_dimension_mismatch_wins(impl, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(b"\xff")
    b.add(Ins("b", [1.0, 2.0], None, 2))
    b.add(Ins("c", [3.0], None, 3))
    with pytest.raises(CorruptRecordError) as info:
        restore(b.write(tmp_path / "wal"), impl)
    assert_error_names(info.value, CorruptRecordError, bad)


@pytest.mark.parametrize("impl", ERROR_IMPLS)
def test_transaction_dimension_mismatch_counts_at_its_commit(impl, tmp_path):
    # The mismatching record is written before the corrupt one, but it is applied at the
    # Commit, after the corrupt record: the corrupt record is the first fatal problem.
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Begin(1, 2))
    mismatch = b.add(Ins("b", [1.0, 2.0], None, 3))
    bad = b.add_payload(b"\xff")
    b.add(Commit(1, 4))
    d = b.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError) as info:
        restore(d, impl)
    assert_error_names(info.value, CorruptRecordError, bad)
    # Skipping the corrupt record leaves the mismatch, named at the data record.
    with pytest.raises(DimensionMismatchError) as info:
        restore(d, impl, skip_corrupt=True)
    assert_error_names(info.value, DimensionMismatchError, mismatch)


@pytest.mark.parametrize("impl", ERROR_IMPLS)
def test_missing_seq_target_loses_to_a_corrupt_record(impl, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))  # seq 0
    b.add(Ins("b", [2.0], None, 2))  # seq 1
    bad = b.add_payload(b"\x00\x05ab")  # seq 2
    b.add(Ins("c", [3.0], None, 3))  # seq 3
    d = b.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError) as info:
        restore(d, impl, to_seq=99)
    assert_error_names(info.value, CorruptRecordError, bad)
    # With the corrupt record skipped, what is left is the missing target.
    with pytest.raises(TargetNotFoundError):
        restore(d, impl, to_seq=99, skip_corrupt=True)


@pytest.mark.parametrize("impl", ERROR_IMPLS)
def test_missing_seq_target_on_a_clean_log_is_target_not_found(impl, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Begin(1, 2))
    b.add(Ins("b", [2.0], None, 3))
    b.add(Commit(1, 4))
    d = b.write(tmp_path / "wal")
    with pytest.raises(TargetNotFoundError) as info:
        restore(d, impl, to_seq=4)
    assert type(info.value) is TargetNotFoundError
    if impl != "reference":
        assert "sequence number 4" in str(info.value)


# ----------------------------------------------------------------------------- rule 4
def test_markers_nested_in_a_batch_carry_no_data_and_open_no_transaction(backend, tmp_path):
    b = LogBuilder()
    b.add(
        Batch(
            [
                Ins("a", [1.0], {"k": "a"}, 1),
                Ckpt(7, 1),
                Begin(5, 1),  # would swallow e below if it opened a transaction
                Ins("b", [2.0], None, 1),
                Commit(5, 1),
                Begin(6, 1),  # never committed: still nothing in flight
                Abort(9, 1),  # not open: no anomaly either, it is nested
                Batch([Ckpt(8, 1), Upd("a", [3.0], None, 1)], 1),
                Ins("c", [4.0], None, 1),
            ],
            3,
        )
    )
    b.add(Ins("e", [5.0], None, 4))
    v = restore(b.write(tmp_path / "wal"), backend)
    assert state(v) == {
        "a": (f32(3.0), {"k": "a"}),
        "b": (f32(2.0), None),
        "c": (f32(4.0), None),
        "e": (f32(5.0), None),
    }
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 0}
    assert v.report["anomalies"] == []
    assert v.report["commit_points_applied"] == 2
    assert (v.report["inserts"], v.report["updates"], v.report["deletes"]) == (4, 1, 0)
    assert v.report["skipped"] == [] and v.report["damage_after_stop"] == []


def test_a_transaction_begun_inside_a_batch_is_not_open_at_top_level(backend, tmp_path):
    b = LogBuilder()
    b.add(Batch([Begin(5, 1), Ins("a", [1.0], None, 1)], 1))
    b.add(Ins("b", [2.0], None, 2))
    b.add(Commit(5, 3))  # 5 was never opened at top level: an anomaly
    v = restore(b.write(tmp_path / "wal"), backend)
    assert state(v) == {"a": (f32(1.0), None), "b": (f32(2.0), None)}
    assert v.report["transactions"] == {"committed": 0, "aborted": 0, "in_flight_discarded": 0}
    assert len(v.report["anomalies"]) == 1
    assert v.report["commit_points_applied"] == 2


# ----------------------------------------------------------------------------- SPEC §3's table
@pytest.mark.parametrize("chunk", [None, 64], ids=["one_chunk", "c64"])
def test_the_operation_table_holds_on_both_executors(backend, tmp_path, chunk):
    """Each row of SPEC §3's operation table, written out by hand, on both executors:
    test_semantics.py states them on the cpu executor only, and the cuda executor's own
    replay (kernels/resolve.py) was held to them mostly by comparisons with the cpu (random
    logs, the corpora). With 64-byte chunks an id's earlier state comes from an earlier
    chunk (the device map's prior row), not from the same run of entries."""

    def v(x):  # 8 floats: a record takes over 32 bytes, so a 64-byte chunk holds one
        return [x] * 8

    b = LogBuilder()
    b.add(Ins("a", v(1.0), {"k": "a"}, 1))
    b.add(Ins("a", v(2.0), None, 2))  # Insert: metadata absent if None, id existing or not
    b.add(Ins("b", v(3.0), {"k": "b"}, 3))
    b.add(Upd("b", v(4.0), None, 4))  # Update with None: keeps the previous metadata
    b.add(Ins("c", v(5.0), {"k": "c"}, 5))
    b.add(Upd("c", v(6.0), {}, 6))  # Update with Some: replaces it, an empty map too
    b.add(Upd("d", v(7.0), None, 7))  # Update of a missing id: created, counted
    b.add(Ins("e", v(8.0), {"k": "e"}, 8))
    b.add(Del("e", 9))
    b.add(Upd("e", v(9.0), None, 10))  # after a Delete: the old metadata is not revived
    b.add(Del("z", 11))  # Delete of a missing id: counted, no effect
    b.add(Ins("f", v(10.0), {}, 12))  # an empty map is not absent
    b.add(Batch([Ins("g", v(11.0), {"k": "g"}, 13), Upd("g", v(12.0), None, 13),
                 Del("h", 13), Ins("h", v(13.0), None, 13), Upd("h", v(14.0), {"x": "y"}, 13)],
                13))  # a Batch: its entries in order, as one step
    got = restore(b.write(tmp_path / "wal"), backend, chunk_bytes=chunk)
    assert state(got) == {
        "a": (f32(*v(2.0)), None),
        "b": (f32(*v(4.0)), {"k": "b"}),
        "c": (f32(*v(6.0)), {}),
        "d": (f32(*v(7.0)), None),
        "e": (f32(*v(9.0)), None),
        "f": (f32(*v(10.0)), {}),
        "g": (f32(*v(12.0)), {"k": "g"}),
        "h": (f32(*v(14.0)), {"x": "y"}),
    }
    r = got.report
    assert (r["inserts"], r["updates"], r["updates_of_missing"]) == (8, 6, 2)
    assert (r["deletes"], r["deletes_of_missing"], r["commit_points_applied"]) == (3, 2, 13)


# ----------------------------------------------------------------------------- rule 5
def cuda_vs_cpu(wal_dir, **kw):
    cpu = gpu_pitr.restore(wal_dir, backend="cpu", **kw).to_host()
    cuda = gpu_pitr.restore(wal_dir, backend="cuda", **kw).to_host()
    assert cuda.id_list() == cpu.id_list()
    assert cuda.vectors.dtype == np.float32 and cuda.vectors.shape == cpu.vectors.shape
    assert cuda.vectors.tobytes() == cpu.vectors.tobytes()
    assert cuda.metadata == cpu.metadata
    rc, rg = cpu.report.to_dict(), cuda.report.to_dict()
    for r in (rc, rg):
        for key in ("timings", "backend", "message"):
            r.pop(key)
    assert rg == rc
    return cpu, cuda


def test_batch_nested_100_levels_falls_back_to_cpu_with_the_same_result(tmp_path):
    inner = Batch([Ins("deep", [100.0], {"d": "100"}, 1)], 1)
    for level in range(99, 0, -1):
        extra = [Ins(f"l{level:03d}", [float(level)], None, 1)] if level % 25 == 0 else []
        inner = Batch([*extra, inner], 1)
    b = LogBuilder()
    b.add(Ins("top", [0.5], None, 1))
    b.add(inner)
    b.add(Del("l050", 2))
    cpu, cuda = cuda_vs_cpu(b.write(tmp_path / "wal"))
    assert cpu.id_list() == ["deep", "l025", "l075", "top"]
    assert cpu.vectors.tobytes() == f32(100.0, 25.0, 75.0, 0.5)
    assert cpu.metadata == [{"d": "100"}, None, None, None]
    assert cuda.report.backend == "cpu"
    assert "restored on the cpu executor" in cuda.report.message
    assert "nested" in cuda.report.message


def test_a_batch_nested_64_levels_stays_on_cuda(tmp_path):
    # Within the kernels' stack: no fallback, the cuda executor gives the result itself.
    inner = Ins("x", [1.0], None, 1)
    for _ in range(63):
        inner = Batch([inner], 1)
    b = LogBuilder()
    b.add(inner)
    cpu, cuda = cuda_vs_cpu(b.write(tmp_path / "wal"))
    assert cpu.id_list() == ["x"]
    assert cuda.report.backend == "cuda"
    assert "cpu executor" not in cuda.report.message


def test_every_key_colliding_still_keeps_ids_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_executor, "KEY_MASK", np.uint64(0))
    b = LogBuilder()
    b.add(Ins("a", [1.0, 1.0], {"k": "1"}, 1))
    b.add(Ins("a\x00", [2.0, 2.0], None, 2))
    b.add(Ins("b", [3.0, 3.0], None, 3))
    b.add(Batch([Ins("c", [4.0, 4.0], None, 4), Upd("b", [5.0, 5.0], {"u": ""}, 4)], 4))
    b.add(Del("a", 5))
    b.add(Ins("a", [6.0, 6.0], None, 6))
    b.add(Del("c", 7))
    b.add(Upd("d", [7.0, 7.0], None, 8))
    cpu, cuda = cuda_vs_cpu(b.write(tmp_path / "wal"))
    assert cpu.id_list() == ["a", "a\x00", "b", "d"]
    assert cpu.vectors.tobytes() == f32(6.0, 6.0, 2.0, 2.0, 5.0, 5.0, 7.0, 7.0)
    assert cpu.metadata == [None, None, {"u": ""}, None]
    assert "restored on the cpu executor" in cuda.report.message


# ----------------------------------------------------------------------------- CLI helpers
def cli_restore(wal_dir, out) -> subprocess.CompletedProcess:
    before = dir_state(wal_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_pitr", "restore", str(wal_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dir_state(wal_dir) == before
    return proc


# ----------------------------------------------------------------------------- rule 6
def test_npz_metadata_json_text_is_exact(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], {"b": "2", "a": "é"}, 1))  # written in this key order
    b.add(Ins("b", [2.0], None, 2))
    b.add(Ins("c", [3.0], {}, 3))
    b.add(Ins("d", [4.0], {"z": "\x00", "": "日本", 'y"': "\\"}, 4))
    wal = b.write(tmp_path / "wal")
    out = tmp_path / "o.npz"
    proc = cli_restore(wal, out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        assert npz["metadata"].dtype.kind == "U"
        assert npz["metadata"].tolist() == [
            '{"a":"é","b":"2"}',
            "null",
            "{}",
            '{"":"日本","y\\"":"\\\\","z":"\\u0000"}',
        ]
        assert npz["ids"].tolist() == ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------- rule 7
def test_id_with_trailing_nul_is_exact_in_id_list(backend, tmp_path):
    b = LogBuilder()
    b.add(Ins("a\x00", [2.0], None, 1))
    b.add(Ins("a", [1.0], None, 2))
    b.add(Ins("\x00", [3.0], None, 3))
    idx = gpu_pitr.restore(b.write(tmp_path / "wal"), backend=backend).to_host()
    assert idx.id_list() == ["\x00", "a", "a\x00"]
    assert idx.vectors.tobytes() == f32(3.0, 1.0, 2.0)


def test_cli_refuses_ids_the_npz_cannot_hold(tmp_path):
    # NumPy unicode arrays drop trailing NULs: "a\x00" would be written as a second "a".
    # Silent data loss is wrong; the CLI must fail with one line naming the id.
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("a\x00", [2.0], None, 2))
    wal = b.write(tmp_path / "wal")
    out = tmp_path / "o.npz"
    proc = cli_restore(wal, out)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu-pitr: error: ")
    assert repr("a\x00") in lines[0] or json.dumps("a\x00") in lines[0], lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "wal"] == []  # no temp file left


def test_cli_keeps_ids_with_inner_nuls(tmp_path):
    # Only trailing NULs are lost by NumPy: an inner NUL is stored exactly.
    b = LogBuilder()
    b.add(Ins("a\x00b", [1.0], None, 1))
    b.add(Ins("a", [2.0], None, 2))
    wal = b.write(tmp_path / "wal")
    out = tmp_path / "o.npz"
    proc = cli_restore(wal, out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        assert npz["ids"].tolist() == ["a", "a\x00b"]
        assert npz["vectors"].tobytes() == f32(2.0, 1.0)


# ----------------------------------------------------------------------------- rule 8
N_STEPS = 120


def mixed_workload(seed: int = 1234) -> LogBuilder:
    """N_STEPS records: data, transactions (committed, aborted, open), nested
    batches, deletes, metadata, a second segment and a writer restart."""
    rnd = random.Random(seed)
    ids = [f"id{i}" for i in range(24)] + ["", "a\x00", "é", "日本"]
    b = LogBuilder()
    ts = 1000
    open_tx: list[int] = []
    next_tx = 1

    def vec():
        return [rnd.choice([0.0, -0.0, 1.5, float("inf"), rnd.uniform(-9, 9)]) for _ in range(2)]

    def meta():
        r = rnd.random()
        if r < 0.4:
            return None
        if r < 0.5:
            return {}
        return {rnd.choice(["k", "m", "ключ"]): rnd.choice(["", "v", str(rnd.randint(0, 99))])}

    def data(depth=0):
        nonlocal ts
        ts += rnd.randint(0, 3)
        r = rnd.random()
        if r < 0.45:
            return Ins(rnd.choice(ids), vec(), meta(), ts)
        if r < 0.65:
            return Upd(rnd.choice(ids), vec(), meta(), ts)
        if r < 0.85 or depth >= 2:
            return Del(rnd.choice(ids), ts)
        return Batch([data(depth + 1) for _ in range(rnd.randint(0, 4))], ts)

    for step in range(N_STEPS):
        r = rnd.random()
        if step == N_STEPS // 2:
            b.new_segment(0x6000000)
        if step == N_STEPS * 3 // 4:
            b.reopen()
            open_tx.clear()
        if r < 0.7:
            b.add(data())
        elif r < 0.8:
            b.add(Begin(next_tx, ts))
            open_tx.append(next_tx)
            next_tx += 1
        elif r < 0.9 and open_tx:
            b.add(Commit(open_tx.pop(rnd.randrange(len(open_tx))), ts + rnd.randint(0, 2)))
        elif r < 0.95 and open_tx:
            b.add(Abort(open_tx.pop(), ts))
        else:
            b.add(Ckpt(step, ts))
    return b


def normalised(idx) -> tuple:
    host = idx.to_host()
    report = host.report.to_dict()
    for key in ("timings", "backend", "message"):
        report.pop(key)
    return host.id_list(), host.vectors.shape, host.vectors.tobytes(), host.metadata, report


def test_result_is_the_same_for_every_chunk_size_and_executor(tmp_path):
    wal = mixed_workload().write(tmp_path / "wal")
    results = {
        (backend, chunk): normalised(gpu_pitr.restore(wal, backend=backend, chunk_bytes=chunk))
        for backend in BACKENDS
        for chunk in (64, 4096, None)
    }
    first = results[("cpu", None)]
    ids, shape, _, _, report = first
    assert len(ids) > 5 and shape == (len(ids), 2)  # the workload restores something
    assert report["records_read"] == N_STEPS and report["segments"] == 2
    assert report["transactions"]["committed"] > 0 and report["deletes"] > 0
    assert report["transactions"]["in_flight_discarded"] > 0
    assert any(m for m in first[3]) and None in first[3]  # metadata, empty and absent
    for key, result in results.items():
        assert result == first, key


def test_many_transactions_open_at_once(backend, tmp_path):
    """Thousands of transactions open together (a writer that leaks them), closed out
    of order, with ids begun again after they closed, begun twice while open, and
    closed twice: each begin, commit and abort finds its own transaction (a table by
    id, not a search of the open ones), as the reference restore does."""
    rng = random.Random(5)
    b = LogBuilder()
    n = 3000
    for t in range(n):
        b.add(Begin(t, t))
        b.add(Ins(f"id{t}", [float(t)], None, t))
        if t % 500 == 7:
            b.add(Begin(t, t))  # already open: an anomaly
    closing = list(range(n))
    rng.shuffle(closing)
    for j, t in enumerate(closing[: 2 * n // 3]):
        b.add((Commit if t % 3 else Abort)(t, n + j))
        if j % 400 == 0:
            b.add(Commit(t, n + j))  # closed already: an anomaly
            b.add(Begin(t, n + j))  # the same id, open again
            b.add(Ins(f"again{t}", [-1.0], None, n + j))
            b.add(Commit(t, n + j))
    wal = b.write(tmp_path / "wal")
    got = restore(wal, backend, chunk_bytes=4096)
    want = restore(wal, "reference")
    assert state(got) == state(want) and len(got.ids) > 1000
    def where(report):
        return [(base(a["file"]), a["offset"], a["seq"]) for a in report["anomalies"]]

    assert where(got.report) == where(want.report) and len(where(want.report)) == 6 + 5
    assert got.report["transactions"] == want.report["transactions"]
    assert got.report["transactions"]["in_flight_discarded"] == n - 2 * n // 3


# ------------------------------------------------------------ carried records, bytes
@pytest.mark.parametrize("chunk", [64, 300, 4096])
def test_records_carried_through_many_chunks_keep_every_byte(backend, tmp_path, chunk):
    """The records of transactions open across many chunks are carried from buffer to
    buffer: every byte of them (ids, vectors, metadata, the stamp of the commit that
    applies them) arrives as written, whatever the chunk size, with two transactions
    open at once and autocommit records between their records."""
    b = LogBuilder()
    b.add(Begin(1, 10))
    b.add(Begin(2, 11))
    for i in range(60):
        ident = f"id-{i:03d}-{'é' * (i % 7)}"
        b.add(Ins(ident, [float(i), -float(i), 0.5 + i], {"k": "v" * (i % 13)} if i % 3 else None,
                  100 + i))
    b.add(Commit(2, 500))  # the most recently begun takes the data records
    b.add(Ins("plain", [9.0, 9.0, 9.0], None, 501))  # autocommit: 1 is still open...
    b.add(Commit(1, 502))
    got = restore(b.write(tmp_path / "wal"), backend, chunk_bytes=chunk)
    want = {f"id-{i:03d}-{'é' * (i % 7)}": (f32(i, -float(i), 0.5 + i),
                                             {"k": "v" * (i % 13)} if i % 3 else None)
            for i in range(60)}
    assert state(got) == want | {"plain": (f32(9, 9, 9), None)}
    assert got.report["last_commit_timestamp"] == 502


def test_a_transaction_open_across_many_pieces_is_not_decoded_again_with_each(
        backend, tmp_path, monkeypatch):
    """Regression: the records of an open transaction were carried into every chunk and
    decoded again there, quadratic in the transaction's size (one of 281 MB: 2.5 s at
    the default chunk). Pieces are now gathered behind the carried records while these
    outweigh what was read since: each record is decoded a bounded number of times,
    and the result is the reference's."""
    from gpu_pitr import pipeline

    b = LogBuilder()
    b.add(Ins("before", [1.0, 2.0], None, 1))
    b.add(Begin(7, 2))
    n = 2000
    for i in range(n):
        b.add(Ins(f"t{i:05d}", [float(i), -float(i)], {"i": str(i)} if i % 2 else None, 3))
        if i == n // 2:
            b.add(Begin(8, 3))  # a second one, committed while 7 stays open
            b.add(Upd("before", [5.0, 6.0], None, 3))
            b.add(Commit(8, 4))
    b.add(Commit(7, 5))
    b.add(Del("t00003", 6))
    wal = b.write(tmp_path / "wal")
    decoded = []
    chunk = pipeline._Restore._chunk

    def counted(self, first, end):
        decoded.append(end)  # rows 0..end-1 are decoded: carried ones again
        return chunk(self, first, end)

    monkeypatch.setattr(pipeline._Restore, "_chunk", counted)
    got = restore(wal, backend, chunk_bytes=1024)
    records = n + 6
    assert len(decoded) > 3 and sum(decoded) < 4 * records, (len(decoded), sum(decoded))
    assert state(got) == state(restore(wal, "reference"))
    assert len(got.ids) == n and got.report["transactions"]["committed"] == 2  # 1 + n - 1


def test_every_test_docs_damage_md_cites_exists() -> None:
    """docs/damage.md's last column names the tests that show each row: each one a
    reader looks up must be there (a test renamed or removed leaves a row unproven)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "damage.md").read_text()
    files = dict(re.findall(r"`([A-Z]{1,2})` = `(tests/\w+\.py)`", text))
    cited = [(files.get(k), name) for k, name in re.findall(r"`([A-Z]{1,2})::(test_\w+)", text)]
    cited += re.findall(r"`(tests/\w+\.py)::(test_\w+)", text)
    assert len(cited) > 100
    missing = [(f, name) for f, name in cited
               if f is None or not re.search(rf"^def {name}\(", (root / f).read_text(), re.M)]
    assert missing == []
    assert any(f == "tests/test_archive_sums.py" for f, _ in cited)  # `AS::` too


def test_every_test_the_other_docs_cite_exists() -> None:
    """The README and the other docs name tests as ``test_x.py::test_y`` (or
    ``tests/test_x.py::test_y``), then ``::test_z`` for more of the same file: each must
    be there, as damage.md's must."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cited = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if doc.name == "damage.md":
            continue  # the test above
        current = None
        for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)",
                                     doc.read_text()):
            current = file or current
            cited.append((doc.name, current, name))
    assert len(cited) > 50
    missing = [c for c in cited if c[1] is None or not re.search(
        rf"^def {c[2]}\(", (root / "tests" / c[1]).read_text(), re.M)]
    assert missing == []


def test_the_module_maps_name_every_module() -> None:
    """docs/architecture.md's table and docs/internals.md's tree are the map of the code:
    a module added without a word there is one a reader cannot place."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = sorted(p for d in ("gpu_pitr", "kernels") for p in (root / d).rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    assert len(modules) > 40
    for doc in ("architecture.md", "internals.md"):
        text = (root / "docs" / doc).read_text()
        missing = [str(p.relative_to(root)) for p in modules if p.name not in text]
        assert missing == [], doc
