"""gpu_pitr.jit's cache hints: prefetch compiles to llvm.prefetch and changes no result,
whatever index it is given (a prefetch never faults); stream_copy copies exactly
with non-temporal stores."""
from __future__ import annotations

import numpy as np
import pytest

from gpu_pitr.jit import njit, prefetch, store_fence, stream_copy


@njit
def _sum_with_hints(a, ahead):
    total = 0
    for i in range(len(a)):
        prefetch(a, i + ahead)  # past the end for the last ``ahead`` elements
        total += a[i]
    return total


@njit
def _hint_2d(h, slot):
    prefetch(h, 2 * slot)
    return h[slot, 1]


@pytest.mark.parametrize("ahead", [0, 8, 1 << 40, -(1 << 40)])
def test_a_hint_changes_no_result(ahead):
    a = np.arange(1000, dtype=np.int64) * 3
    assert _sum_with_hints(a, ahead) == int(a.sum())


def test_it_compiles_to_llvm_prefetch():
    a = np.arange(10, dtype=np.uint8)
    _sum_with_hints(a, 4)
    sig = _sum_with_hints.signatures[0]
    assert "@llvm.prefetch" in _sum_with_hints.inspect_llvm(sig)
    h = np.arange(20, dtype=np.int64).reshape(10, 2)
    assert _hint_2d(h, 7) == 15


def test_it_refuses_what_is_not_an_array_and_an_index():
    from numba.core.errors import TypingError

    @njit
    def bad(x):
        prefetch(x, 1.5)

    with pytest.raises(TypingError):
        bad(np.zeros(3))


@njit
def _streamed(dst, d, src, s, n):
    stream_copy(dst, d, src, s, n)
    store_fence()


@pytest.mark.parametrize("n", [0, 32, 64, 512, 4096 + 96])
@pytest.mark.parametrize("s", [0, 1, 7, 32])
def test_stream_copy_copies_exactly_what_it_is_asked(n, s):
    """Non-temporal stores into an aligned row: the bytes asked for, nothing around
    them (whatever the source's alignment)."""
    from gpu_pitr.hostmem import aligned_empty

    rng = np.random.default_rng(n + s)
    src = rng.integers(0, 256, s + n + 40, dtype=np.uint8)
    dst = aligned_empty((n + 192,), np.uint8)
    dst[:] = 0xAB
    _streamed(dst, 64, src, s, n)
    assert dst.ctypes.data % 64 == 0
    assert np.array_equal(dst[64:64 + n], src[s:s + n])
    assert (dst[:64] == 0xAB).all() and (dst[64 + n:] == 0xAB).all()


def test_stream_copy_compiles_to_non_temporal_stores():
    from gpu_pitr.hostmem import aligned_empty

    a = aligned_empty((128,), np.uint8)  # (an unaligned row would fault)
    _streamed(a, 0, np.ones(64, np.uint8), 0, 64)
    llvm = _streamed.inspect_llvm(_streamed.signatures[0])
    assert "!nontemporal" in llvm
