"""The same WAL and target give the same bytes out, however the restore is run.

Repeated runs, chunk sizes (records split across pieces, open transactions carried
between them, tables refilled), the cpu and cuda executors (the latter in the
simulator), and Numba thread counts (the cpu host map shards ids by thread count) all
give identical ids, vector bits, metadata and report (timings aside); the ``.npz``
files written by ``gpu-pitr restore`` hold byte-identical arrays.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import fuzzing
import numpy as np
import pytest

import gpu_pitr
from gpu_pitr.synth import write_synthetic_wal

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wals(tmp_path_factory) -> dict[str, str]:
    """A synthetic WAL (batches, transactions, upserts, deletes, metadata, three
    segments) and the fuzzer's hand-built seeds (awkward ids and float bits, restarts,
    real 64-bit key collisions, hundreds of tiny records and long-open transactions)."""
    root = tmp_path_factory.mktemp("determinism")
    out = {}
    synth = root / "synth"
    write_synthetic_wal(synth, total_bytes=100_000, dim=8, segments=3, seed=5)
    out["synth"] = str(synth)
    for name in ("builder", "collide", "flat"):
        out[name] = fuzzing.write_files(fuzzing.seed(name).files, root / name)
    return out


TARGETS = {"latest": {}, "time": {"to_time": 1_700_000_001}, "builder-time": {"to_time": 110}}


def result(idx, keep_backend: bool = True) -> dict:
    """Everything a restore returns, as plain bytes and values (timings left out)."""
    host = idx.to_host()
    report = host.report.to_dict()
    report.pop("timings")
    if not keep_backend:
        report.pop("backend")
        report.pop("message")
    return {
        "ids": host.id_list(),
        "vectors": np.ascontiguousarray(np.asarray(host.vectors, dtype="<f4")).tobytes(),
        "shape": np.asarray(host.vectors).shape,
        "metadata": host.metadata_json().tolist(),
        "report": report,
    }


def restored(wal: str, **kw) -> dict:
    keep = kw.pop("keep_backend", True)
    return result(gpu_pitr.restore(wal, allow_incomplete_history=True, **kw), keep)


@pytest.mark.parametrize("name", ["synth", "builder", "collide", "flat"])
def test_repeated_restores_are_identical(wals, name):
    first = restored(wals[name], backend="cpu")
    assert first["ids"]
    for _ in range(2):
        assert restored(wals[name], backend="cpu") == first


@pytest.mark.parametrize(
    "name, chunks",
    [
        ("synth", [4096, 1 << 20, None]),
        ("builder", [64, 1000, 1 << 20, None]),
        ("collide", [64, 1000, None]),
        ("flat", [64, 1000, 4096, None]),
    ],
)
def test_chunk_sizes_give_identical_results(wals, name, chunks):
    for target in ("latest", "time"):
        kw = TARGETS["builder-time" if name == "builder" and target == "time" else target]
        results = {c: restored(wals[name], backend="cpu", chunk_bytes=c, **kw) for c in chunks}
        base = results[None]
        for c, got in results.items():
            assert got == base, (name, target, c)


@pytest.mark.parametrize("name", ["builder", "collide", "flat"])
def test_cpu_and_cuda_executors_give_identical_results(wals, name):
    """The CUDA kernels run in the simulator here (tests/conftest.py); on ``collide`` the
    cuda executor meets a real 64-bit key collision and hands the restore to the cpu."""
    cpu = restored(wals[name], backend="cpu", keep_backend=False)
    cuda_idx = gpu_pitr.restore(wals[name], backend="cuda", allow_incomplete_history=True)
    assert cuda_idx.report.backend == ("cpu" if name == "collide" else "cuda")
    assert result(cuda_idx, keep_backend=False) == cpu


_CHILD = """
import sys
from gpu_pitr.cli import main
from gpu_pitr.resolve.hostmap import HostMap
print("shards", HostMap(0).n_shards, flush=True)
sys.exit(main(sys.argv[1:]))
"""


def npz_members(path: Path) -> dict[str, bytes]:
    """The .npy members of an .npz, as bytes (the zip's own timestamps aside)."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.mark.parametrize("name", ["synth", "collide"])
def test_thread_counts_give_byte_identical_npz(wals, tmp_path, name):
    """``gpu-pitr restore`` with NUMBA_NUM_THREADS 1, 2 and 4 (1, 2 and 4 shards of the
    host map): every array of the .npz is byte for byte the same, the report too but for
    its timings."""
    outs = {}
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.npz"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, "restore", wals[name], "--out", str(out),
             "--backend", "cpu", "--quiet", "--allow-incomplete-history"],
            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[:2] == ["shards", str(threads)]
        outs[threads] = npz_members(out)
    base = outs[1]
    assert set(base) == {"ids.npy", "vectors.npy", "metadata.npy", "report.npy"}
    n = len(np.load(io.BytesIO(base["ids.npy"])))
    assert n > (100 if name == "synth" else 3)
    for threads, members in outs.items():
        for member in ("ids.npy", "vectors.npy", "metadata.npy"):
            assert members[member] == base[member], (threads, member)
        reports = [json.loads(str(np.load(io.BytesIO(m["report.npy"])))) for m in (members, base)]
        for r in reports:
            r.pop("timings")
        assert reports[0] == reports[1], threads


def comparable(out: Path) -> dict:
    """What README's "Comparing two restores" says to compare, for every format of a
    restore written under ``out``; the rest, checked equal but for what must differ."""
    import pyarrow.parquet as pq

    got = {}
    with zipfile.ZipFile(out / "i.npz") as z:
        for info in z.infolist():
            if info.filename != "report.npy":
                got["npz crc " + info.filename] = info.CRC
        report = json.loads(str(np.load(io.BytesIO(z.read("report.npy")))))
    raw = (out / "i.parquet").read_bytes()
    footer = int.from_bytes(raw[-8:-4], "little")
    got["parquet pages"] = raw[:len(raw) - 8 - footer]
    got["parquet table"] = pq.read_table(out / "i.parquet").replace_schema_metadata(None)
    parquet_report = json.loads(pq.read_schema(out / "i.parquet").metadata[b"gpu_pitr.report"])
    for name in ("i.faiss", "i.faiss.ids.jsonl"):
        got[name] = (out / name).read_bytes()
    snap = out / "snap"
    manifest = json.loads((snap / "manifest.json").read_text(encoding="utf-8"))
    for name in ("vectors.f32", "ids.arrow", "metadata.arrow", "pending.wal"):
        got["snapshot " + name] = (snap / name).read_bytes()
    got["manifest files"] = manifest["files"]
    got["manifest position"] = manifest["position"]
    json_report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for r in (report, parquet_report, manifest["report"], json_report):
        r.pop("timings")
    got["reports"] = [report, parquet_report, manifest["report"], json_report]
    manifest.pop("created")
    manifest["report"].pop("backend")
    got["manifest"] = manifest
    return got


@pytest.mark.parametrize("name", ["synth", "flat"])
def test_outputs_differ_only_where_the_readme_says(wals, tmp_path, name):
    """Every format written from restores with other chunk sizes and executors: the parts
    README's "Comparing two restores" names are byte for byte the same, and the reports
    (in the .npz, the .parquet, the snapshot and --report-json) differ only in timings."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("faiss")
    from gpu_pitr.outputs import write_json, write_output

    runs = {}
    for label, kw in {"whole": {}, "small chunks": {"chunk_bytes": 4096},
                      "cuda": {"backend": "cuda"}}.items():
        kw.setdefault("backend", "cpu")
        idx = gpu_pitr.restore(wals[name], allow_incomplete_history=True, **kw).to_host()
        out = tmp_path / label.replace(" ", "_")
        out.mkdir()
        for fmt, file in (("npz", "i.npz"), ("parquet", "i.parquet"), ("faiss", "i.faiss"),
                          ("snapshot", "snap")):
            write_output(idx, out / file, fmt)
        write_json(out / "report.json", idx.report.to_dict())
        runs[label] = comparable(out)
    base = runs["whole"]
    for label, got in runs.items():
        if label == "cuda":
            for r in got["reports"] + base["reports"]:
                r.pop("backend", None)
        assert got.keys() == base.keys()
        for key in base:
            if key == "parquet table":
                assert got[key].equals(base[key]), (label, key)
            else:
                assert got[key] == base[key], (label, key)


def test_a_torn_tail_found_early_counts_the_bytes_as_a_whole_read(tmp_path):
    """A record whose length runs past the end of its file is a torn tail as soon as a
    piece frames its header, and the rest of the file is not read: ``bytes_read``
    counted only the pieces read, 80 bytes at 64-byte pieces against the file's 385 read
    whole, so the report changed with ``chunk_bytes``."""
    import struct

    from gpu_pitr.format.entries import Insert
    from gpu_pitr.format.writer import WalWriter

    wal = tmp_path / "wal"
    with WalWriter(wal, created=1_700_000_000, clock=lambda: 1_700_000_000) as writer:
        writer.append(Insert(id="a", vector=np.ones(4, np.float32), metadata=None,
                             timestamp=1_700_000_000))
    (seg,) = wal.glob("wal-*.log")
    with open(seg, "ab") as f:  # seq 1, 10,000 bytes declared, 300 there
        f.write(struct.pack("<QI", 1, 10_000) + bytes(range(256)) + bytes(44))
    reports = []
    for chunk in (64, 4096, None):
        doc = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk).report.to_dict()
        doc.pop("timings")
        reports.append(doc)
    assert reports[0]["bytes_read"] == seg.stat().st_size
    assert reports[0]["torn_tails"][0]["bytes_lost"] == 312
    assert reports[0] == reports[1] == reports[2]
