"""MRC volumes read block by block, with their geometry (writing: :mod:`.mrc_writer`).

MRC stores data in C order with ``x`` fastest, so ``mrcfile`` already gives ``(z, y, x)``
and no array is transposed here. The header's voxel size and origin are ``x, y, z``
records and are reversed to and from ``(z, y, x)`` tuples. The origin is read and written
as the physical position (Å) of the first voxel, the MRC2014 meaning used by ChimeraX and
mrcfile; ``nxstart`` and friends are left at 0 so no reader adds a second offset.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PatchCorrectionsWarning
from .geometry import Geometry
from .readers import READ_ERRORS, VolumeInfo, as_3d, reason

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st")


class MrcReader:
    """Reads blocks of an MRC file with positioned reads.

    Only the rows a block needs are read, one contiguous run per z slice, into a reused
    buffer: unlike slicing a memory map, this never maps whole pages of rows that the block
    does not use, so resident memory stays at the size of the block. Reads are positioned
    (``pread``), so several threads may read blocks at once.

    Headers with quirks that other software writes (no map ID, a zero or unknown machine
    stamp) are read, as MemBrain-seg reads them, with one PatchCorrectionsWarning, when the
    header still describes data the file holds. Blocks are returned in native byte order.
    """

    def __init__(self, path: Path):
        size = path.stat().st_size
        header, quirks = _read_header(path, size)
        try:
            shape, dtype, self._offset = _layout(path, header, size)
        except InputError as exc:
            if bytes(header.map)[:3] == _MAP_ID[:3]:
                raise
            # Without a map ID, a header that describes no readable volume is most likely
            # not an MRC file at all.
            problem = str(exc).removeprefix(f"{path}: ")
            raise InputError(
                f"{path}: not a readable MRC file ({'; '.join([*quirks, problem])})"
            ) from None
        if quirks:
            warnings.warn(
                f"{path}: MRC header quirks ({'; '.join(quirks)}); "
                f"read as {_byte_order(header)} data",
                PatchCorrectionsWarning,
                stacklevel=2,
            )
        vz, vy, vx = _voxel_size(header)
        geometry = None
        if min(vz, vy, vx) > 0:
            org = header.origin
            origin = (float(org.z), float(org.y), float(org.x))
            if origin == (0.0, 0.0, 0.0):
                # Older files place themselves by start indices instead (as ChimeraX reads).
                starts = (int(header.nzstart), int(header.nystart), int(header.nxstart))
                origin = tuple(i * v for i, v in zip(starts, (vz, vy, vx)))  # type: ignore[assignment]
            geometry = Geometry((vz, vy, vx), origin)
        self._stored = dtype
        self.info = VolumeInfo(path, shape, dtype.newbyteorder("="), geometry)
        self._file = open(path, "rb", buffering=0)
        self._lock = threading.Lock()

    def read_block(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        """Return the in-bounds block ``[start, stop)``, ``(z, y, x)``, as a new array."""
        (z0, y0, x0), (z1, y1, x1) = start, stop
        _, ny, nx = self.info.shape
        item = self.info.dtype.itemsize
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        # One read per slice, from the block's first needed voxel to its last.
        run = ((y1 - y0 - 1) * nx + (x1 - x0)) * item
        buffer = np.empty(((y1 - y0) * nx), self._stored)
        view = memoryview(buffer.view(np.uint8))[:run]
        for k, z in enumerate(range(z0, z1)):
            position = self._offset + ((z * ny + y0) * nx + x0) * item
            got = self._read_at(view, position)
            if got != run:
                raise InputError(f"{self.info.path}: short read at byte {position}")
            # Rows of the block start nx voxels apart in the run.
            out[k] = np.lib.stride_tricks.as_strided(
                buffer, shape=(y1 - y0, x1 - x0), strides=(nx * item, item), writeable=False
            )
        return out

    def _read_at(self, view: memoryview, position: int) -> int:
        """Fill ``view`` from byte ``position``; the number of bytes read."""
        if hasattr(os, "preadv"):  # no shared file position: safe across threads
            return os.preadv(self._file.fileno(), [view], position)
        with self._lock:  # Windows
            self._file.seek(position)
            return self._file.readinto(view)

    def close(self) -> None:
        self._file.close()


_MAP_ID = b"MAP "


def _read_header(path: Path, size: int) -> tuple[Any, list[str]]:
    """The header of an MRC file of ``size`` bytes, read permissively, and mrcfile's
    complaints about it, one line each.

    mrcfile takes a file with no known machine stamp as little-endian (what essentially all
    software writes) unless its mode only makes sense the other way round; when its
    dimensions only make sense the other way round too (mode 0 reads the same both ways),
    the byte order is turned here.
    """
    import mrcfile.mrcfile
    import mrcfile.utils

    try:
        with open(path, "rb") as stream:
            start = stream.read(212)
    except OSError as exc:
        raise InputError(f"{path}: not a readable MRC file ({reason(exc)})") from None
    if start[208:211] != _MAP_ID[:3] and start[:2] in (b"\x1f\x8b", b"BZ"):
        kind = "gzip" if start[:2] == b"\x1f\x8b" else "bzip2"
        raise InputError(f"{path}: a {kind}-compressed MRC file; decompress it first")
    _check_extended_size(path, start, size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mrcfile.MrcFile(path, header_only=True, permissive=True)
        except READ_ERRORS as exc:
            raise InputError(f"{path}: not a readable MRC file ({reason(exc)})") from None
        header = mrc.header.copy()
        mrc.close()
    # mrcfile reports a header's quirks as RuntimeWarnings; anything else it raises (e.g.
    # NumPy 2.5 deprecating its own ``header.dtype = ...``) is not about the file.
    complaints = (w.message for w in caught if issubclass(w.category, RuntimeWarning))
    quirks = list(dict.fromkeys(reason(m) for m in complaints))  # once each, in order
    try:
        mrcfile.utils.byte_order_from_machine_stamp(header.machst)
    except ValueError:
        turned = header.view(header.dtype.newbyteorder())
        if not _plausible(header, size) and _plausible(turned, size):
            header = turned
    return header, quirks


def _check_extended_size(path: Path, start: bytes, size: int) -> None:
    """InputError when the header's extended-header size (``nsymbt``) fits the file in
    neither byte order: mrcfile would allocate and read that many bytes (gigabytes for a
    file that is no MRC) before it gives up."""
    if len(start) < 96 or size < 1024:
        return  # too short for a header: mrcfile says so
    sizes = [int.from_bytes(start[92:96], order, signed=True) for order in ("little", "big")]
    if not any(0 <= extended <= size - 1024 for extended in sizes):
        raise InputError(
            f"{path}: not a readable MRC file (its header's extended header of "
            f"{sizes[0]} bytes does not fit in the file's {size})"
        )


def _byte_order(header: Any) -> str:
    order = header.nx.dtype.byteorder
    big = order == ">" or (order == "=" and sys.byteorder == "big")
    return "big-endian" if big else "little-endian"


def _plausible(header: Any, size: int) -> bool:
    """Whether ``header`` describes a known mode and a volume that ``size`` bytes hold."""
    try:
        _layout(Path(), header, size)
    except InputError:
        return False
    return True


def _layout(path: Path, header: Any, size: int) -> tuple[tuple[int, int, int], np.dtype, int]:
    """Shape ``(z, y, x)``, stored dtype and data offset; InputError unless ``size`` holds it."""
    import mrcfile.utils

    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise InputError(f"{path}: unsupported MRC data mode ({reason(exc)})") from None
    axes = (int(header.mapc), int(header.mapr), int(header.maps))
    if axes not in ((1, 2, 3), (0, 0, 0)):
        raise InputError(
            f"{path}: MRC axis order mapc/mapr/maps={axes} is not supported; "
            "resave the file with columns=x, rows=y, sections=z (e.g. IMOD's newstack)"
        )
    try:
        dims = mrcfile.utils.data_shape_from_header(header)
    except ArithmeticError:
        raise InputError(
            f"{path}: the MRC header marks a volume stack (ispg {int(header.ispg)}) but has mz 0"
        ) from None
    shape = as_3d(path, tuple(int(n) for n in dims))
    extended = int(header.nsymbt)
    if extended < 0:
        raise InputError(f"{path}: MRC header has a negative extended header size")
    offset = 1024 + extended
    needed = offset + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise InputError(f"{path}: MRC file is truncated ({size} bytes, header says {needed})")
    return shape, dtype, offset


def _voxel_size(header: Any) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` in Å from cell size and sampling; 0 where either is unset."""
    sizes = []
    for length, samples in (
        (header.cella.z, header.mz),
        (header.cella.y, header.my),
        (header.cella.x, header.mx),
    ):
        # In float32, as mrcfile gives it.
        value = float(np.float32(float(length) / int(samples))) if int(samples) > 0 else 0.0
        sizes.append(value if math.isfinite(value) else 0.0)
    return sizes[0], sizes[1], sizes[2]


def read_mrc_info(path: Path) -> VolumeInfo:
    """Read only the header of an MRC file: shape ``(z, y, x)``, dtype and geometry."""
    reader = MrcReader(path)
    reader.close()
    return reader.info
