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
import gpu_pitr.snapshot
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


def _watch_opens(monkeypatch) -> list[str]:
    """The paths ``os.open`` is given from now on (the read-ahead opens segments with
    it), until ``monkeypatch.undo()``."""
    opened: list[str] = []
    real_open = os.open

    def watched(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", watched)
    return opened


def _doc(index) -> dict:
    doc = index.report.to_dict()
    doc.pop("timings")
    return doc


def _at_or_before(entries: list, stop: dict, names: list[str]) -> list:
    """The entries of a report's list that are no later in the log than the stop record:
    before its end (a skipped record's entry names the byte where decoding failed,
    inside the record: the stop record's own, with a seq target and skip_corrupt)."""
    order = {name: k for k, name in enumerate(names)}
    here = (order[stop["file"]], _record_end(Path(stop["file"]), stop["offset"]))
    return [e for e in entries if (order[e["file"]], e["offset"]) < here]


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
        # Only the stop record's own damage: an exclusive seq target's record, read.
        assert len(got["damage_after_stop"]) <= (1 if kw.get("exclusive") and "to_seq" in kw
                                                 else 0)
        assert _at_or_before(got["damage_after_stop"], stop, names) == \
            got["damage_after_stop"]
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
    opened = _watch_opens(monkeypatch)
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
    """(The simulator in CI.) The same cut, the same report but the backend's name. The
    stop is in the second segment: one segment read whole, the next cut (a later stop
    costs the simulator time in proportion: it runs a thread per record in Python)."""
    wal, stats = long_log
    kw = dict(to_time=stats.first_timestamp + 20, read_after_stop=False)
    cpu = gpu_pitr.restore(wal, backend="cpu", **kw)
    segs = sorted(str(p) for p in wal.glob("wal-*.log"))
    assert segs.index(cpu.report.stop["file"]) == 1
    gpu = gpu_pitr.restore(wal, backend="cuda", **kw)
    assert gpu.report.backend == "cuda", gpu.report.message
    assert w.index_view(gpu) == w.index_view(cpu)
    assert {k: v for k, v in _doc(gpu).items() if k not in ("backend", "message")} == \
        {k: v for k, v in _doc(cpu).items() if k not in ("backend", "message")}


# -- the log cut at the stop record: what the report of a restore stopping there says --

def _cut_log(src: str, stop: dict, out: Path) -> None:
    """``src``'s segments up to the stop record's, that one ending with the record."""
    names = [str(s.path) for s in list_segments(src)]
    out.mkdir()
    for name in names[:names.index(stop["file"])]:
        (out / Path(name).name).write_bytes(Path(name).read_bytes())
    end = _record_end(Path(stop["file"]), stop["offset"])
    (out / Path(stop["file"]).name).write_bytes(Path(stop["file"]).read_bytes()[:end])


def _log_figures(doc: dict) -> dict:
    """What a report says of the log read, files by name (the cut log is elsewhere)."""
    keys = ("records_read", "bytes_read", "segments", "anomalies", "torn_tails",
            "trailing_bytes", "skipped", "damage_after_stop")
    return {k: [{**e, "file": Path(e["file"]).name} for e in doc[k]]
            if isinstance(doc[k], list) else doc[k] for k in keys}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_report_is_the_whole_read_of_the_log_cut_at_the_stop(data):
    """An oracle that does not share the cut's reasoning: the figures of a restore that
    stops reading at its stop record are those of the whole read of a log that ends with
    that record (a skipped stop record included, a base at a segment's end too)."""
    wl = data.draw(w.workloads(max_steps=30), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    base_kw = data.draw(st.none() | w.targets(wl), label="base target")
    chunks = data.draw(st.sampled_from([64, 200, None]), label="chunk")
    with tempfile.TemporaryDirectory() as d:
        src = wl.write(Path(d) / "wal")
        if base_kw is not None:
            base_kw.update(skip_corrupt=kw["skip_corrupt"],
                           allow_incomplete_history=kw["allow_incomplete_history"])
            snap, err = w.outcome(lambda: gpu_pitr.restore(src, backend="cpu", **base_kw))
            if err is not None:
                return
            kw["base"] = gpu_pitr.snapshot.save(snap, Path(d) / "base")
        whole, err = w.outcome(lambda: gpu_pitr.restore(src, backend="cpu", **kw))
        if err is not None or whole.report.stop["reason"] != "target":
            return
        early = gpu_pitr.restore(src, backend="cpu", read_after_stop=False,
                                 chunk_bytes=chunks, **kw)
        if early.report.segments == 0:  # the base is the stop: nothing read
            assert (early.report.records_read, early.report.bytes_read) == (0, 0)
            return
        _cut_log(src, whole.report.stop, Path(d) / "cut")
        cut = gpu_pitr.restore(Path(d) / "cut", backend="cpu", **kw)
        assert cut.report.stop["reason"] == "target"
        assert _log_figures(early.report.to_dict()) == _log_figures(cut.report.to_dict())


def _undecodable_seq_1(d) -> str:
    """seq 0 and 2 inserts, seq 1 undecodable."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0, 2.0], None, 10))
    b.add_payload(b"\xff\x01\x02")
    b.add(w.Ins("b", [3.0, 4.0], None, 12))
    return b.write(d)


def test_a_skipped_stop_record_stays_in_the_report_and_in_a_snapshot(tmp_path):
    """A seq target's record that does not decode is skipped (skip_corrupt), and the
    restore stops there: its entry names the byte where decoding failed, inside the
    record, and was cut away as if it came after the stop. A snapshot made so then
    told a restore from it nothing of the damage its state lacks."""
    wal = _undecodable_seq_1(tmp_path / "wal")
    whole = gpu_pitr.restore(wal, to_seq=1, skip_corrupt=True, backend="cpu")
    early = gpu_pitr.restore(wal, to_seq=1, skip_corrupt=True, backend="cpu",
                             read_after_stop=False)
    assert len(whole.report.skipped) == 1
    assert early.report.skipped == whole.report.skipped
    assert main(["snapshot", wal, "--out", str(tmp_path / "snap"), "-q", "--to-seq", "1",
                 "--skip-corrupt", "--stop-reading-at-target"]) == 0
    later = gpu_pitr.restore(wal, backend="cpu", base=tmp_path / "snap")
    assert later.report.base["skipped"] == 1
    assert any("restored past damage" in x for x in later.report.warnings), \
        later.report.warnings


def _three_segments(d) -> str:
    """Records 0..14, five a segment, record s stamped 100 + s."""
    b = w.LogBuilder(created=1000)
    for s in range(15):
        if s in (5, 10):
            b.new_segment(1000 + s)
        b.add(w.Ins(f"id{s}", [float(s), 1.0], None, 100 + s))
    return b.write(d)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_base_that_is_the_stop_reads_nothing(tmp_path, monkeypatch, backend):
    """A seq target the base snapshot's last record carries, with log after it: the
    framer went over the segments while the read-ahead had none to read (RuntimeError:
    generator raised StopIteration)."""
    wal = _three_segments(tmp_path / "wal")
    assert main(["snapshot", wal, "--out", str(tmp_path / "s7"), "-q", "--to-seq", "7"]) == 0
    whole = gpu_pitr.restore(wal, to_seq=7, backend=backend, base=tmp_path / "s7")
    segs = {str(s.path) for s in list_segments(wal)}
    opened = _watch_opens(monkeypatch)
    early = gpu_pitr.restore(wal, to_seq=7, backend=backend, base=tmp_path / "s7",
                             read_after_stop=False)
    monkeypatch.undo()
    assert not segs & set(opened)
    assert w.index_view(early) == w.index_view(whole)
    assert (early.position, early.pending) == (whole.position, whole.pending)
    r = early.report
    assert (r.records_read, r.bytes_read, r.segments) == (0, 0, 0)
    assert r.stop == whole.report.stop


def test_a_base_at_a_segment_end_counts_the_bytes_as_the_read_does(tmp_path):
    """The stop at the log's last record: stopping there reads what the whole read does.
    A base at the end of its segment (its header read, and counted, by the read) gave
    16 bytes fewer."""
    wal = _three_segments(tmp_path / "wal")
    assert main(["snapshot", wal, "--out", str(tmp_path / "s4"), "-q", "--to-seq", "4"]) == 0
    kw = dict(to_seq=14, backend="cpu", base=tmp_path / "s4")
    whole, early = (gpu_pitr.restore(wal, read_after_stop=flag, **kw) for flag in (True, False))
    assert early.report.base["offset"] == os.path.getsize(
        tmp_path / "wal" / early.report.base["segment"])
    assert _log_figures(early.report.to_dict()) == _log_figures(whole.report.to_dict())


@pytest.mark.parametrize("chunk", [None, 4096, 64])
def test_a_file_that_cannot_be_read_after_the_stop_is_not_needed(tmp_path, monkeypatch,
                                                                   chunk):
    """A segment after the stop that shrank since it was listed: the whole read fails on
    it; stopping at the stop did too, or not, as the chunk size packed the pieces before
    it with the stop's (the error came while the stop was still unknown)."""
    from gpu_pitr import pipeline

    b = w.LogBuilder(created=1000)
    for s in range(24):
        if s % 3 == 0 and s:
            b.new_segment(1000 + s)
        b.add(w.Ins(f"id{s}", [float(s)] * 8, None, 100 + s))
    wal = b.write(tmp_path / "wal")
    shrunk = sorted(str(s.path.name) for s in list_segments(wal))[4]
    w.listed_at(monkeypatch, pipeline, shrunk, os.path.getsize(Path(wal) / shrunk) + 100)
    with pytest.raises(gpu_pitr.errors.FileShrankError):
        gpu_pitr.restore(wal, to_time=104, backend="cpu", chunk_bytes=chunk)
    early = gpu_pitr.restore(wal, to_time=104, backend="cpu", chunk_bytes=chunk,
                             read_after_stop=False)
    assert early.report.ids == 5 and early.report.segments == 2


def test_the_summary_of_a_restore_to_the_end_of_the_log_names_no_log_left_unread(
        tmp_path, capsys):
    """Stopped at the end of the log, the whole log was read: "the log after the stop
    point not read" beside "stopped: at the end of the log" said otherwise."""
    wal = _three_segments(tmp_path / "wal")
    for target in ([], ["--to-time", "1000"]):
        assert main(["restore", wal, "--out", str(tmp_path / "o.npz"),
                     "--stop-reading-at-target", *target]) == 0
        out = capsys.readouterr().out
        assert "stopped: at the end of the log" in out
        assert "not read" not in out and "0 after the stop point" in out


@pytest.mark.parametrize("zeros", [False, True])
def test_the_damaged_record_of_an_exclusive_seq_target_is_reported(tmp_path, capsys, zeros):
    """An exclusive seq target's record need not decode: the restore stops before it, and
    lists its damage after the stop point. Stopping there reads that record (counted in
    records_read), but its damage was dropped with what lies after it. A zero-filled
    run from there is cut back to the record, whatever the chunk size."""
    b = w.LogBuilder()
    if zeros:  # 12 zero bytes frame as a record of seq 0: the target; three of them
        b.raw(bytes(36))
    else:
        b.add(w.Ins("a", [1.0, 2.0], None, 10))
        b.add_payload(b"\xff\x01\x02")
    b.add(w.Ins("b", [3.0, 4.0], None, 12))
    wal = b.write(tmp_path / "wal")
    kw = dict(to_seq=0 if zeros else 1, exclusive=True, backend="cpu")
    whole = gpu_pitr.restore(wal, **kw)
    (damage,) = whole.report.damage_after_stop
    for chunk in (None, 64):
        early = gpu_pitr.restore(wal, read_after_stop=False, chunk_bytes=chunk, **kw)
        if zeros:
            assert damage["records"] == 3
            assert early.report.damage_after_stop == [{
                **damage, "records": 1, "bytes": 12,
                "what": damage["what"].replace("3 records", "a record").replace("36", "12")}]
        else:
            assert early.report.damage_after_stop == [damage]
    assert main(["restore", wal, "--out", str(tmp_path / "o.npz"), "--to-seq",
                 str(kw["to_seq"]), "--exclusive", "--stop-reading-at-target"]) == 0
    out = capsys.readouterr().out
    assert "damage: 0 torn tails, 0 skipped, 1 after the stop point" in out
    assert "in the stop record, the log after the stop point not read" in out


def test_a_zero_filled_run_in_an_earlier_file_is_kept_whole(tmp_path):
    """(A guard of the cut of zero-filled runs to the stop record: it is by offset in the
    stop record's file only; a run skipped in an earlier file, at offsets past the stop
    record's end, is listed as the whole read lists it.)"""
    b = w.LogBuilder(created=1000)
    for s in range(4):
        b.add(w.Ins(f"id{s}", [float(s), 1.0], None, 100 + s))
    b.raw(bytes(36))
    b.add(w.Ins("id4", [4.0, 1.0], None, 104))
    b.new_segment(1001)
    b.add(w.Ins("id5", [5.0, 1.0], None, 105))
    b.add(w.Ins("id6", [6.0, 1.0], None, 106))
    wal = b.write(tmp_path / "wal")
    kw = dict(to_seq=5, skip_corrupt=True, backend="cpu")
    whole = gpu_pitr.restore(wal, **kw)
    (run,) = whole.report.skipped
    assert run["records"] == 3 and run["start"] > whole.report.stop["offset"] + 40
    for chunk in (None, 64):
        early = gpu_pitr.restore(wal, read_after_stop=False, chunk_bytes=chunk, **kw)
        assert early.report.skipped == [run]


def test_the_progress_ends_at_the_bytes_the_restore_needed(long_log):
    """The last call ("finish") gave the cut byte count against the whole log's size:
    a bar ended at a few percent, after showing more bytes done."""
    wal, stats = long_log
    calls: list[tuple] = []
    index = gpu_pitr.restore(wal, to_time=stats.first_timestamp + 60, backend="cpu",
                             read_after_stop=False, progress=lambda *a: calls.append(a))
    phase, done, total, records = calls[-1]
    assert phase == "finish"
    assert done == total == index.report.bytes_read
    assert records == index.report.records_read
