"""Where a key starts its search in the in-memory open-addressing tables.

The tables are keyed by values the log's writers choose: transaction ids, and ids'
``id_key`` (a fixed, public hash: cheap to steer, ``tests/collisions.py``). Taking a
key's low bits as its home let keys picked to share them line up in one run, and every
probe walked it: quadratic. The home is MurmurHash3's finaliser of the key xor a seed
drawn once per process, passed to the compiled code as an argument (a constant would
be compiled into Numba's on-disk cache, the same for every process). Nothing outside
the process sees a table's layout, so nothing else depends on the seed.
"""

from __future__ import annotations

import os

import numpy as np

from gpu_pitr.format.payload import fmix64, read_uint_le
from gpu_pitr.jit import njit

#: This process's seed (see the module's docstring).
HOME_SEED = np.uint64(int.from_bytes(os.urandom(8), "little"))


@njit(cache=True, nogil=True, inline="always")
def seeded_bytes_key(buf, off, n, seed):
    """A 64-bit key of the bytes ``buf[off:off+n]`` that depends on ``seed`` (as int64):
    each 8-byte word goes through the finaliser, so no difference of two inputs
    cancels whatever the seed (FNV-1a's words cancel their top bits), the length
    first (xored in beside the first word, ``a`` and ``b\\0`` were one key)."""
    h = fmix64(seed ^ np.uint64(n))
    k = 0
    while k + 8 <= n:
        h = fmix64(h ^ read_uint_le(buf, off + k, 8))
        k += 8
    if k < n:
        h = fmix64(h ^ read_uint_le(buf, off + k, n - k))
    return np.int64(fmix64(h ^ seed))


@njit(cache=True, nogil=True, inline="always")
def seeded_home(key, mask, seed):
    """The home slot of ``key`` (64 bits, any sign) in a table of ``mask + 1`` slots
    (a power of two): the whole finaliser, since one round leaves keys that differ
    only in bits 63 and 30 with the same low 30 bits whatever the seed."""
    return np.int64(fmix64(np.uint64(key) ^ seed) & np.uint64(mask))
