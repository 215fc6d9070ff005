"""The library inside host programs: restores in several Python threads at once, in
processes forked after one, and a fork while another thread runs parallel code.

Each runs in a subprocess of its own, with the Numba threading layer it needs and a
timeout: a process that Numba terminates or that hangs fails the test, not the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from workloads import Ins, LogBuilder, f32

TIMEOUT = 600


def _run(script: str, layer: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_restores_in_threads_at_once_on_numbas_workqueue_layer(tmp_path):
    """The workqueue layer (Numba's fallback where neither OpenMP nor TBB is installed)
    terminates the process when two threads run parallel code at once: four threads
    restoring a 32 MiB log ended it ("Concurrent access has been detected", exit 134),
    as did a thread reading ``RestoredIndex.ids`` beside a restore. Parallel calls take
    one lock there; the results are those of one restore alone."""
    script = f"""
import threading
import numba, numpy as np, gpu_pitr
from gpu_pitr import synth
wal = {str(tmp_path / "wal")!r}
synth.write_synthetic_wal(wal, total_bytes=32 << 20, segments=4, seed=3)
alone = gpu_pitr.restore(wal, backend="cpu")
want = (alone.id_list(), alone.vectors.tobytes(), alone.metadata_json().tolist())
got, failed = [], []

def restores():
    try:
        for _ in range(3):
            ix = gpu_pitr.restore(wal, backend="cpu")
            got.append((ix.id_list(), ix.vectors.tobytes(), ix.metadata_json().tolist()))
    except BaseException as err:
        failed.append(repr(err))

def reads():
    try:
        for _ in range(20):
            assert list(alone.ids) == want[0]
    except BaseException as err:
        failed.append(repr(err))

threads = [threading.Thread(target=restores) for _ in range(4)]
threads.append(threading.Thread(target=reads))
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failed, failed
assert len(got) == 12 and all(g == want for g in got)
print(numba.threading_layer(), len(alone))
"""
    out = _run(script, "workqueue")
    assert out.returncode == 0, out.stderr[-2000:]
    layer, n = out.stdout.split()
    assert layer == "workqueue" and int(n) > 10_000


_FORKED = """
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import numba, gpu_pitr
from gpu_pitr import synth
from numba.np.ufunc import omppool

WAL = {wal!r}

def child(_):
    return len(gpu_pitr.restore(WAL, backend="cpu"))

if __name__ == "__main__":
    synth.write_synthetic_wal(WAL, total_bytes=2 << 20, segments=2, seed=4)
    n = len(gpu_pitr.restore(WAL, backend="cpu"))
    if numba.threading_layer() != "omp" or omppool.openmp_vendor != "GNU":
        print("skip", numba.threading_layer(), omppool.openmp_vendor)
        raise SystemExit(0)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
        try:
            pool.submit(child, 0).result()
        except Exception as err:
            print("refused", type(err).__name__, str(err).count("spawn"))
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        print("spawned", pool.submit(child, 0).result() == n)
"""


def test_a_process_forked_after_a_restore_on_gnu_openmp_raises(tmp_path):
    """GNU OpenMP (Numba's ``omp`` layer, its default on Linux) does not survive a fork:
    a child forked after a restore (multiprocessing's default start method on Linux
    before Python 3.14) was ended by SIGTERM at its first parallel loop, and a
    ``multiprocessing.Pool`` waited for its task forever (here: BrokenProcessPool). The
    child's call raises ForkedOpenMPError, which names the start methods that work; a
    spawned child restores."""
    script_path = tmp_path / "forked.py"  # spawn imports the main module from a file
    script_path.write_text(_FORKED.format(wal=str(tmp_path / "wal")))
    env = {**os.environ, "NUMBA_THREADING_LAYER": "omp"}
    out = subprocess.run([sys.executable, str(script_path)], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    if out.returncode != 0 and "cannot start" in out.stderr.lower():
        pytest.skip("no OpenMP layer here")
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.startswith("skip"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.split() == ["refused", "ForkedOpenMPError", "1", "spawned", "True"], \
        out.stdout


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_a_fork_while_another_thread_holds_the_lock(tmp_path, layer):
    """A thread in a parallel call on the workqueue layer holds the package's lock; a
    fork from another thread then left it held in the child for good, and the child's
    restore waited forever. On other layers the lock is never taken: a restore runs
    while another thread holds it."""
    script = f"""
import os, signal, threading, time
import numba, gpu_pitr
from gpu_pitr import jit, synth
wal = {str(tmp_path / "wal")!r}
synth.write_synthetic_wal(wal, total_bytes=1 << 20, segments=1, seed=6)
gpu_pitr.restore(wal, backend="cpu")  # the layer started, and known
holding, done = threading.Event(), threading.Event()

def hold():
    with jit._REGIONS:
        holding.set()
        done.wait()

t = threading.Thread(target=hold)
t.start()
assert holding.wait(60), "no lock to hold"
if {layer!r} == "workqueue":
    pid = os.fork()
    if pid == 0:
        os._exit(0 if len(gpu_pitr.restore(wal, backend="cpu")) > 0 else 1)
    for _ in range(1200):  # a child that hangs is killed, not left behind
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            print("child", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("child hung")
else:
    print("beside", len(gpu_pitr.restore(wal, backend="cpu")) > 0)
done.set()
t.join()
print(numba.threading_layer())
"""
    out = _run(script, layer)
    if out.returncode != 0 and layer == "omp" and "cannot" in out.stderr.lower():
        pytest.skip("no OpenMP layer here")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == (["child", "0", "workqueue"] if layer == "workqueue"
                                  else ["beside", "True", "omp"]), out.stdout


def test_a_parallel_function_pickles_and_copies_as_its_dispatcher_did():
    """``OneRegionAtATime`` stands where a Numba dispatcher stood: pickle (by its name
    through ``__wrapped__``, which is the plain function's) and ``copy``, ``cloudpickle``
    (Dask's: ``__getattr__`` asked itself for ``dispatcher`` without end) failed on it."""
    import copy
    import pickle

    from gpu_pitr.jit import OneRegionAtATime
    from gpu_pitr.resolve import idsort

    fn = idsort._span_keys
    assert isinstance(fn, OneRegionAtATime)
    picklers = [pickle, pytest.importorskip("cloudpickle")]
    for again in [copy.copy(fn), copy.deepcopy(fn),
                  *(p.loads(p.dumps(fn)) for p in picklers)]:
        assert isinstance(again, OneRegionAtATime)
        assert again.dispatcher is fn.dispatcher and again.__name__ == "_span_keys"
    half = idsort._add_byte_digit
    assert pickle.loads(pickle.dumps(half)).py_func is half.py_func


def test_the_package_imports_with_numbas_compiler_off_and_a_restore_says_why_not(tmp_path):
    """``NUMBA_DISABLE_JIT=1`` makes Numba's ``njit`` return the Python function itself,
    which has no ``py_func``: importing a module with a parallel loop raised
    AttributeError. Imported, a restore ran its loops as Python and failed inside one
    (NotImplementedError from an intrinsic, or NumPy's TypeError for a uint64 key
    masked by an int64): now one line naming the setting, as the command line says."""
    b = LogBuilder()
    b.add(Ins("a", f32(1, 2), None, 1))
    wal = b.write(tmp_path / "wal")
    script = f"""
import gpu_pitr
from gpu_pitr.errors import CompilerOffError
from gpu_pitr.resolve import idsort
from gpu_pitr.jit import OneRegionAtATime
print(isinstance(idsort._span_keys, OneRegionAtATime), callable(idsort._span_keys))
try:
    gpu_pitr.restore({str(wal)!r}, backend="cpu")
except CompilerOffError as err:
    print(repr(str(err)))
"""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["False", "True"]
    assert lines[1:] == [repr("NUMBA_DISABLE_JIT='1': gpu-pitr's loops are compiled by "
                              "Numba and do not run with its compiler off; unset it or set "
                              "it to 0")]


def test_the_fuzzers_bounds_checked_mode_still_finds_the_parallel_loops():
    """``scripts/fuzz.py`` under ``NUMBA_BOUNDSCHECK=1`` swaps each ``parallel=True``
    dispatcher for a serial bounds-checked one, found by type: wrapped, none was found
    (it returned []), and the campaign ran the parallel loops unchecked."""
    scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "scripts")
    script = f"""
import sys
sys.path.insert(0, {scripts!r})
import fuzz
from gpu_pitr.executors import cpu
from gpu_pitr.jit import OneRegionAtATime
names = fuzz.serial_bounds_checked()
print("gpu_pitr.executors.cpu._decode_records" in names, len(names) > 10,
      isinstance(cpu._decode_records, OneRegionAtATime),
      cpu._decode_records.targetoptions.get("boundscheck"))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "False", "True"], out.stdout
