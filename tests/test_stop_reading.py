"""``read_after_stop=False`` (``--stop-reading-at-target``): reading ends at the stop point.

By default a restore reads the whole log, so that damage after its stop point is
reported (SPEC section 2). With the option off it reads no further than the stop
record, and the result must be that of the whole read: the same index, stop, position
and open transactions, the same error where the whole read fails before its stop; the
report covering the log up to the stop record, the same whatever the chunk size.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr.cli import main
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.frame import frame_records
from gpu_pitr.format.layout import HEADER_SIZE
from gpu_pitr.format.segments import list_segments
from gpu_pitr.synth import write_synthetic_wal

#: What the report says of the log read, which ends at the stop record with the option.
READ_KEYS = ("records_read", "bytes_read", "segments", "anomalies", "torn_tails",
             "trailing_bytes", "skipped", "damage_after_stop", "read_after_stop",
             "timings", "warnings")


def _doc(index) -> dict:
    doc = index.report.to_dict()
    doc.pop("timings")
    return doc


def _at_or_before(entries: list, stop: dict, names: list[str]) -> list:
    """The entries of a report's list that are no later in the log than the stop record."""
    order = {name: k for k, name in enumerate(names)}
    here = (order[stop["file"]], stop["offset"])
    return [e for e in entries if (order[e["file"]], e["offset"]) <= here]


def _records_up_to(stop: dict, names: list[str]) -> int:
    """Records framed in the log up to the stop record, it included (a log without
    damage to its headers: every segment framed from its header on)."""
    total = 0
    for name in names:
        buf = np.fromfile(name, np.uint8)
        cols = ChunkColumns(len(buf) // 12 + 2)
        n, _, _ = frame_records(buf, HEADER_SIZE, len(buf), cols.off, cols.length, cols.seq)
        if name == stop["file"]:
            return total + int(np.count_nonzero(cols.off[:n] <= stop["offset"]))
        total += n
    raise AssertionError(f"{stop['file']} is not a segment")


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_stopping_at_the_stop_gives_the_whole_reads_result(data):
    wl = data.draw(w.workloads(max_steps=30), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    chunks = data.draw(st.sampled_from([64, 200, 4096, None]), label="chunk")
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        whole, werr = w.outcome(lambda: gpu_pitr.restore(d, backend="cpu", **kw))
        early, eerr = w.outcome(lambda: gpu_pitr.restore(
            d, backend="cpu", read_after_stop=False, chunk_bytes=chunks, **kw))
        if werr is not None:
            # Damage before the stop, or a seq no record has: the same error.
            assert eerr is not None, f"whole read: {werr}; stopping early restored"
            assert (type(eerr), str(eerr)) == (type(werr), str(werr))
            return
        assert eerr is None, eerr
        assert w.index_view(early) == w.index_view(whole)
        assert (early.position, early.pending) == (whole.position, whole.pending)
        got, want = _doc(early), _doc(whole)
        assert got["read_after_stop"] is False and want["read_after_stop"] is True
        assert {k: v for k, v in got.items() if k not in READ_KEYS} == \
            {k: v for k, v in want.items() if k not in READ_KEYS}
        # The same report whatever the chunk size.
        again = gpu_pitr.restore(d, backend="cpu", read_after_stop=False,
                                 chunk_bytes=64 if chunks != 64 else None, **kw)
        assert _doc(again) == got
        stop = want["stop"]
        if stop["reason"] == "end_of_log":  # the whole log was read either way
            assert {k: got[k] for k in READ_KEYS if k not in ("read_after_stop", "timings")} \
                == {k: want[k] for k in READ_KEYS if k not in ("read_after_stop", "timings")}
            return
        names = [str(s.path) for s in list_segments(d)]
        assert got["damage_after_stop"] == []
        for key in ("anomalies", "torn_tails", "trailing_bytes", "skipped"):
            assert got[key] == _at_or_before(want[key], stop, names), key
        assert got["segments"] == names.index(stop["file"]) + 1
        assert got["records_read"] <= want["records_read"]
        assert got["bytes_read"] <= want["bytes_read"]
        # The warnings but the one that needs the log after the stop (a seq met again).
        assert got["warnings"] == [x for x in want["warnings"] if " occurs " not in x]


def _damage_after(path: Path) -> None:
    """The last record of ``path`` loses its variant byte: undecodable."""
    buf = np.fromfile(path, np.uint8)
    cols = ChunkColumns(len(buf) // 12 + 2)
    n, _, _ = frame_records(buf, HEADER_SIZE, len(buf), cols.off, cols.length, cols.seq)
    data = bytearray(path.read_bytes())
    data[int(cols.off[n - 1]) + 12] = 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def long_log(tmp_path_factory) -> tuple[Path, object]:
    """Eight segments, damage in the last two (an undecodable record, a wrong magic)."""
    wal = tmp_path_factory.mktemp("stop_reading") / "wal"
    stats = write_synthetic_wal(wal, total_bytes=4 << 20, dim=8, segments=8, seed=11)
    segs = sorted(wal.glob("wal-*.log"))
    _damage_after(segs[-2])
    data = bytearray(segs[-1].read_bytes())
    data[:4] = b"XXXX"
    segs[-1].write_bytes(bytes(data))
    return wal, stats


def test_the_log_after_the_stop_is_not_read(long_log, monkeypatch):
    wal, stats = long_log
    target = stats.first_timestamp + (stats.last_timestamp - stats.first_timestamp) // 8
    whole = gpu_pitr.restore(wal, to_time=target, backend="cpu")
    assert len(whole.report.damage_after_stop) == 2  # the two damaged segments
    segs = sorted(str(p) for p in wal.glob("wal-*.log"))
    stop_seg = segs.index(whole.report.stop["file"])
    assert stop_seg <= 2
    opened: list[str] = []
    real_open = os.open

    def watched(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", watched)
    # Pieces of 64 KiB: the read-ahead cannot have reached the later segments by chance.
    early = gpu_pitr.restore(wal, to_time=target, backend="cpu", read_after_stop=False,
                             chunk_bytes=64 << 10)
    monkeypatch.undo()
    assert w.index_view(early) == w.index_view(whole)
    r = early.report
    assert r.stop == whole.report.stop and r.read_after_stop is False
    assert r.damage_after_stop == []
    assert r.segments == stop_seg + 1
    assert r.records_read == _records_up_to(r.stop, segs)
    # The log's bytes up to the end of the stop record, headers included.
    stop_end = _record_end(Path(r.stop["file"]), r.stop["offset"])
    assert r.bytes_read == sum(os.path.getsize(s) for s in segs[:stop_seg]) + stop_end
    assert not [p for p in opened if p in segs[stop_seg + 2:]], opened


def _record_end(path: Path, offset: int) -> int:
    buf = np.fromfile(path, np.uint8)
    cols = ChunkColumns(len(buf) // 12 + 2)
    n, _, _ = frame_records(buf, HEADER_SIZE, len(buf), cols.off, cols.length, cols.seq)
    k = int(np.searchsorted(cols.off[:n], offset))
    assert int(cols.off[k]) == offset
    return offset + 12 + int(cols.length[k])


def test_a_seq_target_stops_reading_too_and_an_absent_one_reads_all(long_log):
    wal, _ = long_log
    whole = gpu_pitr.restore(wal, to_seq=100, backend="cpu")
    early = gpu_pitr.restore(wal, to_seq=100, backend="cpu", read_after_stop=False)
    assert w.index_view(early) == w.index_view(whole)
    assert early.report.records_read == 101  # seqs 0..100: one segment's first records
    assert early.report.damage_after_stop == [] and early.report.segments == 1
    with pytest.raises(gpu_pitr.errors.TargetNotFoundError) as err:
        # (Past the damage: a target no record has is looked for to the end.)
        gpu_pitr.restore(wal, to_seq=2**40, backend="cpu", read_after_stop=False,
                         skip_corrupt=True)
    assert "no record has sequence number" in str(err.value)


def test_from_a_snapshot_only_the_log_between_it_and_the_target_is_read(long_log, tmp_path):
    wal, stats = long_log
    span = stats.last_timestamp - stats.first_timestamp
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    assert main(["snapshot", str(wal), "--out", str(snaps / "s1"), "-q",
                 "--to-time", str(stats.first_timestamp + span // 4)]) == 0
    target = stats.first_timestamp + span * 3 // 8
    whole = gpu_pitr.restore(wal, to_time=target, backend="cpu", snapshots=snaps)
    early = gpu_pitr.restore(wal, to_time=target, backend="cpu", snapshots=snaps,
                             read_after_stop=False)
    assert early.report.base is not None
    assert w.index_view(early) == w.index_view(whole)
    assert w.index_view(early) == w.index_view(gpu_pitr.restore(wal, to_time=target,
                                                                backend="cpu"))
    assert early.report.bytes_read < whole.report.bytes_read // 3


def test_a_snapshot_stopped_early_is_the_same_snapshot(long_log, tmp_path):
    wal, stats = long_log
    target = str(stats.mid_timestamp)
    manifests = []
    for name, extra in (("whole", []), ("early", ["--stop-reading-at-target"])):
        out = tmp_path / name
        assert main(["snapshot", str(wal), "--out", str(out), "-q", "--to-time", target,
                     *extra]) == 0
        doc = json.loads((out / "manifest.json").read_text())
        manifests.append((doc["files"], doc["position"]))
    assert manifests[0] == manifests[1]


def test_the_command_line_says_the_log_after_the_stop_was_not_read(long_log, tmp_path, capsys):
    wal, stats = long_log
    out = tmp_path / "out.npz"
    assert main(["restore", str(wal), "--out", str(out), "--to-time",
                 str(stats.mid_timestamp), "--stop-reading-at-target",
                 "--report-json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr()
    assert "the log after the stop point not read (--stop-reading-at-target)" in printed.out
    assert "warning" not in printed.err  # the damage after the stop was never seen
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["read_after_stop"] is False and report["damage_after_stop"] == []
    assert main(["restore", str(wal), "--out", str(out), "--to-time",
                 str(stats.mid_timestamp)]) == 0
    printed = capsys.readouterr()
    assert "2 after the stop point" in printed.out


def test_read_after_stop_must_be_a_bool(long_log):
    with pytest.raises(ValueError, match="read_after_stop is True or False"):
        gpu_pitr.restore(long_log[0], read_after_stop="no")


def test_on_the_cuda_executor_too(long_log):
    """(The simulator in CI.) The same cut, the same report but the backend's name."""
    wal, stats = long_log
    kw = dict(to_time=stats.first_timestamp + 60, read_after_stop=False)
    cpu = gpu_pitr.restore(wal, backend="cpu", **kw)
    gpu = gpu_pitr.restore(wal, backend="cuda", **kw)
    assert gpu.report.backend == "cuda", gpu.report.message
    assert w.index_view(gpu) == w.index_view(cpu)
    assert {k: v for k, v in _doc(gpu).items() if k not in ("backend", "message")} == \
        {k: v for k, v in _doc(cpu).items() if k not in ("backend", "message")}
