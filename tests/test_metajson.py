"""The compiled JSON of metadata maps is json.dumps' text, byte for byte."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_pitr import metajson
from gpu_pitr.format.codec import encode_varint
from gpu_pitr.index import decode_metadata


def _encode(pairs) -> bytes:
    """bincode HashMap<String, String> as written, pairs in the order given (a
    damaged or hostile writer may repeat a key)."""
    out = bytearray(encode_varint(len(pairs)))
    for k, v in pairs:
        for text in (k.encode(), v.encode()):
            out += encode_varint(len(text)) + text
    return bytes(out)


def _want(raw: bytes) -> str:
    return json.dumps(decode_metadata(raw), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def _texts(maps: list[bytes], shuffle: int | None = None) -> list[str]:
    # The maps laid in one arena, with a gap of junk before each (offsets, not a
    # packed run); given to json_texts in some order, read back in the same.
    arena = bytearray()
    offs = []
    for raw in maps:
        arena += b"\xff\x00\x22"
        offs.append(len(arena))
        arena += raw
    offs = np.array(offs, np.int64)
    order = np.arange(len(maps))
    if shuffle is not None:
        np.random.default_rng(shuffle).shuffle(order)
    texts, t_offs, t_lens, chars = metajson.json_texts(
        np.frombuffer(bytes(arena), np.uint8), offs[order])
    got = [""] * len(maps)
    for j, i in enumerate(order.tolist()):
        text = texts[t_offs[j]:t_offs[j] + t_lens[j]].tobytes().decode("utf-8")
        assert chars[j] == len(text)
        got[i] = text
    last = texts[t_offs[-1]:t_offs[-1] + t_lens[-1]].tobytes()
    assert last == b"null" and chars[-1] == 4 and len(t_offs) == len(maps) + 1
    return got


_TRICKY = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f",
                           "\x7f", "\u2028", "é", "日", "\U0001F600", "a", "/"])
_TEXT = st.one_of(st.text(max_size=12), st.lists(_TRICKY, max_size=8).map("".join))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(_TEXT, _TEXT), max_size=40), min_size=1, max_size=8),
       st.integers(0, 2**16))
def test_equal_to_json_dumps(maps, seed) -> None:
    # Up to 40 pairs: the parallel pass and the one-by-one pass (past 32 pairs) both
    # run; repeated keys keep their last value.
    raws = []
    for pairs in maps:
        if pairs and seed % 3 == 0:
            pairs = [*pairs, (pairs[0][0], "again")]
        raws.append(_encode(pairs))
    assert _texts(raws, shuffle=seed) == [_want(r) for r in raws]


def test_escapes_and_key_order_exactly() -> None:
    raws = [
        _encode([]),
        _encode([("b", "2"), ("a", "é"), ("b", "3")]),
        _encode([(chr(c), chr(c)) for c in range(0x20)]),
        _encode([("\U0001F600", "x"), ("\uffff", "y"), ("z", '"\\')]),
    ]
    assert _texts(raws) == [
        "{}",
        '{"a":"é","b":"3"}',
        "{" + ",".join(f'"{e}":"{e}"' for e in [
            *[f"\\u{c:04x}" for c in range(8)], "\\b", "\\t", "\\n", "\\u000b", "\\f",
            "\\r", *[f"\\u{c:04x}" for c in range(14, 32)]]) + "}",
        '{"z":"\\"\\\\","\uffff":"y","\U0001F600":"x"}',
    ]
    assert _texts(raws) == [_want(r) for r in raws]


def test_many_keys_one_map() -> None:
    # One map of 5,000 pairs, written in reverse order with every key twice.
    pairs = [(f"k{i:05d}", f"v{i}") for i in range(5000)][::-1]
    raw = _encode(pairs + [(k, v + "!") for k, v in pairs])
    assert _texts([raw, _encode([("a", "b")])]) == [_want(raw), '{"a":"b"}']


def test_no_maps_only_null() -> None:
    texts, offs, lens, chars = metajson.json_texts(np.zeros(0, np.uint8),
                                                   np.zeros(0, np.int64))
    assert texts.tobytes() == b"null" and offs.tolist() == [0] and chars.tolist() == [4]


def test_every_pair_count_up_to_40() -> None:
    # Each size the encoder treats apart: maps past 32 pairs, which the parallel pass
    # leaves to the one-by-one pass, and those up to 32.
    rng = np.random.default_rng(7)
    raws = [_encode([(f"k{int(x)}é", f"v{int(x)}\n") for x in rng.permutation(n)])
            for n in range(41)]
    assert _texts(raws, shuffle=1) == [_want(r) for r in raws]
