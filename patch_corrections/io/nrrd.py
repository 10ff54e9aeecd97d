"""NRRD volumes (``.nrrd``, detached ``.nhdr``) with their geometry, through pynrrd.

pynrrd is always called with ``index_order="C"`` (its default, Fortran order, silently
transposes cubic patches), so arrays are ``(z, y, x)`` both ways. The header (``sizes``,
``space directions``, ``space origin``, ``spacings``) is always in file order, ``x`` first,
and is reversed to and from ``(z, y, x)`` here. Spacing is in Å. An NRRD file is read
whole when opened; only MRC is read block by block.

A detached header's data file must lie in the header's folder (or below it), links
resolved: a header is refused, before its data is opened, if it names a file elsewhere, or
several data files (NRRD's ``LIST`` and ``%d`` forms, which pynrrd does not read either).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import InputError
from .geometry import Geometry
from .readers import (
    PATH_LIMIT,
    READ_ERRORS,
    ArrayReader,
    VolumeInfo,
    as_3d,
    basic_dtype,
    decompressed_size,
    quoted,
    reason,
    warn_unless_axis_aligned,
)

NRRD_SUFFIXES = (".nrrd", ".nhdr")

_TYPES = {
    "signed char": "i1",
    "int8": "i1",
    "int8_t": "i1",
    "uchar": "u1",
    "unsigned char": "u1",
    "uint8": "u1",
    "uint8_t": "u1",
    "short": "i2",
    "short int": "i2",
    "signed short": "i2",
    "signed short int": "i2",
    "int16": "i2",
    "int16_t": "i2",
    "ushort": "u2",
    "unsigned short": "u2",
    "unsigned short int": "u2",
    "uint16": "u2",
    "uint16_t": "u2",
    "int": "i4",
    "signed int": "i4",
    "int32": "i4",
    "int32_t": "i4",
    "uint": "u4",
    "unsigned int": "u4",
    "uint32": "u4",
    "uint32_t": "u4",
    "longlong": "i8",
    "long long": "i8",
    "long long int": "i8",
    "signed long long": "i8",
    "signed long long int": "i8",
    "int64": "i8",
    "int64_t": "i8",
    "ulonglong": "u8",
    "unsigned long long": "u8",
    "unsigned long long int": "u8",
    "uint64": "u8",
    "uint64_t": "u8",
    "float": "f4",
    "double": "f8",
}
"""NRRD ``type`` names (lower case) and the numpy dtype each one reads as."""

_COMPRESSIONS = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
"""NRRD ``encoding`` names (lower case) of compressed data, and their compression."""

_DATA_FILE_FIELDS = ("datafile", "data file")
"""The two spellings of a detached header's data file field; pynrrd reads the first."""


def read_nrrd_info(path: Path) -> VolumeInfo:
    """Read only the header of an NRRD file: shape ``(z, y, x)``, dtype and geometry.

    A detached header's data file is not opened, but one outside the header's folder, or
    one that is no regular file, is refused.
    """
    with _opened(path) as stream:
        header = _header(path, stream)
    _data_file(path, header)
    return _info(path, header)


def open_nrrd(path: Path) -> ArrayReader:
    """Read an NRRD file whole and return a block reader over its ``(z, y, x)`` array.

    Compressed data (gzip, bzip2) is first decompressed once in chunks, to verify it and to
    check its size against the header before pynrrd holds it in memory.

    Raises
    ------
    InputError
        If the file is unreadable, damaged or holds other than the data its header declares.
    """
    import nrrd

    try:
        with _opened(path) as stream:
            header = _header(path, stream)
            where = _data_file(path, header)
            info = _info(path, header)
            # pynrrd is handed the data file opened here, never a name to open itself.
            attached = {k: v for k, v in header.items() if k not in _DATA_FILE_FIELDS}
            with nullcontext(stream) if where is None else open(where, "rb") as source:
                _check_data(path, where or path, attached, source, info)
                data = nrrd.read_data(attached, source, None, index_order="C")
    except (*READ_ERRORS, nrrd.NRRDError) as exc:
        raise InputError(f"{path}: not a readable NRRD file ({reason(exc)})") from None
    # Native byte order: big-endian files read as '>' arrays, which torch refuses.
    return ArrayReader(info, data.reshape(info.shape).astype(info.dtype, copy=False))


def write_nrrd(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    """Write ``data`` ``(z, y, x)`` to an NRRD file at ``path``, replacing any file there.

    Masks (bool and one-byte integers) are gzip-compressed; other data is stored raw.
    """
    import nrrd

    vz, vy, vx = geometry.voxel_size
    oz, oy, ox = geometry.origin
    header = {
        # MITK and ITK read this as an identity direction; spacing is in Å.
        "space": "left-posterior-superior",
        "space directions": np.diag([vx, vy, vz]),
        "space origin": np.array([ox, oy, oz]),
        "kinds": ["domain", "domain", "domain"],
    }
    # Masks compress a hundredfold; noisy images do not, so they are stored raw for speed.
    is_mask = data.dtype == bool or (data.dtype.kind in "ui" and data.dtype.itemsize == 1)
    header["encoding"] = "gzip" if is_mask else "raw"
    data = np.ascontiguousarray(data, dtype=basic_dtype(data.dtype))
    nrrd.write(str(path), data, header, index_order="C", compression_level=1)


def _opened(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: not a readable NRRD file ({reason(exc)})") from None


def _header(path: Path, stream: IO[bytes]) -> dict:
    """The parsed header, read from ``stream``'s start; ``stream`` is left after it."""
    import nrrd

    try:
        header = nrrd.read_header(_header_lines(path, stream))
        if "sizes" not in header:
            raise nrrd.NRRDError("header has no sizes field")
        return header
    except (*READ_ERRORS, nrrd.NRRDError) as exc:
        text = reason(exc)
        if text.startswith("Invalid NRRD magic line"):  # pynrrd quotes the file's first line
            text = "it does not start with an NRRD magic line"
        raise InputError(f"{path}: not a readable NRRD file ({text})") from None


def _header_lines(path: Path, stream: IO[bytes]) -> Iterator[bytes]:
    """The header's lines, up to the blank line that ends it, for pynrrd to parse.

    A data file field that names several files is refused here: in the ``LIST`` form the
    names follow it, one a line, and pynrrd would read them as fields.
    """
    while line := stream.readline():
        field, colon, value = line.decode("ascii", "ignore").partition(":")
        if colon and field.strip() in _DATA_FILE_FIELDS:
            value = value.removeprefix("=").strip()
            words = value.split()
            if words[:1] == ["LIST"] or (len(words) >= 4 and "%" in words[0]):
                named = quoted(value, PATH_LIMIT)
                raise InputError(
                    f"{path}: its data file {named} names several files (NRRD's LIST or %d "
                    "form), which is not supported; join them into one data file beside its "
                    "header"
                )
        yield line
        if not line.strip():
            return


def _data_file(path: Path, header: dict) -> Path | None:
    """The detached data file of the header at ``path``, checked but not opened; None when
    the data is attached.

    Raises
    ------
    InputError
        If the data file lies outside the header's folder, after links are resolved, or is
        no regular file (pynrrd would read a device or pipe forever).
    """
    written = header.get("datafile", header.get("data file"))
    if written is None:
        return None
    written = str(written)
    named = quoted(written, PATH_LIMIT)
    where = path.parent / written  # an absolute name stays as it is, as pynrrd joins it
    try:
        folder = Path(os.path.realpath(path.parent))
        target = Path(os.path.realpath(where))
    except (OSError, ValueError):  # a NUL in the name, a loop of links
        raise InputError(f"{path}: its data file {named} is not a file") from None
    if target != folder and folder not in target.parents:
        plain = Path(os.path.normpath(path.parent.absolute() / written))
        if plain.is_relative_to(os.path.normpath(path.parent.absolute())):
            where_to = "leads out of the header's folder through a symbolic link"
        else:
            where_to = "lies outside the header's folder"
        raise InputError(
            f"{path}: its data file {named} {where_to}; detached data must sit beside its header"
        )
    if not where.is_file():
        raise InputError(f"{path}: its data file {named} is not a file")
    return where


def _check_data(
    path: Path, where: Path, header: dict, source: IO[bytes], info: VolumeInfo
) -> None:
    """Check the data in ``source`` (at its start, in the file ``where``) before pynrrd
    reads it whole into memory.

    It must hold the lines the header skips (pynrrd would try to skip them all, one by one).
    Compressed data is verified to its end and must decompress to the size the header
    declares. Raw data needs no more: pynrrd reads no more than the file holds.
    """
    lines = int(header.get("lineskip", header.get("line skip", 0)))
    encoding = _COMPRESSIONS.get(str(header.get("encoding", "")).lower())
    start = source.tell()
    for _ in range(lines):  # as pynrrd skips them, before decompressing
        if not source.readline():
            raise InputError(f"{path}: the header skips {lines} lines, more than there are")
    size = None if encoding is None else decompressed_size(where, source, encoding)
    source.seek(start)
    if size is None:
        return
    skip = int(header.get("byteskip", header.get("byte skip", 0)))
    held = size - max(skip, 0)
    needed = math.prod(info.shape) * info.dtype.itemsize
    # A skip of -1 takes the data from the end; otherwise it must fill the rest exactly.
    if held < needed or (skip >= 0 and held > needed):
        raise InputError(
            f"{where}: its {encoding} data holds {held} bytes, the header says {needed}"
        )


def _info(path: Path, header: dict) -> VolumeInfo:
    sizes = tuple(int(s) for s in header["sizes"])[::-1]  # file order is x first
    kind = _TYPES.get(str(header.get("type", "")).lower())
    if kind is None:
        raise InputError(f"{path}: unsupported NRRD data type {quoted(header.get('type'))}")
    return VolumeInfo(path, as_3d(path, sizes), np.dtype(kind), _geometry(path, header))


def _geometry(path: Path, header: dict) -> Geometry | None:
    """Spacing and origin from the header, reversed to ``(z, y, x)``; None without spacing.

    Directions that are not axis-aligned keep only their lengths, with a warning.
    """
    directions = header.get("space directions")
    if directions is not None:
        rows = [
            np.asarray(r, float) for r in directions if r is not None and np.all(np.isfinite(r))
        ]
        if len(rows) != 3:
            return None
        spacing = [float(np.linalg.norm(r)) for r in rows]  # file order: x, y, z
        warn_unless_axis_aligned(path, rows, "NRRD space directions")
    elif "spacings" in header:
        values = [float(s) for s in header["spacings"] if np.isfinite(s)]
        if len(values) != 3:
            return None
        spacing = values
    else:
        return None
    origin = header.get("space origin")
    origin_xyz = [0.0, 0.0, 0.0] if origin is None else [float(o) for o in origin][:3]
    if len(origin_xyz) != 3:
        return None
    return Geometry(
        (spacing[2], spacing[1], spacing[0]), (origin_xyz[2], origin_xyz[1], origin_xyz[0])
    )
