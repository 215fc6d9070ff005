"""``.npz`` writing: NumPy's layout, written straight from memory.

An ``.npz`` is a ZIP archive of stored (uncompressed) ``.npy`` members; ``np.load``
reads it through Python's ``zipfile``. ``np.savez`` builds it with ``zipfile``
too, which computes each member's CRC-32 with Python's zlib on the writing thread
(1.8 GB/s here) and copies every 16 MiB of an array before writing it. A
restored index is about a gigabyte of ids, vectors and metadata per million ids,
so this writer computes each member's CRC-32 on a thread (``gpu_pitr.crc``:
zlib-ng's where installed) while the same bytes are written from the array's own
memory, then fills the CRC into the member's header.

The bytes are those ``np.savez`` writes through ``zipfile`` (checked field by field,
also past the ZIP64 thresholds): members dated 1980-01-01 with mode 0600, local
headers with a ZIP64 extra field (``force_zip64``), central-directory ZIP64 fields
and the ZIP64 end records only where a size, an offset or the count does not fit.
Arrays that need pickle (object dtypes) are refused before anything is written.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpu_pitr.crc import crc32
from gpu_pitr.tempfiles import start_writeback

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_ZIP64 = struct.Struct("<HHQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END64 = struct.Struct("<IQHHIIQQQQ")
_END64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_VERSION = 45  # ZIP64
_MADE_BY = (3 << 8) | _VERSION  # Unix
_DOS_TIME, _DOS_DATE = 0, (1 << 5) | 1  # 1980-01-01 00:00:00, zipfile's default
_MODE = 0o600 << 16  # what zipfile gives a member it opens for writing
_UTF8_NAME = 0x800
_CRC_AT = 14  # offset of the CRC-32 in a local header
_PIECE = 64 << 20  # bytes per write call

#: ``zipfile``'s ZIP64 threshold: larger sizes and offsets go to ZIP64 fields.
ZIP64_LIMIT = (1 << 31) - 1


def npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header ``np.save`` writes for ``arr``."""
    import io

    from numpy.lib import format as npformat

    head = npformat.header_data_from_array_1_0(arr)
    for write in (npformat.write_array_header_1_0, npformat.write_array_header_2_0):
        buf = io.BytesIO()
        try:
            write(buf, head)
        except UnicodeEncodeError:  # field names outside latin-1: format 3.0
            raise ValueError(f"dtype {arr.dtype} needs .npy format 3.0, which this "
                             "writer does not write") from None
        except ValueError:  # too long for 1.0's 16-bit header length
            continue
        return buf.getvalue()
    raise ValueError(f"the .npy header of dtype {arr.dtype} is too long")


class Pieces:
    """A member made as it is written: an array of ``dtype`` and ``shape`` whose
    C-order bytes ``make()`` yields as consecutive arrays (a restored index's ids as
    NumPy unicode are four bytes a character: made a few rows at a time, never whole)."""

    def __init__(self, dtype, shape: tuple, make) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.make = make
        self.nbytes = self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))


def _member(name: str, arr) -> tuple:
    """``(file name, flags, .npy header, body bytes)`` of one member, as np.save lays
    it out: C order, or Fortran order for an array only Fortran-contiguous. The body
    of ``Pieces`` is the ``Pieces``."""
    if isinstance(arr, Pieces):
        if arr.dtype.hasobject:
            raise ValueError(f"{name}: dtype {arr.dtype} holds Python objects")
        header = npy_header(np.broadcast_to(np.zeros((), arr.dtype), arr.shape))
        fname = f"{name}.npy"
        return fname.encode("utf-8"), 0 if fname.isascii() else _UTF8_NAME, header, arr
    arr = np.asarray(arr)
    if arr.dtype.hasobject:
        raise ValueError(f"{name}: dtype {arr.dtype} holds Python objects, which an .npz "
                         "loadable with allow_pickle=False cannot")
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        body = arr.T.reshape(-1)
    else:
        body = np.ascontiguousarray(arr).reshape(-1)
    header = npy_header(arr)
    body = body.view(np.uint8) if arr.size and arr.dtype.itemsize else np.zeros(0, np.uint8)
    fname = f"{name}.npy"
    flags = 0 if fname.isascii() else _UTF8_NAME
    return fname.encode("utf-8"), flags, header, body


def write_npz(file, arrays: dict, *, zip64_limit: int = ZIP64_LIMIT) -> None:
    """Write ``arrays`` (name -> array) to the binary ``file`` (seekable, at offset 0) as
    ``np.savez`` would, members ``NAME.npy`` in the given order.

    ``zip64_limit``: the largest value written in a 32-bit field (tests lower it to
    write the ZIP64 records of a large archive with a small one).
    """
    members = [_member(name, arr) for name, arr in arrays.items()]  # checked first
    try:
        fd = file.fileno()
    except (AttributeError, OSError):  # io.BytesIO and the like
        fd = None
    central = []
    with ThreadPoolExecutor(1) as pool:
        for fname, flags, header, body in members:
            streamed = isinstance(body, Pieces)
            size = len(header) + (body.nbytes if streamed else len(body))
            offset = file.tell()
            file.write(_LOCAL.pack(0x04034B50, _VERSION, flags, 0, _DOS_TIME, _DOS_DATE, 0,
                                   0xFFFFFFFF, 0xFFFFFFFF, len(fname), _LOCAL_ZIP64.size))
            file.write(fname)
            file.write(_LOCAL_ZIP64.pack(1, 16, size, size))
            file.write(header)
            if streamed:  # made here piece by piece: its CRC-32 on this thread
                crc = _write_pieces(file, fd, body, crc32(header))
            else:
                later = pool.submit(lambda h=header, b=body: crc32(b, crc32(h)))
                _write_body(file, fd, body)
                crc = later.result()
            end = file.tell()
            file.seek(offset + _CRC_AT)
            file.write(struct.pack("<I", crc))
            file.seek(end)
            central.append((fname, flags, crc, size, offset))
    start = file.tell()
    for fname, flags, crc, size, offset in central:
        big = [v for v in (size, size, offset) if v > zip64_limit]
        extra = struct.pack(f"<HH{len(big)}Q", 1, 8 * len(big), *big) if big else b""
        fits = [0xFFFFFFFF if v > zip64_limit else v for v in (size, size, offset)]
        file.write(_CENTRAL.pack(0x02014B50, _MADE_BY, _VERSION, flags, 0, _DOS_TIME,
                                 _DOS_DATE, crc, fits[0], fits[1], len(fname), len(extra),
                                 0, 0, 0, _MODE, fits[2]))
        file.write(fname)
        file.write(extra)
    cd_size = file.tell() - start
    count = len(central)
    if count > 0xFFFF or cd_size > zip64_limit or start > zip64_limit:
        at = file.tell()
        file.write(_END64.pack(0x06064B50, _END64.size - 12, _VERSION, _VERSION, 0, 0,
                               count, count, cd_size, start))
        file.write(_END64_LOCATOR.pack(0x07064B50, 0, at, 1))
    file.write(_END.pack(0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                         min(cd_size, 0xFFFFFFFF), min(start, 0xFFFFFFFF), 0))


def _write_body(file, fd, body: np.ndarray) -> None:
    for a in range(0, len(body), _PIECE):
        at = file.tell()
        file.write(body[a:a + _PIECE])
        if fd is not None:  # the disk starts on it now: the fsync waits less
            file.flush()
            start_writeback(fd, at, file.tell() - at)


def _write_pieces(file, fd, member: Pieces, crc: int) -> int:
    """Write what ``member.make()`` yields; returns the CRC-32 continued from ``crc``."""
    done = 0
    for piece in member.make():
        piece = np.ascontiguousarray(piece, dtype=member.dtype).reshape(-1).view(np.uint8)
        done += len(piece)
        if done > member.nbytes:
            break
        crc = crc32(piece, crc)
        _write_body(file, fd, piece)
    if done != member.nbytes:
        raise ValueError(f"a streamed .npy member of {member.nbytes} bytes was made of "
                         f"{'more' if done > member.nbytes else done}")
    return crc
