"""The on-disk compiled-code cache follows edits anywhere in the package (gpu_pitr.jit).

Numba alone keys a cached function to its own file, so a function that inlines a
``register_jitable`` helper from another module would keep loading machine code
built from the helper's old source. Here a copy of the package is edited in
``format/payload.py`` only, and ``frame_records`` (in ``format/frame.py``, which
inlines the payload module's ``read_uint_le``) must run the edited code in the next
process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path.insert(0, sys.argv[1])
import numpy as np
import gpu_pitr
assert gpu_pitr.__file__.startswith(sys.argv[1]), gpu_pitr.__file__
from gpu_pitr.format.frame import frame_records
from gpu_pitr.jit import INSTALLED
buf = np.frombuffer(bytes.fromhex(sys.argv[2]), np.uint8).copy()
off, length, seq = (np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.uint64))
n, _, _ = frame_records(buf, 0, len(buf), off, length, seq)
print(INSTALLED, int(n), int(seq[0]))
"""


# Dies (SIGKILL's stand-in) between Numba's two writes of frame._frame's cache entry:
# its index is written, its data file not.
DIE_BEFORE_DATA = """
import os
from numba.core import caching
_save_data = caching.IndexDataCacheFile._save_data
def _die(self, name, data):
    if name.startswith("frame._frame-"):
        os._exit(9)
    return _save_data(self, name, data)
caching.IndexDataCacheFile._save_data = _die
"""

RECORD = (41).to_bytes(8, "little") + (3).to_bytes(4, "little") + b"abc"


def _probe(tree: Path, record: bytes, cache: Path, *, before: str = "",
           status: int = 0) -> str:
    env = {"NUMBA_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", before + PROBE, str(tree), record.hex()],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == status, out.stderr[-2000:]
    return out.stdout.strip()


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "gpu_pitr", tree / "gpu_pitr", ignore=ignore)
    shutil.copytree(ROOT / "kernels", tree / "kernels", ignore=ignore)
    return tree


def _edit_payload(tree: Path) -> None:
    """8-byte reads (the sequence number) come back one larger; 4-byte ones (lengths)
    not."""
    payload = tree / "gpu_pitr" / "format" / "payload.py"
    text = payload.read_text()
    old = "        v |= np.uint64(b[k]) << np.uint64(8 * k)\n    return v\n"
    assert old in text
    payload.write_text(text.replace(old, old[:-len("    return v\n")]
                                    + "    return v + np.uint64(nbytes == 8)\n"))


def test_an_edit_to_an_inlined_helper_in_another_module_recompiles(tmp_path):
    tree = _copy(tmp_path)
    cache = tmp_path / "numba-cache"

    assert _probe(tree, RECORD, cache) == "True 1 41"
    assert _probe(tree, RECORD, cache) == "True 1 41"  # from the cache
    assert any(cache.rglob("frame._frame-*.nbi")), "frame_records was not cached"

    _edit_payload(tree)
    assert _probe(tree, RECORD, cache) == "True 1 42"


def test_a_process_killed_between_the_index_and_the_data_write_leaves_no_old_code(tmp_path):
    """Numba writes a function's index, then its data file, and after an edit it numbers
    data files from 1 again: killed between the two, the new index named the old
    source's ``.1.nbc``, and the next process ran the old machine code (41, not 42).
    The package digest in the file names keeps an edit's files apart, and the old
    version's files are removed once the new index is written."""
    tree = _copy(tmp_path)
    cache = tmp_path / "numba-cache"
    assert _probe(tree, RECORD, cache) == "True 1 41"
    old = sorted(p.name for p in cache.rglob("frame._frame-*"))
    assert len(old) == 2, old  # its index and one data file

    _edit_payload(tree)
    assert _probe(tree, RECORD, cache, before=DIE_BEFORE_DATA, status=9) == ""
    assert _probe(tree, RECORD, cache) == "True 1 42"
    assert _probe(tree, RECORD, cache) == "True 1 42"  # from the cache
    new = sorted(p.name for p in cache.rglob("frame._frame-*"))
    assert len(new) == 2 and not set(new) & set(old), (old, new)


# The digest is taken (gpu_pitr.jit imported), then the sources change under the running
# process (a checkout, an upgrade in place) before frame.py is imported and compiled.
EDIT_AFTER_THE_DIGEST = """
import shutil, sys
sys.path.insert(0, sys.argv[1])
import gpu_pitr.jit
shutil.copyfile({edited!r}, {payload!r})
"""


def test_code_compiled_from_sources_changed_after_the_digest_is_not_cached(tmp_path):
    """Modules are imported lazily, after the digest was taken: one whose sources changed
    in between compiled the new source and cached it under the old digest, and a
    process of the old sources then ran the new code (42, not 41). Such code is now
    used in memory only."""
    tree = _copy(tmp_path)
    cache = tmp_path / "numba-cache"
    payload = tree / "gpu_pitr" / "format" / "payload.py"
    original = payload.read_text()
    _edit_payload(tree)
    edited = tmp_path / "edited.py"
    edited.write_text(payload.read_text())
    payload.write_text(original)

    before = EDIT_AFTER_THE_DIGEST.format(edited=str(edited), payload=str(payload))
    assert _probe(tree, RECORD, cache, before=before) == "True 1 42"  # the edited code ran
    payload.write_text(original)  # (the same digest as the first process took)
    assert _probe(tree, RECORD, cache) == "True 1 41"
    assert _probe(tree, RECORD, cache) == "True 1 41"  # cached now, from these sources


def test_only_the_functions_own_files_of_other_digests_are_pruned():
    from gpu_pitr.jit import _other_versions

    tag, other = "0123456789ab", "ba9876543210"
    index = f"frame._frame-30-{tag}.py311.nbi"
    names = [index, f"frame._frame-30-{tag}.py311.1.nbc",
             f"frame._frame-30-{tag}.py312.nbi",  # another Python, this digest: kept
             f"frame._frame-28-{other}.py311.nbi", f"frame._frame-28-{other}.py311.2.nbc",
             "frame._frame-30.py311.nbi", "frame._frame-30.py311.1.nbc",  # no digest
             f"frame._frame_x-30-{other}.py311.nbi",  # another function
             f"frame.outer.locals._frame-9-{other}.py311.nbi",
             f"frame._frame-30-{other}.py311.nbi.tmp"]  # not a cache file
    assert sorted(_other_versions(names, index, tag)) == sorted([
        f"frame._frame-28-{other}.py311.nbi", f"frame._frame-28-{other}.py311.2.nbc",
        "frame._frame-30.py311.nbi", "frame._frame-30.py311.1.nbc"])
    assert _other_versions(names, "frame._frame-30.py311.nbi", tag) == []


def test_functions_outside_the_package_keep_numbas_locators(tmp_path):
    import numba
    from numba.core import caching

    from gpu_pitr import jit
    from gpu_pitr.format import frame

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    assert jit.INSTALLED
    assert getattr(impl._locator_classes[0], "_gpu_pitr", False)
    ours = frame._frame._cache._impl._locator
    assert getattr(ours, "_gpu_pitr", False)
    assert ours.get_source_stamp()[1] == jit.package_digest()

    module = tmp_path / "elsewhere.py"
    module.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import elsewhere
    finally:
        sys.path.remove(str(tmp_path))
    f = numba.njit(cache=True)(elsewhere.f)
    theirs = f._cache._impl._locator
    assert not getattr(theirs, "_gpu_pitr", False)
    assert f(np.int64(1)) == 2


def test_where_the_package_tree_is_not_writable_the_fallback_is_stamped_too(monkeypatch):
    """A read-only install: Numba's locators pass over a directory they cannot write
    (the user's cache directory serves instead); the package digest must stamp that
    cache as well (else an upgrade that edits only an inlined helper would load
    stale machine code)."""
    from numba.core import caching

    from gpu_pitr import jit
    from gpu_pitr.format import frame

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    ours = impl._locator_classes[0]

    def read_only(self):
        raise PermissionError(13, "Permission denied", self.get_cache_path())

    in_tree = getattr(caching, "InTreeCacheLocator", None) or caching._InTreeCacheLocator
    monkeypatch.setattr(in_tree, "ensure_cache_path", read_only)
    locator = ours.from_function(frame._frame.py_func, frame.__file__)
    assert locator is not None and getattr(locator, "_gpu_pitr", False)
    assert not isinstance(locator._inner, in_tree)
    assert locator.get_source_stamp()[1] == jit.package_digest()


def test_where_no_numba_locator_can_cache_the_users_own_temp_dir_serves(monkeypatch, tmp_path):
    """site-packages read-only and no usable home (a service account, HOME=/nonexistent):
    every Numba locator passes the file over, and Numba raised "no locator available"
    at import, a traceback. The cache goes to <tempdir>/gpu_pitr-numba-<uid> (0700,
    ours alone); where that is another's, to nowhere: compiled in memory, one warning."""
    import os
    import stat
    import tempfile

    from numba.core import caching

    from gpu_pitr import jit
    from gpu_pitr.format import frame

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    ours = impl._locator_classes[0]
    for other in impl._locator_classes[1:]:
        monkeypatch.setattr(other, "from_function", classmethod(lambda cls, f, p: None))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    locator = ours.from_function(frame._frame.py_func, frame.__file__)
    root = tmp_path / f"gpu_pitr-numba-{os.getuid()}"
    assert getattr(locator, "_gpu_pitr", False)
    assert locator.get_cache_path().startswith(str(root))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert locator.get_source_stamp()[1] == jit.package_digest()
    # Not ours (open to others): not used; a path no write reaches instead.
    root.chmod(0o777)
    locator = ours.from_function(frame._frame.py_func, frame.__file__)
    assert locator is not None and not locator.get_cache_path().startswith(str(tmp_path))
    locator.ensure_cache_path()  # no error here: the guarded write warns instead


def test_a_second_caching_module_gets_the_package_locator_too():
    """numba-cuda caches its kernels through its own copy of Numba's caching module
    (``numba.cuda.core.caching``), which ``kernels/__init__.py`` patches through
    ``install_for``. Here a second copy of ``numba.core.caching``, loaded as a module of
    its own, stands in for it: the package's kernels get the digest stamp there, other
    files keep that module's locators, and its cache I/O is guarded."""
    import importlib.util

    from numba.core import caching

    from gpu_pitr import jit
    from gpu_pitr.format import frame

    spec = importlib.util.spec_from_file_location("gpu_pitr_test_caching", caching.__file__)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    impl = getattr(other, "CacheImpl", None) or other._CacheImpl
    before = list(impl._locator_classes)
    assert not any(getattr(c, "_gpu_pitr", False) for c in before)
    assert jit._install(other) and jit._install(other)  # once only
    ours = impl._locator_classes[0]
    assert getattr(ours, "_gpu_pitr", False) and impl._locator_classes[1:] == before
    locator = ours.from_function(frame._frame.py_func, frame.__file__)
    assert locator.get_source_stamp()[1] == jit.package_digest()
    assert ours.from_function(shutil.which.__code__, shutil.__file__) is None
    assert getattr(other.Cache._guard_against_spurious_io_errors, "_gpu_pitr", False)
    # The module numba.core.caching itself, or one that is not there: nothing to do.
    assert jit.install_for("numba.core.caching") is True
    assert jit.install_for("numba.no_such_caching_module") is False


def test_a_data_file_holding_another_entrys_code_is_not_loaded(tmp_path):
    """Numba numbers a new entry's data file from the index it read: two processes
    compiling two signatures of one function at once can both write ``.1.nbc``, and the
    index then names the other signature's machine code. Here the two data files are
    swapped, as that race leaves them: neither is loaded for the other's key (Numba's
    own loads them as they are), and a save puts the right one back."""
    import os

    from numba.core import caching

    from gpu_pitr.jit import digest_tag

    def entry(base):
        return caching.IndexDataCacheFile(str(tmp_path), base, source_stamp=("s", 1))

    def swap():
        one, two = tmp_path / f"{base}.1.nbc", tmp_path / f"{base}.2.nbc"
        os.replace(one, tmp_path / "t")
        os.replace(two, one)
        os.replace(tmp_path / "t", two)

    for base, checked in ((f"f-1-{digest_tag()}.py311", True), ("g-1.py311", False)):
        cache = entry(base)
        cache.save(("int64",), "code for int64")
        cache.save(("float64",), "code for float64")
        assert cache.load(("int64",)) == "code for int64"
        swap()
        if not checked:  # another package's function: Numba's files, as Numba reads them
            assert cache.load(("int64",)) == "code for float64"
            continue
        assert cache.load(("int64",)) is None and cache.load(("float64",)) is None
        cache.save(("int64",), "code for int64")
        assert entry(base).load(("int64",)) == "code for int64"


def test_a_damaged_cache_file_is_compiled_afresh_not_a_crash(tmp_path):
    """A cache file that is empty, cut short or garbage (a power cut before its write
    reached the disk: Numba writes a temp file and renames it, with no fsync; a partial
    copy of a cache directory; a disk error) made every later process fail with a
    traceback from pickle (EOFError, UnpicklingError, UnicodeDecodeError...) or LLVM,
    until someone removed the file. A flipped byte that still unpickled could load
    other machine code. Such an index is read as no index, such a data file as no
    entry: compiled afresh and written over, so the run after heals the file."""
    tree = _copy(tmp_path)
    cache = tmp_path / "numba-cache"
    assert _probe(tree, RECORD, cache) == "True 1 41"
    files = sorted(cache.rglob("frame._frame-*"))
    assert [p.suffix for p in files] == [".nbc", ".nbi"], files
    good = {p: p.read_bytes() for p in files}
    for path in files:
        data = good[path]
        flipped = bytearray(data)
        flipped[len(data) * 3 // 4] ^= 0x10  # inside the machine code's bytes, for .nbc
        for damaged in (b"", data[:len(data) // 2], bytes(len(data)), bytes(flipped)):
            for p, d in good.items():
                p.write_bytes(d)
            path.write_bytes(damaged)
            # No traceback, no warning: the cache is only a cache.
            assert _probe(tree, RECORD, cache) == "True 1 41"
            if damaged != bytes(flipped) or path.suffix == ".nbc":  # (a flipped index
                assert path.read_bytes() != damaged  # may still read: its stamp or key off)
            assert _probe(tree, RECORD, cache) == "True 1 41"


def test_a_hidden_file_in_the_package_such_as_an_editors_lock_is_not_read(tmp_path):
    """Emacs marks a file being edited with a dangling link ``.#cli.py``: the digest read
    it and every command failed at import (FileNotFoundError). Hidden files are never
    modules; they are left out."""
    tree = _copy(tmp_path)
    (tree / "gpu_pitr" / ".#cli.py").symlink_to("user@host.1234:1700000000")
    assert _probe(tree, RECORD, tmp_path / "numba-cache") == "True 1 41"
