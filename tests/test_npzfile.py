"""The .npz writer (gpu_pitr/npzfile.py) and the CRC-32 it and snapshots use."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_pitr import crc
from gpu_pitr.npzfile import Pieces, write_npz

ARRAYS = {
    "ids": np.array(["a", "bé", "c" * 40, "\U0001f600"]),
    "vectors": np.array([[0.0, -0.0], [np.nan, 1.5], [np.inf, -1e-45], [3.0, 4.0]],
                        np.float32),
    "metadata": np.array(["null", "{}", '{"a":"1"}', "null"]),
    "report": np.array('{"ids": 4}'),
    "empty": np.zeros((0, 0), np.float32),
    "large": np.random.default_rng(0).random(300_000).astype(np.float32),
}

# CPython before 3.11.4 (Debian 12's python3 is 3.11.2) gives an entry forced to ZIP64,
# as np.savez forces each, "version needed to extract" 20 in the central directory, not
# 45 (gh-103861): np.savez's bytes differ from ours, and the ZIP spec's, only there.
SAVEZ_BYTES_COMPARABLE = sys.version_info >= (3, 11, 4)


def _written(arrays, **kw) -> bytes:
    buf = io.BytesIO()
    write_npz(buf, arrays, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("limit", [None, 0, 100, 700])
def test_bytes_are_those_of_np_savez(monkeypatch, limit) -> None:
    # Byte for byte what np.savez writes through zipfile; with the ZIP64 threshold
    # lowered (in both), every size and offset past it goes to the ZIP64 fields and
    # end records, as in an archive over 2 GiB.
    kw = {}
    if limit is not None:
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", limit)
        kw["zip64_limit"] = limit
    data = _written(ARRAYS, **kw)
    ref = io.BytesIO()
    np.savez(ref, **ARRAYS)
    assert data == ref.getvalue() or not SAVEZ_BYTES_COMPARABLE
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # every CRC-32 checks
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    for name, arr in ARRAYS.items():
        got = loaded[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()


def _pieces(arr: np.ndarray, rows: list[int]) -> Pieces:
    """``arr`` as a streamed member, made in pieces of the given row counts (cycled)."""
    def make():
        at, k = 0, 0
        while at < len(arr):
            step = rows[k % len(rows)]
            yield arr[at:at + step]
            at += step
            k += 1
    return Pieces(arr.dtype, arr.shape, make)


@pytest.mark.parametrize("rows", [[1], [3, 0, 2], [1000]])
@pytest.mark.parametrize("limit", [None, 100])
def test_members_made_in_pieces_are_the_arrays_bytes(rows, limit) -> None:
    """A member made as it is written (any piece sizes, empty ones too) gives the
    archive the array itself gives, ZIP64 records and CRC-32s included."""
    kw = {} if limit is None else {"zip64_limit": limit}
    streamed = {name: _pieces(arr, rows) if arr.ndim and len(arr) else arr
                for name, arr in ARRAYS.items()}
    assert sum(isinstance(v, Pieces) for v in streamed.values()) == 4
    assert _written(streamed, **kw) == _written(ARRAYS, **kw)


@pytest.mark.parametrize("made", [np.array(["a", "b"]), np.array(["a", "b", "c", "d"])])
def test_a_member_made_of_other_bytes_than_announced_is_an_error(made) -> None:
    with pytest.raises(ValueError, match="streamed .npy member of 12 bytes"):
        _written({"ids": Pieces("<U1", (3,), lambda: iter([made]))})


def test_zip64_records_where_a_field_overflows() -> None:
    small = _written(ARRAYS)
    forced = _written(ARRAYS, zip64_limit=100)
    assert b"PK\x06\x06" not in small[-200:] and b"PK\x06\x06" in forced[-200:]
    # Central entries past offset 100 carry their offset in a ZIP64 extra field.
    infos = zipfile.ZipFile(io.BytesIO(forced)).infolist()
    assert all(i.header_offset > 100 for i in infos[1:])


@pytest.mark.skipif(shutil.which("unzip") is None, reason="no unzip on this machine")
@pytest.mark.parametrize("limit", [None, 0])
def test_info_zip_reads_it(tmp_path, limit) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(_written(ARRAYS, **({} if limit is None else {"zip64_limit": limit})))
    done = subprocess.run(["unzip", "-tq", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_other_layouts_and_names_as_np_savez_writes_them() -> None:
    arrays = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              "s": np.arange(20, dtype=np.int32)[::3], "b": np.arange(6, dtype=">f4"),
              "é": np.array(["x", "\U0010ffff"]), "z": np.zeros((2, 0), np.int16)}
    ref = io.BytesIO()
    np.savez(ref, **arrays)
    assert _written(arrays) == ref.getvalue() or not SAVEZ_BYTES_COMPARABLE
    loaded = np.load(io.BytesIO(_written(arrays)), allow_pickle=False)
    for name, arr in arrays.items():
        assert np.array_equal(loaded[name], arr) and loaded[name].dtype == arr.dtype


def test_object_arrays_are_refused_before_anything_is_written() -> None:
    buf = io.BytesIO()
    with pytest.raises(ValueError, match="holds Python objects"):
        write_npz(buf, {"ok": np.arange(3), "bad": np.array([{}, None], dtype=object)})
    assert buf.getvalue() == b""


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_crc32_is_zlibs(data, start) -> None:
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(data, start) == zlib.crc32(data, start)
    # The fast one whenever the package is there (the test extra brings it).
    have = importlib.util.find_spec("zlib_ng") is not None
    assert crc.IMPLEMENTATION == ("zlib-ng" if have else "zlib")


@pytest.mark.parametrize("collide", [False, True])
def test_metadata_json_groups_equal_maps_exactly(monkeypatch, collide) -> None:
    # Distinct encodings are found by key, then checked byte for byte; keys that
    # collide (all equal here) fall back to grouping by the bytes themselves.
    import gpu_pitr.index as index_mod
    from gpu_pitr.format.codec import encode_varint

    def encode_metadata(m):  # bincode HashMap<String, String>, the arena's form
        out = bytearray(encode_varint(len(m)))
        for k, v in m.items():
            for text in (k.encode(), v.encode()):
                out += encode_varint(len(text)) + text
        return bytes(out)

    if collide:
        monkeypatch.setattr(index_mod, "span_keys",
                            lambda a, o, n: np.full(len(o), 7, np.uint64))
    rng = np.random.default_rng(5)
    maps = [None, {}, {"a": "1"}, {"a": "2"}, {"b": "1", "a": "1"}, {"é": "\u00e9"}]
    rows = [maps[i] for i in rng.integers(0, len(maps), 500)]
    parts = [b"" if m is None else encode_metadata(m) for m in rows]
    lens = np.array([len(b) for b in parts], np.int64)
    offs = np.where([m is None for m in rows], -1, np.cumsum(lens) - lens)
    arena = np.frombuffer(b"".join(parts), np.uint8).copy()
    n = len(rows)
    idx = index_mod.RestoredIndex(np.zeros(0, np.uint8), np.zeros(n, np.int64),
                                  np.zeros(n, np.int64), np.zeros((n, 0), np.float32),
                                  arena, offs, lens, None)
    want = ["null" if m is None else json.dumps(m, sort_keys=True, ensure_ascii=False,
                                                 separators=(",", ":")) for m in rows]
    assert idx.metadata_json().tolist() == want


def test_without_zlib_ng_the_same_checksums(tmp_path) -> None:
    # The fallback (zlib) computes the same values and writes .npz files zipfile checks.
    code = (
        "import sys; sys.modules['zlib_ng'] = None\n"
        "import numpy as np, zipfile, gpu_pitr\n"
        "from gpu_pitr import crc\n"
        "assert crc.IMPLEMENTATION == 'zlib', crc.IMPLEMENTATION\n"
        "from gpu_pitr.npzfile import write_npz\n"
        f"p = {str(tmp_path / 'x.npz')!r}\n"
        "with open(p, 'wb') as f: write_npz(f, {'a': np.arange(1000.0)})\n"
        "assert zipfile.ZipFile(p).testzip() is None\n"
        "print(crc.crc32(b'123456789'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 0xCBF43926 == crc.crc32(b"123456789")


def test_a_real_file_gets_the_same_bytes_with_writeback_hints(tmp_path, monkeypatch) -> None:
    # On a file, each 64 MiB piece is handed to the disk as written (sync_file_range);
    # a hint only: the bytes are those written to memory, and a call that fails is
    # ignored (a bad descriptor here), as is a C library without it.
    import gpu_pitr.npzfile as npzfile
    from gpu_pitr import tempfiles

    monkeypatch.setattr(npzfile, "_PIECE", 1 << 16)  # many pieces
    calls = []
    real = tempfiles.start_writeback
    monkeypatch.setattr(npzfile, "start_writeback",
                        lambda fd, at, n: (calls.append((at, n)), real(fd, at, n)))
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        write_npz(f, ARRAYS)
    assert path.read_bytes() == _written(ARRAYS)
    assert len(calls) > 10 and all(n > 0 for _, n in calls)
    tempfiles.start_writeback(987654, 0, 100)  # EBADF: ignored
    monkeypatch.setattr(tempfiles, "_sync_file_range", lambda: None)
    tempfiles.start_writeback(0, 0, 100)
