"""Fuzz the restore: mutated real WALs, the fast restore against tests/reference.py.

Each input is a seed WAL (tests/fuzzing.py) mutated one to four times, with a target;
it is restored with and without ``skip_corrupt``, on the cpu executor (every
``--cuda-every``-th input on the cuda executor under the simulator, on the small
seeds), and must come out exactly as the reference's restore, or as the same
documented error. Input ``i`` of campaign ``--seed S`` is a pure function of (S, i),
so any input can be rebuilt.

The campaign runs the inputs in a worker process with a deadline per input: an
input that raises anything but a ``WalError``, disagrees with the reference, hangs
past ``--deadline`` or kills the worker is saved under tests/fuzz_regressions/
(tests/test_fuzz.py replays every saved case) and the worker is restarted.

    python scripts/fuzz.py --minutes 35            # the long campaign, random seed
    python scripts/fuzz.py --inputs 200 --seed 7   # a fixed set, in this process
    NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=$(mktemp -d) python scripts/fuzz.py \\
        --inputs 200 --seed 7 --saved --json        # the same with bounds checks

Prints inputs/s and the count of each outcome class; never asserts a speed.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# The cuda executor runs in Numba's simulator here, as in the tests.
if os.environ.get("GPU_PITR_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
sys.path.insert(0, str(TESTS))

CUDA_SEEDS = ["tiny", "collide"]
CHUNKS = [None, None, 64, 100, 1000, 4096, 1 << 16]
# Signatures of failures already saved this run: the first few of each are enough.
SAVE_PER_SIGNATURE = 3


# One input in this many is also restored as id shards (2 or 3), joined and compared.
SHARDS_EVERY = 4


def case(seed: int, i: int, cuda_every: int) -> tuple[dict, dict, list[str], str, int | None]:
    """Input ``i`` of campaign ``seed``: (files, kwargs, steps, backend, chunk_bytes)."""
    import fuzzing

    rng = random.Random(f"{seed}:{i}")
    cuda = cuda_every > 0 and i % cuda_every == cuda_every - 1
    files, kw, steps = fuzzing.fuzz_input(rng.randrange, CUDA_SEEDS if cuda else None)
    chunk = CHUNKS[rng.randrange(len(CHUNKS))]
    return files, kw, steps, "cuda" if cuda else "cpu", chunk


def case_shards(seed: int, i: int) -> int:
    """How many id shards input ``i`` is restored as too (0: none); drawn apart from
    ``case``, whose inputs stay those of earlier campaigns."""
    rng = random.Random(f"{seed}:{i}:shards")
    return 2 + rng.randrange(2) if rng.randrange(SHARDS_EVERY) == 0 else 0


def run_case(files: dict, kw: dict, backend: str, chunk: int | None, shards: int = 0
             ) -> list[str]:
    """Both ``skip_corrupt`` settings (the second with every piece mapped, the first read);
    returns their outcome classes (raises on a failure)."""
    import fuzzing

    return [fuzzing.outcome(files, {**kw, "skip_corrupt": skip}, backend, chunk, not skip,
                            map_all=skip, shards=shards)
            for skip in (False, True)]


def run_one(seed: int, i: int, cuda_every: int) -> dict:
    """Run input ``i``; a dict with ``outcomes`` or, on a failure, ``problem`` and ``trace``."""
    warnings_off()
    steps, backend = [], case_backend(i, cuda_every)
    try:
        files, kw, steps, backend, chunk = case(seed, i, cuda_every)
        return {"outcomes": run_case(files, kw, backend, chunk, case_shards(seed, i)),
                "backend": backend}
    except AssertionError as err:
        kind, problem = "mismatch", f"mismatch: {first_line(err)}"
    except Exception as err:  # noqa: BLE001 - any other exception is the finding
        kind, problem = "crash", f"crash: {type(err).__name__}: {first_line(err)}"
    return {"problem": problem, "kind": kind, "trace": traceback.format_exc(limit=12),
            "steps": steps, "backend": backend}


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:200]


def warnings_off() -> None:
    import warnings

    # The simulator's key hash wraps NumPy scalars on purpose.
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)


def serial_bounds_checked() -> list[str]:
    """Recompile the restore's ``parallel=True`` functions serially, with bounds checks.

    Numba does not bounds-check inside ``prange`` loops, so under ``NUMBA_BOUNDSCHECK=1``
    each such function is replaced, in every module that holds it, by the same Python
    source compiled without ``parallel`` (a ``prange`` is then a ``range``). Returns
    the names replaced.
    """
    from numba import njit
    from numba.core.registry import CPUDispatcher

    import gpu_pitr.executors.cpu
    import gpu_pitr.index
    import gpu_pitr.pipeline
    import gpu_pitr.resolve.hostmap
    import gpu_pitr.resolve.idsort  # noqa: F401 - loaded so that its functions are found
    from gpu_pitr.jit import OneRegionAtATime

    mods = [m for name, m in sys.modules.items() if name.startswith("gpu_pitr") and m]
    replaced = {}
    for mod in mods:
        for name, obj in list(vars(mod).items()):
            # (The package wraps each parallel dispatcher: gpu_pitr.jit.OneRegionAtATime.)
            inner = obj.dispatcher if isinstance(obj, OneRegionAtATime) else obj
            if isinstance(inner, CPUDispatcher) and inner.targetoptions.get("parallel"):
                if id(obj) not in replaced:
                    replaced[id(obj)] = njit(boundscheck=True)(inner.py_func)
                setattr(mod, name, replaced[id(obj)])
    return sorted({f"{d.py_func.__module__}.{d.py_func.__name__}" for d in replaced.values()})


def boundscheck_active() -> bool:
    """True when Numba compiles with bounds checks, the decode loop included."""
    import numpy as np
    from numba import njit

    from gpu_pitr.executors import cpu

    @njit
    def past_the_end(a):
        return a[len(a)]

    z = np.zeros(1, np.int64)
    try:
        past_the_end(np.zeros(4, np.uint8))
        return False
    except IndexError:
        pass
    try:  # a record said to start past the buffer: the parser's first load is out of bounds
        cpu._decode_records(np.zeros(4, np.uint8), 0, 1, np.array([100]), np.array([8]),
                            *[z] * 14, True, np.zeros((1, 64), np.int64))
        return False
    except IndexError:
        return True


def _worker(conn, seed: int, cuda_every: int) -> None:
    import fuzzing

    fuzzing.seeds()
    while True:
        i = conn.recv()
        if i is None:
            return
        conn.send(run_one(seed, i, cuda_every))


class Worker:
    """A child process running inputs; restarted after a hang or a death."""

    def __init__(self, seed: int, cuda_every: int) -> None:
        self.args = (seed, cuda_every)
        self.proc = None
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()

    def run(self, i: int, deadline: float) -> dict:
        self.conn.send(i)
        try:
            if self.conn.poll(deadline):
                return self.conn.recv()
            problem, kind = f"hang: no result within {deadline:.0f} s", "hang"
        except EOFError:
            problem, kind = f"died: worker exit code {self.proc.exitcode}", "died"
        self.stop()
        self.start()
        return {"problem": problem, "kind": kind, "trace": ""}

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
        self.stop()


def save_failure(seed: int, i: int, cuda_every: int, result: dict, out: Path) -> Path:
    import fuzzing

    files, kw, steps, backend, chunk = case(seed, i, cuda_every)
    return fuzzing.save_case(files, kw, steps, result["problem"], out, backend, chunk,
                             case_shards(seed, i))


def campaign(args) -> dict:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"fuzz: seed {seed}, {args.minutes} min, cuda every {args.cuda_every}, "
          f"deadline {args.deadline} s, saving to {args.out}", flush=True)
    counts: collections.Counter = collections.Counter()
    signatures: collections.Counter = collections.Counter()
    failures = []
    worker = Worker(seed, args.cuda_every)
    started = time.monotonic()
    end = started + args.minutes * 60
    last_print = started
    i = 0
    try:
        while time.monotonic() < end:
            backend = case_backend(i, args.cuda_every)
            deadline = args.deadline * (20 if backend == "cuda" else 1)
            result = worker.run(i, deadline)
            counts["inputs"] += 1
            if "problem" in result:
                counts[result["kind"]] += 1
                signatures[result["problem"]] += 1
                saved = None
                if signatures[result["problem"]] <= SAVE_PER_SIGNATURE:
                    try:
                        saved = str(save_failure(seed, i, args.cuda_every, result, args.out))
                    except Exception as err:  # noqa: BLE001 - the input cannot be rebuilt
                        saved = f"not saved: {type(err).__name__}: {first_line(err)}"
                failures.append({"input": i, "problem": result["problem"], "saved": saved})
                print(f"FAIL input {i}: {result['problem']} -> {saved}\n{result['trace']}",
                      flush=True)
            else:
                counts[f"{result['backend']}-inputs"] += 1
                for o in result["outcomes"]:
                    counts[o] += 1
            i += 1
            now = time.monotonic()
            if now - last_print > 60:
                last_print = now
                rate = counts["inputs"] / (now - started)
                print(f"{now - started:7.0f} s  {counts['inputs']} inputs  {rate:.1f}/s  "
                      f"{dict(counts)}", flush=True)
    finally:
        worker.close()
    elapsed = time.monotonic() - started
    return summary(seed, counts, failures, elapsed)


def case_backend(i: int, cuda_every: int) -> str:
    return "cuda" if cuda_every > 0 and i % cuda_every == cuda_every - 1 else "cpu"


def fixed(args) -> dict:
    """``--inputs N`` (and ``--saved``): run in this process, no deadline of its own."""
    import fuzzing

    seed = 0 if args.seed is None else args.seed
    counts: collections.Counter = collections.Counter()
    failures = []
    started = time.monotonic()
    jobs = [("input", i) for i in range(args.inputs)]
    if args.saved:
        jobs += [("saved", p) for p in fuzzing.saved_cases()]
    for what, ref in jobs:
        counts["inputs"] += 1
        if what == "input":
            result = run_one(seed, ref, args.cuda_every)
        else:
            files, kw, meta = fuzzing.load_case(ref)
            try:
                result = {"outcomes": run_case(files, kw, meta["backend"], meta["chunk_bytes"],
                                               meta.get("shards", 0))}
            except Exception as err:  # noqa: BLE001
                result = {"problem": f"{ref.name}: {type(err).__name__}: {err}"[:300],
                          "kind": "saved", "trace": traceback.format_exc(limit=12)}
        if "problem" in result:
            counts[result["kind"]] += 1
            failures.append({"input": str(ref), "problem": result["problem"],
                             "trace": result["trace"]})
        else:
            for o in result["outcomes"]:
                counts[o] += 1
    return summary(seed, counts, failures, time.monotonic() - started)


def summary(seed, counts, failures, elapsed) -> dict:
    import numba

    return {
        "seed": seed,
        "inputs": counts["inputs"],
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(counts["inputs"] / elapsed, 2) if elapsed else None,
        "outcomes": {k: v for k, v in sorted(counts.items()) if k != "inputs"},
        "failures": failures,
        "boundscheck": bool(numba.config.BOUNDSCHECK) and boundscheck_active(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--minutes", type=float, help="run a campaign this long")
    mode.add_argument("--inputs", type=int, help="run inputs 0..N-1 of --seed here")
    p.add_argument("--seed", type=int, help="campaign seed (default: random; --inputs: 0)")
    p.add_argument("--saved", action="store_true", help="with --inputs: also every saved case")
    p.add_argument("--cuda-every", type=int, default=25,
                   help="every K-th input on the cuda executor (simulator); 0: never")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds an input may take on cpu (x20 on the cuda simulator)")
    p.add_argument("--out", type=Path, default=TESTS / "fuzz_regressions",
                   help="where failing inputs are saved")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    warnings_off()
    if os.environ.get("NUMBA_BOUNDSCHECK") == "1":
        print(f"bounds-checked serial versions of {serial_bounds_checked()}", file=sys.stderr)
    result = campaign(args) if args.minutes is not None else fixed(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['inputs']} inputs in {result['seconds']} s "
              f"({result['inputs_per_s']} inputs/s), seed {result['seed']}")
        print("outcomes (one per restore, two restores an input):")
        for k, v in result["outcomes"].items():
            print(f"  {k:28s} {v}")
        print(f"failures: {len(result['failures'])}")
        for f in result["failures"]:
            print(f"  input {f['input']}: {f['problem']}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
