"""Restores on a Dask cluster (``gpu_pitr.scaleout``, ``restore --dask-scheduler``).

A ``LocalCluster`` of two worker processes runs the shards; the result must equal
the restore in this process exactly, an error in the log must come back as the same
one-line error, and the command line must write the same output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import CorruptRecordError, WalError
from gpu_pitr.scaleout import restore_on_dask, restore_sharded, restore_with_scheduler
from gpu_pitr.synth import write_synthetic_wal

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaleout") / "wal"
    write_synthetic_wal(path, total_bytes=2 << 20, dim=8, seed=11)
    return path


@pytest.mark.parametrize("shards", [None, 1, 3])
def test_the_cluster_restores_what_one_process_does(client, wal, shards):
    stats = gpu_pitr.restore(wal, backend="cpu")
    mid = int(stats.report.last_commit_timestamp) - 5
    for kw in ({}, {"to_time": mid}, {"to_time": mid, "exclusive": True}):
        want = gpu_pitr.restore(wal, backend="cpu", **kw)
        got = restore_on_dask(client, wal, shards=shards, backend="cpu", **kw)
        assert w.index_view(got) == w.index_view(want)
        assert got.report.stop == want.report.stop
        assert (got.report.ids, got.report.inserts, got.report.deletes) == (
            want.report.ids, want.report.inserts, want.report.deletes)
        timings = got.report.timings  # the wall time from the call, the join apart
        assert timings["total"] >= timings["gather"] > 0 and timings["total"] >= max(
            v for k, v in timings.items() if k not in ("total", "gather"))


def test_the_shards_stay_on_the_workers_until_gathered(client, wal):
    run = restore_sharded(client, wal, shards=4, backend="cpu")
    try:
        assert len(run.futures) == 4
        assert len(run) == len(gpu_pitr.restore(wal, backend="cpu"))
        sizes = client.gather([client.submit(len, f) for f in run.futures])
        assert sum(sizes) == len(run) and min(sizes) > 0
        assert run.report.id_shard is None and run.report.ids == len(run)
    finally:
        run.release()


def test_from_a_base_snapshot_on_the_cluster(client, wal, tmp_path):
    part = gpu_pitr.restore(wal, backend="cpu", to_seq=1000)
    snapshot.save(part, tmp_path / "snap")
    want = gpu_pitr.restore(wal, backend="cpu")
    got = restore_on_dask(client, wal, shards=3, backend="cpu", base=tmp_path / "snap")
    assert w.index_view(got) == w.index_view(want) and got.report.base is not None
    with pytest.raises(ValueError, match="path the workers can read"):
        restore_sharded(client, wal, base=snapshot.load(tmp_path / "snap"))
    # --snapshots: every shard picks the same one, passing over a damaged newer one.
    snaps = tmp_path / "snaps"
    snapshot.save(part, snaps / "a")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2000), snaps / "b")
    with open(snaps / "b" / "vectors.f32", "r+b") as f:
        f.write(b"\xff")
    want = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps)
    got = restore_on_dask(client, wal, shards=2, backend="cpu", snapshots=snaps)
    assert w.index_view(got) == w.index_view(want)
    assert got.report.base["path"] == want.report.base["path"] == str(snaps / "a")
    assert got.report.message == want.report.message and "is damaged" in got.report.message
    assert got.report.warnings == want.report.warnings


def test_an_error_in_the_log_comes_back_whole(client, tmp_path):
    builder = w.LogBuilder()
    builder.add(w.Ins("a", [1.0], None, 1))
    builder.add_payload(b"\x63")  # variant 99: no entry has that number
    builder.add(w.Ins("b", [2.0], None, 2))
    wal = builder.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError) as local:
        gpu_pitr.restore(wal)
    with pytest.raises(CorruptRecordError) as remote:
        restore_on_dask(client, wal, shards=2)
    assert (remote.value.file, remote.value.offset, remote.value.seq) == (
        local.value.file, local.value.offset, local.value.seq)
    assert str(remote.value) == str(local.value)


def test_the_command_line_on_a_cluster(client, wal, tmp_path):
    address = client.scheduler.address
    cmd = [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--backend", "cpu", "-q"]
    local = subprocess.run([*cmd, "--out", str(tmp_path / "one.npz")], capture_output=True,
                           text=True)
    assert local.returncode == 0, local.stderr
    remote = subprocess.run([*cmd, "--out", str(tmp_path / "many.npz"), "--dask-scheduler",
                             address, "--shards", "3"], capture_output=True, text=True)
    assert remote.returncode == 0, remote.stderr
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "many.npz") as b:
        for key in ("ids", "vectors", "metadata"):
            assert np.array_equal(a[key], b[key]), key
    usage = subprocess.run([*cmd, "--out", str(tmp_path / "x.npz"), "--shards", "2"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "--shards: needs --dask-scheduler" in usage.stderr


def test_a_scheduler_that_does_not_answer_is_one_line(wal):
    with pytest.raises(OSError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        restore_with_scheduler("tcp://127.0.0.1:9", wal, timeout="1s")


def test_bad_arguments_are_refused(client, wal):
    with pytest.raises(ValueError, match="shards must be"):
        restore_sharded(client, wal, shards=0)
    for name in ("progress", "id_shard"):
        with pytest.raises(ValueError, match=f"takes no {name}"):
            restore_sharded(client, wal, **{name: None})
    with pytest.raises(TypeError, match="to_tme"):
        restore_sharded(client, wal, to_tme=5)


def test_an_index_travels_as_its_arrays(wal):
    from distributed.protocol import deserialize, serialize

    index = gpu_pitr.restore(wal, backend="cpu", to_seq=1500)
    header, frames = serialize(index)
    assert header["serializer"] == "dask"  # not pickled: see scaleout._register_with_dask
    back = deserialize(header, [bytes(f) for f in frames])
    assert w.index_view(back) == w.index_view(index) and back.vectors.shape == index.vectors.shape
    assert back.report.to_dict() == index.report.to_dict()
    assert (back.position, back.pending) == (index.position, index.pending)


def test_a_path_the_workers_cannot_see_is_named_before_any_shard_runs(client, tmp_path):
    with pytest.raises(WalError, match="not a directory on any Dask worker") as err:
        restore_sharded(client, tmp_path / "nowhere", shards=2)
    assert err.value.file == str(tmp_path / "nowhere")
    with pytest.raises(WalError, match="same path on every worker"):
        restore_sharded(client, tmp_path, base=tmp_path / "no-snapshot")
    # One worker without the directory: it is named.
    address = sorted(client.scheduler_info()["workers"])[0]
    client.run(lambda: setattr(os.path, "_gpu_pitr_isdir", os.path.isdir), workers=[address])
    client.run(lambda: setattr(os.path, "isdir", lambda p: False), workers=[address])
    try:
        with pytest.raises(WalError, match=f"the Dask worker\\(s\\) {address}:"):
            restore_sharded(client, tmp_path, shards=2)
    finally:
        client.run(lambda: setattr(os.path, "isdir", os.path._gpu_pitr_isdir),
                   workers=[address])


def test_bad_shard_counts_on_the_command_line_are_usage_errors(wal, tmp_path):
    for bad in ("0", "x", "-1", "65537"):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
                               str(tmp_path / "x.npz"), "--dask-scheduler", "tcp://127.0.0.1:9",
                               "--shards", bad], capture_output=True, text=True)
        assert proc.returncode == 2 and "is not a number of shards" in proc.stderr, bad


def test_errors_pickle_whole():
    """What a worker raises comes back with its file, offset and seq (the one-line
    OSErrors failed to unpickle before: their __init__ takes other arguments)."""
    import errno
    import pickle

    from gpu_pitr.errors import FileReadError, FileShrankError, OutputError

    for err in (CorruptRecordError("bad varint", file="/w/wal-1.log", offset=5, seq=3),
                FileReadError("/w/wal-1.log", 7, OSError(errno.EIO, "I/O error")),
                OutputError("/o/x.npz", "npz", OSError(errno.ENOSPC, "full")),
                FileShrankError("/w/wal-1.log", 3, 10)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)
        if isinstance(err, OSError):
            assert (back.errno, back.filename) == (err.errno, err.filename)


def test_relative_paths_are_the_callers(client, wal, monkeypatch):
    # The workers' working directories are their own: paths are made absolute first.
    monkeypatch.chdir(wal.parent)
    got = restore_on_dask(client, wal.name, shards=2, backend="cpu")
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))
