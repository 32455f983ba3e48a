"""Reader for IDX files, the format of MNIST and Fashion-MNIST (plain or gzip)."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from modelzip.errors import InputError

# IDX header byte 3 -> element type (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into an array of its declared shape."""
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise corrupt_idx(path, f"magic bytes {bytes(raw[:4]).hex()}",
                           "00 00 <type code> <dimensions>, e.g. 00000803 for images")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt_idx(path, f"{len(raw)} bytes", f"a header of {header} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    size = header + math.prod(shape) * dtype.itemsize
    if len(raw) != size:
        raise corrupt_idx(path, f"{len(raw)} bytes", f"{size} bytes for shape {shape}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _read_maybe_gzip(path: Path) -> bytearray:
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise corrupt_idx(path, f"a damaged gzip stream ({exc})", "a complete gzip file") from exc
    return bytearray(data)  # writable, so torch.from_numpy does not warn


def corrupt_idx(path: Path, got: str, expected: str) -> InputError:
    return InputError("not a valid IDX (MNIST-format) file", where=str(path), got=got,
                      expected=expected, fix="delete the file and install or download the dataset again")


