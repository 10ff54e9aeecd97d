"""MRC volumes written whole or slab by slab, with their geometry.

Arrays are ``(z, y, x)``, as MRC stores them (``x`` fastest); the header's voxel size and
origin records are ``x, y, z``. The origin is written as the physical position (Å) of the
first voxel, the MRC2014 meaning used by ChimeraX and mrcfile; ``nxstart`` and friends stay
at 0 so no reader adds a second offset.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .geometry import Geometry
from .staging import naming_errors


def mrc_dtype(dtype: npt.DTypeLike, high: float = 0) -> np.dtype:
    """The dtype MRC stores ``dtype`` as, losslessly where it can.

    MRC has int8, int16, uint16, float16 and float32 modes. ``high`` is the data's maximum,
    which decides whether uint8 fits the int8 mode.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.int8)
    if dtype.kind == "f":
        return np.dtype(np.float16 if dtype == np.float16 else np.float32)
    if dtype in (np.int8, np.int16, np.uint16):
        return dtype
    if dtype == np.uint8:
        return np.dtype(np.int8 if high <= 127 else np.uint16)
    return np.dtype(np.float32)  # wider integers: MRC has no lossless mode for them


def write_mrc(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    """Write ``data`` ``(z, y, x)`` to a new MRC file at ``path``, replacing any file there."""
    import mrcfile

    high = float(data.max()) if data.size and data.dtype.kind in "ui" else 0
    data = np.ascontiguousarray(data, dtype=mrc_dtype(data.dtype, high))
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        set_mrc_geometry(mrc, geometry)


def set_mrc_geometry(mrc: Any, geometry: Geometry) -> None:
    """Write voxel size and origin (position of the first voxel) into an open MRC file."""
    vz, vy, vx = geometry.voxel_size
    mrc.voxel_size = (vx, vy, vz)
    oz, oy, ox = geometry.origin
    mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz


def _reserve(path: Path) -> None:
    """Give the (sparse) file at ``path`` its blocks on disk now: writing through a memory
    map into a full disk kills the process (SIGBUS) instead of raising an error. A full disk
    becomes an ``InputError``; file systems that cannot reserve are left as they are."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InputError(
                    f"{path.parent}: no space left on the device for {size / 2**20:.0f} MiB "
                    "of output"
                ) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _write_at(handle: Any, offset: int, values: np.ndarray) -> None:
    """Write the bytes of contiguous ``values`` at ``offset`` of an open file."""
    data = memoryview(values).cast("B")
    if not hasattr(os, "pwrite"):  # Windows: one writer per file, so seek and write
        handle.seek(offset)
        handle.write(data)
        return
    while data:
        written = os.pwrite(handle.fileno(), data, offset)
        data, offset = data[written:], offset + written


def _extremes(values: np.ndarray) -> tuple[float, float]:
    """The least and greatest of ``values`` (not empty). Native float16 goes through an
    int16 key that orders as the values do (NaN aside): NumPy's float16 minimum and maximum
    are seven times slower, and this runs for every slab ``segment`` writes."""
    if values.dtype != np.float16:
        return float(values.min()), float(values.max())
    bits = values.view(np.int16)
    key = bits ^ ((bits >> 15) & np.int16(0x7FFF))  # negatives' magnitude bits reversed
    ends = np.array([key.min(), key.max()], np.int16)
    low, high = (ends ^ ((ends >> 15) & np.int16(0x7FFF))).view(np.float16)
    return float(low), float(high)


class MrcSlabWriter:
    """A new MRC file written slab by slab along z, for volumes too large to hold twice.

    Each slab goes to disk with positioned writes (``pwrite``), not through a memory map:
    pages written through a map stay in the process's resident memory (the whole output,
    1.1 GiB for a 928 × 928 × 464 scoremap and segmentation), pages written to the file only
    in the system's page cache. The header's minimum,
    maximum, mean and RMS deviation are accumulated from the slabs in float64, so closing
    never makes a float32 copy of the whole volume (as mrcfile's own statistics would).
    ``path`` is replaced if it exists: write to a temporary name and rename it into place.
    Sections never written hold whatever the file system gives (usually zeros). Used as a
    context manager, it closes on success and only releases the file on error. An
    ``OSError`` that names no file (a full disk, a file-size limit) names ``path``.

    Parameters
    ----------
    path
        The file to create.
    shape
        ``(z, y, x)`` of the whole volume.
    dtype
        What is stored: one of MRC's int8, int16, uint16, float16 or float32 modes.
    geometry
        Voxel size and origin, written into the header by ``close``.
    """

    def __init__(
        self, path: Path, shape: tuple[int, int, int], dtype: npt.DTypeLike, geometry: Geometry
    ):
        import mrcfile
        import mrcfile.utils

        self.dtype = np.dtype(dtype)
        if mrc_dtype(self.dtype) != self.dtype:
            raise ValueError(
                f"MRC has no mode for {self.dtype}; use int8, int16, uint16, float16 or float32"
            )
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.geometry = geometry
        self._count, self._total, self._squares = 0, 0.0, 0.0
        self._low, self._high = float("inf"), float("-inf")
        mode = mrcfile.utils.mode_from_dtype(self.dtype)
        with naming_errors(self.path):
            self._mrc = mrcfile.new_mmap(
                self.path, shape=self.shape, mrc_mode=mode, overwrite=True
            )
        self._closed = False
        self._stored = self._mrc.data.dtype  # in the file's byte order
        self._offset = int(self._mrc.data.offset)
        self._handle = None
        try:
            with naming_errors(self.path):
                _reserve(self.path)
                self._handle = open(self.path, "r+b", buffering=0)  # closed by close()
        except BaseException:
            self._mrc.close()
            raise

    def write(self, z0: int, slab: np.ndarray) -> None:
        """Store ``slab`` ``(n, y, x)`` as sections ``z0 .. z0 + n``, cast to ``dtype``.

        Raises
        ------
        ValueError
            If the slab's ``(y, x)`` differs from the volume's or it reaches past the last
            section.
        """
        stored = np.ascontiguousarray(np.asarray(slab).astype(self._stored, copy=False))
        nz, ny, nx = self.shape
        if stored.ndim != 3 or stored.shape[1:] != (ny, nx) or not 0 <= z0 <= nz - len(stored):
            raise ValueError(
                f"{self.path}: a slab of shape {stored.shape} does not fit at z {z0} "
                f"in a volume of shape {self.shape}"
            )
        if not stored.size:
            return
        with naming_errors(self.path):
            _write_at(self._handle, self._offset + z0 * ny * nx * stored.itemsize, stored)
        self._count += stored.size
        self._total += float(stored.sum(dtype=np.float64))
        for section in stored:  # float64 one section at a time, not a copy of the slab
            values = section.astype(np.float64).ravel()
            self._squares += float(np.dot(values, values))
        low, high = _extremes(stored)
        self._low, self._high = min(self._low, low), max(self._high, high)

    @property
    def mean(self) -> float:
        """Mean of every value written so far, as stored (0 before the first slab)."""
        return self._total / self._count if self._count else 0.0

    def close(self) -> None:
        """Write geometry and the slabs' statistics into the header and close the file."""
        if self._closed:
            return
        self._closed = True
        with naming_errors(self.path):
            try:
                self._handle.close()
                set_mrc_geometry(self._mrc, self.geometry)
                header = self._mrc.header
                header.dmin, header.dmax, header.dmean = self._low, self._high, self.mean
                variance = max(self._squares / max(self._count, 1) - self.mean**2, 0.0)
                header.rms = math.sqrt(variance)
            finally:
                self._mrc.close()  # released even when the header cannot be finished

    def __enter__(self) -> MrcSlabWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        elif not self._closed:
            # A failed run's file is discarded: release it without finishing its header.
            self._handle.close()
            self._mrc.close()
            self._closed = True
