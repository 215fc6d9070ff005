"""The ``--json`` outputs as a contract for other programs: strict JSON (no NaN or
Infinity), one document (``inspect --records``: one per line, however the lines are
split), on stdout alone, u64 numbers exact, and every output written whatever the
bytes of the paths it names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli import cli, write_damaged_wal
from workloads import Begin, Ins, LogBuilder, bits, f32

U64_MAX = 2**64 - 1


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def odd_wal(tmp_path_factory) -> Path:
    """A healthy log of u64 extremes, NaN and infinite vectors, and the characters
    ``str.splitlines`` breaks at, in ids and metadata."""
    b = LogBuilder(created=2**63 + 5, first_seq=U64_MAX - 3)
    b.add(Ins("a\u2028b", bits(0x7FC00000, 0x7F800000), {"k\x85": "v\u2029"}, ts=U64_MAX))
    b.add(Ins("\x1c\x1d\x1e", f32(1, 2), {"\x0b": "\x0c"}, ts=U64_MAX - 1))
    b.add(Begin(U64_MAX, ts=U64_MAX))
    b.add(Ins("c", f32(1, 2), None, ts=0))
    return Path(b.write(tmp_path_factory.mktemp("odd") / "wal"))


def test_inspect_records_json_is_one_document_per_line_however_split(odd_wal):
    proc = cli("inspect", odd_wal, "--records", "--json", wal_dir=odd_wal)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()  # splits at U+2028, U+2029, U+0085 and \x1c-\x1e too
    assert len(lines) == 4 == len(proc.stdout.split("\n")) - 1
    docs = [strict(line) for line in lines]
    assert [d["entry"].get("id") for d in docs] == ["a\u2028b", "\x1c\x1d\x1e", None, "c"]
    assert docs[0]["entry"]["metadata"] == {"k\x85": "v\u2029"}
    assert [d["seq"] for d in docs] == [U64_MAX - 3, U64_MAX - 2, U64_MAX - 1, U64_MAX]
    assert docs[2]["entry"] == {"transaction_id": U64_MAX} and docs[0]["timestamp"] == U64_MAX
    assert docs[3]["transaction"] == U64_MAX
    # The text lines too: one a record.
    proc = cli("inspect", odd_wal, "--records", wal_dir=odd_wal)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 4


@pytest.mark.parametrize("command", [["inspect", "--json"], ["verify", "--json"]])
def test_json_documents_are_strict_with_exact_u64(odd_wal, tmp_path, command):
    for wal_dir in (odd_wal, tmp_path / "damaged"):
        if not wal_dir.exists():
            write_damaged_wal(wal_dir)
        proc = cli(command[0], wal_dir, *command[1:], wal_dir=wal_dir)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr
        doc = strict(proc.stdout)  # the whole of stdout: one document
        assert doc["wal_dir"] == str(wal_dir)
    assert json.dumps(doc)  # nothing Python-only in it


def test_a_snapshot_of_a_wal_dir_whose_path_is_not_utf8(odd_wal, tmp_path):
    # The report names the stop record's file by its path as given; a path with bytes
    # that are not UTF-8 is a lone surrogate in Python, which has no UTF-8 bytes: the
    # manifest wrote it raw and failed with a traceback (UnicodeEncodeError).
    wal_dir = Path(os.fsdecode(bytes(tmp_path) + b"/w\xff"))
    os.rename(odd_wal, wal_dir)
    try:
        out = tmp_path / "snap"
        report = tmp_path / "report.json"
        proc = cli("restore", wal_dir, "--out", f"{out}/", "--to-seq", U64_MAX - 2,
                   "--allow-incomplete-history", "--quiet", "--report-json", report)
        assert (proc.returncode, "Traceback" in proc.stderr) == (0, False), proc.stderr
        manifest = strict((out / "manifest.json").read_text("utf-8"))
        stop = manifest["report"]["stop"]["file"]
        assert Path(stop).parent == wal_dir and stop.startswith(str(wal_dir))
        written = strict(report.read_text("ascii"))
        written.pop("timings"), manifest["report"].pop("timings")
        assert manifest["report"] == written
        assert cli("verify", out).returncode == 0
    finally:
        os.rename(wal_dir, odd_wal)
