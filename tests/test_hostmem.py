"""The restore turns NumPy's huge-page advice off while it allocates, and back after."""

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


def test_restore_runs_inside_the_block(advice_on, monkeypatch, tmp_path):
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
    index = restore(tmp_path, backend="cpu")
    assert list(index.ids) == ["a"]
    assert seen and not any(seen)
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
