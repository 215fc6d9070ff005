"""gpu_pitr.jit.prefetch: a cache hint that compiles to llvm.prefetch and changes no
result, whatever index it is given (a prefetch never faults)."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_pitr.jit import njit, prefetch


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
