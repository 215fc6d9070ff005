"""What the library promises a caller beyond the restore itself (found by a review of
the Python API): arrays an index hands out cannot change its outputs behind its back,
errors are the documented classes and one line, arguments are checked where given."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import MissingExtraError, OutputError, WalError
from gpu_pitr.outputs import write_output


@pytest.fixture
def wal(tmp_path: Path) -> Path:
    b = w.LogBuilder()
    for i, v in enumerate(([-0.0, float("inf")], [1.0, 2.0], [3.0, float("nan")])):
        b.add(w.Ins(f"id{i}", v, {"k": str(i)} if i else None, 10 + i))
    return Path(b.write(tmp_path / "wal"))


def test_the_ids_array_is_read_only_and_outputs_agree(wal, tmp_path):
    """``ids`` is made once and the .npz writes it as it is: an edit to it changed
    the .npz but not the .parquet or ``id_list()``, and broke the .npz's order."""
    index = gpu_pitr.restore(wal, backend="cpu")
    with pytest.raises(ValueError, match="read-only"):
        index.ids[0] = "zzz"
    mine = index.ids.copy()  # a copy is the caller's to change
    mine[0] = "zzz"
    write_output(index, tmp_path / "o.npz", "npz")
    with np.load(tmp_path / "o.npz", allow_pickle=False) as npz:
        assert list(npz["ids"]) == index.id_list() == ["id0", "id1", "id2"]


def test_a_snapshots_index_cannot_change_the_snapshot(wal, tmp_path):
    """``Snapshot.to_index()`` shares the snapshot's arrays: an edit to its vectors
    changed every later restore from that Snapshot, without a word. They are read-only
    views now; and it carries the snapshot's position, so it can be saved again."""
    whole = gpu_pitr.restore(wal, backend="cpu")
    snapshot.save(whole, tmp_path / "snap")
    snap = snapshot.load(tmp_path / "snap")
    index = snap.to_index()
    assert np.shares_memory(index.vectors, snap.vectors)
    with pytest.raises(ValueError, match="read-only"):
        index.vectors *= 0
    again = gpu_pitr.restore(wal, backend="cpu", base=snap)
    assert w.index_view(again) == w.index_view(whole)
    assert index.position == whole.position
    snapshot.save(index, tmp_path / "snap2")  # was: "this index carries no log position"
    assert w.index_view(snapshot.load(tmp_path / "snap2").to_index()) == w.index_view(whole)


def test_snapshot_save_that_cannot_write_is_an_output_error(wal, tmp_path):
    """``snapshot.save`` raised the bare OSError, naming its hidden temp directory."""
    index = gpu_pitr.restore(wal, backend="cpu")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError) as err:
        snapshot.save(index, tmp_path / "afile" / "snap")
    line = str(err.value)
    assert line.startswith(f"{tmp_path / 'afile' / 'snap'}: cannot write the snapshot output")
    assert ".tmp-" not in line and "\n" not in line


def test_parquet_without_pyarrow_names_the_extra(wal, tmp_path, monkeypatch):
    index = gpu_pitr.restore(wal, backend="cpu")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtraError, match=r"needs pyarrow: pip install 'gpu-pitr\[arrow\]'"):
        write_output(index, tmp_path / "o.parquet", "parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_an_error_is_one_line_whatever_its_path_holds(tmp_path):
    where = tmp_path / "no\nsuch"
    with pytest.raises(WalError) as err:
        gpu_pitr.restore(where, backend="cpu")
    assert "\n" not in str(err.value) and err.value.file == str(where)
    assert str(err.value) == f"{tmp_path}/no such: WAL directory: no such directory"


@pytest.mark.parametrize("kwargs, said", [
    ({"chunk_bytes": True}, "chunk_bytes is whole bytes or a size text"),
    ({"chunk_bytes": 2.5}, "chunk_bytes is whole bytes or a size text"),
    ({"chunk_bytes": 0}, "chunk_bytes must be positive"),
    ({"chunk_bytes": "16Q"}, "chunk_bytes: '16Q' is not a size"),
    ({"memory_budget": 1.5}, "memory_budget is whole bytes or a size text"),
    ({"memory_budget": "-5M"}, "memory_budget: '-5M' is not a size"),
    ({"to_time": 12, "exclusive": "no"}, "exclusive is True or False, not 'no'"),
    ({"skip_corrupt": 1}, "skip_corrupt is True or False, not 1"),
    ({"allow_incomplete_history": "yes"}, "allow_incomplete_history is True or False"),
    ({"id_shard": (True, 2)}, r"id_shard is \(index, count\), not \(True, 2\)"),
    ({"progress": 1}, "progress is a callable or None, not 1"),
])
def test_arguments_are_checked_before_the_log_is_read(wal, kwargs, said):
    with pytest.raises(ValueError, match=said):
        gpu_pitr.restore(wal, backend="cpu", **kwargs)


def test_size_arguments_take_what_the_command_line_takes(wal):
    whole = gpu_pitr.restore(wal, backend="cpu")
    for kwargs in ({"chunk_bytes": "1K"}, {"chunk_bytes": np.int64(64)},
                   {"memory_budget": "256M"}, {"exclusive": np.bool_(False), "to_time": 99}):
        assert w.index_view(gpu_pitr.restore(wal, backend="cpu", **kwargs)) == \
            w.index_view(whole), kwargs


def test_a_fraction_too_large_for_a_float_is_a_time(wal):
    """``math.isfinite`` of it overflowed; an exact Fraction is a time like any other
    (beyond the u64 range: the latest state, with a warning, as for an int)."""
    far = gpu_pitr.restore(wal, backend="cpu", to_time=Fraction(10**500, 3))
    assert far.report.target["value"] == 10**500 // 3 and len(far) == 3
    assert gpu_pitr.restore(wal, backend="cpu", to_time=Fraction(23, 2)).id_list() == [
        "id0", "id1"]


def test_lazy_names_are_listed(wal):
    """``dir()`` (a notebook's tab completion) lists what ``__getattr__`` gives."""
    import gpu_pitr.format

    assert {"restore", "RestoredIndex", "snapshot", "compat", "errors"} <= set(dir(gpu_pitr))
    assert {"save", "load", "format", "arrow", "base"} <= set(dir(snapshot))
    assert {"codec", "writer", "segments"} <= set(dir(gpu_pitr.format))


def test_records_limit_must_be_a_count(wal):
    from gpu_pitr.format.dump import wal_records

    with pytest.raises(ValueError, match="limit is a count of items"):
        list(wal_records(wal, limit=-1))
    assert len(list(wal_records(wal, limit=2))) == 2


def test_a_file_system_that_gives_no_sizes_is_not_judged(wal, tmp_path, monkeypatch):
    """/proc and some FUSE file systems say 0 blocks, 0 free: the .npz room check said
    "0.0 MB, more than the 0.0 MB free"; it leaves such a file system to the write."""
    from gpu_pitr import outputs

    class NoSizes:
        f_frsize = f_blocks = f_bavail = 0

    monkeypatch.setattr(outputs.os, "statvfs", lambda path: NoSizes())
    write_output(gpu_pitr.restore(wal, backend="cpu"), tmp_path / "o.npz", "npz")
    assert (tmp_path / "o.npz").exists()
