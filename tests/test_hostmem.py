"""The restore turns NumPy's huge-page advice off while it allocates (unless free
2 MiB blocks cover what it fills twice over), and puts it back after."""

import threading

import numpy as np
import pytest

from gpu_pitr import hostmem


def _advice():
    setter = hostmem._setter()
    was = setter(True)  # read the setting by setting it, then put it back
    setter(was)
    return bool(was)


@pytest.fixture
def advice_on(monkeypatch):
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    setter = hostmem._setter()
    assert setter is not None, "this NumPy has no _set_madvise_hugepage"
    before = setter(True)
    yield
    setter(before)


def test_off_inside_restored_after_and_reentrant(advice_on):
    assert _advice() is True
    with hostmem.fill_once_pages():
        assert _advice() is False
        with hostmem.fill_once_pages():
            assert _advice() is False
        assert _advice() is False  # the outer block still holds it
    assert _advice() is True


def test_restored_after_an_error(advice_on):
    with pytest.raises(RuntimeError), hostmem.fill_once_pages():
        raise RuntimeError("boom")
    assert _advice() is True


def test_overlapping_threads_restore_once_both_leave(advice_on):
    inside = threading.Barrier(2)
    seen = []

    def worker():
        with hostmem.fill_once_pages():
            inside.wait()
            seen.append(_advice())
            inside.wait()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False, False]
    assert _advice() is True


def test_user_choice_is_left_alone(advice_on, monkeypatch):
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    with hostmem.fill_once_pages():
        assert _advice() is True


def test_huge_page_blocks_are_counted_from_buddyinfo():
    import os

    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            huge = int(f.read())
    except OSError:
        assert hostmem.huge_blocks_free("Node 0, zone Normal 1 2") is None
        return
    page = os.sysconf("SC_PAGE_SIZE")
    order = (huge // page).bit_length() - 1
    counts = list(range(1, 12))
    text = ("Node 0, zone      DMA " + " ".join(map(str, counts)) + "\n"
            "Node 0, zone   Normal " + " ".join(map(str, counts)) + "\n")
    want = 2 * sum(c * (page << k) for k, c in enumerate(counts) if k >= order)
    assert want > 0 and hostmem.huge_blocks_free(text) == want


def test_the_advice_stays_only_when_huge_blocks_cover_the_need_twice(monkeypatch):
    keep = hostmem.keep_huge_page_advice
    assert keep(1 << 30, free=2 << 30) and not keep(1 << 30, free=(2 << 30) - 1)
    assert not keep(None, free=1 << 40) and keep(0, free=0)
    monkeypatch.setattr(hostmem, "huge_blocks_free", lambda: None)  # not Linux
    assert not keep(1)


def test_kept_when_memory_is_plentiful_and_inner_blocks_follow(advice_on, monkeypatch):
    monkeypatch.setattr(hostmem, "huge_blocks_free", lambda: 1 << 40)
    with hostmem.fill_once_pages(need=1 << 30):
        assert _advice() is True
        with hostmem.fill_once_pages():  # no need given: the outer block's choice holds
            assert _advice() is True
    monkeypatch.setattr(hostmem, "huge_blocks_free", lambda: 1 << 20)
    with hostmem.fill_once_pages(need=1 << 30):
        assert _advice() is False
    assert _advice() is True


@pytest.mark.parametrize("free, advised", [(0, False), (1 << 40, True), (None, False)])
def test_restore_runs_inside_the_block(advice_on, monkeypatch, tmp_path, free, advised):
    from gpu_pitr import restore
    from gpu_pitr.format.entries import Insert
    from gpu_pitr.format.writer import WalWriter

    seen = []
    real = np.empty

    def spy(*args, **kwargs):
        seen.append(_advice())
        return real(*args, **kwargs)

    with WalWriter(tmp_path) as w:
        w.append(Insert(id="a", vector=[1.0, 2.0], metadata=None, timestamp=1))
    monkeypatch.setattr("gpu_pitr.resolve.hostmap.np.empty", spy)
    monkeypatch.setattr(hostmem, "huge_blocks_free", lambda: free)
    index = restore(tmp_path, backend="cpu")
    assert list(index.ids) == ["a"]
    assert seen and all(a is advised for a in seen)
    assert _advice() is True


def _policy_after_import(env_extra: dict) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    code = "import os, gpu_pitr; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_openmp_workers_wait_passively_unless_the_user_chose():
    assert _policy_after_import({}) == "PASSIVE"
    assert _policy_after_import({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


@pytest.mark.parametrize("block", [1, 4095, 4096, 10_000, 1 << 26])
def test_join_releasing_is_concatenate(block):
    def parts():  # spent by each join: made anew
        rng = np.random.default_rng(block)
        # Views that start inside pages, as the shards' arenas cut to their used bytes.
        return [rng.integers(0, 256, n + 40, dtype=np.uint8)[17:17 + n]
                for n in (0, 1, 5000, 70_001, 3)]

    want = np.concatenate(parts())
    assert np.array_equal(hostmem.join_releasing(parts(), np.uint8, block=block), want)
    roomy = hostmem.join_releasing(parts(), np.uint8, size=len(want) + 99, block=block)
    assert len(roomy) == len(want) + 99 and np.array_equal(roomy[: len(want)], want)


@pytest.mark.skipif(hostmem._madvise_fn() is False, reason="no madvise here (not Linux)")
def test_join_releasing_hands_back_the_pages_it_copied():
    """The whole pages of each part are handed back (they read as zeros after); the
    partial pages at a part's ends are not (they are not the part's alone)."""
    page = hostmem.os.sysconf("SC_PAGE_SIZE")
    big = np.full(64 * page + 123, 7, np.uint8)
    part = big[100:]  # starts inside a page
    got = hostmem.join_releasing([part, np.full(10, 9, np.uint8)], np.uint8, block=5 * page)
    assert (got[: len(part)] == 7).all() and (got[len(part):] == 9).all()
    start = -(-part.ctypes.data // page) * page - part.ctypes.data
    end = (part.ctypes.data + len(part)) // page * page - part.ctypes.data
    assert (part[:start] == 7).all() and (part[end:] == 7).all()
    assert not part[start:end].any() and end - start >= 62 * page


def test_copy_releasing_refuses_a_strided_source():
    """Pages are handed back by address: a strided view would hand back the bytes
    between its elements, which are not its own."""
    src = np.arange(100, dtype=np.uint8)[::2]
    with pytest.raises(ValueError, match="contiguous"):
        hostmem.copy_releasing(np.empty(50, np.uint8), src)
