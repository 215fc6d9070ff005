"""A log a writer is still appending to: a torn tail that was a write in progress.

Every command reads each segment up to the size it had when the directory was listed,
so on a live log the newest segment can end inside a record that the writer finishes a
moment later. Such a tail is named for what it is once the file has grown and the
record is whole there: a ``write_in_progress`` notice in ``verify`` (exit 0, not
damage), a note on inspect's torn tail, and a restore warning. A tail whose file has not
grown, or has grown with the record still cut, stays a ``torn_tail`` (damage): a crash
and a stalled writer look the same.

The writer's "moment later" is made exact: the listing is made to say the file was
shorter than it is, which is what a listing taken before the writer's last bytes says.
One test runs a real writer process beside ``verify``: what it may find there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workloads import Ins, LogBuilder, encode_header, listed_at, listed_gone

import gpu_pitr.format.statwalk as statwalk
import gpu_pitr.pipeline as pipeline
import gpu_pitr.verify as verify
from gpu_pitr import cli
from gpu_pitr.errors import WalError
from gpu_pitr.format.stats import stats_lines, wal_stats
from gpu_pitr.verify import NOTICE, verify_wal

SEG2 = 0x6000000


def _log(tmp_path: Path):
    """Two segments; the second's last record is the one a writer is still writing."""
    b = LogBuilder()
    b.add(Ins("a", [1.0, 2.0], None, 10))
    b.new_segment(SEG2)
    b.add(Ins("b", [3.0, 4.0], {"k": "v"}, 11))
    last = b.add(Ins("c", [5.0, 6.0], None, 12))
    return Path(b.write(tmp_path / "wal")), last


@pytest.mark.parametrize("cut", [3, 12, 20])  # inside the record header; in the payload
def test_verify_names_a_write_in_progress_a_notice(tmp_path, monkeypatch, cut):
    wal, last = _log(tmp_path)
    listed_at(monkeypatch, verify, last.file, last.offset + cut)
    result = verify_wal(wal)
    assert [(p.kind, p.file, p.offset, p.severity) for p in result.problems] == [
        ("write_in_progress", last.file, last.offset, NOTICE)]
    problem = result.problems[0]
    size = (wal / last.file).stat().st_size
    assert problem.extra == {"bytes": cut, "size_now": size}
    assert f"has grown to {size} bytes" in problem.what and result.clean
    # The same log, listed whole: nothing to say.
    monkeypatch.undo()
    assert verify_wal(wal).problems == []


def test_a_second_header_being_written_is_a_write_in_progress(tmp_path, monkeypatch):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 10))
    at = b.raw(encode_header(0x5F5E100))  # a writer reopened within the same second
    b.add(Ins("b", [2.0], None, 11), seq=0)
    wal = Path(b.write(tmp_path / "wal"))
    name = next(wal.iterdir()).name
    listed_at(monkeypatch, verify, name, at + 9)  # magic, version, a byte of the time
    assert [(p.kind, p.offset) for p in verify_wal(wal).problems] == [
        ("write_in_progress", at)]


def test_a_tail_that_did_not_grow_or_is_still_cut_stays_damage(tmp_path, monkeypatch):
    wal, last = _log(tmp_path)
    path = wal / last.file
    whole = path.read_bytes()
    # Not grown: a crash, or a writer stalled mid-record.
    path.write_bytes(whole[:last.offset + 20])
    assert [(p.kind, p.severity) for p in verify_wal(wal).problems] == [("torn_tail", "damage")]
    # Grown, but the record is still cut where it is now.
    path.write_bytes(whole[:last.end - 1])
    listed_at(monkeypatch, verify, last.file, last.offset + 20)
    result = verify_wal(wal)
    assert [(p.kind, p.extra) for p in result.problems] == [("torn_tail", {"bytes": 20})]
    assert not result.clean


def test_verify_cli_exits_0_on_a_write_in_progress(tmp_path, monkeypatch, capsys):
    wal, last = _log(tmp_path)
    listed_at(monkeypatch, verify, last.file, last.offset + 20)
    assert cli.main(["verify", str(wal)]) == 0
    out = capsys.readouterr().out
    assert f"{last.file}: offset {last.offset}: notice: write_in_progress:" in out
    assert "clean: 0 damage, 1 notice" in out
    assert cli.main(["verify", str(wal), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["severity"], p["size_now"]) for p in doc["problems"]] == [
        ("write_in_progress", NOTICE, (wal / last.file).stat().st_size)]


def test_inspect_says_the_torn_tail_was_a_write_in_progress(tmp_path, monkeypatch):
    wal, last = _log(tmp_path)
    listed_at(monkeypatch, statwalk, last.file, last.offset + 20)
    stats = wal_stats(wal)
    size = (wal / last.file).stat().st_size
    assert stats["damage"] == [{
        "kind": "torn_tail", "file": last.file, "offset": last.offset, "seq": None,
        "bytes": 20, "size_now": size,
        "what": f"a write in progress: the file has grown to {size} bytes since it was "
                "read, where the record is whole"}]
    assert (f"  {last.file}: offset {last.offset}: torn tail, 20 bytes lost (a write in "
            f"progress: the file has grown to {size} bytes since it was read, where the "
            "record is whole)") in stats_lines(stats)


def test_inspect_records_says_the_torn_tail_was_a_write_in_progress(tmp_path, monkeypatch):
    import gpu_pitr.format.dump as dump

    wal, last = _log(tmp_path)
    listed_at(monkeypatch, dump, last.file, last.offset + 20)
    size = (wal / last.file).stat().st_size
    docs = list(dump.wal_records(wal))
    assert docs[-1] == {
        "file": last.file, "offset": last.offset, "seq": None, "damage": "torn_tail",
        "bytes": 20, "size_now": size,
        "what": f"a write in progress: the file has grown to {size} bytes since it was "
                "read, where the record is whole"}
    assert dump.record_lines(docs[-1]) == [
        f"{last.file}: offset {last.offset}: torn tail, 20 bytes lost (a write in progress: "
        f"the file has grown to {size} bytes since it was read, where the record is whole)"]
    assert [d.get("damage") for d in docs] == [None, None, "torn_tail"]


def test_restore_says_the_torn_tail_was_a_write_in_progress(tmp_path, monkeypatch, capsys):
    wal, last = _log(tmp_path)
    listed_at(monkeypatch, pipeline, last.file, last.offset + 20)
    index = pipeline.restore(wal, backend="cpu")
    assert sorted(index.ids) == ["a", "b"]  # the log as far as it was read
    size = (wal / last.file).stat().st_size
    assert [(Path(t["file"]).name, t["offset"], t["bytes_lost"], t["size_now"])
            for t in index.report.torn_tails] == [(last.file, last.offset, 20, size)]
    assert index.report.warnings == []
    assert cli.main(["restore", str(wal), "--out", str(tmp_path / "o.npz"), "-q"]) == 0
    assert capsys.readouterr().err == (
        f"gpu-pitr: warning: {wal / last.file}: offset {last.offset}: torn tail, 20 bytes "
        f"lost (a write in progress: the file has grown to {size} bytes since it was read, "
        "where the record is whole: a writer is appending to it, and this restore has the "
        "log up to the bytes it read)\n")
    # A torn tail of a file that did not grow: as it was.
    monkeypatch.undo()
    path = wal / last.file
    path.write_bytes(path.read_bytes()[:last.offset + 20])
    assert "size_now" not in pipeline.restore(wal, backend="cpu").report.torn_tails[0]
    assert cli.main(["restore", str(wal), "--out", str(tmp_path / "o.npz"), "-q"]) == 0
    assert capsys.readouterr().err == (
        f"gpu-pitr: warning: {wal / last.file}: offset {last.offset}: torn tail, 20 bytes "
        "lost\n")


WRITER = """
import sys, time
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.format.entries import Insert
w = WalWriter(sys.argv[1], buffer_size=1000)
stop = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < stop:
    w.append(Insert(f"v{i % 500}", [float(i)] * 64, None, 1_800_000_000 + i // 1000))
    i += 1
    if i % 100 == 0:
        time.sleep(0.0005)
w.close()
"""


def test_verify_beside_a_real_writer_finds_only_writes_in_progress(tmp_path):
    """A writer process appends (a 1000-byte buffer: records of 290 bytes reach the file
    in pieces) while verify runs again and again. Nothing but the tail being written (or
    a file just made, its header still in the writer's buffer: a notice) is ever
    found, and each such tail, once the writer is done, is where a record starts.
    Whether verify saw the rest arrive (``write_in_progress``) or not (``torn_tail``, a
    writer held up longer than verify took) depends on the scheduler, so both pass here;
    the tests above fix which is which."""
    from gpu_pitr.format.reader import scan_segment

    wal = tmp_path / "wal"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(wal), "6"])
    tails = set()
    try:
        deadline = time.monotonic() + 60
        while not any(wal.glob("wal-*.log")) and time.monotonic() < deadline:
            time.sleep(0.01)
        runs = 0
        while writer.poll() is None or not runs:
            result = verify_wal(wal)
            runs += 1
            for p in result.problems:
                if p.kind == "torn_header":  # the file just made, its header still buffered
                    assert (p.offset, p.severity) == (0, "notice"), p.line()
                    continue
                assert p.kind in ("write_in_progress", "torn_tail"), p.line()
                tails.add((p.file, p.offset))
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0 and runs > 1
    assert verify_wal(wal).problems == []
    starts = {(path.name, r.offset) for path in wal.glob("wal-*.log")
              for r in scan_segment(path).records}
    assert tails <= starts


def test_entries_named_like_segments_that_are_not_files_are_named(tmp_path, capsys):
    """A directory, a FIFO and a link to a directory, each named like a segment: not
    read (SPEC section 1 reads files; a FIFO would block), and not passed over in
    silence: a warning from restore, a note from verify and inspect."""
    import os

    wal, _ = _log(tmp_path)
    (wal / "wal-00000000ffffff01.log").mkdir()
    os.mkfifo(wal / "wal-00000000ffffff02.log")
    (wal / "wal-00000000ffffff03.log").symlink_to(tmp_path)
    (wal / "wal-1.log").mkdir()  # not a segment name: nothing to say
    lines = [
        "wal-00000000ffffff01.log: named like a segment file, but a directory: not read",
        "wal-00000000ffffff02.log: named like a segment file, but a FIFO: not read",
        "wal-00000000ffffff03.log: named like a segment file, but a symbolic link to a "
        "directory: not read"]
    _said_by_restore_and_inspect(wal, lines, tmp_path, capsys)
    result = verify_wal(wal)  # notices: named, exit 0
    assert [p.line() for p in result.problems] == [
        line.replace(": named", ": offset 0: notice: not_a_file: named") for line in lines]
    assert result.clean and result.segments == 2
    assert cli.main(["verify", str(wal), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["file"]) for p in doc["problems"]] == [
        ("not_a_file", line.split(":")[0]) for line in lines]


def _said_by_restore_and_inspect(wal, lines, tmp_path, capsys):
    """The two segments of `_log` restored, `lines` the restore's warnings, the command
    line's warnings and inspect's notes."""
    index = pipeline.restore(wal, backend="cpu")
    assert sorted(index.ids) == ["a", "b", "c"] and index.report.warnings == lines
    assert index.report.segments == 2
    assert cli.main(["restore", str(wal), "--out", str(tmp_path / "o.npz"), "-q"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"gpu-pitr: warning: {x}" for x in lines]
    assert cli.main(["inspect", str(wal)]) == 0
    assert capsys.readouterr().err.splitlines() == [f"note: {x}" for x in lines]
    # --json prints what the text does: a script must not take a segment left unread
    # for one that is not there.
    assert cli.main(["inspect", str(wal), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f"{n['file']}: {n['what']}" for n in doc["not_read"]] == lines


def test_segment_names_in_another_case_are_named_not_read(tmp_path, capsys):
    """SPEC section 1's segment names are lower case, and other names are not read; but
    a segment whose name's case changed (a copy through a file system that folds case)
    holds log records a user expects restored: named, as a warning, note and notice."""
    import shutil

    wal, _ = _log(tmp_path)
    first = sorted(wal.glob("wal-*.log"))[0]
    shutil.copy(first, wal / first.name.upper())  # WAL-….LOG
    (wal / "wal-00000000FFFFFF04.log").write_bytes(first.read_bytes())  # upper-case hex
    (wal / "WAL-1.LOG").write_bytes(b"")  # not a segment name in any case: nothing said
    what = ("named like a segment file but for the case of its letters (segment names are "
            "lower case: wal-<16 hex digits>.log): not read")
    lines = [f"{name}: {what}" for name in sorted(
        [first.name.upper(), "wal-00000000FFFFFF04.log"], key=str.encode)]
    _said_by_restore_and_inspect(wal, lines, tmp_path, capsys)
    result = verify_wal(wal)
    assert [(p.kind, p.file, p.severity) for p in result.problems] == [
        ("segment_name_case", line.split(":")[0], "notice") for line in lines]
    assert result.clean and result.segments == 2


def test_a_segment_deleted_after_the_listing_is_a_notice_to_verify(tmp_path, monkeypatch,
                                                                    capsys):
    """The writer's retention deletes its oldest segments at a checkpoint, maybe while
    verify runs: what it lists and then cannot find was deleted, not damaged (the log
    after it then starts past seq 0, which verify already notes). A link to a missing
    file is still damage: that file was never there."""
    wal, _ = _log(tmp_path)
    gone = "wal-0000000000000001.log"
    listed_gone(monkeypatch, verify, gone)
    result = verify_wal(wal)
    assert [(p.kind, p.file, p.severity) for p in result.problems] == [
        ("deleted", gone, NOTICE)] and result.clean
    assert "the writer's retention" in result.problems[0].what
    assert cli.main(["verify", str(wal)]) == 0
    capsys.readouterr()
    # The restore cannot do without it: an error that says what happened.
    listed_gone(monkeypatch, pipeline, gone)
    with pytest.raises(WalError, match=f"{gone}: offset 0: cannot read the file: deleted "
                                       "after the directory was listed"):
        pipeline.restore(wal, backend="cpu")
    monkeypatch.undo()
    (wal / gone).symlink_to(tmp_path / "nowhere")
    assert [(p.kind, p.severity) for p in verify_wal(wal).problems] == [
        ("bad_header", "damage")]


def test_the_records_after_a_segment_deleted_while_verify_ran_are_no_gap(tmp_path,
                                                                         monkeypatch):
    """Retention deleted a segment after verify read the one before it: the seq of the
    next record cannot follow, and that is the deletion, already named (a notice), not
    records lost from inside the log. A segment missing before the listing is a gap."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 10))
    b.new_segment(SEG2)
    b.add(Ins("b", [2.0], None, 11))
    b.new_segment(SEG2 + 1)
    c = b.add(Ins("c", [3.0], None, 12))
    wal = Path(b.write(tmp_path / "wal"))
    middle = sorted(p.name for p in wal.iterdir())[1]
    (wal / middle).unlink()
    assert [(p.kind, p.file) for p in verify_wal(wal).problems] == [("seq_gap", c.file)]
    listed_gone(monkeypatch, verify, middle)
    result = verify_wal(wal)
    assert [(p.kind, p.file) for p in result.problems] == [("deleted", middle)]
    assert result.clean
