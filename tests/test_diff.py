"""``gpu-pitr diff`` and ``gpu_pitr.diff.diff``: what differs between two restored states.

Every side is a real restore of a small log the project's ``WalWriter`` wrote, written
out by the restore's own writers (.npz, .parquet, snapshot) or given as the
``RestoredIndex`` itself; the expected lists are worked out in Python from the entries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import cli
from gpu_pitr.diff import diff
from gpu_pitr.errors import WalError
from gpu_pitr.format.entries import Delete, Insert, Update
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.outputs import write_output

FORMATS = ("npz", "parquet", "snapshot", "index")


def u32(*words: int) -> np.ndarray:
    """A float32 vector of these bit patterns (NaN payloads and -0.0 kept)."""
    return np.array(words, np.uint32).view(np.float32)


def write_wal(wal_dir: Path, entries: list) -> Path:
    with WalWriter(wal_dir, created=1_800_000_000) as wal:
        for entry in entries:
            wal.append(entry)
    return wal_dir


def restored(wal_dir: Path):
    return gpu_pitr.restore(wal_dir, backend="cpu").to_host()


def written(index, where: Path, fmt: str):
    """``index`` as ``fmt`` under ``where`` (``index``: the RestoredIndex itself)."""
    if fmt == "index":
        return index
    out = where / ("snap" if fmt == "snapshot" else f"out.{fmt}")
    where.mkdir(parents=True, exist_ok=True)
    write_output(index, out, fmt)
    return out


NAN_A = u32(0x7FC12345, 0, 0x3F800000)  # a quiet NaN with a payload
NAN_B = u32(0x7FC00001, 0, 0x3F800000)  # another payload: equal as floats go, not as bits
NEG0 = u32(0x80000000, 0, 0x3F800000)  # -0.0
POS0 = u32(0x00000000, 0, 0x3F800000)  # +0.0: == -0.0 as floats

A_ENTRIES = [
    Insert("same", [1, 2, 3], {"k": "v"}, 1),
    Insert("nan", NAN_A, None, 2),
    Insert("zero", NEG0, None, 3),
    Insert("none-vs-empty", [1, 1, 1], None, 4),
    Insert("meta", [2, 2, 2], {"k": "v"}, 5),
    Insert("both", [3, 3, 3], {"k": "v"}, 6),
    Insert("gone", [4, 4, 4], None, 7),
    Insert("é-gone", [4, 4, 4], None, 8),
    Insert("order", [5, 5, 5], {"a": "1", "b": "2"}, 9),
    Insert("deleted-later", [6, 6, 6], None, 10),
    Delete("deleted-later", 11),
]
B_ENTRIES = [
    Insert("same", [1, 2, 3], {"k": "v"}, 1),
    Insert("nan", NAN_B, None, 2),
    Insert("zero", POS0, None, 3),
    Insert("none-vs-empty", [1, 1, 1], {}, 4),
    Insert("meta", [2, 2, 2], {"k": "w"}, 5),
    Insert("both", [3, 3, 4], {"k": "w"}, 6),
    Insert("order", [5, 5, 5], {"b": "2", "a": "1"}, 9),  # the same map, another order
    Insert("new", [7, 7, 7], None, 12),
    Insert("\U0001f600-new", [7, 7, 7], None, 13),
    Insert("z-new", [7, 7, 7], None, 14),
]
EXPECTED = {
    "only_in_a": ["gone", "é-gone"],
    "only_in_b": ["new", "z-new", "\U0001f600-new"],  # UTF-8 byte order
    "changed": ["both", "meta", "nan", "none-vs-empty", "zero"],
    "vector_changed": ["both", "nan", "zero"],
    "metadata_changed": ["both", "meta", "none-vs-empty"],
}


@pytest.fixture(scope="module")
def states(tmp_path_factory) -> dict:
    """``{"a"|"b": {fmt: side}}``: the two states in every form."""
    root = tmp_path_factory.mktemp("diff")
    out = {}
    for name, entries in (("a", A_ENTRIES), ("b", B_ENTRIES)):
        index = restored(write_wal(root / f"wal-{name}", entries))
        out[name] = {fmt: written(index, root / f"{name}-{fmt}", fmt) for fmt in FORMATS}
    return out


def lists(result) -> dict:
    return {name: getattr(result, name) for name in EXPECTED}


@pytest.mark.parametrize("fmt_b", FORMATS)
@pytest.mark.parametrize("fmt_a", FORMATS)
def test_every_output_kind_on_either_side_gives_the_same_lists(states, fmt_a, fmt_b) -> None:
    """NaN payloads and -0.0 differ as bits; metadata None is not {}; a map written in
    another key order is the same map; a deleted id is not there at all."""
    result = diff(states["a"][fmt_a], states["b"][fmt_b])
    assert lists(result) == EXPECTED
    assert result.counts == {name: len(ids) for name, ids in EXPECTED.items()}
    assert (result.format_a, result.format_b) == (fmt_a, fmt_b)
    assert (result.ids_a, result.ids_b, result.dim_a, result.dim_b) == (9, 10, 3, 3)
    assert not result.same and not result.dims_differ


@pytest.mark.parametrize("fmt_b", FORMATS)
@pytest.mark.parametrize("fmt_a", FORMATS)
def test_one_state_in_any_two_forms_is_the_same(states, fmt_a, fmt_b) -> None:
    result = diff(states["a"][fmt_a], states["a"][fmt_b])
    assert result.same
    assert all(ids == [] for ids in lists(result).values())


def test_a_limit_cuts_the_lists_not_the_counts(states) -> None:
    result = diff(states["a"]["npz"], states["b"]["parquet"], limit=1)
    assert lists(result) == {name: ids[:1] for name, ids in EXPECTED.items()}
    assert result.counts["changed"] == 5
    assert diff(states["a"]["npz"], states["b"]["npz"], limit=0).to_dict()["changed"] == {
        "count": 5, "ids": []}
    with pytest.raises(ValueError, match="limit -1"):
        diff(states["a"]["npz"], states["b"]["npz"], limit=-1)


@pytest.mark.parametrize("fmt", ["npz", "parquet", "snapshot"])
def test_empty_indexes(tmp_path: Path, states, fmt) -> None:
    empty = written(restored(write_wal(tmp_path / "wal", [])), tmp_path / "out", fmt)
    assert diff(empty, empty).same
    result = diff(empty, states["b"][fmt])
    b_ids = sorted((e.id for e in B_ENTRIES), key=str.encode)
    assert (result.only_in_a, result.only_in_b, result.changed) == ([], b_ids, [])
    assert not result.dims_differ  # an empty side has no vectors to differ from
    back = diff(states["b"][fmt], empty)
    assert (back.only_in_a, back.only_in_b, back.ids_b) == (b_ids, [], 0)


def test_a_dimension_change_makes_every_common_id_changed(tmp_path: Path, capsys) -> None:
    a = restored(write_wal(tmp_path / "a", [Insert("x", [1, 2, 3], None, 1),
                                            Insert("y", [1, 2, 3], {"k": "v"}, 2),
                                            Insert("only-a", [1, 2, 3], None, 3)]))
    b = restored(write_wal(tmp_path / "b", [Insert("x", [1, 2, 3, 4], None, 1),
                                            Insert("y", [1, 2, 3, 4], {"k": "w"}, 2)]))
    result = diff(a, b)
    assert result.dims_differ and (result.dim_a, result.dim_b) == (3, 4)
    assert result.changed == result.vector_changed == ["x", "y"]
    assert result.metadata_changed == ["y"] and result.only_in_a == ["only-a"]
    pa, pb = written(a, tmp_path / "pa", "npz"), written(b, tmp_path / "pb", "parquet")
    assert cli.main(["diff", str(pa), str(pb)]) == 1
    out = capsys.readouterr().out
    assert "dimension differs (3 in A, 4 in B): every id in both counts as changed" in out
    assert '  "y" (vector, metadata)' in out.splitlines()


def test_the_command_lists_and_counts_and_exits_1(states, capsys) -> None:
    a, b = states["a"]["npz"], states["b"]["snapshot"]
    assert cli.main(["diff", str(a), str(b), "--limit", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [
        f"A: {a} (npz): 9 ids, dim 3",
        f"B: {b} (snapshot): 10 ids, dim 3",
        "only in A: 2",
        '  "gone"',
        '  "é-gone"',
        "only in B: 3",
        '  "new"',
        '  "z-new"',
        "  ... and 1 more",
        "changed: 5 (3 vector, 3 metadata)",
        '  "both" (vector, metadata)',
        '  "meta" (metadata)',
        "  ... and 3 more",
    ]


def test_the_same_state_exits_0(states, capsys) -> None:
    assert cli.main(["diff", str(states["a"]["parquet"]), str(states["a"]["snapshot"])]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "same: 9 ids, their vectors bit for bit and their metadata")


def test_json_has_every_id_unless_limited(states, capsys) -> None:
    a, b = str(states["a"]["parquet"]), str(states["b"]["npz"])
    assert cli.main(["diff", a, b, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["a"] == {"path": a, "format": "parquet", "ids": 9, "dim": 3}
    assert doc["same"] is False and doc["dims_differ"] is False
    assert {name: doc[name] for name in EXPECTED} == {
        name: {"count": len(ids), "ids": ids} for name, ids in EXPECTED.items()}
    assert cli.main(["diff", a, b, "--json", "--limit", "1"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] == {"count": 5, "ids": ["both"]}


def test_the_installed_command_exits_0_1_2(states, tmp_path: Path) -> None:
    """diff(1)'s statuses, through ``python -m gpu_pitr`` as a script sees them."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "gpu_pitr", "diff", *map(str, args)],
                              capture_output=True, text=True, timeout=600)

    assert run(states["a"]["npz"], states["a"]["parquet"]).returncode == 0
    assert run(states["a"]["npz"], states["b"]["parquet"]).returncode == 1
    missing = run(states["a"]["npz"], tmp_path / "missing.npz")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (f"gpu-pitr: error: {tmp_path / 'missing.npz'}: cannot be "
                              "read: No such file or directory\n")
    usage = run(states["a"]["npz"])
    assert usage.returncode == 2 and "the following arguments are required: B" in usage.stderr
    if os.path.exists("/dev/full"):  # a stdout that cannot be written is trouble, not "1"
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "diff",
                                   str(states["a"]["npz"]), str(states["b"]["npz"])],
                                  stdout=full, stderr=subprocess.PIPE, text=True, timeout=600)
        assert (proc.returncode, proc.stderr) == (
            2, "gpu-pitr: error: stdout: cannot write: No space left on device\n")


def test_out_of_memory_is_2_not_different(states, monkeypatch, capsys) -> None:
    import gpu_pitr.diff

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(gpu_pitr.diff, "diff", no_memory)
    assert cli.main(["diff", str(states["a"]["npz"]), str(states["b"]["npz"])]) == 2
    assert capsys.readouterr().err == ("gpu-pitr: error: out of memory: an allocation "
                                       "failed\n")


def _one_error(capsys, args: list, *fragments: str) -> str:
    assert cli.main(["diff", *map(str, args)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-pitr: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_a_damaged_npz_is_one_line_naming_it(states, tmp_path: Path, capsys) -> None:
    good = Path(states["a"]["npz"]).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    _one_error(capsys, [cut, states["a"]["npz"]], f"{cut}: cannot be read as an .npz")
    flipped = tmp_path / "flipped.npz"
    with zipfile.ZipFile(states["a"]["npz"]) as z:
        info = z.getinfo("vectors.npy")
        at = info.header_offset + 30 + len(info.filename) + info.compress_size - 1
    data = bytearray(good)
    data[at] ^= 1  # the last byte of the vectors: the member's CRC-32 no longer matches
    flipped.write_bytes(bytes(data))
    _one_error(capsys, [states["a"]["npz"], flipped], str(flipped), "CRC")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip\n")
    _one_error(capsys, [text, text], f"{text}: not an .npz")


def test_an_npz_that_is_not_a_restores_is_refused(tmp_path: Path, capsys) -> None:
    """The checks a snapshot's load makes of its own: members, types, lengths, order."""
    def npz(name: str, **members) -> Path:
        path = tmp_path / name
        np.savez(path, **members)
        return path

    vec = np.zeros((2, 3), np.float32)
    meta = np.array(["null", "null"])
    cases = [
        (npz("nometa.npz", ids=np.array(["a", "b"]), vectors=vec),
         "not an .npz a restore wrote: no 'metadata' member"),
        (npz("unsorted.npz", ids=np.array(["b", "a"]), vectors=vec, metadata=meta),
         "ids are not strictly ascending at row 1"),
        (npz("twice.npz", ids=np.array(["a", "a"]), vectors=vec, metadata=meta),
         "ids are not strictly ascending at row 1"),
        (npz("f64.npz", ids=np.array(["a", "b"]), vectors=vec.astype(np.float64),
             metadata=meta), "vectors: expected float32 [2, d], got float64 [2, 3]"),
        (npz("short.npz", ids=np.array(["a", "b"]), vectors=vec, metadata=meta[:1]),
         "metadata: expected unicode [2]"),
    ]
    for path, words in cases:
        _one_error(capsys, [path, path], f"{path}: {words}")


def test_a_damaged_snapshot_or_parquet_is_one_line_naming_the_file(states, tmp_path: Path,
                                                                   capsys) -> None:
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(states["a"]["snapshot"], snap)
    vectors = snap / "vectors.f32"
    data = bytearray(vectors.read_bytes())
    data[0] ^= 1
    vectors.write_bytes(bytes(data))
    _one_error(capsys, [snap, states["a"]["npz"]], f"{vectors}: offset 0: CRC-32 mismatch")
    cut = tmp_path / "cut.parquet"
    good = Path(states["a"]["parquet"]).read_bytes()
    cut.write_bytes(good[:-10])
    _one_error(capsys, [states["a"]["npz"], cut], f"{cut}: cannot be read as a .parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["a"], "vector": [[1.0, 2.0]], "metadata": pa.array(
        [None], pa.map_(pa.string(), pa.string()))}), wrong)
    _one_error(capsys, [wrong, wrong], f"{wrong}: vector: expected fixed_size_list<float32>")


def test_what_diff_cannot_read_is_one_line(states, tmp_path: Path, capsys) -> None:
    faiss = tmp_path / "x.faiss"
    faiss.write_bytes(b"")
    _one_error(capsys, [faiss, states["a"]["npz"]], f"{faiss}: a FAISS output holds no metadata")
    other = tmp_path / "README"
    other.write_text("hello\n")
    _one_error(capsys, [states["a"]["npz"], other], f"{other}: not an output gpu-pitr writes")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_error(capsys, [fifo, fifo], f"{fifo}: is a FIFO, not a regular file")  # not a hang
    dataset = tmp_path / "dataset"  # what restore --write-on-workers writes
    dataset.mkdir()
    (dataset / "_gpu_pitr_report.json").write_text("{}\n")
    (dataset / "part-00000-of-00001.parquet").write_bytes(
        Path(states["a"]["parquet"]).read_bytes())
    _one_error(capsys, [states["a"]["npz"], dataset], f"{dataset}: a Parquet dataset")
    nowhere = f"{tmp_path}/nowhere/"
    _one_error(capsys, [nowhere, states["a"]["npz"]], f"{tmp_path / 'nowhere'}: not a "
               "snapshot directory")
    with pytest.raises(WalError, match="nowhere: not a snapshot directory"):
        diff(nowhere, states["a"]["npz"])
    with pytest.raises(TypeError, match="paths or RestoredIndex objects"):
        diff(3, states["a"]["npz"])


def test_a_loaded_snapshot_is_taken_too(states) -> None:
    snap = gpu_pitr.snapshot.load(states["b"]["snapshot"])
    assert lists(diff(states["a"]["index"], snap)) == EXPECTED


def test_reachable_after_a_plain_import_which_stays_light() -> None:
    code = ("import sys, gpu_pitr; f = gpu_pitr.diff.diff; "
            "print(sorted(m for m in ('numba', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_every_option_of_diff_is_in_the_readme(capsys) -> None:
    """As test_cli's test for the other commands: --help's options, all in the README."""
    with pytest.raises(SystemExit):
        cli.main(["diff", "--help"])
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", capsys.readouterr().out))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Command line"):readme.index("## Python API")]
    assert "gpu-pitr diff A B" in section
    assert sorted(o for o in options - {"--help"} if o not in section) == []


# ----------------------------------------------------------------------------- property
IDS = st.sampled_from(["a", "b", "c", "ä", "z", "\U0001f600", "a\u00a0", ""])
WORDS = st.sampled_from([0, 0x80000000, 0x3F800000, 0x7FC00000, 0x7FC12345, 0xFF800001])
METAS = st.one_of(st.none(), st.dictionaries(st.sampled_from(["k", "é", ""]),
                                             st.sampled_from(["v", "w", ""]), max_size=2))


@st.composite
def logs(draw, dim: int) -> list:
    entries = []
    for ts in range(draw(st.integers(0, 12))):
        ident = draw(IDS)
        kind = draw(st.sampled_from(["insert", "insert", "update", "delete"]))
        if kind == "delete":
            entries.append(Delete(ident, ts))
            continue
        vector = u32(*draw(st.lists(WORDS, min_size=dim, max_size=dim)))
        entries.append((Insert if kind == "insert" else Update)(ident, vector,
                                                                draw(METAS), ts))
    return entries


def state(index) -> dict:
    return {i: (v.tobytes(), m) for i, v, m in zip(index.id_list(), index.vectors,
                                                   index.metadata, strict=True)}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(a_log=logs(dim=2), b_dim=st.sampled_from([2, 2, 3]), data=st.data(),
       fmt_a=st.sampled_from(FORMATS), fmt_b=st.sampled_from(FORMATS))
def test_applying_the_diff_to_a_gives_b(a_log, b_dim, data, fmt_a, fmt_b) -> None:
    """Remove what is only in A, add what is only in B, replace what changed: A becomes B
    exactly; and each list is exactly what the two states say, sorted by UTF-8 bytes."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        a = restored(write_wal(root / "wal-a", a_log))
        b = restored(write_wal(root / "wal-b", data.draw(logs(dim=b_dim))))
        result = diff(written(a, root / "a", fmt_a), written(b, root / "b", fmt_b))
        sa, sb = state(a), state(b)
        applied = dict(sa)
        for ident in result.only_in_a:
            del applied[ident]
        for ident in result.only_in_b + result.changed:
            applied[ident] = sb[ident]
        assert applied == sb
        common = sa.keys() & sb.keys()
        by_bytes = lambda ids: sorted(ids, key=str.encode)  # noqa: E731
        dims = bool(sa and sb) and len(next(iter(sa.values()))[0]) != len(
            next(iter(sb.values()))[0])
        assert lists(result) == {
            "only_in_a": by_bytes(sa.keys() - sb.keys()),
            "only_in_b": by_bytes(sb.keys() - sa.keys()),
            "changed": by_bytes(i for i in common if sa[i] != sb[i] or dims),
            "vector_changed": by_bytes(i for i in common if sa[i][0] != sb[i][0] or dims),
            "metadata_changed": by_bytes(i for i in common if sa[i][1] != sb[i][1]),
        }
        assert result.same == (sa == sb)


def test_limit_0_prints_the_counts_alone(states, capsys) -> None:
    """``--limit 0`` is "counts alone" (README): no "... and K more" under a count with
    no id listed, which only repeated it."""
    a, b = states["a"]["npz"], states["b"]["snapshot"]
    assert cli.main(["diff", str(a), str(b), "--limit", "0"]) == 1
    assert capsys.readouterr().out.splitlines()[2:] == [
        "only in A: 2", "only in B: 3", "changed: 5 (3 vector, 3 metadata)"]


def test_a_wal_directory_given_for_a_state_is_named_as_one(tmp_path: Path, states,
                                                           capsys) -> None:
    """The archive itself, given where a restore's output goes (recovery.md's step 8
    diffs two restores of it), is named as a WAL directory, with what to run: not a
    snapshot with its manifest missing."""
    wal = write_wal(tmp_path / "arch", A_ENTRIES)
    assert cli.main(["diff", str(states["a"]["npz"]), str(wal)]) == 2
    assert capsys.readouterr().err == (
        f"gpu-pitr: error: {wal}: a WAL directory (it holds wal-<16 hex digits>.log files), not a "
        f"restored index: diff compares what restores wrote (gpu-pitr restore {wal} --out "
        "X.npz, then diff X.npz)\n")
    with pytest.raises(WalError, match="a WAL directory"):
        diff(wal, states["a"]["npz"])
