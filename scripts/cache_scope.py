"""Numba's on-disk cache of gpu_pitr's compiled code, attacked as a deployment meets it:
every process must run code compiled from the source it imported, and end with the
right answer, status 0 and nothing on stderr.

A copy of the package (``gpu_pitr/`` and ``kernels/``) in a temp directory runs
``python -m gpu_pitr restore --to-seq N`` of a small synthetic log, each process with
the ``NUMBA_CACHE_DIR`` a scenario gives it; its output is compared with
``tests/reference.py``'s restore. The edit used (``format/payload.py`` only, inlined
into the executors' cached functions in other files) drops the first byte of every id,
so a process that ran machine code of the other source shows it in every id.

- ``kill``: a cold cache; processes SIGKILLed one after another, at a random moment
  (up to the cold compile's time) or at a random cache write of theirs (before the
  temp file, half written, or just after it replaced the index or data file: the
  window between Numba's index and data writes), then one run to the end.
- ``edit``: the same on a cache full of the unedited source's files, the copy edited
  first: the edited behaviour must show. Then the edit undone, killed runs again, and
  the unedited behaviour must show.
- ``concurrent``: ``--procs`` processes at once on a cold cache; then an old and a new
  copy at once, first at two paths (Numba gives each its own cache directory), then
  through one symlink switched from the old copy to the new between their starts (as a
  blue/green deployment does: one cache directory, two digests).
- ``damage``: in a filled cache, a function's index or data file made empty, garbage,
  bit-flipped or missing (a crash before a write reached the disk, a partial copy, a
  disk error); the cache read-only for the user that runs (non-root: its mode; root:
  run as ``nobody``).

``--work frame`` runs ``tests/test_jit_cache.py``'s probe (``frame_records`` of one
record, its edit: 8-byte reads one larger) instead of a restore: a compile of seconds,
not a minute, for the CI test (tests/test_cache_scope.py).

    nice -n 10 python scripts/cache_scope.py [--scenarios kill,edit,concurrent,damage]
        [--rounds 2] [--kills 4] [--procs 3] [--work restore|frame] [--seed 1]
        [--damage empty,half,zeros,garbage,flipped,missing]

Each process's outcome goes to stdout as it ends, a table of counts per scenario last;
exits 1 if any process was wrong (a status other than 0 or SIGKILL's, a traceback or
warning, a wrong answer). The interpreter's fault handler is on in every process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import reference  # noqa: E402

# Runs the package copy at argv[1] (not the editable install): CACHE_SCOPE_KILL="N:PHASE"
# SIGKILLs the process at its N-th cache file write (PHASE: before it opens the temp
# file, half written, or after the temp file replaced the cache file);
# CACHE_SCOPE_READY=PATH imports every module of the package, then creates PATH.
RUNNER = r'''
import contextlib, os, signal, sys
tree = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path.insert(0, tree)
kill = os.environ.pop("CACHE_SCOPE_KILL", "")
if kill:
    from numba.core import caching
    n, phase = kill.split(":")
    n, seen = int(n), [0]
    write = caching.IndexDataCacheFile._open_for_write

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Torn:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            die()

    @contextlib.contextmanager
    def hooked(self, path):
        seen[0] += 1
        here = seen[0] == n
        if here and phase == "before":
            die()
        with write(self, path) as f:
            yield Torn(f) if here and phase == "torn" else f
        if here and phase == "after":
            die()

    caching.IndexDataCacheFile._open_for_write = hooked
ready = os.environ.pop("CACHE_SCOPE_READY", "")
if ready:
    import importlib, pkgutil, gpu_pitr
    for m in pkgutil.walk_packages(gpu_pitr.__path__, "gpu_pitr."):
        if ".cuda" not in m.name and "kernels" not in m.name:
            importlib.import_module(m.name)
    open(ready, "w").close()
if sys.argv[1] == "probe":
    sys.argv.pop(1)
    exec(compile(PROBE, "probe", "exec"))
else:
    import runpy
    sys.argv[0] = "gpu_pitr"
    runpy.run_module("gpu_pitr", run_name="__main__", alter_sys=True)
'''

# tests/test_jit_cache.py's probe: frame_records of one record (seq 41).
PROBE = r'''
import numpy as np
import gpu_pitr
from gpu_pitr.format.frame import frame_records
buf = np.frombuffer(bytes.fromhex(sys.argv[1]), np.uint8).copy()
off, length, seq = (np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.uint64))
n, _, _ = frame_records(buf, 0, len(buf), off, length, seq)
print(int(n), int(seq[0]))
'''
RECORD = (41).to_bytes(8, "little") + (3).to_bytes(4, "little") + b"abc"

#: The edits (file, text, what it becomes): ids lose their first byte (restore); 8-byte
#: reads come back one larger (frame: seq 42).
EDITS = {
    "restore": ("format/payload.py", "            id_s, id_n, p2 = read_string(buf, p, end)\n",
                "            id_s, id_n, p2 = read_string(buf, p, end)\n"
                "            id_s, id_n = id_s + 1, id_n - 1\n"),
    "frame": ("format/payload.py",
              "        v |= np.uint64(b[k]) << np.uint64(8 * k)\n    return v\n",
              "        v |= np.uint64(b[k]) << np.uint64(8 * k)\n"
              "    return v + np.uint64(nbytes == 8)\n"),
}
KILLED = -signal.SIGKILL


class Scope:
    """The temp directory, the package copies, the log and the expected answers."""

    def __init__(self, tmp: Path, work: str, rng: random.Random) -> None:
        self.tmp, self.work, self.rng = tmp, work, rng
        self.runner = tmp / "runner.py"
        self.runner.write_text(f"PROBE = {PROBE!r}\n" + RUNNER)
        self.old = self._copy(tmp / "old")
        self.new = self._copy(tmp / "new", edit=True)
        self.outs = tmp / "outs"
        self.outs.mkdir()
        self.runs = 0
        self.cold = 60.0
        self.writes = 40
        if work == "restore":
            from gpu_pitr.synth import write_synthetic_wal

            self.wal = tmp / "wal"
            write_synthetic_wal(self.wal, total_bytes=200_000, dim=8, segments=2, seed=3)
            self.seq = 1000
            ref = reference.restore(self.wal, to_seq=self.seq)
            assert ref.error is None, ref.error
            rows = zip(ref.ids, ref.vectors, ref.metadata, strict=True)
            self.want = {i: (v, m) for i, v, m in rows}
            assert len({i[:1] for i in self.want}) == 1  # the edit keeps ids apart

    def _copy(self, dest: Path, edit: bool = False) -> Path:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "gpu_pitr", dest / "gpu_pitr", ignore=ignore)
        shutil.copytree(ROOT / "kernels", dest / "kernels", ignore=ignore)
        if edit:
            self._edit(dest, True)
        return dest

    def _edit(self, tree: Path, on: bool) -> None:
        name, old, new = EDITS[self.work]
        path = tree / "gpu_pitr" / name
        text = path.read_text()
        a, b = (old, new) if on else (new, old)
        if a in text and (a not in b or b not in text):
            path.write_text(text.replace(a, b))

    def edit_old(self, on: bool) -> None:
        """Edit the old copy in place (its cache directories stay the same), or undo it."""
        self._edit(self.old, on)

    def start(self, tree: Path, cache: Path, kill: str = "", ready: Path | None = None,
              user: int | None = None) -> tuple[subprocess.Popen, Path]:
        """A process of the copy at ``tree`` (``user``: run as that uid)."""
        self.runs += 1
        out = self.outs / f"{self.runs}.npz"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "PYTHON"))}
        env.update(NUMBA_CACHE_DIR=str(cache), PYTHONFAULTHANDLER="1")
        if kill:
            env["CACHE_SCOPE_KILL"] = kill
        if ready is not None:
            env["CACHE_SCOPE_READY"] = str(ready)
        if user is not None:  # its own temp directory, for gpu_pitr's last-resort cache
            env["TMPDIR"] = str(self.tmp / "user-tmp")
            os.makedirs(env["TMPDIR"], mode=0o777, exist_ok=True)
            os.chmod(env["TMPDIR"], 0o777)
        if self.work == "restore":
            args = ["restore", str(self.wal), "--out", str(out), "-q", "--backend", "cpu",
                    "--to-seq", str(self.seq)]
        else:
            args = ["probe", RECORD.hex()]

        def as_user():
            if user is not None:
                os.setgid(user)
                os.setuid(user)

        proc = subprocess.Popen([sys.executable, str(self.runner), str(tree), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, preexec_fn=as_user if user is not None else None)
        return proc, out

    def finish(self, proc: subprocess.Popen, out: Path, edited: bool,
               at: float | None = None) -> tuple[str, str]:
        """(outcome, what was wrong or ''); SIGKILLed ``at`` seconds in if still running."""
        if at is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(at)
            if proc.poll() is None:
                proc.kill()
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode == KILLED:
            return "killed", ""
        if proc.returncode != 0 or stderr:
            tail = " | ".join(stderr.strip().splitlines()[-2:])
            return "wrong", f"status {proc.returncode}, stderr ...{tail[-400:]!r}"
        problem = self.check(stdout, out, edited)
        return ("wrong", problem) if problem else ("right", "")

    def check(self, stdout: str, out: Path, edited: bool) -> str:
        if self.work == "frame":
            want = "1 42" if edited else "1 41"
            return "" if stdout.strip() == want else f"printed {stdout.strip()!r}, not {want!r}"
        import numpy as np

        try:
            with np.load(out, allow_pickle=False) as z:
                ids, vectors, meta = list(z["ids"]), z["vectors"], list(z["metadata"])
                report = json.loads(str(z["report"]))
        except (OSError, ValueError, KeyError) as err:
            return f"no output: {err}"
        got = {str(i): (vectors[k].astype("<f4").tobytes(), json.loads(m))
               for k, (i, m) in enumerate(zip(ids, meta, strict=True))}
        want = {(i[1:] if edited else i): v for i, v in self.want.items()}
        if got != want:
            odd = sorted(set(got) ^ set(want))[:3] or [i for i in got if got[i] != want[i]][:3]
            return (f"{len(got)} ids, {len(want)} expected ({'edited' if edited else 'unedited'}"
                    f" source); first differences: {odd}")
        if report["stop"]["seq"] != self.seq:
            return f"stopped at seq {report['stop']['seq']}"
        return ""

    def one(self, tree: Path, cache: Path, edited: bool, kill: str = "",
            at: float | None = None, user: int | None = None) -> tuple[str, str]:
        proc, out = self.start(tree, cache, kill, user=user)
        return self.finish(proc, out, edited, at)


def _files(cache: Path, suffix: str) -> int:
    return sum(1 for p in cache.rglob(f"*{suffix}"))


def _kills(s: Scope, tree: Path, cache: Path, edited: bool, n: int, log) -> None:
    """``n`` processes SIGKILLed (or finished first), then one run to the end."""
    for _ in range(n):
        if s.rng.random() < 0.5:
            at, kill = s.rng.uniform(0.3, s.cold), ""
            how = f"SIGKILL at {at:5.1f} s"
        else:
            phase = s.rng.choice(["before", "torn", "after"])
            at, kill = None, f"{s.rng.randint(1, s.writes)}:{phase}"
            how = f"SIGKILL at write {kill}"
        log(how, *s.one(tree, cache, edited, kill, at))
    log("then to the end", *s.one(tree, cache, edited))


def scenario_kill(s: Scope, args, log) -> None:
    for r in range(args.rounds):
        cache = s.tmp / f"kill-{r}"
        _kills(s, s.old, cache, False, args.kills, log)


def scenario_edit(s: Scope, args, template: Path, log) -> None:
    for r in range(args.rounds):
        cache = s.tmp / f"edit-{r}"
        shutil.copytree(template, cache)
        s.edit_old(True)
        try:
            _kills(s, s.old, cache, True, args.kills, log)
        finally:
            s.edit_old(False)
        _kills(s, s.old, cache, False, max(1, args.kills // 2), log)
        shutil.rmtree(cache)


def scenario_concurrent(s: Scope, args, log) -> None:
    for r in range(args.rounds):
        cache = s.tmp / f"concurrent-{r}"
        started = [s.start(s.old, cache) for _ in range(args.procs)]
        for proc, out in started:
            log(f"{args.procs} at once, one copy", *s.finish(proc, out, False))
    # Two copies at two paths, one NUMBA_CACHE_DIR: a directory each.
    cache = s.tmp / "concurrent-two-paths"
    started = [(s.start(s.old, cache), False), (s.start(s.new, cache), True)]
    for (proc, out), edited in started:
        log("old and new copies at once", *s.finish(proc, out, edited))
    dirs = Counter(p.name.rpartition("_")[0] for p in cache.iterdir())
    log("two paths: two cache directories each", *(
        ("right", "") if set(dirs.values()) == {2} else ("wrong", f"cache directories {dirs}")))
    # One path (a symlink switched between the two starts): one directory, two digests.
    link = s.tmp / "current"
    for r in range(args.rounds):
        cache = s.tmp / f"concurrent-link-{r}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(s.old)
        ready = s.tmp / f"ready-{r}"
        first = s.start(link, cache, ready=ready)
        while not ready.exists() and first[0].poll() is None:
            time.sleep(0.05)
        switched = s.tmp / "current.new"
        switched.symlink_to(s.new)
        os.replace(switched, link)
        second = s.start(link, cache)
        log("old, link switched, new", *s.finish(*first, False))
        log("new, after the switch", *s.finish(*second, True))
        log("new again, from the shared directory", *s.one(link, cache, True))


def _damaged(s: Scope, template: Path, name: str, how: str) -> Path:
    cache = s.tmp / f"damage-{name}-{how}"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(cache)
    shutil.copytree(template, cache)
    for path in sorted(cache.rglob(name)):
        data = path.read_bytes()
        if how == "empty":
            path.write_bytes(b"")
        elif how == "garbage":
            path.write_bytes(bytes(s.rng.randrange(256) for _ in range(len(data) or 64)))
        elif how == "half":
            path.write_bytes(data[:len(data) // 2])
        elif how == "flipped":
            b = bytearray(data)
            for _ in range(8):
                b[s.rng.randrange(len(b) // 4, len(b))] ^= 1 << s.rng.randrange(8)
            path.write_bytes(bytes(b))
        elif how == "zeros":
            path.write_bytes(bytes(len(data)))
        elif how == "missing":
            path.unlink()
    return cache


def scenario_damage(s: Scope, args, template: Path, log) -> None:
    # The functions whose files are damaged: three of the restore's (or the probe's one).
    funcs = sorted({p.name.split("-")[0] for p in template.rglob("*.nbi")})
    funcs = funcs if s.work == "frame" else [f for f in funcs if f.startswith((
        "frame._frame", "cpu._decode_records", "commit._walk"))] or funcs[:3]
    for func in funcs:
        for suffix in (".nbi", ".nbc"):
            for how in args.damage.split(","):
                cache = _damaged(s, template, f"{func}-*{suffix}", how)
                log(f"{suffix} {how}", *s.one(s.old, cache, False))
                log(f"{suffix} {how}, next run", *s.one(s.old, cache, False))
                shutil.rmtree(cache)
    # Read-only once filled.
    cache = s.tmp / "damage-read-only"
    shutil.copytree(template, cache)
    if os.geteuid() == 0:
        for path in (s.tmp, s.old, s.old / "gpu_pitr", s.old / "kernels"):
            path.chmod(0o755)
        s.outs.chmod(0o777)
        try:
            outcome = s.one(s.old, cache, False, user=65534)
        except PermissionError as err:  # this interpreter is not nobody's to run
            print(f"damage     read-only cache: not run ({err})", flush=True)
            return
    else:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            outcome = s.one(s.old, cache, False)
        finally:
            for path in [cache, *cache.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
    log("read-only cache, filled", *outcome)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="kill,edit,concurrent,damage")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kills", type=int, default=4, help="killed processes a round")
    ap.add_argument("--procs", type=int, default=3, help="processes at once")
    ap.add_argument("--damage", default="empty,half,zeros,garbage,flipped,missing",
                    help="what is done to the files (damage)")
    ap.add_argument("--work", choices=["restore", "frame"], default="restore")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    chosen = args.scenarios.split(",")
    counts: dict[str, Counter] = {}
    wrong: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu_pitr-cache-") as tmp:
        s = Scope(Path(tmp), args.work, random.Random(args.seed))
        scenario = ["setup"]

        def log(what: str, outcome: str, problem: str) -> None:
            counts.setdefault(scenario[0], Counter())[outcome] += 1
            line = f"{scenario[0]:<11}{what:<40}{outcome}{': ' + problem if problem else ''}"
            print(line, flush=True)
            if outcome == "wrong":
                wrong.append(line)

        template = s.tmp / "template"  # the unedited copy's full cache
        begun = time.perf_counter()
        log("cold cache", *s.one(s.old, template, False))
        s.cold = time.perf_counter() - begun
        s.writes = 2 * _files(template, ".nbc")  # an index and a data file each
        log("warm cache", *s.one(s.old, template, False))
        print(f"cold run {s.cold:.1f} s, {s.writes} cache file writes", flush=True)
        for name in chosen:
            scenario[0] = name
            if name == "kill":
                scenario_kill(s, args, log)
            elif name == "edit":
                scenario_edit(s, args, template, log)
            elif name == "concurrent":
                scenario_concurrent(s, args, log)
            elif name == "damage":
                scenario_damage(s, args, template, log)
        left = sum(1 for _ in s.tmp.rglob("*.tmp.*"))
    print(f"\n{'scenario':<12}{'right':>7}{'killed':>8}{'wrong':>7}")
    for name, c in counts.items():
        print(f"{name:<12}{c['right']:>7}{c['killed']:>8}{c['wrong']:>7}")
    print(f"(temp files of killed writes left in the cache directories: {left})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
