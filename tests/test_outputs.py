"""``gpu-pitr restore --out``: .npz, .parquet, FAISS and snapshot outputs, each read back
with its own ecosystem's reader and compared with ``gpu_pitr.restore``'s result.

Every CLI run is checked to leave the WAL directory byte-for-byte unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from workloads import Del, Ins, LogBuilder, Upd, bits, dir_state, f32

import gpu_pitr
from gpu_pitr.errors import WalError
from gpu_pitr.outputs import (
    PARQUET_REPORT_KEY,
    atomic_files,
    faiss_ids_path,
    output_format,
    write_output,
)

# -0.0, +inf, a quiet NaN with a payload, the smallest subnormal: back bit for bit.
ODD = bits(0x80000000, 0x7F800000, 0x7FC12345)
TINY = bits(0x00000001, 0xFF7FFFFF, 0x3F800000)


def write_wal(wal_dir: Path) -> Path:
    """Ids out of byte order, non-ASCII ids, metadata absent, ``{}`` and present."""
    b = LogBuilder()
    b.add(Ins("b", ODD, {"k": "v", "ü": "ß"}, 1))
    b.add(Ins("a", f32(1, 2, 3), None, 2))  # absent metadata
    b.add(Ins("é-id", f32(4, 5, 6), {}, 3))  # an empty map: not the same as absent
    b.add(Ins("gone", f32(0, 0, 0), {"x": "y"}, 4))
    b.add(Del("gone", 5))
    b.add(Upd("a", f32(7, 8, 9), None, 6))  # keeps no metadata
    b.add(Ins("z\u00a0\U0001f600", TINY, {"": "", "long": "x" * 300}, 7))
    b.write(wal_dir)
    return wal_dir


@pytest.fixture(scope="module")
def wal_dir(tmp_path_factory) -> Path:
    return write_wal(tmp_path_factory.mktemp("outputs") / "wal")


@pytest.fixture(scope="module")
def expected(wal_dir: Path):
    return gpu_pitr.restore(wal_dir, backend="cpu").to_host()


def cli(*args: object, wal_dir: Path | None = None, env: dict | None = None):
    before = dir_state(wal_dir) if wal_dir is not None else None
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)
    if before is not None:
        assert dir_state(wal_dir) == before, f"{args} changed the WAL directory"
    return proc


def restore_ok(wal_dir: Path, out: Path, *args: object) -> subprocess.CompletedProcess:
    proc = cli("restore", wal_dir, "--out", out, "--backend", "cpu", *args, wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc


def vector_bits(vectors) -> list[list[int]]:
    return np.ascontiguousarray(vectors, dtype="<f4").view("<u4").tolist()


def assert_same_report(got: dict, want: dict) -> None:
    # Two runs of the same restore: everything but the clock agrees.
    assert {k: v for k, v in got.items() if k != "timings"} == {
        k: v for k, v in want.items() if k != "timings"}


def test_expected_index_has_what_the_tests_need(expected) -> None:
    assert expected.id_list() == ["a", "b", "z\u00a0\U0001f600", "é-id"]
    assert expected.metadata == [None, {"k": "v", "ü": "ß"}, {"": "", "long": "x" * 300}, {}]


def test_npz_contract(wal_dir: Path, tmp_path: Path, expected) -> None:
    out = tmp_path / "o.npz"
    restore_ok(wal_dir, out)
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["ids", "metadata", "report", "vectors"]
        assert npz["ids"].dtype.kind == "U" and npz["metadata"].dtype.kind == "U"
        assert npz["ids"].tolist() == expected.id_list()
        assert npz["vectors"].dtype == np.float32
        assert vector_bits(npz["vectors"]) == vector_bits(expected.vectors)
        assert npz["metadata"].tolist() == [
            "null", '{"k":"v","ü":"ß"}', json.dumps({"": "", "long": "x" * 300},
                                                   separators=(",", ":")), "{}"]
        assert npz["report"].shape == ()
        assert_same_report(json.loads(str(npz["report"])), expected.report.to_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]


@pytest.mark.parametrize("piece", [1, 50, 1 << 20])
def test_npz_ids_made_as_written_are_the_ids_array(wal_dir: Path, tmp_path: Path,
                                                    monkeypatch, piece) -> None:
    """The .npz's ids member, made a few rows at a time as it is written (not as one
    unicode array of the whole index), is byte for byte the one ``ids`` gives."""
    import gpu_pitr.index
    import gpu_pitr.outputs as outputs

    monkeypatch.setattr(outputs, "_IDS_PIECE", piece)
    monkeypatch.setattr(gpu_pitr.index, "_JSON_ROWS", max(1, piece // 16))
    streamed = gpu_pitr.restore(wal_dir, backend="cpu")
    assert "ids" not in vars(streamed)
    write_output(streamed, tmp_path / "streamed.npz", "npz")
    assert "ids" not in vars(streamed)  # never made whole
    whole = gpu_pitr.restore(wal_dir, backend="cpu")
    assert whole.ids.dtype == np.dtype("<U7")  # the longest id's UTF-8 bytes
    write_output(whole, tmp_path / "whole.npz", "npz")

    def members(path):
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k].tobytes() for k in npz.files if k != "report"}, npz["ids"].dtype

    assert members(tmp_path / "streamed.npz") == members(tmp_path / "whole.npz")
    with np.load(tmp_path / "streamed.npz", allow_pickle=False) as npz:
        want = whole.metadata_json()
        assert npz["metadata"].dtype == want.dtype and npz["metadata"].tolist() == [
            json.dumps(m, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            for m in whole.metadata] == want.tolist()


def test_parquet(wal_dir: Path, tmp_path: Path, expected) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "o.parquet"
    restore_ok(wal_dir, out)
    table = pq.read_table(out)
    assert table.column_names == ["id", "vector", "metadata"]
    assert pa.types.is_string(table.schema.field("id").type) or pa.types.is_large_string(
        table.schema.field("id").type)
    vtype = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == 3
    assert vtype.value_type == pa.float32()
    assert table.schema.field("metadata").type == pa.map_(pa.string(), pa.string())
    assert table.column("id").to_pylist() == expected.id_list()
    flat = table.column("vector").combine_chunks().flatten().to_numpy()
    assert vector_bits(flat.reshape(-1, 3)) == vector_bits(expected.vectors)
    meta = table.column("metadata").to_pylist()
    # Absent stays null, {} stays an empty map.
    assert [None if m is None else dict(m) for m in meta] == expected.metadata
    assert meta[0] is None and meta[3] == []
    report = json.loads(pq.read_schema(out).metadata[PARQUET_REPORT_KEY])
    assert_same_report(report, expected.report.to_dict())


class _Pairs:
    """A metadata map as the bytes hold it: pairs in order, a key possibly twice (another
    writer than oxirs-vec's)."""

    def __init__(self, pairs) -> None:
        self.pairs = pairs

    def items(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


def test_parquet_maps_hold_a_key_once_with_the_value_a_restore_gives_it(tmp_path: Path):
    """A metadata map with a key twice went into the .parquet map column pair for pair
    (`[("k", "v"), ("k", "w")]`), though the restored state is `{"k": "w"}` (the .npz,
    the API) and Spark refuses a map with a key twice. Only the last pair of a key is
    kept now; a snapshot still holds the log's bytes as they are."""
    import pyarrow.parquet as pq
    from workloads import local_encode_entry

    long = [(f"k{i % 40}", str(i)) for i in range(70)]  # many pairs, keys repeating
    maps = [[("b", "1"), ("a", "2"), ("b", "3")], [("k", "v"), ("k", "w"), ("j", "0")],
            [("é", "1"), ("é", "1")], long, [("x", "1")], []]
    b = LogBuilder()
    for i, pairs in enumerate(maps):
        b.add_payload(local_encode_entry(Ins(f"id{i}", f32(1, 2), _Pairs(pairs), 10 + i)))
    b.add(Ins("none", f32(3, 4), None, 20))
    index = gpu_pitr.restore(b.write(tmp_path / "wal"), backend="cpu")
    write_output(index, tmp_path / "o.parquet", "parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    got = dict(zip(table.column("id").to_pylist(), table.column("metadata").to_pylist(),
                   strict=True))
    for i, pairs in enumerate(maps):
        row = got[f"id{i}"]
        assert len({k for k, _ in row}) == len(row), row  # a key once
        assert dict(row) == dict(pairs)  # its last value
    assert got["none"] is None and got["id5"] == []
    assert [dict(m) if m is not None else None for m in table.column("metadata").to_pylist()
            ] == index.metadata


def test_a_map_of_many_keys_is_made_unique_without_comparing_every_pair():
    """A key once per map (the test above) was found by comparing every pair of keys of
    a row: a map of 40,000 keys took 44 s to write as .parquet, 10,000 keys 4 s a row.
    A large map's keys are now compared only with those of the same hash, in log order:
    the pairs kept are the same (the last of each key, also where one key fills the
    map), in comparisons linear in its pairs."""
    from gpu_pitr.snapshot.arrow import PAIRWISE_KEYS

    rows = [
        [f"k{i}" for i in range(3000)],  # no key twice
        ["same"] * 2000,  # one key, 2,000 times
        [f"k{i % 700}" for i in range(3000)] + ["", "", "é"],  # each key again and again
        ["b", "a", "b"],  # a small map: pairwise
        [],
    ]
    compares = _repeated_keys_marked(rows)
    for row, made in zip(rows, compares, strict=True):
        if len(row) > PAIRWISE_KEYS:
            assert made <= 2 * len(row), (len(row), made)  # pairwise: millions


def _repeated_keys_marked(rows: list[list[str]]) -> list[int]:
    """``_mark_repeated_keys`` over maps of ``rows`` keys: checks that it keeps the last
    of each key of a map (and counts the rest as dropped); returns the comparisons it
    made in each map."""
    from gpu_pitr.snapshot.arrow import _mark_repeated_keys

    keys = [k.encode() for row in rows for k in row]
    koffs = np.cumsum([0] + [len(k) for k in keys]).astype(np.int64)
    kdata = np.frombuffer(b"".join(keys), np.uint8).copy()
    map_offs = np.cumsum([0] + [len(row) for row in rows]).astype(np.int64)
    keep = np.ones(len(keys), np.bool_)
    compares = np.zeros(len(rows), np.int64)
    dropped = _mark_repeated_keys(map_offs, koffs, kdata, keep, compares)
    want = []
    for row in rows:
        last = {k: j for j, k in enumerate(row)}
        want += [last[k] == j for j, k in enumerate(row)]
    assert keep.tolist() == want
    assert dropped == len(keys) - sum(want)
    return compares.tolist()


def test_a_map_of_keys_sharing_one_hash_is_made_unique_in_n_log_n_comparisons():
    """Keys are grouped by their hash, and the keys of one hash were compared pairwise:
    but metadata keys are chosen by the store's users and the hash is cheap to collide
    (tests/collisions.py), so 2,000 different keys of one hash took 2,000,000
    comparisons (64,000: 2 billion). They are now sorted by their bytes."""
    from collisions import colliding_ids, key_of

    same = colliding_ids(2000)
    assert len({key_of(k.encode()) for k in same}) == 1
    rng = np.random.default_rng(5)
    rows = [
        same,  # 2,000 different keys, one hash
        [same[i] for i in rng.integers(0, 300, 3000)],  # and each again and again
    ]
    compares = _repeated_keys_marked(rows)
    for row, made in zip(rows, compares, strict=True):
        assert made <= 14 * len(row), (len(row), made)  # pairwise: 2,000,000 and more


@pytest.mark.parametrize(("rows", "nbytes"), [(1, 1 << 30), (3, 1 << 30), (1 << 20, 1 << 30),
                                             (1 << 20, 300), (1 << 20, 1)])
def test_parquet_written_a_row_group_at_a_time_is_the_table(tmp_path: Path, expected,
                                                             monkeypatch, rows, nbytes) -> None:
    """Each row group is made as it is written (the ids gathered a group at a time), of
    at most ``rows`` rows and about ``nbytes`` bytes: the file reads back as the whole
    index's table, in ceil(n / rows) row groups."""
    import pyarrow.parquet as pq

    import gpu_pitr.outputs as outputs

    monkeypatch.setattr(outputs, "_PARQUET_ROWS", rows)
    monkeypatch.setattr(outputs, "_PARQUET_BYTES", nbytes)
    # A row's bytes: its vector, and on average the index's id and metadata bytes.
    maps = expected._meta_lens[expected._meta_offs >= 0]
    row = 12 + (int(expected._id_lens.sum()) + int(maps.sum())) / len(expected)
    assert 90 < row < 150  # so 300 bytes make groups of 2 rows
    rows = min(rows, max(1, int(nbytes // row)))
    write_output(expected, tmp_path / "o.parquet", "parquet")
    pq.write_table(outputs.parquet_table(expected), tmp_path / "whole.parquet")
    got, want = pq.read_table(tmp_path / "o.parquet"), pq.read_table(tmp_path / "whole.parquet")
    assert got.schema.equals(want.schema, check_metadata=True)
    assert got["id"].equals(want["id"]) and got["metadata"].equals(want["metadata"])
    bits_of = [vector_bits(t["vector"].combine_chunks().flatten().to_numpy()) for t in (got, want)]
    assert bits_of[0] == bits_of[1]  # NaNs never compare equal: their bits do
    assert pq.ParquetFile(tmp_path / "o.parquet").num_row_groups == -(-len(expected) // rows)


def parquet_columns(path: Path) -> dict:
    """The column chunks of the file's first row group, by their path in the schema."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(path).metadata.row_group(0)
    return {c.path_in_schema: c for c in map(group.column, range(group.num_columns))}


def test_parquet_ids_and_vectors_have_no_dictionary(tmp_path: Path, expected) -> None:
    """pyarrow dictionary-encodes every column by default. Ids are unique and vectors
    rarely repeat, so their dictionary grew to 1 MiB and each column chunk fell back to
    plain pages part way (from about 24,000 ids of 40 bytes): wasted bytes and time, and
    a chunk that fastparquet 2026.9 (``pandas.read_parquet(engine="fastparquet")``) read
    with every id after the fallback as None. Only the metadata's keys and values, which
    repeat, have a dictionary now."""
    import pyarrow.parquet as pq

    write_output(expected, tmp_path / "o.parquet", "parquet")
    columns = parquet_columns(tmp_path / "o.parquet")
    assert set(columns) == {"id", "vector.list.element", "metadata.key_value.key",
                            "metadata.key_value.value"}
    for name, column in columns.items():
        dictionary = any("DICTIONARY" in e for e in column.encodings)
        assert dictionary == name.startswith("metadata."), (name, column.encodings)
        assert column.has_dictionary_page == name.startswith("metadata."), name
    assert pq.read_table(tmp_path / "o.parquet")["id"].to_pylist() == expected.id_list()


def test_parquet_metadata_dictionary_holds_every_distinct_value(tmp_path: Path) -> None:
    """Metadata values unique per id (a text chunk each) passed pyarrow's 1 MiB
    dictionary limit: the chunk fell back to plain pages part way, which fastparquet
    2026.9 read with each value after the fallback replaced by its key (wrong maps, no
    error), as it read ids before. The dictionary page now holds a group's every
    distinct value: 2.4 MB of them here (hex: snappy keeps nearly all of it), where
    pyarrow's limit left 1.2 MB (it checks the limit a batch of 1,024 values at a time)."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    b = LogBuilder()
    texts = [rng.bytes(200).hex() for _ in range(6000)]
    for i, text in enumerate(texts):
        b.add(Ins(f"doc-{i:05d}", f32(i, 0, 0), {"text": text}, i + 1))
    index = gpu_pitr.restore(b.write(tmp_path / "wal"), backend="cpu").to_host()
    write_output(index, tmp_path / "o.parquet", "parquet")
    values = parquet_columns(tmp_path / "o.parquet")["metadata.key_value.value"]
    assert values.has_dictionary_page
    dictionary_page = values.data_page_offset - values.dictionary_page_offset
    assert dictionary_page > 0.9 * sum(map(len, texts)), (dictionary_page, values.encodings)
    got = pq.read_table(tmp_path / "o.parquet")["metadata"].to_pylist()
    assert got == [[("text", text)] for text in texts]


def test_faiss(wal_dir: Path, tmp_path: Path, expected) -> None:
    import faiss

    out = tmp_path / "o.faiss"
    restore_ok(wal_dir, out)
    index = faiss.read_index(str(out))
    assert isinstance(index, faiss.IndexIDMap2)
    n = len(expected)
    assert (index.ntotal, index.d) == (n, 3)
    # Row i of the sorted ids has FAISS id i; the sidecar maps ids back.
    lines = faiss_ids_path(out).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected.id_list()
    assert [index.reconstruct(i).view("<u4").tolist() for i in range(n)] == vector_bits(
        expected.vectors)
    query = np.array([[7, 8, 9]], np.float32)  # "a", row 0
    distances, ids = index.search(query, 1)
    assert ids.tolist() == [[0]] and distances.tolist() == [[0.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.faiss", "o.faiss.ids.jsonl"]


@pytest.mark.parametrize("rows", [1, 3, 1 << 16])
def test_faiss_sidecar_lines_are_json_of_each_id(tmp_path: Path, monkeypatch, rows) -> None:
    """The sidecar, written a block of ids at a time, holds ``json.dumps(id,
    ensure_ascii=False)`` of each id in row order: quotes, backslashes, control
    characters, NUL, U+2028 and characters past the BMP included."""
    pytest.importorskip("faiss")
    import gpu_pitr.outputs as outputs

    monkeypatch.setattr(outputs, "_SIDECAR_ROWS", rows)
    odd = ['a"b', "c\\d", "e\nf\tg", "\x00", "\x1f\x7f", "\u2028x", "🙂", "é"]
    b = LogBuilder()
    for k, ident in enumerate(odd):
        b.add(Ins(ident, f32(k, 0, 0), None, k))
    index = gpu_pitr.restore(b.write(tmp_path / "wal"), backend="cpu")
    write_output(index, tmp_path / "o.faiss", "faiss")
    text = faiss_ids_path(tmp_path / "o.faiss").read_text(encoding="utf-8")
    # U+2028, U+2029 and U+0085 escaped too: line breaks to str.splitlines.
    breaks = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
    assert text == "".join(json.dumps(i, ensure_ascii=False).translate(breaks) + "\n"
                           for i in index.id_list())
    assert sorted(index.id_list()) == sorted(odd)


def test_faiss_sidecar_is_one_id_a_line_however_split(tmp_path: Path) -> None:
    """Ids holding U+2028, U+2029 or U+0085, which JSON leaves as they are and
    ``str.splitlines`` breaks lines at: still one id a line (once a JSONDecodeError)."""
    pytest.importorskip("faiss")
    odd = ["a\u2028b", "\u2029", "c\x85d", "plain"]
    b = LogBuilder()
    for k, ident in enumerate(odd):
        b.add(Ins(ident, f32(k), None, k))
    index = gpu_pitr.restore(b.write(tmp_path / "wal"), backend="cpu")
    write_output(index, tmp_path / "o.faiss", "faiss")
    text = faiss_ids_path(tmp_path / "o.faiss").read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == index.id_list()


def test_faiss_by_format_flag_any_name(wal_dir: Path, tmp_path: Path, expected) -> None:
    import faiss

    out = tmp_path / "vectors.index"
    restore_ok(wal_dir, out, "--format", "faiss")
    assert faiss.read_index(str(out)).ntotal == len(expected)
    assert (tmp_path / "vectors.index.ids.jsonl").exists()


@pytest.mark.parametrize("how", ["slash", "flag", "existing"])
def test_snapshot_directory(wal_dir: Path, tmp_path: Path, expected, how: str) -> None:
    from gpu_pitr import snapshot

    out = tmp_path / "snap"
    if how == "slash":
        restore_ok(wal_dir, f"{out}/")
    elif how == "flag":
        restore_ok(wal_dir, out, "--format", "snapshot")
    else:
        out.mkdir()
        restore_ok(wal_dir, out)
    snap = snapshot.load(out)
    got = snap.to_index(expected.report)
    assert got.id_list() == expected.id_list()
    assert vector_bits(got.vectors) == vector_bits(expected.vectors)
    assert got.metadata == expected.metadata


@pytest.mark.parametrize(
    ("out", "fmt", "want"),
    [
        ("x.npz", None, "npz"),
        ("x.NPZ", None, "npz"),
        ("x.parquet", None, "parquet"),
        ("x.faiss", None, "faiss"),
        ("snap/", None, "snapshot"),
        ("x.bin", "npz", "npz"),
        ("x", "snapshot", "snapshot"),
        ("x.index", "faiss", "faiss"),
        ("x.npz", "npz", "npz"),
        ("x.bin", None, ValueError),
        ("x", None, ValueError),
        ("x.npz", "parquet", ValueError),
        ("x.faiss", "snapshot", ValueError),
        ("snap/", "npz", ValueError),
        ("x.npz", "csv", ValueError),
    ],
)
def test_output_format(out: str, fmt, want) -> None:
    if want is ValueError:
        with pytest.raises(ValueError):
            output_format(out, fmt)
    else:
        assert output_format(out, fmt) == want


def test_existing_directory_is_a_snapshot(tmp_path: Path) -> None:
    assert output_format(str(tmp_path)) == "snapshot"
    with pytest.raises(ValueError, match="directory"):
        output_format(str(tmp_path), "npz")
    # A directory named like a file (an earlier slip): not silently a snapshot.
    (tmp_path / "e.npz").mkdir()
    for fmt in (None, "npz", "parquet"):
        with pytest.raises(ValueError, match="is an existing directory with a .npz name"):
            output_format(str(tmp_path / "e.npz"), fmt)
    assert output_format(str(tmp_path / "e.npz"), "snapshot") == "snapshot"
    with pytest.raises(ValueError, match="'s.npz' is a .npz name, which does not fit a "
                                         "snapshot, a directory"):
        output_format("s.npz", "snapshot")


@pytest.mark.parametrize(
    "args",
    [
        ["--out", "{tmp}/o.bin"],
        ["--out", "{tmp}/o.npz", "--format", "parquet"],
        ["--out", "{tmp}/o.parquet", "--format", "faiss"],
        ["--out", "{tmp}/", "--format", "npz"],
        ["--out", "{tmp}/o.npz", "--format", "csv"],
    ],
)
def test_format_usage_errors(wal_dir: Path, tmp_path: Path, args: list) -> None:
    proc = cli("restore", wal_dir, *[a.format(tmp=tmp_path) for a in args], wal_dir=wal_dir)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["o.npz", "o.parquet", "o.faiss", "snap/"])
def test_missing_output_directory_fails_before_the_restore(wal_dir: Path, tmp_path: Path,
                                                           name: str) -> None:
    # A string: Path would drop the trailing slash that makes "snap/" a snapshot.
    proc = cli("restore", wal_dir, "--out", f"{tmp_path}/missing/{name}", wal_dir=wal_dir)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-pitr: error: ") and "missing" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "fmt"), [("o.npz", "npz"), ("o.parquet", "parquet"),
                                         ("o.faiss", "faiss"), ("snap/", "snapshot")])
def test_a_write_that_fails_is_one_line_naming_the_output(tmp_path: Path, name: str,
                                                          fmt: str) -> None:
    """A full disk, as a file-size limit (EFBIG; Python ignores SIGXFSZ): one line
    naming the output, exit 1, the old output untouched, no temp file left."""
    import resource

    b = LogBuilder()
    rng = np.random.default_rng(7)  # vectors that do not compress below the limit
    for i in range(400):
        b.add(Ins(f"id-{i}", rng.standard_normal(64).astype(np.float32), {"k": str(i)}, i))
    wal = b.write(tmp_path / "wal")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / name.rstrip("/")
    if fmt == "snapshot":  # an older snapshot, which only a whole new one replaces
        from gpu_pitr import snapshot

        small = LogBuilder()
        small.add(Ins("old", f32(1), None, 1))
        snapshot.save(gpu_pitr.restore(small.write(tmp_path / "small"), backend="cpu"), old)
    else:
        old.write_text("old")

    def files(root: Path) -> dict:
        return {str(f.relative_to(root)): f.is_file() and f.read_bytes() for f in root.rglob("*")}

    before = files(out_dir)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, 48 << 10))

    before_wal = dir_state(wal)
    # Numba's cache warm first: with the limit, writing it would fail (the next test).
    (tmp_path / "warm").mkdir()
    assert cli("restore", wal, "--out", f"{tmp_path}/warm/{name}", "-q").returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", f"{out_dir}/{name}",
         "-q"], capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"gpu-pitr: error: {old}: cannot write the {fmt} output: File too large; "
        "nothing was left in its place"]
    assert files(out_dir) == before and dir_state(wal) == before_wal


def test_a_numba_cache_that_cannot_be_written_does_not_fail_the_restore(tmp_path: Path) -> None:
    """A cold cache in a directory where writes fail (a file-size limit here; a full
    disk in life): one warning, the code compiled in memory runs, the restore succeeds."""
    import resource

    b = LogBuilder()
    b.add(Ins("a", f32(1, 2), {"k": "v"}, 1))
    wal = b.write(tmp_path / "wal")
    out = tmp_path / "o.npz"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 10, 8 << 10))  # the npz fits

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
                           str(out), "-q"], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [line.startswith("gpu-pitr: warning: Numba's cache in ") for line in
            proc.stderr.splitlines()] == [True]
    assert proc.stderr.rstrip().endswith("cannot be used ([Errno 27] File too large); "
                                         "compiling without it")
    with np.load(out, allow_pickle=False) as npz:
        assert npz["ids"].tolist() == ["a"]


@pytest.mark.parametrize("fmt", ["npz", "parquet", "faiss", "snapshot"])
def test_an_out_name_that_is_not_utf8(wal_dir: Path, tmp_path: Path, expected,
                                      fmt: str) -> None:
    """A name of bytes that are not UTF-8 (Linux allows them; Python holds them as
    surrogates): written, and named in the summary, in every format, to a stdout that
    refuses surrogates too (an en_US.UTF-8 locale's). Once .parquet and FAISS, which
    took the name as UTF-8 text, and the summary, were tracebacks after the restore."""
    from gpu_pitr import snapshot

    name = os.fsdecode(b"\xff\xfe" + (b"/" if fmt == "snapshot" else f".{fmt}".encode()))
    out = tmp_path / name
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    proc = cli("restore", wal_dir, "--out", f"{tmp_path}/{name}", "--backend", "cpu",
               wal_dir=wal_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\\udcff\\udcfe" in proc.stdout
    if fmt == "npz":
        with open(out, "rb") as file, np.load(file, allow_pickle=False) as npz:
            ids = npz["ids"].tolist()
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with open(out, "rb") as file:
            ids = pq.read_table(file).column("id").to_pylist()
    elif fmt == "faiss":
        import faiss

        with open(out, "rb") as file:
            assert faiss.read_index(faiss.PyCallbackIOReader(file.read)).ntotal == len(expected)
        ids = [json.loads(line) for line in
               faiss_ids_path(out).read_text(encoding="utf-8").splitlines()]
    else:
        ids = snapshot.load(out).to_index().id_list()
    assert ids == expected.id_list()


@pytest.mark.parametrize("args", [["restore", "--out", ""], ["snapshot", "--out", ""],
                                  ["restore", "--out", "o.npz", "--report-json", ""]])
def test_an_empty_out_is_a_usage_error(wal_dir: Path, tmp_path: Path, args: list) -> None:
    """``--out ""`` (an unset variable) is not the current directory: it once wrote a
    snapshot over the directory the command ran in when that was empty or a snapshot."""
    command, *rest = args
    before = dir_state(wal_dir)
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", command, str(wal_dir), *rest],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert dir_state(wal_dir) == before
    assert proc.returncode == 2, proc.stderr
    assert "an empty path" in proc.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_faiss_sidecar_inside_wal_dir_is_refused(wal_dir: Path) -> None:
    proc = cli("restore", wal_dir, "--out", wal_dir / "o.faiss", wal_dir=wal_dir)
    assert proc.returncode == 2 and "inside WAL_DIR" in proc.stderr


def fake_missing(tmp_path: Path, module: str, broken: bool = False) -> dict:
    """An environment where importing ``module`` fails, as if it were not installed
    (``broken``: as a build for NumPy 1 fails under NumPy 2)."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    raised = ("ImportError('numpy.core.multiarray failed to import')" if broken else
              f"ModuleNotFoundError(\"No module named '{module}'\", name={module!r})")
    (shadow / "__init__.py").write_text(f"raise {raised}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(("name", "module", "extra"),
                         [("o.parquet", "pyarrow", "arrow"), ("o.faiss", "faiss", "faiss")])
def test_missing_extra_is_one_line_before_the_restore(wal_dir: Path, tmp_path: Path,
                                                      name: str, module: str,
                                                      extra: str) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = cli("restore", wal_dir, "--out", outdir / name, wal_dir=wal_dir,
               env=fake_missing(tmp_path, module))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'gpu-pitr[{extra}]'" in lines[0]
    assert proc.stdout == "" and list(outdir.iterdir()) == []


@pytest.mark.parametrize(("args", "module", "needs"), [
    (["--out", "o.parquet"], "pyarrow", "--format parquet needs pyarrow"),
    (["--out", "o.faiss"], "faiss", "--format faiss needs faiss"),
    (["--out", "o.npz", "--dask-scheduler", "tcp://127.0.0.1:9"], "distributed",
     "--dask-scheduler needs Dask")])
def test_an_extra_installed_but_not_importing_is_said_so(wal_dir: Path, tmp_path: Path,
                                                         args: list, module: str,
                                                         needs: str) -> None:
    # pyarrow 14 or faiss-cpu 1.8.0 (no NumPy bound of their own) under NumPy 2: "pip
    # install 'gpu-pitr[arrow]'" would keep them and change nothing.
    proc = cli("restore", wal_dir, *args, wal_dir=wal_dir,
               env=fake_missing(tmp_path, module, broken=True))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"gpu-pitr: error: {needs}, which is installed here but does not import (ImportError: "
        "numpy.core.multiarray failed to import): upgrade or reinstall it"]


@pytest.mark.parametrize("more", [[], ["--write-on-workers"]])
def test_dask_scheduler_without_dask_is_one_line(wal_dir: Path, tmp_path: Path,
                                                 more: list) -> None:
    out = tmp_path / "o.parquet"
    proc = cli("restore", wal_dir, "--out", out, "--dask-scheduler", "tcp://127.0.0.1:9", *more,
               wal_dir=wal_dir, env=fake_missing(tmp_path, "distributed"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "gpu-pitr: error: --dask-scheduler needs Dask: pip install 'gpu-pitr[dask]'"]
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--base", "--snapshots"])
def test_snapshot_base_without_pyarrow_is_one_line(wal_dir: Path, tmp_path: Path,
                                                   flag: str) -> None:
    import gpu_pitr
    from gpu_pitr import snapshot

    snapshot.save(gpu_pitr.restore(wal_dir, backend="cpu"), tmp_path / "snaps" / "s1")
    given = tmp_path / "snaps" / ("s1" if flag == "--base" else "")
    out = tmp_path / "o.npz"
    no_pyarrow = fake_missing(tmp_path, "pyarrow")
    proc = cli("restore", wal_dir, "--out", out, flag, given, wal_dir=wal_dir, env=no_pyarrow)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "gpu-pitr: error: snapshots need pyarrow: pip install 'gpu-pitr[arrow]'"]
    assert not out.exists()
    # verify of a snapshot cannot check it without pyarrow: not "damaged" (1) but 2
    proc = cli("verify", tmp_path / "snaps" / "s1", env=no_pyarrow)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "gpu-pitr: error: snapshots need pyarrow: pip install 'gpu-pitr[arrow]'"]


def test_npz_refuses_an_id_ending_in_nul_and_keeps_the_old_file(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    b = LogBuilder()
    b.add(Ins("x\0", f32(1), None, 1))
    b.write(wal)
    out = tmp_path / "o.npz"
    out.write_bytes(b"the previous restore")
    proc = cli("restore", wal, "--out", out, "--backend", "cpu", wal_dir=wal)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"gpu-pitr: error: {out}: id 'x\\x00' ends with a NUL character")
    assert "(1 such id)" in line  # (was "1 such ids")
    assert "write a .parquet, FAISS or snapshot output" in line  # what to do instead
    assert out.read_bytes() == b"the previous restore"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "wal"]
    # Parquet and FAISS hold such ids exactly.
    index = gpu_pitr.restore(wal, backend="cpu")
    write_output(index, tmp_path / "o.faiss", "faiss")
    assert json.loads((tmp_path / "o.faiss.ids.jsonl").read_text()) == "x\0"
    import pyarrow.parquet as pq

    write_output(index, tmp_path / "o.parquet", "parquet")
    assert pq.read_table(tmp_path / "o.parquet").column("id").to_pylist() == ["x\0"]


def empty_indexes(tmp_path: Path) -> dict:
    """An empty log (dimension unknown) and a log whose only id was deleted (dimension 2)."""
    never = tmp_path / "never"
    never.mkdir()
    deleted = tmp_path / "deleted"
    b = LogBuilder()
    b.add(Ins("a", f32(1, 2), None, 1))
    b.add(Del("a", 2))
    b.write(deleted)
    return {"never": gpu_pitr.restore(never, backend="cpu"),
            "deleted": gpu_pitr.restore(deleted, backend="cpu")}


def test_empty_index_in_every_format(tmp_path: Path) -> None:
    import faiss
    import pyarrow.parquet as pq

    from gpu_pitr import snapshot

    for name, index in empty_indexes(tmp_path).items():
        dim = 2 if name == "deleted" else 0
        write_output(index, tmp_path / f"{name}.npz", "npz")
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as npz:
            assert npz["ids"].shape == (0,) and npz["metadata"].shape == (0,)
            assert npz["vectors"].shape == (0, dim) and npz["vectors"].dtype == np.float32
        write_output(index, tmp_path / f"{name}.parquet", "parquet")
        table = pq.read_table(tmp_path / f"{name}.parquet")
        assert table.num_rows == 0 and table.column_names == ["id", "vector", "metadata"]
        assert table.schema.field("vector").type.list_size == dim
        write_output(index, tmp_path / f"{name}.faiss", "faiss")
        flat = faiss.read_index(str(tmp_path / f"{name}.faiss"))
        assert (flat.ntotal, flat.d) == (0, dim)
        assert (tmp_path / f"{name}.faiss.ids.jsonl").read_bytes() == b""
        write_output(index, tmp_path / f"{name}.snap", "snapshot")
        assert snapshot.load(tmp_path / f"{name}.snap").count == 0


def test_empty_index_through_the_cli(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    wal = tmp_path / "wal"
    wal.mkdir()  # a segment of its header alone: no records (and no warning of no segments)
    (wal / "wal-0000000000000001.log").write_bytes(b"WALV" + (1).to_bytes(4, "little")
                                                   + (1).to_bytes(8, "little"))
    restore_ok(wal, tmp_path / "e.parquet")
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_dimension_zero_vectors(tmp_path: Path) -> None:
    import faiss

    wal = tmp_path / "wal"
    b = LogBuilder()
    b.add(Ins("a", b"", None, 1))
    b.add(Ins("b", b"", {"m": "n"}, 2))
    b.write(wal)
    index = gpu_pitr.restore(wal, backend="cpu")
    assert index.vectors.shape == (2, 0)
    write_output(index, tmp_path / "z.faiss", "faiss")
    assert faiss.read_index(str(tmp_path / "z.faiss")).ntotal == 2
    # A Parquet fixed_size_list cannot have size 0: refused, naming the file, not written.
    with pytest.raises(WalError, match="dimension 0") as err:
        write_output(index, tmp_path / "z.parquet", "parquet")
    assert str(tmp_path / "z.parquet") in str(err.value)
    assert not (tmp_path / "z.parquet").exists()


def test_atomic_files_all_or_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    with pytest.raises(RuntimeError), atomic_files(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        raise RuntimeError("fails before the rename")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with atomic_files(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def _replace_then(monkeypatch, after_first):
    """``os.replace`` as ``atomic_files`` calls it, ``after_first()`` run once the first
    file of the set is renamed into place (or, ``after_first(src, dst)`` given a second
    file: run instead of its rename)."""
    import gpu_pitr.outputs as outputs

    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2 and after_first.__code__.co_argcount == 2:
            return after_first(src, dst)
        real(src, dst)
        if len(calls) == 1 and after_first.__code__.co_argcount == 0:
            after_first()

    monkeypatch.setattr(outputs.os, "replace", replace)
    return calls


def test_a_stop_between_the_renames_of_a_set_completes_it_then_stops(
        tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in a program that calls the library (no command defers it) landing once a
    FAISS index is renamed into place, before its id sidecar is: the stop went up at
    once and left the new index beside the old sidecar, each row named by another
    index's id, with nothing to tell. The set is completed, then the stop raised."""
    a, b = tmp_path / "x.faiss", tmp_path / "x.faiss.ids.jsonl"
    a.write_text("old index")
    b.write_text("old ids")

    def stop():
        raise KeyboardInterrupt

    calls = _replace_then(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt), atomic_files(a, b) as (ta, tb):
        ta.write_text("new index")
        tb.write_text("new ids")
    assert calls == [a.name, b.name]
    assert (a.read_text(), b.read_text()) == ("new index", "new ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name]


def test_a_later_rename_of_a_set_that_fails_leaves_no_old_partner(
        tmp_path: Path, monkeypatch) -> None:
    """The index renamed into place, its sidecar's rename failing (EIO): the old sidecar
    stayed beside the new index (row k named by another index's id) and the error said
    "nothing was left in its place". The old sidecar is gone before the index comes;
    the error says the index is in place and the sidecar missing."""
    from gpu_pitr.errors import OutputError, PartlyInPlaceError

    index = gpu_pitr.restore(write_wal(tmp_path / "wal"), backend="cpu")
    out = tmp_path / "x.faiss"
    pytest.importorskip("faiss")
    write_output(index.rows(0, 2), out, "faiss")

    def eio(src, dst):
        raise OSError(5, "Input/output error")

    _replace_then(monkeypatch, eio)
    with pytest.raises(OutputError) as err:
        write_output(index, out, "faiss")
    monkeypatch.undo()
    assert isinstance(err.value.__cause__, PartlyInPlaceError)
    assert str(err.value) == (
        f"{out}: the faiss output is in place, but {faiss_ids_path(out)} could not be "
        "renamed into place beside it: Input/output error; it is missing (the previous "
        "one was removed: it described the output replaced): write the output again")
    import faiss

    assert faiss.read_index(str(out)).ntotal == len(index)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal", out.name]
    import pickle  # (raised on a Dask worker, it comes back whole)

    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == str(err.value)
    assert pickle.loads(pickle.dumps(err.value.__cause__)).missing == str(faiss_ids_path(out))


def test_a_failed_first_rename_of_a_set_keeps_the_old_set(tmp_path: Path,
                                                          monkeypatch) -> None:
    """The old sidecar goes aside before the renames: the first failing, it comes back."""
    import gpu_pitr.outputs as outputs

    a, b = tmp_path / "x.faiss", tmp_path / "x.faiss.ids.jsonl"
    a.write_text("old index")
    b.write_text("old ids")

    def eio(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(outputs.os, "replace", eio)
    with pytest.raises(OSError, match="Input/output error"), atomic_files(a, b) as (ta, tb):
        ta.write_text("new index")
        tb.write_text("new ids")
    assert (a.read_text(), b.read_text()) == ("old index", "old ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name]


def test_a_writer_killed_between_the_renames_of_a_set_leaves_no_old_partner(
        tmp_path: Path) -> None:
    """SIGKILL (or power loss) between a FAISS index's rename and its sidecar's left the
    new index beside the old ids, which read as a whole output. Now the new index and
    no sidecar (a reader fails on opening it); the next write removes what is left."""
    a, b = tmp_path / "x.faiss", tmp_path / "x.faiss.ids.jsonl"
    a.write_text("old index")
    b.write_text("old ids")
    code = (
        "import os, sys\nfrom pathlib import Path\nimport gpu_pitr.outputs as o\n"
        "real = os.replace\n"
        "def replace(src, dst):\n    real(src, dst)\n    os._exit(9)\n"
        "o.os.replace = replace\n"
        f"with o.atomic_files(Path({str(a)!r}), Path({str(b)!r})) as (ta, tb):\n"
        "    ta.write_text('new index')\n    tb.write_text('new ids')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert a.read_text() == "new index" and not b.exists()
    with atomic_files(a, b) as (ta, tb):
        ta.write_text("newer index")
        tb.write_text("newer ids")
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name]


def test_write_output_is_the_cli_output_from_python(wal_dir: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    """The documented call: a str path or any PathLike, every format, the same bytes as
    ``--out``, and a cuda result (under the simulator) copied to the host first."""
    index = gpu_pitr.restore(wal_dir, backend="cpu")
    proc = cli("restore", wal_dir, "--out", tmp_path / "cli.npz", "--backend", "cpu",
               wal_dir=wal_dir)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(tmp_path)
    assert write_output(index, "api.npz", "npz") == [Path("api.npz")]
    a, b = np.load("api.npz"), np.load(tmp_path / "cli.npz")
    for key in ("ids", "vectors", "metadata"):
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    from gpu_pitr import snapshot

    written = write_output(index, "snap", "snapshot")
    assert written == [Path("snap")] and snapshot.load("snap").count == len(index)
    on_device = gpu_pitr.restore(wal_dir, backend="cuda")
    write_output(on_device, tmp_path / "dev.npz", "npz")
    assert np.load(tmp_path / "dev.npz")["vectors"].tobytes() == b["vectors"].tobytes()
    with pytest.raises(ValueError, match="unknown output format 'csv'"):
        write_output(index, "x.csv", "csv")


def test_report_to_dict_is_asdicts_copy() -> None:
    """``RestoreReport.to_dict`` (a copy made without ``dataclasses.asdict``, which took
    25 s for 1.4M skipped records) is asdict's result: the same keys in the same order,
    tuples kept, and nothing shared with the live report."""
    from dataclasses import asdict

    from gpu_pitr.report import RestoreReport

    r = RestoreReport(target={"to_time": 5}, base={"path": "x", "runs": [[1, 2], (3, 4)]})
    r.skipped = [{"file": "a", "offset": 1, "seq": None, "what": "x", "in": {"k": [1]}}] * 3
    r.timings = {"read": 0.5}
    d = r.to_dict()
    assert d == asdict(r) and list(d) == list(asdict(r))
    assert type(d["base"]["runs"][1]) is tuple
    d["skipped"][0]["in"]["k"].append(9)
    d["base"]["runs"][0].append(9)
    d["timings"]["read"] = 1.0
    assert r.skipped[2]["in"]["k"] == [1] and r.base["runs"][0] == [1, 2]
    assert r.timings == {"read": 0.5}


def _one_wide_map(tmp_path: Path, ids: int = 300, width: int = 5000) -> Path:
    """``ids`` ids with small maps but one of ``width`` characters: as an .npz, every
    metadata row is that wide (NumPy's unicode arrays are fixed-width)."""
    b = LogBuilder()
    for i in range(ids):
        b.add(Ins(f"id{i:04d}", f32(1), {"k": "x" * width} if i == 7 else {"k": "v"}, i))
    return b.write(tmp_path / "wal")


class _FreeSpace:
    f_frsize = 4096
    f_blocks = 1 << 20  # a file system that gives its sizes

    def __init__(self, free: int) -> None:
        self.f_bavail = free // self.f_frsize


def test_an_npz_larger_than_the_free_space_is_refused_before_it_is_written(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """300 ids and one map of 5,000 characters are a 6 MB .npz (its metadata member
    300 rows of 5,008 characters): with 1 MiB free the restore says so on one line,
    naming the id whose map sets the width, and writes nothing, instead of filling the
    disk first."""
    from gpu_pitr import outputs
    from gpu_pitr.cli import main

    wal = _one_wide_map(tmp_path)
    out = tmp_path / "o.npz"
    out.write_bytes(b"the previous restore")
    monkeypatch.setattr(outputs, "_WIDE_BYTES", 1 << 20)
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: _FreeSpace(1 << 20))
    assert main(["restore", str(wal), "--out", str(out), "--backend", "cpu", "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"gpu-pitr: error: {out}: the .npz would take 6.0 MB,")
    assert "more than the 1.0 MB free" in line
    assert "metadata member is 300 rows of 5,008 characters" in line
    assert "the metadata of id 'id0007'" in line and ".parquet" in line
    assert out.read_bytes() == b"the previous restore"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "wal"]
    # With room enough it is written.
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: _FreeSpace(1 << 30))
    with pytest.warns(UserWarning, match="the metadata of id 'id0007'"):
        write_output(gpu_pitr.restore(wal, backend="cpu"), out, "npz")
    with np.load(out, allow_pickle=False) as npz:
        assert npz["metadata"].dtype == np.dtype("<U5008")
        assert json.loads(str(npz["metadata"][7])) == {"k": "x" * 5000}


def test_an_ordinary_npz_says_nothing_of_its_width(wal_dir: Path, tmp_path: Path,
                                                   expected) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_output(expected, tmp_path / "o.npz", "npz")
    wal = _one_wide_map(tmp_path)  # 6 MB: inflated, but not worth a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_output(gpu_pitr.restore(wal, backend="cpu"), tmp_path / "w.npz", "npz")


@pytest.mark.parametrize("option", ["--out", "--report-json"])
def test_a_device_or_fifo_is_not_replaced_by_an_output(wal_dir: Path, tmp_path: Path,
                                                       expected, option: str) -> None:
    """``--out /dev/null``, ``--report-json /dev/stdout`` (a link to one): the output is
    written aside and renamed into place, which would put a regular file where the
    device was. Refused, before the restore, in one line; the library refuses too."""
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    link = tmp_path / "link.npz"
    link.symlink_to("/dev/null")
    for path, kind in ((fifo, "a FIFO"), (link, "a character device")):
        args = ["--out", path] if option == "--out" else [
            "--out", tmp_path / "o.npz", "--report-json", path]
        proc = cli("restore", wal_dir, *args, wal_dir=wal_dir)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (f"gpu-pitr: error: {path}: exists and is {kind}, not a "
                               "regular file: not replaced (outputs are written aside and "
                               "renamed into place; give a file's path)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "link.npz"]
    assert fifo.is_fifo() and link.is_symlink() and os.readlink(link) == "/dev/null"
    with pytest.raises(OSError, match="exists and is a FIFO"):
        write_output(expected, fifo, "npz")
    assert fifo.is_fifo()


def test_a_directory_where_a_second_output_file_goes_is_refused_first(
        wal_dir: Path, tmp_path: Path) -> None:
    """A directory at a FAISS index's OUT.ids.jsonl, or at --report-json: refused before
    the restore in one line naming it (the rename would fail after all the work, or
    replace nothing), and nothing is written beside it."""
    pytest.importorskip("faiss")
    ids = tmp_path / "o.faiss.ids.jsonl"
    report = tmp_path / "report.json"
    ids.mkdir()
    report.mkdir()
    for args, path in ((["--out", tmp_path / "o.faiss"], ids),
                       (["--out", tmp_path / "o.npz", "--report-json", report], report)):
        proc = cli("restore", wal_dir, *args, "--backend", "cpu", wal_dir=wal_dir)
        assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
        assert proc.stderr == f"gpu-pitr: error: {path}: is a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.faiss.ids.jsonl", "report.json"]
    assert [list(p.iterdir()) for p in (ids, report)] == [[], []]


def test_a_small_npz_fits_the_little_room_a_nearly_full_disk_has(
        wal_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The room asked for beyond the members' bytes is the archive's headers (about
    250 bytes a member) and one file-system block: a small restore still lands on a
    disk with 64 KiB free, and one needing a few KiB more than is free is refused."""
    from gpu_pitr import outputs

    index = gpu_pitr.restore(wal_dir, backend="cpu")
    out = tmp_path / "o.npz"
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: _FreeSpace(64 << 10))
    write_output(index, out, "npz")
    size = out.stat().st_size
    with np.load(out, allow_pickle=False) as npz:
        data = sum(npz[name].nbytes for name in npz.files)
    assert data < size <= data + outputs._NPZ_SLACK  # the slack holds the headers
    out.unlink()
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: _FreeSpace(size - 4096))
    with pytest.raises(gpu_pitr.errors.NoRoomError, match="the .npz would take") as err:
        write_output(index, out, "npz")
    assert not out.exists()
    # An output error, not the log's: a caller that catches OutputError (or OSError,
    # ENOSPC) for a full disk catches this one too; pickled as a worker sends it.
    assert isinstance(err.value, gpu_pitr.errors.OutputError)
    assert not isinstance(err.value, gpu_pitr.errors.WalError)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out)
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is type(err.value) and str(again) == str(err.value)
    assert str(err.value).startswith(f"{out}: the .npz would take ")


def test_a_name_too_long_for_its_temp_file_says_so(wal_dir, tmp_path):
    """A name of 240 bytes is one Linux takes, but the temp file written first, beside
    it, has a longer one: the error says that, not "cannot create ... there"."""
    out = tmp_path / ("n" * 236 + ".npz")
    proc = cli("restore", wal_dir, "--out", out, "--backend", "cpu", wal_dir=wal_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"gpu-pitr: error: {out}: name too long to be written atomically:")
    assert line.endswith("bytes long at most (it is 240)")
    assert list(tmp_path.iterdir()) == []
    restore_ok(wal_dir, tmp_path / ("n" * 200 + ".npz"))


def test_a_path_too_long_with_a_short_name_does_not_blame_the_name(tmp_path):
    """ENAMETOOLONG also comes from a whole path over PATH_MAX (4096 bytes) whose last
    part is short: the line must not say a 55-byte name is over a 236-byte limit."""
    import errno

    from gpu_pitr.errors import UnwritableDirectoryError

    out = tmp_path / ("o" * 51 + ".npz")
    line = str(UnwritableDirectoryError(out, OSError(errno.ENAMETOOLONG,
                                                     "File name too long")))
    assert "name too long to be written atomically" not in line, line
    assert "File name too long" in line


def test_two_writers_of_one_faiss_output_leave_one_whole_pair(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Two restores to the same FAISS ``OUT`` at once (two cron jobs): each renames its
    index, then its id sidecar. Were the second's two renames to fall between the
    first's, ``OUT`` would be one run's index and ``OUT.ids.jsonl`` the other's ids: row
    k named by the wrong id, with nothing to tell. The renames of a set of files are
    one step to other writers (forced here: B's whole write runs, on a thread, right
    after A's first rename)."""
    import threading

    import gpu_pitr.outputs as outputs

    faiss = pytest.importorskip("faiss")
    small_wal, big_wal = tmp_path / "small", tmp_path / "big"
    for wal, n in ((small_wal, 2), (big_wal, 3)):
        b = LogBuilder()
        for k in range(n):
            b.add(Ins(f"id{(k * 7) % 5}", f32(k, k, k), None, k + 1))
        b.write(wal)
    a_index = gpu_pitr.restore(small_wal, backend="cpu")
    b_index = gpu_pitr.restore(big_wal, backend="cpu")
    out = tmp_path / "same.faiss"
    real_replace = os.replace
    b_done = threading.Event()
    b_thread = threading.Thread(
        target=lambda: (write_output(b_index, out, "faiss"), b_done.set()))

    def replace(src, dst):
        real_replace(src, dst)
        if not b_thread.is_alive() and not b_done.is_set() and Path(dst) == out:
            b_thread.start()  # B writes while A is between its renames
            b_done.wait(2)  # (it cannot finish now if A holds the renames)

    monkeypatch.setattr(outputs.os, "replace", replace)
    write_output(a_index, out, "faiss")
    b_thread.join(30)
    assert b_done.is_set()
    ids = [json.loads(line) for line in faiss_ids_path(out).read_text().splitlines()]
    assert faiss.read_index(str(out)).ntotal == len(ids) == len(b_index)
    assert ids == b_index.id_list()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "same.faiss", "same.faiss.ids.jsonl"]


def test_keys_of_one_hash_in_a_large_map_are_told_apart_by_their_bytes(monkeypatch):
    """The keys of a large map are compared only with those of the same hash: where
    every key has the same hash (or one of two), the pairs kept are still the last of
    each key, by bytes (keys that are prefixes of others, NULs, the empty key)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gpu_pitr.snapshot import arrow

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from([b"", b"a", b"b", b"ab", b"\0", b"a\0", b"ba"]),
                    max_size=40), st.integers(1, 2))
    def check(keys, hashes):
        koffs = np.cumsum([0] + [len(k) for k in keys]).astype(np.int64)
        kdata = np.frombuffer(b"".join(keys) or b"\0", np.uint8)
        keep = np.ones(len(keys), np.bool_)
        # The Python function (register_jitable), its hash replaced by a weak one.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(arrow, "id_key", lambda data, at, n: np.uint64(n % hashes))
            dropped, _ = arrow._row_repeated_keys(0, len(keys), koffs, kdata, keep)
        assert keep.tolist() == [k not in keys[j + 1:] for j, k in enumerate(keys)]
        assert dropped == len(keys) - int(keep.sum())

    check()
