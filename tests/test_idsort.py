"""The order of the restored index: ids sorted by their UTF-8 bytes, exactly."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_pitr.resolve.idsort import sorted_id_order


def _arena(ids: list[bytes]):
    lens = np.array([len(b) for b in ids], np.int64)
    offs = np.cumsum(lens) - lens
    arena = np.frombuffer(b"".join(ids) or b"\0", np.uint8).copy()
    return arena, offs, lens


# Shared prefixes, NULs, high bytes and lengths around the 8-byte words.
_ID = st.builds(lambda p, s: p + s,
                st.sampled_from([b"", b"https://data.example.org/item/", b"\xff" * 7, b"a\0"]),
                st.binary(max_size=19))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ID, max_size=60))
def test_ids_sort_by_bytes(ids):
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)
    # Equal ids keep their order (the sort is stable).
    assert all(order[k] < order[k + 1] for k in range(len(ids) - 1)
               if ids[order[k]] == ids[order[k + 1]])


def test_ids_longer_than_a_16_bit_length_sort_by_bytes():
    # Equal after zero padding, so only the lengths order them: 65535 and 65536 bytes
    # (as 16-bit numbers 65535 and 0).
    short = b"x" * 65_535
    ids = [short + b"\0", b"y", short, b"x"]
    order = sorted_id_order(*_arena(ids))
    assert [ids[i] for i in order] == sorted(ids)


@settings(max_examples=300, deadline=None)
@given(_ID, _ID)
def test_compare_ids_is_byte_order(a, b):
    from gpu_pitr.resolve.idsort import compare_ids

    arena, offs, lens = _arena([a, b])
    want = (a > b) - (a < b)
    assert compare_ids(arena, offs[0], lens[0], arena, offs[1], lens[1]) == want
    assert compare_ids(arena, offs[1], lens[1], arena, offs[0], lens[0]) == -want


@settings(max_examples=200, deadline=None)
@given(st.sets(_ID, max_size=80), st.data())
def test_merge_order_of_two_sorted_lists(ids, data):
    # The parallel merge (parts cut at ids of the first list) equals a plain sort.
    from gpu_pitr.snapshot.base import _merge_order

    ids = sorted(ids)
    in_a = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    a = [x for x, f in zip(ids, in_a, strict=True) if f]
    b = [x for x, f in zip(ids, in_a, strict=True) if not f]
    src, pos = _merge_order(*_arena(a), *_arena(b))
    assert [(a if s == 0 else b)[p] for s, p in zip(src, pos, strict=True)] == ids
