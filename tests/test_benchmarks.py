"""The benchmark scripts run end to end on tiny inputs (their numbers are not checked:
benchmarks print, they never assert a time), and their correctness checks hold."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_bench_small_restores_every_id(tmp_path):
    out = tmp_path / "small.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_small.py"), "--inserts", "3000", "--updates",
         "600", "--dim", "8", "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "expected 3000" in proc.stdout and "EXPECTED" not in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["ids"] == 3000 and len(doc["restore_runs_s"]) == 2 and len(doc["cli_s"]) == 3


def test_bench_early_target_compares_both_ways_on_one_index(tmp_path):
    out = tmp_path / "early.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_early_target.py"), "--size", "2M", "--dim",
         "8", "--repeat", "1", "--fractions", "0.1,0.9", "--dir", str(tmp_path / "wal"),
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "every pair gave the same index" in proc.stdout
    doc = json.loads(out.read_text())
    early, late = doc["targets"]
    assert early["bytes_read"]["read_on"] == late["bytes_read"]["read_on"] == doc["log_bytes"]
    for r in (early, late, doc["from_snapshot"]):
        assert r["equal"] is True
        assert r["bytes_read"]["stop"] < r["bytes_read"]["read_on"]
    assert early["bytes_read"]["stop"] < doc["log_bytes"] * 0.2 < late["bytes_read"]["stop"]


def test_bench_measures_a_small_wal_and_its_snapshot(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "--size", "3M", "--dim", "16",
         "--segments", "2", "--dir", str(tmp_path / "wal"), "--backend", "cpu",
         "--skip", "reference", "--skip", "cli", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "matches generator" in proc.stdout, proc.stdout
    doc = json.loads(out.read_text())
    assert doc["snapshot"]["equal"] is True
    # The snapshot's ratio is taken between medians of three alternated runs a side.
    assert len(doc["snapshot"]["full_runs"]) == len(doc["snapshot"]["base_runs"]) == 3
    assert "runs, alternated" in proc.stdout
    assert doc["restore_thp"]["runs"][0]["ids"] == doc["restore"]["runs"][0]["ids"]


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pure_python_replay_is_compared_with_the_restore(tmp_path):
    """The replay's sample is checked against a restore to its last record, content and
    all (the restore phases only count ids), and a difference is named."""
    import numpy as np

    import gpu_pitr
    from gpu_pitr.synth import write_synthetic_wal

    bench = _bench_module()
    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=1 << 20, dim=8, segments=2, seed=2)
    a = {"dir": str(wal), "sample_records": 900, "restore_impl": "gpu_pitr:restore",
         "backend": "cpu"}
    got = bench.phase_reference(a)
    assert got["records"] == 900 and got["ids"] > 0
    assert got["same_as_restore"] == "same"
    index = gpu_pitr.restore(wal, to_seq=got["restore_to_seq"], backend="cpu")
    state = {k: (np.array(v), m) for k, v, m in
             zip(index.id_list(), index.vectors, index.metadata, strict=True)}
    assert bench._same_as_restore(a, state, got["restore_to_seq"]) == "same"
    first = index.id_list()[0]
    state[first][0][0] += 1
    assert bench._same_as_restore(a, state, got["restore_to_seq"]) == \
        f"vector of {first!r} differs"
    del state[first]
    assert bench._same_as_restore(a, state, got["restore_to_seq"]).startswith("ids differ")


def test_the_raw_read_uses_a_small_buffer_and_warm_passes(tmp_path):
    """A read into a buffer larger than the caches also times writing every byte to
    DRAM (~1.4x slower here), which flatters each "x the raw read"."""
    from gpu_pitr.synth import write_synthetic_wal

    bench = _bench_module()
    write_synthetic_wal(tmp_path / "wal", total_bytes=1 << 20, dim=8, segments=2, seed=2)
    got = bench.phase_read({"dir": str(tmp_path / "wal"), "drop_cache": False})
    assert got["buffer_bytes"] <= 1 << 20
    assert len(got["passes"]) == 1 + bench.WARM_PASSES >= 3
    assert bench.warm_read(got["passes"]) in got["passes"][1:]


def test_the_huge_page_comparison_runs_both_choices(tmp_path):
    from gpu_pitr.format.entries import Insert
    from gpu_pitr.format.writer import WalWriter

    with WalWriter(tmp_path / "wal") as w:
        for i in range(50):
            w.append(Insert(f"id{i}", [float(i)] * 4, None, i))
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "ab_hugepages.py"), str(tmp_path / "wal"), "--pairs",
         "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum("50 ids" in line for line in lines) == 4
    assert lines[-1].startswith("own choice / forced off: ")


def test_the_live_soak_runs_rounds_and_ends_with_a_clean_archive(tmp_path):
    """Whether a round failed beside the writer depends on the host's speed (the script
    prints it); that the archive is whole and clean once the writer has stopped does
    not."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "live_soak.py"), "--seconds", "2", "--dir",
         str(tmp_path / "soak")], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    assert " rounds beside a writer of " in lines[0] and int(lines[0].split()[0]) >= 1
    assert [line.split()[-1] for line in lines if line.startswith("final ")] == ["ok", "ok"]
    from gpu_pitr.verify import verify_wal

    assert verify_wal(tmp_path / "soak" / "arc").problems == []


def test_the_scale_out_bench_joins_shards_equal_to_one_process(tmp_path):
    pytest.importorskip("distributed")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_scaleout.py"), "--size", "2M", "--workers", "2",
         "--shards", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("3 shards on 2 workers") for line in lines), proc.stdout
    dataset = [line for line in lines if line.startswith("the workers write a dataset")]
    assert len(dataset) == 1 and dataset[0].endswith("rows equal"), proc.stdout
    assert lines[-1].split()[-1] == "yes", proc.stdout
