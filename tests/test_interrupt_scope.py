"""scripts/interrupt_scope.py, run small so CI keeps it: restores stopped at random
moments, each ending as promised (0 and nothing said, or 128 + N and the one line; the
previous output kept or the complete new one; no temp file left). The runs that found
what gpu_pitr/interrupts.py handles now were some 1,000 (the script's docstring). The
other commands (``--command``: snapshot, archive, expire, a .parquet, ...) a few runs
each, and each one's check shown to fail on what a stopped run must not leave."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "interrupt_scope.py"
_spec = importlib.util.spec_from_file_location("interrupt_scope", _SCRIPT)
interrupt_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interrupt_scope)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_restores_stopped_at_random_moments_end_as_promised(capsys, sig):
    assert interrupt_scope.main(["--runs", "3", "--mib", "8", "--signal", sig,
                                 "--seed", "7"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("outcome"):].splitlines()
    counts = {line.rsplit(None, 1)[0]: int(line.rsplit(None, 1)[1]) for line in table[1:]}
    assert counts.pop("not as promised") == 0
    assert sum(counts.values()) == 3 and set(counts) <= {"finished", "stopped"}, out


# The other commands (``--command``): what each must leave, checked after each run.
# Small: a 4 MiB log, two runs each (the campaign: some 100 a command, docs/damage.md).
@pytest.mark.parametrize(("command", "sig"), [
    ("archive", "SIGINT"), ("expire", "SIGTERM"), ("snapshot", "SIGINT"),
    ("restore-parquet", "SIGTERM")])
def test_other_commands_stopped_at_random_moments_end_as_promised(capsys, command, sig):
    assert interrupt_scope.main(["--command", command, "--runs", "2", "--mib", "4",
                                 "--signal", sig, "--seed", "7"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("outcome"):].splitlines()
    counts = {line.rsplit(None, 1)[0]: int(line.rsplit(None, 1)[1]) for line in table[1:]}
    assert counts.pop("not as promised") == 0
    assert sum(counts.values()) == 2 and set(counts) <= {"finished", "stopped"}, out


def test_the_checks_find_what_a_stop_must_not_leave(tmp_path):
    """Each command's check fails on the states a stopped run must never leave: a cut
    copy or a temp file in the archive, a hole in the expired archive, a snapshot's
    temp directory, a changed directory after verify."""
    (tmp_path / "a").mkdir()
    archive = interrupt_scope.Archive(tmp_path / "a", 1)
    archive.prepare(1)
    name = sorted(archive.sources)[1]
    (archive.out / name).write_bytes(archive.sources[name][:-1])
    assert "not their segment" in archive.check(stopped=True)
    archive.prepare(1)
    (archive.out / f".{name}.tmp-1-ab").write_bytes(b"")
    assert "left in the archive" in archive.check(stopped=True)
    archive.prepare(0)
    archive.out.mkdir()
    (archive.out / interrupt_scope.LOCK).write_bytes(b"")
    assert "no copy" in archive.check(stopped=True)

    (tmp_path / "e").mkdir()
    expire = interrupt_scope.Expire(tmp_path / "e", 1)
    expire.prepare(0)
    (expire.arch / sorted(expire.sources)[1]).unlink()  # a hole: the first is still there
    assert "segments deleted" in expire.check(stopped=True)
    expire.prepare(0)
    (expire.snaps / "s1").rename(expire.snaps / ".s1.expired-1-ab")
    assert "left in the snapshots' directory" in expire.check(stopped=True)

    (tmp_path / "s").mkdir()
    snap = interrupt_scope.Snapshot(tmp_path / "s", 1)
    snap.prepare(0)
    (snap.out.parent / f".{snap.out.name}.tmp-1-ab").mkdir()
    assert "temp directories left" in snap.check(stopped=True)
    (snap.out / "manifest.json").write_bytes(b"{}")
    assert "does not load" in snap.check(stopped=True)

    (tmp_path / "v").mkdir()
    verify = interrupt_scope.Verify(tmp_path / "v", 1)
    verify.prepare(0)
    (verify.tmp / "OUT").write_bytes(b"")
    assert "changed" in verify.check(stopped=True)
