"""``scripts/gpu_check``'s restores, under the CUDA simulator.

A GPU is lent to this project rarely, and a check that fails on the device wastes
the run: its profiled restore, its digests of every result, and its snapshot round
run here on a small log, with a stand-in for the few CuPy calls they make (the
simulator's arrays are NumPy's). The profiled restore once read no segment at all
after a change to ``pipeline._run`` and compared an empty index with the cpu's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpu_pitr
from gpu_pitr.synth import write_synthetic_wal

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Pool:
    def free_all_blocks(self) -> None:
        pass

    def total_bytes(self) -> int:
        return 0


# What the check asks of CuPy around its restores; the simulator needs no syncing.
FAKE_CP = SimpleNamespace(
    cuda=SimpleNamespace(get_current_stream=lambda: SimpleNamespace(synchronize=lambda: None)),
    get_default_memory_pool=_Pool,
)


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_check") / "wal"
    write_synthetic_wal(d, total_bytes=64 << 10, dim=8, segments=3, seed=11)
    return d


def test_the_profiled_restore_reads_the_log_and_equals_the_cpu_executor(wal):
    check = _load()
    cpu = gpu_pitr.restore(wal, backend="cpu")
    assert len(cpu) > 100
    index, seconds, host, device, ahead = check.profiled_restore(wal, FAKE_CP)
    assert index.report.backend == "cuda" and index.report.records_read == \
        cpu.report.records_read
    assert check.same_result(index, cpu)
    assert check.digest(index) == check.digest(cpu)
    assert seconds > 0 and host["read"] >= 0 and set(device) >= {"decode", "resolve", "scatter"}
    assert ahead.count("/") == 1


def test_the_digest_tells_results_apart(wal):
    check = _load()
    cpu = gpu_pitr.restore(wal, backend="cpu")
    same = gpu_pitr.restore(wal, backend="cpu")
    assert check.digest(same) == check.digest(cpu)
    flipped = gpu_pitr.restore(wal, backend="cpu")
    v = flipped.vectors.view(np.uint32)
    v[len(v) // 2, 3] ^= 1  # one bit of one vector
    assert check.digest(flipped) != check.digest(cpu)
    earlier = gpu_pitr.restore(wal, backend="cpu", to_seq=5)
    assert check.digest(earlier) != check.digest(cpu)


def test_the_snapshot_round_equals_the_whole_log_and_can_run_twice(wal, tmp_path):
    check = _load()
    whole = gpu_pitr.restore(wal, backend="cuda")
    figures: dict = {}
    for _ in range(2):  # a second round of the check reuses its work directory
        row = check.snapshot_check(wal, tmp_path, whole, 1.0, FAKE_CP, figures)
        assert "same result" in row and "FAILED" not in row, row
        assert figures["snapshot_equal"] is True


def test_the_sync_check_restores_in_fresh_processes_and_compares(wal):
    """The NUMBA_CUDA_ARRAY_INTERFACE_SYNC row: two child processes (the simulator's
    setting inherited), each result's digest against the cpu executor's."""
    check = _load()
    want = check.digest(gpu_pitr.restore(wal, backend="cpu"))
    figures: dict = {}
    row = check.sync_check(wal, wal, want, figures)
    assert row.endswith("(fresh processes); both equal the cpu result"), row
    assert figures["sync_off"]["digest"] == figures["sync_default"]["digest"] == want
    assert figures["sync_equal"] is True
    # A child whose result differs, or that fell back to the cpu executor, is said so
    # (its restore stood in for here), and the check's exit status counts it.
    for bad in ({"digest": "x"}, {"backend": "cpu"}):
        check.restore_in_child = lambda w, m, env, bad=bad: {
            "s": 1.0, "digest": want, "backend": "cuda", **(bad if env else {})}
        figures = {}
        assert check.sync_check(wal, wal, want, figures).endswith("RESULT DIFFERS")
        assert figures["sync_equal"] is False
    check = _load()
    figures = {}
    assert check.sync_check(wal.parent / "missing", wal, want, figures).startswith(
        "FAILED: ")
    assert "sync_equal" not in figures


def test_the_shard_tests_it_runs_on_the_gpu_exist():
    import subprocess
    import sys

    names = _load().SHARD_TESTS
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *names], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(names)} tests collected" in proc.stdout, proc.stdout


class _PinnedPool:
    def __init__(self) -> None:
        self.freed = 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        self.freed += 1


def test_the_pinned_pool_row_restores_two_logs_and_says_what_the_pool_kept(tmp_path,
                                                                            monkeypatch):
    """The pinned pool row: cuda restores of two logs whose chunk sizes differ, then the
    cost of page-locking a ring afresh; the pool left with no free blocks of its own.
    (The restores themselves stand in here: in the simulator they took three minutes,
    and allocate no pinned memory.)"""
    check = _load()
    restored = []
    monkeypatch.setattr(gpu_pitr, "restore", lambda d, backend: restored.append(
        (max(p.stat().st_size for p in d.glob("wal-*.log")) >> 20, backend)))
    pool = _PinnedPool()
    cp = SimpleNamespace(get_default_pinned_memory_pool=lambda: pool,
                         cuda=SimpleNamespace(alloc_pinned_memory=bytearray))
    figures: dict = {}
    row = check.pinned_check(cp, tmp_path, figures)
    assert row.startswith("free blocks 0 -> 0 after 2 small restores (released); "), row
    assert "page-locking a 5 x 129 MiB ring: " in row
    assert figures["pinned_free_blocks"] == [0, 0] and figures["pin_ring_s"] >= 0
    assert pool.freed == 2
    # Largest segments of 3 and 6 MiB: read-ahead rings of two sizes.
    assert restored == [(3, "cuda"), (6, "cuda")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pinned0", "pinned1"]
    figures = {}
    row = check.pinned_check(SimpleNamespace(), tmp_path, figures)
    assert row.startswith("FAILED: AttributeError"), row
    assert not figures
