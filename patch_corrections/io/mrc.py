"""MRC volumes: block reads, whole writes and slab-by-slab writes, with their geometry.

MRC stores data in C order with ``x`` fastest, so ``mrcfile`` already gives ``(z, y, x)``
and no array is transposed here. The header's voxel size and origin are ``x, y, z``
records and are reversed to and from ``(z, y, x)`` tuples. The origin is read and written
as the physical position (Å) of the first voxel, the MRC2014 meaning used by ChimeraX and
mrcfile; ``nxstart`` and friends are left at 0 so no reader adds a second offset.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError, PatchCorrectionsWarning
from .geometry import READ_ERRORS, Geometry, VolumeInfo, as_3d, reason

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
    context manager, it closes on success and only releases the file on error.

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
        self._mrc = mrcfile.new_mmap(self.path, shape=self.shape, mrc_mode=mode, overwrite=True)
        self._closed = False
        self._stored = self._mrc.data.dtype  # in the file's byte order
        self._offset = int(self._mrc.data.offset)
        self._handle = None
        try:
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
        _write_at(self._handle, self._offset + z0 * ny * nx * stored.itemsize, stored)
        self._count += stored.size
        self._total += float(stored.sum(dtype=np.float64))
        for section in stored:  # float64 one section at a time, not a copy of the slab
            values = section.astype(np.float64).ravel()
            self._squares += float(np.dot(values, values))
        self._low = min(self._low, float(stored.min()))
        self._high = max(self._high, float(stored.max()))

    @property
    def mean(self) -> float:
        """Mean of every value written so far, as stored (0 before the first slab)."""
        return self._total / self._count if self._count else 0.0

    def close(self) -> None:
        """Write geometry and the slabs' statistics into the header and close the file."""
        if self._closed:
            return
        self._closed = True
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
