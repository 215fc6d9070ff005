"""The synthetic WAL generator: every record decodes with the pure-Python codec, and
the counts and the expected state it reports match a record-by-record replay."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gpu_pitr import synth
from gpu_pitr.format.codec import decode_entry
from gpu_pitr.format.entries import (
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    Delete,
    Insert,
    Update,
)
from gpu_pitr.format.layout import HEADER_SIZE, MAGIC, RECORD_HEADER_SIZE, VARIANT_NAMES, VERSION
from gpu_pitr.format.segments import list_segments


def _records(wal_dir):
    """(seq, entry) for every record in log order, asserting the framing is exact."""
    out = []
    for seg in list_segments(wal_dir):
        data = seg.path.read_bytes()
        assert data[:4] == MAGIC
        assert struct.unpack_from("<IQ", data, 4) == (VERSION, seg.created)
        pos = HEADER_SIZE
        while pos < len(data):
            seq, length = struct.unpack_from("<QI", data, pos)
            payload = data[pos + RECORD_HEADER_SIZE : pos + RECORD_HEADER_SIZE + length]
            assert len(payload) == length, f"{seg.name}: torn record at {pos}"
            entry, consumed = decode_entry(payload)
            assert consumed == length, f"{seg.name}: {length - consumed} bytes left at {pos}"
            out.append((seq, entry))
            pos += RECORD_HEADER_SIZE + length
    return out


def _data_entries(entry):
    if isinstance(entry, Batch):
        for inner in entry.entries:
            yield from _data_entries(inner)
    else:
        yield entry


def _replay(records, to_time=None):
    """Ids live after applying commit points (SPEC section 3) up to ``to_time``."""
    state: dict[str, bool] = {}
    open_txns: dict[int, list] = {}

    def commit(entries, ts):
        if to_time is not None and ts > to_time:
            return False
        for e in entries:
            for d in _data_entries(e):
                state[d.id] = not isinstance(d, Delete)
        return True

    for _, entry in records:
        if isinstance(entry, BeginTransaction):
            open_txns[entry.transaction_id] = []
        elif isinstance(entry, CommitTransaction):
            if not commit(open_txns.pop(entry.transaction_id), entry.timestamp):
                break
        elif isinstance(entry, AbortTransaction):
            del open_txns[entry.transaction_id]
        elif isinstance(entry, Checkpoint):
            pass
        elif open_txns:
            next(reversed(open_txns.values())).append(entry)
        elif not commit([entry], entry.timestamp):
            break
    return {k for k, live in state.items() if live}


@pytest.fixture
def busy_workload(monkeypatch):
    """Checkpoints, transactions, aborts and seconds enough to show up in a small WAL."""
    monkeypatch.setattr(synth, "CHECKPOINT_SHARE", 0.01)
    monkeypatch.setattr(synth, "TXN_SHARE", 0.03)
    monkeypatch.setattr(synth, "ABORT_SHARE", 0.3)
    monkeypatch.setattr(synth, "RECORDS_PER_SECOND", 30.0)


@pytest.mark.parametrize("dim", [16, 300])  # 300: the vector length is a 3-byte varint
def test_generated_wal_decodes_and_matches_its_stats(tmp_path, busy_workload, dim):
    stats = synth.write_synthetic_wal(
        tmp_path, total_bytes=400_000, dim=dim, segments=3, seed=7, start_time=1_700_000_000
    )
    records = _records(tmp_path)
    assert len(stats.files) == 3
    assert stats.bytes == sum(s.size for s in list_segments(tmp_path))
    assert [seq for seq, _ in records] == list(range(stats.records))

    by_variant = dict.fromkeys(VARIANT_NAMES, 0)
    for _, entry in records:
        by_variant[type(entry).__name__] += 1
    assert by_variant == stats.records_by_variant
    for name in ("Batch", "Checkpoint", "BeginTransaction", "CommitTransaction"):
        assert by_variant[name] > 0, name
    assert by_variant["AbortTransaction"] > 0

    data = [
        d for _, e in records for d in _data_entries(e) if isinstance(d, (Insert, Update, Delete))
    ]
    assert len(data) == stats.entries
    by_op = {name: sum(type(d).__name__ == name for d in data) for name in stats.entries_by_op}
    assert by_op == stats.entries_by_op
    vectors = [d for d in data if isinstance(d, (Insert, Update))]
    assert sum(d.metadata is not None for d in vectors) == stats.entries_with_metadata
    block = np.stack([d.vector for d in vectors])
    assert block.shape == (len(vectors), dim)
    # Every float was written (np.empty leaves zeros or garbage, neither in range).
    assert np.all(block != 0) and np.all(block >= -0.5) and np.all(block < 0.5)
    for d in data:
        assert 35 <= len(d.id.encode()) <= 45
        assert d.id == synth.synthetic_id(int(d.id[-synth.ID_DIGITS :]))

    stamps = [e.timestamp for _, e in records]
    assert stamps == sorted(stamps)
    assert (stamps[0], stamps[-1]) == (stats.first_timestamp, stats.last_timestamp)
    assert stats.first_timestamp < stats.mid_timestamp < stats.last_timestamp

    live = _replay(records)
    assert len(live) == stats.live_ids
    assert sorted(live, key=str.encode) == list(stats.expected_ids())
    live_mid = _replay(records, to_time=stats.mid_timestamp)
    assert len(live_mid) == stats.live_ids_mid
    assert sorted(live_mid, key=str.encode) == list(stats.expected_ids(mid=True))


def test_default_workload_shape(tmp_path):
    stats = synth.write_synthetic_wal(tmp_path, total_bytes=2_000_000, dim=32, segments=2)
    ops = stats.entries_by_op
    n = sum(ops.values())
    assert abs(ops["Insert"] / n - 0.80) < 0.02
    assert abs(ops["Update"] / n - 0.15) < 0.02
    assert abs(ops["Delete"] / n - 0.05) < 0.01
    assert 0.70 < stats.live_ids / ops["Insert"] < 0.80
    assert abs(stats.bytes - 2_000_000) < 4 * 32 * 16 + 200  # just over, by less than a batch
    assert 0.05 < stats.entries_with_metadata / (ops["Insert"] + ops["Update"]) < 0.15


def test_same_seed_same_bytes(tmp_path):
    a = synth.write_synthetic_wal(tmp_path / "a", total_bytes=100_000, dim=8, segments=2, seed=3)
    b = synth.write_synthetic_wal(tmp_path / "b", total_bytes=100_000, dim=8, segments=2, seed=3)
    for fa, fb in zip(a.files, b.files, strict=True):
        assert open(fa, "rb").read() == open(fb, "rb").read()


def test_tiny_wal_still_writes_every_segment(tmp_path):
    stats = synth.write_synthetic_wal(tmp_path, total_bytes=1, dim=4, segments=4)
    names = [s.name for s in list_segments(tmp_path)]
    assert len(names) == 4 and names == sorted(names)
    assert len(_records(tmp_path)) == stats.records >= 1
