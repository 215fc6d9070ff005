"""The cuda executor gives the cpu executor's result, bit for bit.

In CI the kernels run in Numba's CUDA simulator (tests/conftest.py) with NumPy
standing in for CuPy; ``scripts/gpu_check`` runs this same file on a real GPU.
Compared: outcome (error class, file, offset, seq), ids, vector bytes, metadata
and the whole report except timings and the backend's name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import workloads as w
from hypothesis import given
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import errors
from gpu_pitr.executors import cuda as cuda_executor
from gpu_pitr.synth import write_synthetic_wal

SETTINGS = w.CUDA_SETTINGS


def outcome(wal_dir, backend, **kw):
    """Everything a restore produces, normalised for comparison (errors with their
    one-line text). A restore asked for cuda must have run on it: a fall-back to the
    cpu executor (``NeedsHostExecutor``) would compare cpu with cpu."""
    try:
        idx = gpu_pitr.restore(wal_dir, backend=backend, **kw)
    except errors.WalError as err:
        return ("error", type(err).__name__, err.file, err.offset, err.seq, str(err))
    host = idx.to_host()
    assert isinstance(host.vectors, np.ndarray) and host.vectors.dtype == np.float32
    assert idx.report.backend == backend, idx.report.message
    report = idx.report.to_dict()
    for key in ("timings", "backend", "message"):
        report.pop(key)
    return ("ok", host.id_list(), host.vectors.shape, host.vectors.tobytes(), host.metadata,
            report)


def assert_same(wal_dir, **kw):
    cpu = outcome(wal_dir, "cpu", **kw)
    cuda = outcome(wal_dir, "cuda", **kw)
    assert cuda == cpu
    return cpu


def test_cuda_backend_is_the_one_used():
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        log.add(w.Ins("a", [1.0, -0.0], {"k": "v"}, 5))
        log.write(d)
        idx = gpu_pitr.restore(d, backend="cuda")
        assert idx.report.backend == "cuda"
        assert idx.to_host().vectors.tobytes() == np.array([1.0, -0.0], "<f4").tobytes()


def test_launches_leave_the_callers_warnings_alone(tmp_path, monkeypatch):
    """Launches quiet the simulator's hash wraps and Numba's grid-size advice with
    filters narrow to those, installed once: a ``catch_warnings`` around each launch
    saved and restored the process-wide filter list, which two restores on two threads
    interleave (a filter leaked, or another thread's was lost; the simulator cannot run
    two restores at once to show it). None of the restore's wraps reach the caller, and
    the caller's own overflow warning is still seen after it."""
    import warnings

    write_synthetic_wal(tmp_path, total_bytes=60_000, dim=4, segments=2, seed=9)
    want = gpu_pitr.restore(tmp_path, backend="cpu").id_list()
    monkeypatch.setattr(cuda_executor, "_QUIET", [])  # as in a fresh process
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # pytest's own ignore of these wraps, gone
        warnings.simplefilter("always")
        got = gpu_pitr.restore(tmp_path, backend="cuda", chunk_bytes=4096)
        assert got.report.backend == "cuda" and got.id_list() == want
        assert [str(x.message) for x in seen] == []
        _ = np.int64(2**62) * np.int64(4)  # the caller's own wrap
    assert [str(x.message) for x in seen] == ["overflow encountered in scalar multiply"]


def test_a_dimension_mismatch_names_the_vector_length_as_cpu_does():
    """The cuda executor's entries are on the device: its error said "vector of length
    0" (the host's empty entry column) where cpu says 3."""
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        log.add(w.Ins("a", [1.0], None, 1))
        log.add(w.Ins("b", [1.0, 2.0, 3.0], None, 2))
        log.write(d)
        got = assert_same(d)
    assert got[0] == "error" and got[-1].endswith(
        ": seq 1: vector of length 3 differs from the index dimension 1"), got


@pytest.mark.parametrize("chunk_bytes", [None, 64], ids=["default", "c64"])
@SETTINGS
@given(data=st.data())
def test_random_workloads_match_cpu(chunk_bytes, data):
    wl = data.draw(w.workloads(max_steps=20), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        assert_same(d, chunk_bytes=chunk_bytes, **kw)


def test_synthetic_corpus_matches_cpu():
    with tempfile.TemporaryDirectory() as d:
        stats = write_synthetic_wal(d, total_bytes=256 << 10, dim=8, segments=3, seed=7)
        result = assert_same(d)
        assert result[0] == "ok" and len(result[1]) == stats.live_ids
        mid = assert_same(d, to_time=stats.mid_timestamp, chunk_bytes=16 << 10)
        assert len(mid[1]) == stats.live_ids_mid


def test_key_collisions_never_merge_ids(monkeypatch):
    """With keys cut to 2 bits every chunk collides; ids must still stay apart."""
    monkeypatch.setattr(cuda_executor, "KEY_MASK", np.uint64(0x3))
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i in range(12):
            log.add(w.Ins(f"id{i}", [float(i)], None, i))
        log.add(w.Del("id3", 20))
        log.write(d)
        cpu = outcome(d, "cpu")
        idx = gpu_pitr.restore(d, backend="cuda")
        assert idx.id_list() == cpu[1]
        assert idx.to_host().vectors.tobytes() == cpu[3]
        assert "restored on the cpu executor" in idx.report.message


def test_a_key_collision_with_a_row_of_an_earlier_chunk_is_caught(monkeypatch):
    """Every key collides, and each chunk holds one record: each id's key finds a row
    made by an earlier chunk (row 0 the first time), whose id differs. Missed, "b" was
    taken for "a" (one row left)."""
    monkeypatch.setattr(cuda_executor, "KEY_MASK", np.uint64(0))
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i, name in enumerate(("a", "b")):
            log.add(w.Ins(name, [float(i)] * 16, None, i))
        log.write(d)
        cpu = outcome(d, "cpu")
        idx = gpu_pitr.restore(d, backend="cuda", chunk_bytes=64)
        assert idx.id_list() == cpu[1] == ["a", "b"]
        assert idx.to_host().vectors.tobytes() == cpu[3]
        assert "restored on the cpu executor" in idx.report.message


@pytest.mark.parametrize("chunk_bytes", [None, 64], ids=["one_chunk", "a_chunk_each"])
def test_a_key_collision_of_an_id_and_a_longer_one_it_begins_is_caught(monkeypatch,
                                                                       chunk_bytes):
    """The only two ids, "a" after "a" and a NUL: their keys collide (all keys do here)
    and the shorter one's bytes are all equal to the longer one's first: only the
    lengths tell them apart, in one chunk (check_run_ids) and across two
    (check_prior_ids). Missed, the two were one row."""
    monkeypatch.setattr(cuda_executor, "KEY_MASK", np.uint64(0))
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        log.add(w.Ins("a\x00", [1.0] * 16, None, 1))
        log.add(w.Ins("a", [2.0] * 16, None, 2))
        log.write(d)
        cpu = outcome(d, "cpu")
        idx = gpu_pitr.restore(d, backend="cuda", chunk_bytes=chunk_bytes)
        assert idx.id_list() == cpu[1] == ["a", "a\x00"]
        assert idx.to_host().vectors.tobytes() == cpu[3]
        assert "restored on the cpu executor" in idx.report.message


def test_batch_nested_deeper_than_the_kernel_stack_restores_on_the_host():
    """A batch nested deeper than the kernels' stack (MAX_BATCH_DEPTH) is left to the
    cpu executor, which decodes any depth: the same index, and the report says so."""
    from gpu_pitr.format.payload import MAX_BATCH_DEPTH

    for depth, fell_back in ((MAX_BATCH_DEPTH - 2, False), (MAX_BATCH_DEPTH + 5, True)):
        with tempfile.TemporaryDirectory() as d:
            log = w.LogBuilder()
            log.add(w.Ins("top", [1.0], None, 1))
            log.add_payload(b"\x03\x01" * depth + w.encode_entry(w.Ins("deep", [2.0], None, 2))
                            + b"\x05" * depth)
            log.write(d)
            cpu = outcome(d, "cpu")
            idx = gpu_pitr.restore(d, backend="cuda")
            assert idx.id_list() == cpu[1] == ["deep", "top"]
            assert idx.to_host().vectors.tobytes() == cpu[3]
            assert ("restored on the cpu executor" in idx.report.message) == fell_back


ARENA = 1 << 12


def _watch_make_room(monkeypatch) -> list:
    """Record every (arena, used, size, total) ``_make_room`` returns, with the arenas
    at 4 KiB instead of 64 KiB: a small log makes them fill over and over."""
    seen = []
    original = cuda_executor.CudaExecutor._make_room

    def watch(self, arena_name, used, total):
        used, arena = original(self, arena_name, used, total)
        seen.append((arena_name, used, len(arena), total))
        return used, arena

    monkeypatch.setattr(cuda_executor.CudaExecutor, "_make_room", watch)
    monkeypatch.setattr(cuda_executor.CudaExecutor, "arena_bytes", ARENA)
    return seen


def test_device_arenas_stay_bounded_under_churn(monkeypatch):
    """Metadata rewritten and ids re-created over and over: the device arenas keep
    O(live bytes), compacting in place of doubling, and the result is the cpu one."""
    seen = _watch_make_room(monkeypatch)
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i in range(200):
            ident = f"id-{i % 20:02d}-" + "p" * 30
            if i % 11 == 0 and i < 180:
                log.add(w.Del(ident, ts=i))
            else:
                log.add(w.Upd(ident, [float(i)], {"step": str(i), "pad": "x" * 40}, ts=i))
        log.write(d)
        assert_same(d, chunk_bytes=1024)
    # The log appends about 10 KB of metadata to an arena of 4 KiB: without
    # compaction it would have doubled twice; the live bytes (~1.1 KB) are what moved.
    assert [name for name, *_ in seen] == ["meta"] * len(seen) and len(seen) >= 3, seen
    assert all(used < 2048 and size == ARENA for _, used, size, _ in seen), seen


def test_device_id_arena_compacts_when_ids_are_recreated(monkeypatch):
    seen = _watch_make_room(monkeypatch)
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i in range(45):  # 3 long ids deleted and created again: ~18 KB of ids
            ident = f"{i % 3}" + "u" * 400
            log.add(w.Ins(ident, [float(i)], None, ts=2 * i))
            if i < 42:
                log.add(w.Del(ident, ts=2 * i + 1))
        log.write(d)
        assert_same(d, chunk_bytes=512)  # one record a chunk
    assert [name for name, *_ in seen] == ["ids"] * len(seen) and len(seen) >= 2, seen
    assert all(used <= 3 * 401 and size == ARENA for _, used, size, _ in seen), seen


def test_the_cuda_executor_is_let_go_before_the_host_restores(monkeypatch):
    """On a fallback the cpu executor runs while nothing holds the cuda executor (its
    device buffers and page-locked chunks): not the exception, nor its traceback."""
    import gc
    import weakref

    from gpu_pitr import pipeline
    from gpu_pitr.executors import cpu

    made, alive_at_host = [], []
    real_make, real_init = pipeline.make_executor, cpu.CpuExecutor.__init__

    def make(*a, **k):
        ex = real_make(*a, **k)
        made.append(weakref.ref(ex))
        return ex

    def init(self, *a, **k):
        gc.collect()
        alive_at_host.append(made[0]() is not None)
        real_init(self, *a, **k)

    monkeypatch.setattr(pipeline, "make_executor", make)
    monkeypatch.setattr(cpu.CpuExecutor, "__init__", init)
    monkeypatch.setattr(cuda_executor, "KEY_MASK", np.uint64(0x3))
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i in range(12):
            log.add(w.Ins(f"id{i}", [float(i)], None, i))
        log.write(d)
        idx = gpu_pitr.restore(d, backend="cuda")
    assert "restored on the cpu executor" in idx.report.message
    assert alive_at_host == [False]


def test_the_first_rows_are_bounded_in_bytes_and_grow(monkeypatch):
    """The device rows start at most FIRST_ROWS_BYTES (and 1,024 rows): a log of wide
    vectors no longer asks for its whole size up front; past them the rows grow, and
    the result still equals the cpu executor's."""
    seen = []
    real = cuda_executor.CudaExecutor._grow_rows

    def grow(self, cap):
        seen.append(cap)
        return real(self, cap)

    monkeypatch.setattr(cuda_executor.CudaExecutor, "_grow_rows", grow)
    monkeypatch.setattr(cuda_executor, "FIRST_ROWS_BYTES", 4 * 8 * 16)  # 16 rows of dim 8
    with tempfile.TemporaryDirectory() as d:
        log = w.LogBuilder()
        for i in range(1100):
            log.add(w.Ins(f"id{i}", [float(i)] * 8, None, i))
        log.write(d)
        assert_same(d)
    assert seen[0] == 1024 and len(seen) >= 2 and seen[1] >= 1100, seen


def test_a_checkout_runs_its_own_kernels_not_an_installed_copys(tmp_path):
    """A source checkout on PYTHONPATH while gpu_pitr is also installed from elsewhere
    (an editable install maps gpu_pitr.kernels to its own kernels/): the cuda executor
    ran the installed kernels with the checkout's host code, under the checkout's
    source digest (which covers the checkout's kernels/)."""
    root = Path(gpu_pitr.__file__).resolve().parent.parent
    if not (root / "kernels" / "decode.py").is_file():
        pytest.skip("an installed package: no checkout to copy")
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    copy = tmp_path.resolve() / "checkout"
    for name in ("gpu_pitr", "kernels"):
        shutil.copytree(root / name, copy / name, ignore=ignore)
    proc = subprocess.run(
        [sys.executable, "-c", "from gpu_pitr.executors.cuda import _kernel_modules; "
         "from gpu_pitr import jit; got = _kernel_modules(); import gpu_pitr.kernels as k; "
         "print(*(m.__file__ for m in (*got, k)), *jit._ROOTS)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(copy), "NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stderr
    kernels = copy / "kernels"
    assert proc.stdout.split() == [str(kernels / "decode.py"), str(kernels / "resolve.py"),
                                   str(kernels / "__init__.py"), str(copy / "gpu_pitr"),
                                   str(kernels)]
def test_a_host_buffer_is_ordinary_memory_when_page_locked_memory_runs_out():
    """On a GPU chunks are read into page-locked memory. When CuPy cannot page-lock
    more (its CUDARuntimeError, not a MemoryError: the command line printed a
    traceback), ordinary memory serves instead; any other error is raised."""

    class CUDARuntimeError(RuntimeError):
        pass

    def pinned(why):
        def alloc(nbytes):
            if why is None:
                return bytearray(nbytes)  # stands in for the page-locked block
            raise CUDARuntimeError(why)

        return SimpleNamespace(cuda=SimpleNamespace(alloc_pinned_memory=alloc))

    ex = cuda_executor.CudaExecutor(1 << 20)
    ex.sim = False  # the device's path, with CuPy's allocator stood in for
    ex.xp = pinned("cudaErrorMemoryAllocation: out of memory")
    buf = ex.host_buffer(1000)
    assert isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.shape == (1000,)
    buf[:] = 7  # writable, as the reader needs
    ex.xp = pinned("cudaErrorInvalidValue: invalid argument")
    with pytest.raises(CUDARuntimeError, match="InvalidValue"):
        ex.host_buffer(1000)
    ex.xp = pinned(None)
    assert ex.host_buffer(1000).shape == (1000,)


def test_page_locked_buffers_go_back_when_a_restore_ends(monkeypatch, tmp_path):
    """CuPy's pinned pool keeps every block locked, reusing one only for a request of
    exactly its size: restores of logs of other segment sizes in one process (a library
    caller, a Dask worker) each locked a read ring of their own, for good. Every
    restore, ended or failed, now unlocks the blocks nothing uses."""
    freed = []
    pool = SimpleNamespace(free_all_blocks=lambda: freed.append("pool"))
    ex = cuda_executor.CudaExecutor(1 << 20)
    ex.sim = False  # the device's path, with CuPy's pool stood in for
    ex.xp = SimpleNamespace(get_default_pinned_memory_pool=lambda: pool)
    ex.release_host_buffers()
    assert freed == ["pool"]

    calls = []
    monkeypatch.setattr(cuda_executor.CudaExecutor, "release_host_buffers",
                        lambda self: calls.append(type(self).__name__))
    log = w.LogBuilder()
    log.add(w.Ins("a", [1.0], None, 1))
    log.add(w.Ins("b", [1.0, 2.0], None, 2))  # another dimension: the restore fails
    for name, to_time in (("good", 1), ("bad", None)):
        d = log.write(tmp_path / name)
        if to_time is None:
            with pytest.raises(errors.WalError):
                gpu_pitr.restore(d, backend="cuda")
        else:
            assert gpu_pitr.restore(d, backend="cuda", to_time=1).id_list() == ["a"]
    assert calls == ["CudaExecutor", "CudaExecutor"]
