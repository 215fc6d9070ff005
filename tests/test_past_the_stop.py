"""Records past the stop point are checked, not decoded (``CpuExecutor.check``).

Nothing past the stop is applied, so the cpu executor parses those records for their
record columns only (status, variant, timestamp, aux, entry count, where the entry
ends): no entry rows, no id keys. These tests require those columns to be exactly
``decode``'s on damaged logs, and a restore that stops early to report exactly what
it reports when every record is decoded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr.executors.cpu import CpuExecutor
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.frame import frame_records
from gpu_pitr.format.layout import HEADER_SIZE
from gpu_pitr.format.segments import list_segments
from gpu_pitr.synth import write_synthetic_wal

RECORD_COLUMNS = ("status", "kind", "ts", "aux", "nent", "stop")


def _framed(path: Path):
    buf = np.fromfile(path, np.uint8)
    cols = ChunkColumns(len(buf) // 12 + 2)
    n, _, _ = frame_records(buf, HEADER_SIZE, len(buf), cols.off, cols.length, cols.seq)
    return buf, cols, n


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_check_fills_the_record_columns_exactly_as_decode(data):
    wl = data.draw(w.workloads(max_steps=25), label="workload")
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        for seg in list_segments(d):
            if seg.size <= HEADER_SIZE:
                continue
            buf, decoded, n = _framed(seg.path)
            _, checked, _ = _framed(seg.path)
            CpuExecutor(0).decode(buf, decoded, 0, n)
            CpuExecutor(0).check(buf, checked, 0, n)
            for name in RECORD_COLUMNS:
                assert np.array_equal(getattr(checked, name)[:n], getattr(decoded, name)[:n]), name


def _report(index) -> dict:
    doc = index.report.to_dict()
    doc.pop("timings")
    return doc


def test_a_restore_that_stops_early_checks_the_rest_and_reports_the_same(tmp_path, monkeypatch):
    wal = tmp_path / "wal"
    stats = write_synthetic_wal(wal, total_bytes=2 << 20, dim=8, segments=3, seed=5)
    target = stats.mid_timestamp
    # Damage past the stop: the last record of the last segment loses its variant.
    last = sorted(wal.glob("wal-*.log"))[-1]
    data = bytearray(last.read_bytes())
    buf, cols, n = _framed(last)
    data[int(cols.off[n - 1]) + 12] = 0xFF
    last.write_bytes(bytes(data))

    calls = {"check": 0, "decode": 0}
    for name in calls:
        method = getattr(CpuExecutor, name)

        def counted(self, *args, _name=name, _method=method):
            calls[_name] += 1
            return _method(self, *args)

        monkeypatch.setattr(CpuExecutor, name, counted)
    got = gpu_pitr.restore(wal, to_time=target, backend="cpu", chunk_bytes=64 << 10)
    assert calls["check"] > 5 and calls["decode"] > 5, calls
    assert got.report.damage_after_stop, "the damaged record past the stop is listed"

    monkeypatch.delattr(CpuExecutor, "check")  # every record decoded
    calls["check"] = 0
    want = gpu_pitr.restore(wal, to_time=target, backend="cpu", chunk_bytes=64 << 10)
    assert calls["check"] == 0
    assert _report(got) == _report(want)
    assert got.id_list() == want.id_list()
    assert got.vectors.tobytes() == want.vectors.tobytes()
