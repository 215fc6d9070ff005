"""No command writes into the WAL directory, and outputs appear whole or not at all.

* Every command (``restore`` to each output format there is, ``inspect``, ``verify``,
  ``archive``) leaves the WAL tree as it was: names, sizes, mtimes (ns), modes and
  content hashes, the directories included; also when the tree is read-only, and,
  in-process, with every write-mode open or change under the tree made to fail.
* A restore killed with SIGKILL at any moment leaves ``OUT.npz`` byte-identical to
  before, or a complete new one (or, with no previous one, none); the next successful
  restore removes the temp files killed writers left.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import workloads as w
from workloads import Batch, Begin, Commit, Del, Ins, LogBuilder, Upd

from gpu_pitr import cli
from gpu_pitr.synth import write_synthetic_wal
from gpu_pitr.tempfiles import remove_stale_temps

SEG2 = 0x6000000


def tree_state(root: Path) -> dict:
    """Every entry under ``root`` (itself included): kind, size, mtime in ns, mode, sha256."""
    state = {}
    for entry in [root, *sorted(root.rglob("*"))]:
        st = entry.lstat()
        digest = None
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        state[str(entry.relative_to(root))] = (
            stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)
    return state


def write_wal(wal_dir: Path) -> Path:
    """Two segments with a writer reopen, a transaction, a batch, trailing bytes and a torn
    tail (so verify finds damage), plus a file and a folder that are not segments."""
    b = LogBuilder()
    b.add(Ins("a", [1, 2], {"k": "v"}, 1))
    b.add(Begin(1, 2))
    b.add(Ins("b", [3, 4], None, 3))
    b.add(Commit(1, 4))
    b.reopen()
    b.add(Batch([Upd("a", [5, 6], None, 5), Ins("c", [7, 8])], 5))
    b.new_segment(SEG2)
    b.add(Del("b", 6))
    b.add(Ins("d", [7, 8], None, 7), trailing=b"\x00")
    torn = b.add(Ins("e", [1, 1], None, 8))
    b.truncate(torn.file, torn.end - 2)
    b.put_file("notes.txt", b"not a segment")
    b.write(wal_dir)
    (wal_dir / "archive").mkdir()
    (wal_dir / "archive" / w.segment_name(1)).write_bytes(w.encode_header(1))
    return wal_dir


def _subcommands() -> set[str]:
    parser = cli._parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def commands() -> list[tuple[str, list[str], int]]:
    """(name, arguments with WAL and OUT placeholders, expected exit status) of every
    command there is."""
    from gpu_pitr import outputs

    cmds = [("restore_npz", ["restore", "WAL", "--out", "OUT/x.npz"], 0)]
    outs = {"parquet": "OUT/x.parquet", "faiss": "OUT/x.faiss", "snapshot": "OUT/snap/"}
    needs = {"parquet": "pyarrow", "faiss": "faiss", "snapshot": "pyarrow"}
    for fmt, out in outs.items():
        if fmt in getattr(outputs, "FORMATS", ()) and _importable(needs[fmt]):
            cmds.append((f"restore_{fmt}", ["restore", "WAL", "--out", out], 0))
    if "snapshot" in _subcommands():
        # Without pyarrow it fails with a one-line error (exit 1): still read-only.
        cmds.append(("snapshot", ["snapshot", "WAL", "--out", "OUT/snapdir"],
                     0 if _importable("pyarrow") else 1))
    cmds += [
        ("inspect", ["inspect", "WAL"], 0),
        ("inspect_json", ["inspect", "WAL", "--json"], 0),
        ("inspect_records", ["inspect", "WAL", "--records", "--json"], 0),
        ("verify", ["verify", "WAL"], 1),  # the torn tail and the trailing bytes
        ("verify_json", ["verify", "WAL", "--json"], 1),
        ("archive", ["archive", "WAL", "--out", "OUT/archive"], 0),
        # A writer's WAL directory is not an archive: refused, whatever it holds.
        ("expire", ["expire", "WAL", "--snapshots", "OUT", "--keep", "1"], 1),
        # Two restored indexes, not a WAL directory: refused (exit 2), nothing written.
        ("diff", ["diff", "WAL", "WAL"], 2),
    ]
    assert {c[1][0] for c in cmds} == _subcommands(), "a new command: add it here"
    return cmds


COMMANDS = commands()


def _args(template: list[str], wal: Path, out: Path) -> list[str]:
    return [str(wal) if a == "WAL" else a.replace("OUT", str(out)) for a in template]


@contextlib.contextmanager
def read_only(root: Path):
    """``root`` and everything under it read-only (dirs 0555, files 0444), then restored."""
    modes = {p: stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}
    for p in sorted(modes, key=lambda p: len(p.parts), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.mark.parametrize("name, template, status", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_on_a_read_only_wal_dir_changes_nothing(tmp_path, name, template, status):
    """As a subprocess on a read-only tree. Run as a normal user the modes stop any
    write; root ignores them, so under root this proves only that nothing changed
    (``test_command_opens_nothing_under_the_wal_dir_for_writing`` proves the rest)."""
    wal = write_wal(tmp_path / "wal")
    out = tmp_path / "out"
    out.mkdir()
    with read_only(wal):
        before = tree_state(wal)
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *_args(template, wal, out)],
                              capture_output=True, text=True, timeout=300)
        after = tree_state(wal)
    assert proc.returncode == status, proc.stderr
    assert after == before
    if name.startswith(("restore", "snapshot", "archive")) and status == 0:
        assert os.listdir(out), "the command wrote its output"


class _WriteGuard:
    """Makes every write-mode open and every change of a path under ``root`` fail.

    Patches ``open`` (``builtins``, ``io``), ``os.open`` and the ``os``/``shutil``
    functions that create, rename, remove or change files; paths given relative to
    a ``dir_fd`` and file descriptors are resolved through ``/proc/self/fd``.
    """

    _OPEN_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _CHANGERS = ("rename", "replace", "remove", "unlink", "rmdir", "mkdir", "makedirs",
                 "truncate", "chmod", "chown", "utime", "link", "symlink", "mkfifo",
                 "mknod", "removedirs", "renames", "lchmod", "lchown", "setxattr",
                 "removexattr")

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = os.path.realpath(root)
        self.refused: list[str] = []
        self.reads = 0
        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file, mode="r", *args, **kwargs):
            if self._under(file) and any(c in mode for c in "wax+"):
                self._refuse(f"open({file!r}, {mode!r})")
            elif self._under(file):
                self.reads += 1
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, dir_fd=None, **kwargs):
            if self._under(path, dir_fd) and flags & self._OPEN_WRITE:
                self._refuse(f"os.open({path!r}, {flags:#o})")
            elif self._under(path, dir_fd):
                self.reads += 1
            return real_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        for fn in self._CHANGERS:
            if hasattr(os, fn):
                monkeypatch.setattr(os, fn, self._changer(f"os.{fn}", getattr(os, fn)))
        for fn in ("rmtree", "move", "copy", "copy2", "copyfile"):
            monkeypatch.setattr(shutil, fn, self._changer(f"shutil.{fn}", getattr(shutil, fn)))

    def _changer(self, name, real):
        def guarded(*args, dir_fd=None, src_dir_fd=None, dst_dir_fd=None, **kwargs):
            fds = [src_dir_fd, dst_dir_fd] if src_dir_fd or dst_dir_fd else [dir_fd, dir_fd]
            targets = args[:2] if name.split(".")[1] in ("rename", "replace", "renames",
                                                         "link", "move") else args[:1]
            if name.startswith("shutil.copy"):
                targets = args[1:2]
            for path, fd in zip(targets, fds, strict=False):
                if self._under(path, fd):
                    self._refuse(f"{name}{args!r}")
            extra = {k: v for k, v in (("dir_fd", dir_fd), ("src_dir_fd", src_dir_fd),
                                        ("dst_dir_fd", dst_dir_fd)) if v is not None}
            return real(*args, **extra, **kwargs)

        return guarded

    def _under(self, path, dir_fd=None) -> bool:
        try:
            if isinstance(path, int):
                path = os.readlink(f"/proc/self/fd/{path}")
            path = os.fsdecode(os.fspath(path))
            if dir_fd is not None and not os.path.isabs(path):
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        except (TypeError, OSError):
            return False
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def _refuse(self, what: str):
        self.refused.append(what)
        raise PermissionError(13, f"write under the WAL directory refused: {what}")


@pytest.mark.parametrize("name, template, status", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_opens_nothing_under_the_wal_dir_for_writing(
        tmp_path, monkeypatch, capsys, name, template, status):
    """In-process, with every write-mode open (``open``, ``os.open``) and every create,
    rename, remove or change (``os.*``, ``shutil.*``) of a path under WAL_DIR made to fail
    and recorded. This is the proof that holds for root too, whom chmod does not stop."""
    wal = write_wal(tmp_path / "wal")
    out = tmp_path / "out"
    out.mkdir()
    before = tree_state(wal)
    guard = _WriteGuard(wal, monkeypatch)
    code = cli.main(_args(template, wal, out))
    monkeypatch.undo()
    assert guard.refused == []
    # expire (not an archive) and diff (not a restored index) refuse a WAL directory
    # before they open anything in it.
    assert guard.reads > 0 or name in ("expire", "diff"), \
        "the guard saw the command read the WAL"
    assert code == status, capsys.readouterr().err
    assert tree_state(wal) == before


def test_the_write_guard_catches_writes(tmp_path, monkeypatch):
    """The guard above is not vacuous: each way of writing under the tree is refused."""
    wal = write_wal(tmp_path / "wal")
    seg = next(wal.glob("wal-*.log"))
    guard = _WriteGuard(wal, monkeypatch)
    attempts = [
        lambda: open(seg, "ab"),
        lambda: seg.write_bytes(b""),
        lambda: os.open(wal / "new", os.O_WRONLY | os.O_CREAT),
        lambda: os.replace(seg, wal / "moved"),
        lambda: os.unlink(seg),
        lambda: (wal / "d").mkdir(),
        lambda: shutil.rmtree(wal / "archive"),
        lambda: os.truncate(seg, 0),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError):
            attempt()
    monkeypatch.undo()
    assert len(guard.refused) == len(attempts)
    assert (wal / "archive").is_dir() and seg.stat().st_size > 0


# ----------------------------------------------------------------------------- SIGKILL
def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _fingerprint(path: Path) -> tuple:
    """The arrays of a complete .npz (load fails on a partial one), as hashes."""
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"ids", "vectors", "metadata", "report"}
        return tuple(hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest()
                     for k in ("ids", "vectors", "metadata"))


def _restore_cmd(wal: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", str(out),
            "--backend", "cpu"]


def _kill_restore(wal: Path, out: Path, moment, sig=signal.SIGKILL, result=None) -> str:
    """Start a restore to ``out`` and send it ``sig`` at ``moment``: seconds after the
    start, or "writing" (as soon as its temp file holds some bytes). Returns what was
    seen; ``result``, a dict, gets the exit status and stderr."""
    proc = subprocess.Popen(_restore_cmd(wal, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            # Children of a non-interactive shell may inherit SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = "killed"
    try:
        deadline = time.monotonic() + 120
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() < deadline:
            if moment == "writing":
                mine = [t for t in _temps(out) if t.name.split("-")[1] == str(proc.pid)]
                if any(_size(t) > 0 for t in mine):
                    seen = "killed while writing its temp file"
                    break
            elif time.monotonic() - start >= moment:
                break
            time.sleep(0.001)
        if proc.poll() is not None:
            seen = "finished before the kill"
        proc.send_signal(sig)
    finally:
        err = proc.communicate(timeout=120)[1]
    if result is not None:
        result.update(status=proc.returncode, stderr=err)
    return seen


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def big_wal(tmp_path_factory) -> tuple[Path, tuple]:
    """A synthetic WAL that takes a few seconds to restore, and its restored arrays."""
    root = tmp_path_factory.mktemp("big")
    wal = root / "wal"
    write_synthetic_wal(wal, total_bytes=120 << 20, dim=128, segments=3, seed=7)
    ref = root / "ref.npz"
    subprocess.run(_restore_cmd(wal, ref), check=True, capture_output=True, timeout=300)
    return wal, _fingerprint(ref)


def test_sigkill_leaves_the_old_output_or_a_complete_new_one(tmp_path, big_wal):
    wal, complete = big_wal
    out = tmp_path / "OUT.npz"
    old = b"the previous output, which must survive whole"
    out.write_bytes(old)
    seen = set()
    for moment in (0.3, 1.2, 2.5, "writing"):
        seen.add(_kill_restore(wal, out, moment))
        if out.read_bytes() != old:
            assert _fingerprint(out) == complete, moment
            out.write_bytes(old)
    # The case a non-atomic writer fails: killed with part of the new file written.
    assert "killed while writing its temp file" in seen
    assert out.read_bytes() == old
    assert _temps(out), "a killed writer leaves its temp file"
    subprocess.run(_restore_cmd(wal, out), check=True, capture_output=True, timeout=300)
    assert _fingerprint(out) == complete
    assert _temps(out) == [], "the next successful run removes stale temp files"


def test_sigkill_with_no_previous_output_leaves_none_or_a_complete_one(tmp_path, big_wal):
    wal, complete = big_wal
    out = tmp_path / "OUT.npz"
    seen = set()
    for moment in ("writing", 1.2):
        seen.add(_kill_restore(wal, out, moment))
        if out.exists():
            assert _fingerprint(out) == complete, moment
            out.unlink()
    assert "killed while writing its temp file" in seen
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_exits_with_one_line_and_leaves_no_temp_file(tmp_path, big_wal, sig):
    """Ctrl-C or a service manager's SIGTERM: the temp file goes, the old output stays,
    one line on stderr, exit status 128 + the signal, like other command-line tools."""
    wal, complete = big_wal
    out = tmp_path / "OUT.npz"
    old = b"the previous output, which must survive whole"
    out.write_bytes(old)
    for moment in ("writing", 1.0):
        result = {}
        seen = _kill_restore(wal, out, moment, sig, result)
        if seen == "finished before the kill":
            continue
        if moment == "writing":
            assert seen == "killed while writing its temp file"
        if result["status"] == 0:
            # The signal came once the command had finished (the process was shutting
            # down): the output is the complete new one, and the signal is ignored.
            assert result["stderr"] == "", result
            assert _fingerprint(out) == complete
            assert _temps(out) == []
            out.write_bytes(old)
            continue
        assert result["status"] == 128 + sig, result
        lines = [f"gpu-pitr: interrupted by {sig.name}; outputs not yet complete were "
                 "removed\n"]
        if moment != "writing":
            # On a loaded host the interpreter may still be importing the command at
            # 1 s: stopped before it started, it wrote nothing and says only that.
            lines.append(f"gpu-pitr: interrupted by {sig.name}\n")
        assert result["stderr"] in lines, result
        assert out.read_bytes() == old
        assert _temps(out) == []


def test_a_signal_once_the_command_has_finished_changes_nothing(tmp_path):
    """SIGTERM while the interpreter shuts down (here from an atexit hook, which runs
    after the command returned): the finished restore still exits 0."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=1 << 20, dim=8, segments=2, seed=5)
    out = tmp_path / "OUT.npz"
    code = ("import atexit, os, signal, sys\n"
            "from gpu_pitr import cli\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
            f"sys.argv = ['gpu-pitr', 'restore', {str(wal)!r}, '--out', {str(out)!r}]\n"
            "cli.run()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr == ""
    with np.load(out, allow_pickle=False) as z:
        assert len(z["ids"]) > 0
    assert _temps(out) == []


# ----------------------------------------------------------------------------- stale temps
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_successful_restore_removes_only_stale_temp_files_of_its_output(tmp_path, capsys):
    wal = write_wal(tmp_path / "wal")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = out_dir / f".x.npz.tmp-{dead}-0123abcd"
        kept = [
            out_dir / f".x.npz.tmp-{live.pid}-0123abcd",  # its writer still runs
            out_dir / f".x.npz.tmp-{os.getpid()}-0123abcd",  # this process's own
            out_dir / f".y.npz.tmp-{dead}-0123abcd",  # another output's
            out_dir / f".x.npz.tmp-{dead}-0123abc",  # not a name atomic_files makes
            out_dir / f"x.npz.tmp-{dead}-0123abcd",  # not hidden: not ours
        ]
        for path in [stale, *kept]:
            path.write_bytes(b"partial")
        stale_dir = out_dir / f".x.npz.tmp-{dead}-89abcdef"
        stale_dir.mkdir()  # a directory is never removed here
        # A failed restore (no such WAL) removes nothing.
        assert cli.main(["restore", str(tmp_path / "missing"), "--out", str(out_dir / "x.npz")]
                        ) == 1
        assert stale.exists()
        assert cli.main(["restore", str(wal), "--out", str(out_dir / "x.npz"), "-q"]) == 0
        capsys.readouterr()
        assert not stale.exists()
        assert all(p.exists() for p in kept) and stale_dir.is_dir()
        assert (out_dir / "x.npz").stat().st_size > 0
    finally:
        live.kill()
        live.wait()


def test_remove_stale_temps_returns_what_it_removed(tmp_path):
    dest = tmp_path / "r.parquet"
    dead = _dead_pid()
    stale = [tmp_path / f".r.parquet.tmp-{dead}-{h}" for h in ("00000000", "deadbeef")]
    for path in stale:
        path.write_bytes(b"")
    (tmp_path / f".r.parquet.tmp-{os.getpid()}-00000000").write_bytes(b"")
    assert sorted(remove_stale_temps(dest)) == stale
    assert remove_stale_temps(dest) == []
    assert remove_stale_temps(tmp_path / "missing-dir" / "x") == []


# A weakref callback that sends the process a signal and runs on: the handler runs
# inside the callback, where an exception cannot propagate (Python prints "Exception
# ignored in ..." and carries on). The CI run that found this lost a SIGTERM that way.
# The signal sent from a weakref callback, which Python reports and carries on from.
_IN_A_CALLBACK = """
import os, signal, sys, weakref

class Thing:
    pass

def callback(ref):
    os.kill(os.getpid(), signal.{sig})
    for _ in range(100000):  # the handler runs here, between two bytecodes
        pass

def in_a_callback():
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # the callback runs now, in this thread
"""
_SIGNAL_IN_A_CALLBACK = _IN_A_CALLBACK + """
from gpu_pitr import cli, pipeline

framed = pipeline._Restore._piece_framed
def piece_framed(self, item):
    if not getattr(piece_framed, "fired", False):
        piece_framed.fired = True
        in_a_callback()
    return framed(self, item)
pipeline._Restore._piece_framed = piece_framed
sys.argv = ["gpu-pitr", "restore", {wal!r}, "--out", {out!r}, "--backend", "cpu"]
cli.run()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_callback_still_stops_the_restore(tmp_path, sig):
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=1 << 20, dim=8, segments=2, seed=5)
    out = tmp_path / "OUT.npz"
    old = b"the previous output, which must survive whole"
    out.write_bytes(old)
    code = _SIGNAL_IN_A_CALLBACK.format(sig=sig.name, wal=str(wal), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stderr) == (
        128 + sig, f"gpu-pitr: interrupted by {sig.name}; outputs not yet complete were "
        "removed\n")
    assert out.read_bytes() == old
    assert _temps(out) == []


def test_a_signal_during_the_renames_lets_the_pair_land_whole(tmp_path, monkeypatch):
    """A FAISS index and its id sidecar are renamed one after the other: a SIGTERM
    between the two renames would leave a new index beside the old ids. The signal
    is recorded and raised at the next check, once both are in place."""
    from gpu_pitr import interrupts, outputs

    a, b = tmp_path / "index.faiss", tmp_path / "index.faiss.ids"
    a.write_bytes(b"old index")
    b.write_bytes(b"old ids")
    replace = os.replace
    renamed = []

    def replace_then_signal(src, dst):
        replace(src, dst)
        renamed.append(Path(dst).name)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here: it records, it does not raise

    monkeypatch.setattr(outputs.os, "replace", replace_then_signal)
    with interrupts.handle_signals():
        with outputs.atomic_files(a, b) as (ta, tb):
            ta.write_bytes(b"new index")
            tb.write_bytes(b"new ids")
        assert renamed == [a.name, b.name]
        assert (a.read_bytes(), b.read_bytes()) == (b"new index", b"new ids")
        with pytest.raises(interrupts.Terminated):
            interrupts.check()  # the next chunk, or the next output, stops
        # ... and the next output is not put in place
        c = tmp_path / "report.json"
        with pytest.raises(interrupts.Terminated), outputs.atomic_files(c) as (tc,):
            tc.write_bytes(b"{}")
        assert not c.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name]
    interrupts.check()  # outside handle_signals nothing is pending


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_the_read_aheads_close_still_ends_its_threads(tmp_path, sig):
    """A Ctrl-C that lands while the read-ahead is being closed (the reading ended, or
    another stop is on its way out) used to skip the rest of the close: the read
    threads ran on and the files stayed open while the command went on to exit, its
    buffers freed under them. The close runs to its end; the stop comes after it."""
    from gpu_pitr import interrupts
    from gpu_pitr.format import readahead
    from gpu_pitr.format.segments import list_segments

    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=8 << 20, dim=16, segments=2, seed=11)
    readers = []
    stop = readahead.Readahead.stop

    def stop_with_a_signal(reader):
        readers.append(reader)
        if len(readers) == 1:  # the framer's close, first: the signal lands inside it
            os.kill(os.getpid(), sig)
            for _ in range(100000):  # the handler runs here, between two bytecodes
                pass
        stop(reader)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readahead.Readahead, "stop", stop_with_a_signal)
        with pytest.raises(type(interrupts.stop_for(sig))), interrupts.handle_signals():
            for item in readahead.framed_pieces(list_segments(wal), 256 << 10, lambda h: None):
                assert item.problem is None
                break  # the scan ends after its first piece: the close runs
    reader = readers[0]
    assert reader._fds == {}, "every segment file the reads opened is closed"
    assert not [t for t in reader._pool._threads if t.is_alive()], "the read threads ended"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_archive_stopped_mid_copy_holds_whole_segments_only(tmp_path, big_wal, sig):
    """``archive`` stopped while a segment is half copied: every segment file in the
    archive is a whole copy of its source (Ctrl-C also removes the temp file and says
    so in one line, after the lines of the copies made); the next run completes the
    archive and removes what a killed run left."""
    wal, _ = big_wal
    arc = tmp_path / "arc"
    cmd = [sys.executable, "-m", "gpu_pitr", "archive", str(wal), "--out", str(arc)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            temps = arc.glob(f".wal-*.log.tmp-{proc.pid}-*") if arc.is_dir() else []
            if any(_size(t) > 0 for t in temps):
                break
            time.sleep(0.001)
        assert proc.poll() is None, "the archive finished before it could be stopped"
        proc.send_signal(sig)
    finally:
        out, err = proc.communicate(timeout=120)
    sources = {p.name: p.read_bytes() for p in wal.glob("wal-*.log")}
    copies = {p.name: p.read_bytes() for p in arc.glob("wal-*.log")}
    assert len(copies) < len(sources)
    assert all(copies[name] == sources[name] for name in copies)
    if sig == signal.SIGINT:
        # What was done before the stop was said as it was done; no summary.
        assert out.splitlines() == [f"{name}: new, {len(copies[name])} bytes"
                                    for name in sorted(copies)]
        assert proc.returncode == 128 + sig
        assert err == ("gpu-pitr: interrupted by SIGINT; outputs not yet complete were "
                       "removed\n")
        assert not list(arc.glob(".wal-*"))
    else:
        assert proc.returncode == -sig and list(arc.glob(".wal-*"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in arc.glob("wal-*.log")} == sources
    assert not list(arc.glob(".wal-*")), "the next run removes what a killed run left"


def test_a_signal_that_lands_inside_compiled_code_is_still_the_stop():
    """A handler that ran inside C code which then returned a result (seen once in a
    Numba function's call): Python raises SystemError from the stop. The command sees
    the stop (one line, 128 + the signal), not a traceback; another SystemError is
    left alone."""
    from gpu_pitr import interrupts

    def landed_in_c():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler raises here
        except interrupts.Terminated as stop:
            raise SystemError("CPUDispatcher(<function f>) returned a result with an "
                              "exception set") from stop

    with pytest.raises(interrupts.Terminated), interrupts.handle_signals():
        landed_in_c()
    with pytest.raises(SystemError), interrupts.handle_signals():
        raise SystemError("not a signal")


def _nested_in_compiled_calls(stop: BaseException, depth: int = 5):
    """What a restore raised when Ctrl-C landed inside nested compiled calls (seen: five
    SystemErrors, each from the one before, the first from the KeyboardInterrupt)."""
    err = stop
    for _ in range(depth):
        try:
            raise SystemError("CPUDispatcher(<function _in_order>) returned a result with "
                              "an exception set") from err
        except SystemError as wrapped:
            err = wrapped
    return err


def test_a_signal_that_lands_inside_nested_compiled_calls_is_still_the_stop():
    """Python raises SystemError from the stop once per compiled call it landed inside:
    the command saw the first SystemError only, and printed a traceback and exited 1
    instead of one line and 128 + the signal."""
    from gpu_pitr import interrupts

    for depth in (1, 2, 5):
        with pytest.raises(KeyboardInterrupt), interrupts.handle_signals():
            raise _nested_in_compiled_calls(KeyboardInterrupt(), depth)
    with pytest.raises(SystemError), interrupts.handle_signals():
        raise _nested_in_compiled_calls(ValueError("not a stop"), 2)


def test_ctrl_c_inside_compiled_code_reaches_a_library_caller_as_keyboard_interrupt(
        monkeypatch, tmp_path):
    """Ctrl-C in a notebook (Python's own handler, no ``handle_signals``) that lands
    inside a Numba call of a restore, a verify or a snapshot's save or load comes out as
    KeyboardInterrupt, not as the SystemError Python raises from it, which an ``except
    KeyboardInterrupt`` does not catch."""
    import gpu_pitr
    import gpu_pitr.snapshot
    from gpu_pitr import outputs
    from gpu_pitr import pipeline as pl
    from gpu_pitr import verify as verify_module
    from gpu_pitr.snapshot import format as snapshot_format
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path / "wal", total_bytes=50_000, dim=4, segments=2, seed=2)
    index = gpu_pitr.restore(tmp_path / "wal", backend="cpu")
    gpu_pitr.snapshot.save(index, tmp_path / "snap")

    def stopped(*args, **kwargs):
        raise _nested_in_compiled_calls(KeyboardInterrupt())

    calls = [
        (pl._Restore, "_tell", lambda: gpu_pitr.restore(tmp_path / "wal", backend="cpu")),
        (verify_module._Verify, "run", lambda: verify_module.verify_wal(tmp_path / "wal")),
        (outputs, "atomic_files", lambda: outputs.write_output(
            index, tmp_path / "out.npz", "npz")),
        (snapshot_format, "write_snapshot", lambda: gpu_pitr.snapshot.save(
            index, tmp_path / "snap2")),
        (snapshot_format, "load_snapshot", lambda: gpu_pitr.snapshot.load(tmp_path / "snap")),
    ]
    for owner, name, call in calls:
        assert hasattr(owner, name), name
        with monkeypatch.context() as m:
            m.setattr(owner, name, stopped)
            with pytest.raises(KeyboardInterrupt):
                call()


# A Ctrl-C while the command starts: while ``gpu_pitr.cli`` is imported (NumPy), or
# while the SIGBUS handler is installed (Numba imported, its handler compiled or
# loaded; a Ctrl-C there could land in an llvmlite callback, which swallowed it).
_CTRL_C_AT_START = _IN_A_CALLBACK + """
sys.argv = ["gpu-pitr", "restore", {wal!r}, "--out", {out!r}, "-q"]
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "gpu_pitr.cli" and {where!r} == "import":
            raise KeyboardInterrupt
        if name == "gpu_pitr.cli" and {where!r} == "import-callback":
            in_a_callback()
sys.meta_path.insert(0, Stop())
if {where!r} == "buserror":
    from gpu_pitr import buserror
    buserror.install = lambda status: in_a_callback()
from gpu_pitr.__main__ import run
run()
"""


@pytest.mark.parametrize(("where", "sig"), [("import", signal.SIGINT),
                                           ("import-callback", signal.SIGTERM),
                                           ("buserror", signal.SIGINT)])
def test_ctrl_c_as_the_command_starts_is_one_line(tmp_path, where, sig):
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=1, seed=3)
    out = tmp_path / "OUT.npz"
    code = _CTRL_C_AT_START.format(wal=str(wal), out=str(out), where=where, sig=sig.name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    tail = "; outputs not yet complete were removed" if where == "buserror" else ""
    assert (proc.returncode, proc.stderr) == (
        128 + sig, f"gpu-pitr: interrupted by {sig.name}{tail}\n")
    assert not out.exists() and _temps(out) == []


# A signal earlier still: as ``gpu_pitr.__main__`` imported what its handler needs
# (``interrupts``, ``environment``: typing, threading), before ``run`` installed it.
_SIGNAL_BEFORE_THE_HANDLER = """
import os, signal, sys
sys.argv = ["gpu-pitr", "inspect", {wal!r}]
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.{sig})
            for _ in range(100000):  # the handler runs here, between two bytecodes
                pass
sys.meta_path.insert(0, Stop())
from gpu_pitr.__main__ import run
run()
"""


@pytest.mark.parametrize("module", ["gpu_pitr.interrupts", "gpu_pitr.environment"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_handlers_are_in_is_one_line(tmp_path, module, sig):
    """The window at start: ``gpu_pitr.__main__`` imported ``interrupts`` and
    ``environment`` before ``run`` installed its handler, so a Ctrl-C there was a
    KeyboardInterrupt traceback and a SIGTERM a death without a word. The handler now
    comes first; only the interpreter's own start (no code of gpu-pitr's) is before it."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=4 << 10, dim=4, segments=1, seed=3)
    code = _SIGNAL_BEFORE_THE_HANDLER.format(wal=str(wal), module=module, sig=sig.name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stderr) == (128 + sig, f"gpu-pitr: interrupted by {sig.name}\n")
    assert proc.stdout == ""


# A signal inside each callback LLVM makes into Python as compiled code is loaded from
# Numba's cache (the object cache's ``getbuffer``, through ctypes).
_SIGNAL_IN_THE_CACHE_LOAD = """
import os, signal, sys
import numba.core.codegen as codegen
load = codegen.CPUCodeLibrary._object_getbuffer_hook.__func__
def signalled_load(cls, module):
    with open({mark!r}, "a") as f:
        f.write("x")
    os.kill(os.getpid(), signal.{sig})
    for _ in range(100000):  # the handler runs here, between two bytecodes
        pass
    return load(cls, module)
codegen.CPUCodeLibrary._object_getbuffer_hook = classmethod(signalled_load)
sys.argv = ["gpu-pitr", "restore", {wal!r}, "--out", {out!r}, "-q"]
from gpu_pitr.__main__ import run
run()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_compiled_code_loads_is_one_line_not_a_crash(tmp_path, sig):
    """A stop raised inside that callback was swallowed by ctypes, the machine code was
    never loaded, and the restore went on to die by SIGSEGV (no line, status -11):
    twice in some 1,000 restores interrupted at random moments. Inside llvmlite a
    stop is now raised in its caller, once the call is over."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=1, seed=3)
    out, mark = tmp_path / "OUT.npz", tmp_path / "loads"
    subprocess.run(_restore_cmd(wal, out), check=True, capture_output=True, timeout=300)
    out.unlink()  # (the cache holds the restore's compiled code now)
    code = _SIGNAL_IN_THE_CACHE_LOAD.format(wal=str(wal), out=str(out), mark=str(mark),
                                            sig=sig.name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert len(mark.read_text()) > 1, "the code was loaded from the cache, and signalled"
    assert (proc.returncode, proc.stderr) == (
        128 + sig, f"gpu-pitr: interrupted by {sig.name}; outputs not yet complete were "
        "removed\n")
    assert not out.exists() and _temps(out) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("module", ["llvmlite.binding.stand_in", "numba.core.caching.stand_in"])
def test_a_signal_inside_llvmlite_or_numbas_cache_is_raised_in_its_caller_at_once(sig, module):
    """Inside llvmlite (whose ctypes callbacks swallow a stop) and Numba's cache (which
    writes an index, then the data it names) a stop is not raised; it is raised in the
    code that called them, on its next line, not at the command's next ``check``. A
    trace function already set is set again."""
    from gpu_pitr import interrupts

    binding = {"__name__": module, "os": os, "signal": signal}
    exec("def finalize(sig):\n"  # a function of theirs, as its module names it
         "    os.kill(os.getpid(), sig)\n"
         "    for _ in range(100000):  # the handler runs here\n"
         "        pass\n"
         "    return 'finalized'\n", binding)
    got, after = [], []

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        with pytest.raises(type(interrupts.stop_for(sig))), interrupts.handle_signals():
            got.append(binding["finalize"](sig))  # it returns normally...
            after.append("the next line")  # ... and its caller stops before this one
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert (got, after) == (["finalized"], [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_error_raised_as_a_stop_went_by_is_the_stop(sig):
    """A Ctrl-C inside ``threading.Condition.wait`` (a thread pool's ``result``) left
    its lock released, and the ``with`` around it raised "cannot release un-acquired
    lock" over the stop: a traceback and status 1, not the one line and 128 + N. An
    error raised while a stop goes by is the stop; one raised ``from None`` is not."""
    from gpu_pitr import interrupts

    stop = type(interrupts.stop_for(sig))

    def cut_short():
        try:
            os.kill(os.getpid(), sig)
            for _ in range(100000):  # the handler runs here
                pass
        finally:
            raise RuntimeError("cannot release un-acquired lock")

    with pytest.raises(stop), interrupts.handle_signals():
        cut_short()
    with pytest.raises(stop):  # (the library called from a program: the same)
        interrupts.raises_stops(_raise_over)(stop)
    with pytest.raises(RuntimeError, match="replaces"), interrupts.handle_signals():
        try:
            os.kill(os.getpid(), sig)
            for _ in range(100000):
                pass
        except stop:
            raise RuntimeError("replaces the stop") from None


def _raise_over(stop):
    try:
        raise stop()
    finally:
        raise ValueError("raised as the stop went by")


def test_holding_holds_a_stop_for_its_own_thread_only():
    """The read-ahead's close holds a stop in the main thread; verify's copy checks, on
    a pool, must still stop at their next read (CI once saw 7 blocks read, not 5 at
    most: ``holding`` was one flag for every thread)."""
    import threading

    from gpu_pitr import interrupts

    stopped = []

    def other_thread_checks():
        try:
            interrupts.check()
            stopped.append(False)
        except KeyboardInterrupt:
            stopped.append(True)

    with pytest.raises(KeyboardInterrupt), interrupts.handle_signals():
        with interrupts.holding():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100000):  # the handler runs here: it only records
                pass
            interrupts.check()  # the holding thread's own: nothing yet
            worker = threading.Thread(target=other_thread_checks)
            worker.start()
            worker.join()
        assert stopped == [True]
        interrupts.check()  # after the block, the holder's check raises it


# A Ctrl-C that lands in code run from text (``exec``: dataclasses, namedtuple and Numba
# make functions so), as the module named is imported: here by a ``sitecustomize``.
_STOP_IN_EXEC = """
import sys
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            exec("import os, signal\\nos.kill(os.getpid(), signal.SIGINT)\\n"
                 "for _ in range(100000): pass\\n")
sys.meta_path.insert(0, Stop())
"""


@pytest.mark.parametrize(("module", "tail"), [
    ("gpu_pitr.environment", ""),  # __main__'s own handler, before the command's
    ("gpu_pitr.cli", ""),  # __main__'s, once ``interrupts`` is in
    ("gpu_pitr.buserror", "; outputs not yet complete were removed"),  # the command's
])
def test_ctrl_c_inside_code_run_from_text_exits_130_under_python_m(tmp_path, module, tail):
    """``python -m gpu_pitr``: CPython notes a KeyboardInterrupt that leaves ``exec``'d
    text as unhandled, though the command caught it, and then ended the process by
    SIGINT (status -2) after its one line, not with 130. Seen in the suite's own
    interrupt test, once in a CI run."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=1, seed=3)
    out = tmp_path / "OUT.npz"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_STOP_IN_EXEC.format(module=module))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
                           str(out), "-q"], capture_output=True, text=True, timeout=300,
                          env=env, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
    assert (proc.returncode, proc.stderr) == (130, f"gpu-pitr: interrupted by SIGINT{tail}\n")
    assert not out.exists() and _temps(out) == []


_STOP_IN_C_IMPORT = """
import sys
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "numba._devicearray":  # imported by numba._dispatcher's C code
            sys.meta_path.remove(self)
            import os, signal
            os.kill(os.getpid(), signal.{sig})
            for _ in range(100000): pass
sys.meta_path.insert(0, Stop())
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["verify", "restore", "archive"])
def test_a_stop_that_c_code_prints_and_replaces_is_the_stop(tmp_path, command, sig):
    """A stop raised in Python code that C code called, which prints it (``PyErr_Print``)
    and raises an error of its own in its place: numba's ``_dispatcher`` does so when
    the import of ``numba._devicearray`` fails. It was a traceback of the stop, then
    one of "ImportError: numba._devicearray failed to import", and status 1 (2 for
    verify), once in 60 ``expire`` runs interrupted at random moments (and possible for
    every command: Numba is imported once the command's handling is in)."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=1, seed=3)
    out = tmp_path / ("OUT.npz" if command == "restore" else "arc")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_STOP_IN_C_IMPORT.format(sig=sig.name))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    args = [str(wal)] if command == "verify" else [str(wal), "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", command, *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tail = "" if command == "verify" else "; outputs not yet complete were removed"
    assert (proc.returncode, proc.stderr) == (128 + sig, f"gpu-pitr: interrupted by {sig.name}"
                                                         f"{tail}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "wal"]


def _report_target(path: Path):
    import json

    return json.loads(path.read_text())["target"]["kind"]


def _restored_with_a_report(tmp_path: Path, fmt: str):
    """A WAL restored to seq 3 in ``fmt`` with --report-json: ``(wal, out, report, the
    command's arguments without the target)``."""
    pytest.importorskip({"npz": "numpy", "faiss": "faiss", "snapshot": "pyarrow"}[fmt])
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    out = tmp_path / {"npz": "x.npz", "faiss": "x.faiss", "snapshot": "snap"}[fmt]
    report = tmp_path / "report.json"
    base = ["restore", str(wal), "--out", str(out), "--format", fmt, "--report-json",
            str(report), "-q"]
    assert cli.main([*base, "--to-seq", "3"]) == 0
    return wal, out, report, base


@pytest.mark.parametrize("fmt", ["npz", "faiss", "snapshot"])
def test_the_old_report_is_gone_before_the_new_index_is_in_place(tmp_path, monkeypatch, fmt):
    """``--report-json``: the index is renamed into place, then its report. A writer killed
    between the two (SIGKILL, power loss) left the new index beside the previous run's
    report, which described another target. The old report now goes first: at the moment
    the index lands, no report is there."""
    from gpu_pitr import outputs, tempfiles

    wal, out, report, base = _restored_with_a_report(tmp_path, fmt)
    assert _report_target(report) == "seq"
    seen = []  # what a SIGKILL right after the index's rename would leave

    def note(src, dst):
        if Path(dst) != report:
            seen.append(report.exists() and _report_target(report))

    for module, name in ((outputs.os, "replace"), (tempfiles.os, "rename")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda src, dst, real=real: (real(src, dst), note(src, dst))[0])
    assert cli.main(base) == 0
    assert seen and not any(seen), seen  # never the old report ("seq") beside the new index
    assert _report_target(report) == "latest"


@pytest.mark.parametrize("fmt", ["npz", "faiss", "snapshot"])
def test_an_index_whose_rename_fails_leaves_the_old_report(tmp_path, monkeypatch, fmt):
    """The old report went just before the index's rename; when that rename failed (a
    permission, a full directory), the run said nothing was replaced, yet the previous
    run's report was gone. It is now moved aside and put back: the old index and its
    report stay, as a pair."""
    import errno

    from gpu_pitr import outputs, tempfiles

    wal, out, report, base = _restored_with_a_report(tmp_path, fmt)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
              and wal not in p.parents}

    def refuse(real):
        def rename(src, dst):
            if Path(dst) == out:
                raise OSError(errno.EACCES, "Permission denied", str(dst))
            return real(src, dst)
        return rename

    monkeypatch.setattr(outputs.os, "replace", refuse(os.replace))
    monkeypatch.setattr(tempfiles.os, "rename", refuse(os.rename))
    assert cli.main(base) != 0
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
             and wal not in p.parents}
    assert after == before  # the old index and its report, nothing else
    assert _report_target(report) == "seq"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_once_the_index_is_in_place_lets_its_report_land(tmp_path, monkeypatch, sig):
    """Ctrl-C or SIGTERM right after the index was renamed into place: its report was not
    renamed (the stop was raised before it), so the new index stood beside the previous
    run's report, and the command said its incomplete outputs were removed. The report now
    follows the index; the command had finished its outputs, so the signal changes
    nothing."""
    from gpu_pitr import outputs

    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    out, report = tmp_path / "x.npz", tmp_path / "report.json"
    base = ["restore", str(wal), "--out", str(out), "--report-json", str(report), "-q"]
    assert cli.main([*base, "--to-seq", "3"]) == 0
    real = os.replace

    def replace_then_signal(src, dst):
        real(src, dst)
        if Path(dst) == out:
            os.kill(os.getpid(), sig)
            time.sleep(0.05)  # the handler runs here: it only records

    monkeypatch.setattr(outputs.os, "replace", replace_then_signal)
    status = cli.main(base)
    assert _report_target(report) == "latest"
    with np.load(out, allow_pickle=False) as z:
        assert _report_target_of_npz(z) == "latest"
    assert status in (0, 128 + sig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "wal", "x.npz"]


def _report_target_of_npz(z) -> str:
    import json

    return json.loads(str(z["report"]))["target"]["kind"]


def test_a_snapshot_write_removes_killed_writes_of_other_names(tmp_path):
    """Snapshots named apart (by date, as the docs advise) are never written twice under
    one name, so the temp directory a killed ``snapshot --out snaps/snap-1`` left (up to
    a whole snapshot, hidden from inspect and verify) was only ever removed by expire:
    they piled up. Any snapshot write now removes those of dead writers quiet for ten
    minutes; a live writer's, one changed lately (its pid may be another host's), and a
    directory that holds other files than a snapshot's, stay."""
    wal, snaps = tmp_path / "wal", tmp_path / "snaps"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    snaps.mkdir()
    dead = _dead_pid()
    killed = snaps / f".snap-1.tmp-{dead}-0123abcd"
    killed.mkdir()
    (killed / "vectors.f32").write_bytes(b"half a snapshot")
    empty = snaps / f".snap-0.tmp-{dead}-89abcdef"  # killed before it wrote a file
    empty.mkdir()
    live = snaps / f".snap-9.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    foreign = snaps / f".notes.tmp-{dead}-0123abcd"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a snapshot's")
    recent = snaps / f".snap-3.tmp-{dead}-0123abcd"  # its pid may be another host's
    recent.mkdir()
    (recent / "vectors.f32").write_bytes(b"being written")
    old = time.time() - 3600
    for p in (killed, killed / "vectors.f32", empty, foreign, foreign / "notes.txt"):
        os.utime(p, (old, old))
    assert cli.main(["snapshot", str(wal), "--out", str(snaps / "snap-2"), "-q"]) == 0
    assert sorted(p.name for p in snaps.iterdir()) == sorted(
        [foreign.name, live.name, recent.name, "snap-2"])


def test_an_output_write_removes_killed_writes_of_other_output_names(tmp_path):
    """One output name per target (docs/recovery.md) is never written twice, so the temp
    file a killed ``restore --out x-1.npz`` left (up to a whole index) stayed for good:
    only a later write of the same name removed it. Any output write now removes those
    of dead writers of any output name, once unchanged for ten minutes (a pid may be
    another host's); other files stay."""
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=2, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    old = time.time() - 3600
    names = {"killed": f".x-1.npz.tmp-{dead}-0123abcd",
             "killed_ids": f".x-2.faiss.ids.jsonl.tmp-{dead}-0123abcd",
             "recent": f".x-3.parquet.tmp-{dead}-0123abcd",
             "live": f".x-4.npz.tmp-{os.getpid()}-0123abcd",
             "other": f".notes.txt.tmp-{dead}-0123abcd"}
    for key, name in names.items():
        (out / name).write_bytes(b"half an output")
        if key != "recent":
            os.utime(out / name, (old, old))
    assert cli.main(["restore", str(wal), "--out", str(out / "x-5.npz"), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [names["recent"], names["live"], names["other"], "x-5.npz"])


def test_a_report_swept_while_its_index_was_written_is_written_again(tmp_path, monkeypatch):
    # The report's temp is written first and left unchanged while then() writes the
    # index: a run on another host or in another container (this pid not alive there)
    # swept it as a killed writer's once QUIET_SECONDS passed, and the run failed after
    # the new index was in place, its old report removed and none written, saying
    # "nothing was left in its place".
    from gpu_pitr import outputs, tempfiles

    (tmp_path / "r.json").write_text('{"old": 1}\n')

    def then():
        with monkeypatch.context() as m:  # the other host's sweep, long after
            m.setattr(tempfiles, "pid_alive", lambda pid: False)
            m.setattr(tempfiles, "QUIET_SECONDS", -60)
            outputs._remove_killed_outputs(tmp_path)
        with outputs.atomic_files(tmp_path / "idx.npz") as (tmp,):
            tmp.write_bytes(b"index")

    outputs.write_json(tmp_path / "r.json", {"new": 1}, then=then)
    assert sorted(os.listdir(tmp_path)) == ["idx.npz", "r.json"]
    assert (tmp_path / "r.json").read_text() == '{\n  "new": 1\n}\n'


def _stop_as_the_old_snapshot_goes(monkeypatch) -> None:
    """Ctrl-C (no command defers it) lands as the first file of the snapshot replaced
    is removed, once the new one is in place."""
    from gpu_pitr import tempfiles

    real_fsync, real_unlink = tempfiles.fsync_renamed, os.unlink

    def stopped_once(*args, **kwargs):
        real_unlink(*args, **kwargs)
        monkeypatch.setattr(os, "unlink", real_unlink)
        raise KeyboardInterrupt

    def in_place(directory):  # the new snapshot is in place: the old one goes next
        real_fsync(directory)
        monkeypatch.setattr(os, "unlink", stopped_once)

    monkeypatch.setattr(tempfiles, "fsync_renamed", in_place)


def test_ctrl_c_while_the_replaced_snapshot_is_removed_leaves_no_copy_of_it(
        monkeypatch, tmp_path):
    """A snapshot written over an older one sets the old one aside and removes it once the
    new one is in place. Ctrl-C in a program that calls the library (no command defers
    it) landing in that removal left the rest of the old snapshot as ``.NAME.old-PID-*``
    beside the new one, for as long as the process lived: the sweep of later writes
    passes over the directories of a writer still running (in a test that stopped a
    running save at random, 4 of 25 stops). The removal runs to its end; the stop is
    raised after it."""
    import shutil

    import gpu_pitr
    import gpu_pitr.snapshot
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path / "wal", total_bytes=50_000, dim=4, segments=2, seed=3)
    old = gpu_pitr.restore(tmp_path / "wal", backend="cpu", to_seq=100)
    new = gpu_pitr.restore(tmp_path / "wal", backend="cpu")
    out = tmp_path / "snap"
    gpu_pitr.snapshot.save(old, out)

    _stop_as_the_old_snapshot_goes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        gpu_pitr.snapshot.save(new, out)
    monkeypatch.undo()
    assert gpu_pitr.snapshot.load(out).count == len(new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "wal"]
    shutil.rmtree(out)


def test_ctrl_c_in_the_fsync_after_the_swap_still_removes_the_replaced_snapshot(
        monkeypatch, tmp_path):
    """Ctrl-C (no command defers it) landing in the fsync of the directory once the new
    snapshot is in place, just before the replaced one is removed: the stop went up at
    once and left the old snapshot whole as ``.NAME.old-PID-*`` beside the new one, for
    as long as the process lived (a second write of the name in it, and ``expire``,
    pass over a live writer's directories). The fsync and the removal run to their
    end; the stop is raised after."""
    import gpu_pitr
    import gpu_pitr.snapshot
    from gpu_pitr import tempfiles
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path / "wal", total_bytes=50_000, dim=4, segments=2, seed=3)
    old = gpu_pitr.restore(tmp_path / "wal", backend="cpu", to_seq=100)
    new = gpu_pitr.restore(tmp_path / "wal", backend="cpu")
    out = tmp_path / "snaps" / "s1"
    gpu_pitr.snapshot.save(old, out)
    real, calls = tempfiles.fsync_renamed, []

    def stopped_once(directory):
        calls.append(directory)
        if len(calls) == 1:  # the first fsync once the new snapshot is in place
            assert gpu_pitr.snapshot.load(out).count == len(new)
            raise KeyboardInterrupt
        real(directory)

    monkeypatch.setattr(tempfiles, "fsync_renamed", stopped_once)
    with pytest.raises(KeyboardInterrupt):
        gpu_pitr.snapshot.save(new, out)
    monkeypatch.undo()
    assert gpu_pitr.snapshot.load(out).count == len(new)
    assert os.listdir(tmp_path / "snaps") == ["s1"]  # no hidden old copy


def test_ctrl_c_after_the_snapshot_is_in_place_does_not_put_the_old_report_back(
        monkeypatch, tmp_path):
    """A stop raised once the new snapshot is in place (Ctrl-C in a program that calls
    the library, landing as the replaced snapshot is removed) was taken for a failed
    rename: the previous run's report was put back beside the new snapshot, the pairing
    ``first_removing`` exists to prevent. The old report goes; the new snapshot stays."""
    import gpu_pitr
    import gpu_pitr.snapshot
    from gpu_pitr import outputs
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path / "wal", total_bytes=50_000, dim=4, segments=2, seed=3)
    old = gpu_pitr.restore(tmp_path / "wal", backend="cpu", to_seq=100)
    new = gpu_pitr.restore(tmp_path / "wal", backend="cpu")
    out, report = tmp_path / "snap", tmp_path / "r.json"
    outputs.write_json(report, {"of": "old"}, then=lambda: gpu_pitr.snapshot.save(old, out))

    _stop_as_the_old_snapshot_goes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_json(report, {"of": "new"},
                           then=lambda: gpu_pitr.snapshot.save(new, out))
    monkeypatch.undo()
    assert gpu_pitr.snapshot.load(out).count == len(new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap", "wal"]  # no old report
