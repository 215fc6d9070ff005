"""Pieces mapped into the read-ahead buffers instead of copied (gpu_pitr.format.mapped).

The cpu executor and the scans (verify, inspect) map each piece's page-cache pages
where a read would have copied them, for pieces of ``MIN_PIECE`` bytes or more. The
test logs are small, so here every piece is mapped (``MIN_PIECE`` = 0); elsewhere
the suite's small logs are read. These tests check that the pieces really are
mapped, that a mapping that fails falls back to reading (with the read's own errors),
that nothing stays mapped after a restore, that restores with every piece mapped
equal the reference on random workloads, and what a file cut in place while mapped
does to the command line.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import test_restore_properties as props
import workloads as w
from hypothesis import given

import gpu_pitr
from gpu_pitr.format import mapped, readahead
from gpu_pitr.format.layout import HEADER_SIZE
from gpu_pitr.format.readahead import HEADROOM, Readahead, host_buffer
from gpu_pitr.format.segments import list_segments

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="mapping pieces is Linux only")

@pytest.fixture(autouse=True)
def every_piece_mapped(monkeypatch):
    monkeypatch.setattr(mapped, "MIN_PIECE", 0)
    # Small segments are read with their header (not read ahead, so not mapped).
    monkeypatch.setattr(readahead, "DIRECT_BYTES", 0)


SEG2 = 1_700_000_100  # the second segment's creation second


def _log(tmp_path, n: int = 400, dim: int = 16) -> Path:
    b = w.LogBuilder()
    for i in range(n):
        b.add(w.Ins(f"id-{i}", [float(i)] * dim, {"k": str(i)}, i))
        if i % 7 == 0:
            b.add(w.Upd(f"id-{i // 2}", [-float(i)] * dim, None, i))
    b.new_segment(SEG2)
    for i in range(n // 4):
        b.add(w.Del(f"id-{i * 3}", 1000 + i))
    return Path(b.write(tmp_path / "wal"))


def _state(view: w.View) -> tuple:
    return view.ids, view.vectors, view.metadata


def _mapped_files() -> set[str]:
    """Paths of the files this process has mapped, from /proc/self/maps."""
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def _pieces(wal: Path, chunk: int, **kw):
    segs = list_segments(wal)
    ranges = [(i, s.path, HEADER_SIZE, s.size) for i, s in enumerate(segs)]
    return segs, Readahead(ranges, chunk, HEADROOM, host_buffer, threads=2, **kw)


def test_pieces_are_the_files_pages_mapped_into_the_buffer(tmp_path):
    wal = _log(tmp_path)
    segs, reader = _pieces(wal, 8192, map_files=True)
    seen = 0
    try:
        for piece in reader:
            path = segs[piece.segment].path
            data = path.read_bytes()
            got = piece.buf[piece.data:piece.data + piece.length].tobytes()
            assert got == data[piece.file_offset:piece.file_offset + piece.length]
            # Mapped where the read would have put it, give or take the page offset.
            assert piece.data == HEADROOM + piece.file_offset % mmap.PAGESIZE
            assert str(path) in _mapped_files()
            # The headroom is writable (carried bytes go there), and the file is not
            # written: the mapping is private.
            piece.buf[piece.data - 8:piece.data + 8] = 0
            assert path.read_bytes() == data
            seen += 1
            reader.release(piece)
        assert reader.mapping and seen >= 4
    finally:
        reader.close()


def test_pieces_mapped_and_read_in_turn_share_the_buffers(tmp_path, monkeypatch):
    # Pieces under MIN_PIECE are read, into buffers that held a mapping: anonymous
    # memory goes back first, and every piece holds its file's bytes.
    wal = _log(tmp_path, n=600)
    monkeypatch.setattr(mapped, "MIN_PIECE", 6000)
    put_back = []
    real = mapped.unmap_piece
    monkeypatch.setattr(mapped, "unmap_piece", lambda *a: put_back.append(a) or real(*a))
    segs, reader = _pieces(wal, 8192, map_files=True)
    kinds = set()
    try:
        for piece in reader:
            data = segs[piece.segment].path.read_bytes()
            got = piece.buf[piece.data:piece.data + piece.length].tobytes()
            assert got == data[piece.file_offset:piece.file_offset + piece.length]
            kinds.add(piece.data == HEADROOM)  # read: the data right after the headroom
            reader.release(piece)
    finally:
        reader.close()
    assert kinds == {True, False} and put_back
    want = w.restore_ref(wal)
    for chunk in (4096, 8192, 7000):
        assert _state(w.restore_fast(wal, chunk_bytes=chunk)) == _state(want)


def test_without_map_files_the_pieces_are_read(tmp_path):
    wal = _log(tmp_path)
    segs, reader = _pieces(wal, 8192)
    try:
        for piece in reader:
            assert piece.data == HEADROOM
            assert str(segs[piece.segment].path) not in _mapped_files()
            reader.release(piece)
    finally:
        reader.close()


def test_a_restore_maps_its_pieces_and_leaves_nothing_mapped(tmp_path, monkeypatch):
    wal = _log(tmp_path)
    made = []
    real = mapped.map_piece

    def counting(*args):
        made.append(args[3])  # the file offset
        return real(*args)

    monkeypatch.setattr(mapped, "map_piece", counting)
    got = w.restore_fast(wal, chunk_bytes=4096)
    assert len(made) >= 8
    gc.collect()
    assert not any(str(wal) in p for p in _mapped_files())
    monkeypatch.setenv("GPU_PITR_MAP_READS", "0")
    made.clear()
    assert _state(w.restore_fast(wal, chunk_bytes=4096)) == _state(got)
    assert made == []


@pytest.mark.parametrize("what,code,every,still_mapping", [
    ("madvise", errno.EIO, 2, True),      # a page that cannot be read: that piece is read
    ("madvise", errno.EFAULT, 3, True),   # a page past the end of the file
    ("mmap", errno.ENOMEM, 2, True),
    ("mmap", errno.ENODEV, 1, False),     # a file system that cannot map files: all read
    ("madvise", errno.EINVAL, 1, False),  # a kernel without MADV_POPULATE_READ
])
def test_a_mapping_that_fails_is_read_instead(tmp_path, monkeypatch, what, code, every,
                                              still_mapping):
    wal = _log(tmp_path)
    want = w.restore_ref(wal)
    fake = w.FailingLibc(what, code, every)
    monkeypatch.setattr(mapped, "_libc", fake)
    assert _state(w.restore_fast(wal, chunk_bytes=4096)) == _state(want)
    # Turned off at the first failure of the kind (both reading threads may have tried).
    assert fake.calls >= 4 if still_mapping else 1 <= fake.calls <= 2
    segs, reader = _pieces(wal, 4096, map_files=True)
    try:
        for piece in reader:
            data = segs[piece.segment].path.read_bytes()
            got = piece.buf[piece.data:piece.data + piece.length].tobytes()
            assert got == data[piece.file_offset:piece.file_offset + piece.length]
            reader.release(piece)
        assert reader.mapping is still_mapping
    finally:
        reader.close()


def test_a_file_cut_inside_its_last_mapped_page_is_not_read_as_zeros(tmp_path, monkeypatch):
    # The pages map, being inside the file's last page, but the bytes past its new end
    # would read as zeros: the size is checked after the pages are in.
    from gpu_pitr.errors import FileShrankError

    wal = _log(tmp_path, n=3)
    first = sorted(wal.iterdir())[0]
    size = first.stat().st_size
    assert size < mmap.PAGESIZE
    real = Readahead.__init__

    def listed_then_cut(self, *args, **kwargs):
        os.truncate(first, size - 5)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Readahead, "__init__", listed_then_cut)
    with pytest.raises(FileShrankError) as err:
        gpu_pitr.restore(wal, backend="cpu")
    assert str(err.value).startswith(f"{first}: offset {size - 5}: the file ends there")


@props.SETTINGS
@given(data=props.CASES)
def test_restores_with_every_piece_mapped_equal_the_reference(data):
    """Random workloads (elsewhere their pieces are too small to be mapped)."""
    wl = data.draw(w.workloads(), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    chunk = data.draw(w.st.sampled_from([None, 64, 1000]), label="chunk_bytes")
    with mock.patch.object(mapped, "MIN_PIECE", 0):
        props.run_case(wl, kw, chunk)


# A piece mapped, then its file cut in place before the piece is read: the SIGBUS a
# copy would not have. The command line turns it into one line and exit status.
_CUT_AFTER_MAPPING = """
import os, sys
from gpu_pitr import cli
from gpu_pitr.format import mapped, readahead

real = mapped.map_piece

def map_then_cut(buf, at, fd, offset, length, disable):
    data = real(buf, at, fd, offset, length, disable)
    # Past its header, within the first page: the pages after it are gone.
    os.ftruncate(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY), 100)
    return data

mapped.map_piece = map_then_cut
mapped.MIN_PIECE = 0
readahead.DIRECT_BYTES = 0  # small files are read with their header, not mapped
sys.argv = ["gpu-pitr", *sys.argv[1:]]
cli.run()
"""


@pytest.mark.parametrize("command,status", [
    (["restore", "{wal}", "--out", "{out}"], 1),
    (["verify", "{wal}"], 2),
    (["inspect", "{wal}"], 1),
])
def test_a_file_cut_in_place_while_mapped_is_one_line_from_the_command(tmp_path, command,
                                                                        status):
    import subprocess

    from gpu_pitr import buserror

    wal = _log(tmp_path)
    out = tmp_path / "out.npz"
    args = [a.format(wal=wal, out=out) for a in command]
    proc = subprocess.run([sys.executable, "-c", _CUT_AFTER_MAPPING, *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr == buserror.MESSAGE
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["wal"]


def test_only_the_command_turns_a_bus_error_into_a_line(tmp_path, monkeypatch):
    from gpu_pitr import buserror, cli

    wal = _log(tmp_path)
    installed = []
    monkeypatch.setattr(buserror, "install", installed.append)
    assert cli.main(["inspect", str(wal)]) == 0  # a program's call: its own handling
    assert installed == []
    for command, status in (("verify", 2), ("inspect", 1)):
        monkeypatch.setattr(sys, "argv", ["gpu-pitr", command, str(wal)])
        with pytest.raises(SystemExit) as done:
            cli.run()
        assert done.value.code == 0 and installed[-1] == status


def test_a_handler_that_cannot_be_made_leaves_the_command_running(tmp_path, monkeypatch):
    from gpu_pitr import buserror

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(buserror, "cfunc", no_compiler)
    assert buserror.install(1) is False
    wal = _log(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gpu-pitr", "verify", str(wal)])
    with pytest.raises(SystemExit) as done:
        from gpu_pitr import cli

        cli.run()
    assert done.value.code == 0


@pytest.mark.parametrize("value,maps", [("0", False), ("off", False), (" No ", False),
                                        ("false", False), ("1", True), ("yes", True),
                                        ("", True)])
def test_map_reads_is_turned_off_by_the_words_overlap_takes(monkeypatch, value, maps):
    """``GPU_PITR_MAP_READS`` takes 0/off/no/false, as ``GPU_PITR_CUDA_OVERLAP`` takes
    1/on/yes/true (``no`` used to map all the same)."""
    monkeypatch.setenv("GPU_PITR_MAP_READS", value)
    assert mapped.available() == (maps and sys.platform.startswith("linux"))


def test_a_map_reads_value_neither_on_nor_off_is_refused(monkeypatch, tmp_path):
    """``maybe`` used to map, silently: a library restore raises one line naming it."""
    from gpu_pitr import pipeline

    monkeypatch.setenv("GPU_PITR_MAP_READS", "maybe")
    with pytest.raises(ValueError, match=r"^GPU_PITR_MAP_READS='maybe' is neither on") as err:
        pipeline.restore(tmp_path, backend="cpu")
    assert "\n" not in str(err.value)
