"""The progress bar (only on a terminal), ``--quiet``, ``--report-json``, ``--chunk-size``
and ``--memory-budget`` of ``gpu-pitr restore``.

A terminal is a pseudo-terminal: the CLI's stderr is the pty's slave end and the
test reads what it drew from the master end.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from workloads import Batch, Begin, Commit, Del, Ins, LogBuilder, Upd, dir_state, f32

import gpu_pitr
from gpu_pitr.budget import chunk_bytes_for_budget, min_budget, parse_size, working_bytes
from gpu_pitr.progress import ProgressBar, human_bytes, progress_bar


def write_wal(wal_dir: Path, n: int = 300) -> Path:
    """A few hundred records in two segments: several 1 KiB chunks."""
    b = LogBuilder()
    for i in range(n):
        b.add(Ins(f"id-{i % 37}", f32(i, -i, 0.5), {"i": str(i)} if i % 3 else None, i))
        if i % 50 == 49:
            b.add(Batch([Upd(f"id-{i % 7}", f32(1, 2, 3), None, i), Del(f"id-{i % 11}", i)], i))
    b.new_segment(0x6000_0000)
    b.add(Ins("last", f32(9, 9, 9), None, n + 1))
    b.write(wal_dir)
    return wal_dir


@pytest.fixture(scope="module")
def wal_dir(tmp_path_factory) -> Path:
    return write_wal(tmp_path_factory.mktemp("progress") / "wal")


@pytest.fixture(scope="module")
def n_ids(wal_dir: Path) -> int:
    return len(gpu_pitr.restore(wal_dir, backend="cpu"))


def wal_bytes(wal_dir: Path) -> int:
    return sum(p.stat().st_size for p in wal_dir.iterdir())


def run_on_pty(*args: object) -> tuple[int, str, str]:
    """Run ``python -m gpu_pitr ARGS`` with stderr on a pseudo-terminal; return the exit
    status, stdout and what reached the terminal.
    """
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=slave, text=True)
    finally:
        os.close(slave)  # the child holds its own copy: EOF (EIO) once it exits
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError as err:
                if err.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read()
        rc = proc.wait(timeout=600)
    finally:
        os.close(master)
        proc.stdout.close()
    return rc, stdout, b"".join(chunks).decode("utf-8", errors="replace")


def test_bar_on_a_terminal(wal_dir: Path, tmp_path: Path, n_ids: int) -> None:
    before = dir_state(wal_dir)
    rc, stdout, tty = run_on_pty("restore", wal_dir, "--out", tmp_path / "o.npz",
                                 "--backend", "cpu", "--chunk-size", "1K")
    assert rc == 0, tty
    assert dir_state(wal_dir) == before
    total = wal_bytes(wal_dir)
    # Each phase is drawn at least once (a new phase always redraws)...
    for phase in ("read ", "finish", "write"):
        assert phase in tty
    # ... and the last counts, all bytes read, are shown with the total.
    assert f"{human_bytes(total)}/{human_bytes(total)}" in tty
    assert "records" in tty and "\r" in tty and "\n" not in tty.replace("\r\n", "")
    # Cleared at the end: the last thing written is a carriage return.
    assert tty.endswith("\r")
    assert f"restored {n_ids} ids" in stdout


def test_quiet_on_a_terminal_writes_nothing(wal_dir: Path, tmp_path: Path, n_ids: int) -> None:
    rc, stdout, tty = run_on_pty("restore", wal_dir, "--out", tmp_path / "o.npz",
                                 "--backend", "cpu", "-q")
    assert rc == 0
    assert (stdout, tty) == ("", "")
    assert np.load(tmp_path / "o.npz")["ids"].shape == (n_ids,)


def test_errors_still_print_with_quiet(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", tmp_path / "nope",
                           "--out", tmp_path / "o.npz", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and proc.stderr.startswith("gpu-pitr: error: ")


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_no_terminal_no_bar_and_report_json(wal_dir: Path, tmp_path: Path, n_ids: int) -> None:
    out, report = tmp_path / "o.npz", tmp_path / "report.json"
    proc = cli("restore", wal_dir, "--out", out, "--backend", "cpu", "--report-json", report,
               "--memory-budget", "64M")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"restored {n_ids} ids" in proc.stdout
    with np.load(out, allow_pickle=False) as npz:
        assert json.loads(report.read_text()) == json.loads(str(npz["report"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "report.json"]


def test_report_json_is_not_written_on_failure(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    b = LogBuilder()
    b.add(Ins("a", f32(1, 2), None, 1))
    b.add(Ins("b", f32(1, 2, 3), None, 2))  # another dimension: a data error
    b.write(wal)
    report = tmp_path / "report.json"
    report.write_text("old")
    proc = cli("restore", wal, "--out", tmp_path / "o.npz", "--report-json", report)
    assert proc.returncode == 1
    assert report.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "wal"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--report-json", "{wal}/r.json"], "inside WAL_DIR"),
        # The report over the index it reports on: refused, not written over it.
        (["--report-json", "{out}"], "is what --out writes, or inside it"),
        (["--chunk-size", "12Q"], "not a size"),
        (["--chunk-size", "0"], "not a positive size"),
        (["--memory-budget", "8M"], "too small"),
        (["--memory-budget", "64M", "--chunk-size", "1M"], "not allowed with"),
    ],
)
def test_flag_usage_errors(wal_dir: Path, tmp_path: Path, args: list, message: str) -> None:
    before = dir_state(wal_dir)
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz",
               *[a.format(wal=wal_dir, out=tmp_path / "o.npz") for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert dir_state(wal_dir) == before
    assert list(tmp_path.iterdir()) == []


def test_report_json_inside_a_snapshot_out_is_refused(wal_dir: Path, tmp_path: Path) -> None:
    proc = cli("snapshot", wal_dir, "--out", tmp_path / "s", "--report-json",
               tmp_path / "s" / "r.json")
    assert proc.returncode == 2 and "is what --out writes, or inside it" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_json_missing_directory_fails_before_the_restore(wal_dir: Path,
                                                                tmp_path: Path) -> None:
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz",
               "--report-json", tmp_path / "missing" / "r.json")
    assert proc.returncode == 1 and "missing" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _chunks_read(monkeypatch) -> list[int]:
    """The chunk size of each restore from now on, as its read-ahead is given it."""
    from gpu_pitr import pipeline

    seen: list[int] = []
    real = pipeline.Readahead

    def spy(ranges, chunk_bytes, *args, **kwargs):
        seen.append(chunk_bytes)
        return real(ranges, chunk_bytes, *args, **kwargs)

    monkeypatch.setattr(pipeline, "Readahead", spy)
    return seen


def test_a_chunk_past_every_segment_is_cut_to_fit(wal_dir: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    # No piece spans two segments: five buffers of 1 TiB for a log of a few MB were
    # allocated (a MemoryError and its traceback) before the size was cut.
    from gpu_pitr import pipeline

    seen = _chunks_read(monkeypatch)
    got = gpu_pitr.restore(wal_dir, backend="cpu", chunk_bytes=1 << 40)
    largest = max(p.stat().st_size for p in wal_dir.iterdir())
    fits = max(1, -(-largest // (1 << 20))) << 20  # whole MiB
    assert seen == [fits] and fits < pipeline.DEFAULT_CHUNK_BYTES
    # The default too: buffers (page-locked on a GPU) no larger than the log needs;
    # a size below that stays as given.
    gpu_pitr.restore(wal_dir, backend="cpu")
    gpu_pitr.restore(wal_dir, backend="cpu", chunk_bytes=1000)
    assert seen[1:] == [fits, 1000]
    want = gpu_pitr.restore(wal_dir, backend="cpu")
    assert got.id_list() == want.id_list()
    assert got.vectors.tobytes() == want.vectors.tobytes()
    monkeypatch.undo()
    proc = cli("restore", wal_dir, "--out", tmp_path / "o.npz", "--chunk-size", "4T", "-q")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_chunk_size_changes_nothing_but_the_chunks(wal_dir: Path) -> None:
    small = gpu_pitr.restore(wal_dir, backend="cpu", chunk_bytes=parse_size("1K"))
    large = gpu_pitr.restore(wal_dir, backend="cpu")
    assert small.id_list() == large.id_list()
    assert small.vectors.tobytes() == large.vectors.tobytes()
    assert small.metadata == large.metadata


def test_restore_calls_progress_per_chunk(wal_dir: Path) -> None:
    calls = []
    gpu_pitr.restore(wal_dir, backend="cpu", chunk_bytes=1024,
                     progress=lambda *a: calls.append(a))
    total = wal_bytes(wal_dir)
    phases = [c[0] for c in calls]
    assert phases[-1] == "finish" and set(phases[:-1]) == {"read"}
    assert len(calls) > 5  # one per 1 KiB chunk at least
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[-1] == total
    assert all(c[2] == total for c in calls)
    assert calls[-1][3] == 300 + 6 + 1  # every record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bar_redraws_at_most_ten_times_a_second() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, clock=clock)
    bar("read", 0, 10_000_000, 0)
    for i in range(1, 50):
        clock.now += 0.01  # 100 calls a second
        bar("read", i * 100_000, 10_000_000, i * 10)
    draws = stream.getvalue().count("\r")
    assert 5 <= draws <= 6  # 0.49 s: the first draw and one per 0.1 s
    bar("finish", 10_000_000, 10_000_000, 999)  # a new phase draws at once
    assert stream.getvalue().count("\r") == draws + 1


def test_bar_text() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, clock=clock)
    bar("read", 0, 400_000_000, 0)
    clock.now += 2.0
    bar("read", 100_000_000, 400_000_000, 12345)
    line = stream.getvalue().rsplit("\r", 1)[1]
    assert line.startswith("read    25% [###.........]")
    assert "100 MB/400 MB" in line and "12,345 records" in line
    assert "50.0 MB/s" in line and "ETA 0:06" in line
    bar.phase("write")
    line = stream.getvalue().rsplit("\r", 1)[1]
    assert line.startswith("write ") and "ETA" not in line
    # Shorter than the line before: padded with spaces over the rest of it.
    width = len(line.rstrip())
    assert width < len(line) < 80
    bar.close()
    assert stream.getvalue().endswith("\r" + " " * width + "\r")


def test_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_bar(stream=io.StringIO()) is None
    assert progress_bar(quiet=True, stream=Tty()) is None
    assert isinstance(progress_bar(stream=Tty()), ProgressBar)
    bar = ProgressBar(Tty())
    bar.close()  # never drew: writes nothing
    assert bar.stream.getvalue() == ""


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("1K", 1024), ("64m", 64 << 20), ("1.5G", 3 << 29), ("2GiB", 2 << 30),
     ("16MB", 16 << 20)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1X", "-1M", "0", "1 M B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_budget_to_chunk_size() -> None:
    for budget in (min_budget(), 48 << 20, 256 << 20, 1 << 30, 64 << 30):
        chunk = chunk_bytes_for_budget(budget)
        assert chunk % (1 << 20) == 0 and chunk >= 1 << 20
        assert working_bytes(chunk) <= budget
    assert chunk_bytes_for_budget(256 << 20) > chunk_bytes_for_budget(48 << 20)
    with pytest.raises(ValueError, match="too small"):
        chunk_bytes_for_budget(min_budget() - 1)
    # the budget as given, not rounded to "0.0 MiB"
    with pytest.raises(ValueError, match="of 512 bytes is too small"):
        chunk_bytes_for_budget(512)
    with pytest.raises(ValueError, match=r"of 33\.9 MiB is too small"):
        chunk_bytes_for_budget(int(33.9 * (1 << 20)))


def fresh_function():
    """A Numba function never compiled before in this process (a new one each call), that
    calls another: the callee compiles inside it, one outermost compile."""
    from numba import njit

    @njit
    def inner(x):
        return x * 3

    @njit
    def outer(x):
        return inner(x) + 1

    return outer


def test_compile_seconds_and_watchers_see_outermost_compiles() -> None:
    from gpu_pitr.jit import compile_seconds, watch_compiles

    f = fresh_function()
    seen: list[bool] = []
    before = compile_seconds()
    with watch_compiles(seen.append):
        assert f(2) == 7  # compiles outer, and inner inside it
        assert f(5) == 16  # compiled: no event
    spent = compile_seconds() - before
    assert seen == [True, False]
    assert spent > 0
    g = fresh_function()
    g(1)  # outside the block: the watcher is gone, the clock still counts
    assert seen == [True, False] and compile_seconds() - before > spent


def test_bar_while_compiling() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, clock=clock)
    bar("read", 0, 400_000_000, 0)
    clock.now += 1.0
    bar.compiling(True)  # drawn at once, whatever the interval
    line = stream.getvalue().rsplit("\r", 1)[1]
    assert line.startswith("compile   0% [") and "(then cached)" in line
    assert "MB/s" not in line and "ETA" not in line
    clock.now += 7.0
    bar.compiling(False)
    assert stream.getvalue().rsplit("\r", 1)[1].startswith("read ")
    clock.now += 2.0
    bar("read", 100_000_000, 400_000_000, 12345)
    # 10 s since the start, 7 of them compiling: 100 MB in 3 s.
    line = stream.getvalue().rsplit("\r", 1)[1]
    assert "33.3 MB/s" in line and "ETA 0:09" in line


def test_report_counts_compiling_inside_the_restore(wal_dir: Path) -> None:
    from gpu_pitr.jit import compile_seconds

    spent = []

    def progress(*_args):  # compiles, once, inside the restore
        if not spent:
            before = compile_seconds()
            fresh_function()(1)
            spent.append(compile_seconds() - before)

    timings = gpu_pitr.restore(wal_dir, backend="cpu", progress=progress).report.timings
    assert spent[0] > 0
    assert spent[0] - 1e-6 <= timings["compile"] <= timings["total"]  # rounded to 1 us
    assert gpu_pitr.restore(wal_dir, backend="cpu").report.timings["compile"] == 0


def test_cli_bar_and_summary_say_when_it_compiles(wal_dir: Path, tmp_path: Path,
                                                  monkeypatch, capsys) -> None:
    from gpu_pitr import cli

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    monkeypatch.setattr(cli, "progress_bar", lambda quiet=False: ProgressBar(stream))
    monkeypatch.setattr(cli, "COMPILE_NOTE_SECONDS", 1e-6)  # this compile is short
    restore = gpu_pitr.restore

    def compiling_restore(*args, progress, **kwargs):  # as on a first run: Numba compiles
        def compile_first(*counts):
            if not compiled:
                compiled.append(fresh_function()(1))
            progress(*counts)

        return restore(*args, progress=compile_first, **kwargs)

    compiled: list = []

    monkeypatch.setattr(gpu_pitr, "restore", compiling_restore)
    assert cli.main(["restore", str(wal_dir), "--out", str(tmp_path / "o.npz"),
                     "--backend", "cpu"]) == 0
    assert "\rcompile " in stream.getvalue()
    first = capsys.readouterr().out.splitlines()[0]
    assert "s of it compiling, once: later runs load the cache)" in first
    # Where the cache could not be written (a full disk: jit warned), every run compiles.
    from gpu_pitr import jit

    monkeypatch.setattr(jit, "CACHE_ERRORS", [OSError(28, "No space left on device")])
    compiled.clear()
    assert cli.main(["restore", str(wal_dir), "--out", str(tmp_path / "o.npz"),
                     "--backend", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "s of it compiling, again on every run: the cache could not be used)" in first
    monkeypatch.setattr(gpu_pitr, "restore", restore)
    assert cli.main(["restore", str(wal_dir), "--out", str(tmp_path / "o.npz"),
                     "--backend", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "compiling" not in first and first.endswith(" s)")


def test_a_report_that_cannot_be_written_leaves_the_old_output(wal_dir: Path, tmp_path: Path,
                                                               monkeypatch, capsys) -> None:
    # The index was written first: exit 1 ("nothing was left in its place") with --out
    # already replaced. Now the index is written inside the report's write.
    import errno

    from gpu_pitr.cli import main

    out, report = tmp_path / "o.npz", tmp_path / "r.json"
    out.write_bytes(b"the old index")
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".r.json.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["restore", str(wal_dir), "--out", str(out), "--report-json", str(report),
                 "-q"]) == 1
    assert capsys.readouterr().err == (f"gpu-pitr: error: {report}: cannot write the JSON "
                                       "file: No space left on device; nothing was left in "
                                       "its place\n")
    assert out.read_bytes() == b"the old index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]
    monkeypatch.undo()
    assert main(["restore", str(wal_dir), "--out", str(out), "--report-json", str(report),
                 "-q"]) == 0
    with np.load(out, allow_pickle=False) as npz:
        assert json.loads(report.read_text()) == json.loads(str(npz["report"]))


def test_a_killed_writers_temp_goes_before_the_write_not_only_after(tmp_path: Path) -> None:
    # On a full disk the temp a killed run left holds the room the retry needs.
    from gpu_pitr.outputs import atomic_files

    dest = tmp_path / "o.npz"
    dead = tmp_path / ".o.npz.tmp-999999999-0123abcd"  # no such pid
    dead.write_bytes(b"x" * 100)
    with atomic_files(dest) as (tmp,):
        assert not dead.exists()
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"


def test_the_api_takes_a_memory_budget_as_the_command_line_does(wal_dir: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    seen = _chunks_read(monkeypatch)
    # A segment of 3+ MiB: the default chunk is cut to it, the budget's is 1 MiB.
    from gpu_pitr.synth import write_synthetic_wal

    big = tmp_path / "big"
    write_synthetic_wal(big, total_bytes=3 << 20, dim=8, segments=1, seed=4)
    want = gpu_pitr.restore(big, backend="cpu")
    for budget in ("40M", 40 << 20, np.int64(40 << 20)):
        got = gpu_pitr.restore(big, backend="cpu", memory_budget=budget)
        assert got.id_list() == want.id_list()
        assert got.vectors.tobytes() == want.vectors.tobytes()
    size = max(p.stat().st_size for p in big.glob("wal-*.log"))
    assert seen[0] == -(-size // (1 << 20)) << 20 >= 3 << 20  # whole MiB
    assert seen[1:] == [chunk_bytes_for_budget(40 << 20)] * 3 == [1 << 20] * 3
    for bad in (True, -5, 0):
        with pytest.raises(ValueError, match="memory_budget"):
            gpu_pitr.restore(wal_dir, backend="cpu", memory_budget=bad)
    with pytest.raises(ValueError, match="too small"):
        gpu_pitr.restore(wal_dir, backend="cpu", memory_budget="8M")
    with pytest.raises(ValueError, match="at most one of chunk_bytes and memory_budget"):
        gpu_pitr.restore(wal_dir, backend="cpu", memory_budget="1G", chunk_bytes=1 << 20)
    with pytest.raises(ValueError, match="not a size"):
        gpu_pitr.restore(wal_dir, backend="cpu", memory_budget="lots")


@pytest.mark.parametrize("columns", [10, 20, 21])
def test_bar_fits_a_narrow_terminal(columns: int) -> None:
    """Each redraw fits the terminal's width, however narrow: a line that wraps leaves
    its first rows behind at every ``\\r`` (a 20-column terminal got 80-column lines)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with open(slave, "w", closefd=False) as tty:
            clock = Clock()
            bar = ProgressBar(tty, clock=clock)
            bar("read", 0, 400_000_000, 0)
            clock.now += 2.0
            bar("read", 100_000_000, 400_000_000, 12345)
            bar.phase("write")
            bar.close()
        os.close(slave)
        slave = -1
        drawn = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            drawn += data
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    lines = drawn.decode().split("\r")
    assert len(lines) >= 4
    assert all(len(line) < columns for line in lines), lines


def _long_transaction(wal_dir: Path, commit_early: bool):
    """36 MiB of 4 KiB-vector inserts inside one transaction (or inside many short ones,
    with ``commit_early``), committed at the end."""
    b = LogBuilder()
    vec = np.arange(1024, dtype=np.float32).tobytes()
    b.add(Ins("before", vec, None, 1))
    tx = 7
    b.add(Begin(tx, 2))
    first = None
    for i in range(9_000):
        if commit_early and i % 100 == 99:
            b.add(Commit(tx, 2))
            tx += 1
            b.add(Begin(tx, 2))
        rec = b.add(Ins(f"v{i}", vec, None, 2))
        first = first or rec
    b.add(Commit(tx, 3))
    b.write(wal_dir)
    return wal_dir, first


def test_a_budget_open_transactions_exceed_is_warned_of(tmp_path: Path) -> None:
    """Records of an open transaction wait in memory for its end (SPEC section 3), outside
    the budget: a restore given a budget says so when they alone exceeded it."""
    wal, first = _long_transaction(tmp_path / "one", commit_early=False)
    got = gpu_pitr.restore(wal, backend="cpu", memory_budget="34M")
    assert len(got) == 9_001
    (warning,) = got.report.warnings
    assert "more than the memory budget of 34.0 MiB" in warning
    # the transaction's first record (data records are held; its Begin is not)
    assert f"(the first from {first.file} offset {first.offset}, seq {first.seq})" in warning
    # no budget given, or short transactions: nothing to say
    assert not gpu_pitr.restore(wal, backend="cpu").report.warnings
    short, _ = _long_transaction(tmp_path / "short", commit_early=True)
    assert not gpu_pitr.restore(short, backend="cpu", memory_budget="34M").report.warnings
    proc = cli("restore", wal, "--out", tmp_path / "o.npz", "--memory-budget", "34M",
               "--backend", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "records of open transactions, with those read behind them" in proc.stderr
    assert "more than the memory budget of 34.0 MiB" in proc.stderr
