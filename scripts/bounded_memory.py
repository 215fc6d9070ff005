"""Bounded memory, shown: a WAL several times larger than a memory budget restores within it.

Writes an update-heavy synthetic WAL (``write_synthetic_wal(max_ids=...)``: a few
thousand ids updated over and over, so the index stays small) of RATIO x BUDGET
bytes, restores it in a child process with ``gpu-pitr restore --memory-budget
BUDGET`` and prints its peak RSS (``ru_maxrss`` from ``wait4``: the kernel's
high-water mark of the child) against

    bound = baseline + budget + index

where the *baseline* is the peak RSS of a child that runs the same command on a
tiny WAL of the same shape: the interpreter, NumPy, Numba and the compiled code
loaded, thread pools started (all of which cost the same whatever the WAL size).
A child that only imports gpu_pitr is printed beside it for reference. *index* is
the size of the written ``.npz`` (what the index and its output arrays take).
On a GPU (``--backend cuda``) the CuPy pool's high-water mark is printed too.

    python scripts/bounded_memory.py                    # 256M budget, 1 GiB WAL
    python scripts/bounded_memory.py --budget 48M --ratio 4
    python scripts/bounded_memory.py --calibrate        # working memory per chunk size

Exits 1 if the peak passes the bound, or if the restore did not hand back as many
ids as the generator left. ``--calibrate`` restores the same WAL with several
``--chunk-size`` values and fits peak - baseline = a * chunk + b, the model
``gpu_pitr.budget`` uses to turn a budget into a chunk size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
# Run in each child: the CLI's own main(), then what CuPy's pool holds (it keeps freed
# blocks, so what it holds at the end is its high-water mark).
CHILD = """
import json, sys
from gpu_pitr.cli import main
argv, result = json.loads(sys.argv[1]), sys.argv[2]
rc = main(argv)
doc = {"rc": rc, "vm_hwm": vm_hwm()}
cupy = sys.modules.get("cupy")
if cupy is not None:
    doc["device_pool_bytes"] = int(cupy.get_default_memory_pool().total_bytes())
with open(result, "w") as f:
    json.dump(doc, f)
sys.exit(rc)
"""
IMPORT_ONLY = """
import json, sys
import gpu_pitr, gpu_pitr.cli, gpu_pitr.pipeline
with open(sys.argv[1], "w") as f:
    json.dump({"rc": 0, "vm_hwm": vm_hwm()}, f)
"""
# The high-water mark of this process's own memory since exec (Linux), in bytes.
# ru_maxrss would do on its own but for one trap: Linux carries the RSS the parent
# had at fork into the child's ru_maxrss, so a parent that wrote a large WAL would
# show up in every child.
VM_HWM = "from gpu_pitr.hostmem import peak_rss as vm_hwm\n"


def parse_size(text: str) -> int:
    from gpu_pitr.budget import parse_size as parse

    try:
        return parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def run_child(code: str, args: list[str], workdir: Path) -> dict:
    """Run ``python -c code args...`` (which writes JSON to ``args[-1]``); return that
    with its exit status, peak RSS in bytes and stderr.
    """
    err_path = workdir / "child.stderr"
    result = Path(args[-1])
    result.unlink(missing_ok=True)
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", VM_HWM + code, *args],
                                stdout=subprocess.DEVNULL, stderr=err)
        # wait4, not wait: the rusage of this child alone.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    got = {"rc": proc.returncode, "stderr": err_path.read_text(errors="replace")}
    if result.exists():
        got.update(json.loads(result.read_text()))
    got["peak_rss"] = got.get("vm_hwm") or usage.ru_maxrss * 1024
    return got


def restore_child(wal_dir: Path, out: Path, flags: list[str], backend: str,
                  workdir: Path) -> dict:
    """``gpu-pitr restore`` in a child process, with its peak RSS and device pool bytes."""
    argv = ["restore", str(wal_dir), "--out", str(out), "--backend", backend, "-q", *flags]
    got = run_child(CHILD, [json.dumps(argv), str(workdir / "child.json")], workdir)
    if got["rc"] != 0:
        raise SystemExit(f"gpu-pitr {' '.join(argv)} failed:\n{got['stderr']}")
    return got


WRITE_WALS = """
import json, sys
from gpu_pitr.synth import write_synthetic_wal
workdir, size, dim, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
stats = write_synthetic_wal(workdir + "/wal", total_bytes=size, dim=dim, segments=8, seed=7,
                            max_ids=ids)
# The same shape, a few hundred records: what the baseline child restores.
write_synthetic_wal(workdir + "/tiny", total_bytes=256 << 10, dim=dim, segments=2, seed=8,
                    max_ids=ids)
with open(sys.argv[5], "w") as f:
    json.dump({"bytes": stats.bytes, "live_ids": stats.live_ids}, f)
"""


def write_wals(workdir: Path, size: int, dim: int, ids: int) -> tuple[Path, Path, int]:
    """The big WAL and the tiny one, written by a child: this process stays small."""
    got = run_child(WRITE_WALS, [str(workdir), str(size), str(dim), str(ids),
                                 str(workdir / "wals.json")], workdir)
    if got["rc"] != 0:
        raise SystemExit(f"writing the WALs failed:\n{got['stderr']}")
    return workdir / "wal", workdir / "tiny", got["bytes"]


def measure(budget: int, wal_bytes: int, backend: str, workdir: Path, big: Path,
            tiny: Path) -> dict:
    """Restore ``big`` and ``tiny`` with ``--memory-budget budget``; the numbers, in bytes."""
    from gpu_pitr.budget import chunk_bytes_for_budget

    flags = ["--memory-budget", str(budget)]
    imports = run_child(IMPORT_ONLY, [str(workdir / "child.json")], workdir)
    # A first tiny restore fills Numba's on-disk cache (a fresh checkout compiles
    # everything, which takes far more memory than loading it): both measured
    # children then load the same compiled code.
    restore_child(tiny, workdir / "tiny.npz", flags, backend, workdir)
    base = restore_child(tiny, workdir / "tiny.npz", flags, backend, workdir)
    run = restore_child(big, workdir / "out.npz", flags, backend, workdir)
    index = (workdir / "out.npz").stat().st_size
    import numpy as np

    with np.load(workdir / "out.npz") as npz:  # a restore that dropped records is no pass
        restored_ids = len(npz["ids"])
    wals = workdir / "wals.json"  # write_wals' record of what the generator wrote
    expected_ids = json.loads(wals.read_text())["live_ids"] if wals.exists() else None
    got = {
        "wal_bytes": wal_bytes,
        "budget": budget,
        "chunk_bytes": chunk_bytes_for_budget(budget),
        "index_bytes": index,
        "import_rss": imports["peak_rss"],
        "baseline_rss": base["peak_rss"],
        "peak_rss": run["peak_rss"],
        "bound": base["peak_rss"] + budget + index,
        "ids": restored_ids,
        "expected_ids": expected_ids,
    }
    if "device_pool_bytes" in run:
        got["device_pool_bytes"] = run["device_pool_bytes"]
        got["device_pool_bytes_tiny"] = base.get("device_pool_bytes", 0)
    return got


def show(got: dict, backend: str) -> bool:
    """Print ``measure``'s numbers as a table; True when the peak is within the bound."""
    budget, peak, base = got["budget"], got["peak_rss"], got["baseline_rss"]
    same = got.get("expected_ids") in (None, got.get("ids"))
    ok = peak <= got["bound"] and same
    rows = [
        ("WAL bytes", f"{got['wal_bytes']:,} ({mib(got['wal_bytes'])}, "
                      f"{got['wal_bytes'] / budget:.1f} x budget)"),
        ("memory budget", f"{budget:,} ({mib(budget)}; chunks of {mib(got['chunk_bytes'])})"),
        ("index bytes (.npz)", f"{got['index_bytes']:,} ({mib(got['index_bytes'])})"),
        ("ids restored", f"{got.get('ids')} (generator: {got.get('expected_ids')}: "
                         f"{'same' if same else 'DIFFERENT'})"),
        ("RSS, import only", mib(got["import_rss"])),
        ("baseline: RSS, tiny restore", mib(base)),
        ("peak RSS of the restore", mib(peak)),
        ("bound: baseline+budget+index", mib(got["bound"])),
        ("peak - baseline", f"{mib(peak - base)} ({(peak - base) / budget:.0%} of budget)"),
        ("peak <= bound", f"{'yes' if peak <= got['bound'] else 'NO'} "
                          f"(margin {mib(got['bound'] - peak)})"),
    ]
    if "device_pool_bytes" in got:
        rows.append(("peak device memory (CuPy pool)", mib(got["device_pool_bytes"])))
        rows.append(("device, tiny restore", mib(got["device_pool_bytes_tiny"])))
    print(f"bounded memory, backend {backend}:")
    for name, value in rows:
        print(f"  {name:<32} {value}")
    return ok


def calibrate(backend: str, workdir: Path, big: Path, tiny: Path) -> None:
    flags = ["--chunk-size", str(MIB)]
    base = restore_child(tiny, workdir / "tiny.npz", flags, backend, workdir)["peak_rss"]
    print(f"baseline (tiny restore): {mib(base)}")
    xs, ys = [], []
    for chunk_mib in (1, 2, 4, 8, 16, 24, 32, 48):
        got = restore_child(big, workdir / "out.npz", ["--chunk-size", f"{chunk_mib}M"],
                            backend, workdir)
        extra = got["peak_rss"] - base
        xs.append(chunk_mib * MIB)
        ys.append(extra)
        print(f"  chunk {chunk_mib:>3} MiB: peak {mib(got['peak_rss'])}, "
              f"above baseline {mib(extra)}")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    b = my - a * mx
    worst = max(y - (a * x + b) for x, y in zip(xs, ys, strict=True))
    print(f"fit: above baseline = {a:.2f} x chunk + {mib(b)} (largest excess {mib(worst)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=parse_size, default=256 * MIB,
                        help="memory budget (default 256M)")
    parser.add_argument("--ratio", type=float, default=4.0,
                        help="WAL size as a multiple of the budget (default 4)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ids", type=int, default=4096,
                        help="distinct ids in the log (the index's size; default 4096)")
    parser.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--dir", type=Path,
                        help="where to write the WAL, in a temp dir made inside it (created "
                             "if missing; default: the system's temp dir)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit working memory against the chunk size instead")
    a = parser.parse_args(argv)
    if a.dir is not None:
        a.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="bounded_memory_") as tmp:
        workdir = Path(tmp)
        size = int(a.budget * a.ratio)
        big, tiny, wal_bytes = write_wals(workdir, size, a.dim, a.ids)
        if a.calibrate:
            calibrate(a.backend, workdir, big, tiny)
            return 0
        got = measure(a.budget, wal_bytes, a.backend, workdir, big, tiny)
        return 0 if show(got, a.backend) else 1


if __name__ == "__main__":
    sys.exit(main())
