"""Restores stopped at random moments: every one must end as docs/damage.md promises.

The tests stop a restore at chosen places (a temp file being written, a callback, a
close); this stops ``python -m gpu_pitr restore`` with SIGINT or SIGTERM at moments
drawn uniformly from ``[--from, --to]`` seconds after its start, and checks each run:

- it exits 0 with nothing on stderr (the signal came once it had finished, or during
  the interpreter's shutdown: ignored), or 128 + the signal with exactly the one line
  ``gpu-pitr: interrupted by SIG...; outputs not yet complete were removed`` (or,
  stopped before the command started, ``gpu-pitr: interrupted by SIG...``);
- never a death by a signal (a status below 0: SIGSEGV, or SIGINT after the line),
  a traceback, or another status;
- ``OUT`` is the previous bytes or the complete new output, and no temp file of it is
  left.

Each run's status and time go to stdout as it ends; a summary table comes last. The
interpreter's fault handler is on (``PYTHONFAULTHANDLER``), so a crash prints every
thread's stack. This found, in the 49th session, over some 1,000 runs on a loaded
2-vCPU VM: a SIGSEGV when the stop landed in llvmlite's object-cache callback, a death
by SIGINT after the line under ``python -m``, and a traceback when it landed in a
thread pool's ``Condition.wait`` (gpu_pitr/interrupts.py says how each is handled now).

    python scripts/interrupt_scope.py --runs 200 [--signal SIGTERM] [--mib 120]

The log (synthetic, ``--mib`` MiB, 128 dims, 3 segments) and the outputs go in a temp
directory, removed at the end. One restore runs first, unstopped: it compiles what the
cache lacks, and gives the complete output the others are compared with.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_pitr.synth import write_synthetic_wal  # noqa: E402

PREVIOUS = b"the previous output, which must survive whole"


def _digest(path: Path) -> str:
    """The restored ids, vectors and metadata of a complete .npz (the report holds
    timings); a partial file fails to load."""
    import numpy as np

    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for key in ("ids", "vectors", "metadata"):
            digest.update(np.ascontiguousarray(z[key]).tobytes())
    return digest.hexdigest()


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _command(wal: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", str(out),
            "--backend", "cpu"]


def _run(wal: Path, out: Path, sig: signal.Signals, moment: float,
         complete: str) -> tuple[str, str]:
    """One stopped restore: (its outcome's name, what was wrong, or '')."""
    out.write_bytes(PREVIOUS)
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(_command(wal, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env,
                            # Children of a non-interactive shell may inherit SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(moment)
    proc.send_signal(sig)
    err = proc.communicate(timeout=600)[1]
    status = proc.returncode
    # (Stopped before the command itself started, as the interpreter imported it, it
    # has written nothing, and says only that.)
    lines = (f"gpu-pitr: interrupted by {sig.name}; outputs not yet complete were "
             "removed\n", f"gpu-pitr: interrupted by {sig.name}\n")
    left = _temps(out)
    now = out.read_bytes() if out.exists() else None
    if status == 0:
        if err != "":
            return "finished", f"stderr {err[-2000:]!r}"
        try:
            whole = now is not None and _digest(out) == complete
        except (OSError, ValueError) as problem:
            whole = False
            err = str(problem)
        if not whole:
            return "finished", f"the output is not the complete one {err!r}"
        return ("finished", f"temp files left: {left}") if left else ("finished", "")
    if status == 128 + sig:
        if err not in lines:
            return "stopped", f"stderr {err[-2000:]!r}"
        if now != PREVIOUS:
            return "stopped", "the previous output was not kept"
        return ("stopped", f"temp files left: {left}") if left else ("stopped", "")
    what = f"died by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
    return what, f"stderr {err[-4000:]!r}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    ap.add_argument("--from", dest="lo", type=float, default=0.3,
                    help="earliest moment, seconds after the start (default 0.3)")
    ap.add_argument("--to", dest="hi", type=float, default=None,
                    help="latest moment (default: the unstopped restore's time)")
    ap.add_argument("--mib", type=int, default=120, help="the log's size (default 120)")
    ap.add_argument("--seed", type=int, default=49)
    args = ap.parse_args(argv)
    sig = signal.Signals[args.signal]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="gpu_pitr-interrupt-") as tmp:
        wal, out = Path(tmp) / "wal", Path(tmp) / "OUT.npz"
        write_synthetic_wal(wal, total_bytes=args.mib << 20, dim=128, segments=3, seed=7)
        start = time.perf_counter()
        subprocess.run(_command(wal, out), check=True, capture_output=True)
        whole = time.perf_counter() - start
        complete = _digest(out)
        hi = args.hi if args.hi is not None else whole
        print(f"unstopped restore: {whole:.2f} s; stopping at {args.lo:.2f}-{hi:.2f} s "
              f"with {sig.name}", flush=True)
        outcomes: Counter = Counter()
        wrong: list[str] = []
        for k in range(args.runs):
            moment = rng.uniform(args.lo, hi)
            what, problem = _run(wal, out, sig, moment, complete)
            outcomes[what] += 1
            print(f"{k:4d} at {moment:5.2f} s: {what}{': ' + problem if problem else ''}",
                  flush=True)
            if problem:
                wrong.append(f"at {moment:.2f} s: {what}: {problem}")
    print(f"\n{'outcome':<24}{'runs':>6}")
    for what, n in sorted(outcomes.items()):
        print(f"{what:<24}{n:>6}")
    print(f"{'not as promised':<24}{len(wrong):>6}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
