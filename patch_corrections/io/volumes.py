"""Reading and writing volumes (MRC, NRRD, NIfTI, OME-Zarr) with their geometry.

This is the one face of volume I/O: it tells the formats apart by file name and hands each
file to its module (``mrc``, ``nrrd``, ``nifti``, ``omezarr``), which owns that format's
axis conversion. In memory, every array is ``(z, y, x)`` and every per-axis tuple (voxel size,
origin, offsets) is ``(z, y, x)`` too, whatever the file's order:

- MRC is already ``(z, y, x)`` in memory; only its header records are ``x, y, z``.
- NRRD is read and written in C order, so the array is ``(z, y, x)``; its header lists
  ``x`` first.
- NIfTI arrays are ``(x, y, z)`` (the MemBrain-seg convention) and are transposed.
- OME-Zarr arrays are ``(z, y, x)`` as their metadata lists them; a ``.zarr`` "file" is a
  folder, and a path inside it names one scale level (see :mod:`.omezarr`).

Geometry (voxel size and origin, Å) is read from and written into every format's header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from .geometry import Geometry, Triple
from .mrc import MRC_SUFFIXES, MrcReader, read_mrc_info
from .mrc_writer import MrcSlabWriter, mrc_dtype, set_mrc_geometry, write_mrc
from .names import is_plain_name
from .nifti import NIFTI_SUFFIXES, open_nifti, read_nifti_info, write_nifti
from .nrrd import NRRD_SUFFIXES, open_nrrd, read_nrrd_info, write_nrrd
from .omezarr import (
    ZARR_SUFFIXES,
    is_zarr_volume,
    open_zarr,
    read_zarr_info,
    scale_level,
    zarr_root,
)
from .omezarr_writer import ZarrSlabWriter, write_zarr
from .readers import VolumeInfo, VolumeReader, basic_dtype
from .staging import atomic_target

__all__ = [
    "MRC_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "WRITE_FORMATS",
    "ZARR_SUFFIXES",
    "Geometry",
    "Triple",
    "VolumeInfo",
    "VolumeReader",
    "at_scale_level",
    "check_slab_output",
    "closing_reader",
    "copy_volume",
    "is_volume_file",
    "is_volume_folder",
    "open_volume",
    "output_path",
    "read_info",
    "read_volume",
    "set_mrc_geometry",
    "slab_writer",
    "storable_dtype",
    "volume_exists",
    "volume_format",
    "volume_name",
    "volume_stem",
    "volume_suffix",
    "write_volume",
]

WRITE_FORMATS = {"mrc": ".mrc", "nrrd": ".nrrd", "nii.gz": ".nii.gz"}
"""Output format names accepted on the command line, with the file suffix each one writes."""

_FILE_SUFFIXES = MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES
_SUFFIXES = _FILE_SUFFIXES + ZARR_SUFFIXES

_INFO: dict[str, Callable[[Path], VolumeInfo]] = {
    "mrc": read_mrc_info,
    "nrrd": read_nrrd_info,
    "nifti": read_nifti_info,
    "zarr": read_zarr_info,
}
_OPEN: dict[str, Callable[[Path], VolumeReader]] = {
    "mrc": MrcReader,
    "nrrd": open_nrrd,
    "nifti": open_nifti,
    "zarr": open_zarr,
}
_WRITE: dict[str, Callable[[Path, np.ndarray, Geometry], None]] = {
    "mrc": write_mrc,
    "nrrd": write_nrrd,
    "nifti": write_nifti,
    "zarr": write_zarr,
}


def _zarr_of(path: Path) -> tuple[Path, str] | None:
    """The ``.zarr`` folder ``path`` names or lies in (see :func:`.omezarr.zarr_root`),
    unless its own name is a file format's (``data.zarr/tomo.mrc`` is an MRC file)."""
    path = Path(path)
    return None if path.name.lower().endswith(_FILE_SUFFIXES) else zarr_root(path)


def volume_format(path: Path) -> str:
    """Return ``"mrc"``, ``"nrrd"``, ``"nifti"`` or ``"zarr"`` from the file name (a path
    inside a ``.zarr`` folder is ``"zarr"``), else raise InputError."""
    if _zarr_of(path) is not None:
        return "zarr"
    name = path.name.lower()
    for fmt, suffixes in (
        ("mrc", MRC_SUFFIXES),
        ("nrrd", NRRD_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    raise InputError(f"{path}: unsupported file type; expected one of {' '.join(_SUFFIXES)}")


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` is a file with a suffix this module reads, or a ``.zarr`` folder
    holding a Zarr group or array."""
    if path.name.lower().endswith(ZARR_SUFFIXES):
        return is_zarr_volume(path)
    return path.is_file() and path.name.lower().endswith(_SUFFIXES)


def volume_exists(path: Path) -> bool:
    """Whether the volume ``path`` is there: a file, or a Zarr group or array."""
    path = Path(path)
    return is_zarr_volume(path) if _zarr_of(path) is not None else path.is_file()


def is_volume_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of volumes, not a volume stored as a folder (OME-Zarr)."""
    return path.is_dir() and not is_zarr_volume(path)


def at_scale_level(path: Path, level: int | None) -> Path:
    """The path of scale level ``level`` of the OME-Zarr image ``path`` (``None``: ``path``
    as given, the finest level for an image); ``--scale-level`` of the commands that read
    a tomogram. Other formats hold one scale, level 0."""
    path, image = Path(path), _zarr_of(Path(path))
    if level is None or (level == 0 and image is None and path.is_file()):
        return path
    if image is None:
        raise InputError(
            f"{path}: --scale-level picks a level of an OME-Zarr (.zarr) tomogram; "
            + ("name each .zarr tomogram" if path.is_dir() else "this format has one")
        )
    return scale_level(path, level)


def volume_name(path: Path) -> str:
    """A volume's name for messages: its file name, or for a scale level inside a
    ``.zarr`` folder the folder's name and the level's path (``a.zarr/1``)."""
    root = _zarr_of(Path(path))
    return f"{root[0].name}/{root[1]}" if root is not None and root[1] else Path(path).name


def volume_suffix(path: Path) -> str:
    """The volume suffix of a file name, as written there (``a.NII.gz`` -> ``.NII.gz``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[-len(suffix) :]
    return path.suffix


def volume_stem(path: Path) -> str:
    """File name without its volume suffix (``a.nii.gz`` -> ``a``); for a scale level
    inside a ``.zarr`` folder, the folder's and the level's (``a.zarr/1`` -> ``a_1``), so
    that two levels' outputs never share a name."""
    root = _zarr_of(path)
    inner = ""
    if root is not None:
        path, inner = root[0], "".join(f"_{part}" for part in root[1].split("/") if part)
    suffix = volume_suffix(path)
    return (path.name[: -len(suffix)] if suffix else path.name) + inner


def read_info(path: Path) -> VolumeInfo:
    """Read only the header of a volume file: shape ``(z, y, x)``, dtype and geometry."""
    path = Path(path)
    _require_file(path)
    return _INFO[volume_format(path)](path)


def open_volume(path: Path) -> VolumeReader:
    """Open a volume for block reads; MRC files are never read whole."""
    path = Path(path)
    _require_file(path)
    return _OPEN[volume_format(path)](path)


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
    if _zarr_of(path) is not None:
        return  # a folder; omezarr says what is wrong with it
    if not path.is_file():
        raise InputError(f"{path}: not a file")


def output_path(folder: Path, stem: str, fmt: str) -> Path:
    """Path of a volume named ``stem`` written in format ``fmt`` (a key of WRITE_FORMATS),
    inside ``folder``: a ``stem`` that is not a plain file name is refused."""
    if not is_plain_name(stem):
        raise InputError(f"{stem!r}: not a plain file name, so no output is written under it")
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
    if fmt == "zarr" and _zarr_of(path)[1]:  # type: ignore[index]
        raise InputError(f"{path}: inside a .zarr folder; name the .zarr folder to write")
    _refuse_foreign_folder(path, "output")
    with atomic_target(path, volume_suffix(path)) as temporary:
        _WRITE[fmt](temporary, data, geometry)


def check_slab_output(path: Path, option: str, source: Path, read: str) -> None:
    """``InputError`` unless ``path`` names what :func:`slab_writer` writes, an MRC file or
    an OME-Zarr image (not a folder of anything else), other than ``source``, the volume
    the command reads (``read`` says which), or the OME-Zarr image it is a level of."""
    name = path.name.lower()
    if not name.endswith(MRC_SUFFIXES + ZARR_SUFFIXES):
        raise InputError(
            f"{option} {path}: the output is an MRC file or an OME-Zarr image; end its name "
            "with .mrc or .zarr"
        )
    _refuse_foreign_folder(path, option)
    if path.exists() and _whole(path) == _whole(Path(source)):
        beside = path.with_name(f"{volume_stem(path)}_corrected{volume_suffix(path)}")
        raise InputError(
            f"{option} {path}: that is {read}; write the result beside it, e.g. {beside}"
        )


def _whole(path: Path) -> Path:
    """The file, or the whole OME-Zarr image, that ``path`` names (resolved)."""
    image = _zarr_of(path)
    return (image[0] if image else path).resolve()


def _refuse_foreign_folder(path: Path, option: str) -> None:
    """``InputError`` when ``path`` is a folder that is no OME-Zarr image: an output
    never replaces a user's folder."""
    if path.is_dir() and not is_zarr_volume(path):
        raise InputError(
            f"{option} {path}: is a folder that holds no Zarr; give the file or .zarr image "
            "to write"
        )


def slab_writer(path: Path, shape, dtype, geometry: Geometry):
    """A writer of a new MRC file or OME-Zarr image (by ``path``'s name) that takes the
    volume slab by slab along z (see :class:`.mrc_writer.MrcSlabWriter`)."""
    if volume_format(Path(path)) == "zarr":
        return ZarrSlabWriter(path, shape, dtype, geometry)
    return MrcSlabWriter(path, shape, dtype, geometry)


_COPY_SLAB_VOXELS = 1 << 24
"""Voxels :func:`copy_volume` holds at once."""


def copy_volume(source: Path, target: Path, dtype) -> None:
    """Write ``source``'s voxels as ``dtype`` into ``target`` (an MRC file or OME-Zarr
    image, replaced if it exists), slab by slab, with ``source``'s geometry; atomically."""
    target = Path(target)
    _refuse_foreign_folder(target, "output")
    with closing_reader(source) as reader:
        info = reader.info
        nz, ny, nx = info.shape
        step = max(1, _COPY_SLAB_VOXELS // max(ny * nx, 1))
        geometry = info.geometry or Geometry((1.0, 1.0, 1.0))
        with atomic_target(target, volume_suffix(target)) as temporary:
            with slab_writer(temporary, info.shape, dtype, geometry) as writer:
                for z0 in range(0, nz, step):
                    z1 = min(nz, z0 + step)
                    writer.write(z0, reader.read_block((z0, 0, 0), (z1, ny, nx)).astype(dtype))


def storable_dtype(dtype: np.dtype, fmt: str, high: float = 0) -> np.dtype:
    """The dtype ``fmt`` stores ``dtype`` as, losslessly where the format allows.

    MRC has int8, int16, uint16, float16 and float32 modes; NRRD (pynrrd) has no float16;
    NIfTI (nibabel) has no float16 either; OME-Zarr (``zarr``) keeps every number type.
    ``high`` is the data's maximum, which decides whether uint8 fits MRC's int8 mode.
    """
    if fmt == "zarr":  # any dtype but bool, which viewers take as uint8 anyway
        return basic_dtype(dtype) if np.dtype(dtype).kind == "b" else np.dtype(dtype)
    if fmt in ("nrrd", "nifti") or (np.dtype(dtype).kind == "b" and fmt != "mrc"):
        # Other names (WRITE_FORMATS' "nii.gz" among them) keep their old answer: bool as
        # uint8, the rest by MRC's rules.
        return basic_dtype(dtype)
    return mrc_dtype(dtype, high)
