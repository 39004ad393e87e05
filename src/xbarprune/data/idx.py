"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

An IDX file is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian uint32 sizes and the
values, row-major, big-endian. The files may be gzip-compressed (``.gz``). Every problem (bad
magic number, unknown type code, truncated or oversized payload, broken gzip stream) raises
:class:`~xbarprune.errors.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from xbarprune.errors import DataError

__all__ = ["read_idx", "write_idx", "IDX_TYPES"]

#: IDX type code -> numpy big-endian dtype.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read (corrupt or truncated gzip stream?): {exc}") from exc


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a native-endian numpy array.

    Args:
        path: the file; a ``.gz`` suffix means gzip.
        ndim: if given, the number of dimensions the file must have (3 for images, 1 for
            labels).

    Raises:
        DataError: the file is missing, is not IDX, or its payload does not match its header.
    """
    p = Path(path)
    raw = _read_bytes(p)
    if len(raw) < 4:
        raise DataError(f"{p}: file too short ({len(raw)} bytes) to be an IDX file")
    zero, type_code, nd = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in IDX_TYPES:
        raise DataError(
            f"{p}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000 + type code in "
            f"{sorted(hex(c) for c in IDX_TYPES)} + ndim); is it really an IDX file?"
        )
    if ndim is not None and nd != ndim:
        raise DataError(f"{p}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"{p}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{nd}I", raw[4:header]) if nd else ()
    dtype = IDX_TYPES[type_code]
    count = int(np.prod(shape, dtype=np.int64)) if nd else 1
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{p}: IDX file {what}: header says shape {tuple(shape)} of {dtype.name} "
            f"({expected} bytes in all) but the file holds {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip if the name ends in ``.gz``), atomically.

    Used by tests and scripts to make small files in the standard format.
    """
    p = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DataError(f"write_idx: dtype {arr.dtype} has no IDX type code")
    code = _CODES[native]
    payload = struct.pack(">HBB", 0, code, arr.ndim)
    payload += struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += arr.astype(IDX_TYPES[code], copy=False).tobytes()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if p.suffix == ".gz":
                with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                    gz.write(payload)
            else:
                fh.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
