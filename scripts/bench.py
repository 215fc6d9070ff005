"""Benchmark: restore speed and memory against raw reads of the same WAL, in one run.

Phases, each in a fresh subprocess so that its peak RSS is its own: raw read of all
segment bytes; restore to the latest state; restore to the mid timestamp; a naive
pure-Python replay on a sample; the CLI writing an .npz. Prints the ratios of
DESIGN.md ("The numbers that matter"); never asserts a time.

    python scripts/bench.py --size 256M
    python scripts/bench.py --size 1G --backend cuda --json out.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9
MIB = 1 << 20
STATS_FILE = "synth-stats.json"  # in the WAL directory; restores ignore other names
# The raw reads' buffer: small enough to stay in a core's cache, so that a pass times
# the bytes coming out of the page cache and not also a write of each to DRAM. With
# the 64 MiB buffer used before, the 1 GiB log read at 5.5-5.7 GB/s against 7.4-7.9
# GB/s at 256 KiB (alternated, one process; a 589 MiB buffer for the snapshot's files:
# 6.5 against 9.3 GB/s), which made every "x the raw read" look ~1.4x better.
READ_BUFFER = 256 << 10
WARM_PASSES = 3  # warm read passes; the figure is their median
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``8GiB``, ``512MB`` (all binary) or plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G, 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _label(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def _segment_paths(wal_dir: Path) -> list[Path]:
    from gpu_pitr.format.segments import list_segments

    return [s.path for s in list_segments(wal_dir)]


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _PeakRss:
    """Samples this process's RSS every few ms on a thread; ``peak`` is the highest seen.

    A sample can miss a short spike (or wait for the GIL); ``ru_maxrss`` in a
    fresh process is the exact peak and is reported beside it.
    """

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s = every_s
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def read_pass(paths, view) -> tuple[float, int]:
    """Seconds and bytes of one sequential read of every file into ``view``, reused."""
    total = 0
    t = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return time.perf_counter() - t, total


def warm_read(passes: list[dict]) -> dict:
    """The warm passes' median (every pass after the first)."""
    return sorted(passes[1:], key=lambda p: p["seconds"])[(len(passes) - 2) // 2]


def phase_read(a: dict) -> dict:
    """Raw sequential reads of every segment into one small reused buffer: a first pass,
    then WARM_PASSES with the page cache warm."""
    paths = _segment_paths(Path(a["dir"]))
    view = memoryview(bytearray(READ_BUFFER))
    passes = []
    for p in range(1 + WARM_PASSES):
        if p == 0 and a["drop_cache"]:
            for path in paths:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        dt, total = read_pass(paths, view)
        passes.append({"seconds": dt, "bytes": total, "gb_s": total / dt / GB})
    return {"passes": passes, "buffer_bytes": len(view)}


def _restore_fn(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "restore")


def _sync(vectors) -> None:
    if type(vectors).__module__.startswith("cupy"):
        import cupy

        cupy.cuda.Device().synchronize()


def _device_pool():
    try:
        import cupy

        return cupy.get_default_memory_pool()
    except Exception:
        return None


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: heap memory freed by the warm-up goes back to the OS,
    so that the measured restore's RSS grows as in a fresh process (no-op elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _warmup_bytes(a: dict) -> int:
    """Size of the warm-up WAL: enough live ids for the paths only a large restore takes
    (word columns of more than FEW_WORDS distinct words, sorted a byte at a time; maps
    grown several times), so that Numba compiles them there and not in the timed
    restore; never more than the log itself. With an empty Numba cache and a 256 KiB
    warm-up, the 1 GiB benchmark's first restore took 1.874 s against 0.775 s for the
    next; with this one (122 MB), 0.911 against 0.929."""
    from gpu_pitr.resolve.idsort import FEW_WORDS

    ids = 32 * FEW_WORDS  # 131,072 live ids
    # ~2/3 of the generator's records leave a live id; a record is ~4*dim + 70 bytes.
    need = int(ids * 1.6 * (4 * a["dim"] + 70))
    have = sum(p.stat().st_size for p in _segment_paths(Path(a["dir"])))
    return max(256 << 10, min(need, have))


def phase_restore(a: dict) -> dict:
    """Restore (after a warm-up restore that compiles the kernels), with memory."""
    import numpy as np

    from gpu_pitr.synth import write_synthetic_wal

    restore = _restore_fn(a["restore_impl"])
    kwargs = {"backend": a["backend"], "chunk_bytes": a["chunk_bytes"]}
    if a.get("to_time") is not None:
        kwargs["to_time"] = a["to_time"]
    out: dict = {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Two logs: one large enough for the large restore's paths (_warmup_bytes), and
        # one of a few hundred records, whose chunks decode in one block (the cpu
        # executor's _decode_block, which a large log takes only at a few chunks: with
        # the first alone, the timed restore after an edit compiled it, 1.1 s of 1.9).
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        write_synthetic_wal(big, total_bytes=_warmup_bytes(a), dim=a["dim"], segments=2,
                            seed=1)
        write_synthetic_wal(small, total_bytes=256 << 10, dim=a["dim"], segments=2, seed=1)
        t = time.perf_counter()
        for wal in (big, small):
            warm = restore(wal, **kwargs)
            _sync(warm.vectors)
            out["backend"] = warm.backend
            del warm
        out["warmup_s"] = time.perf_counter() - t
    gc.collect()
    _trim_heap()  # what the warm-up freed goes back: the runs below start like a fresh process
    pool = _device_pool() if out["backend"] == "cuda" else None
    for run in range(a["repeat"]):
        gc.collect()
        if pool is not None:
            pool.free_all_blocks()
        rss0, maxrss0, flt0 = _rss(), _maxrss(), _minflt()
        with _PeakRss() as sampler:
            t = time.perf_counter()
            index = restore(a["dir"], **kwargs)
            _sync(index.vectors)
            dt = time.perf_counter() - t
        rss_held, maxrss1, flt1 = _rss(), _maxrss(), _minflt()
        vec_bytes = int(index.vectors.nbytes)
        res = {
            "seconds": dt,
            "ids": len(index),
            "dim": int(index.vectors.shape[1]) if index.vectors.ndim == 2 else None,
            "vector_bytes": vec_bytes,
            "rss_before": rss0,
            "peak_rss_sampled": sampler.peak,
            # ru_maxrss is the process's lifetime peak: exact for the first run only.
            "peak_rss_maxrss": maxrss1 if maxrss1 > maxrss0 else None,
            "rss_held_after": rss_held,
            "minor_faults_mib": (flt1 - flt0) * os.sysconf("SC_PAGE_SIZE") / MIB,
            "report": _jsonable(index.report.to_dict()),
        }
        if pool is not None:
            res["device_pool_bytes"] = int(pool.total_bytes())  # blocks kept: ~ the high water
        if run == 0:
            # After the measurement: building the id strings is not part of the restore.
            id_utf8 = sum(len(s.encode()) for s in _id_strings(index))
            res["id_utf8_bytes"] = id_utf8
            res["ids_array_bytes"] = int(index.ids.nbytes)
            if a.get("expect_ids") is not None:
                res["expected_ids"] = a["expect_ids"]
        out["runs"].append(res)
        del index
    out["numpy"] = np.__version__
    return out


def _id_strings(index) -> list[str]:
    id_list = getattr(index, "id_list", None)
    return id_list() if id_list is not None else [str(s) for s in index.ids]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def phase_reference(a: dict) -> dict:
    """The naive replay: decode each record with the pure-Python codec, apply to a dict."""
    from gpu_pitr.format.codec import decode_entry
    from gpu_pitr.format.entries import (
        AbortTransaction,
        Batch,
        BeginTransaction,
        Checkpoint,
        CommitTransaction,
        Delete,
        Update,
    )
    from gpu_pitr.format.layout import HEADER_SIZE, MAGIC, RECORD_HEADER_SIZE

    state: dict = {}
    open_txns: dict[int, list] = {}

    def apply(entry) -> None:
        if isinstance(entry, Batch):
            for inner in entry.entries:
                apply(inner)
        elif isinstance(entry, Delete):
            state.pop(entry.id, None)
        elif isinstance(entry, Update) and entry.metadata is None:
            old = state.get(entry.id)
            state[entry.id] = (entry.vector, old[1] if old else None)
        else:
            state[entry.id] = (entry.vector, entry.metadata)

    limit = a["sample_records"] or float("inf")
    n = nbytes = 0
    seq = None
    t = time.perf_counter()
    for path in _segment_paths(Path(a["dir"])):
        if n >= limit:
            break
        data = path.read_bytes()
        nbytes += HEADER_SIZE
        pos = HEADER_SIZE
        while pos + RECORD_HEADER_SIZE <= len(data) and n < limit:
            if data[pos : pos + 4] == MAGIC:  # a writer reopened: a second header
                pos += HEADER_SIZE
                nbytes += HEADER_SIZE
                continue
            seq, length = struct.unpack_from("<QI", data, pos)
            payload = data[pos + RECORD_HEADER_SIZE : pos + RECORD_HEADER_SIZE + length]
            entry, _ = decode_entry(payload)
            if isinstance(entry, BeginTransaction):
                open_txns[entry.transaction_id] = []
            elif isinstance(entry, CommitTransaction):
                for e in open_txns.pop(entry.transaction_id, ()):
                    apply(e)
            elif isinstance(entry, AbortTransaction):
                open_txns.pop(entry.transaction_id, None)
            elif isinstance(entry, Checkpoint):
                pass
            elif open_txns:
                next(reversed(open_txns.values())).append(entry)
            else:
                apply(entry)
            pos += RECORD_HEADER_SIZE + length
            nbytes += RECORD_HEADER_SIZE + length
            n += 1
    dt = time.perf_counter() - t
    out = {"records": n, "bytes": nbytes, "seconds": dt, "ids": len(state)}
    if seq is not None:  # after the timing: the restore to the same record, compared
        out["restore_to_seq"] = seq
        out["same_as_restore"] = _same_as_restore(a, state, seq)
    return out


def _same_as_restore(a: dict, state: dict, seq: int) -> str:
    """The replay's dict against ``restore(to_seq=seq)``, ``seq`` the last record replayed:
    "same" when both hold the same ids with the same vector bytes and metadata, else
    what differs first. A check of the content (the restore phases only compare the
    number of ids with the generator's)."""
    import numpy as np

    got = _restore_fn(a["restore_impl"])(a["dir"], to_seq=seq, backend=a["backend"]).to_host()
    ids = got.id_list()
    if len(ids) != len(state) or set(ids) != state.keys():
        return f"ids differ ({len(ids)} restored, {len(state)} replayed)"
    vectors, metadata = np.asarray(got.vectors), got.metadata
    for row, key in enumerate(ids):
        vector, meta = state[key]
        if vector.tobytes() != vectors[row].tobytes():
            return f"vector of {key!r} differs"
        if meta != metadata[row]:
            return f"metadata of {key!r} differs: {meta!r} replayed, {metadata[row]!r} restored"
    return "same"


def phase_cli(a: dict) -> dict:
    """``python -m gpu_pitr restore DIR --out X.npz`` in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index.npz"
        cmd = [sys.executable, "-m", "gpu_pitr", "restore", a["dir"], "--out", str(out)]
        cmd += ["--backend", a["backend"]]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        size = out.stat().st_size if out.exists() else None
    return {
        "seconds": dt,
        "rc": proc.returncode,
        "npz_bytes": size,
        "stdout": proc.stdout[-2000:],
        "stderr": proc.stderr[-2000:],
    }


def phase_h2d(a: dict) -> dict:
    """Pinned host -> device copies of one chunk, repeated: the GPU's feed rate."""
    import cupy
    import cupyx

    n = a["chunk_bytes"] or 64 * MIB
    host = cupyx.empty_pinned((n,), dtype="uint8")
    host[:] = 1
    dev = cupy.empty((n,), dtype="uint8")
    stream = cupy.cuda.Stream(non_blocking=True)
    dev.set(host, stream=stream)
    stream.synchronize()
    reps = max(4, (2 << 30) // n)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(reps):
        dev.set(host, stream=stream)
    stop.record(stream)
    stop.synchronize()
    ms = cupy.cuda.get_elapsed_time(start, stop)
    return {"bytes": n * reps, "seconds": ms / 1e3, "gb_s": n * reps / (ms / 1e3) / GB}


def _run_phase(name: str, args: dict, timeout: float | None = None,
               env: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, json.dumps(args)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}", "stderr": proc.stderr[-4000:]}
    result = json.loads(lines[-1])
    result["process_wall_s"] = wall
    return result


def ensure_wal(opts) -> tuple[Path, dict | None, dict]:
    """The WAL to measure: reused if ``--dir`` holds segments, else generated there."""
    wal_dir = Path(
        opts.dir
        or Path(tempfile.gettempdir())
        / "gpu_pitr_bench"
        / (f"wal-{_label(opts.size)}-d{opts.dim}-s{opts.seed}")
    )
    gen = {"generated": False}
    stats_path = wal_dir / STATS_FILE
    if wal_dir.is_dir() and _segment_paths(wal_dir):
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
        return wal_dir, stats, gen
    from gpu_pitr.synth import write_synthetic_wal

    s = write_synthetic_wal(
        wal_dir, total_bytes=opts.size, dim=opts.dim, segments=opts.segments, seed=opts.seed
    )
    stats = s.to_dict()
    stats_path.write_text(json.dumps(stats, indent=1))
    gen = {"generated": True, "seconds": s.seconds, "gb_s": s.bytes / s.seconds / GB}
    return wal_dir, stats, gen


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _page_reporting() -> str | None:
    """A note when this (virtual) machine reports free memory to its host (virtio-balloon
    free page reporting): memory touched again after that costs a host fault per page,
    which makes first writes to new arrays slow at random (docs/measurements.md)."""
    try:
        with open("/sys/module/page_reporting/parameters/page_reporting_order") as f:
            order = int(f.read())
        with open("/proc/buddyinfo") as f:  # a column per block order
            top = max(len(line.split("zone", 1)[-1].split()) - 2 for line in f)
    except (OSError, ValueError):
        return None
    if order > top:  # above the largest block order: nothing is reported
        return None
    return (f"  host: free page reporting is on (blocks of order {order} go back to the "
            "hypervisor): first writes to new memory may be slow at random")


def _fmt(x, spec: str = ".3g", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--phase"]:
        print(json.dumps(PHASES[argv[1]](json.loads(argv[2])), default=str))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="WAL size (256M, 1G, 8G)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", help="WAL directory: reused if it holds segments, else written")
    ap.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto")
    ap.add_argument(
        "--chunk-bytes",
        type=parse_size,
        default=None,
        help="restore chunk size (default: the restore's own)",
    )
    ap.add_argument(
        "--sample-records",
        type=int,
        default=200_000,
        help="records replayed by the pure-Python reference (0: all)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="restores to latest in one process (the first is the headline)",
    )
    ap.add_argument(
        "--drop-cache",
        action="store_true",
        help="fadvise(DONTNEED) the segments before the first read pass",
    )
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("restore", "thp", "copied", "mid", "reference", "cli", "snapshot"),
        help="leave a phase out",
    )
    ap.add_argument(
        "--restore-impl",
        default="gpu_pitr:restore",
        help="module:function to measure (default gpu_pitr:restore)",
    )
    ap.add_argument("--json", help="also write every number to this file")
    opts = ap.parse_args(argv)

    wal_dir, stats, gen = ensure_wal(opts)
    paths = _segment_paths(wal_dir)
    wal_bytes = sum(p.stat().st_size for p in paths)
    print(f"WAL {wal_dir}: {len(paths)} segments, {wal_bytes / GB:.3f} GB", flush=True)
    print(f"  host: {os.cpu_count()} CPUs, load average {_load()} (other work skews timings)")
    if note := _page_reporting():
        print(note)
    if gen["generated"]:
        print(f"  generated in {gen['seconds']:.2f} s ({gen['gb_s']:.2f} GB/s)", flush=True)
    else:
        print("  reused (not generated in this run)", flush=True)
    if stats:
        print(
            f"  {stats['records']} records, dim {stats['dim']}, expect {stats['live_ids']} ids "
            f"(latest), {stats['live_ids_mid']} at mid T={stats['mid_timestamp']}",
            flush=True,
        )
    common = {
        "dir": str(wal_dir),
        "dim": stats["dim"] if stats else opts.dim,
        "backend": opts.backend,
        "chunk_bytes": opts.chunk_bytes,
        "drop_cache": opts.drop_cache,
        "restore_impl": opts.restore_impl,
        "sample_records": opts.sample_records,
    }
    results: dict = {"wal": {"dir": str(wal_dir), "bytes": wal_bytes, "stats": stats, **gen}}

    def phase(key: str, name: str, env: dict | None = None, **extra) -> dict:
        print(f"- {key} ...", end=" ", flush=True)
        r = _run_phase(name, {**common, **extra}, env=env)
        results[key] = r
        print(r.get("error") or f"{r.get('process_wall_s', 0):.1f} s", flush=True)
        return r

    read = phase("read", "read")
    rest = mid = ref = cli = {"error": "skipped"}
    if "restore" not in opts.skip:
        rest = phase(
            "restore",
            "restore",
            repeat=opts.repeat,
            expect_ids=stats["live_ids"] if stats else None,
        )
        if "thp" not in opts.skip:
            # The same restore with the other choice of NumPy's huge-page advice (a
            # user's NUMPY_MADVISE_HUGEPAGE is left alone by gpu_pitr.hostmem): what the
            # restore's own choice buys.
            from gpu_pitr.hostmem import keep_huge_page_advice

            user = os.environ.get("NUMPY_MADVISE_HUGEPAGE")
            kept = user != "0" if user is not None else keep_huge_page_advice(wal_bytes)
            phase("restore_thp", "restore",
                  env={"NUMPY_MADVISE_HUGEPAGE": "0" if kept else "1"}, repeat=1,
                  expect_ids=stats["live_ids"] if stats else None)
            results["restore_thp"]["kept"] = kept
            results["restore_thp"]["by_user"] = user is not None
        if "copied" not in opts.skip and rest.get("backend") == "cpu":
            # The same restore with the pieces copied out of the page cache (preadv)
            # instead of mapped (gpu_pitr.format.mapped): what mapping buys.
            phase("restore_copied", "restore", env={"GPU_PITR_MAP_READS": "0"},
                  repeat=opts.repeat, expect_ids=stats["live_ids"] if stats else None)
        if rest.get("backend") == "cuda":
            phase("h2d", "h2d")
    if "mid" not in opts.skip and stats:
        mid = phase(
            "restore_mid",
            "restore",
            repeat=1,
            to_time=stats["mid_timestamp"],
            expect_ids=stats["live_ids_mid"],
        )
    if "reference" not in opts.skip:
        ref = phase("reference", "reference")
    if "cli" not in opts.skip:
        cli = phase("cli", "cli")
    if "snapshot" not in opts.skip and stats:
        phase("snapshot", "snapshot", snapshot_seq=int(stats["records"] * 0.9),
              wal_bytes=wal_bytes)
    results["load_average_after"] = os.getloadavg()
    _print_table(results, read, rest, mid, ref, cli, wal_bytes, opts)
    print(f"load average after: {_load()}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _warm_snapshots(restore, kwargs: dict, dim: int) -> None:
    """Write, load and restore from a snapshot of a tiny WAL: after an edit to the
    package, the first of each would otherwise time Numba compiling it."""
    from gpu_pitr import snapshot
    from gpu_pitr.synth import write_synthetic_wal

    with tempfile.TemporaryDirectory() as tiny:
        wal = Path(tiny) / "wal"
        stats = write_synthetic_wal(wal, total_bytes=256 << 10, dim=dim, segments=2, seed=1)
        part = restore(wal, to_time=stats.mid_timestamp, **kwargs)
        snapshot.save(part, Path(tiny) / "snap")
        del part
        snapshot.load(Path(tiny) / "snap")
        restore(wal, base=Path(tiny) / "snap", **kwargs)


def phase_snapshot(a: dict) -> dict:
    """A snapshot at ~90% of the log: write, load (vs a raw read of its bytes), and a
    restore to latest from it against a restore of the whole log, in one process."""
    import shutil

    import numpy as np

    from gpu_pitr import snapshot

    restore = _restore_fn(a["restore_impl"])
    kwargs = {"backend": a["backend"], "chunk_bytes": a["chunk_bytes"]}
    snap_dir = Path(a["dir"]).parent / (Path(a["dir"]).name + ".bench-snapshot")
    out: dict = {}
    t = time.perf_counter()
    _warm_snapshots(restore, kwargs, a["dim"])  # compile (or load) every function timed below
    out["warmup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    full = restore(a["dir"], **kwargs)
    _sync(full.vectors)
    out["full_first_s"] = time.perf_counter() - t
    n_full = len(full)
    del full
    gc.collect()
    t = time.perf_counter()
    full = restore(a["dir"], **kwargs)
    _sync(full.vectors)
    out["full_s"] = time.perf_counter() - t
    full_host = full.to_host()
    full_ids, full_vec = full_host.id_list(), np.asarray(full_host.vectors).tobytes()
    full_meta = full_host.metadata
    del full, full_host
    gc.collect()
    part = restore(a["dir"], to_seq=a["snapshot_seq"], **kwargs)
    pos = part.position
    segs = _segment_paths(Path(a["dir"]))
    out["covered_bytes"] = sum(p.stat().st_size for p in segs if p.name < pos["segment"]) \
        + pos["offset"]
    shutil.rmtree(snap_dir, ignore_errors=True)
    t = time.perf_counter()
    snapshot.save(part, snap_dir)
    out["write_s"] = time.perf_counter() - t
    out["snapshot_ids"] = len(part)
    del part
    gc.collect()
    files = sorted(p for p in snap_dir.iterdir() if p.is_file())
    out["snapshot_bytes"] = sum(p.stat().st_size for p in files)
    view = memoryview(bytearray(READ_BUFFER))
    read_pass(files, view)  # warms the page cache, as the load below assumes
    out["raw_read_s"] = statistics.median(read_pass(files, view)[0]
                                          for _ in range(WARM_PASSES))
    del view
    t = time.perf_counter()
    loaded = snapshot.load(snap_dir)
    out["load_s"] = time.perf_counter() - t
    del loaded
    gc.collect()
    t = time.perf_counter()
    based = restore(a["dir"], base=snap_dir, **kwargs)
    _sync(based.vectors)
    out["base_s"] = time.perf_counter() - t
    out["base_timings"] = based.report.timings
    out["base_records"] = based.report.records_read
    host = based.to_host()
    out["equal"] = (len(host) == n_full and host.id_list() == full_ids
                    and np.asarray(host.vectors).tobytes() == full_vec
                    and host.metadata == full_meta)
    del full_meta
    del based, host
    gc.collect()
    # Two more of each, alternated: the ratio is taken between medians of three.
    out["full_runs"], out["base_runs"] = [out["full_s"]], [out["base_s"]]
    for _ in range(2):
        for key, extra in (("full_runs", {}), ("base_runs", {"base": snap_dir})):
            t = time.perf_counter()
            got = restore(a["dir"], **extra, **kwargs)
            _sync(got.vectors)
            out[key].append(time.perf_counter() - t)
            del got
            gc.collect()
    shutil.rmtree(snap_dir, ignore_errors=True)
    # A floor for any restore that hands back a new index: its vector bytes written
    # once into memory the process has not touched (here, a copy of them).
    from gpu_pitr.hostmem import fill_once_pages

    src = np.frombuffer(full_vec, np.uint8)
    with fill_once_pages(need=a["wal_bytes"]):  # the pages a restore of this log gets
        t = time.perf_counter()
        dst = np.empty_like(src)
        np.copyto(dst, src)
        out["fresh_copy_s"] = time.perf_counter() - t
    out["fresh_copy_bytes"] = len(src)
    return out


def _compiled_note(run: dict) -> str:
    """A warning when Numba compiled inside a timed restore (its report's "compile"
    seconds): after an edit or in a fresh checkout the warm-up does not reach every
    function, and the time is then not the restore's (3.85 s against 1.3 s once)."""
    compiled = run["report"].get("timings", {}).get("compile") or 0.0
    if compiled < 0.01:
        return ""
    return f"; COMPILED {compiled:.2f} s inside the timed restore (cold Numba cache: rerun)"


def _print_table(results, read, rest, mid, ref, cli, wal_bytes, opts) -> None:
    rows: list[tuple[str, str, str]] = []

    def add(name: str, value, note: str = "", spec: str = ".3g") -> None:
        rows.append((name, value if isinstance(value, str) else _fmt(value, spec), note))

    def ids_note(r: dict) -> str:
        if r.get("expected_ids") is None:
            return f"{r['ids']} ids (no expectation)"
        verdict = ("count matches generator" if r["expected_ids"] == r["ids"]
                   else "MISMATCH")
        return f"{r['ids']} ids, expected {r['expected_ids']}: {verdict}"

    warm = warm_read(read["passes"]) if "passes" in read else None
    note = read.get("error", "")
    if warm:
        cold = "after fadvise DONTNEED" if opts.drop_cache else "(cache state unknown)"
        note = (f"pass 1: {_fmt(read['passes'][0]['gb_s'])} {cold}; "
                f"{read['buffer_bytes'] >> 10} KiB buffer")
    add(f"read GB/s (median of {len(read.get('passes', [])) - 1} warm passes)",
        warm and warm["gb_s"], note)

    run = rest["runs"][0] if "runs" in rest else None
    restore_s = run["seconds"] if run else None
    note = rest.get("error", "")
    if run:
        note = f"backend {rest['backend']}; JIT warm-up {rest['warmup_s']:.2f} s not counted"
        if len(rest["runs"]) > 1:
            note += f"; repeat in same process {rest['runs'][1]['seconds']:.3f} s"
        note += _compiled_note(run)
    add("restore to latest, seconds", restore_s, note)
    add("restore GB/s", run and wal_bytes / restore_s / GB, ids_note(run) if run else "")
    if run:
        add("restore records/s", run["report"].get("records_read", 0) / restore_s, "", ".3e")
    add("restore-time / read-time", run and warm and restore_s / warm["seconds"], "1 = read speed")
    thp = results.get("restore_thp", {})
    if "runs" in thp and restore_s:
        from gpu_pitr.hostmem import huge_blocks_free

        thp_s = thp["runs"][0]["seconds"]
        kept = thp["kept"]
        free = huge_blocks_free()
        why = ("your NUMPY_MADVISE_HUGEPAGE" if thp["by_user"] else
               f"gpu_pitr.hostmem: free 2 MiB blocks "
               f"{'?' if free is None else f'{free / GB:.1f} GB'} before the run")
        add(f"  with NumPy's huge-page advice {'off' if kept else 'on'}, seconds", thp_s,
            f"fresh process, run next: {_fmt(thp_s / restore_s)} x the restore above, "
            f"which had it {'on' if kept else 'off'} ({why})")
    copied = results.get("restore_copied", {})
    if "runs" in copied and run:
        best = min(r["seconds"] for r in rest["runs"])
        best_copied = min(r["seconds"] for r in copied["runs"])
        add("  with the reads copied, not mapped, seconds", best_copied,
            f"fresh process, run next (GPU_PITR_MAP_READS=0), best of {len(copied['runs'])}: "
            f"{_fmt(best_copied / best)} x the best of the restore above "
            f"({best:.3f} s, mapped)")
    mrun = mid["runs"][0] if "runs" in mid else None
    add(
        "restore to mid T, seconds",
        mrun and mrun["seconds"],
        ids_note(mrun) + _compiled_note(mrun) if mrun else mid.get("error", ""),
    )

    py_total = None
    if "records" in ref and ref["seconds"] > 0:
        py_total = wal_bytes / (ref["bytes"] / ref["seconds"])
        check = ref.get("same_as_restore")
        add(
            "pure-Python replay records/s",
            ref["records"] / ref["seconds"],
            f"{ref['records']} records sampled; whole WAL ~{py_total:.3g} s by bytes; "
            f"restore to its last record: "
            f"{'same ids, vectors, metadata' if check == 'same' else f'DIFFERS: {check}'}",
            ".3e",
        )
    add(
        "speedup over pure-Python replay",
        py_total and restore_s and py_total / restore_s,
        ref.get("error", ""),
    )

    if run:
        chunk = opts.chunk_bytes or _default_chunk()
        index = run["vector_bytes"] + run["id_utf8_bytes"]
        peak = run["peak_rss_maxrss"] or run["peak_rss_sampled"]
        delta = peak - run["rss_before"]
        how = "ru_maxrss" if run["peak_rss_maxrss"] else "sampled"
        add(
            "restored index (vectors + UTF-8 ids)",
            f"{index / MIB:.1f} MiB",
            f"ids as a NumPy unicode array: {run['ids_array_bytes'] / MIB:.1f} MiB",
        )
        add(
            "peak RSS / (index + chunk)",
            delta / (index + chunk),
            f"peak host RSS delta {delta / MIB:.0f} MiB ({how}), chunk {chunk / MIB:.0f} MiB",
        )
        if "device_pool_bytes" in run:
            add("device pool bytes / index", run["device_pool_bytes"] / index)
        on_device = rest["backend"] == "cuda"
        for i, r in enumerate(rest["runs"]):
            grew = r["rss_held_after"] - r["rss_before"]
            label = "first restore, fresh process" if i == 0 else "repeat, same process"
            if on_device:
                verdict = "device"
            else:
                verdict = "fresh" if grew >= 0.5 * r["vector_bytes"] else "reused"
            add(
                f"output memory ({label})",
                verdict,
                f"host RSS grew {grew / MIB:.0f} MiB while holding {r['vector_bytes'] / MIB:.0f}"
                f" MiB of vectors; minor faults {r['minor_faults_mib']:.0f} MiB"
                " (a huge page counts once)",
            )
    if "gb_s" in results.get("h2d", {}):
        h2d = results["h2d"]["gb_s"]
        add(
            "pinned host-to-device GB/s",
            h2d,
            f"restore GB/s / H2D GB/s: {_fmt(restore_s and wal_bytes / restore_s / GB / h2d)}",
        )
    if cli.get("rc") == 0:
        note = f"npz {cli['npz_bytes'] / MIB:.0f} MiB; includes interpreter start and JIT"
    elif "rc" in cli:
        note = f"rc {cli['rc']}: {(cli.get('stderr') or '').strip()[-200:]}"
    else:
        note = cli.get("error", "")
    add("CLI restore -> npz, seconds", cli.get("seconds"), note)
    snap = results.get("snapshot", {})
    if "base_s" in snap:
        add("snapshot at ~90% of the log", f"{snap['covered_bytes'] / wal_bytes:.0%}",
            f"{snap['snapshot_ids']} ids, {snap['snapshot_bytes'] / MIB:.0f} MiB, written in "
            f"{snap['write_s']:.2f} s")
        add("snapshot load GB/s", snap["snapshot_bytes"] / snap["load_s"] / GB,
            f"raw read of the same files {_fmt(snap['snapshot_bytes'] / snap['raw_read_s'] / GB)}"
            f" GB/s; load / raw read time {_fmt(snap['load_s'] / snap['raw_read_s'])}")
        full_runs, base_runs = snap["full_runs"], snap["base_runs"]
        full_s, base_s = statistics.median(full_runs), statistics.median(base_runs)
        add("restore from snapshot, seconds", base_s,
            f"whole log {full_s:.3f} s in the same process: {_fmt(full_s / base_s)}x "
            f"faster; {'same result' if snap['equal'] else 'RESULT DIFFERS'}")
        add("  runs, alternated (medians above)", len(base_runs),
            f"from the snapshot {' '.join(f'{x:.3f}' for x in base_runs)} s; whole log "
            f"{' '.join(f'{x:.3f}' for x in full_runs)} s")
        if "fresh_copy_s" in snap:
            add("  floor: the index's vectors written once", snap["fresh_copy_s"],
                f"{snap['fresh_copy_bytes'] / MIB:.0f} MiB into fresh memory, "
                f"{snap['fresh_copy_bytes'] / snap['fresh_copy_s'] / GB:.2f} GB/s; 5x the "
                f"whole log would be {full_s / 5:.3f} s")
    elif snap:
        add("restore from snapshot, seconds", None, snap.get("error", ""))

    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


PHASES = {
    "read": phase_read,
    "restore": phase_restore,
    "reference": phase_reference,
    "cli": phase_cli,
    "snapshot": phase_snapshot,
    "h2d": phase_h2d,
}


def _default_chunk() -> int:
    try:
        from gpu_pitr.pipeline import DEFAULT_CHUNK_BYTES

        return DEFAULT_CHUNK_BYTES
    except ImportError:
        return 64 * MIB


if __name__ == "__main__":
    sys.exit(main())
