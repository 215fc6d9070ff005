"""The Dask scale-out (``gpu_pitr.scaleout``) against one process, on the same log.

Starts a ``LocalCluster`` of N worker processes, restores the log in one process
and as N shards of the ids (one a worker), and prints, measured in this run:

- seconds: the restore in one process; one shard's restore alone in that process
  (what a worker with a machine of its own takes: every shard reads, frames and
  decodes the whole log, and applies and sorts 1/N of it); the shards until every one
  is done (they stay on their workers); the gather that joins them here;
- memory: each process's peak RSS above what it held after a warm-up restore of a
  tiny log (the interpreter, NumPy, Numba and the compiled code loaded), in one
  process and on each worker; the ratio of the largest worker's to the one
  process's is what the shards save in memory a machine;
- writing the index as Parquet: the joined index here as one ``.parquet`` file,
  against the workers writing their shards as a dataset (``ShardedRestore.to_parquet``,
  ``restore --write-on-workers``), which never brings the index here; both give the
  same number of rows (with pyarrow installed);
- whether the joined shards equal the restore in one process (ids, vector bits,
  metadata).

Each shard reads, frames and decodes the whole log and applies 1/N of it: on one
machine the workers share its cores and its page cache, so the seconds say what the
split costs, not what N machines gain.

    python scripts/bench_scaleout.py --dir /tmp/bench1g --workers 2
    python scripts/bench_scaleout.py --size 256M --workers 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_reset() -> int:
    """Reset this process's peak RSS (Linux 4.0+: writing 5 to clear_refs); returns
    the RSS now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _rss_now()


def _peak_hwm() -> int:
    # VmHWM follows clear_refs; ru_maxrss does not.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _peak()


def _warm(tiny: str) -> int:
    import gpu_pitr

    gpu_pitr.restore(tiny, backend="cpu")
    return 0


def _parquet_both(run, joined, where: Path):
    """Seconds to write ``joined`` as one .parquet here, seconds for the workers to write
    ``run`` as a dataset, and whether both hold as many rows (None without pyarrow)."""
    try:
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq
    except ImportError:
        return None
    from gpu_pitr.outputs import write_output

    t = time.perf_counter()
    write_output(joined, where / "one.parquet", "parquet")
    one_file_s = time.perf_counter() - t
    t = time.perf_counter()
    run.to_parquet(where / "dataset")
    dataset_s = time.perf_counter() - t
    rows = ds.dataset(where / "dataset", format="parquet").count_rows()
    return one_file_s, dataset_s, rows == pq.read_metadata(where / "one.parquet").num_rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="an existing WAL directory (default: write one)")
    p.add_argument("--size", default="256M", help="size of the log written (default 256M)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shards", type=int, help="default: one per worker")
    args = p.parse_args()
    import numpy as np
    from distributed import Client, LocalCluster

    import gpu_pitr
    from gpu_pitr.budget import parse_size
    from gpu_pitr.resolve.idshard import merge_shards
    from gpu_pitr.scaleout import restore_sharded
    from gpu_pitr.synth import write_synthetic_wal

    tmp = tempfile.TemporaryDirectory(prefix="gpu_pitr_scaleout_")
    tiny = os.path.join(tmp.name, "tiny")
    write_synthetic_wal(tiny, total_bytes=256 << 10, dim=128, segments=2)
    wal = args.dir
    if wal is None:
        wal = os.path.join(tmp.name, "wal")
        write_synthetic_wal(wal, total_bytes=parse_size(args.size), dim=128)
    log_bytes = sum(f.stat().st_size for f in Path(wal).glob("wal-*.log"))
    for f in Path(wal).glob("wal-*.log"):  # the page cache warm for both
        f.read_bytes()

    _warm(tiny)
    merge_shards([gpu_pitr.restore(tiny, backend="cpu", id_shard=(k, 2)) for k in range(2)])
    base = _peak_reset()
    t = time.perf_counter()
    whole = gpu_pitr.restore(wal, backend="cpu")
    first_s = time.perf_counter() - t
    one_peak = _peak_hwm() - base
    del whole
    t = time.perf_counter()  # the second run in the process: its pages recycled
    whole = gpu_pitr.restore(wal, backend="cpu")
    one_s = time.perf_counter() - t
    want = (whole.id_list(), np.asarray(whole.vectors).tobytes(), list(whole.metadata_json()))
    index_bytes = whole.vectors.nbytes
    del whole
    n = args.shards or args.workers
    alone = []
    for _ in range(2):  # the second as the whole restore's: its pages recycled
        t = time.perf_counter()
        shard = gpu_pitr.restore(wal, backend="cpu", id_shard=(0, n))
        alone.append(time.perf_counter() - t)
        del shard

    with LocalCluster(n_workers=args.workers, threads_per_worker=max(1, os.cpu_count()
                      // args.workers), processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(_warm, tiny)
        bases = client.run(_peak_reset)
        times = []
        for i in range(2):  # the second run as in one process
            t = time.perf_counter()
            run = restore_sharded(client, wal, shards=args.shards, backend="cpu")
            client.gather([client.submit(len, f) for f in run.futures])  # every shard done
            times.append(time.perf_counter() - t)
            if i == 0:
                peaks = {w: hwm - bases[w] for w, hwm in client.run(_peak_hwm).items()}
                run.release()
        first_shards_s, shards_s = times
        t = time.perf_counter()
        parts = client.gather(run.futures)
        fetch_s = time.perf_counter() - t
        t = time.perf_counter()
        joined = merge_shards(parts)
        merge_s = time.perf_counter() - t
        del parts
        written = _parquet_both(run, joined, Path(tmp.name))
        run.release()
    equal = want == (joined.id_list(), np.asarray(joined.vectors).tobytes(),
                     list(joined.metadata_json()))
    rows = [
        ("log", f"{log_bytes / MIB:.0f} MiB", f"index {index_bytes / MIB:.0f} MiB of vectors"),
        ("one process: restore", f"{one_s:.3f} s", f"{log_bytes / one_s / 1e9:.2f} GB/s; "
         f"first run {first_s:.3f} s"),
        (f"one process: shard 0 of {n} alone", f"{alone[1]:.3f} s",
         f"{one_s / alone[1]:.2f}x faster than the whole: a worker on a machine of its own"),
        (f"{n} shards on {args.workers} workers: until all done", f"{shards_s:.3f} s",
         f"{shards_s / one_s:.2f}x the one process; first run {first_shards_s:.3f} s"),
        ("fetch the shards here", f"{fetch_s:.3f} s",
         f"{index_bytes / fetch_s / 1e9:.2f} GB/s of vectors"),
        ("join them (merge_shards)", f"{merge_s:.3f} s", ""),
        ("one process: peak RSS above warm", f"{one_peak / MIB:.0f} MiB", "first run"),
        ("largest worker: peak RSS above warm", f"{max(peaks.values()) / MIB:.0f} MiB",
         f"{max(peaks.values()) / one_peak:.2f}x the one process"),
        ("workers' peaks", ", ".join(f"{v / MIB:.0f}" for v in sorted(peaks.values()))
         + " MiB", ""),
    ]
    if written is not None:
        one_file_s, dataset_s, rows_equal = written
        equal = equal and rows_equal
        rows += [
            ("write the joined index: one .parquet", f"{one_file_s:.3f} s",
             "after the fetch and the join above"),
            ("the workers write a dataset", f"{dataset_s:.3f} s",
             f"to_parquet: {(fetch_s + merge_s + one_file_s) / dataset_s:.2f}x faster than "
             "fetch + join + write; rows " + ("equal" if rows_equal else "DIFFER")),
        ]
    rows.append(("joined shards equal the one process", "yes" if equal else "NO", ""))
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    tmp.cleanup()
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
