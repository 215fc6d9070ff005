"""The on-disk snapshot format (gpu_pitr.snapshot.format, .arrow; docs/snapshot-format.md).

Round trips of real restores are exact (id bytes, vector bits, metadata absent / {} /
maps, dim None / 0); plain pyarrow and NumPy read the files; every kind of damage is
a SnapshotError naming the file; writes are atomic and replace only snapshots.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import workloads as w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr.errors import WalError
from gpu_pitr.format.layout import INSERT
from gpu_pitr.index import RestoredIndex
from gpu_pitr.snapshot import arrow as snap_arrow
from gpu_pitr.snapshot import format as fmt
from gpu_pitr.snapshot.format import (
    DATA_FILES,
    FORMAT_VERSION,
    IDS,
    MANIFEST,
    MANIFEST_CRC,
    METADATA,
    PENDING,
    VECTORS,
    SnapshotError,
    is_snapshot,
    load_snapshot,
    read_manifest,
    write_snapshot,
)
from gpu_pitr.tempfiles import remove_stale_dirs

POSITION = {"segment": "wal-0000000005f5e100.log", "offset": 123, "seq": 7, "timestamp": 9,
            "max_timestamp": 9, "extra": [1, 2, {"é": None}]}
PENDING_BLOB = b"\x00\x01raw records\xff"


def _restore(tmp_path, entries, name="wal", **kw):
    b = w.LogBuilder()
    for e in entries:
        if isinstance(e, bytes):
            b.add_payload(e)
        else:
            b.add(e)
    return gpu_pitr.restore(b.write(tmp_path / name), backend="cpu", **kw)


def _rich(tmp_path):
    """ids with NUL and non-ASCII bytes, NaN payloads and -0.0, every metadata shape."""
    return _restore(tmp_path, [
        w.Ins("b", w.bits(0x7FC12345, 0x80000000, 0xFFC00001), {"k": "v", "ключ": "値"}, 1),
        w.Ins("a\x00", w.bits(0x7F800001, 0, 1), None, 2),
        w.Ins("", w.f32(1, 2, 3), {}, 3),
        w.Ins("日本", w.f32(4, 5, 6), {"": "", "k\x00": "\x00"}, 4),
        w.Ins("🙂", w.f32(7, 8, 9), {"x": "y"}, 5),
        w.Upd("🙂", w.f32(-1, -2, -3), None, 6),
        w.Del("b", 7),
        w.Ins("b", w.bits(0x7FA00000, 0xFF800000, 0x00000001), {"k": "v", "ключ": "値"}, 8),
    ])


def _same(index, snap) -> None:
    """``snap`` (a Snapshot) holds exactly ``index``'s state."""
    got = snap.to_index(index.report)
    assert got.id_list() == index.id_list()
    assert got.metadata == index.metadata
    v = np.asarray(index.to_host().vectors)
    assert snap.vectors.dtype == np.float32
    assert snap.vectors.shape == (len(index), snap.dim or 0)
    assert snap.vectors.tobytes() == v.tobytes()
    assert snap.dim == index.report.dim
    assert snap.count == len(index)


def _plain_read(path: Path) -> tuple:
    """What pyarrow and NumPy alone read from a snapshot."""
    ids = pa.ipc.open_file(path / IDS).read_all()
    meta = pa.ipc.open_file(path / METADATA).read_all()
    assert ids.schema.field("id").type == pa.large_string()
    assert meta.schema.field("metadata").type == pa.map_(pa.string(), pa.string())
    vec = np.fromfile(path / VECTORS, dtype="<f4")
    return (ids.column("id").to_pylist(), meta.column("metadata").to_pylist(), vec,
            (path / PENDING).read_bytes())


def _as_dicts(maps) -> list:
    return [None if m is None else dict(m) for m in maps]


def test_round_trip_exact(tmp_path):
    index = _rich(tmp_path)
    out = write_snapshot(tmp_path / "snap", index, position=POSITION, pending=PENDING_BLOB,
                         report=index.report.to_dict())
    snap = load_snapshot(out)
    _same(index, snap)
    assert snap.pending == PENDING_BLOB
    assert snap.position == POSITION
    assert snap.manifest["report"] == json.loads(json.dumps(index.report.to_dict()))
    assert snap.manifest["format_version"] == 1  # nothing in POSITION needs version 2
    assert all(getattr(snap, k).flags.writeable for k in (
        "id_arena", "id_offs", "id_lens", "vectors", "meta_arena", "meta_offs", "meta_lens"))
    assert index.metadata.count(None) == 1 and index.metadata.count({}) == 1
    ids, maps, vec, pending = _plain_read(out)
    assert ids == index.id_list()
    assert _as_dicts(maps) == index.metadata
    assert vec.tobytes() == index.vectors.tobytes()
    assert pending == PENDING_BLOB
    mapped = load_snapshot(out, mmap=True)
    assert isinstance(mapped.vectors.base, np.memmap) and not mapped.vectors.flags.writeable
    assert mapped.vectors.tobytes() == index.vectors.tobytes()
    _same(index, load_snapshot(out, verify=False))
    # With no report given, the index carries the report the manifest kept.
    alone = snap.to_index()
    assert alone.report.to_dict() == json.loads(json.dumps(index.report.to_dict()))
    assert alone.id_list() == index.id_list() and alone.metadata == index.metadata


def test_pairs_keep_their_order_and_varints_are_made_minimal(tmp_path):
    # {"k": "a", "k": "b"} (later wins) with a non-minimal pair count (251, u16 1... 2).
    meta = b"\x01\xfb\x02\x00" + b"\x01k\x01a" + b"\x01k\x01b"
    payload = bytes([INSERT]) + b"\x01x" + b"\x01" + w.f32(1.5) + meta + b"\x00"
    index = _restore(tmp_path, [payload])
    assert index.metadata == [{"k": "b"}]
    snap = load_snapshot(write_snapshot(tmp_path / "s", index, position={}))
    assert snap.to_index(index.report).metadata == [{"k": "b"}]
    assert snap.meta_arena[snap.meta_offs[0]:][:snap.meta_lens[0]].tobytes() == \
        b"\x02\x01k\x01a\x01k\x01b"
    assert pa.ipc.open_file(tmp_path / "s" / METADATA).read_all().column(0).to_pylist() == \
        [[("k", "a"), ("k", "b")]]


def test_string_lengths_at_the_varint_boundaries_round_trip(tmp_path):
    """Ids, keys and values 250/251, 65535/65536 bytes long: their lengths change varint
    width there, and the snapshot re-encodes them (Arrow -> the executors' records, for
    a restore from the base). A u16 width taken for 65536 came back as an empty value
    with no error."""
    log = w.LogBuilder()
    lengths = [250, 251, 65535, 65536]
    for k, n in enumerate(lengths):
        log.add(w.Ins("i" * n, [float(k)], {"k" * n: "v" * n, "x": "y" * (n + 1)}, 1 + k))
    wal = log.write(tmp_path / "wal")
    whole = gpu_pitr.restore(wal, backend="cpu")
    assert sorted(map(len, whole.id_list())) == lengths
    snap = gpu_pitr.snapshot.save(whole, tmp_path / "s")
    back = load_snapshot(snap).to_index()
    assert back.id_list() == whole.id_list() and back.metadata == whole.metadata
    assert [len(m["k" * len(i)]) for i, m in zip(back.id_list(), back.metadata,
                                                 strict=True)] == sorted(lengths)
    for backend in ("cpu", "cuda"):  # the cuda executor seeds every base row as a record
        log.add(w.Upd("i" * 251, [9.0], None, 9))
        log.write(tmp_path / "wal")
        got = gpu_pitr.restore(wal, backend=backend, base=snap).to_host()
        want = gpu_pitr.restore(wal, backend="cpu")
        assert got.id_list() == want.id_list() and got.metadata == want.metadata
        assert got.vectors.tobytes() == want.vectors.tobytes()


@pytest.mark.parametrize("case", ["no_records", "all_deleted", "dim_zero"])
def test_empty_and_degenerate_indexes(tmp_path, case):
    entries = {
        "no_records": [],
        "all_deleted": [w.Ins("a", w.f32(1, 2), None, 1), w.Del("a", 2)],
        "dim_zero": [w.Ins("a", b"", {}, 1), w.Ins("b", b"", None, 2)],
    }[case]
    index = _restore(tmp_path, entries)
    snap = load_snapshot(write_snapshot(tmp_path / "s", index, position={}))
    _same(index, snap)
    want_dim = {"no_records": None, "all_deleted": 2, "dim_zero": 0}[case]
    assert snap.dim == want_dim == snap.manifest["dim"]
    assert snap.vectors.shape == (len(index), want_dim or 0)
    assert (tmp_path / "s" / VECTORS).stat().st_size == 0


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(wl=w.workloads(max_steps=20, damage=False))
def test_random_restores_round_trip(tmp_path_factory, wl):
    tmp = tmp_path_factory.mktemp("rt")
    try:
        index = gpu_pitr.restore(wl.write(tmp / "wal"), backend="cpu",
                                 allow_incomplete_history=True)
    except WalError:
        return  # e.g. a dimension mismatch: nothing to snapshot
    out = write_snapshot(tmp / "snap", index, position=POSITION, pending=b"p")
    _same(index, load_snapshot(out))
    ids, maps, vec, _ = _plain_read(out)
    assert ids == index.id_list() and _as_dicts(maps) == index.metadata
    assert vec.tobytes() == index.vectors.tobytes()


def test_metadata_in_several_arrow_batches(tmp_path, monkeypatch):
    index = _rich(tmp_path)
    monkeypatch.setattr(snap_arrow, "ARRAY_LIMIT", 10)
    chunks = snap_arrow.metadata_chunks(index)
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(index)
    out = write_snapshot(tmp_path / "s", index, position={})
    assert pa.ipc.open_file(out / METADATA).num_record_batches == len(chunks)
    _same(index, load_snapshot(out))
    with pytest.raises(ValueError, match="row 2 alone"):
        snap_arrow.metadata_chunks(index, limit=3)


def test_arrow_conversions_of_sliced_and_chunked_arrays(tmp_path):
    index = _rich(tmp_path)
    ids, meta = snap_arrow.ids_array(index), snap_arrow.metadata_array(index)
    assert isinstance(ids, pa.LargeStringArray) and isinstance(meta, pa.MapArray)
    ids.validate(full=True)
    meta.validate(full=True)
    assert meta.null_count == 1
    for i, m in (ids.slice(2), meta.slice(2)), (pa.chunked_array([ids[:3], ids[3:]]),
                                                pa.chunked_array([meta[:1], meta[1:]])):
        arenas = snap_arrow.arenas_from_arrow(i, m)
        got = RestoredIndex(*arenas[:3], None, *arenas[3:], index.report)
        skip = 2 if isinstance(i, pa.Array) else 0
        assert got.id_list() == index.id_list()[skip:]
        assert got.metadata == index.metadata[skip:]
    empty = snap_arrow.arenas_from_arrow(pa.chunked_array([], pa.large_string()),
                                         pa.chunked_array([], meta.type))
    assert [len(a) for a in empty] == [0] * 6
    with pytest.raises(ValueError, match="5 ids but 4"):
        snap_arrow.arenas_from_arrow(ids, meta[1:])


# ----------------------------------------------------------------------------- damage
@pytest.fixture
def snap(tmp_path):
    index = _rich(tmp_path)
    return write_snapshot(tmp_path / "snap", index, position=POSITION, pending=PENDING_BLOB)


def _rewrite_manifest(path: Path, doc: dict) -> None:
    text = (json.dumps(doc, indent=1) + "\n").encode()
    (path / MANIFEST).write_bytes(text)
    (path / MANIFEST_CRC).write_text(f"{zlib.crc32(text):08x}\n")


def _flip(file: Path, at: int) -> None:
    data = bytearray(file.read_bytes())
    data[at] ^= 0x40
    file.write_bytes(bytes(data))


def test_inspect_of_a_snapshot_names_the_seq_that_restores_exactly_its_state(tmp_path, capsys):
    """A snapshot taken as a named restore point (before a migration) is given back as
    an index by a seq target at its last record; a time target goes on to records
    stamped in the same second after it. ``inspect`` printed no seq to use: it names
    it, with the command, and that command gives the snapshot's state exactly."""
    b = w.LogBuilder()
    for k in range(6):
        b.add(w.Ins(f"d{k}", w.f32(k, k), {"k": str(k)}, 100))  # one second: 100
    b.add(w.Begin(7, 100))
    b.add(w.Ins("in-txn", w.f32(9, 9), None, 100))  # open at the position: kept pending
    b.add(w.Ins("d1", w.f32(8, 8), None, 100))
    b.add(w.Commit(7, 100))
    wal = Path(b.write(tmp_path / "wal"))
    (tmp_path / "snaps").mkdir()
    assert _cli(capsys, "snapshot", wal, "--to-seq", "7", "--out", tmp_path / "snaps" / "p",
                "-q")[0] == 0
    rc, out, err = _cli(capsys, "inspect", tmp_path / "snaps" / "p")
    assert (rc, err) == (0, "")
    m = json.loads((tmp_path / "snaps" / "p" / MANIFEST).read_text())
    assert out.splitlines()[0] == (
        f"snapshot {tmp_path / 'snaps' / 'p'}: format version {m['format_version']}, "
        f"created {m['created']} by gpu-pitr {gpu_pitr.__version__}")
    line = next(x for x in out.splitlines() if x.startswith("last record covered"))
    assert line == (f"last record covered: seq 7 (this state exactly: gpu-pitr restore WAL_DIR "
                    f"--base {tmp_path / 'snaps' / 'p'} --to-seq 7 --stop-reading-at-target "
                    "--out OUT)")
    command = line.split("exactly: gpu-pitr ", 1)[1].rstrip(")").split()
    command = [str(wal) if a == "WAL_DIR" else str(tmp_path / "o.npz") if a == "OUT" else a
               for a in command]
    assert _cli(capsys, *command, "-q")[0] == 0
    want = load_snapshot(tmp_path / "snaps" / "p").to_index()
    got = np.load(tmp_path / "o.npz", allow_pickle=False)
    assert list(got["ids"]) == want.id_list() == [f"d{k}" for k in range(6)]
    assert np.array_equal(got["vectors"], want.vectors)
    # The snapshot's own state (recovery_target = 'immediate'): no record of the log
    # after it read, though the log goes on.
    report = json.loads(str(got["report"]))
    assert report["records_read"] == 0 and report["stop"]["seq"] == 7
    assert list(got["metadata"]) == list(want.metadata_json())


def test_the_command_inspect_names_a_zero_filled_last_record_as_one(tmp_path, capsys):
    """A snapshot whose last record covered is zero-filled (a position target at one,
    with --skip-corrupt): its seq 0 is none the writer gave, and the line said "seq 0"
    after records of seq 0 and 1. It names it as what it is; the command it gives (the
    record's position) gives the snapshot's state exactly."""
    b = w.LogBuilder()
    b.add(w.Ins("a", w.f32(1), None, 1))
    b.add(w.Ins("b", w.f32(2), None, 2))
    at = b.raw(bytes(24))
    b.add(w.Ins("c", w.f32(3), None, 3))
    wal = Path(b.write(tmp_path / "wal"))
    snap = tmp_path / "snaps" / "p"
    snap.parent.mkdir()
    assert _cli(capsys, "snapshot", wal, "--to-position", f"{b.cur}:{at}",
                "--skip-corrupt", "--out", snap, "-q")[0] == 0
    rc, out, _ = _cli(capsys, "inspect", snap)
    line = next(x for x in out.splitlines() if x.startswith("last record covered"))
    assert line == (
        "last record covered: a zero-filled record (12 zero bytes: no seq the writer "
        f"gave) (this state exactly: gpu-pitr restore WAL_DIR --base {snap} "
        f"--to-position {b.cur}:{at} --stop-reading-at-target --out OUT)")
    command = line.split("exactly: gpu-pitr ", 1)[1].rstrip(")").split()
    command = [str(wal) if a == "WAL_DIR" else str(tmp_path / "o.npz") if a == "OUT" else a
               for a in command]
    assert _cli(capsys, *command, "-q")[0] == 0
    assert list(np.load(tmp_path / "o.npz", allow_pickle=False)["ids"]) == ["a", "b"]


def test_the_command_inspect_names_runs_for_a_snapshot_restored_across_a_gap(tmp_path,
                                                                              capsys):
    """A snapshot restored across a gap (the log starting at seq 5) is refused as a base
    without --allow-incomplete-history: the command named left it out and failed (exit
    1). A path with a space is quoted, so that the command can be pasted as printed."""
    import shlex

    b = w.LogBuilder(first_seq=5)
    for k in range(6):
        b.add(w.Ins(f"d{k}", w.f32(k, k), None, 100))
    wal = Path(b.write(tmp_path / "wal"))
    snap = tmp_path / "my snaps" / "p"
    snap.parent.mkdir()
    assert _cli(capsys, "snapshot", wal, "--to-seq", "8", "--allow-incomplete-history",
                "--out", snap, "-q")[0] == 0
    rc, out, _ = _cli(capsys, "inspect", snap)
    line = next(x for x in out.splitlines() if x.startswith("last record covered"))
    command = shlex.split(line.split("exactly: gpu-pitr ", 1)[1].rstrip(")"))
    assert "--allow-incomplete-history" in command and str(snap) in command
    command = [str(wal) if a == "WAL_DIR" else str(tmp_path / "o.npz") if a == "OUT" else a
               for a in command]
    assert _cli(capsys, *command, "-q")[0] == 0
    got = np.load(tmp_path / "o.npz", allow_pickle=False)
    assert list(got["ids"]) == load_snapshot(snap).to_index().id_list()


@pytest.mark.parametrize("command", ["restore", "snapshot"])
def test_a_base_without_pending_that_is_the_stop_is_summed_up(tmp_path, capsys, command):
    """A manifest may leave ``pending`` out (it loads without one). A seq target at the
    base's last record gives the base's own position, and the summary's
    ``position["pending"]`` was a KeyError traceback after the output had been
    written."""
    b = w.LogBuilder()
    for k in range(6):
        b.add(w.Ins(f"d{k}", w.f32(k, k), None, 100))
    wal = Path(b.write(tmp_path / "wal"))
    base = tmp_path / "s"
    assert _cli(capsys, "snapshot", wal, "--to-seq", "3", "--out", base, "-q")[0] == 0
    doc = json.loads((base / MANIFEST).read_text())
    del doc["position"]["pending"]
    _rewrite_manifest(base, doc)
    out = tmp_path / ("o.npz" if command == "restore" else "o")
    rc, text, err = _cli(capsys, command, wal, "--base", base, "--to-seq", "3", "--out", out)
    assert (rc, err) == (0, ""), err
    assert "stopped: after" in text and "seq 3" in text
    if command == "snapshot":
        assert f"snapshot: {out} covers the log up to " in text
        assert "(0 open transactions kept" in text


@pytest.mark.parametrize("name", [*DATA_FILES, MANIFEST, MANIFEST_CRC])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mapped"])
def test_damage_names_the_file(snap, name, damage, mapped):
    # mapped: as a restore loads its base (files mapped, the key table on a thread).
    file = snap / name
    size = file.stat().st_size
    if damage == "delete":
        file.unlink()
    elif damage == "truncate":
        if size == 0:
            pytest.fail(f"{name} is empty in this snapshot")
        os.truncate(file, size - 1)
    else:
        _flip(file, size // 2)
    with pytest.raises(SnapshotError) as err:
        load_snapshot(snap, mmap=mapped, key_table=mapped)
    message = str(err.value)
    assert message.startswith(f"{file}: "), message
    assert "\n" not in message


def _cli(capsys, *args) -> tuple[int, str, str]:
    from gpu_pitr.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_and_inspect_of_an_intact_snapshot(snap, capsys):
    rc, out, err = _cli(capsys, "verify", snap)
    assert (rc, err) == (0, "")
    files = sum((snap / n).stat().st_size for n in (*DATA_FILES, MANIFEST, MANIFEST_CRC))
    assert out.splitlines() == [
        f"{snap}: clean: snapshot of 5 ids, dim 3, up to wal-0000000005f5e100.log offset 123, "
        f"last commit point applied at 1970-01-01T00:00:09Z; {files} bytes checked "
        + out.rsplit("checked ", 1)[1].strip()]
    rc, out, err = _cli(capsys, "verify", "--json", snap)
    doc = json.loads(out)
    assert (rc, err, doc["clean"], doc["count"], doc["dim"], doc["bytes"]) == (0, "", True, 5, 3,
                                                                              files)
    assert doc["position"]["offset"] == 123
    rc, out, err = _cli(capsys, "inspect", snap)
    assert (rc, err) == (0, "")
    assert "5 ids, dim 3; up to wal-0000000005f5e100.log offset 123" in out
    assert f"{VECTORS:<20} {(snap / VECTORS).stat().st_size:>14}" in out.splitlines()
    rc, out, err = _cli(capsys, "inspect", "--json", snap)
    assert rc == 0 and json.loads(out)["manifest"] == read_manifest(snap)


@pytest.mark.parametrize("name", [*DATA_FILES, MANIFEST, MANIFEST_CRC])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_verify_of_a_damaged_snapshot_names_the_file(snap, capsys, name, damage):
    file = snap / name
    size = file.stat().st_size
    if damage == "delete":
        file.unlink()
    elif damage == "truncate":
        os.truncate(file, size - 1)
    else:
        _flip(file, size // 2)
    rc, out, err = _cli(capsys, "verify", snap)
    assert (rc, err) == (1, "")
    first, last = out.splitlines()
    assert first.startswith(f"{file}: ") and last.startswith(f"{snap}: DAMAGED: snapshot")
    rc, out, _ = _cli(capsys, "verify", "--json", snap)
    doc = json.loads(out)
    assert rc == 1 and doc["clean"] is False and doc["problem"]["file"] == str(file)
    rc, out, err = _cli(capsys, "inspect", snap)  # inspect reads only the manifest
    assert (rc, err) == (0, "")
    if name in (MANIFEST, MANIFEST_CRC):
        assert out.startswith(f"snapshot {snap}: {snap / name}: ")


def test_a_snapshot_with_another_file_beside_it_is_still_checked(tmp_path, snap, capsys):
    # A --report-json put beside it, or a person's notes: the snapshot is still one to
    # verify and inspect (not "clean: 0 segments", an empty log), and to --snapshots.
    (snap / "notes.txt").write_text("taken before the migration\n")
    rc, out, err = _cli(capsys, "verify", snap)
    assert (rc, err) == (0, "")
    assert out.startswith(f"{snap}: clean: snapshot of 5 ids")
    assert out.rstrip().endswith("; not part of it, not checked: notes.txt")
    rc, out, _ = _cli(capsys, "verify", "--json", snap)
    assert rc == 0 and json.loads(out)["other_files"] == ["notes.txt"]
    rc, out, err = _cli(capsys, "inspect", snap)
    assert (rc, err) == (0, "") and "5 ids, dim 3; up to" in out
    assert gpu_pitr.snapshot.snapshot_dirs(tmp_path) == [str(snap)]
    _flip(snap / VECTORS, 0)
    rc, out, err = _cli(capsys, "verify", snap)
    assert (rc, err) == (1, "")
    assert out.splitlines()[0].startswith(f"{snap / VECTORS}: offset 0: ")
    # A snapshot written over it would lose the other file: refused.
    with pytest.raises(SnapshotError, match=r"holds a snapshot and other files \(notes.txt\)"):
        write_snapshot(snap, _rich(tmp_path), position=POSITION, pending=b"")
    assert (snap / "notes.txt").exists()
    # A WAL directory is never taken for a snapshot, whatever else it holds.
    wal = tmp_path / "other"
    wal.mkdir()
    for name in (MANIFEST, VECTORS, "wal-0000000000000001.log"):
        (wal / name).write_bytes(b"")
    assert not fmt.holds_snapshot_files(wal)


def test_verify_of_a_directory_of_snapshots_checks_each(tmp_path, capsys):
    parent = tmp_path / "snaps"
    index = _rich(tmp_path)
    snap = write_snapshot(parent / "snap1", index, position=POSITION, pending=PENDING_BLOB)
    write_snapshot(parent / "snap2", index, position=POSITION, pending=b"")
    (parent / ".snap3.tmp").mkdir()  # a writer's temp dir is not a snapshot yet
    (parent / "notes").mkdir()  # nor is any other directory
    rc, out, err = _cli(capsys, "verify", parent)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(":")[:2] for line in lines[:2]] == [[str(snap), " clean"],
                                                            [str(parent / "snap2"), " clean"]]
    assert lines[2] == f"{parent}: clean: 2 snapshots, 0 damaged"
    _flip(parent / "snap2" / VECTORS, 0)
    rc, out, err = _cli(capsys, "verify", parent)
    assert (rc, err) == (1, "")
    lines = out.splitlines()
    assert lines[1].startswith(f"{parent / 'snap2' / VECTORS}: offset 0: ")
    assert lines[-1] == f"{parent}: DAMAGED: 2 snapshots, 1 damaged"
    rc, out, _ = _cli(capsys, "verify", "--json", parent)
    doc = json.loads(out)
    assert rc == 1 and doc["clean"] is False
    assert [d["clean"] for d in doc["snapshots"]] == [True, False]


def test_inspect_of_a_directory_of_snapshots_lists_them_in_log_order(tmp_path, capsys):
    parent = tmp_path / "snaps"
    index = _rich(tmp_path)
    # Its last commit is stamped 3000, an earlier one 3600 (a clock stepped back): it
    # serves --to-time from 3600 on, which the table shows.
    later = {**POSITION, "offset": 456, "timestamp": 3000, "max_timestamp": 3600}
    write_snapshot(parent / "a-later", index, position=later, pending=b"")
    write_snapshot(parent / "b-earlier", index, position=POSITION, pending=b"")
    write_snapshot(parent / "c-start", index, position={}, pending=b"")
    write_snapshot(parent / "d-gone", index, position=POSITION, pending=b"")
    (parent / "d-gone" / MANIFEST).unlink()
    (parent / ".e.tmp").mkdir()  # a writer's temp dir is not a snapshot yet
    rc, out, err = _cli(capsys, "inspect", parent)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"snapshots in {parent}: 4, 1 with a damaged manifest (oldest first)"
    rows = [line.split()[:4] for line in lines[3:7]]
    assert rows == [["c-start", "5", "3", "-"],
                    ["b-earlier", "5", "3", "1970-01-01T00:00:09Z"],
                    ["a-later", "5", "3", "1970-01-01T01:00:00Z"],
                    ["d-gone", "DAMAGED:", f"{parent / 'd-gone' / MANIFEST}:", "missing"]]
    assert [line.split()[4] for line in lines[3:6]] == [
        read_manifest(parent / n)["created"][:19] + "Z" for n in ("c-start", "b-earlier",
                                                                 "a-later")]
    assert lines[3].endswith("the start of the log")
    assert lines[5].endswith("wal-0000000005f5e100.log offset 456")
    assert lines[-2] == f"checksums not checked: gpu-pitr verify {parent} checks them"
    # The targets a restore from them takes, --to-transaction too (pgbackrest info's
    # reader goes on to a restore: recovery.md's bad transaction is named by its id).
    assert lines[-1] == ("to restore from the newest that serves a target: gpu-pitr restore "
                         f"WAL_DIR --snapshots {parent} --out OUT [--to-time T | --to-seq N "
                         "| --to-transaction X | --to-position FILE:OFFSET]")
    rc, out, err = _cli(capsys, "inspect", "--json", parent)
    doc = json.loads(out)
    assert (rc, err, doc["snapshots_dir"]) == (0, "", str(parent))
    assert [Path(d["snapshot"]).name for d in doc["snapshots"]] == [
        "c-start", "b-earlier", "a-later", "d-gone"]
    assert doc["snapshots"][2]["manifest"] == read_manifest(parent / "a-later")
    assert "missing" in doc["snapshots"][3]["error"]


def test_a_writer_temp_dir_alone_is_not_a_directory_of_snapshots(tmp_path, capsys):
    """What --snapshots passes over (hidden names: a writer's temp dir) is not named as
    a directory of snapshots by the note of an empty WAL_DIR, nor listed by inspect."""
    from gpu_pitr.pipeline import no_segments_note

    parent = tmp_path / "snaps"
    write_snapshot(parent / ".s.tmp-1", _rich(tmp_path), position=POSITION, pending=b"")
    assert no_segments_note(parent) == f"no wal-<16 hex digits>.log files in {parent}"
    rc, out, err = _cli(capsys, "inspect", parent)
    assert rc == 0 and out.startswith(f"WAL directory {parent}: 0 segments")
    assert err == f"note: no wal-<16 hex digits>.log files in {parent}\n"


def test_bad_block_is_named_by_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "BLOCK_SIZE", 16)
    index = _rich(tmp_path)
    out = write_snapshot(tmp_path / "s", index, position={})
    assert len(read_manifest(out)["files"][VECTORS]["crc32"]) == 4  # 5 rows x 3 x 4 bytes
    _flip(out / VECTORS, 37)
    with pytest.raises(SnapshotError, match=r"vectors\.f32: offset 32: CRC-32 mismatch"):
        load_snapshot(out)
    assert load_snapshot(out, verify=False).vectors.tobytes() != index.vectors.tobytes()
    with pytest.raises(SnapshotError, match="offset 32"):
        load_snapshot(out, mmap=True)


def test_manifest_checks(snap):
    doc = json.loads((snap / MANIFEST).read_bytes())
    (snap / MANIFEST).write_bytes(b'{"format": "gpu_pitr.snapshot", "count": ')
    with pytest.raises(SnapshotError, match=r"manifest\.json: CRC-32 .* torn or edited"):
        read_manifest(snap)
    _rewrite_manifest(snap, doc)
    assert read_manifest(snap) == doc
    (snap / MANIFEST).write_bytes(b"[1, 2")
    (snap / MANIFEST_CRC).write_text(f"{zlib.crc32(b'[1, 2'):08x}\n")
    with pytest.raises(SnapshotError, match="manifest.json: not a JSON object"):
        read_manifest(snap)
    # A version this reader does not know is named as such, checksum or not.
    # The writer's version is named where the manifest says it in the form written
    # (the reader's own too: upgrading past it is the remedy); other text is not quoted.
    assert doc["written_by"] == f"gpu-pitr {gpu_pitr.__version__}"
    for written_by, by in ((doc["written_by"], doc["written_by"]),
                           ("gpu-pitr 0.9.2", "gpu-pitr 0.9.2"),
                           ("run: rm -rf /", "a newer gpu-pitr"), (7, "a newer gpu-pitr"),
                           (None, "a newer gpu-pitr")):
        newer = {**doc, "format_version": FORMAT_VERSION + 1, "written_by": written_by}
        if written_by is None:
            del newer["written_by"]
        (snap / MANIFEST).write_text(json.dumps(newer))
        with pytest.raises(SnapshotError) as err:
            read_manifest(snap)
        assert str(err.value) == (
            f"{snap / MANIFEST}: format version {FORMAT_VERSION + 1} is not supported (this "
            f"reader reads versions 1, 2): written by {by}; restore from it with that "
            f"version or a later one (this is gpu-pitr {gpu_pitr.__version__})")
    for version in (0, True, "1", 1.0, None):
        (snap / MANIFEST).write_text(json.dumps({**doc, "format_version": version}))
        with pytest.raises(SnapshotError, match=f"format version {version!r} is not supported "
                           r"\(this reader reads versions 1, 2\)$"):
            read_manifest(snap)
    cases = {
        "count": ({"count": doc["count"] + 1}, "count 6 x dim 3"),
        "dim": ({"dim": 4}, "x dim 4 x 4 bytes"),
        "dim_null": ({"dim": None}, "with dim null"),
        "negative": ({"count": -1}, "count -1 is not"),
        "bool": ({"count": True}, "count True is not"),
        "files": ({"files": {k: v for k, v in doc["files"].items() if k != PENDING}},
                  "files must list"),
        "crcs": ({"files": {**doc["files"], IDS: {"size": 5, "crc32": []}}},
                 "one CRC-32 per"),
        "checksum": ({"checksum": {"algorithm": "md5", "block_size": 1}}, "checksum"),
        "position": ({"position": [1]}, "position is not an object"),
        # A position that parses, checksum and all, but that no restore wrote: it was a
        # traceback in restore, inspect and verify, and verify called it clean.
        "offset": ({"position": {**POSITION, "offset": "abc"}}, "position: offset 'abc'"),
        "seq_runs": ({"position": {**POSITION, "seq_runs": "x"}}, "position: seq_runs"),
        "seq": ({"position": {**POSITION, "seq": float("nan")}}, "position: seq nan"),
        "segment": ({"position": {**POSITION, "segment": "../x"}}, "position: segment '../x'"),
        "last_record": ({"position": {**POSITION, "last_record": {
            "segment": POSITION["segment"], "offset": 1, "length": 2**40}}},
            "position: last_record"),
        "pending": ({"position": {**POSITION, "pending": {"transactions": [[1]]}}},
                    "position: pending.transactions"),
        "format": ({"format": "other"}, "format 'other' is not"),
        "dim_text": ({"dim": "3"}, "dim '3' is neither null nor"),
        "created": ({"created": 17}, "created is not a string"),
        "written_by": ({"written_by": ["gpu-pitr"]}, "written_by is not a string"),
        "report": ({"report": [1]}, "report is neither null nor an object"),
        "size": ({"files": {**doc["files"], IDS: {"size": "5", "crc32": []}}},
                 r"files\.ids\.arrow\.size '5' is not"),
        "entry": ({"files": {**doc["files"], IDS: None}}, r"files\.ids\.arrow\.size None"),
        "torn_flag": ({"position": {**POSITION, "at_torn_tail": "no"}},
                      "position: at_torn_tail 'no' is not true or false"),
        "pending_type": ({"position": {**POSITION, "pending": [1]}},
                         "position: pending is not an object"),
        "record_runs": ({"position": {**POSITION, "pending": {"record_runs": [["f", 1]]}}},
                        r"position: pending\.record_runs is not a list"),
        "records": ({"position": {**POSITION, "pending": {"records": [["f", -1]]}}},
                    r"position: pending\.records is not a list"),
    }
    for change, match in cases.values():
        _rewrite_manifest(snap, {**doc, **change})
        with pytest.raises(SnapshotError, match=match) as err:
            load_snapshot(snap)
        assert str(err.value).startswith(f"{snap / MANIFEST}: ")
    (snap / MANIFEST_CRC).write_text("nothex")
    with pytest.raises(SnapshotError, match=r"manifest\.json\.crc: not a CRC-32"):
        read_manifest(snap)


def test_a_manifest_nested_too_deep_is_damage_not_a_traceback(snap, tmp_path, capsys):
    """A manifest whose checksum holds but whose JSON nests past Python's recursion limit
    (garbage, or a tampered snapshot) was a RecursionError traceback in inspect, verify,
    every restore with --snapshots that listed it, expire and a snapshot write over it."""
    text = b"[" * 100_000 + b"]" * 100_000
    (snap / MANIFEST).write_bytes(text)
    (snap / MANIFEST_CRC).write_text(f"{zlib.crc32(text):08x}\n")
    with pytest.raises(SnapshotError, match="manifest.json: not a JSON object"):
        read_manifest(snap)
    assert fmt.is_snapshot(snap)  # torn: replaced by the next write of its name
    assert _cli(capsys, "verify", str(snap))[0] == 1
    index = _restore(tmp_path, [w.Ins("new", w.f32(1), None, 1)], name="wal2")
    write_snapshot(snap, index, position={})
    assert load_snapshot(snap).count == 1


def test_a_manifest_larger_than_any_is_refused_before_it_is_read(snap, capsys):
    """A manifest.json of gigabytes (sparse, garbage, a file still growing) was read
    whole and parsed before it was judged: a 3 GiB one took 6.4 GB of RSS and 23 s for
    verify to call it damaged, and under a memory limit the command said "out of
    memory: " and nothing more. It is refused from its size, in one line naming it."""
    with open(snap / MANIFEST, "r+b") as f:
        f.truncate(fmt.MANIFEST_MAX + 1)  # sparse: nothing of it is ever read
    line = (f"{snap / MANIFEST}: holds more than {fmt.MANIFEST_MAX:,} bytes, more than a "
            "snapshot's manifest.json can be: not read")
    with pytest.raises(SnapshotError) as err:
        read_manifest(snap)
    assert str(err.value) == line
    assert is_snapshot(snap)  # ours by its names, damaged: replaced by a write of its name
    rc, out, _ = _cli(capsys, "verify", str(snap))
    assert rc == 1 and line in out
    (snap / MANIFEST_CRC).write_bytes(b"0" * (1 << 20))  # a checksum file of a MiB
    (snap / MANIFEST).write_bytes(b"{}")
    with pytest.raises(SnapshotError, match=r"manifest\.json\.crc: holds more than 4,096"):
        read_manifest(snap)


def test_a_manifest_too_large_to_be_read_back_is_not_written(snap, tmp_path, monkeypatch):
    """The writer keeps to the reader's bound: a snapshot whose manifest every load
    would refuse is not written (the one there is kept), rather than found so later."""
    before = read_manifest(snap)
    monkeypatch.setattr(fmt, "MANIFEST_MAX", 200)
    index = _restore(tmp_path, [w.Ins("new", w.f32(1), None, 1)], name="wal2")
    with pytest.raises(SnapshotError, match=r"^.*/snap: the manifest would be [\d,]+ bytes, "
                                            "more than the 200 a manifest may be"):
        write_snapshot(snap, index, position=POSITION)
    monkeypatch.undo()
    assert read_manifest(snap) == before
    assert sorted(os.listdir(tmp_path)) == ["snap", "wal", "wal2"]


def test_a_fifo_where_the_manifest_belongs_blocks_no_write(tmp_path):
    """A FIFO named manifest.json, in a directory of snapshot file names, hung
    ``gpu-pitr snapshot --out`` of that directory (and ``expire``) for ever: telling
    whether it was a snapshot opened it for reading, which waits for a writer. It is
    no snapshot: the write is refused, as over any other directory."""
    import threading

    out = tmp_path / "snap"
    out.mkdir()
    os.mkfifo(out / MANIFEST)
    (out / VECTORS).write_bytes(b"")
    got = []
    judge = threading.Thread(target=lambda: got.append(is_snapshot(out)), daemon=True)
    judge.start()
    judge.join(30)
    if judge.is_alive():  # (unblocked, so that the thread ends)
        os.close(os.open(out / MANIFEST, os.O_WRONLY | os.O_NONBLOCK))
    assert got == [False]
    index = _restore(tmp_path, [w.Ins("new", w.f32(1), None, 1)])
    with pytest.raises(SnapshotError, match="neither empty nor a snapshot: not replaced"):
        write_snapshot(out, index, position={})


def test_read_manifest_reads_only_the_manifest(snap):
    for name in DATA_FILES:
        (snap / name).unlink()
    assert read_manifest(snap)["position"] == POSITION
    with pytest.raises(SnapshotError, match="vectors.f32: missing"):
        load_snapshot(snap)
    with pytest.raises(SnapshotError, match="nowhere: not a snapshot directory: no such "
                                            "directory$"):
        read_manifest(snap / "nowhere")
    with pytest.raises(SnapshotError, match="manifest.json: not a snapshot directory: not a "
                                            "directory$"):
        read_manifest(snap / "manifest.json")


def _replace_arrow(snap: Path, name: str, table: pa.Table, doc_changes=None) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    (snap / name).write_bytes(data)
    doc = json.loads((snap / MANIFEST).read_bytes())
    doc["files"][name] = {"size": len(data), "crc32": [
        f"{zlib.crc32(data[a:a + fmt.BLOCK_SIZE]):08x}"
        for a in range(0, len(data), fmt.BLOCK_SIZE)]}
    doc.update(doc_changes or {})
    _rewrite_manifest(snap, doc)


def test_arrow_contents_are_checked(snap):
    ids = pa.ipc.open_file(snap / IDS).read_all().column(0).to_pylist()
    meta_t = pa.map_(pa.string(), pa.string())
    id_schema = pa.schema([pa.field("id", pa.large_string(), nullable=False)])
    bad = {
        "short": (IDS, pa.table({"id": pa.array(ids[:-1], pa.large_string())}),
                  "4 rows, the manifest count is 5"),
        "type": (IDS, pa.table({"id": pa.array(ids, pa.string())}), "schema is"),
        "name": (METADATA, pa.table({"meta": pa.array([None] * 5, meta_t)}), "schema is"),
        "unsorted": (IDS, pa.table([pa.array(ids[::-1], pa.large_string())], schema=id_schema),
                     "not strictly ascending at row 1"),
        "duplicate": (IDS, pa.table([pa.array(ids[:1] * 5, pa.large_string())],
                                    schema=id_schema), "not strictly ascending at row 1"),
        "null_id": (IDS, pa.table({"id": pa.array(ids[:-1] + [None], pa.large_string())}),
                    "null ids$"),
        "null_value": (METADATA, pa.table({"metadata": pa.array(
            [[("k", None)]] * 5, meta_t)}), "null strings"),
    }
    original = {n: (snap / n).read_bytes() for n in (IDS, METADATA, MANIFEST, MANIFEST_CRC)}
    for name, table, match in bad.values():
        _replace_arrow(snap, name, table)
        with pytest.raises(SnapshotError, match=match) as err:
            load_snapshot(snap)
        assert str(err.value).startswith(f"{snap / name}: "), err.value
        if "ascending" in match:  # the order is checked with the checksums only
            assert load_snapshot(snap, verify=False).count == 5
        for n, data in original.items():
            (snap / n).write_bytes(data)
    load_snapshot(snap)
    (snap / IDS).write_bytes(b"ARROW1\x00\x00garbage")
    doc = json.loads((snap / MANIFEST).read_bytes())
    doc["files"][IDS] = {"size": 15, "crc32": [f"{zlib.crc32((snap / IDS).read_bytes()):08x}"]}
    _rewrite_manifest(snap, doc)
    with pytest.raises(SnapshotError, match=r"ids\.arrow: not a valid Arrow IPC file"):
        load_snapshot(snap)


@pytest.mark.parametrize("name", [IDS, METADATA])
def test_compressed_arrow_files_are_refused(snap, name):
    """A ZSTD-compressed metadata.arrow of 3 KiB inflated to 60 MB (any ratio: a tampered
    file's few KiB, GiBs in memory) and verify called the snapshot clean, though the
    format's files are uncompressed (so that any reader maps them)."""
    table = pa.ipc.open_file(snap / name).read_all()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema,
                         options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    (snap / name).write_bytes(data)
    doc = json.loads((snap / MANIFEST).read_bytes())
    doc["files"][name] = {"size": len(data), "crc32": [f"{zlib.crc32(data):08x}"]}
    _rewrite_manifest(snap, doc)
    for mapped in (False, True):
        with pytest.raises(SnapshotError, match=rf"{re.escape(name)}: compressed record "
                                                "batches"):
            load_snapshot(snap, mmap=mapped)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
@pytest.mark.parametrize("name", [IDS, METADATA])
def test_compressed_arrow_files_are_refused_before_their_data_is_read(snap, name, codec,
                                                                      monkeypatch):
    """The refusal came only once ``read_all`` had inflated every batch (a few KiB of a
    tampered file, GiBs in memory, before the check). It is made from the footer and
    the record batch messages: the batches' bodies are never read."""
    table = pa.ipc.open_file(snap / name).read_all()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema,
                         options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write_table(table.slice(0, 2))  # two batches, the second compressed alone
        writer.write_table(table.slice(2))
    data = sink.getvalue().to_pybytes()
    (snap / name).write_bytes(data)
    doc = json.loads((snap / MANIFEST).read_bytes())
    doc["files"][name] = {"size": len(data), "crc32": [f"{zlib.crc32(data):08x}"]}
    _rewrite_manifest(snap, doc)
    real_open = pa.ipc.open_file

    class Unread:  # the file's footer and schema, not its batches
        def __init__(self, reader) -> None:
            self.schema = reader.schema

        def read_all(self):
            raise AssertionError("the record batches were read")

    def open_file(source, *args, **kwargs):
        reader = real_open(source, *args, **kwargs)
        return Unread(reader) if source.size == len(data) else reader  # (the other file)

    monkeypatch.setattr(pa.ipc, "open_file", open_file)
    for mapped in (False, True):
        with pytest.raises(SnapshotError, match=rf"{re.escape(name)}: compressed record "
                                                "batches"):
            load_snapshot(snap, mmap=mapped)


def test_row_count_checked_against_arrow_when_vectors_are_empty(tmp_path):
    index = _restore(tmp_path, [w.Ins("a", b"", None, 1)])  # dim 0: vectors.f32 is empty
    out = write_snapshot(tmp_path / "s", index, position={})
    doc = json.loads((out / MANIFEST).read_bytes())
    _rewrite_manifest(out, {**doc, "count": 2})
    with pytest.raises(SnapshotError, match=r"ids\.arrow: 1 rows, the manifest count is 2"):
        load_snapshot(out)


# ----------------------------------------------------------------------------- writing
def _contents(parent: Path) -> dict:
    """Every path under ``parent`` and its bytes (None for a directory)."""
    return {k: v[0] for k, v in w.dir_state(parent).items() if k != "."}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_replace_existing_snapshot_and_empty_dir(tmp_path):
    index = _rich(tmp_path)
    small = _restore(tmp_path, [w.Ins("z", w.f32(1), None, 1)], name="wal2")
    out = tmp_path / "snap"
    out.mkdir()
    write_snapshot(out, index, position={"n": 1})
    write_snapshot(out, small, position={"n": 2})
    snap = load_snapshot(out)
    _same(small, snap)
    assert snap.position == {"n": 2}
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize(("what", "why"), [
    ("file", "exists and is a file or a symlink, not a directory"),
    ("dir", "is a directory that is neither empty nor a snapshot"),
    ("extra_file", "holds a snapshot and other files (notes.txt)"),
    ("other_manifest", "is a directory that is neither empty nor a snapshot"),
    ("symlink", "exists and is a file or a symlink, not a directory")])
def test_refuses_what_is_not_a_snapshot(tmp_path, what, why):
    index = _rich(tmp_path)
    out = tmp_path / "out"
    if what == "file":
        out.write_bytes(b"precious")
    elif what == "symlink":
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
    else:
        write_snapshot(out, index, position={})
        if what == "dir":
            for p in out.iterdir():
                p.unlink()
            (out / "notes.txt").write_text("precious")
        elif what == "extra_file":
            (out / "notes.txt").write_text("precious")
        else:
            (out / MANIFEST).write_text('{"format": "something else"}')
    before = w.dir_state(tmp_path)
    assert not is_snapshot(out)
    with pytest.raises(SnapshotError, match="not replaced") as err:
        write_snapshot(out, index, position={})
    assert str(err.value).startswith(f"{out}: {why}"), err.value
    assert "\n" not in str(err.value)
    assert w.dir_state(tmp_path) == before


def test_torn_snapshot_is_still_a_snapshot(snap):
    (snap / MANIFEST).write_bytes(b'{"format": "gpu_pi')
    assert is_snapshot(snap)
    assert not is_snapshot(snap / MANIFEST)


@pytest.mark.parametrize("fail_at", [1, 3, 5, 6])
def test_failed_write_leaves_old_snapshot_and_no_temp_dir(snap, monkeypatch, fail_at):
    # The fail_at-th of the six files written (data files, then the manifest and its CRC).
    calls = []

    def failing(real):
        def write(path, *args):
            calls.append(path.name)
            if len(calls) == fail_at:
                raise OSError(28, "No space left on device")
            return real(path, *args)
        return write

    monkeypatch.setattr(fmt, "_write_file", failing(fmt._write_file))
    monkeypatch.setattr(fmt, "_write_ipc", failing(fmt._write_ipc))
    index = _restore(snap.parent, [w.Ins("new", w.f32(1), None, 1)], name="wal2")
    before = _contents(snap.parent)
    with pytest.raises(OSError, match="No space"):
        write_snapshot(snap, index, position={})
    assert len(calls) == fail_at
    assert _contents(snap.parent) == before
    assert load_snapshot(snap).position == POSITION


@pytest.mark.parametrize(("reader", "when"), [
    (reader, when) for reader in ("load", "verify", "read_manifest")
    for when in ("between_the_manifest_files", "before_the_data_files")
    if not (reader == "read_manifest" and when == "before_the_data_files")  # reads no data
])
def test_a_snapshot_replaced_while_it_is_read_is_read_whole(tmp_path, monkeypatch, when,
                                                            reader):
    """``snapshot --out X`` from cron replacing X while ``verify X`` or ``restore --base X``
    reads it: the reader gets the old snapshot or the new one whole, not the manifest
    of one with the files of the other, which used to be called damaged ("torn or
    edited", a size or CRC-32 mismatch): ``verify`` exited 1 on an intact snapshot, a
    ``--snapshots`` restore warned of damage and passed it over."""
    from gpu_pitr import snapshot

    old = _restore(tmp_path, [w.Ins("a", w.f32(1, 2), None, 1)], name="w1")
    new = _restore(tmp_path, [w.Ins(f"id{k}", w.f32(k, k), {"k": "v"}, k + 1)
                              for k in range(50)], name="w2")
    out = tmp_path / "X"
    write_snapshot(out, old, position=POSITION)
    real_read, real_open, swaps = fmt._read_small, fmt._open_checked, []

    def replace_once():
        if not swaps:
            swaps.append(1)
            write_snapshot(out, new, position={**POSITION, "offset": 999})

    def read_small(path, limit):
        got = real_read(path, limit)
        if when == "between_the_manifest_files" and path.name == MANIFEST:
            replace_once()
        return got

    def open_checked(path, size):
        if when == "before_the_data_files":
            replace_once()
        return real_open(path, size)

    monkeypatch.setattr(fmt, "_read_small", read_small)
    monkeypatch.setattr(fmt, "_open_checked", open_checked)
    if reader == "load":
        _same(new, load_snapshot(out))
    elif reader == "verify":
        assert snapshot.verify(out)["count"] == len(new)
    else:
        assert read_manifest(out)["position"]["offset"] == 999
    assert swaps


def test_failed_swap_puts_the_old_snapshot_back(snap, monkeypatch):
    index = _restore(snap.parent, [w.Ins("new", w.f32(1), None, 1)], name="wal2")
    before = _contents(snap.parent)
    real, calls = os.rename, []

    def failing(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 3:  # tmp -> snap, after snap -> aside
            raise OSError(5, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(fmt.os, "rename", failing)
    with pytest.raises(OSError, match="I/O error"):
        write_snapshot(snap, index, position={})
    monkeypatch.undo()
    assert [c[1].split("-")[0] for c in calls] == ["snap", ".snap.old", "snap", "snap"]
    assert _contents(snap.parent) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_dirs_of_dead_writers_are_cleaned(snap):
    dead, parent = _dead_pid(), snap.parent
    (parent / f".snap.tmp-{dead}-abcd").mkdir()
    (parent / f".snap.tmp-{dead}-abcd" / VECTORS).write_bytes(b"half")
    live = parent / f".snap.tmp-{os.getpid()}-beef"
    live.mkdir()
    other = parent / f".other.tmp-{dead}-abcd"
    other.mkdir()
    # A dead writer that moved the old snapshot aside and never put the new one in:
    os.rename(snap, parent / f".snap.old-{dead}-0123")
    remove_stale_dirs(snap, fmt.is_snapshot, fmt.SNAPSHOT_FILES.__contains__)
    assert load_snapshot(snap).position == POSITION  # put back
    assert _hidden(parent) == [".other.tmp-" + f"{dead}-abcd", live.name]
    index = _restore(parent, [w.Ins("new", w.f32(1), None, 1)], name="wal2")
    write_snapshot(snap, index, position={})
    assert _hidden(parent) == [".other.tmp-" + f"{dead}-abcd", live.name]


def test_a_snapshot_set_aside_by_a_killed_replacement_is_named_when_it_is_missing(snap):
    """A write killed between its two renames left the old snapshot aside, hidden, and
    none in its place: a restore with --base said only "not a snapshot directory" (the
    next write of the name puts it back). The error now says where it is."""
    dead, parent = _dead_pid(), snap.parent
    aside = parent / f".snap.old-{dead}-0123abcd"
    os.rename(snap, aside)
    with pytest.raises(SnapshotError) as err:
        load_snapshot(snap)
    assert str(err.value) == (
        f"{snap}: not a snapshot directory (a write that was replacing it was killed: the "
        f"snapshot it replaced is {aside}; rename it back, or write the snapshot again)")
    os.rename(aside, snap)
    assert load_snapshot(snap).position == POSITION
    (parent / "gone").mkdir()
    with pytest.raises(SnapshotError, match=r"gone/manifest.json"):  # no hint: nothing aside
        load_snapshot(parent / "gone")


def test_a_fifo_or_directory_where_a_snapshot_file_belongs_is_named_not_waited_on(snap):
    """A FIFO in a snapshot blocked the open of every restore, verify and expire (which
    holds the archive's lock meanwhile) for ever."""
    for name in (MANIFEST, MANIFEST_CRC, VECTORS, IDS):
        saved = (snap / name).read_bytes()
        (snap / name).unlink()
        os.mkfifo(snap / name)
        with pytest.raises(SnapshotError, match=rf"{re.escape(name)}: is a FIFO, not a "
                                                "regular file"):
            load_snapshot(snap)
        (snap / name).unlink()
        (snap / name).mkdir()
        with pytest.raises(SnapshotError, match=rf"{re.escape(name)}: is a directory"):
            load_snapshot(snap)
        (snap / name).rmdir()
        (snap / name).write_bytes(saved)
    assert load_snapshot(snap).position == POSITION


def test_unstorable_inputs_touch_nothing(tmp_path):
    index = _rich(tmp_path)
    before = w.dir_state(tmp_path)
    with pytest.raises(TypeError):
        write_snapshot(tmp_path / "s", index, position={"x": object()})
    with pytest.raises(ValueError):
        write_snapshot(tmp_path / "s", index, position={"x": float("nan")})
    with pytest.raises(TypeError, match="position must be a dict"):
        write_snapshot(tmp_path / "s", index, position=None)
    assert w.dir_state(tmp_path) == before


@pytest.mark.parametrize("start", range(0, 9))
def test_null_maps_read_from_the_validity_bitmap_at_any_offset(start) -> None:
    # Rows are read from Arrow's validity bitmap (bit order, slice offsets), the
    # answer pyarrow's own is_valid() gives.
    maps = [None, [("a", "b")], None, [], [("c", "d")], None, None, [("e", "")]] * 3
    arr = pa.array(maps, type=pa.map_(pa.string(), pa.string())).slice(start, 13)
    assert snap_arrow._validity(arr).tolist() == arr.is_valid().to_pylist()
    whole = pa.array([[("a", "b")]] * 5, type=pa.map_(pa.string(), pa.string()))
    assert snap_arrow._validity(whole.slice(start % 5)).all()


def test_a_file_system_that_cannot_map_the_files_gets_them_read(tmp_path, monkeypatch):
    """Restores map a base's files; where mapping fails (some FUSE or network file
    systems), they are read instead, checksums and all."""
    from gpu_pitr import snapshot
    from gpu_pitr.synth import write_synthetic_wal

    d = tmp_path / "wal"
    write_synthetic_wal(d, total_bytes=1 << 19, segments=2, dim=4)
    full = gpu_pitr.restore(d, backend="cpu")
    snapshot.save(gpu_pitr.restore(d, backend="cpu", to_time=1_700_000_003), tmp_path / "s")

    def no_map(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(np, "memmap", no_map)
    loaded = load_snapshot(tmp_path / "s", mmap=True)
    assert loaded.vectors.flags.writeable  # read, not mapped
    got = gpu_pitr.restore(d, backend="cpu", base=tmp_path / "s")
    assert got.id_list() == full.id_list()
    assert got.vectors.tobytes() == full.vectors.tobytes()
    vec = tmp_path / "s" / "vectors.f32"
    data = bytearray(vec.read_bytes())
    data[5] ^= 0x10
    vec.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="CRC-32 mismatch"):
        load_snapshot(tmp_path / "s", mmap=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.one_of(st.integers(0, 40), st.integers(2**64 - 4, 2**64 - 1)),
                         max_size=12), max_size=6))
def test_seq_runs_are_the_runs_of_what_was_added(batches):
    """``SeqRuns.add``: each chunk's sequence numbers (in log order, the number kept
    from the chunk before in front) become runs of consecutive numbers (a number
    repeated stays in its run), the last one kept apart; the largest uint64 has no
    successor. Against one plain loop over every chunk's numbers, and ``merged()``
    against every number added but the last."""
    from gpu_pitr.snapshot.base import SeqRuns, merge_runs

    runs = SeqRuns()
    for b in batches:
        runs.add(np.array(b, np.uint64))
    everything = [x for b in batches for x in b]
    want = []
    for x in everything[:-1]:
        if want and x == want[-1][1]:
            continue  # the same number again: covered (zero-filled records: seq 0)
        if want and want[-1][1] != 2**64 - 1 and x == want[-1][1] + 1:
            want[-1][1] = x
        else:
            want.append([x, x])
    last = everything[-1] if everything else None
    assert runs.runs == want
    assert runs.last == last
    everything = [x for b in batches for x in b][:-1]
    assert runs.merged() == merge_runs([[x, x] for x in everything])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.one_of(st.integers(0, 60), st.integers(2**64 - 4, 2**64 - 1)),
                         max_size=30), max_size=6))
# Found by the search: the first add alone passes the bound (its hull stays), the last
# one's numbers merge to 8 runs.
@example(batches=[[0, 2, 4, 6, 8, 10, 12, 14, 2**64 - 4, 0], [1, 0]])
def test_seq_runs_past_the_bound_cover_what_was_added(batches):
    """Past ``MAX_SEQ_RUNS`` (8 here) the runs are merged as arrays, then kept as their
    hull: never more than the bound, every number added (but the last) covered."""
    from gpu_pitr.snapshot import base

    real = base.MAX_SEQ_RUNS
    base.MAX_SEQ_RUNS = 8
    added: list[int] = []
    widest = 0  # the most merged runs the numbers covered so far needed, after any add
    try:
        runs = base.SeqRuns()
        for b in batches:
            runs.add(np.array(b, np.uint64))
            assert len(runs.runs) <= 8
            added += b
            widest = max(widest, len(base.merge_runs([[x, x] for x in added[:-1]])))
    finally:
        base.MAX_SEQ_RUNS = real
    everything = added[:-1]
    exact = base.merge_runs([[x, x] for x in everything])
    merged = runs.merged()
    assert all(base.seq_covered(merged, x) for x in everything)
    if widest <= 8:  # merging alone kept them under the bound at every add: no hull
        assert merged == exact


def test_a_million_zero_filled_records_are_one_run():
    """Records of 12 zero bytes all have seq 0 (``--skip-corrupt`` goes past them): one
    run, not one a record (5.5M of them took 9 s as Python lists)."""
    from gpu_pitr.snapshot.base import SeqRuns

    runs = SeqRuns(last=41)
    for _ in range(4):
        runs.add(np.zeros(1_000_000, np.uint64))
    assert runs.runs == [[41, 41], [0, 0]] and runs.last == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=80), st.data())
def test_order_check_finds_the_first_id_out_of_order(ids, data):
    """The load's order check (rows cut into parts on the Numba threads) names the first
    row whose id is not greater than the one before it, as a plain loop does: ids
    sorted, then perhaps two swapped or one repeated."""
    ids = sorted(set(ids))
    if len(ids) > 1 and data.draw(st.booleans()):
        k = data.draw(st.integers(1, len(ids) - 1))
        if data.draw(st.booleans()):
            ids[k - 1], ids[k] = ids[k], ids[k - 1]
        else:
            ids[k] = ids[k - 1]
    lens = np.array([len(x) for x in ids], np.int64)
    offs = np.cumsum(lens) - lens
    arena = np.frombuffer(b"".join(ids) + b"\0", np.uint8).copy()
    want = next((i for i in range(1, len(ids)) if ids[i - 1] >= ids[i]), -1)
    assert fmt._first_unsorted(arena, offs, lens) == want


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=70), max_size=12), st.sampled_from([1, 7, 16, 64]))
def test_files_are_checksummed_block_by_block_as_they_are_written(tmp_path, monkeypatch,
                                                                    pieces, block):
    """Writes of any sizes, across block ends: the manifest entry holds the CRC-32
    of each block of the file's bytes, as a reader checks them."""
    monkeypatch.setattr(fmt, "BLOCK_SIZE", block)
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
    with open(path, "xb") as f:
        sink = fmt._Checksummed(f)
        for piece in pieces:
            assert sink.write(piece) == len(piece)
        entry = sink.finish()
    data = path.read_bytes()
    assert data == b"".join(pieces) and entry["size"] == len(data)
    assert entry["crc32"] == [f"{zlib.crc32(data[a:a + block]):08x}"
                              for a in range(0, len(data), block)]


def test_arrow_files_are_written_as_arrow_builds_them_in_memory(tmp_path, monkeypatch):
    """Streamed into the file through the checksumming sink, the ids' and metadata's
    Arrow IPC files are byte for byte what Arrow's own in-memory writer makes."""
    monkeypatch.setattr(fmt, "BLOCK_SIZE", 100)
    index = _rich(tmp_path)
    for name, field, arrays in (
            ("ids", pa.field("id", pa.large_string(), nullable=False),
             [snap_arrow.ids_array(index)]),
            ("meta", pa.field("metadata", pa.map_(pa.string(), pa.string())),
             snap_arrow.metadata_chunks(index, limit=9))):  # two arrays
        entry = fmt._write_ipc(tmp_path / name, pa, field, arrays)
        sink = pa.BufferOutputStream()
        schema = pa.schema([field])
        with pa.ipc.new_file(sink, schema) as writer:
            for arr in arrays:
                writer.write_batch(pa.record_batch([arr], schema=schema))
        want = sink.getvalue().to_pybytes()
        assert (tmp_path / name).read_bytes() == want and entry["size"] == len(want)
        assert len(entry["crc32"]) == -(-len(want) // 100)


@pytest.mark.parametrize("rows", [1, 2, 1 << 20])
def test_metadata_batches_made_a_group_of_rows_at_a_time_load_the_same(tmp_path,
                                                                       monkeypatch, rows):
    """metadata.arrow written a group of rows at a time, as record batches made as
    they are written: the same maps load back, in as many batches as groups."""
    monkeypatch.setattr(fmt, "META_BATCH_ROWS", rows)
    index = _rich(tmp_path)
    out = write_snapshot(tmp_path / "s", index, position={})
    _same(index, load_snapshot(out))
    with pa.ipc.open_file(pa.memory_map(str(out / METADATA))) as reader:
        assert reader.num_record_batches == -(-len(index) // rows)
