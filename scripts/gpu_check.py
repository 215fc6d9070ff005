"""One GPU check for a machine with a GPU and no network (see scripts/gpu_check).

1. the cuda-vs-cpu equality tests (tests/test_cuda_executor.py, tests/test_cuda_overlap.py)
   on the real GPU;
2. a WAL of about --gib GiB (a synthetic GiB written once, its segments repeated
   under later names, as a writer restarted without recovery would leave them);
3. pinned host-to-device and device-to-device bandwidth, measured in this run;
4. cuda restores from the page cache (with the next chunk's copy overlapping
   the kernels, and once with GPU_PITR_CUDA_OVERLAP=0) and from tmpfs (host
   memory), a profiled run for time per stage, peak device memory, the cpu
   executor on the same WAL, and a bit-for-bit comparison of the two results;
   then the same cuda restore in two fresh processes, Numba's synchronising of every
   CuPy kernel argument left on and turned off (NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0);
   then whether CuPy's pinned pool keeps the page-locked read buffers of restores
   with other chunk sizes (``pinned_check``);
5. a short table, printed last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

GIB = 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bandwidths(cp) -> dict:
    """Pinned host->device and device->device copy bandwidth (GB/s), CUDA events."""
    n = 512 << 20
    mem = cp.cuda.alloc_pinned_memory(n)
    host = np.frombuffer(mem, np.uint8, n)
    host[:] = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    dev = cp.empty(n, cp.uint8)
    dev2 = cp.empty(n, cp.uint8)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    h2d, d2d = [], []
    for _ in range(8):
        start.record()
        dev.set(host)
        stop.record()
        stop.synchronize()
        h2d.append(n / (cp.cuda.get_elapsed_time(start, stop) / 1e3) / 1e9)
        start.record()
        dev2[...] = dev
        stop.record()
        stop.synchronize()
        d2d.append(2 * n / (cp.cuda.get_elapsed_time(start, stop) / 1e3) / 1e9)
    del dev, dev2
    return {"h2d_pinned_gbs": float(np.median(h2d[2:])), "d2d_gbs": float(np.median(d2d[2:]))}


def build_wal(base: Path, gib: int) -> tuple[Path, dict]:
    """One synthetic GiB, then its segments repeated under later names."""
    from gpu_pitr.format.layout import segment_name
    from gpu_pitr.synth import write_synthetic_wal

    one = base / "one"
    stats = write_synthetic_wal(one, total_bytes=GIB, dim=128, segments=8, seed=1)
    wal = base / "wal"
    wal.mkdir()
    segs = sorted(one.glob("wal-*.log"))
    created = 1_800_000_000
    for _ in range(gib):
        for s in segs:
            shutil.copyfile(s, wal / segment_name(created))
            created += 1
    return wal, {"one_gib_records": stats.records, "one_gib_live_ids": stats.live_ids}


def wal_bytes(wal: Path) -> int:
    return sum(p.stat().st_size for p in wal.glob("wal-*.log"))


# Set when a measurement with the copy ahead failed: the rest is measured without it.
OVERLAP_BROKEN = False


def _overlap_env() -> str:
    return "0" if OVERLAP_BROKEN else "1"


def timed_restore(wal, backend, cp=None, overlap=True, **kw):
    """A restore and its seconds; ``overlap=False``: the cuda executor's synchronous
    copies (GPU_PITR_CUDA_OVERLAP=0) for this restore only."""
    import gpu_pitr

    os.environ["GPU_PITR_CUDA_OVERLAP"] = "1" if overlap and not OVERLAP_BROKEN else "0"
    try:
        t = time.perf_counter()
        idx = gpu_pitr.restore(wal, backend=backend, **kw)
        if cp is not None:
            cp.cuda.get_current_stream().synchronize()
        return idx, time.perf_counter() - t
    finally:
        os.environ["GPU_PITR_CUDA_OVERLAP"] = _overlap_env()


def profiled_restore(wal, cp):
    """A cuda restore that synchronises after each device stage (time per stage)."""
    from gpu_pitr.executors.cuda import CudaExecutor
    from gpu_pitr.pipeline import _run

    ex = CudaExecutor(wal_bytes(wal), profile=True)
    t = time.perf_counter()
    index, run = _run((Path(wal), {}, False, False, False), ex, None,
                      {"kind": "latest", "value": None, "exclusive": False})
    cp.cuda.get_current_stream().synchronize()
    total = time.perf_counter() - t
    host = {k: round(v, 4) for k, v in run.timings.items()}
    dev = {k: round(v, 4) for k, v in ex.timings.items()}
    return index, total, host, dev, f"{ex.adopted}/{ex.staged}"  # copies ahead used/issued


def snapshot_check(wal: Path, base: Path, full_idx, full_s: float, cp, figures) -> str:
    """A snapshot of the first ~90% of the segments (restored on cuda), then a cuda
    restore of the whole WAL from it: equal to the whole-log restore, and how fast."""
    try:
        from gpu_pitr import snapshot

        segs = sorted(wal.glob("wal-*.log"))
        head = base / "head"
        shutil.rmtree(head, ignore_errors=True)  # a second round: made afresh
        head.mkdir()
        for p in segs[: max(1, len(segs) * 9 // 10)]:
            os.symlink(p, head / p.name)
        part, _ = timed_restore(head, "cuda", cp)
        snap_dir = base / "snap"
        shutil.rmtree(snap_dir, ignore_errors=True)
        t = time.perf_counter()
        snapshot.save(part, snap_dir)
        write_s = time.perf_counter() - t
        del part
        if cp is not None:
            cp.get_default_memory_pool().free_all_blocks()
        idx, s = timed_restore(wal, "cuda", cp, base=snap_dir)
        same = same_result(idx, full_idx) and idx.report.backend == "cuda"
        figures.update(snapshot_write_s=write_s, snapshot_restore_s=s, snapshot_equal=same)
        return (f"{s:.2f} s vs {full_s:.2f} s whole log = {full_s / s:.1f}x; "
                f"{'same result' if same else 'RESULT DIFFERS'}")
    except Exception as err:  # a table row, not a crash: the rest of the check stands
        return f"FAILED: {type(err).__name__}: {err}"[:200]


# A cuda restore in a fresh process: its seconds and digest, printed as JSON.
_CHILD = """
import json, sys, time
sys.path[:0] = [{root!r}, {scripts!r}]
import gpu_pitr
from gpu_check import digest
gpu_pitr.restore({warm!r}, backend="cuda")  # kernels loaded, memory pools warm
t = time.perf_counter()
idx = gpu_pitr.restore({wal!r}, backend="cuda")
try:
    import cupy
    cupy.cuda.get_current_stream().synchronize()
except ImportError:  # the simulator: nothing runs ahead
    pass
print(json.dumps({{"s": time.perf_counter() - t, "digest": digest(idx),
                  "backend": idx.report.backend}}))
"""


def restore_in_child(wal: Path, warm: Path, env: dict, timeout: int = 240) -> dict:
    """A cuda restore of ``wal`` in a fresh process with ``env`` added: ``{"s", "digest"}``
    (an environment Numba reads at import, such as NUMBA_CUDA_ARRAY_INTERFACE_SYNC,
    needs its own process)."""
    code = _CHILD.format(root=str(ROOT), scripts=str(ROOT / "scripts"), warm=str(warm),
                         wal=str(wal))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sync_check(wal: Path, warm: Path, want: str, figures) -> str:
    """Numba synchronises CuPy's stream for every CuPy array passed to a kernel; both
    share one stream, so that is redundant. Two fresh processes, the default and
    NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0: their times, and both results against the cpu's."""
    try:
        on = restore_in_child(wal, warm, {})
        off = restore_in_child(wal, warm, {"NUMBA_CUDA_ARRAY_INTERFACE_SYNC": "0"})
        figures.update(sync_default=on, sync_off=off)
        same = all(r["digest"] == want and r["backend"] == "cuda" for r in (on, off))
        figures["sync_equal"] = same
        return (f"{off['s']:.2f} s with =0 vs {on['s']:.2f} s default (fresh processes); "
                f"{'both equal the cpu result' if same else 'RESULT DIFFERS'}")
    except Exception as err:  # a table row, not a crash: the rest of the check stands
        return f"FAILED: {type(err).__name__}: {err}"[:200]


def pinned_check(cp, base: Path, figures) -> str:
    """CuPy's pinned memory pool keeps a freed page-locked block for a later request of
    the same size only, and frees none until ``free_all_blocks`` (or an allocation
    fails). A restore's read-ahead ring is five buffers of its chunk (the largest
    segment, in whole MiB, at most 128) + 1 MiB: restores in one process of logs whose
    largest segments differ left five page-locked blocks each, until each restore
    released its own as it ends (``CudaExecutor.release_host_buffers``). Two small
    restores of different segment sizes: the pool's free blocks before and after (the
    same: released; grown by ten: kept), and the seconds to page-lock one default ring
    afresh (what the release costs the next restore). The simulator allocates no pinned
    memory, so only a GPU shows this."""
    try:
        import gpu_pitr
        from gpu_pitr.synth import write_synthetic_wal

        pool = cp.get_default_pinned_memory_pool()
        before = pool.n_free_blocks()
        for i, mib in enumerate((3, 6)):
            d = base / f"pinned{i}"
            if not d.is_dir():
                write_synthetic_wal(d, total_bytes=mib << 20, dim=8, segments=1, seed=30 + i)
            gpu_pitr.restore(d, backend="cuda")
        after = pool.n_free_blocks()
        pool.free_all_blocks()
        t = time.perf_counter()
        ring = [cp.cuda.alloc_pinned_memory(129 << 20) for _ in range(5)]
        pin_s = time.perf_counter() - t
        del ring
        pool.free_all_blocks()
        figures.update(pinned_free_blocks=[before, after], pin_ring_s=pin_s)
        return (f"free blocks {before} -> {after} after 2 small restores "
                f"({'kept' if after > before else 'released'}); "
                f"page-locking a 5 x 129 MiB ring: {pin_s:.2f} s")
    except Exception as err:  # a table row, not a crash: the rest of the check stands
        return f"FAILED: {type(err).__name__}: {err}"[:200]


def same_result(a, b) -> bool:
    ha, hb = a.to_host(), b.to_host()
    return (ha.id_list() == hb.id_list()
            and ha.vectors.shape == hb.vectors.shape
            and ha.vectors.tobytes() == hb.vectors.tobytes()
            and ha.metadata == hb.metadata)


def digest(idx) -> str:
    """One hash of a result's ids, vector bits and metadata: every restore of the check
    is compared with the cpu executor's, not only the profiled one (which synchronises
    after each stage, so it cannot show a copy-ahead race)."""
    h = idx.to_host()
    d = hashlib.blake2b(digest_size=16)
    d.update(json.dumps(h.id_list()).encode())
    d.update(repr(h.vectors.shape).encode())
    d.update(np.ascontiguousarray(h.vectors).view(np.uint8).data)
    d.update("\n".join(h.metadata_json().tolist()).encode())
    return d.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=int, default=8, help="WAL size in GiB (default 8)")
    ap.add_argument("--workdir", default=None, help="where to write the WAL (default: a temp dir)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--tests-timeout", type=int, default=300,
                    help="seconds for the cuda == cpu tests on the GPU (default 300)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    rows: list[tuple[str, str]] = []
    figures: dict = {}

    import cupy as cp
    from numba import cuda

    dev = cp.cuda.runtime.getDeviceProperties(0)
    name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
    log(f"GPU {name}, CuPy {cp.__version__}, Numba {__import__('numba').__version__}, "
        f"NumPy {np.__version__}, numba.cuda available: {cuda.is_available()}")
    rows.append(("device", name))

    try:
        return _checks(args, cp, rows, figures, t_all)
    finally:
        if args.json:  # also after a failure: what was measured
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


# The id shards' cuda tests (the executor's filter after its entry expansion).
SHARD_TESTS = [f"tests/test_id_shards.py::{name}" for name in (
    "test_random_workloads_cuda",
    "test_a_dimension_mismatch_fails_every_shard_at_the_same_record[cuda]",
    "test_a_shard_with_no_ids_has_the_dimension_of_the_index[cuda]")]


def _checks(args, cp, rows, figures, t_all) -> int:
    global OVERLAP_BROKEN
    import traceback

    if not args.skip_tests:
        log("cuda == cpu on the test corpora (tests/test_cuda_executor.py, real GPU), and "
            "the id shards' cuda tests")
        env = dict(os.environ, GPU_PITR_REAL_GPU="1", GPU_PITR_CUDA_OVERLAP="1",
                   GPU_PITR_CUDA_EXAMPLES=os.environ.get("GPU_PITR_CUDA_EXAMPLES", "15"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests/test_cuda_executor.py", "tests/test_cuda_overlap.py", *SHARD_TESTS],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.tests_timeout)
            tail = (proc.stdout + proc.stderr).strip().splitlines()
            figures["tests_rc"] = proc.returncode
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
            tail = [*out.strip().splitlines(), f"TIMED OUT after {args.tests_timeout} s"]
            figures["tests_rc"] = "timeout"
        print("\n".join(tail[-25:]))
        rows.append(("test corpora, cuda == cpu", f"{tail[-1] if tail else '?'} "
                     f"({time.perf_counter() - t:.0f} s)"))

    state: dict = {}  # the WAL, built once: a second round reuses it
    try:
        return measure(args, cp, rows, figures, t_all, state)
    except Exception:
        traceback.print_exc()
        rows.append(("FAILED (copy ahead on)", traceback.format_exc().strip().splitlines()[-1]))
        print_table(rows)  # what the first round measured, in case the second runs out of time
    if not state.get("overlap_ran"):
        rows.append(("not measured again", "the failure came before any restore with the "
                     "copy ahead"))
        print_table(rows)
        return 1
    # The copy ahead is the newest GPU-only code: measure the rest without it rather
    # than lose the run.
    OVERLAP_BROKEN = True
    figures["overlap_broken"] = True
    log("measuring again with GPU_PITR_CUDA_OVERLAP=0")
    try:
        return measure(args, cp, rows, figures, t_all, state) or 1
    except Exception:
        traceback.print_exc()
        rows.append(("FAILED (copy ahead off)", traceback.format_exc().strip().splitlines()[-1]))
        print_table(rows)
        return 1


def print_table(rows) -> None:
    width = max(len(k) for k, _ in rows)
    print("\n== gpu_pitr gpu_check ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def measure(args, cp, rows, figures, t_all, state) -> int:
    """One round of measurements; ``state`` keeps the WAL for a second round, and says
    whether a restore with the copy ahead ran (``overlap_ran``)."""
    os.environ["GPU_PITR_CUDA_OVERLAP"] = _overlap_env()  # whatever the caller's shell says
    bw = bandwidths(cp)
    figures.update(bw)
    log(f"bandwidth: {bw}")

    if "wal" not in state:
        base = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_pitr_check_"))
        base.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        wal, wstats = build_wal(base, args.gib)
        state.update(base=base, wal=wal)
        log(f"WAL {wal_bytes(wal) / GIB:.2f} GiB in {len(list(wal.glob('wal-*.log')))} "
            f"segments written in {time.perf_counter() - t:.1f} s")
        figures.update(wstats)
    base, wal = state["base"], state["wal"]
    size = wal_bytes(wal)
    figures["wal_bytes"] = size

    t = time.perf_counter()
    buf = bytearray(64 << 20)
    for p in sorted(wal.glob("wal-*.log")):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    read_s = time.perf_counter() - t
    figures["read_gbs"] = size / read_s / 1e9

    log("warm-up (kernel compilation)")
    warm = base / "warm"
    if not warm.is_dir():
        from gpu_pitr.synth import write_synthetic_wal

        write_synthetic_wal(warm, total_bytes=4 << 20, dim=128, segments=2, seed=2)
    timed_restore(warm, "cuda", cp)
    timed_restore(warm, "cpu")

    # The cpu executor's result first: every cuda restore below is compared with it.
    cpu_idx, cpu_s = timed_restore(wal, "cpu")
    want = digest(cpu_idx)
    del cpu_idx  # its digest is what every cuda restore is compared with
    figures["cpu_s"] = cpu_s
    log(f"cpu restore: {cpu_s:.2f} s")
    compared: list[str] = []  # "ok" or what differed, one per cuda restore

    def check(idx, what: str) -> None:
        # A fall-back to the cpu executor (NeedsHostExecutor) would compare cpu with cpu.
        same = digest(idx) == want and idx.report.backend == "cuda"
        compared.append("ok" if same else what)
        if not same:
            log(f"RESULT DIFFERS from the cpu executor's, or not restored on cuda "
                f"({idx.report.backend}): {what}")

    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    gpu_runs, off_runs = [], []
    for overlap in (True, False, True):  # A/B: the copy ahead on, off, on
        state["overlap_ran"] = state.get("overlap_ran") or (overlap and not OVERLAP_BROKEN)
        idx, s = timed_restore(wal, "cuda", cp, overlap=overlap)
        (gpu_runs if overlap else off_runs).append(s)
        if overlap:
            peak_pool = pool.total_bytes()
        index_bytes = idx.vectors.nbytes
        n_ids = len(idx)
        check(idx, f"page cache, copy ahead {'on' if overlap and not OVERLAP_BROKEN else 'off'}")
        del idx
        pool.free_all_blocks()
    gpu_s, off_s = min(gpu_runs), min(off_runs)
    figures.update(cuda_page_cache_s=gpu_runs, cuda_gbs=size / gpu_s / 1e9,
                   cuda_overlap_off_s=off_runs,
                   device_pool_bytes=peak_pool, index_bytes=index_bytes, ids=n_ids)
    log(f"cuda restore from page cache: {gpu_runs} s, overlap off {off_runs} s, {n_ids} ids")

    shm = Path("/dev/shm")
    shm_s = None
    if shm.is_dir() and shutil.disk_usage(shm).free > size + GIB:
        shm_wal = Path(tempfile.mkdtemp(dir=shm, prefix="gpu_pitr_wal_"))
        try:
            for p in sorted(wal.glob("wal-*.log")):
                shutil.copyfile(p, shm_wal / p.name)
            shm_runs = []
            for _ in range(2):
                idx, s = timed_restore(shm_wal, "cuda", cp)
                shm_runs.append(s)
                check(idx, "tmpfs")
                del idx
            pool.free_all_blocks()
        finally:
            shutil.rmtree(shm_wal)
        shm_s = min(shm_runs)
        figures["cuda_tmpfs_s"] = shm_runs
        log(f"cuda restore from tmpfs: {shm_runs} s")

    gpu_idx, prof_s, host_t, dev_t, ahead = profiled_restore(wal, cp)
    figures.update(profiled_s=prof_s, host_stages=host_t, device_stages=dev_t,
                   copies_ahead_used_issued=ahead)
    log(f"profiled: {prof_s:.2f} s host {host_t} device {dev_t} copies ahead {ahead}")
    check(gpu_idx, "profiled")
    equal = compared[-1] == "ok"
    figures["equal_8gib"] = equal
    log(f"cuda == cpu on the {size / GIB:.1f} GiB WAL: {equal}")

    snap_row = snapshot_check(wal, base, gpu_idx, gpu_s, cp, figures)
    del gpu_idx
    pool.free_all_blocks()
    sync_row = sync_check(wal, warm, want, figures)
    pinned_row = pinned_check(cp, base, figures)
    bad = [c for c in compared if c != "ok"]
    figures["cuda_restores_compared"] = compared

    h2d = bw["h2d_pinned_gbs"]
    gbs = size / gpu_s / 1e9
    touched = size + index_bytes  # every WAL byte read once, every index byte written once
    kern_s = dev_t.get("decode", 0) + dev_t.get("resolve", 0) + dev_t.get("scatter", 0)
    shutil.rmtree(base, ignore_errors=True)
    state.clear()

    rows += [
        ("WAL", f"{size / GIB:.2f} GiB, {n_ids:,} ids x 128 (index {index_bytes / 1e9:.2f} GB)"),
        ("pinned H2D bandwidth", f"{h2d:.1f} GB/s"),
        ("device D2D bandwidth (r+w)", f"{bw['d2d_gbs']:.0f} GB/s"),
        ("raw read (page cache)", f"{figures['read_gbs']:.2f} GB/s"),
        ("cuda restore, page cache", f"{gbs:.2f} GB/s ({gpu_s:.2f} s) = {gbs / h2d:.0%} of H2D"),
        ("same, GPU_PITR_CUDA_OVERLAP=0", f"{size / off_s / 1e9:.2f} GB/s ({off_s:.2f} s); "
         f"overlap saves {off_s - gpu_s:+.2f} s; copies ahead used {ahead} (used/issued)"),
    ]
    if shm_s:
        g = size / shm_s / 1e9
        rows.append(("cuda restore, tmpfs", f"{g:.2f} GB/s ({shm_s:.2f} s) = {g / h2d:.0%} of H2D"))
    rows += [
        ("host stages (s)", " ".join(f"{k}={v}" for k, v in host_t.items())),
        ("device stages (s)", " ".join(f"{k}={v}" for k, v in dev_t.items())),
        ("decode+resolve+scatter", (
            f"{touched / kern_s / 1e9:.1f} GB/s on ~{touched / 1e9:.1f} GB "
            f"= {touched / kern_s / 1e9 / bw['d2d_gbs']:.1%} of D2D") if kern_s > 0 else
         f"not timed (device stages {dev_t})"),
        ("peak device pool", f"{peak_pool / 1e9:.2f} GB (index {index_bytes / 1e9:.2f} GB)"),
        ("cpu executor, same WAL", f"{size / cpu_s / 1e9:.2f} GB/s ({cpu_s:.1f} s)"),
        ("cuda == cpu (ids, vector bits, metadata)",
         f"{equal}; every cuda restore: {len(compared) - len(bad)} of {len(compared)} equal"
         + (f" (differ: {', '.join(bad)})" if bad else "")),
        ("cuda restore from a 90% snapshot", snap_row),
        ("NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0", sync_row),
        ("pinned pool (host)", pinned_row),
        ("check wall time", f"{time.perf_counter() - t_all:.0f} s"),
    ]
    print_table(rows)
    # Every result check counts, a row that FAILED too (its figure is then missing).
    ok = (equal and not bad and figures.get("tests_rc", 0) == 0
          and figures.get("snapshot_equal") is True and figures.get("sync_equal") is True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
