"""Ids (and metadata keys) that share one ``payload.id_key``: the adversary's input.

Ids are chosen by the store's users, and the key is cheap to collide on purpose: each
FNV-1a step ``h = (h ^ w) * P`` is invertible mod 2^64 and MurmurHash3's finaliser is a
bijection, so after any prefix the last 8-byte word that gives a chosen key is
``(unfmix(key) * P^-1) ^ h``; about 1 prefix in 256 makes that word ASCII. Thousands of
distinct ASCII ids of one key take a fraction of a second.
"""

from __future__ import annotations

import numpy as np

_M = (1 << 64) - 1
_P = 1099511628211
_OFFSET = 14695981039346656037
_F1, _F2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
_ALPHABET = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", np.uint8)


def unfmix(k: int) -> int:
    """MurmurHash3's finaliser undone (``x ^= x >> 33`` is its own inverse; the
    multiplies are odd): the key of a chosen ``homes.seeded_home`` with seed 0."""
    k ^= k >> 33
    k = k * pow(_F2, -1, 1 << 64) & _M
    k ^= k >> 33
    k = k * pow(_F1, -1, 1 << 64) & _M
    return k ^ (k >> 33)


def key_of(b: bytes) -> int:
    """``payload.id_key`` in plain Python."""
    n = len(b)
    h = _OFFSET ^ n
    for i in range(n // 8):
        h = ((h ^ int.from_bytes(b[8 * i:8 * i + 8], "little")) * _P) & _M
    for c in b[n // 8 * 8:]:
        h = ((h ^ c) * _P) & _M
    h ^= h >> 33
    h = h * _F1 & _M
    h ^= h >> 33
    h = h * _F2 & _M
    return h ^ (h >> 33)


def colliding_ids(count: int, key: int = 0xDEADBEEF12345678, prefix: bytes = b"doc/",
                  seed: int = 0) -> list[str]:
    """``count`` distinct ASCII ids (no NUL) with ``id_key == key``: ``prefix`` padded
    with ``/`` to 8 bytes, 16 random letters, then the one word that gives ``key``."""
    pre = prefix + b"/" * (-len(prefix) % 8)
    n = len(pre) + 24
    target = unfmix(key) * pow(_P, -1, 1 << 64) & _M
    h0 = _OFFSET ^ n
    for i in range(len(pre) // 8):
        h0 = ((h0 ^ int.from_bytes(pre[8 * i:8 * i + 8], "little")) * _P) & _M
    rng = np.random.default_rng(seed)
    out: dict[bytes, None] = {}
    with np.errstate(over="ignore"):
        while len(out) < count:
            rnd = _ALPHABET[rng.integers(0, len(_ALPHABET), (1 << 14, 16))]
            words = rnd.view("<u8")
            h = (np.uint64(h0) ^ words[:, 0]) * np.uint64(_P)
            h = (h ^ words[:, 1]) * np.uint64(_P)
            last = np.uint64(target) ^ h
            ok = (last & np.uint64(0x8080808080808080)) == 0
            tail = last[ok].astype("<u8").view(np.uint8).reshape(-1, 8)
            ok2 = (tail != 0).all(axis=1)
            for r, t in zip(rnd[ok][ok2], tail[ok2], strict=True):
                out[pre + r.tobytes() + t.tobytes()] = None
                if len(out) == count:
                    break
    return [b.decode("ascii") for b in out]


def longest_run(taken: np.ndarray) -> int:
    """The most slots in a row of an open-addressing table that are taken (``taken``: a
    bool a slot), around the table's end too: what a probe may walk."""
    if taken.all():
        return len(taken)
    twice = np.concatenate([taken, taken]).view(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], twice, [0]])))
    return int((edges[1::2] - edges[::2]).max(initial=0))
