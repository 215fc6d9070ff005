"""The fuzzer's parts, shared by tests/test_fuzz.py (bounded, derandomised, in CI) and
scripts/fuzz.py (the long campaign): seed WALs, mutators, hostile payloads, and one
differential run of a mutated input (the fast restore against tests/reference.py).

Every mutator draws its choices through ``pick(n) -> int in [0, n)``: hypothesis
drives it in CI (so a failing input shrinks), ``random.Random`` in the campaign.
Inputs are plain ``{file name: bytes}`` dicts, so a failing one can be saved as a
directory (``save_case``) and replayed (``load_case``).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import reference
import workloads as w

# (Here, not in ``outcome``: imported first inside a hypothesis test, the module's own
# @given tests fail hypothesis's nested-given health check, as a run of test_fuzz.py
# alone showed with hypothesis 6.170.)
from test_restore_properties import assert_matches
from workloads import Abort, Batch, Begin, Ckpt, Commit, Del, Ins, LogBuilder, Upd, bits, f32

from gpu_pitr import errors
from gpu_pitr.format import mapped, readahead

Pick = Callable[[int], int]
Files = dict[str, bytes]

MAGIC_V1 = b"WALV\x01\x00\x00\x00"
SEG0 = 0x5F5E100
# Every outcome a restore may have on any input: success or one of these errors.
ALLOWED_ERRORS = (
    "BadSegmentError",
    "CorruptRecordError",
    "DimensionMismatchError",
    "IncompleteHistoryError",
    "TargetNotFoundError",
)
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


# ----------------------------------------------------------------------------- seeds
@dataclass
class Seed:
    """A real WAL to mutate, with the timestamps and seqs its targets are drawn from."""

    name: str
    files: Files
    timestamps: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)


def _seed_of(name: str, b: LogBuilder, recs: list) -> Seed:
    files = {n: bytes(d) for n, d in b.files.items()}
    ts = sorted({t for t in _timestamps_of(files)})
    return Seed(name, files, ts, sorted({r.seq for r in recs}))


def _timestamps_of(files: Files) -> list[int]:
    out = []
    for name in sorted(files, key=str.encode):
        for off, length in record_spans(files[name]):
            payload = files[name][off + 12 : off + 12 + length]
            try:
                entry, _ = reference.decode_payload(payload)
            except reference.Undecodable:
                continue
            out.append(entry[-1])
    return out


def _builder_seed() -> Seed:
    """Hand-built: transactions across segments, aborts, anomalies, nested batches,
    restarts (second header, new file), trailing bytes, awkward ids and float bits."""
    b = LogBuilder(created=SEG0)
    r = [
        b.add(Ins("a", f32(1, 2, 3), {"k": "v"}, 100)),
        b.add(Ins("é", bits(0x7FC12345, 0x80000000, 0x7F800000), None, 101)),
        b.add(Begin(7, 102)),
        b.add(Ins("tx", f32(4, 5, 6), {"": "\x00"}, 103)),
        b.add(Batch([Upd("a", f32(0, 0, 1)), Batch([Del("é"), Ins("日本", f32(7, 8, 9))])], 104)),
        b.add(Begin(8, 105)),
        b.add(Ins("aborted", f32(1, 1, 1), None, 106)),
        b.add(Abort(8, 107)),
        b.add(Commit(7, 108)),
        b.add(Commit(99, 109)),  # anomaly: not open
        b.add(Ckpt(8, 110)),
    ]
    b.new_segment(SEG0 + 1)
    r += [
        b.add(Upd("missing", f32(2, 2, 2), {"m": "1"}, 111)),
        b.add(Del("nobody", 109)),  # an earlier timestamp: log order decides
        b.add(Begin(9, 112)),
        b.add(Ins("a\x00", f32(3, 3, 3), {"k\x00": "値"}, 113), trailing=b"\x01\x02"),
    ]
    b.new_segment(SEG0 + 2)
    r += [b.add(Ins("late", f32(5, 5, 5), None, 114)), b.add(Commit(9, 115))]
    b.reopen()  # same second: a second header, seq back to 0
    r += [b.add(Ins("🙂", f32(6, 6, 6), {"x": "y"}, 116)), b.add(Del("a", 117))]
    b.reopen(SEG0 + 3)
    r += [b.add(Batch([], 118)), b.add(Upd("🙂", f32(-0.0, 1, 2), None, 119))]
    return _seed_of("builder", b, r)


def _writer_seed() -> Seed:
    """Written by the oxirs-identical ``WalWriter``: size rotation, automatic checkpoints,
    buffered writes, and a reopen within the same second."""
    from gpu_pitr.format.writer import WalWriter

    tick = itertools.count(1_700_000_000)
    ents = [
        Ins("v1", f32(1, 2, 3), {"src": "a"}, 1000),
        Ins("v2", f32(4, 5, 6), None, 1001),
        Begin(1, 1002),
        Upd("v1", f32(7, 8, 9), None, 1003),
        Batch([Ins("v3", f32(1, 1, 1)), Del("v2"), Batch([Upd("v3", f32(2, 2, 2), {"n": "2"})])],
              1004),
        Commit(1, 1005),
        Begin(2, 1006),
        Ins("gone", f32(0, 0, 0), None, 1007),
        Abort(2, 1008),
        Del("v3", 1009),
        Ins("v4", f32(3, 2, 1), {"a": "b", "c": "d"}, 1010),
    ]
    with tempfile.TemporaryDirectory() as d:
        seqs, created = [], 0
        with WalWriter(d, clock=lambda: next(tick), max_segment_bytes=200,
                       checkpoint_interval=4, buffer_size=48) as wal:
            for e in ents:
                seqs.append(wal.append(w.to_project_entry(e)))
            created = int(wal.path.name[4:20], 16)
        with WalWriter(d, created=created, clock=lambda: created) as wal:
            seqs.append(wal.append(w.to_project_entry(Ins("v5", f32(9, 9, 9), None, 1011))))
            seqs.append(wal.append(w.to_project_entry(Del("v1", 1012))))
        files = {n: Path(d, n).read_bytes() for n in os.listdir(d)}
    seqs += [s for n in files for s in _seqs_of(files[n])]
    return Seed("writer", files, sorted(set(_timestamps_of(files))), sorted(set(seqs)))


def _seqs_of(data: bytes) -> list[int]:
    return [struct.unpack_from("<Q", data, off)[0] for off, _ in record_spans(data)]


def _deep_seed() -> Seed:
    """Valid batches nested past the 64-level stack of the first decode pass."""
    b = LogBuilder(created=SEG0)
    r = [b.add(Ins("top", f32(1, 2), None, 10))]
    for depth in (63, 64, 65, 130):
        inner = Ins(f"d{depth}", f32(depth, 0), None, 0)
        for _ in range(depth):
            inner = Batch([inner], 0)
        r.append(b.add(Batch([inner, Del("top")], 10 + depth)))
    return _seed_of("deep", b, r)


def colliding_ids(count: int) -> list[tuple[str, str]]:
    """Pairs of different 16-byte ASCII ids with the same 64-bit id key.

    The key is FNV-1a over 8-byte words (then a bijective finaliser): after the first
    word the states h(a1) and h(b1) differ, and a second word b2 = a2 ^ h(a1) ^ h(b1)
    brings them together. b1 is searched until b2 is ASCII (and so valid UTF-8).
    """
    from gpu_pitr.format.payload import FNV_OFFSET, FNV_PRIME

    off, prime, mask = int(FNV_OFFSET), int(FNV_PRIME), (1 << 64) - 1

    def state(word: bytes) -> int:
        return (((off ^ 16) ^ int.from_bytes(word, "little")) * prime) & mask

    # Random printable first words: FNV's multiplier mixes neighbouring words poorly.
    rng = random.Random(count)
    pairs = []
    for k in range(count):
        a1, a2 = f"id{k:06d}".encode(), b"-samekey"
        while True:
            b1 = bytes(rng.randrange(0x21, 0x7F) for _ in range(8))
            b2 = int.from_bytes(a2, "little") ^ state(a1) ^ state(b1)
            raw = b2.to_bytes(8, "little")
            if max(raw) < 0x80:
                pairs.append(((a1 + a2).decode(), (b1 + raw).decode()))
                break
    return pairs


def _collide_seed() -> Seed:
    """Ids whose 64-bit keys really collide (no monkeypatching): they must stay apart.
    Pairs, then six ids of one key (the host map marks the key: its ids past the first
    go in by a seeded hash of their bytes)."""
    from collisions import colliding_ids as of_one_key

    b = LogBuilder(created=SEG0)
    r = []
    for k, (x, y) in enumerate(colliding_ids(2)):
        r += [
            b.add(Ins(x, f32(k, 1), {"who": "x"}, 10 * k)),
            b.add(Ins(y, f32(k, 2), None, 10 * k + 1)),
            b.add(Batch([Upd(y, f32(k, 3)), Del(x), Ins(x, f32(k, 4), None)], 10 * k + 2)),
            b.add(Del(y, 10 * k + 3)),
            b.add(Upd(y, f32(k, 5), {"again": "y"}, 10 * k + 4)),
        ]
    same = of_one_key(6)
    r += [b.add(Ins(x, f32(k, 6), None, 30 + k)) for k, x in enumerate(same)]
    r += [b.add(Batch([Del(same[0]), Upd(same[3], f32(7, 7)), Ins(same[0], f32(8, 8), None)], 40)),
          b.add(Del(same[1], 41)), b.add(Upd(same[1], f32(9, 9), {"back": "1"}, 42))]
    return _seed_of("collide", b, r)


def _tiny_seed() -> Seed:
    """Small enough for the CUDA simulator: one transaction, a batch, two segments."""
    b = LogBuilder(created=SEG0)
    r = [
        b.add(Ins("a", f32(1, 2), {"k": "v"}, 5)),
        b.add(Begin(1, 6)),
        b.add(Batch([Ins("b", f32(3, 4)), Upd("a", f32(5, 6))], 7)),
        b.add(Commit(1, 8)),
    ]
    b.new_segment(SEG0 + 1)
    r += [b.add(Del("b", 9)), b.add(Ins("c", bits(0x7FC00001, 0xFF800000), None, 10))]
    return _seed_of("tiny", b, r)


def _flat_seed() -> Seed:
    """Hundreds of tiny records (3-byte payloads), so a piece holds more records than the
    framing table's first size; transactions open across many of them."""
    b = LogBuilder(created=SEG0)
    r = []
    for k in range(120):
        r.append(b.add(Begin(k, k)))
        r.append(b.add(Ins(chr(65 + k % 26), f32(k), None, k)))
        r.append(b.add(Del("", k)))
        r.append(b.add(Ckpt(k, k)))
        if k % 3:
            r.append(b.add((["commit", "abort"][k % 2 == 0 and k % 4 == 0], k, k)))
        if k == 60:
            b.new_segment(SEG0 + 1)
    return _seed_of("flat", b, r)


_SEEDS: list[Seed] | None = None


def seeds() -> list[Seed]:
    """Every seed WAL (built once)."""
    global _SEEDS
    if _SEEDS is None:
        _SEEDS = [_builder_seed(), _writer_seed(), _deep_seed(), _collide_seed(), _tiny_seed(),
                  _flat_seed()]
    return _SEEDS


def seed(name: str) -> Seed:
    return next(s for s in seeds() if s.name == name)


# ----------------------------------------------------------------------------- framing
def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, payload length) of each whole record of one segment's bytes, as framed."""
    out = []
    if data[:8] != MAGIC_V1:
        return out
    pos = 16
    while len(data) - pos >= 12:
        if data[pos : pos + 8] == MAGIC_V1:
            pos += 16
            continue
        length = struct.unpack_from("<I", data, pos + 8)[0]
        if length > len(data) - pos - 12:
            break
        out.append((pos, length))
        pos += 12 + length
    return out


def segment_names(files: Files) -> list[str]:
    return sorted((n for n in files if reference._NAME.fullmatch(n)), key=str.encode)


def _all_records(files: Files) -> list[tuple[str, int, int]]:
    return [(n, off, ln) for n in segment_names(files) for off, ln in record_spans(files[n])]


# ----------------------------------------------------------------------------- hostile bytes
def varint(n: int) -> bytes:
    return w.varint(n)


# Encodings of "a count that does not fit": every marker width, u128, the invalid 255.
HUGE_VARINTS = [
    b"\xfb\xff\xff",
    b"\xfc\xff\xff\xff\xff",
    b"\xfc\x00\x00\x00\x80",
    b"\xfd" + b"\xff" * 8,
    b"\xfd" + b"\x00" * 7 + b"\x80",
    b"\xfd\x00\x00\x00\x00\x01\x00\x00\x00",  # 2**32: wraps to 0 in a u32
    b"\xfe" + b"\xff" * 16,
    b"\xfe" + b"\x01" + b"\x00" * 15,
    b"\xff",
    b"\xfd\x00\x00\x00\x00\x00\x00\x00\x40",  # 2**62: * 4 overflows an int64
]
BAD_UTF8 = [
    b"\xff",
    b"\x80",
    b"a\x80b",
    b"\xc0\x80",  # overlong NUL
    b"\xc1\xbf",
    b"\xe0\x80\x80",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xe6\x97",  # truncated 3-byte sequence
    b"abcdefg\xe6",  # truncated after an ASCII run of 7
    b"abcdefgh\xf0\x9f\x99",  # truncated 4-byte sequence after 8 ASCII bytes
]
INTERESTING_BYTES = [0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x7F, 0x80, 0xFA, 0xFB, 0xFC, 0xFD,
                     0xFE, 0xFF]
INTERESTING_LENGTHS = [0xFFFFFFFF, 0xFFFFFFF4, 0x80000000, 0x7FFFFFFF, 0x10000, 0]


def _s(raw: bytes) -> bytes:
    return varint(len(raw)) + raw


def _insert(ident: bytes = b"h", vec: bytes | None = None, meta: bytes = b"\x00",
            ts: bytes = b"\x05", variant: bytes = b"\x00") -> bytes:
    vec = f32(1, 2, 3) if vec is None else vec
    return variant + _s(ident) + varint(len(vec) // 4) + vec + meta + ts


def hostile_payload(pick: Pick) -> tuple[bytes, str]:
    """A payload built to hit one edge of the decoder; most do not decode."""
    kind = pick(7)
    huge = HUGE_VARINTS[pick(len(HUGE_VARINTS))]
    bad = BAD_UTF8[pick(len(BAD_UTF8))]
    if kind == 0:  # a count larger than the payload, in each counted field
        where = pick(6)
        if where == 0:
            return b"\x00" + huge + b"hh" + b"\x01" + f32(1, 2, 3) + b"\x00\x05", "huge id len"
        if where == 1:
            return b"\x00\x01h" + huge + f32(1, 2, 3) + b"\x00\x05", "huge vector len"
        if where == 2:
            return _insert(meta=b"\x01" + huge + b"\x01k\x01v"), "huge pair count"
        if where == 3:
            return _insert(meta=b"\x01\x01" + huge + b"k\x01v"), "huge key len"
        if where == 4:
            return b"\x03" + huge + _insert() + b"\x05", "huge batch count"
        return b"\x02" + huge + b"h\x05", "huge delete id len"
    if kind == 1:  # invalid UTF-8 in an id, a key or a value
        where = pick(4)
        if where == 0:
            return _insert(ident=bad), f"bad utf8 id {bad!r}"
        if where == 1:
            return _insert(meta=b"\x01\x01" + _s(bad) + _s(b"v")), f"bad utf8 key {bad!r}"
        if where == 2:
            return _insert(meta=b"\x01\x01" + _s(b"k") + _s(bad)), f"bad utf8 value {bad!r}"
        return b"\x02" + _s(bad) + b"\x05", f"bad utf8 delete id {bad!r}"
    if kind == 2:  # batches nested to some depth, counts right or wrong
        depth = [1, 2, 62, 63, 64, 65, 66, 127, 300, 3000][pick(10)]
        leaf = [_insert(ident=b"deep"), b"\x02\x01h\x07", b"\x04\x01\x02", b"\x03\x00\x09"][pick(4)]
        mode = pick(4)
        count = b"\x01" if mode != 1 else b"\x02"  # 1: one entry more than present
        closing = b"\x06" * depth if mode != 2 else b"\x06" * (depth - 1)  # 2: a ts missing
        body = (b"\x03" + count) * depth + leaf + closing
        if mode == 3:  # the outermost count huge
            body = b"\x03" + huge + body[2:]
        return body, f"nested depth {depth} mode {mode}"
    if kind == 3:  # varints with the wrong marker for their type, or non-minimal ones
        where = pick(5)
        if where == 0:
            return huge + b"\x01h\x00\x05", "variant index marker"
        if where == 4:  # a small variant index in every width: 253 and 254 are not a u32
            marker = 251 + pick(4)
            width = {251: 2, 252: 4, 253: 8, 254: 16}[marker]
            variant = [0, 2, 3][pick(3)]
            body = {0: _insert()[1:], 2: b"\x01h\x05", 3: b"\x01" + _insert() + b"\x05"}
            return (bytes([marker]) + variant.to_bytes(width, "little") + body[variant],
                    f"variant {variant} with marker {marker}")
        if where == 1:
            return _insert(ts=huge), "timestamp marker"
        if where == 2:  # non-minimal forms of small numbers: all valid
            return (b"\xfb\x00\x00" + b"\xfc\x01\x00\x00\x00h" + b"\xfd\x03" + b"\x00" * 7
                    + f32(1, 2, 3) + b"\x00" + b"\xfd\x05" + b"\x00" * 7), "non-minimal"
        return b"\x05" + huge + b"\x05", "transaction id marker"
    if kind == 4:  # a bad option tag, an unknown variant, an empty or truncated payload
        where = pick(4)
        if where == 0:
            return _insert(meta=bytes([2 + pick(254)])), "option tag"
        if where == 1:
            return bytes([8 + pick(243)]) + b"\x00" * pick(4), "unknown variant"
        if where == 2:
            return b"", "empty"
        full = _insert(meta=b"\x01\x02\x01k\x01v\x02k2\x00")
        return full[: pick(len(full))], "truncated"
    if kind == 5:  # a valid entry of another dimension, or with trailing bytes
        dim = pick(5)
        return _insert(ident=b"dim", vec=f32(*range(dim))) + b"\x00" * pick(3), f"dim {dim}"
    # a valid transaction marker or checkpoint with extreme numbers
    variant = 4 + pick(4)
    return bytes([variant]) + huge[: 9] + b"\xfd" + b"\xff" * 8, f"marker {variant}"


# ----------------------------------------------------------------------------- mutators
def _file(files: Files, pick: Pick, segments_only: bool = True) -> str | None:
    names = segment_names(files) if segments_only else sorted(files, key=str.encode)
    return names[pick(len(names))] if names else None


def _reframe(files: Files, name: str, off: int, length: int, payload: bytes) -> None:
    data = files[name]
    head = data[:off] + data[off : off + 8] + struct.pack("<I", len(payload))
    files[name] = head + payload + data[off + 12 + length :]


N_MUTATIONS = 17
ZERO_FILL = 16
HOSTILE_PAYLOAD = 13


def mutate(files: Files, pick: Pick, kind: int | None = None) -> str:
    """Apply one mutation (``kind``, else a random one) to ``files`` in place; returns
    what it did."""
    kind = pick(N_MUTATIONS) if kind is None else kind
    name = _file(files, pick)
    if name is None:
        return "no segment"
    data = files[name]
    size = len(data)
    recs = _all_records(files)
    if kind == 0 and size:  # bit flip
        pos, bit = pick(size), pick(8)
        files[name] = data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]
        return f"bitflip {name}@{pos}.{bit}"
    if kind == 1 and size:  # byte overwrite
        pos = pick(size)
        val = INTERESTING_BYTES[pick(len(INTERESTING_BYTES))] if pick(2) else pick(256)
        files[name] = data[:pos] + bytes([val]) + data[pos + 1 :]
        return f"byte {name}@{pos}={val}"
    if kind == 2:  # truncation (a torn tail anywhere)
        cut = pick(size + 1)
        files[name] = data[:cut]
        return f"truncate {name}@{cut}"
    if kind == 3 and size:  # splice: bytes of some file inserted into another
        src = _file(files, pick)
        sdata = files[src]
        start = pick(len(sdata) + 1)
        piece = sdata[start : start + 1 + pick(96)]
        pos = pick(size + 1)
        files[name] = data[:pos] + piece + data[pos:]
        return f"splice {src}[{start}:+{len(piece)}] -> {name}@{pos}"
    if kind == 4 and size:  # a range deleted
        start = pick(size)
        n = 1 + pick(48)
        files[name] = data[:start] + data[start + n :]
        return f"delete {name}[{start}:+{n}]"
    if kind == 5:  # a segment copied (whole or cut) under another name, before or after
        created = int(name[4:20], 16)
        other = w.segment_name(max(0, created + [-1, 1, 1000, -1000][pick(4)]))
        copy = data if pick(2) else data[: pick(size + 1)]
        files[other] = copy
        return f"copy {name} -> {other} ({len(copy)} bytes)"
    if kind == 6:  # a segment renamed (its records move in log order)
        created = int(name[4:20], 16)
        other = w.segment_name(max(0, created + [-5, 5, 1 << 40][pick(3)]))
        files[other] = files.pop(name)
        return f"rename {name} -> {other}"
    if kind == ZERO_FILL:  # zeros, as a file extended but never written leaves
        spans = record_spans(data)
        bounds = [off for off, _ in spans] + [size]
        pos = bounds[pick(len(bounds))] if pick(3) else pick(size + 1)
        n = [12, 24, 36, 12 * 40, 5, 13, 100][pick(7)]
        if pick(2):  # appended or inserted
            files[name] = data[:pos] + bytes(n) + data[pos:]
            return f"zeros inserted {name}@{pos}+{n}"
        files[name] = data[:pos] + bytes(min(n, size - pos)) + data[pos + n:]
        return f"zeros over {name}[{pos}:+{n}]"
    if kind == 7:  # a header inserted at a record boundary or anywhere
        spans = record_spans(data)
        bounds = [off for off, _ in spans] + [size]
        pos = bounds[pick(len(bounds))] if pick(3) else pick(size + 1)
        head = w.encode_header(SEG0)[: 16 if pick(3) else pick(16)]
        files[name] = data[:pos] + head + data[pos:]
        return f"header {len(head)} bytes {name}@{pos}"
    if not recs:
        return "no records"
    rname, off, length = recs[pick(len(recs))]
    rdata = files[rname]
    payload = rdata[off + 12 : off + 12 + length]
    if kind == 8:  # a hostile payload length
        left = len(rdata) - off - 12
        new = (INTERESTING_LENGTHS + [left, left + 1, length + 1, max(0, length - 1)])[pick(10)]
        files[rname] = rdata[: off + 8] + struct.pack("<I", new) + rdata[off + 12 :]
        return f"length {rname}@{off}: {length} -> {new}"
    if kind == 9:  # another sequence number
        seq = [0, 1, 2**64 - 1, 2**63, struct.unpack_from("<Q", rdata, off)[0] + 1][pick(5)]
        seq %= 2**64  # the next seq after 2**64-1 wraps, as a u64 does
        files[rname] = rdata[:off] + struct.pack("<Q", seq) + rdata[off + 8 :]
        return f"seq {rname}@{off} = {seq}"
    if kind in (10, 11) and payload:  # a payload byte flipped or overwritten, length kept right
        pos = pick(len(payload))
        val = payload[pos] ^ (1 << pick(8)) if kind == 10 else INTERESTING_BYTES[pick(14)]
        new = payload[:pos] + bytes([val]) + payload[pos + 1 :]
        _reframe(files, rname, off, length, new)
        return f"payload byte {rname}@{off}+{pos}={val}"
    if kind == 12:  # a varint overflow or bad UTF-8 inserted inside a payload
        pos = pick(len(payload) + 1)
        junk = HUGE_VARINTS[pick(len(HUGE_VARINTS))] if pick(2) else BAD_UTF8[pick(12)]
        drop = pick(3)
        _reframe(files, rname, off, length, payload[:pos] + junk + payload[pos + drop :])
        return f"payload insert {rname}@{off}+{pos} {junk!r} over {drop}"
    if kind == HOSTILE_PAYLOAD:  # the payload replaced by a hostile one
        new, what = hostile_payload(pick)
        _reframe(files, rname, off, length, new)
        return f"payload {rname}@{off}: {what}"
    if kind == 14:  # a record duplicated in place (a writer retrying a write)
        rec = rdata[off : off + 12 + length]
        at = off if pick(2) else len(rdata)
        files[rname] = rdata[:at] + rec + rdata[at:]
        return f"duplicate record {rname}@{off} -> {at}"
    # a payload cut short with its length made to agree
    cut = pick(length + 1)
    _reframe(files, rname, off, length, payload[:cut])
    return f"payload cut {rname}@{off} to {cut}"


def _transaction_ids(files: Files) -> list[int]:
    """The ids of the top-level transaction markers of ``files``, as framed."""
    out = set()
    for name, off, length in _all_records(files):
        try:
            entry, _ = reference.decode_payload(files[name][off + 12 : off + 12 + length])
        except reference.Undecodable:
            continue
        if entry[0] in ("begin", "commit", "abort"):
            out.add(entry[1])
    return sorted(out)


def targets(s: Seed, pick: Pick) -> dict:
    """Restore keyword arguments for a mutated ``s``: no target, a time, a seq, a
    transaction id (one of the seed's, or one it never names) or a position (a record
    start of the seed's, which the mutation may have moved, or a byte after one)."""
    kind = pick(7)
    kw: dict = {}
    if kind in (1, 2) and s.timestamps:
        kw["to_time"] = max(0, s.timestamps[pick(len(s.timestamps))] + pick(3) - 1)
        kw["exclusive"] = bool(pick(2))
    elif kind == 3:
        seqs = s.seqs + [max(s.seqs, default=0) + 1, 2**64 - 1]
        kw["to_seq"] = seqs[pick(len(seqs))]
        kw["exclusive"] = bool(pick(2))
    elif kind == 5:
        ids = _transaction_ids(s.files) + [2**64 - 1]
        kw["to_transaction"] = ids[pick(len(ids))]
        kw["exclusive"] = bool(pick(2))
    elif kind == 6 and _all_records(s.files):
        records = _all_records(s.files)
        name, off, _ = records[pick(len(records))]
        kw["to_position"] = f"{name}:{off + (pick(8) == 0)}"
        kw["exclusive"] = bool(pick(2))
    kw["skip_corrupt"] = bool(pick(2))
    kw["allow_incomplete_history"] = pick(4) != 0
    return kw


def fuzz_input(pick: Pick, names: list[str] | None = None,
               kind: int | None = None) -> tuple[Files, dict, list[str]]:
    """A seed, mutated one to four times (by ``kind`` only, if given), and a target:
    (files, restore kwargs, steps)."""
    pool = [s for s in seeds() if names is None or s.name in names]
    s = pool[pick(len(pool))]
    files = dict(s.files)
    steps = [s.name]
    for _ in range(1 + pick(4)):
        steps.append(mutate(files, pick, kind))
    kw = targets(s, pick)
    return files, kw, steps


# ----------------------------------------------------------------------------- one run
def write_files(files: Files, wal_dir) -> str:
    os.makedirs(wal_dir, exist_ok=True)
    for name, data in files.items():
        Path(wal_dir, name).write_bytes(data)
    return str(wal_dir)


def outcome(files: Files, kw: dict, backend: str = "cpu", chunk_bytes: int | None = None,
            readers: bool = True, map_all: bool = False, shards: int = 0) -> str:
    """Restore ``files`` with the fast path and the reference; assert they agree (and,
    with ``readers``, check the pure-Python readers on them). ``map_all``: every piece
    mapped into its buffer (``gpu_pitr.format.mapped``), not only those of 512 KiB or
    more, which the small inputs here never have. ``shards`` (2 or more): restored as
    that many shards of the ids too, which joined must equal the whole, or fail as it
    does (``workloads.check_shards_equal_whole``).

    Returns the outcome class ("ok" or the error's class name). Raises AssertionError
    on a disagreement, and lets any exception that is not a ``WalError`` through.
    """
    with tempfile.TemporaryDirectory() as d:
        write_files(files, d)
        before = w.dir_state(d)
        if readers:
            check_python_readers(d)
        ref = reference.restore(d, **kw)
        got, err = None, None
        try:
            with mock.patch.object(mapped, "MIN_PIECE", 0 if map_all else mapped.MIN_PIECE), \
                    mock.patch.object(readahead, "DIRECT_BYTES",
                                      0 if map_all else readahead.DIRECT_BYTES):
                got = w.restore_fast(d, backend=backend, chunk_bytes=chunk_bytes, **kw)
        except errors.WalError as e:
            err = e
        if shards > 1:
            w.check_shards_equal_whole(d, shards, backend=backend, chunk_bytes=chunk_bytes,
                                       **kw)
        assert w.dir_state(d) == before, "the WAL directory was modified"
    if err is not None:
        assert type(err).__name__ in ALLOWED_ERRORS, repr(err)
        assert "\n" not in str(err), repr(err)
    assert_matches(ref, got, err)
    return "ok" if err is None else type(err).__name__


def check_python_readers(wal_dir: str) -> None:
    """The pure-Python side on the same bytes: ``inspect``'s statistics never fail (and
    the compiled ones equal them), nor its list of transactions (equal to the
    reference's) nor the id filter's history of some of its ids (equal to the
    reference's), the reader frames exactly as the reference, and the
    codec decodes exactly the payloads the reference decodes, to the same entry end."""
    import inspect_reference

    from gpu_pitr.format.codec import PayloadError, decode_entry
    from gpu_pitr.format.reader import scan_wal

    # Pieces of 64 bytes split every record of a fuzz input; on a log of megabytes (a
    # record spanning many pieces) they cost about 100 us each, 2.5 minutes of the suite.
    size = sum(p.stat().st_size for p in Path(wal_dir).iterdir() if p.is_file())
    small = 64 if size <= 1 << 20 else 64 << 10
    json.dumps(inspect_reference.assert_same_stats(wal_dir, chunks=(None, small)))
    from gpu_pitr.format.dump import wal_transactions

    want = inspect_reference.wal_transactions(wal_dir)
    for chunk in (None, small):
        got = list(wal_transactions(wal_dir, chunk_bytes=chunk))
        assert inspect_reference.comparable(got) == want, chunk
    from gpu_pitr.format.dump import wal_records

    for ids in inspect_reference.some_ids(wal_dir):  # the id filter's history of each
        want = inspect_reference.id_history(wal_dir, ids)
        for chunk in (None, small):
            got = wal_records(wal_dir, id=ids, chunk_bytes=chunk)
            assert inspect_reference.id_history_of(got) == want, (ids, chunk)
    records = [i for i in reference.frame_log(wal_dir) if i[0] == "record"]
    scanned = [(s.path.name, r.offset, r.seq, r.payload) for s in scan_wal(wal_dir)
               for r in s.records]
    assert scanned == [(i[1], i[2], i[4], i[5]) for i in records]
    for *_, payload in scanned:
        try:
            _, trailing = reference.decode_payload(payload)
            want = len(payload) - trailing
        except reference.Undecodable:
            want = None
        try:
            got = decode_entry(payload)[1]
        except PayloadError:
            got = None
        assert got == want, payload.hex()


# ----------------------------------------------------------------------------- regressions
def save_case(files: Files, kw: dict, steps: list[str], problem: str,
              root: Path = REGRESSIONS, backend: str = "cpu",
              chunk_bytes: int | None = None, shards: int = 0) -> Path:
    """Store a failing input as ``root/<hash>/`` (wal/ and case.json); returns the folder.
    ``shards``: the id shards it was restored as too (``outcome``)."""
    import hashlib

    h = hashlib.sha1(json.dumps([sorted((n, d.hex()) for n, d in files.items()), kw,
                                 backend, chunk_bytes]).encode()).hexdigest()[:12]
    folder = root / f"case-{h}"
    write_files(files, folder / "wal")
    meta = {"kw": kw, "backend": backend, "chunk_bytes": chunk_bytes, "steps": steps,
            "problem": problem}
    if shards:
        meta["shards"] = shards
    (folder / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_case(folder: Path) -> tuple[Files, dict, dict]:
    meta = json.loads((folder / "case.json").read_text())
    wal = folder / "wal"
    files = {p.name: p.read_bytes() for p in sorted(wal.iterdir())} if wal.is_dir() else {}
    return files, meta["kw"], meta


def saved_cases(root: Path = REGRESSIONS) -> list[Path]:
    return sorted(p for p in root.glob("case-*") if (p / "case.json").is_file())
