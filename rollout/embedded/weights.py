"""Weights on the wire: ``.npz`` bytes (``np.savez``), read with every size checked first.

An upload is untrusted: a zip member can inflate a thousand times (a 2 MB
upload became 6.4 GB, issue 12.13). So the member names, the sizes the zip
directory declares and each ``.npy`` header's shape and dtype are checked
against the served policy before a byte of array data is inflated, and no
more than the declared size is ever read.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

NPY_HEADER_MAX = 65536
"""Room for an ``.npy`` header (numpy pads them to 64 bytes; 64 KiB is very generous)."""


def weights_to_npz(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialise weight arrays to ``.npz`` bytes (the update wire format)."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in weights.items()}
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_size_limit(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The most bytes an upload of these float arrays can take (uncompressed float64)."""
    return sum(int(np.prod(s)) * 8 + NPY_HEADER_MAX + 1024 for s in shapes.values())


def read_weights_npz(data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Exactly the arrays in ``shapes``, as float64; ``ValueError`` naming what is wrong."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError("not an .npz file (send np.savez output)") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        wanted = {f"{name}.npy" for name in shapes}
        if set(members) != wanted:
            got = sorted(m.removesuffix(".npy") for m in members)
            raise ValueError(f"expected exactly the arrays {sorted(shapes)}, got {got}")
        try:
            return {
                name: _read_member(archive, members[f"{name}.npy"], name, shape)
                for name, shape in shapes.items()
            }
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise ValueError(f"corrupt .npz: {e}") from None


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    count = int(np.prod(shape))
    if info.file_size > count * 8 + NPY_HEADER_MAX:
        raise ValueError(f"weight {name!r} declares {info.file_size} bytes; shape {shape} "
                         "needs far fewer")  # fmt: skip
    with archive.open(info) as fh:  # reads at most file_size bytes, CRC-checked
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            got, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            got, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"weight {name!r}: unsupported .npy version {version}")
        if tuple(got) != tuple(shape):
            raise ValueError(f"weight {name!r} has shape {tuple(got)}, expected {tuple(shape)}")
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(f"weight {name!r} has dtype {dtype}, expected float32 or float64")
        raw = fh.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"weight {name!r} is truncated")
    flat = np.frombuffer(raw, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").astype(np.float64)
