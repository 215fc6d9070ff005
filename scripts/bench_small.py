"""Benchmark: the small workload DESIGN.md compares against (100 k inserts + 20 k updates).

DESIGN.md quotes PostgreSQL point-in-time recovery (~0.63 s) and Lance's version
checkout (~0.12 s) restoring a 100 k-insert + 20 k-update workload on these machines.
This writes that workload through the project's oxirs-vec-identical writer and, in
one run on the same files, measures: a raw read of the bytes, the library call
(`gpu_pitr.restore`, JIT cache warm, best and median of several), the command line
writing an .npz (a fresh process: interpreter, imports, cached JIT load, output),
and a naive pure-Python replay. The two quoted figures are printed as quoted, not
measured here. A benchmark: it prints, it never asserts a time.

    python scripts/bench_small.py
    python scripts/bench_small.py --inserts 100000 --updates 20000 --dim 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUOTED = {"PostgreSQL PITR": 0.63, "Lance version checkout": 0.12}  # DESIGN.md


def write_workload(wal_dir: Path, inserts: int, updates: int, dim: int, seed: int) -> int:
    """``inserts`` new ids, then ``updates`` updates of random existing ids (one
    commit point each, one second apart every 1000 records). Returns the bytes."""
    from gpu_pitr.format.entries import Insert, Update
    from gpu_pitr.format.writer import WalWriter

    rng = np.random.default_rng(seed)
    vectors = rng.random((inserts + updates, dim), dtype=np.float32) - np.float32(0.5)
    targets = rng.integers(0, inserts, updates)
    t0 = 1_700_000_000
    with WalWriter(wal_dir, created=t0, clock=lambda: t0) as w:
        for i in range(inserts):
            w.append(Insert(id=f"doc/{i:08d}", vector=vectors[i],
                            metadata={"source": "bench"} if i % 4 == 0 else None,
                            timestamp=t0 + i // 1000))
        for j, i in enumerate(targets.tolist()):
            w.append(Update(id=f"doc/{i:08d}", vector=vectors[inserts + j], metadata=None,
                            timestamp=t0 + (inserts + j) // 1000))
    return sum(p.stat().st_size for p in wal_dir.glob("wal-*.log"))


def raw_read(wal_dir: Path) -> float:
    """Seconds to read every segment into one small reused buffer (as scripts/bench.py:
    ``f.read(16 MiB)`` also timed a fresh 16 MiB object and its write to DRAM)."""
    view = memoryview(bytearray(256 << 10))
    t = time.perf_counter()
    for p in sorted(wal_dir.glob("wal-*.log")):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - t


def naive_replay(wal_dir: Path) -> tuple[float, int]:
    """Decode each record in Python and apply it to a dict (DESIGN.md's naive replay)."""
    from gpu_pitr.format.codec import decode_entry
    from gpu_pitr.format.entries import Delete, Insert, Update
    from gpu_pitr.format.reader import scan_wal

    t = time.perf_counter()
    state: dict = {}
    for seg in scan_wal(wal_dir):
        for rec in seg.records:
            _apply(state, decode_entry(rec.payload)[0], Insert, Update, Delete)
    return time.perf_counter() - t, len(state)


def _apply(state: dict, e, Insert, Update, Delete) -> None:  # noqa: N803 - the classes
    if isinstance(e, Insert | Update):
        state[e.id] = (e.vector, e.metadata)
    elif isinstance(e, Delete):
        state.pop(e.id, None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inserts", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=7, help="library restores timed")
    ap.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--json", help="also write every number to this file")
    opts = ap.parse_args(argv)

    import gpu_pitr

    with tempfile.TemporaryDirectory() as tmp:
        wal = Path(tmp) / "wal"
        t = time.perf_counter()
        nbytes = write_workload(wal, opts.inserts, opts.updates, opts.dim, opts.seed)
        write_s = time.perf_counter() - t
        segments = len(list(wal.glob("wal-*.log")))
        read_s = min(raw_read(wal) for _ in range(3))
        first = time.perf_counter()
        index = gpu_pitr.restore(wal, backend=opts.backend)
        first = time.perf_counter() - first
        runs = []
        for _ in range(opts.repeat):
            t = time.perf_counter()
            index = gpu_pitr.restore(wal, backend=opts.backend)
            runs.append(time.perf_counter() - t)
        ids = len(index)
        out = Path(tmp) / "out.npz"
        cmd = [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", str(out),
               "--backend", opts.backend, "--quiet"]
        cli = []
        for _ in range(3):
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            cli.append(time.perf_counter() - t)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gpu_pitr.pipeline"], check=True)
        startup = time.perf_counter() - t
        naive_s, naive_ids = naive_replay(wal)

    best, median = min(runs), statistics.median(runs)
    rows = [
        ("workload", f"{opts.inserts} inserts + {opts.updates} updates, dim {opts.dim}",
         f"{nbytes / 1e6:.1f} MB in {segments} segment(s), written in {write_s:.2f} s"),
        ("ids restored", ids, "expected " + str(opts.inserts) if ids == opts.inserts
         else f"EXPECTED {opts.inserts}"),
        ("raw read of the bytes, s", f"{read_s:.4f}", f"{nbytes / read_s / 1e9:.2f} GB/s"),
        ("gpu_pitr.restore, s (best / median)", f"{best:.3f} / {median:.3f}",
         f"{opts.repeat} runs, backend {index.backend}; first call {first:.3f} s; "
         f"best = {best / read_s:.1f} x the raw read"),
        ("gpu-pitr restore -> npz, s (best of 3)", f"{min(cli):.3f}",
         f"a fresh process; of which `import gpu_pitr.pipeline` alone {startup:.3f} s"),
        ("naive pure-Python replay, s", f"{naive_s:.3f}",
         f"{naive_ids} ids; {naive_s / best:.1f} x the library call"),
    ]
    for name, quoted in QUOTED.items():
        rows.append((f"{name} (quoted in DESIGN.md, not measured)", f"{quoted:.2f}",
                     f"library call {quoted / best:.1f} x faster; CLI "
                     f"{quoted / min(cli):.2f} x"))
    width = max(len(r[0]) for r in rows)
    print(f"host: {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value!s:>18}  {note}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({
            "inserts": opts.inserts, "updates": opts.updates, "dim": opts.dim,
            "bytes": nbytes, "ids": ids, "raw_read_s": read_s, "restore_runs_s": runs,
            "restore_first_s": first, "cli_s": cli, "import_s": startup,
            "naive_s": naive_s, "quoted_s": QUOTED}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
