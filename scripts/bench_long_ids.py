"""Benchmark: an index whose ids outweigh its vectors (long URIs of one site).

The main benchmark (`scripts/bench.py`) restores 512-byte vectors under ~40-byte
ids. Here it is the other way round: by default 5M inserts of 230-byte ids that
share their first 201 bytes (`https://example.org/corpus/xxx…/<29 digits>`), with
4-float vectors, so the id arena is most of the index (1.15 GB of 1.23 GB). What
this stresses is what scales with id bytes: hashing and comparing ids, the arenas
(grown, compacted, joined) and the sort by UTF-8 bytes at the end.

It writes the log (vectorised, in seconds), then in one run on the same files
measures a raw read of the bytes and, in a fresh process (after a small warm-up
restore of the same shape, so no compiling is counted), `gpu_pitr.restore` to
memory: seconds, GB/s, the stage times, and the peak RSS above the process's
baseline against the restored index plus one read chunk. The result is checked
(count, every vector in order, a sample of ids byte for byte). A benchmark: it
prints, it never asserts a time.

    python scripts/bench_long_ids.py
    python scripts/bench_long_ids.py --ids 20000000 --dir /tmp/long_ids --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gpu_pitr.hostmem import peak_rss

SITE = b"https://example.org/corpus/"
DIM = 4  # vector: [n mod 2^16, n div 2^16, 0.5, -0.0] (exact in float32)
BASE_TIME = 1_700_000_000


def write_log(wal_dir: Path, n: int, id_bytes: int, shared: int, segments: int = 5,
              seed: int = 7) -> int:
    """``n`` inserts (ids numbered by a random permutation of 0..n-1, so the log is not
    in id order), one per record, as the oxirs-vec writer frames them. Returns bytes."""
    digits = id_bytes - shared
    if shared < len(SITE) + 1 or digits < len(str(max(n - 1, 0))) or id_bytes > 250:
        raise SystemExit(f"--id-bytes {id_bytes} with --shared {shared}: the ids need "
                         f"{len(SITE) + 1}..{id_bytes} shared bytes and room for the "
                         f"numbers (ids of at most 250 bytes)")
    prefix = SITE + b"x" * (shared - len(SITE) - 1) + b"/"
    payload = 1 + 1 + id_bytes + 1 + 4 * DIM + 1 + 5
    rec_bytes = 12 + payload
    nums = np.random.default_rng(seed).permutation(n).astype(np.int64)
    wal_dir.mkdir(parents=True, exist_ok=True)
    per = max(1, -(-n // segments))
    total = 0
    for s, lo in enumerate(range(0, max(n, 1), per)):
        hi = min(n, lo + per)
        m = hi - lo
        rec = np.zeros((m, rec_bytes), np.uint8)
        seq = np.arange(lo, hi, dtype=np.uint64)
        rec[:, 0:8] = seq.view(np.uint8).reshape(m, 8)
        rec[:, 8:12] = np.full(m, payload, np.uint32).view(np.uint8).reshape(m, 4)
        p = 12
        rec[:, p] = 0  # Insert
        rec[:, p + 1] = id_bytes
        p += 2
        rec[:, p:p + shared] = np.frombuffer(prefix, np.uint8)
        x = nums[lo:hi].copy()
        for d in range(id_bytes - 1, shared - 1, -1):  # the number, zero padded
            rec[:, p + d] = (x % 10 + 48).astype(np.uint8)
            x //= 10
        p += id_bytes
        rec[:, p] = DIM
        vec = np.zeros((m, DIM), np.float32)
        vec[:, 0] = nums[lo:hi] & 0xFFFF
        vec[:, 1] = nums[lo:hi] >> 16
        vec[:, 2] = 0.5
        vec[:, 3] = -0.0
        rec[:, p + 1:p + 1 + 4 * DIM] = vec.view(np.uint8).reshape(m, 4 * DIM)
        p += 1 + 4 * DIM
        rec[:, p] = 0  # no metadata
        rec[:, p + 1] = 252  # timestamp: a u32 varint
        stamps = (BASE_TIME + seq // 1000).astype(np.uint32)
        rec[:, p + 2:p + 6] = stamps.view(np.uint8).reshape(m, 4)
        name = wal_dir / f"wal-{BASE_TIME + s:016x}.log"
        header = b"WALV" + (1).to_bytes(4, "little") + (BASE_TIME + s).to_bytes(8, "little")
        with open(name, "wb") as f:
            f.write(header)
            f.write(rec.data)
        total += len(header) + rec.nbytes
    return total


def raw_read(wal_dir: Path, chunk: int = 256 << 10) -> float:
    """Seconds to read every segment into one reused buffer (the second of two passes).
    A buffer that stays in the cache, as in scripts/bench.py: a larger one also times
    writing each byte to DRAM."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        for path in sorted(wal_dir.glob("wal-*.log")):
            with open(path, "rb", buffering=0) as f:
                while f.readinto(view):
                    pass
        best = time.perf_counter() - t
    return best


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def phase_restore(wal_dir: Path, n: int, id_bytes: int, shared: int) -> dict:
    """In this (fresh) process: warm up on a small log of the same shape, then
    restore ``wal_dir`` to memory with RSS sampled every 2 ms; check the result."""
    import gpu_pitr
    from gpu_pitr.format.readahead import DEFAULT_CHUNK_BYTES

    with tempfile.TemporaryDirectory() as tmp:
        write_log(Path(tmp), min(n, 20_000), id_bytes, shared)
        gpu_pitr.restore(tmp, backend="cpu")
    base, hwm0 = _rss(), peak_rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    got = gpu_pitr.restore(wal_dir, backend="cpu")
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss())
    sampled, hwm = peak[0], peak_rss()
    if hwm is not None and hwm0 is not None and hwm > hwm0:  # the warm-up peaked lower
        peak[0] = max(peak[0], hwm)
    vectors = got.vectors
    numbers = vectors[:, 0].astype(np.int64) + vectors[:, 1].astype(np.int64) * 65536
    ids_ok = len(got) == n and bool((numbers == np.arange(n)).all())
    arena, offs, lens = got._id_arena, got._id_offs, got._id_lens
    for i in np.random.default_rng(1).integers(0, max(n, 1), min(n, 200)):
        raw = bytes(arena[offs[i]:offs[i] + lens[i]])
        ids_ok = ids_ok and raw[shared:] == str(i).zfill(id_bytes - shared).encode()
    index = arena.nbytes + vectors.nbytes + got._meta_arena.nbytes
    return {"seconds": seconds, "timings": dict(got.report.timings), "ids": len(got),
            "checked": ids_ok, "peak_rss_delta": peak[0] - base, "index_bytes": index,
            "peak_rss_sampled_delta": sampled - base,
            "chunk_bytes": DEFAULT_CHUNK_BYTES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=5_000_000)
    ap.add_argument("--id-bytes", type=int, default=230)
    ap.add_argument("--shared", type=int, default=201, help="leading bytes every id shares")
    ap.add_argument("--dir", help="WAL directory: reused if it holds segments, else written")
    ap.add_argument("--json", help="also write every number to this file")
    ap.add_argument("--phase", choices=["restore"], help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.phase:  # the child process
        print(json.dumps(phase_restore(Path(opts.dir), opts.ids, opts.id_bytes, opts.shared)))
        return 0
    tmp = None
    if opts.dir:
        wal_dir = Path(opts.dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_pitr_long_ids_")
        wal_dir = Path(tmp.name)
    try:
        t = time.perf_counter()
        if any(wal_dir.glob("wal-*.log")):
            wal_bytes, made = sum(p.stat().st_size for p in wal_dir.glob("wal-*.log")), "reused"
        else:
            wal_bytes = write_log(wal_dir, opts.ids, opts.id_bytes, opts.shared)
            made = f"written in {time.perf_counter() - t:.1f} s"
        read_s = raw_read(wal_dir)
        child = subprocess.run(
            [sys.executable, __file__, "--phase", "restore", "--dir", str(wal_dir),
             "--ids", str(opts.ids), "--id-bytes", str(opts.id_bytes),
             "--shared", str(opts.shared)],
            capture_output=True, text=True, check=False)
        if child.returncode:
            print(child.stderr, file=sys.stderr)
            return 1
        r = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            tmp.cleanup()
    gb = wal_bytes / 1e9
    tm = r["timings"]
    rows = [
        ("WAL", f"{gb:.3f} GB, {opts.ids} inserts of {opts.id_bytes}-byte ids sharing "
                f"{opts.shared} bytes, dim {DIM} ({made})"),
        ("read GB/s (pass 2, warm page cache)", f"{gb / read_s:.3g}"),
        ("restore to latest, seconds", f"{r['seconds']:.3g}  (fresh process, warmed up)"),
        ("restore GB/s", f"{gb / r['seconds']:.3g}"),
        ("restore records/s", f"{opts.ids / r['seconds']:.3g}"),
        ("restore-time / read-time", f"{r['seconds'] / read_s:.3g}"),
        ("stages, seconds", ", ".join(f"{k} {tm[k]:.2f}" for k in
                                      ("frame", "decode", "plan", "apply", "finish")
                                      if k in tm)),
        ("result", f"{r['ids']} ids: " + ("checked (order, vectors, 200 ids)"
                                          if r["checked"] else "MISMATCH")),
        ("restored index (vectors + UTF-8 ids)", f"{r['index_bytes'] / 2**20:.1f} MiB"),
        ("peak RSS / (index + chunk)",
         f"{r['peak_rss_delta'] / (r['index_bytes'] + r['chunk_bytes']):.3g}  "
         f"(peak {r['peak_rss_delta'] / 2**20:.0f} MiB above the baseline, VmHWM; "
         f"sampled every 2 ms {r['peak_rss_sampled_delta'] / 2**20:.0f} MiB)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"wal_bytes": wal_bytes, "read_s": read_s,
                                               **vars(opts), **r}, indent=1))
    return 0 if r["checked"] else 1


if __name__ == "__main__":
    sys.exit(main())
