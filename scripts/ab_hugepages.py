"""Benchmark: a restore with the huge-page choice it makes against the advice forced off.

`gpu_pitr.hostmem` keeps NumPy's huge-page advice when free 2 MiB blocks cover twice
what a restore fills, and turns it off otherwise. This runs fresh-process restores of
one WAL directory in alternated pairs (the restore's own choice, then
``NUMPY_MADVISE_HUGEPAGE=0``, swapping the order every other pair), each after a
warm-up restore of a tiny log, and prints every run and the medians with peak RSS. A
benchmark: it prints, it never asserts a time.

    python scripts/bench.py --size 1G --dir /tmp/bench1g --skip snapshot   # writes the WAL
    python scripts/ab_hugepages.py /tmp/bench1g --pairs 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, resource, sys, time
import gpu_pitr
from gpu_pitr.format.entries import Insert
from gpu_pitr.format.writer import WalWriter
with WalWriter(sys.argv[2]) as w:
    w.append(Insert("warm", [1.0, 2.0], None, 1))
gpu_pitr.restore(sys.argv[2], backend="cpu")  # imports and cached machine code loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
index = gpu_pitr.restore(sys.argv[1], backend="cpu")
seconds = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_delta_mib": (after - before) / 1024,
                  "ids": len(index)}))
"""


def _run(wal_dir: str, forced_off: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if forced_off:
        env["NUMPY_MADVISE_HUGEPAGE"] = "0"
    with tempfile.TemporaryDirectory() as tiny:
        out = subprocess.run([sys.executable, "-c", _CHILD, wal_dir, tiny], env=env,
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wal_dir")
    parser.add_argument("--pairs", type=int, default=5)
    opts = parser.parse_args(argv)
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.hostmem import huge_blocks_free, keep_huge_page_advice

    need = sum(s.size for s in list_segments(opts.wal_dir))
    free = huge_blocks_free()
    print(f"log {need / 1e9:.3f} GB; free 2 MiB blocks "
          f"{'unknown' if free is None else f'{free / 1e9:.1f} GB'}; the restore's choice: "
          f"advice {'on' if keep_huge_page_advice(need) else 'off'}; load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs: dict[str, list[dict]] = {"own choice": [], "forced off": []}
    for i in range(opts.pairs):
        order = ("own choice", "forced off") if i % 2 == 0 else ("forced off", "own choice")
        for name in order:
            r = _run(opts.wal_dir, name == "forced off")
            runs[name].append(r)
            print(f"pair {i + 1} {name:10s} {r['seconds']:.3f} s, RSS +{r['rss_delta_mib']:.0f} "
                  f"MiB, {r['ids']} ids", flush=True)
    for name, rs in runs.items():
        print(f"{name:10s} median {_median([r['seconds'] for r in rs]):.3f} s over "
              f"{len(rs)}; RSS +{min(r['rss_delta_mib'] for r in rs):.0f}.."
              f"{max(r['rss_delta_mib'] for r in rs):.0f} MiB")
    own, off = (_median([r["seconds"] for r in runs[n]]) for n in runs)
    print(f"own choice / forced off: {own / off:.3f}")
    counts = {r["ids"] for rs in runs.values() for r in rs}
    if len(counts) != 1:
        print(f"DIFFERENT RESULTS: id counts {sorted(counts)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
