"""The cuda executor: CuPy owns device memory and sorting, ``gpu_pitr.kernels`` the work.

Per chunk: the host frames records and copies the chunk into a device buffer;
while chunk k is planned and applied, the next chunk's bytes are already copied
(``stage``: a copy stream, pinned host memory, the other of two device buffers,
an event the compute stream waits on; opt-in, ``GPU_PITR_CUDA_OVERLAP=1``, until a
GPU run has verified it);
a kernel decodes every record (the same parser as the CPU executor); the small
record columns come back for the host's commit plan; the apply order goes
down; entries are expanded in apply order, sorted stably by id key, checked
byte for byte, resolved one thread per id against the device id map, and only
winning vectors are scattered into the device-resident index buffer.

Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's simulator and
NumPy stands in for CuPy, so CI exercises this file without a GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from gpu_pitr.environment import switch
from gpu_pitr.executors.cpu import count_deep, entry_slots
from gpu_pitr.executors.device import simulator_enabled
from gpu_pitr.format.columns import ENTRY_COLUMNS, RECORD_COLUMNS
from gpu_pitr.format.layout import DELETE, RECORD_HEADER_SIZE
from gpu_pitr.format.payload import MAX_BATCH_DEPTH
from gpu_pitr.index import RestoredIndex
from gpu_pitr.resolve.hostmap import N_COUNTERS, fill_counters
from gpu_pitr.resolve.idshard import id_shard_mask
from gpu_pitr.resolve.idsort import sorted_id_order

# Ids are grouped by a 64-bit key; tests narrow this mask to force collisions.
KEY_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)

# The device rows allocated before any grow (see _set_dim).
FIRST_ROWS_BYTES = 1 << 30
_THREADS = 128
# The simulator runs each thread of a block as a Python thread, started per launch:
# one warp a block starts a quarter of the threads for the small launches that most
# tests make. The kernels use one thread per item, whatever the block size.
_SIM_THREADS = 32
_DEVICE_RECORD_COLUMNS = ("off", "length", "status", "kind", "ts", "aux", "nent", "stop", "efirst")
_BACK_TO_HOST = ("status", "kind", "ts", "aux", "nent", "stop")


class NeedsHostExecutor(Exception):
    """Input this executor does not handle exactly: the caller restores on the cpu one.

    Raised when two different ids share a key (the device map is keyed by it) or
    a batch is nested deeper than a kernel's fixed stack.
    """


def _kernel_modules():
    """``gpu_pitr.kernels.decode`` and ``.resolve``, also from an uninstalled checkout.

    An installed package maps ``kernels/`` to ``gpu_pitr.kernels``; a source checkout
    on ``PYTHONPATH`` (a GPU machine with no network to install from) gets the same
    mapping here, to its own ``kernels/``: not to those of a gpu_pitr installed
    elsewhere (an editable install maps ``gpu_pitr.kernels`` to its own source, and
    its kernels ran with this checkout's host code, under this checkout's digest).
    """
    from gpu_pitr.jit import CHECKOUT_KERNELS as path

    loaded = sys.modules.get("gpu_pitr.kernels")
    if path is not None and (loaded is None or Path(loaded.__file__).resolve().parent
                             != path.resolve()):
        for name in ("gpu_pitr.kernels", "gpu_pitr.kernels.decode",
                     "gpu_pitr.kernels.resolve"):
            sys.modules.pop(name, None)
        spec = importlib.util.spec_from_file_location(
            "gpu_pitr.kernels", path / "__init__.py", submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_pitr.kernels"] = module
        spec.loader.exec_module(module)
    from gpu_pitr.kernels import decode, resolve
    return decode, resolve


def overlap_enabled() -> bool:
    """Whether copies run ahead of the kernels: ``GPU_PITR_CUDA_OVERLAP=1`` (or on, yes,
    true). Off by default until ``scripts/gpu_check`` has shown, on a real GPU, that
    results with it equal the cpu executor's (the simulator cannot run streams
    concurrently, so only a device tests their ordering)."""
    return switch("GPU_PITR_CUDA_OVERLAP")


def _blocks(n: int, threads: int) -> int:
    return max(1, (n + threads - 1) // threads)


_QUIET = []


def _quiet_launches() -> None:
    """Once per process: small chunks launch small grids, and Numba's occupancy advice
    is noise here; the simulator runs the 64-bit key hash on NumPy scalars, which warn
    as they wrap (on a GPU and on the cpu the wrap is silent, as meant). The second
    filter names the parser's module, the only place such a wrap happens."""
    if not _QUIET:
        _QUIET.append(True)
        warnings.filterwarnings("ignore", message=".*(under-utilization|Grid size)")
        warnings.filterwarnings("ignore", "overflow encountered in scalar", RuntimeWarning,
                                r"gpu_pitr\.format\.payload")


def _sim_device(arg):
    """Under the simulator, a NumPy array as the simulator's device array over the same
    memory: the kernel reads and writes it in place, as it would device memory. Given
    the plain array, the simulator copies it in and back out at every launch, which
    made the CUDA tests spend most of their time copying.
    """
    if isinstance(arg, np.ndarray) and arg.ndim > 0:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(arg)
    return arg


class CudaExecutor:
    """Decode, resolve and scatter on the GPU; the index stays in device memory."""

    name = "cuda"
    # Larger chunks than the CPU's: fewer launches and host round trips per byte.
    chunk_bytes = 128 << 20
    #: The smallest size of the id and metadata arenas, in bytes.
    arena_bytes = 1 << 16

    def __init__(self, total_bytes: int, profile: bool = False) -> None:
        self.k_decode, self.k_resolve = _kernel_modules()
        self.sim = simulator_enabled()
        if self.sim:
            self.xp = np
        else:
            import cupy

            self.xp = cupy
        self.total_bytes = int(total_bytes)
        self.profile = profile
        self.timings = dict.fromkeys(("copy", "decode", "resolve", "scatter", "compact"), 0.0)
        self.counters = np.zeros(N_COUNTERS, np.int64)
        xp = self.xp
        self.dim = -1
        self.id_shard = None  # an IdShard: only the entries of its ids are applied
        self.n_rows = 0
        self.rows = xp.zeros((0, 0), xp.uint8)
        self.free = xp.zeros(0, xp.int64)
        self.n_free = 0
        self.gkeys = xp.zeros(0, xp.uint64)  # sorted keys of live ids
        self.grows = xp.zeros(0, xp.int64)  # their rows
        self.row_id_off = xp.zeros(0, xp.int64)
        self.row_id_len = xp.zeros(0, xp.int64)
        self.row_meta_off = xp.zeros(0, xp.int64)
        self.row_meta_len = xp.zeros(0, xp.int64)
        self.ids = xp.zeros(self.arena_bytes, xp.uint8)
        self.ids_used = 0
        self.meta = xp.zeros(self.arena_bytes, xp.uint8)
        self.meta_used = 0
        self.dbuf = xp.zeros(0, xp.uint8)  # the device bytes of the chunk in hand
        self.rec = {}
        self.ent = {}
        # Copies ahead (stage): the next chunk's bytes go into the other device
        # buffer on a stream of their own while this chunk's kernels run.
        self.overlap = overlap_enabled()
        self.staged = 0  # copies issued ahead
        self.adopted = 0  # chunks decoded from such a copy
        self._spare = xp.zeros(0, xp.uint8)  # the other device buffer: where stage copies
        self._staged = None  # (host buffer, start, end) of the copy ahead not yet decoded
        self._nb_stream = (None, None)  # (CuPy stream pointer, the Numba stream on it)
        if self.overlap and not self.sim:
            # Non-blocking: no implicit ordering against the legacy default stream,
            # which is CuPy's current stream unless the caller chose another.
            self._copy_stream = xp.cuda.Stream(non_blocking=True)
            self._spare_free = xp.cuda.Event(disable_timing=True)
            self._copied = xp.cuda.Event(disable_timing=True)

    def _launch(self, kernel, n, *args):
        # No warnings.catch_warnings() here: it saves and restores the process-wide
        # filter list, and two restores on two threads interleave those (a filter
        # leaks, or another thread's is lost). The filters are installed once instead.
        _quiet_launches()
        if self.sim:
            kernel[_blocks(n, _SIM_THREADS), _SIM_THREADS](*map(_sim_device, args))
        else:
            kernel[_blocks(n, _THREADS), _THREADS, self._stream()](*args)

    def _stream(self):
        """CuPy's current stream as a Numba stream: kernels queue behind CuPy's work."""
        ptr = self.xp.cuda.get_current_stream().ptr
        if self._nb_stream[0] != ptr:
            from numba import cuda

            self._nb_stream = (ptr, cuda.external_stream(ptr))
        return self._nb_stream[1]

    def _tick(self, stage: str, t0: float) -> float:
        if self.profile and not self.sim:
            self.xp.cuda.get_current_stream().synchronize()
        t = time.perf_counter()
        self.timings[stage] += t - t0
        return t

    def host_buffer(self, nbytes: int) -> np.ndarray:
        """A host buffer for chunks: page-locked on a GPU so copies run at full speed."""
        if self.sim:
            return np.empty(nbytes, np.uint8)
        try:
            mem = self.xp.cuda.alloc_pinned_memory(nbytes)
        except Exception as err:
            # CuPy's CUDARuntimeError, not a MemoryError: the pool has released its free
            # blocks and tried again. Ordinary memory still works (copies from it are
            # slower, and a copy ahead waits for its source to be read); a restore of
            # large open transactions must not stop with a traceback for want of it.
            if "cudaErrorMemoryAllocation" not in str(err):
                raise
            return np.empty(nbytes, np.uint8)
        return np.frombuffer(mem, np.uint8, nbytes)

    def release_host_buffers(self) -> None:
        """Unlock the page-locked blocks no buffer uses any more (those of a restore
        that has ended). CuPy's pinned pool keeps every block it handed out locked
        until then, reusing one only for a request of exactly its size: restores of
        logs of other segment sizes in one process (a library caller, a Dask worker)
        each locked a ring of their own, outside any memory budget."""
        if not self.sim:
            self.xp.get_default_pinned_memory_pool().free_all_blocks()

    def _ensure(self, table: dict, columns: dict, n: int) -> None:
        """Grow device columns to ``n`` rows, keeping what they hold."""
        have = len(next(iter(table.values()))) if table else 0
        if have >= n:
            return
        n = max(n, 2 * have)
        for name, dt in columns.items():
            new = self.xp.zeros(n, dt)
            if have:
                new[:have] = table[name]
            table[name] = new

    def stage(self, buf: np.ndarray, start: int, end: int) -> bool:
        """Start copying ``buf[start:end]`` (page-locked) to the device, for the next decode.

        The copy goes into the spare device buffer, on the copy stream, after the
        work queued so far on the compute stream (the kernels that last read that
        buffer); an event marks its end. ``buf[start:end]`` must stay as it is, and
        the host buffer must not be reused, until ``decode`` of these bytes has
        returned or ``unstage`` was called. At most one copy is ahead: False when
        one is already (or overlap is off).
        """
        if not self.overlap or self._staged is not None or end <= start:
            return False
        xp = self.xp
        if len(self._spare) < end:
            self._spare = xp.empty(max(end, len(buf)), xp.uint8)
        if self.sim:
            self._spare[start:end] = buf[start:end]  # again when decoded: see decode
        else:
            self._spare_free.record(xp.cuda.get_current_stream())
            self._copy_stream.wait_event(self._spare_free)
            # A ctypes pointer, not an int: older CuPy reads ``mem.value``.
            self._spare[start:end].data.copy_from_host_async(
                ctypes.c_void_p(buf.ctypes.data + start), end - start, self._copy_stream)
            self._copied.record(self._copy_stream)
        self._staged = (buf, start, end)
        self.staged += 1
        return True

    def unstage(self) -> None:
        """Drop a copy ahead that no decode will use; returns once no copy ahead reads
        host memory any more (so its buffer may go back to the reader)."""
        self._staged = None
        if self.staged and not self.sim:
            self._copied.synchronize()

    def decode(self, buf: np.ndarray, cols, first: int, n: int) -> None:
        """Decode records ``0..n-1`` (all of them: carried ones moved) on the device."""
        xp = self.xp
        t = time.perf_counter()
        # Records keep their host offsets on the device: copy just the span they use.
        lo = int(cols.off[:n].min())
        used = int((cols.off[:n] + RECORD_HEADER_SIZE + cols.length[:n]).max())
        ready = used  # device bytes [ready, used) are in self.dbuf already
        st = self._staged
        adopted = st is not None and st[0] is buf and st[1] < used <= st[2]
        if adopted:
            # The copy ahead holds these bytes: its buffer becomes the chunk's (the
            # previous chunk's becomes the spare), and only the bytes in front of it
            # (records of open transactions carried into the headroom) are copied now.
            self.dbuf, self._spare = self._spare, self.dbuf
            self._staged = None
            self.adopted += 1
            ready = max(lo, st[1])
            if self.sim:
                # The simulator's "asynchronous" copy completes here, reading the host
                # bytes as they are now: a buffer reused too early shows in the result.
                self.dbuf[st[1]:st[2]] = buf[st[1]:st[2]]
            else:
                xp.cuda.get_current_stream().wait_event(self._copied)
        else:
            self.unstage()
            if len(self.dbuf) < used:
                self.dbuf = xp.zeros(max(used, len(buf)), xp.uint8)
        if ready > lo:
            self._to_device(self.dbuf[lo:ready], buf[lo:ready])
        self._ensure(self.rec, {k: RECORD_COLUMNS[k] for k in _DEVICE_RECORD_COLUMNS}, n)
        self._ensure(self.ent, ENTRY_COLUMNS, n)
        r, e = self.rec, self.ent
        self._to_device(r["off"][:n], cols.off[:n])
        self._to_device(r["length"][:n], cols.length[:n])
        t = self._tick("copy", t)
        self._launch(
            self.k_decode.decode_records, n, self.dbuf, n, r["off"], r["length"], r["status"],
            r["kind"], r["ts"], r["aux"], r["nent"], r["stop"],
            e["e_op"], e["e_id_off"], e["e_id_len"], e["e_vec_off"], e["e_dim"],
            e["e_meta_off"], e["e_meta_len"], e["e_key"],
        )
        for name in _BACK_TO_HOST:
            getattr(cols, name)[:n] = self._to_host(r[name][:n])
        if adopted and not self.sim:
            # Done already (the compute stream waited for it and has drained): the host
            # buffer is free for the reader from here on.
            self._copied.synchronize()
        if count_deep(cols.status, 0, n):
            raise NeedsHostExecutor(
                f"a batch nested deeper than {MAX_BATCH_DEPTH} levels (the kernels' stack)")
        batches = entry_slots(cols, 0, n)
        self._ensure(self.ent, ENTRY_COLUMNS, cols.entry_capacity)
        e = self.ent
        self._to_device(r["efirst"][:n], cols.efirst[:n])
        if len(batches):
            self._launch(
                self.k_decode.decode_batches, len(batches), self.dbuf, xp.asarray(batches),
                r["off"], r["length"], r["efirst"],
                e["e_op"], e["e_id_off"], e["e_id_len"], e["e_vec_off"], e["e_dim"],
                e["e_meta_off"], e["e_meta_len"], e["e_key"],
            )
        self._tick("decode", t)

    def _to_device(self, dst, src) -> None:
        if self.sim:
            dst[...] = src
        else:
            dst.set(np.ascontiguousarray(src))

    def _stable_argsort(self, a):
        # CuPy's argsort is always stable (and takes no kind); NumPy's must be asked.
        return np.argsort(a, kind="stable") if self.sim else self.xp.argsort(a)

    def _to_host(self, a) -> np.ndarray:
        return a if self.sim else a.get()

    def fix_dim(self, dim: int) -> None:
        """The index dimension, known before any record (from a base snapshot)."""
        if self.dim < 0:
            self._set_dim(dim)

    def keep_id_shard(self, shard) -> None:
        """Apply only the entries of the ids of ``shard`` (an ``IdShard``) from now on."""
        self.id_shard = shard

    def apply_uncounted(self, buf: np.ndarray, cols, order: np.ndarray, on_dim_mismatch):
        """``apply``, leaving the counters as they were (a base snapshot's rows are not
        the log's inserts)."""
        saved = self.counters.copy()
        self.apply(buf, cols, order, on_dim_mismatch)
        self.counters[:] = saved

    def _set_dim(self, dim: int) -> None:
        self.dim = dim
        # As many rows as the log could insert, at most 1 Mi rows and FIRST_ROWS_BYTES
        # (dimension 4096: a 16 GiB log would have asked for 16 GiB of rows up front,
        # whatever its ids); the rows grow by half again when they run out.
        self._grow_rows(max(1024, min(self.total_bytes // (4 * dim + 17) + 16, 1 << 20,
                                      FIRST_ROWS_BYTES // max(4 * dim, 1))))

    def _grow_rows(self, cap: int) -> None:
        xp = self.xp
        rows = xp.zeros((cap, 4 * self.dim), xp.uint8)
        if self.n_rows:
            rows[: self.n_rows] = self.rows[: self.n_rows]
        self.rows = rows
        for name, fill in (("row_id_off", 0), ("row_id_len", -1), ("row_meta_off", -1),
                           ("row_meta_len", 0), ("free", 0)):
            old = getattr(self, name)
            new = xp.full(cap, fill, xp.int64)
            new[: len(old)] = old
            setattr(self, name, new)

    def apply(self, buf: np.ndarray, cols, order: np.ndarray, on_dim_mismatch) -> None:
        """Apply the records of ``order`` (apply order) to the device index."""
        xp = self.xp
        kr = self.k_resolve
        r, e = self.rec, self.ent
        t = time.perf_counter()
        d_order = xp.asarray(order)
        cnt = r["nent"][d_order]
        ends = xp.cumsum(cnt)
        total = int(ends[-1]) if len(ends) else 0
        if total == 0:
            return
        starts = ends - cnt
        ent_seq = xp.empty(total, xp.int64)
        self._launch(kr.expand_entries, len(order), d_order, r["efirst"], r["nent"], starts,
                     ent_seq)
        is_vec = e["e_op"][ent_seq] != DELETE
        dims = e["e_dim"][ent_seq]
        if self.dim < 0:
            first_vec = xp.flatnonzero(is_vec)[:1]
            if len(first_vec):
                self._set_dim(int(dims[first_vec[0]]))
        if self.dim >= 0:
            bad = xp.flatnonzero(is_vec & (dims != self.dim))[:1]
            if len(bad):
                j = int(bad[0])
                k = int(np.searchsorted(self._to_host(ends), j, side="right"))
                on_dim_mismatch(int(order[k]), int(ent_seq[j]), self.dim, int(dims[j]))
        keys = e["e_key"][ent_seq] & KEY_MASK
        if self.id_shard is not None:  # after the dimension: every shard checks it all
            mine = xp.flatnonzero(id_shard_mask(keys, self.id_shard))
            ent_seq, keys, total = ent_seq[mine], keys[mine], len(mine)
            if total == 0:
                return
        perm = self._stable_argsort(keys)
        sorted_ent = ent_seq[perm]
        skeys = keys[perm]
        head = xp.ones(total, xp.bool_)
        head[1:] = skeys[1:] != skeys[:-1]
        run_start = xp.flatnonzero(head)
        n_runs = len(run_start)
        run_len = xp.diff(xp.concatenate([run_start, xp.asarray([total])]))
        run_of = xp.cumsum(head) - 1
        run_keys = skeys[run_start]
        run_ent = sorted_ent[run_start]
        collision = xp.zeros(1, xp.int64)
        self._launch(kr.check_run_ids, total, self.dbuf, sorted_ent, run_of, run_start,
                     e["e_id_off"], e["e_id_len"], collision)
        pos = xp.searchsorted(self.gkeys, run_keys)
        prior_row = xp.full(n_runs, -1, xp.int64)
        if len(self.gkeys):
            posc = xp.minimum(pos, len(self.gkeys) - 1)
            found = self.gkeys[posc] == run_keys
            prior_row = xp.where(found, self.grows[posc], -1)
            self._launch(kr.check_prior_ids, n_runs, self.dbuf, run_ent, prior_row,
                         e["e_id_off"], e["e_id_len"], self.ids, self.row_id_off,
                         self.row_id_len, collision)
        if int(collision[0]):
            raise NeedsHostExecutor("two different ids share a 64-bit key")
        exists = xp.zeros(n_runs, xp.bool_)
        vec_ent = xp.empty(n_runs, xp.int64)
        meta_mode = xp.empty(n_runs, xp.int64)
        meta_ent = xp.empty(n_runs, xp.int64)
        counts = xp.zeros((kr.N_RUN_COUNTS, n_runs), xp.int64)
        self._launch(kr.resolve_runs, n_runs, sorted_ent, run_start, run_len, prior_row,
                     e["e_op"], e["e_meta_off"], exists, vec_ent, meta_mode, meta_ent, counts)
        self.counters += self._to_host(counts.sum(axis=1))
        t = self._tick("resolve", t)
        row = self._assign_rows(exists, prior_row, run_keys, run_ent, pos)
        live = xp.flatnonzero(exists)
        if len(live):
            rows32 = self.rows.view(xp.uint32)
            self._launch(kr.scatter_vectors, len(live) * self.dim, self.dbuf,
                         e["e_vec_off"][vec_ent[live]], row[live], rows32, self.dim)
            self._apply_metadata(meta_mode[live], meta_ent[live], row[live])
        self._tick("scatter", t)

    def _append_spans(self, arena_name: str, used_name: str, src_off, length):
        """Copy chunk byte spans to the end of a device arena; return their offsets."""
        xp = self.xp
        ends = xp.cumsum(length)
        total = int(ends[-1]) if len(ends) else 0
        used = getattr(self, used_name)
        arena = getattr(self, arena_name)
        if used + total > len(arena):
            used, arena = self._make_room(arena_name, used, total)
            setattr(self, arena_name, arena)
        dst = used + ends - length
        if len(src_off):
            self._launch(self.k_resolve.copy_spans, len(src_off), self.dbuf, src_off, length,
                         arena, dst)
        setattr(self, used_name, used + total)
        return dst

    def _make_room(self, arena_name: str, used: int, total: int):
        """A device arena with room for ``total`` more bytes after what it holds.

        Appending is all an arena does: every metadata map applied and every id
        re-created leaves its old span behind. When at least half of what is used
        is such garbage, the live spans move to a new arena, in row order, and the
        rows' offsets follow (O(live bytes), amortised: as on the cpu executor);
        otherwise the arena doubles. Returns ``(used, arena)``.
        """
        xp = self.xp
        arena = getattr(self, arena_name)
        alive = self.row_id_len[: self.n_rows] >= 0
        if arena_name == "ids":
            offs, lens = self.row_id_off, self.row_id_len
        else:
            offs, lens = self.row_meta_off, self.row_meta_len
            alive &= self.row_meta_off[: self.n_rows] >= 0
        live = xp.flatnonzero(alive)
        keep = int(lens[live].sum()) if len(live) else 0
        if 2 * keep > used:
            grown = xp.zeros(max(2 * len(arena), used + total), xp.uint8)
            grown[:used] = arena[:used]
            return used, grown
        span = lens[live]
        moved = xp.cumsum(span) - span
        packed = xp.zeros(max(2 * (keep + total), self.arena_bytes), xp.uint8)
        if len(live):
            self._launch(self.k_resolve.copy_spans, len(live), arena, offs[live], span,
                         packed, moved)
            offs[live] = moved
        return keep, packed

    def _assign_rows(self, exists, prior_row, run_keys, run_ent, pos):
        """Rows for new ids (free rows first), free deleted ones, update the key map."""
        xp = self.xp
        e = self.ent
        new = xp.flatnonzero(exists & (prior_row < 0))
        gone = xp.flatnonzero(~exists & (prior_row >= 0))
        n_new = len(new)
        take = min(n_new, self.n_free)
        fresh = n_new - take
        if self.n_rows + fresh > len(self.rows):
            self._grow_rows(max(self.n_rows + fresh, len(self.rows) + len(self.rows) // 2))
        new_rows = xp.concatenate([
            self.free[self.n_free - take:self.n_free],
            xp.arange(self.n_rows, self.n_rows + fresh, dtype=xp.int64),
        ])
        self.n_free -= take
        self.n_rows += fresh
        row = prior_row.copy()
        row[new] = new_rows
        freed = prior_row[gone]
        self.free[self.n_free:self.n_free + len(freed)] = freed
        self.n_free += len(freed)
        self.row_id_len[freed] = -1
        if n_new:
            ent = run_ent[new]
            lens = e["e_id_len"][ent]
            self.row_id_off[new_rows] = self._append_spans("ids", "ids_used",
                                                           e["e_id_off"][ent], lens)
            self.row_id_len[new_rows] = lens
            self.row_meta_off[new_rows] = -1
        if n_new or len(gone):
            keep = xp.ones(len(self.gkeys), xp.bool_)
            keep[pos[gone]] = False
            keys = xp.concatenate([self.gkeys[keep], run_keys[new]])
            rows = xp.concatenate([self.grows[keep], new_rows])
            order = self._stable_argsort(keys)
            self.gkeys = keys[order]
            self.grows = rows[order]
        return row

    def _apply_metadata(self, mode, ent, row) -> None:
        from gpu_pitr.kernels.resolve import META_NONE, META_SET

        xp = self.xp
        e = self.ent
        self.row_meta_off[row[mode == META_NONE]] = -1
        sel = xp.flatnonzero(mode == META_SET)
        if len(sel):
            src = ent[sel]
            lens = e["e_meta_len"][src]
            dst = self._append_spans("meta", "meta_used", e["e_meta_off"][src], lens)
            self.row_meta_off[row[sel]] = dst
            self.row_meta_len[row[sel]] = lens

    def finish(self, report) -> RestoredIndex:
        """Sort ids on the host, gather the rows in that order on the device."""
        xp = self.xp
        t = time.perf_counter()
        live = xp.flatnonzero(self.row_id_len[: self.n_rows] >= 0)
        ids = self._to_host(self.ids[: self.ids_used])
        offs = self._to_host(self.row_id_off[live])
        lens = self._to_host(self.row_id_len[live])
        order = sorted_id_order(ids, offs, lens)
        live = live[xp.asarray(order)]
        if self.dim <= 0:
            vectors = xp.zeros((len(live), max(self.dim, 0)), xp.float32)
        else:
            vectors = self.rows[live].view(xp.float32).reshape(len(live), self.dim)
        self.rows = None
        meta_offs = self._to_host(self.row_meta_off[live])
        meta_lens = self._to_host(self.row_meta_len[live])
        meta = self._to_host(self.meta[: self.meta_used])
        self._tick("compact", t)
        fill_counters(report, self.counters, len(live), self.dim)
        return RestoredIndex(ids, offs[order], lens[order], vectors, meta, meta_offs,
                             meta_lens, report)
