"""Reading and writing volumes (MRC, NRRD, NIfTI) with their geometry.

This module owns every axis conversion between files and memory. In memory, every array
is ``(z, y, x)`` and every per-axis tuple (voxel size, origin, offsets) is ``(z, y, x)``
too. On disk:

- MRC stores data in C order with ``x`` fastest, so ``mrcfile`` already gives ``(z, y, x)``;
  the header's voxel size and origin are ``x, y, z`` records. The origin is read and written
  as the physical position (Å) of the first voxel, the MRC2014 meaning used by ChimeraX and
  mrcfile; ``nxstart`` and friends are left at 0 so no reader adds a second offset.
- NRRD is read and written with ``index_order="C"`` so the array is ``(z, y, x)``; its
  header (``sizes``, ``space directions``, ``space origin``) is always in file order, ``x``
  first. Spacing is in Å.
- NIfTI arrays are indexed ``(i, j, k) = (x, y, z)`` by nibabel (the MemBrain-seg
  convention), so they are transposed here; the affine carries spacing and origin.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputError
from .files import atomic_target

MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
WRITE_FORMATS = {"mrc": ".mrc", "nrrd": ".nrrd", "nii.gz": ".nii.gz"}
"""Output format names accepted on the command line, with the file suffix each one writes."""

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels sit in space.

    Attributes
    ----------
    voxel_size
        Voxel edge lengths in Å, ``(z, y, x)``.
    origin
        Physical position in Å of voxel ``(0, 0, 0)``, ``(z, y, x)``.
    """

    voxel_size: Triple
    origin: Triple = (0.0, 0.0, 0.0)

    def shifted(self, offset: tuple[int, int, int]) -> Geometry:
        """Geometry of a sub-volume whose first voxel is at index ``offset`` ``(z, y, x)``."""
        origin = tuple(o + i * v for o, i, v in zip(self.origin, offset, self.voxel_size))
        return Geometry(self.voxel_size, origin)  # type: ignore[arg-type]

    def agrees_with(self, other: Geometry, tolerance: float = 1e-3) -> bool:
        """Whether spacing and origin match to ``tolerance`` Å."""
        return bool(
            np.allclose(self.voxel_size, other.voxel_size, rtol=1e-4, atol=tolerance)
            and np.allclose(self.origin, other.origin, rtol=1e-5, atol=tolerance)
        )


@dataclass(frozen=True)
class VolumeInfo:
    """What a volume file's header says.

    ``geometry`` is ``None`` when the file carries no spacing (an MRC voxel size of 0, an
    NRRD without ``space directions`` or ``spacings``).
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    geometry: Geometry | None


class VolumeReader(Protocol):
    """A volume opened for reading blocks of it, without loading it whole."""

    info: VolumeInfo

    def read_block(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        """Return the in-bounds block ``[start, stop)``, ``(z, y, x)``, as a new array."""
        ...

    def close(self) -> None: ...


def volume_format(path: Path) -> str:
    """Return ``"mrc"``, ``"nrrd"`` or ``"nifti"`` from the file name, else raise InputError."""
    name = path.name.lower()
    for fmt, suffixes in (
        ("mrc", MRC_SUFFIXES),
        ("nrrd", NRRD_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    supported = " ".join(MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES)
    raise InputError(f"{path}: unsupported file type; expected one of {supported}")


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` is a file with a suffix this module reads."""
    name = path.name.lower()
    return path.is_file() and name.endswith(MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES)


def volume_suffix(path: Path) -> str:
    """The volume suffix of a file name, as written there (``a.NII.gz`` -> ``.NII.gz``)."""
    name = path.name
    for suffix in MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[-len(suffix) :]
    return path.suffix


def volume_stem(path: Path) -> str:
    """File name without its volume suffix (``a.nii.gz`` -> ``a``)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


# --- MRC -------------------------------------------------------------------------------


class _MrcReader:
    """Reads blocks of an MRC file with positioned reads.

    Only the rows a block needs are read, one contiguous run per z slice, into a reused
    buffer: unlike slicing a memory map, this never maps whole pages of rows that the block
    does not use, so resident memory stays at the size of the block.
    """

    def __init__(self, path: Path):
        import mrcfile
        import mrcfile.utils

        try:
            with mrcfile.open(path, header_only=True, permissive=False) as mrc:
                header = mrc.header.copy()
                extended = int(mrc.header.nsymbt)
                voxel = mrc.voxel_size
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable MRC file ({exc})") from None
        axes = (int(header.mapc), int(header.mapr), int(header.maps))
        if axes not in ((1, 2, 3), (0, 0, 0)):
            raise InputError(
                f"{path}: MRC axis order mapc/mapr/maps={axes} is not supported; "
                "resave the file with columns=x, rows=y, sections=z (e.g. IMOD's newstack)"
            )
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
        except ValueError as exc:
            raise InputError(f"{path}: unsupported MRC data mode ({exc})") from None
        shape = _as_3d(path, tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header)))
        nz, ny, nx = shape
        self._offset = 1024 + extended
        needed = self._offset + nz * ny * nx * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise InputError(f"{path}: MRC file is truncated ({size} bytes, header says {needed})")
        vz, vy, vx = float(voxel.z), float(voxel.y), float(voxel.x)
        geometry = None
        if min(vz, vy, vx) > 0:
            org = header.origin
            origin = (float(org.z), float(org.y), float(org.x))
            if origin == (0.0, 0.0, 0.0):
                # Older files place themselves by start indices instead (as ChimeraX reads).
                starts = (int(header.nzstart), int(header.nystart), int(header.nxstart))
                origin = tuple(i * v for i, v in zip(starts, (vz, vy, vx)))  # type: ignore[assignment]
            geometry = Geometry((vz, vy, vx), origin)
        self.info = VolumeInfo(path, shape, dtype, geometry)
        self._file = open(path, "rb", buffering=0)

    def read_block(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        _, ny, nx = self.info.shape
        item = self.info.dtype.itemsize
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.info.dtype)
        # One read per slice, from the block's first needed voxel to its last.
        run = ((y1 - y0 - 1) * nx + (x1 - x0)) * item
        buffer = np.empty(((y1 - y0) * nx), self.info.dtype)
        view = memoryview(buffer.view(np.uint8))[:run]
        for k, z in enumerate(range(z0, z1)):
            position = self._offset + ((z * ny + y0) * nx + x0) * item
            self._file.seek(position)
            got = self._file.readinto(view)
            if got != run:
                raise InputError(f"{self.info.path}: short read at byte {position}")
            # Rows of the block start nx voxels apart in the run.
            out[k] = np.lib.stride_tricks.as_strided(
                buffer, shape=(y1 - y0, x1 - x0), strides=(nx * item, item), writeable=False
            )
        return out

    def close(self) -> None:
        self._file.close()


# --- in-memory formats ------------------------------------------------------------------


class _ArrayReader:
    """A reader over an array already read (NRRD) or a lazy nibabel proxy (NIfTI)."""

    def __init__(self, info: VolumeInfo, data, transpose: bool):
        self.info = info
        self._data = data
        self._transpose = transpose

    def read_block(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        try:
            return self._read(start, stop)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            # nibabel reads lazily: a truncated or corrupt file shows up only now.
            raise InputError(f"{self.info.path}: cannot read its data ({exc})") from None

    def _read(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        if self._transpose:
            block = np.asarray(self._data[x0:x1, y0:y1, z0:z1, ...])
            block = block.reshape(x1 - x0, y1 - y0, z1 - z0)  # drop trailing singleton axes
            return np.ascontiguousarray(block.transpose())
        return np.array(self._data[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        self._data = None


def _as_3d(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Drop singleton axes beyond three (MITK and others save 4D with one channel)."""
    dims = list(shape)
    while len(dims) > 3 and 1 in dims:
        dims.remove(1)
    if len(dims) != 3:
        raise InputError(f"{path}: expected a 3D volume, found shape {tuple(shape)}")
    return (dims[0], dims[1], dims[2])


def _nrrd_geometry(header: dict) -> Geometry | None:
    directions = header.get("space directions")
    if directions is not None:
        rows = [
            np.asarray(r, float) for r in directions if r is not None and np.all(np.isfinite(r))
        ]
        if len(rows) != 3:
            return None
        spacing = [float(np.linalg.norm(r)) for r in rows]  # file order: x, y, z
    elif "spacings" in header:
        values = [float(s) for s in header["spacings"] if np.isfinite(s)]
        if len(values) != 3:
            return None
        spacing = values
    else:
        return None
    origin = header.get("space origin")
    origin_xyz = [0.0, 0.0, 0.0] if origin is None else [float(o) for o in origin][:3]
    return Geometry(
        (spacing[2], spacing[1], spacing[0]), (origin_xyz[2], origin_xyz[1], origin_xyz[0])
    )


def _nrrd_header(path: Path) -> dict:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        if "sizes" not in header:
            raise nrrd.NRRDError("header has no sizes field")
        return header
    except (
        nrrd.NRRDError,
        OSError,
        UnicodeDecodeError,
        ValueError,
        StopIteration,
        RuntimeError,
        KeyError,
    ) as exc:
        raise InputError(f"{path}: not a readable NRRD file ({exc})") from None


_NRRD_TYPES = {
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


def _nrrd_info(path: Path, header: dict) -> VolumeInfo:
    sizes = tuple(int(s) for s in header["sizes"])[::-1]  # file order is x first
    kind = _NRRD_TYPES.get(str(header.get("type", "")).lower())
    if kind is None:
        raise InputError(f"{path}: unsupported NRRD data type {header.get('type')!r}")
    return VolumeInfo(path, _as_3d(path, sizes), np.dtype(kind), _nrrd_geometry(header))


def _nifti_info(path: Path, image) -> VolumeInfo:
    shape_xyz = tuple(int(s) for s in image.shape)
    if len(shape_xyz) > 3 and all(s == 1 for s in shape_xyz[3:]):
        shape_xyz = shape_xyz[:3]
    if len(shape_xyz) != 3:
        raise InputError(f"{path}: expected a 3D volume, found shape {shape_xyz}")
    affine = np.asarray(image.affine, float)
    spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
    origin_xyz = affine[:3, 3]
    geometry = Geometry(
        (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])),
        (float(origin_xyz[2]), float(origin_xyz[1]), float(origin_xyz[0])),
    )
    x, y, z = shape_xyz
    return VolumeInfo(path, (z, y, x), np.dtype(image.get_data_dtype()), geometry)


def _load_nifti(path: Path):
    import nibabel

    try:
        return nibabel.load(str(path))
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from None


def read_info(path: Path) -> VolumeInfo:
    """Read only the header of a volume file: shape ``(z, y, x)``, dtype and geometry."""
    path = Path(path)
    _require_file(path)
    fmt = volume_format(path)
    if fmt == "mrc":
        reader = _MrcReader(path)
        reader.close()
        return reader.info
    if fmt == "nrrd":
        return _nrrd_info(path, _nrrd_header(path))
    return _nifti_info(path, _load_nifti(path))


def open_volume(path: Path) -> VolumeReader:
    """Open a volume for block reads; MRC files are never read whole."""
    path = Path(path)
    _require_file(path)
    fmt = volume_format(path)
    if fmt == "mrc":
        return _MrcReader(path)
    if fmt == "nrrd":
        data, info = _read_nrrd(path)
        return _ArrayReader(info, data, transpose=False)
    image = _load_nifti(path)
    return _ArrayReader(_nifti_info(path, image), image.dataobj, transpose=True)


def _read_nrrd(path: Path) -> tuple[np.ndarray, VolumeInfo]:
    import nrrd

    header = _nrrd_header(path)
    info = _nrrd_info(path, header)
    try:
        data, _ = nrrd.read(str(path), index_order="C")
    except (
        nrrd.NRRDError,
        OSError,
        ValueError,
        EOFError,
        StopIteration,
        RuntimeError,
        KeyError,
        zlib.error,
    ) as exc:
        raise InputError(f"{path}: not a readable NRRD file ({exc})") from None
    return data.reshape(info.shape), info


def read_volume(path: Path) -> tuple[np.ndarray, VolumeInfo]:
    """Read a whole volume: the array ``(z, y, x)`` and its header information."""
    path = Path(path)
    with closing_reader(path) as reader:
        return reader.read_block((0, 0, 0), reader.info.shape), reader.info


@contextmanager
def closing_reader(path: Path) -> Iterator[VolumeReader]:
    """``open_volume`` as a context manager."""
    reader = open_volume(path)
    try:
        yield reader
    finally:
        reader.close()


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")


# --- writing ----------------------------------------------------------------------------


def output_path(folder: Path, stem: str, fmt: str) -> Path:
    """Path of a volume named ``stem`` written in format ``fmt`` (a key of WRITE_FORMATS)."""
    return Path(folder) / f"{stem}{WRITE_FORMATS[fmt]}"


def write_volume(
    path: Path, data: np.ndarray, geometry: Geometry, *, overwrite: bool = False
) -> None:
    """Write ``data`` ``(z, y, x)`` with its geometry, atomically.

    The file is written under a temporary name in the same folder and renamed into place,
    so an interrupted run never leaves a half-written file under the final name.

    Raises
    ------
    InputError
        If ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it")
    fmt = volume_format(path)
    with atomic_target(path, volume_suffix(path)) as temporary:
        if fmt == "mrc":
            _write_mrc(temporary, data, geometry)
        elif fmt == "nrrd":
            _write_nrrd(temporary, data, geometry)
        else:
            _write_nifti(temporary, data, geometry)


def storable_dtype(dtype: np.dtype, fmt: str, high: float = 0) -> np.dtype:
    """The dtype ``fmt`` stores ``dtype`` as, losslessly where the format allows.

    MRC has int8, int16, uint16, float16 and float32 modes; NRRD (pynrrd) has no float16;
    NIfTI (nibabel) has no float16 either. ``high`` is the data's maximum, which decides
    whether uint8 fits MRC's int8 mode.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.int8 if fmt == "mrc" else np.uint8)
    if fmt in ("nrrd", "nifti"):
        return np.dtype(np.float32) if dtype == np.float16 else dtype
    if dtype.kind == "f":
        return np.dtype(np.float16 if dtype == np.float16 else np.float32)
    if dtype in (np.int8, np.int16, np.uint16):
        return dtype
    if dtype == np.uint8:
        return np.dtype(np.int8 if high <= 127 else np.uint16)
    return np.dtype(np.float32)  # wider integers: MRC has no lossless mode for them


def _write_mrc(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    import mrcfile

    high = float(data.max()) if data.size and data.dtype.kind in "ui" else 0
    data = np.ascontiguousarray(data, dtype=storable_dtype(data.dtype, "mrc", high))
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        set_mrc_geometry(mrc, geometry)


def set_mrc_geometry(mrc, geometry: Geometry) -> None:
    """Write voxel size and origin (position of the first voxel) into an open MRC file."""
    vz, vy, vx = geometry.voxel_size
    mrc.voxel_size = (vx, vy, vz)
    oz, oy, ox = geometry.origin
    mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz


def _write_nrrd(path: Path, data: np.ndarray, geometry: Geometry) -> None:
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
    data = np.ascontiguousarray(data, dtype=storable_dtype(data.dtype, "nrrd"))
    nrrd.write(str(path), data, header, index_order="C", compression_level=1)


def _write_nifti(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    import nibabel

    vz, vy, vx = geometry.voxel_size
    oz, oy, ox = geometry.origin
    affine = np.diag([vx, vy, vz, 1.0])
    affine[:3, 3] = (ox, oy, oz)
    data = data.astype(storable_dtype(data.dtype, "nifti"), copy=False)
    image = nibabel.Nifti1Image(np.ascontiguousarray(data.transpose()), affine)
    image.header.set_xyzt_units(xyz="unknown")
    nibabel.save(image, str(path))
