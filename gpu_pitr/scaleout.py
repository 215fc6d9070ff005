"""Restores on a Dask cluster: one shard of the ids per worker (the ``dask`` extra).

``restore_sharded(client, wal_dir, shards=N, ...)`` runs ``gpu_pitr.restore(wal_dir,
id_shard=(k, N), ...)`` as N tasks, shard k on worker k (round robin over the
workers; another one if that worker goes away). Each shard reads the whole log and
keeps about 1/N of the index (``resolve.idshard``), so an index larger than one
GPU, or one host, restores across several: with ``dask-cuda``'s one worker per GPU
and ``backend="cuda"``, each shard's vectors stay on its worker's device.
``ShardedRestore.gather()`` joins the shards into the index a restore without shards
gives (host memory); ``restore_on_dask`` does both.

``ShardedRestore.to_parquet`` has each worker write its shards as files of one
Parquet dataset instead, for an index larger than the caller can hold.

WAL_DIR, and a base snapshot given by path, must be readable at the same path on
every worker (a shared file system or a copy); the workers write nothing but the
dataset ``to_parquet`` asks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gpu_pitr.errors import MissingExtraError, missing_extra, os_reason
from gpu_pitr.resolve.idshard import MAX_SHARDS, first_difference, merge_reports, merge_shards

# One restore at a time in a worker process: a restore uses every core (and the GPU)
# already, and two at once would hold two shards' memory. (On Numba's workqueue layer,
# which ends the process when two threads run parallel code at once, the package's
# own lock, ``jit.OneRegionAtATime``, keeps them apart as well.) A worker with several
# threads, given several shards, runs them one after another.
_ONE_AT_A_TIME = threading.Lock()


def _restore_shard(wal_dir: str, index: int, count: int, kwargs: dict):
    """One shard's restore, on a worker."""
    from gpu_pitr import restore

    with _ONE_AT_A_TIME:
        return restore(wal_dir, id_shard=(index, count), **kwargs)


def _listing(wal_dir: str) -> dict[str, int]:
    from gpu_pitr.format.segments import list_segments

    return {seg.name: seg.size for seg in list_segments(wal_dir)}


def _log_end(client, wal_dir: str) -> dict[str, int]:
    """The log at ``wal_dir`` as the workers list it now, each segment at the most
    bytes one of them sees: every shard reads that log (``restore``'s ``log_end``).
    Each listing its own as it started, the shards of a log being written read
    different logs (they disagree: an error), and a worker's copy that is behind
    fails its shard, naming the segment it lacks."""
    end: dict[str, int] = {}
    for listing in client.run(_listing, wal_dir).values():
        for name, size in listing.items():
            end[name] = max(size, end.get(name, 0))
    return end


def _report_of(index):
    return index.report


# RestoredIndex's arrays, as Dask sends them.
_ARRAYS = ("_id_arena", "_id_offs", "_id_lens", "vectors", "_meta_arena", "_meta_offs",
           "_meta_lens")


def _register_with_dask() -> None:
    """Send a ``RestoredIndex`` between Dask processes as its arrays' bytes (vectors on
    a GPU are copied to the host first). Pickled, as Dask sends objects it has no
    serializer for, a 300 MB shard took 1.1-1.2 s from a worker of a local cluster to
    the client, 0.43 s this way (its vectors alone as an array: 0.31 s)."""
    try:
        from distributed.protocol import dask_deserialize, dask_serialize
    except ImportError:
        return
    import numpy as np

    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.report import RestoreReport

    @dask_serialize.register(RestoredIndex)
    def _serialize(index):
        index = index.to_host()
        arrays = [np.ascontiguousarray(getattr(index, name)) for name in _ARRAYS]
        # The report and position as JSON text: Dask's msgpack would hand lists back
        # as tuples.
        header = {"arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
                  "report": json.dumps(index.report.to_dict()),
                  "position": json.dumps(index.position)}
        frames = [memoryview(a.reshape(-1).view(np.uint8)) for a in arrays]
        return header, [*frames, memoryview(bytes(index.pending))]

    @dask_deserialize.register(RestoredIndex)
    def _deserialize(header, frames):
        arrays = [np.frombuffer(f, np.uint8).view(np.dtype(dtype)).reshape(shape)
                  for (dtype, shape), f in zip(header["arrays"], frames, strict=False)]
        index = RestoredIndex(*arrays, RestoreReport.from_dict(json.loads(header["report"])))
        index.position, index.pending = json.loads(header["position"]), bytes(frames[-1])
        return index


_register_with_dask()


class NoWorkersError(OSError):
    """The Dask cluster has no workers to run the shards on (one line)."""


class StaleWorkersError(OSError):
    """Dask workers run other gpu_pitr code than the caller (one line naming them)."""


class NotASchedulerError(OSError):
    """What answers at ``--dask-scheduler``'s address is not a Dask scheduler (one line)."""


class ShardsDisagreeError(OSError):
    """The shards of one restore read different logs at WAL_DIR: a worker's own copy of
    it that is not the same (one line naming the workers and the path)."""


def _workers(client) -> list[str]:
    try:
        info = client.scheduler_info(n_workers=-1)  # newer clients list 5 by default
    except TypeError:
        info = client.scheduler_info()
    return sorted(info.get("workers", {}))


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _check_cuda(client) -> None:
    """``backend="cuda"``: workers that cannot run the cuda executor, named before any
    shard starts (on a worker, the error would come back only with the shards)."""
    from gpu_pitr.errors import BackendUnavailableError
    from gpu_pitr.executors.device import cuda_unavailable_reason

    reasons = {w: r for w, r in client.run(cuda_unavailable_reason, True).items() if r}
    if reasons:
        first = min(reasons)
        raise BackendUnavailableError(
            f"backend cuda: the Dask worker(s) {', '.join(sorted(reasons))} cannot run the "
            f"cuda executor ({first}: {reasons[first]})")


def _code() -> tuple[str, str]:
    """The version and the source digest of the gpu_pitr this process runs."""
    from gpu_pitr import __version__
    from gpu_pitr.jit import package_digest

    return __version__, package_digest()


def _check_code(client) -> None:
    """Workers that run other gpu_pitr code than this process (a worker started before
    an upgrade, say), named before any shard starts: shards of other code need not
    join into the restore this code gives."""
    here = _code()
    other = {w: c for w, c in client.run(_code).items() if tuple(c) != here}
    if other:
        first = min(other)
        version, digest = other[first]
        raise StaleWorkersError(
            f"the Dask worker(s) {', '.join(sorted(other))} run other gpu_pitr code than "
            f"this process ({first}: version {version}, source digest {digest[:12]}; here: "
            f"{here[0]}, {here[1][:12]}): restart them on the same code")


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _check_pyarrow(client) -> None:
    """Workers without pyarrow, named before any writes a file (on a worker, the
    ImportError would come back as a traceback)."""
    seen = client.run(_has_pyarrow)
    missing = sorted(w for w, ok in seen.items() if not ok)
    if missing:
        raise MissingExtraError(
            f"the Dask worker(s) {', '.join(missing)} have no pyarrow, which writing the "
            "Parquet dataset needs there: pip install 'gpu-pitr[dask]' on every worker")


def _check_paths(client, paths: list[str],
                 why: str = "the log (and a base) must be at the same path on every worker"
                 ) -> None:
    """A path some worker cannot see as a directory is one error naming it and those
    workers, before any shard starts (on a worker, the restore would say only that
    the directory is not there, which it is, here)."""
    from gpu_pitr.errors import WalError

    for path in paths:
        seen = client.run(_is_dir, path)
        missing = sorted(w for w, ok in seen.items() if not ok)
        if missing and len(missing) == len(seen) and not os.path.lexists(path):
            raise WalError("no such directory, here or on any Dask worker", file=path)
        if missing:
            where = ("any Dask worker" if len(missing) == len(seen) else
                     f"the Dask worker(s) {', '.join(missing)}")
            raise WalError(f"not a directory on {where}: {why}", file=path)


#: A Parquet dataset written by the workers (``ShardedRestore.to_parquet``): one file a
#: shard, and the joined report beside them (a name readers of datasets skip: ``_``).
PART_NAME = "part-{index:05d}-of-{count:05d}.parquet"
_PART = re.compile(r"part-\d{5,}-of-\d{5,}\.parquet")
DATASET_REPORT = "_gpu_pitr_report.json"


def _is_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory holding a dataset ``to_parquet`` wrote, and nothing
    else (at least its report)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return DATASET_REPORT in names and all(n == DATASET_REPORT or _PART.fullmatch(n)
                                           for n in names)


def _dataset_name(name: str) -> bool:
    """Whether a file named ``name`` is one ``to_parquet`` writes into a dataset's
    directory: a part, the report, or the temp file of one (``atomic_files``)."""
    from gpu_pitr.tempfiles import temp_pattern

    own = rf"{re.escape(DATASET_REPORT)}|{_PART.pattern}"
    return re.fullmatch(own, name) is not None or temp_pattern(own).fullmatch(name) is not None


def _check_dataset_target(out: Path) -> None:
    """What ``to_parquet`` replaces: nothing, an empty directory, or a dataset it wrote;
    anything else is refused (``FileExistsError``, one line) before a shard is written."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory: not replaced by the "
                              "Parquet dataset")
    if any(out.iterdir()) and not _is_dataset(out):
        raise FileExistsError(f"{out}: is a directory that is neither empty nor a dataset "
                              "gpu-pitr wrote: not replaced")


def _dataset_out(out) -> Path:
    """``out`` made absolute, once what a dataset needs there holds: a target
    ``_check_dataset_target`` accepts, in an existing directory."""
    from gpu_pitr.outputs import no_directory

    out = Path(os.path.abspath(out))
    _check_dataset_target(out)
    if not out.parent.is_dir():
        raise no_directory(out.parent, "the dataset")
    return out


def _write_part(index, path: str, report: str, shown: str, stop: str | None = None) -> int:
    """One shard as one Parquet file, on the worker that holds it (atomic, fsynced).
    Nothing, returning -1, once the Dask event ``stop`` is set: the caller was
    interrupted and waits only for the parts already being written.
    Each file's schema metadata holds the whole restore's report (JSON text ``report``),
    as a ``.parquet`` output's does: a reader of the dataset as one table sees that
    one, not a shard's. A shard without ids gets the whole index's dimension, so that
    every file of the dataset has one schema. An error names the file as it will be
    (``shown``), not the hidden directory it is written in."""
    import numpy as np

    from gpu_pitr.errors import NotSyncedError, OutputError, WalError
    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.outputs import write_output
    from gpu_pitr.report import RestoreReport

    if stop is not None:
        from distributed import Event

        if Event(stop).is_set():
            return -1
    index = index.to_host()
    whole = RestoreReport.from_dict(json.loads(report))
    vectors = index.vectors
    if whole.dim is not None and len(index) == 0 and vectors.shape != (0, whole.dim):
        vectors = np.empty((0, whole.dim), np.float32)
    index = RestoredIndex(index._id_arena, index._id_offs, index._id_lens, vectors,
                          index._meta_arena, index._meta_offs, index._meta_lens, whole)
    try:
        write_output(index, path, "parquet")
    except OutputError as err:
        if isinstance(err.__cause__, NotSyncedError):
            # In place in the dataset's hidden directory, which goes with this error:
            # not "written and in place".
            err = OutputError(path, "parquet output", err.__cause__.cause)
        raise _renamed(err, os.path.dirname(path), os.path.dirname(shown)) from None
    except (OSError, WalError) as err:
        raise _renamed(err, os.path.dirname(path), os.path.dirname(shown)) from None
    return len(index)


def _renamed(err, old: str, new: str):
    """``err`` (a one-line ``OSError`` or a ``WalError``) with the path ``old`` in its
    text written ``new``."""
    from gpu_pitr.errors import WalError

    if isinstance(err, WalError):
        err.file = None if err.file is None else str(err.file).replace(old, new)
        err.what = err.what.replace(old, new)
        err.args = (err._line(),)
    else:
        if err.filename is not None:
            err.filename = str(err.filename).replace(old, new)
        if err.strerror is not None:
            err.strerror = err.strerror.replace(old, new)
    return err


@dataclass
class ShardedRestore:
    """The shards of one restore, as Dask futures (each a ``RestoredIndex``)."""

    client: object
    futures: list
    _report: object = field(default=None, repr=False)
    started: float = field(default_factory=time.perf_counter, repr=False)
    wal_dir: str | None = None

    def __len__(self) -> int:
        return self.report.ids

    @property
    def report(self):
        """The report of the whole restore (the shards' reports joined: counts summed,
        each stage's time that of the slowest shard). Waits for every shard; raises
        the first shard's error, as the restore without shards would raise it, or
        ``ShardsDisagreeError`` when the shards read different logs."""
        if self._report is None:
            reports = self.client.gather([self.client.submit(_report_of, f, pure=False)
                                          for f in self.futures])
            self._check_one_log(reports)
            self._report = merge_reports(reports)
        return self._report

    def _check_one_log(self, reports: list) -> None:
        """Shards that read different logs (a worker with its own copy of WAL_DIR, not
        the others': ``log_end`` pins the segments and their lengths, not what they
        hold) would join, or be written as one dataset, into a state that never
        existed: one error naming the workers, before anything is joined."""
        differs = first_difference(reports)
        if differs is None:
            return
        k, name, got, want = differs
        who = self.client.who_has([self.futures[0], self.futures[k]])
        first, other = (", ".join(who.get(f.key, ())) or "a worker gone since"
                        for f in (self.futures[0], self.futures[k]))
        raise ShardsDisagreeError(
            f"{self.wal_dir}: the Dask workers read different logs there: shard {k}'s "
            f"{name} is {got!r} (on {other}), shard 0's {want!r} (on {first}): the log must "
            "be the same at that path on every worker; nothing was written")

    def gather(self):
        """The whole index in this process (host memory): equal to the restore without
        shards. Raises a shard's error (a ``WalError`` naming file and byte offset).
        Its report's ``timings`` add ``gather`` (fetching and joining the shards here,
        once all are done) and make ``total`` the time since ``restore_sharded``
        was called."""
        from distributed import wait

        if not self.futures:
            raise ValueError("the shards were released: nothing to gather")
        wait(self.futures)
        self.report  # noqa: B018  shards of different logs: said before they travel
        t = time.perf_counter()
        index = merge_shards(self.client.gather(self.futures))
        now = time.perf_counter()
        index.report.timings["gather"] = round(now - t, 6)
        index.report.timings["total"] = round(now - self.started, 6)
        return index

    def to_parquet(self, out) -> Path:
        """Write the index as a Parquet dataset, the directory ``out``: each worker
        writes the shards it holds, ``part-KKKKK-of-NNNNN.parquet`` (the columns of a
        ``.parquet`` output, ids sorted within a file), and this process writes the
        joined report as ``_gpu_pitr_report.json``. ``pyarrow.dataset``,
        ``pandas.read_parquet`` and ``dask.dataframe.read_parquet`` read the directory
        as one table, the index of a restore without shards up to the order of rows.
        No shard passes through this process: for an index larger than it can hold.

        ``out`` must be at the same path on every worker. It appears whole or not at
        all: the files go into a hidden directory beside it, renamed onto ``out`` once
        all are written and fsynced. An empty directory or an earlier dataset there is
        replaced; anything else is refused before a file is written.

        Raises a shard's error (nothing written), or ``OutputError`` naming the file
        that could not be written. Returns ``out`` (absolute)."""
        from distributed import Event, wait

        from gpu_pitr.errors import OutputError, WalError
        from gpu_pitr.outputs import atomic_files
        from gpu_pitr.tempfiles import new_dir

        if not self.futures:
            raise ValueError("the shards were released: nothing to write")
        report = self.report  # a shard's error, before anything is written
        t = time.perf_counter()
        out = _dataset_out(out)
        _check_pyarrow(self.client)
        try:
            with new_dir(out, _check_dataset_target, _is_dataset, _dataset_name) as tmp:
                _check_paths(self.client, [str(tmp)], why="the dataset's directory must be "
                             "at the same path on every worker")
                count = len(self.futures)
                whole = json.dumps(report.to_dict())
                names = [PART_NAME.format(index=k, count=count) for k in range(count)]
                stop = Event(f"gpu-pitr-stop-{tmp.name}", client=self.client)
                parts = [self.client.submit(_write_part, f, str(tmp / name), whole,
                                            str(out / name), stop.name, pure=False)
                         for f, name in zip(self.futures, names, strict=True)]
                try:
                    wait(parts)  # every file written or failed before the directory goes
                except BaseException:  # Ctrl-C: the files being written end first (a
                    # cancel would not stop a running task), the parts not yet started
                    # write nothing (they used to start, write and go with the
                    # directory), then the directory goes
                    with contextlib.suppress(Exception):
                        stop.set()
                        try:
                            wait(parts, timeout=60)
                        finally:
                            # Past the wait's timeout too: the parts not started are
                            # cancelled, so that none starts once the event is cleared
                            # (the scheduler forgets a cleared event; one left set
                            # stayed there for the cluster's life).
                            self.client.cancel([p for p in parts if not p.done()])
                            stop.clear()
                    raise
                self.client.gather(parts)  # the first failure
                now = time.perf_counter()  # the parts are written: the report says so
                report.timings["write"] = round(now - t, 6)
                report.timings["total"] = round(now - self.started, 6)
                with atomic_files(tmp / DATASET_REPORT) as (name,):
                    name.write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                    encoding="utf-8")
        except (OutputError, WalError):
            raise  # a part's (naming its file), or a path a worker cannot see
        except OSError as err:  # making, syncing or renaming the directory
            raise OutputError(out, "Parquet dataset", err) from err
        return out

    def release(self) -> None:
        """Let the workers drop the shards."""
        self.client.cancel(self.futures)
        self.futures = []

    def __enter__(self) -> ShardedRestore:
        return self

    def __exit__(self, *exc) -> None:
        """``with restore_sharded(...) as run:`` releases the shards at the end."""
        self.release()


def restore_sharded(client, wal_dir, *, shards: int | None = None, **kwargs) -> ShardedRestore:
    """Restore ``wal_dir`` as ``shards`` shards of the ids on ``client``'s workers.

    Args:
        client: a ``distributed.Client``.
        wal_dir: the WAL directory, at a path every worker can read (made absolute
            here, as ``base`` and ``snapshots`` are).
        shards: how many shards (default: one per worker at the time of the call).
        **kwargs: those of ``gpu_pitr.restore`` (``to_time``, ``to_seq``,
            ``to_transaction``, ``to_position``, ``exclusive``, ``backend``,
            ``skip_corrupt``, ``base`` or ``snapshots`` as paths, ...), but
            ``progress`` and ``id_shard``.

    Returns:
        ShardedRestore; the tasks run while the caller goes on.
    """
    import inspect

    from gpu_pitr import restore

    for name in ("progress", "id_shard"):
        if name in kwargs:
            raise ValueError(f"restore_sharded takes no {name}")
    inspect.signature(restore).bind(wal_dir, **kwargs)  # a misspelt one fails here, at once
    if kwargs.get("to_time") is not None:
        from gpu_pitr.format.times import parse_time

        # Read once, here, as whole seconds: a time that is not one fails at once, not
        # on every worker, and no shard reads a datetime's zone on a machine of its own.
        kwargs["to_time"] = parse_time(kwargs["to_time"], bool(kwargs.get("exclusive")))
    if kwargs.get("to_position") is not None:
        from gpu_pitr.pipeline import parse_position, position_in_wal_dir

        # As the segment's name: a FILE given as a path is judged here, where it was
        # given (relative to this working directory, not a worker's).
        file, name, offset = parse_position(kwargs["to_position"])
        position_in_wal_dir(wal_dir, file, offset)
        kwargs["to_position"] = f"{name}:{offset}"
    # Absolute: a worker's working directory is its own.
    for name in ("base", "snapshots"):
        value = kwargs.get(name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{name} must be a path the workers can read, not {value!r}")
        if value is not None:
            kwargs[name] = os.path.abspath(value)
    started = time.perf_counter()
    wal_dir = os.path.abspath(wal_dir)
    workers = _workers(client)
    if not workers:  # tasks submitted now would wait for one without end
        raise NoWorkersError("the Dask cluster has no workers: start some (dask worker "
                             "SCHEDULER_ADDRESS), then run this again")
    _check_code(client)
    _check_paths(client, [wal_dir] + [kwargs[n] for n in ("base", "snapshots")
                                      if kwargs.get(n) is not None])
    if kwargs.get("backend") == "cuda":
        _check_cuda(client)
    count = len(workers) if shards is None else int(shards)
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_SHARDS}, not {count}")
    if kwargs.get("log_end") is None:
        kwargs["log_end"] = _log_end(client, wal_dir)
    run = uuid.uuid4().hex[:8]
    futures = []
    for k in range(count):
        where = {"workers": [workers[k % len(workers)]], "allow_other_workers": True}
        futures.append(client.submit(_restore_shard, wal_dir, k, count, kwargs, pure=False,
                                     key=f"gpu-pitr-restore-{run}-shard-{k}-of-{count}",
                                     **where))
    return ShardedRestore(client, futures, started=started, wal_dir=wal_dir)


def restore_on_dask(client, wal_dir, *, shards: int | None = None, **kwargs):
    """``restore_sharded(...).gather()``: the whole index, restored on the cluster."""
    with restore_sharded(client, wal_dir, shards=shards, **kwargs) as run:
        return run.gather()


def require_distributed():
    """The ``distributed`` module, or a one-line MissingExtraError naming the extra."""
    try:
        import distributed
    except ImportError as err:
        raise missing_extra(err, "distributed", "--dask-scheduler needs Dask", "dask") from None
    return distributed


def _connect(address: str, timeout: str):
    """A client of the scheduler at ``address`` (or whose scheduler file is there)."""
    Client = require_distributed().Client
    is_file = os.path.isfile(address)
    if not is_file and "://" not in address and (os.sep in address
                                                 or address.endswith(".json")):
        if os.path.isdir(address):  # there, but not a file: not "no such file"
            raise IsADirectoryError(f"{address}: a directory, not a Dask scheduler file")
        raise FileNotFoundError(f"{address}: no such Dask scheduler file (nor an address: "
                                "tcp://host:port)")
    if is_file:
        try:
            doc = json.loads(Path(address).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            # An OSError's text names the file again, after its [Errno n]: its reason only.
            why = os_reason(err) if isinstance(err, OSError) else err
            raise OSError(f"{address}: cannot read the Dask scheduler file: {why}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise OSError(f'{address}: not a Dask scheduler file (no "address" in it)')
    where = {"scheduler_file": address} if is_file else {"address": address}
    try:
        _handshake(doc["address"] if is_file else address, timeout)
        return Client(**where, timeout=timeout)
    except NotASchedulerError:
        raise
    except (OSError, TimeoutError) as err:
        raise OSError(f"cannot reach the Dask scheduler at {address}: {err}") from None
    except (ValueError, TypeError, ImportError) as err:  # an address Dask cannot use
        # (ucx:// without UCX installed: TypeError from an abstract connector class;
        # distributed 2024.1: ModuleNotFoundError, no ucp)
        raise OSError(f"{address}: not a Dask scheduler address this can use: {err}") from None


def _handshake(address: str, timeout: str | None) -> None:
    """Dask's handshake with ``address``, within ``timeout``: the client's own waits
    without end for the answer of a server that is not a Dask scheduler (its dashboard,
    an HTTP port), or takes the first bytes of another protocol for a frame's length
    (a MemoryError of exabytes). Raises OSError (an address Dask cannot use: what the
    client would raise)."""
    import asyncio

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect
    from distributed.security import Security

    if timeout is None:  # Dask's own default, as a client given none takes it
        timeout = dask.config.get("distributed.comm.timeouts.connect")
    seconds = parse_timedelta(timeout, default="seconds")

    async def greet():
        comm = await connect(address, timeout=seconds,
                             **Security().get_connection_args("client"))
        await comm.close()

    def run():
        try:
            # connect's own timeout ends a wait for the connection itself first, with
            # its own OSError; this one, an answer that does not come once connected.
            asyncio.run(asyncio.wait_for(greet(), seconds + 5))
        except BaseException as err:  # noqa: BLE001  handed to the caller's thread
            failed.append(err)

    failed: list[BaseException] = []
    thread = threading.Thread(target=run, daemon=True)  # not the caller's event loop
    thread.start()
    thread.join()
    if not failed:
        return
    err = failed[0]
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        raise NotASchedulerError(f"{address}: not a Dask scheduler: no Dask answer came "
                                 "once connected (its dashboard's, or another, port?)")
    if isinstance(err, (OSError, ValueError, TypeError, ImportError)):
        raise err
    raise NotASchedulerError(f"{address}: not a Dask scheduler: it answers in another "
                             "protocol (its dashboard's, or another, port?)") from None


@contextlib.contextmanager
def _on_cluster(address: str, timeout: str):
    """A client of ``address``, and what Dask itself raises while it is used turned into
    one-line errors: a worker that died running a task (killed for memory, say), a task
    cancelled under us (the scheduler restarted)."""
    import logging
    from concurrent.futures import CancelledError  # distributed >= 2024.7: a subclass

    KilledWorker = require_distributed().KilledWorker

    # Kept once the client is gone: those tasks may be collected later, at exit.
    logging.getLogger("asyncio").addFilter(_drop_all_exit)
    client = _connect(address, timeout)
    quiet = False
    try:
        yield client
    except KilledWorker as err:
        quiet = True
        last = getattr(err.last_worker, "address", err.last_worker)
        raise OSError(f"Dask workers died running {err.task} ({err.allowed_failures + 1} "
                      f"tries, the last on {last}; killed for memory?); nothing was "
                      "written") from None
    except CancelledError as err:
        quiet = True
        raise OSError(f"Dask cancelled a task of this restore ({err}); nothing was "
                      "written") from None
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM: the command's one line
            _quiet_dask()
        raise
    finally:
        # The scheduler gone: the client's reconnects, cancelled as it closes, are logged
        # with a traceback of their own around the one line (only then: a caller's
        # process keeps its logs).
        with _dask_quieted() if quiet else contextlib.nullcontext():
            client.close()


@contextlib.contextmanager
def _dask_quieted():
    """``_quiet_dask`` for the block only."""
    import logging

    levels = _quiet_dask()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _drop_all_exit(record) -> bool:
    """A filter of the ``asyncio`` logger: not "Task exception was never retrieved" for
    the gathers Dask's client ends with ``AllExit`` when it is closed while they wait (a
    Ctrl-C during a gather): a traceback about nothing, whenever the task is collected."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and type(exc).__name__ == "AllExit"
                and type(exc).__module__.startswith("distributed"))


def _quiet_dask() -> dict[str, int]:
    """Silence what Dask's client logs as it is closed under a stop: the gathers it was
    waiting on end in errors no one retrieves ("Task exception was never retrieved ...
    AllExit" from asyncio, streams left dangling), tracebacks around the interrupted
    command's one line. Returns the levels it replaced, by logger name."""
    import logging

    names = ["asyncio", "distributed", "tornado"]
    names += [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    levels = {}
    for name in names:
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.CRITICAL + 1)
    return levels


def restore_with_scheduler(address: str, wal_dir, *, shards: int | None = None,
                           timeout: str = "30s", **kwargs):
    """``restore_on_dask`` on the cluster whose scheduler is at ``address`` (or whose
    scheduler file is there): what ``gpu-pitr restore --dask-scheduler`` runs."""
    with _on_cluster(address, timeout) as client:
        return restore_on_dask(client, wal_dir, shards=shards, **kwargs)


def write_with_scheduler(address: str, wal_dir, out, report_json=None, *,
                         shards: int | None = None, timeout: str = "30s", **kwargs) -> dict:
    """What ``gpu-pitr restore --dask-scheduler ADDRESS --write-on-workers`` runs: the
    restore as shards on that cluster, written by the workers as the Parquet dataset
    ``out`` (``ShardedRestore.to_parquet``), and the report, which it returns, as the
    JSON file ``report_json`` if given (both written, or neither)."""
    from gpu_pitr.outputs import write_json

    # What to_parquet checks first, before the report's write (which would name itself).
    out = _dataset_out(out)
    with _on_cluster(address, timeout) as client:
        with restore_sharded(client, wal_dir, shards=shards, **kwargs) as run:
            report = run.report
            if report_json is None:
                run.to_parquet(out)
            else:  # the dataset installed inside the report's write
                write_json(Path(report_json), report.to_dict(),
                           then=lambda: run.to_parquet(out))
    return report.to_dict()
