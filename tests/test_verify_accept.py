"""``gpu-pitr verify --accept``: a torn tail an operator reviewed after a crash is a notice.

A torn tail stays damage by default (a crash that lost records acknowledged but not
synced leaves the same bytes as one that lost only the record it cut). The logs here are
the project's ``WalWriter``'s, cut inside their last record as a crash leaves them, then
archived by ``gpu-pitr archive`` as the runbook does: ``verify ARCHIVE_DIR`` exits 1 until
the torn tail is acknowledged with the ``--accept`` its hint line gives, and only that
torn tail: another offset, a tail that grew, a second crash's tear stay damage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from workloads import dir_state

from gpu_pitr import cli
from gpu_pitr.format.entries import Insert
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.verify import Accept, verify_wal

T0 = 1_795_687_200  # 2026-11-26T10:00:00Z, as the demo log (docs/recovery.md)
FIRST = f"wal-{T0:016x}.log"
SECOND = f"wal-{T0 + 100:016x}.log"
CUT = 7  # bytes of the last record the crash kept from the disk: it lost the rest


def _append(wal: WalWriter, ids: range) -> None:
    for k in ids:
        wal.append(Insert(f"v{k}", np.array([k, 1, 2], np.float32), None, T0 + k))


def crashed_wal(wal_dir: Path, *, next_seq: int = 4) -> tuple[int, int]:
    """A writer's segment of 5 records cut by a crash inside its last one, then the
    writer back in a new segment from ``next_seq`` (4: where the disk ended, as a writer
    that recovered goes on). Returns the torn record's offset and the bytes it kept."""
    wal = WalWriter(wal_dir, created=T0)
    _append(wal, range(4))
    wal.flush()
    seg = wal_dir / FIRST
    start = seg.stat().st_size  # where the last record starts
    _append(wal, range(4, 5))
    wal.close()
    whole = seg.stat().st_size
    os.truncate(seg, start + CUT)  # the crash
    assert start + CUT < whole
    wal = WalWriter(wal_dir, created=T0 + 100, next_seq=next_seq)
    _append(wal, range(100, 102))
    wal.close()
    return start, CUT


def archived(tmp_path: Path, **kw) -> tuple[Path, Path, str]:
    """The crashed log and its archive (``gpu-pitr archive``); the torn tail's
    ``--accept`` argument."""
    wal = tmp_path / "wal"
    offset, lost = crashed_wal(wal, **kw)
    arc = tmp_path / "arch"
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 0
    return wal, arc, f"{FIRST}:{offset}:{lost}"


def verify(capsys, *args) -> tuple[int, list[str], str]:
    status = cli.main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_the_hint_names_the_accept_and_giving_it_makes_the_torn_tail_a_notice(tmp_path,
                                                                              capsys):
    wal, arc, ack = archived(tmp_path)
    offset = int(ack.split(":")[1])
    before = dir_state(tmp_path)
    status, lines, err = verify(capsys, arc)
    assert (status, err) == (1, "")
    torn = (f"{FIRST}: offset {offset}: damage: torn_tail: the file ends inside a record: "
            f"{CUT} bytes lost (a restore stops reading this file here)")
    assert lines[:2] == [
        torn, f'hint: once reviewed (docs/recovery.md, "After a crash: a torn tail"), '
              f"verify with --accept {ack} to count this torn tail as a notice"]
    assert lines[2].startswith(f"{arc}: DAMAGED: 1 damage, 0 notices; 2 segments")
    assert len(lines) == 3

    status, lines, err = verify(capsys, arc, "--accept", ack)
    assert (status, err) == (0, "")
    assert lines[0] == (torn.replace("damage: torn_tail", "notice: torn_tail")
                        + f"; accepted as reviewed (--accept {ack})")
    assert lines[1].startswith(f"{arc}: clean: 0 damage, 1 notice (1 torn tail accepted); "
                               "2 segments")
    assert len(lines) == 2
    # The same log, given as the WAL directory: the same.
    assert verify(capsys, wal, "--accept", ack)[0] == 0
    assert dir_state(tmp_path) == before  # the log, the archive: as they were


@pytest.mark.parametrize("wrong", ["offset", "bytes", "file"])
def test_an_accept_that_matches_no_torn_tail_accepts_nothing_and_is_warned_of(tmp_path, capsys,
                                                                               wrong):
    _, arc, ack = archived(tmp_path)
    file, offset, lost = ack.split(":")
    given = {"offset": f"{file}:{int(offset) - 12}:{lost}",
             "bytes": f"{file}:{offset}:{int(lost) + 1}",
             "file": f"{SECOND}:{offset}:{lost}"}[wrong]
    status, lines, err = verify(capsys, arc, "--accept", given)
    assert status == 1
    assert lines[0].startswith(f"{FIRST}: offset {offset}: damage: torn_tail: ")
    assert lines[1].endswith(f"--accept {ack} to count this torn tail as a notice")
    assert lines[2].endswith("; 1 acknowledgement matches no torn tail")
    why = {"offset": f"its torn tail is at offset {offset} ({lost} bytes lost), not at offset "
                     f"{int(offset) - 12}",
           "bytes": f"the torn tail at offset {offset} has {lost} bytes lost now, not "
                    f"{int(lost) + 1}: the file changed since it was reviewed (review it "
                    "again), or the number is mistyped",
           "file": f"{SECOND} has no torn tail"}[wrong]
    assert err == (f"gpu-pitr: warning: argument --accept: {given} matches no torn tail: "
                   f"{why}\n")


def test_a_tail_that_grew_since_it_was_accepted_is_damage_again(tmp_path, capsys):
    """The same record cut, more of its bytes there now (a copy that grew): not what
    was reviewed."""
    wal = tmp_path / "wal"
    offset, lost = crashed_wal(wal)
    ack = f"{FIRST}:{offset}:{lost}"
    assert verify(capsys, wal, "--accept", ack)[0] == 0
    with open(wal / FIRST, "ab") as f:
        f.write(b"\x01\x02\x03")
    status, lines, err = verify(capsys, wal, "--accept", ack)
    assert status == 1
    assert lines[0].startswith(f"{FIRST}: offset {offset}: damage: torn_tail: the file ends "
                               f"inside a record: {lost + 3} bytes lost")
    assert lines[1].endswith(f"--accept {FIRST}:{offset}:{lost + 3} to count this torn tail "
                             "as a notice")
    assert f"has {lost + 3} bytes lost now, not {lost}: the file changed" in err


def test_a_second_crash_is_damage_beside_the_accepted_first(tmp_path, capsys):
    wal, arc, ack = archived(tmp_path)
    assert verify(capsys, arc, "--accept", ack)[0] == 0  # reviewed: the daily check passes
    # Days later the writer crashes again, inside the last record of a newer segment,
    # and comes back in another; the archive copies both.
    third = f"wal-{T0 + 200:016x}.log"
    wal_writer = WalWriter(wal, created=T0 + 200, next_seq=6)
    _append(wal_writer, range(200, 203))
    wal_writer.close()
    os.truncate(wal / third, (wal / third).stat().st_size - 5)
    wal_writer = WalWriter(wal, created=T0 + 300, next_seq=8)
    _append(wal_writer, range(300, 301))
    wal_writer.close()
    assert cli.main(["archive", str(wal), "--out", str(arc), "-q"]) == 0
    capsys.readouterr()
    status, lines, err = verify(capsys, arc, "--accept", ack)
    assert (status, err) == (1, "")
    assert [line.split(": ")[:4] for line in lines[:2]] == [
        [FIRST, f"offset {ack.split(':')[1]}", "notice", "torn_tail"],
        [third, lines[1].split(": ")[1], "damage", "torn_tail"]]
    assert len(lines) == 4 and lines[2].startswith("hint: ")
    second = [p for p in verify_wal(arc).problems if p.file == third][0].acknowledgement
    assert second.startswith(f"{third}:") and f"--accept {second} " in lines[2]
    assert lines[-1].startswith(f"{arc}: DAMAGED: 1 damage, 1 notice (1 torn tail accepted)")
    status, lines, err = verify(capsys, arc, "--accept", ack, "--accept", second)
    assert (status, err) == (0, "")
    assert "clean: 0 damage, 2 notices (2 torn tails accepted)" in lines[-1]


def test_accepting_the_torn_tail_does_not_accept_records_lost_after_it(tmp_path, capsys):
    """A writer that went on numbering past what the disk kept (records acknowledged but
    not synced, lost in the crash): the seq gap at its next record stays damage."""
    _, arc, ack = archived(tmp_path, next_seq=9)
    status, lines, _ = verify(capsys, arc, "--accept", ack)
    assert status == 1
    assert [re.search(r": (damage|notice): (\w+): ", line).groups() for line in lines[:-1]] \
        == [("notice", "torn_tail"), ("damage", "seq_gap")]


def test_json_says_which_torn_tails_were_accepted_and_which_accepts_matched_none(tmp_path):
    _, arc, ack = archived(tmp_path)
    stale = f"wal-{T0 - 100:016x}.log:16:3"  # a segment not there
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "verify", str(arc), "--json",
                           "--accept", ack, "--accept", stale, "--accept", ack],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["clean"], doc["damage"], doc["notices"], doc["accepted"]) == (True, 0, 1, 1)
    (torn,) = doc["problems"]
    file, offset, lost = ack.split(":")
    assert torn == {
        "severity": "notice", "kind": "torn_tail", "file": file, "offset": int(offset),
        "seq": None, "bytes": int(lost), "accepted": True, "accept": ack,
        "what": f"the file ends inside a record: {lost} bytes lost (a restore stops "
                "reading this file here)"}
    why = f"{arc} has no {stale.split(':')[0]} (deleted, or a mistyped name)"
    assert doc["unmatched_accepts"] == [
        {"accept": stale, "from": "argument --accept", "what": why}]
    assert proc.stderr == f"gpu-pitr: warning: argument --accept: {stale} matches no torn " \
        f"tail: {why}\n"
    # Not accepted: no "accepted" key, and the argument that would accept it.
    doc = json.loads(subprocess.run([sys.executable, "-m", "gpu_pitr", "verify", str(arc),
                                     "--json"], capture_output=True, text=True,
                                    timeout=120).stdout)
    assert (doc["accepted"], doc["unmatched_accepts"]) == (0, [])
    assert "accepted" not in doc["problems"][0] and doc["problems"][0]["accept"] == ack
    assert doc["problems"][0]["severity"] == "damage"


def test_an_accept_file_for_cron(tmp_path, capsys):
    _, arc, ack = archived(tmp_path)
    accepts = tmp_path / "arch.accepted"
    accepts.write_text(f"# reviewed torn tails of /backup/arch\n\n  {ack}   # ops, INC-42\n")
    assert verify(capsys, arc, "--accept-file", accepts)[0] == 0
    accepts.write_text(f"{ack}\n{FIRST}:16\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", str(arc), "--accept-file", str(accepts)])
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"gpu-pitr verify: error: argument --accept-file: {accepts}: line 2: "
                   f"'{FIRST}:16' is not FILE:OFFSET:BYTES (the segment's name, the torn "
                   "tail's offset and the bytes lost, as verify's hint line gives them)")
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", str(arc), "--accept-file", str(tmp_path / "missing")])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"gpu-pitr verify: error: argument --accept-file: {tmp_path / 'missing'}: "
        "No such file or directory")
    # A stale line: a warning naming the file and line.
    accepts.write_text(f"{ack}\n{FIRST}:16:3\n")
    status, _, err = verify(capsys, arc, "--accept-file", accepts)
    assert status == 0
    assert err.startswith(f"gpu-pitr: warning: {accepts}: line 2: {FIRST}:16:3 matches no "
                          "torn tail: its torn tail is at offset ")


@pytest.mark.parametrize("given, words", [
    (f"{FIRST}:16", "is not FILE:OFFSET:BYTES"),
    (f"wal/{FIRST}:16:3", "is not a segment's name (wal-<16 hex digits>.log, without a "
                          "directory, as verify prints it)"),
    (f"{FIRST}:-1:3", "is not FILE:OFFSET:BYTES"),
    (f"{FIRST.upper()}:16:3", "is not a segment's name"),
])
def test_an_accept_that_is_not_one_is_a_usage_error(tmp_path, capsys, given, words):
    _, arc, _ = archived(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", str(arc), "--accept", given])
    assert done.value.code == 2
    assert words in capsys.readouterr().err
    with pytest.raises(ValueError, match="FILE:OFFSET:BYTES|segment's name"):
        Accept.parse(given)


def test_accept_of_a_snapshot_directory_is_a_usage_error(tmp_path, capsys):
    _, arc, ack = archived(tmp_path)
    snap = tmp_path / "snap"
    assert cli.main(["snapshot", str(arc), "--out", str(snap), "--latest", "-q"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", str(snap), "--accept", ack])
    assert done.value.code == 2
    assert "names torn tails of a WAL directory" in capsys.readouterr().err


def test_the_python_api_takes_the_same_acknowledgements(tmp_path):
    wal = tmp_path / "wal"
    offset, lost = crashed_wal(wal)
    result = verify_wal(wal, accept=[f"{FIRST}:{offset}:{lost}"])
    assert (result.clean, result.accepted, result.unmatched) == (True, 1, [])
    (torn,) = result.problems
    assert (torn.kind, torn.severity, torn.extra["accepted"]) == ("torn_tail", "notice", True)
    result = verify_wal(wal, accept=[Accept(FIRST, offset + 1, lost)])
    assert (result.clean, result.accepted, len(result.unmatched)) == (False, 0, 1)
    assert result.problems[0].severity == "damage" and result.problems[0].hint() is not None


def test_once_expire_deleted_the_segment_the_acknowledgement_is_a_warning_to_remove(tmp_path,
                                                                                    capsys):
    """The runbook's daily job: expire, then verify with the acknowledgements. Once expire
    has deleted the torn segment its line is no longer needed: said on stderr, exit 0
    (nothing in the log is damaged); a segment gone from the archive otherwise is not
    called expired."""
    _, arc, ack = archived(tmp_path)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    assert cli.main(["snapshot", str(arc), "--snapshots", str(snaps), "--out",
                     str(snaps / "s1"), "--latest", "-q"]) == 0
    assert cli.main(["expire", str(arc), "--snapshots", str(snaps), "--keep", "1", "-q"]) == 0
    assert not (arc / FIRST).exists()
    capsys.readouterr()
    status, lines, err = verify(capsys, arc, "--accept", ack)
    assert status == 0
    assert lines[-1].startswith(f"{arc}: clean: 0 damage, 2 notices; ")
    assert "; 1 acknowledgement matches no torn tail; " in lines[-1]
    assert err == (f"gpu-pitr: warning: argument --accept: {ack} matches no torn tail: "
                   f"gpu-pitr expire deleted {FIRST}: this acknowledgement is no longer "
                   "needed\n")


def test_a_segment_gone_from_the_archive_is_not_called_expired(tmp_path, capsys):
    _, arc, ack = archived(tmp_path)
    (arc / FIRST).unlink()
    status, _, err = verify(capsys, arc, "--accept", ack)
    assert status == 1  # archive_missing
    assert err.endswith(f"matches no torn tail: {FIRST} is gone from the archive, not deleted "
                        "by gpu-pitr expire (archive_missing)\n")


def test_restores_and_snapshots_take_the_same_acknowledgements(tmp_path, capsys):
    """The nightly snapshot of the archive warned of the reviewed torn tail on every
    run (the runbook alerts on anything on stderr): given the same --accept or
    --accept-file as verify, a restore does not warn of that tail again; the report
    still lists it, and a tail that does not match is warned of as before."""
    _, arc, accept = archived(tmp_path)
    ack = tmp_path / "arch.accepted"
    ack.write_text(f"# reviewed after the crash\n{accept}\n")
    torn = f"{arc / FIRST}: offset {accept.split(':')[1]}: torn tail, {CUT} bytes lost"
    for cmd, out in (("restore", "o.npz"), ("snapshot", "snap")):
        base = [cmd, str(arc), "--out", str(tmp_path / out), "-q", "--report-json",
                str(tmp_path / f"{out}.json")]
        assert cli.main(base) == 0
        assert capsys.readouterr().err == f"gpu-pitr: warning: {torn}\n"
        for given in (["--accept", accept], ["--accept-file", str(ack)]):
            assert cli.main(base + given) == 0
            assert capsys.readouterr().err == ""
            (tail,) = json.loads((tmp_path / f"{out}.json").read_text())["torn_tails"]
            assert (tail["offset"], tail["bytes_lost"]) == (int(accept.split(":")[1]), CUT)
        # Another offset or byte count is not the tail reviewed: warned of.
        other = accept.rsplit(":", 1)[0] + f":{CUT + 1}"
        assert cli.main(base + ["--accept", other]) == 0
        assert capsys.readouterr().err == f"gpu-pitr: warning: {torn}\n"
    with pytest.raises(SystemExit) as done:
        cli.main(["restore", str(arc), "--out", str(tmp_path / "x.npz"), "--accept", "x:1"])
    assert done.value.code == 2
    assert "argument --accept: 'x:1' is not FILE:OFFSET:BYTES" in capsys.readouterr().err


def test_quiet_verify_prints_only_when_there_is_damage(tmp_path, capsys):
    """``verify -q`` for cron (output means trouble): nothing printed when no damage is
    found (the accepted tail is a notice), everything as without it when there is some;
    the exit status is the same either way; snapshots alike."""
    wal, arc, accept = archived(tmp_path)
    def timeless(result):  # (the seconds a run took differ)
        status, out, err = result
        return status, [re.sub(r"\([0-9.]+ s\)", "", line) for line in out], err

    loud = timeless(verify(capsys, arc))
    assert timeless(verify(capsys, arc, "-q")) == loud and loud[0] == 1 and len(loud[1]) == 3
    plain, quiet = (json.loads("\n".join(verify(capsys, arc, "--json", *q)[1]))
                    for q in ((), ("-q",)))
    assert {**plain, "seconds": 0} == {**quiet, "seconds": 0} and not quiet["clean"]
    assert verify(capsys, arc, "--accept", accept, "-q") == (0, [], "")
    assert verify(capsys, arc, "--accept", accept)[1]  # (without -q: the notice, summary)
    # A stale acknowledgement still warns on stderr (something to clean up).
    stale = accept.rsplit(":", 1)[0] + f":{CUT + 1}"
    status, out, err = verify(capsys, arc, "--accept", accept, "--accept", stale, "-q")
    assert (status, out) == (0, []) and "matches no torn tail" in err
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    assert cli.main(["snapshot", str(arc), "--out", str(snaps / "s"), "-q",
                     "--accept", accept]) == 0
    capsys.readouterr()
    assert verify(capsys, snaps, "-q") == (0, [], "")
    (snaps / "s" / "vectors.f32").write_bytes(b"\0" * 12)
    status, out, _ = verify(capsys, snaps, "-q")
    assert status == 1 and out and "DAMAGED" in out[-1]
