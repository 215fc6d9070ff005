"""``njit`` for this package: Numba's, with its on-disk cache tied to the whole package.

Numba keys each cached function to the source of its own file. Functions here
inline code from other modules (the payload parser of ``format/payload.py`` is
``register_jitable`` and compiled into the executors, ``verify`` and ``inspect``),
so after an edit to ``payload.py`` alone, ``executors/cpu.py`` would go on loading
machine code built from the old parser: tests pass or fail against code that is
no longer there. Importing this module puts a cache locator in front of Numba's
that, for files of this package, adds a digest of every source file of the
package (``kernels/`` included) to the freshness stamp, so any edit recompiles
everything once. Functions of other packages keep Numba's own locators.

The digest is in the cache files' names as well (``frame._frame-30-<12 hex>.py311.nbi``).
Numba writes a function's index before its data file, and after an edit it numbers
data files from 1 again, over the old ones: a process killed between the two writes
left an index of the new source naming the old source's ``.1.nbc``, and the next
process ran that old machine code. With the digest in the names an edit starts files
of its own; the first index it writes removes that function's files of other digests
(and those from before the digest was in the names). Each data file also holds its
entry's key and is loaded only for that key (two processes compiling two signatures
of a function at once could each write ``.1.nbc``: ``_patch_cache_file``), and its
SHA-256: a file a power cut left empty or short, or one damaged since, is compiled
afresh and written over, where Numba's unpickling failed every later process. The
digest is taken as this module is imported, and many modules are imported later: if
the sources changed in between (an edit, an upgrade in place), what they compile is not
what the digest stands for, and it is not cached (``sources_unchanged``).

Writing the cache is best effort too: where it fails (a full disk, a file-size
limit, a read-only tree that looked writable), Numba would fail the compile and so
the restore, with an error that names no file. For this package's functions the
failure becomes one warning, and the code compiled in memory is used. Where Numba
finds no place at all (site-packages read-only and no usable home, as for a service
account with ``HOME=/nonexistent``), it would fail at import ("no locator
available"): the cache goes to a directory of this user's own under the temp
directory instead (``gpu_pitr-numba-<uid>``, mode 0700, used only if it is ours),
and failing that, the code runs compiled in memory with the one warning.

The CUDA kernels (``kernels/``) get the same through ``install_for``: numba-cuda
keeps a caching module of its own (``numba.cuda.core.caching``), which the kernels
package patches before it compiles anything.

Best effort: where Numba's caching internals differ (other versions), nothing is
installed and caching works as Numba's does.

A ``parallel=True`` function comes wrapped (``OneRegionAtATime``): on Numba's
``workqueue`` threading layer, the fallback where neither OpenMP nor TBB is installed,
its calls from Python take one lock of the process, because that layer terminates the
process when two threads run parallel code at once (two restores in a program's
threads, a restore and ``RestoredIndex.ids``). On the other layers they run as they
are, at once. In a process forked from one that had started GNU OpenMP's threads
(Numba's ``omp`` layer, the default on Linux), which do not survive a fork, a call
raises ``ForkedOpenMPError``: Numba would end the process with SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import numba
from numba import types
from numba.core import caching, cgutils
from numba.extending import intrinsic

__all__ = ["NO_REFCOUNTS", "PREFETCH_AHEAD", "OneRegionAtATime", "compile_seconds", "njit",
           "package_digest", "prefetch", "prefetch_lines", "store_fence", "stream_copy",
           "watch_compiles"]


# Whether Numba's threading layer is ``workqueue`` (None: not known yet), and the lock its
# parallel regions take there.
_WORKQUEUE: bool | None = None
_REGIONS = threading.RLock()


# Set in a child forked from a process with GNU OpenMP's threads started.
_FORKED_OFF_GNU_OPENMP = False


def _after_fork_in_child() -> None:
    global _REGIONS, _FORKED_OFF_GNU_OPENMP
    # A fork from one thread while another held the lock would leave it held for good
    # in the child, whose first parallel call would wait forever.
    _REGIONS = threading.RLock()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no threads started in the parent: the child starts its own
        return
    if layer == "omp":
        from numba.np.ufunc import omppool

        _FORKED_OFF_GNU_OPENMP = getattr(omppool, "openmp_vendor", "GNU") == "GNU"


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_workqueue() -> bool:
    """Whether Numba runs parallel code on its ``workqueue`` layer. Asked once: it
    starts the layer's threads, as the first parallel call would (Numba picks the
    layer then)."""
    global _WORKQUEUE
    if _WORKQUEUE is None:
        numba.get_num_threads()  # launches the threads; raises as a parallel call would
        _WORKQUEUE = numba.threading_layer() == "workqueue"
    return _WORKQUEUE


class OneRegionAtATime:
    """A ``parallel=True`` dispatcher whose calls from Python take ``_REGIONS`` on the
    ``workqueue`` layer: that layer is not thread safe, and ends the process ("Concurrent
    access has been detected") when a second thread starts parallel code while one
    runs, which two restores in threads of one program did. Locking each call rather
    than each public call (``restore``, ``RestoredIndex.ids``, the snapshot's ``load``,
    ``wal_records``' iterator...) covers them all, holds nothing between two calls nor
    across a generator's ``yield``, and lets one call's serial parts (reading, framing,
    writing) overlap another's parallel ones. Not callable from compiled code: none
    calls these. Other attributes are the dispatcher's (``signatures``, ``py_func``)."""

    def __init__(self, dispatcher) -> None:
        self.dispatcher = dispatcher
        functools.update_wrapper(self, dispatcher.py_func)

    def __getattr__(self, name: str):
        if name == "dispatcher":  # not set yet (copy, unpickling): not asked of itself
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __reduce__(self):
        # As the dispatcher pickles (Dask, cloudpickle, copy): pickle's default pickled
        # the function ``update_wrapper`` put in ``__wrapped__`` by its name, which is
        # this wrapper's, and failed; copy and cloudpickle recursed in ``__getattr__``.
        return OneRegionAtATime, (self.dispatcher,)

    def __call__(self, *args, **kwargs):
        if _FORKED_OFF_GNU_OPENMP:
            from gpu_pitr.errors import ForkedOpenMPError

            raise ForkedOpenMPError(
                "gpu_pitr cannot run here: this process was forked from one that had "
                "started GNU OpenMP's threads (Numba's omp threading layer), which do not "
                "survive a fork; start it with multiprocessing's 'spawn' or 'forkserver' "
                "method, or set NUMBA_THREADING_LAYER=workqueue (or tbb, where installed)")
        if _WORKQUEUE is False or not on_workqueue():
            return self.dispatcher(*args, **kwargs)
        with _REGIONS:
            return self.dispatcher(*args, **kwargs)

    def __repr__(self) -> str:
        return f"OneRegionAtATime({self.dispatcher!r})"


def njit(*args, **options):
    """Numba's ``njit``; with ``parallel=True``, the dispatcher comes wrapped in
    ``OneRegionAtATime``. With Numba's compiler off, a function that refuses to run
    (``_compiler_off``)."""
    if numba.config.DISABLE_JIT:
        return _compiler_off(args[0]) if args and callable(args[0]) else _compiler_off
    if not options.get("parallel"):
        return numba.njit(*args, **options)
    if args and callable(args[0]):
        return _wrapped(numba.njit(*args, **options))
    made = numba.njit(*args, **options)
    return lambda fn: _wrapped(made(fn))


def _wrapped(dispatcher):
    return OneRegionAtATime(dispatcher)


def _compiler_off(fn):
    """``fn`` as ``njit`` gives it with ``NUMBA_DISABLE_JIT=1``: it raises
    ``CompilerOffError`` when called. Run as Python, the loops would use NumPy's
    integer rules, not the compiled ones (a uint64 key and an int64 step make a
    float64, and a mask of it a TypeError), and the intrinsics have no Python form:
    a library caller got a traceback from inside a loop (the command line refuses
    the setting before it starts). The package still imports."""

    @functools.wraps(fn)
    def refuse(*args, **kwargs):
        from gpu_pitr.environment import compiler_off
        from gpu_pitr.errors import CompilerOffError

        raise CompilerOffError(compiler_off(os.environ.get("NUMBA_DISABLE_JIT", "1")))

    return refuse


def _no_refcounts() -> dict:
    from numba.core import cpu

    return {"_nrt": False} if hasattr(cpu.CPUTargetOptions, "_nrt") else {}


#: ``njit`` options for the per-record and per-entry loops (framing, decode, the
#: plan walk, apply, inspect's parse): compile without Numba's reference counting (NRT). With it,
#: every call into a helper that takes arrays (the payload parser is a chain of
#: them: ``record_columns`` -> ``parse_payload`` -> ``read_string`` ...) counts
#: references up and down with atomic instructions, and threads decoding one
#: buffer share those counters. Measured on a 4 MiB piece in cache, one thread:
#: 470 -> 134 ns per record; in a 1 GiB restore the decode step went 0.65 -> 0.36 s.
#: Such functions (and the helpers they call, which inherit the flag) may not
#: allocate arrays: callers pass in scratch space. ``_nrt`` is an underscore option
#: of Numba's CPU target; where a version lacks it, the loops compile as usual.
#: Bounds checks (``NUMBA_BOUNDSCHECK=1``, the fuzzing mode) work without it.
NO_REFCOUNTS = _no_refcounts()

_PACKAGE = Path(__file__).resolve().parent


#: How many iterations ahead the hash-probe loops ``prefetch`` (the map slot of a
#: later entry; half as far ahead, the row that slot names): the base snapshot's key
#: table (``snapshot.base``) and the move-in of base rows (``hostmap._seed``: a later
#: row's columns, half as far ahead its bytes). A probe is a chain of dependent loads
#: (slot, then the row's id span, then its id bytes), mostly cache misses once a map
#: outgrows the caches; issued ahead, they overlap. ``hostmap._apply`` counts its own
#: distances in its shard's entries (``hostmap.AHEAD_*``). When ``_apply`` counted in
#: records with this constant: 1 GiB benchmark log, 2-vCPU VM, minimum of 7 restores,
#: apply 0.687-0.698 s without, 0.47-0.60 s at 16 (8 to 32 all within the noise).
PREFETCH_AHEAD = 16


@intrinsic
def prefetch(typingctx, arr, i):
    """``prefetch(arr, i)``: ask the CPU to start loading the cache line holding flat
    element ``i`` of the C-contiguous array ``arr`` (LLVM's ``llvm.prefetch``: a read,
    kept in every cache level). A hint only: it never faults, even out of bounds, and
    changes no result. For loops whose loads each depend on the one before (a hash
    probe, then the row it names), issued a few iterations ahead."""
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        ary = context.make_array(signature.args[0])(context, builder, args[0])
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
            "llvm.prefetch")
        # Arguments: address, 0 = read, 3 = keep in all cache levels, 1 = data cache.
        builder.call(fn, [builder.bitcast(builder.gep(ary.data, [at]), byte_ptr),
                          ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def stream_copy(typingctx, dst, d, src, s, n):
    """``dst[d:d+n] = src[s:s+n]`` for uint8 arrays, with non-temporal stores 32
    bytes at a time: the lines written are not read first and do not fill the
    caches. ``dst[d]`` must be 32-byte aligned and ``n`` a multiple of 32. The
    stores are weakly ordered: the thread that made them calls ``store_fence()``
    before others read them."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and all(isinstance(x, types.Integer) for x in (d, s, n))):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        sig = signature.args
        dst_a = context.make_array(sig[0])(context, builder, args[0])
        src_a = context.make_array(sig[2])(context, builder, args[2])
        d_, s_, n_ = (context.cast(builder, args[k], sig[k], types.intp) for k in (1, 3, 4))
        vec = ir.VectorType(ir.IntType(8), 32).as_pointer()
        out = builder.bitcast(builder.gep(dst_a.data, [d_]), vec)
        inp = builder.bitcast(builder.gep(src_a.data, [s_]), vec)
        count = builder.udiv(n_, ir.Constant(n_.type, 32))
        hint = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, count) as loop:
            v = builder.load(builder.gep(inp, [loop.index]), align=1)
            st = builder.store(v, builder.gep(out, [loop.index]), align=32)
            st.set_metadata("nontemporal", hint)
        return context.get_dummy_value()

    return types.void(dst, d, src, s, n), codegen


@intrinsic
def _fence(typingctx):
    def codegen(context, builder, signature, args):
        from llvmlite import ir

        if _X86:  # LLVM's own fences order no non-temporal store on x86
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


def _checkout_kernels() -> Path | None:
    """``kernels/`` beside the package when it runs from a source checkout (None for an
    installed package: its kernels are its own ``gpu_pitr/kernels/``)."""
    if (_PACKAGE / "kernels" / "decode.py").is_file():
        return None
    path = _PACKAGE.parent / "kernels"
    return path if (path / "decode.py").is_file() else None


# The cuda executor loads its kernels from here (``_kernel_modules``), and the digest
# covers them: not another copy's that an editable install elsewhere would map in.
CHECKOUT_KERNELS = _checkout_kernels()


def _roots() -> tuple[Path, ...]:
    return (_PACKAGE,) if CHECKOUT_KERNELS is None else (_PACKAGE, CHECKOUT_KERNELS)


_ROOTS = _roots()


def _source_files() -> list[tuple[str, str]]:
    """Every ``.py`` file of the package: (its path inside the installed package, its
    path here), sorted."""
    files = []
    for root in _ROOTS:
        base = _PACKAGE if root == _PACKAGE else root.parent  # kernels/ of a checkout
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                # (Not hidden ones, never a module: an editor's lock ``.#x.py``, a
                # dangling link while the file is open, would fail the read.)
                if name.endswith(".py") and not name.startswith("."):
                    path = os.path.join(dirpath, name)
                    files.append((os.path.relpath(path, base), path))
    return sorted(files)


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# What package_digest read: each file's path and (mtime, size, inode) as it was read.
_DIGESTED: list[tuple[str, tuple[int, int, int]]] = []


@functools.cache
def package_digest() -> str:
    """SHA-256 over the paths and contents of every ``.py`` file of the package, as
    this process first sees them (its modules were loaded from those sources). Paths
    are those inside the installed package (``kernels/decode.py``), so a source
    checkout and a wheel of the same code have the same digest."""
    h = hashlib.sha256()
    for rel, path in _source_files():
        h.update(rel.encode("utf-8", "surrogateescape"))
        with open(path, "rb") as f:
            _DIGESTED.append((rel, _stat_key(os.fstat(f.fileno()))))
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def sources_unchanged() -> bool:
    """Whether the package's sources are still those ``package_digest`` read: no file
    added, removed, or changed (by its time, size or inode) since. A module imported
    after the digest was taken (many are, lazily) was compiled from the file as it is
    then; where that is no longer what the digest stands for (an edit, a ``git
    checkout`` or an upgrade in place while this process ran), its machine code must not
    go into the cache under that digest, where a process of the digested sources would
    load it."""
    package_digest()
    try:
        now = [(rel, _stat_key(os.stat(path))) for rel, path in _source_files()]
    except OSError:
        return False
    return now == _DIGESTED


def _in_package(py_file: str) -> bool:
    try:
        path = Path(py_file).resolve()
    except (OSError, ValueError):
        return False
    return any(root == path.parent or root in path.parents for root in _ROOTS)


def _own_temp_dir() -> str | None:
    """``<tempdir>/gpu_pitr-numba-<uid>``, created 0700, if it is this user's alone
    (a directory another user made there could hand us compiled code to run)."""
    import stat
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"gpu_pitr-numba-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def _last_resort(py_func, py_file, caching=caching):
    """A locator for a package file no Numba locator can cache (see the module's
    docstring): the user's own temp directory, or one whose writes fail (the cache
    I/O guard makes that one warning, and the code runs compiled in memory)."""
    user_provided = (getattr(caching, "UserProvidedCacheLocator", None)
                     or getattr(caching, "_UserProvidedCacheLocator", None))
    if user_provided is None:  # another Numba: its own "no locator available" stands
        return None

    class LastResort(user_provided):
        def __init__(self, py_func, py_file, root) -> None:
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

        def ensure_cache_path(self):
            with contextlib.suppress(OSError):  # unwritable: the guard warns at the write
                super().ensure_cache_path()

    root = _own_temp_dir()
    if root is None:
        root = os.path.join(os.sep, "nonexistent", "gpu_pitr-no-cache")
    return LastResort(py_func, py_file, root)


def _install(caching=caching) -> bool:
    """Put the package locator first in ``caching`` (a Numba caching module)."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    classes = getattr(impl, "_locator_classes", None)
    if impl is None or base is None or not isinstance(classes, list):
        return False
    if any(getattr(cls, "_gpu_pitr", False) for cls in classes):
        return True

    class PackageLocator(base):
        """Numba's own locator for the file, with the package digest in its stamp."""

        _gpu_pitr = True

        def __init__(self, inner) -> None:
            self._inner = inner

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _in_package(py_file):
                return None
            for other in classes:
                if other is cls:
                    continue
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            last = _last_resort(py_func, py_file, caching)
            return None if last is None else cls(last)

        def ensure_cache_path(self):
            return self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return (self._inner.get_source_stamp(), package_digest())

        def get_disambiguator(self):
            return f"{self._inner.get_disambiguator()}-{digest_tag()}"

        def __getattr__(self, name):  # anything else a Numba version asks of a locator
            if name == "_inner":
                raise AttributeError(name)
            return getattr(self._inner, name)

    classes.insert(0, PackageLocator)
    _guard_cache_io(caching)
    _patch_cache_file(caching)
    return True


def digest_tag() -> str:
    """The package digest as cache file names carry it (see the module's docstring)."""
    return package_digest()[:12]


def _other_versions(names, index_name: str, tag: str) -> list[str]:
    """Of ``names`` (a cache directory's), the files of ``index_name``'s function
    stamped with a digest other than ``tag``, or with none (written before the digest
    was in the names); ``[]`` if ``index_name`` is not one of ``tag``'s."""
    import re

    head, sep, _ = index_name.partition(f"-{tag}.py")
    fullname = head.rpartition("-")[0]
    if not sep or not fullname:
        return []
    pattern = re.compile(re.escape(fullname)
                         + r"-\d+(?:-([0-9a-f]{12}))?\.py\d+\w*(?:\.\d+)?\.nb[ic]")
    return [name for name in names
            if (m := pattern.fullmatch(name)) is not None and m.group(1) != tag]


# Marks a data file written as (_KEYED, key, data): see _patch_cache_file.
_KEYED = "gpu_pitr-keyed-1"
# Marks a data file written as (_SUMMED, SHA-256 of the pickle, the pickle of
# (_KEYED, key, data)): see _patch_cache_file.
_SUMMED = "gpu_pitr-summed-1"


def _patch_cache_file(caching=caching) -> None:
    """For this package's functions (cache files named with the digest tag), Numba's
    index/data file pair is made safe against a data file of another entry:

    - each data file holds its entry's key, and one whose key is not the one asked
      for is not loaded (compiled afresh, then written over). Numba picks a data
      file's number from the index it read, so two processes compiling two
      signatures of one function at once can each take ``.1.nbc``, and the index of
      one then names the other's machine code;
    - once an index is written, that function's files of other digests are removed
      (best effort: a file another process removes first, or one that cannot be
      removed, stays as it is);
    - a damaged file is no file: an index that does not unpickle is read as none, a
      data file that does not, or whose SHA-256 (of the pickle it holds) does not
      match, as no entry: compiled afresh and written over, without a word. Numba
      writes a temp file and renames it, with no fsync: a power cut can leave the new
      name on an empty or short file, and a partial copy of a cache directory, a disk
      error, the same.
      Numba unpickled them as they were: every later process failed with a traceback
      (EOFError, UnpicklingError, UnicodeDecodeError, an LLVM bitcode error) until
      the file was removed, and a byte flipped in machine code that still unpickled
      would have run.
    """
    cache_file = getattr(caching, "IndexDataCacheFile", None)
    save, load = getattr(cache_file, "save", None), getattr(cache_file, "load", None)
    save_index = getattr(cache_file, "_save_index", None)
    load_index = getattr(cache_file, "_load_index", None)
    save_data, load_data = (getattr(cache_file, "_save_data", None),
                            getattr(cache_file, "_load_data", None))
    if None in (save, load, save_index, load_index, save_data, load_data) \
            or not hasattr(cache_file, "_dump") or getattr(save, "_gpu_pitr", False):
        return

    def ours(self) -> bool:
        return f"-{digest_tag()}.py" in getattr(self, "_index_name", "")

    def keyed_save(self, key, data):
        if not ours(self):
            save(self, key, data)
        elif sources_unchanged():  # else compiled from other sources: kept in memory only
            save(self, key, (_KEYED, key, data))

    def keyed_load(self, key):
        data = load(self, key)
        if data is None or not ours(self):
            return data
        if isinstance(data, tuple) and len(data) == 3 and data[0] == _KEYED and data[1] == key:
            return data[2]
        return None

    def sound_load_index(self):
        try:
            return load_index(self)
        except OSError:  # unreadable: the cache I/O guard's (one warning)
            raise
        except Exception:  # noqa: BLE001 - not a pickle Numba wrote whole: no index
            if not ours(self):
                raise
            return {}

    def summed_save_data(self, name, data):
        if ours(self):
            body = self._dump(data)
            data = (_SUMMED, hashlib.sha256(body).digest(), body)
        save_data(self, name, data)

    def summed_load_data(self, name):
        if not ours(self):
            return load_data(self, name)
        try:
            data = load_data(self, name)
        except OSError:  # no entry (Numba's load)
            raise
        except Exception:  # noqa: BLE001 - not a pickle Numba wrote whole: no entry
            return None
        if not (isinstance(data, tuple) and len(data) == 3 and data[0] == _SUMMED
                and isinstance(data[2], bytes)
                and hashlib.sha256(data[2]).digest() == data[1]):
            return None
        import pickle

        return pickle.loads(data[2])

    def pruning_save_index(self, overloads):
        save_index(self, overloads)
        path, name = getattr(self, "_cache_path", None), getattr(self, "_index_name", "")
        if path is None or not ours(self):
            return
        with contextlib.suppress(OSError):
            for other in _other_versions(os.listdir(path), name, digest_tag()):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(path, other))

    for name, function in (("save", keyed_save), ("load", keyed_load),
                           ("_save_index", pruning_save_index),
                           ("_load_index", sound_load_index),
                           ("_save_data", summed_save_data), ("_load_data", summed_load_data)):
        function._gpu_pitr = True
        setattr(cache_file, name, function)


#: The first OSError that made this package's Numba cache unusable in this process
#: (a full disk, a read-only directory): its compiled code is then not kept.
CACHE_ERRORS: list[OSError] = []


def _guard_cache_io(caching=caching) -> None:
    """Cache reads and writes of this package's functions that fail with an ``OSError``
    are skipped (a read: compiled afresh; a write: not cached), with one warning.

    Numba routes both through ``Cache._guard_against_spurious_io_errors``, a
    context manager whose swallowed exception means "no cached object" (it does
    so itself for EACCES on Windows).
    """
    cache = getattr(caching, "Cache", None)
    original = getattr(cache, "_guard_against_spurious_io_errors", None)
    if original is None or getattr(original, "_gpu_pitr", False):
        return
    warned = CACHE_ERRORS

    @contextlib.contextmanager
    def guard(self):
        locator = getattr(getattr(self, "_impl", None), "locator", None)
        if not getattr(locator, "_gpu_pitr", False):
            with original(self):
                yield
            return
        try:
            yield
        except OSError as err:
            if not warned:
                warned.append(err)
                warnings.warn(f"Numba's cache in {getattr(self, '_cache_path', '?')} "
                              f"cannot be used ({err}); compiling without it",
                              RuntimeWarning, stacklevel=2)

    guard._gpu_pitr = True
    cache._guard_against_spurious_io_errors = guard


INSTALLED = _install()


def install_for(module_name: str) -> bool:
    """The package locator and cache I/O guard in another Numba caching module, if
    ``module_name`` can be imported (numba-cuda's ``numba.cuda.core.caching``: its
    kernels are cached through it, not through ``numba.core.caching``)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - best effort: an odd install keeps Numba's own
        return False
    return module is caching or _install(module)


# After _install(): a cached function of the package decorated earlier would keep
# Numba's own locator (no package digest, no guard on cache I/O).
@njit(cache=True, nogil=True)
def store_fence():
    """Order this thread's ``stream_copy`` stores before what it does next."""
    _fence()


@njit(cache=True, nogil=True, inline="always")
def prefetch_lines(arr, start, n):
    """``prefetch`` every 64-byte cache line of ``arr[start:start+n]`` (a uint8
    array): a row or a vector whose bytes a later iteration copies."""
    for b in range(0, n, 64):
        prefetch(arr, start + b)


class _CompileClock:
    """Numba's ``numba:compile`` events (its event API), the outermost of nested ones
    (a function's callees compile inside it): seconds spent compiling in this process,
    and the watchers told as a compile starts (``True``) and ends (``False``). Numba
    sends both from inside its global compiler lock: one compile at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.done = 0.0
        self.started = 0.0
        self.watchers: list = []
        self.lock = threading.Lock()

    def seconds(self) -> float:
        with self.lock:
            now = time.perf_counter() - self.started if self.depth else 0.0
            return self.done + now

    def edge(self, start: bool) -> None:
        with self.lock:
            if start:
                self.depth += 1
                tell = self.depth == 1
                if tell:
                    self.started = time.perf_counter()
            elif self.depth:
                self.depth -= 1
                tell = self.depth == 0
                if tell:
                    self.done += time.perf_counter() - self.started
            else:
                return
            watchers = list(self.watchers) if tell else []
        for watcher in watchers:
            # Called inside Numba's compile: a bar whose stream is gone must not fail it.
            with contextlib.suppress(OSError, ValueError):
                watcher(start)


def _compile_clock() -> _CompileClock:
    clock = _CompileClock()
    try:  # best effort, as the cache above: without the event API it reads 0
        from numba.core import event

        class Listener(event.Listener):
            def on_start(self, _event) -> None:
                clock.edge(True)

            def on_end(self, _event) -> None:
                clock.edge(False)

        event.register("numba:compile", Listener())
    except (ImportError, AttributeError, TypeError, ValueError, AssertionError):
        pass
    return clock


_COMPILES = _compile_clock()


def compile_seconds() -> float:
    """Seconds this process has spent in Numba compiles so far (one in progress
    included): on the first run after an install or an edit, most of a restore's time;
    0 once everything loads from the cache."""
    return _COMPILES.seconds()


@contextlib.contextmanager
def watch_compiles(callback):
    """Within the block, ``callback(True)`` as Numba starts to compile (the outermost
    compile: the functions it calls compile inside it) and ``callback(False)`` as it
    ends, from whichever thread compiles (for a progress bar)."""
    with _COMPILES.lock:
        _COMPILES.watchers.append(callback)
    try:
        yield
    finally:
        with _COMPILES.lock:
            _COMPILES.watchers.remove(callback)
