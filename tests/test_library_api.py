"""The library as a program embedding it sees it (found by a review of the Python API
from a vector store's side): results show their shape, not their data; a loaded
snapshot compares and hashes like other objects; the signatures reach a type checker
as written, and say what the calls take."""

from __future__ import annotations

import pickle
import subprocess
import sys
import typing
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.diff import diff
from gpu_pitr.report import RestoreReport
from gpu_pitr.verify import Problem, Verification

PACKAGE = Path(gpu_pitr.__file__).parent


@pytest.fixture
def wal(tmp_path: Path) -> Path:
    b = w.LogBuilder()
    for i in range(40):
        b.add(w.Ins(f"id{i:02}", [float(i), 1.0], {"k": str(i)}, 10 + i))
    return Path(b.write(tmp_path / "wal"))


def test_a_loaded_snapshot_is_equal_to_itself_only_and_hashes(wal, tmp_path):
    """The generated ``==`` compared the arrays: two loads of one snapshot raised
    "truth value of an array ... is ambiguous", and a Snapshot could not be a dict key
    (a cache of loaded bases)."""
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), tmp_path / "snap")
    a, b = snapshot.load(tmp_path / "snap"), snapshot.load(tmp_path / "snap")
    assert a == a and a != b
    assert len({a: 1, b: 2}) == 2
    assert diff(a, b).same  # what compares two states


def test_reprs_show_the_shape_not_the_data(wal, tmp_path):
    """A notebook shows the last value of a cell by its repr: a snapshot's printed its
    manifest and pending records' bytes whole, a diff or a report every id or
    damage entry, and an index only its address."""
    index = gpu_pitr.restore(wal, backend="cpu")
    assert repr(index) == "RestoredIndex(ids=40, dim=2, backend='cpu')"
    # An empty log's: no dimension (the report's None), not 0 from its (0, 0) vectors.
    (tmp_path / "empty").mkdir()
    empty = gpu_pitr.restore(tmp_path / "empty", backend="cpu")
    assert empty.report.dim is None
    assert repr(empty) == "RestoredIndex(ids=0, dim=None, backend='cpu')"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=5), tmp_path / "snap")
    snap = snapshot.load(tmp_path / "snap")
    snap.pending = b"\0" * 10_000  # as the records of a large open transaction
    text = repr(snap)
    assert text.startswith(f"Snapshot(path={str(tmp_path / 'snap')!r}, count=6, dim=2, ")
    assert len(text) < 200 and "manifest" not in text

    result = diff(index, snap.to_index())
    assert result.counts["only_in_a"] == 34
    text = repr(result)
    assert "only_in_a=['id06', 'id07', " in text and "'id15', ... (24 more)]" in text
    assert "'id16'" not in text and "'only_in_a': 34" in text

    report = RestoreReport(target={"kind": "latest"}, skipped=[
        {"file": "f", "offset": i, "seq": None, "what": "zero"} for i in range(100_000)])
    text = repr(report)
    assert "... (99,990 more)]" in text and len(text) < 2000
    assert repr(RestoreReport(target={}, anomalies=[1, 2])).count("anomalies=[1, 2]") == 1

    found = Verification("wal", problems=[Problem("zero_filled", "f", i, None, "x")
                                          for i in range(50)])
    assert "... (40 more)]" in repr(found)


def test_errors_pickle_whole():
    """A Dask worker's error comes back as it was raised (docs/api.md)."""
    from gpu_pitr.errors import FileReadError, TargetNotFoundError

    for err in (TargetNotFoundError("no record", file="w/wal-0.log", offset=16, seq=3),
                FileReadError("w/wal-0.log", 40, OSError(5, "Input/output error"))):
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), str(back), back.args) == (type(err), str(err), err.args)
        assert vars(back) == vars(err)


def test_the_package_is_typed_and_its_hints_say_what_the_calls_take():
    """Without ``py.typed`` a caller's mypy or pyright ignored every hint, and behind
    an untyped decorator ``restore``, ``snapshot.save``/``load``, ``verify_wal`` and
    ``write_output`` had none anyway; where they were read, ``chunk_bytes="16M"``,
    ``to_seq=np.int64(5)`` or ``wal_records(since="2026-...")`` (what the docs show)
    were type errors."""
    import tomllib

    assert (PACKAGE / "py.typed").is_file()
    pyproject = PACKAGE.parent / "pyproject.toml"
    if pyproject.is_file():  # a source tree: the wheel carries it
        data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
        assert "py.typed" in data["gpu_pitr"]
    hints = typing.get_type_hints(gpu_pitr.restore)
    for name, value in (("to_time", datetime.now()), ("to_time", "2026-11-26T10:02:00Z"),
                        ("chunk_bytes", "16M"), ("memory_budget", "256M"),
                        ("to_seq", np.int64(5)), ("base", Path("snap"))):
        assert any(isinstance(value, t) for t in typing.get_args(hints[name])
                   if isinstance(t, type)), (name, value)
    from gpu_pitr.format.dump import wal_records

    assert str in typing.get_args(typing.get_type_hints(wal_records)["since"])
    from gpu_pitr.interrupts import raises_stops

    assert typing.get_type_hints(raises_stops)["return"] != typing.Any
    assert "fn" in typing.get_type_hints(raises_stops)


def test_the_typed_names_stay_lazy():
    """The names given to a type checker are not imported by ``import gpu_pitr``."""
    proc = subprocess.run([sys.executable, "-c", "import sys, gpu_pitr; print(sorted(m for "
                           "m in ('typing', 'gpu_pitr.pipeline', 'numpy') if m in "
                           "sys.modules))"], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr
