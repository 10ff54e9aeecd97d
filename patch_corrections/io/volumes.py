"""Reading and writing volumes (MRC, NRRD, NIfTI) with their geometry.

This is the one face of volume I/O: it tells the formats apart by file name and hands each
file to its module (``mrc``, ``nrrd``, ``nifti``), which owns that format's axis
conversion. In memory, every array is ``(z, y, x)`` and every per-axis tuple (voxel size,
origin, offsets) is ``(z, y, x)`` too, whatever the file's order:

- MRC is already ``(z, y, x)`` in memory; only its header records are ``x, y, z``.
- NRRD is read and written in C order, so the array is ``(z, y, x)``; its header lists
  ``x`` first.
- NIfTI arrays are ``(x, y, z)`` (the MemBrain-seg convention) and are transposed.

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
from .mrc_writer import mrc_dtype, set_mrc_geometry, write_mrc
from .names import is_plain_name
from .nifti import NIFTI_SUFFIXES, open_nifti, read_nifti_info, write_nifti
from .nrrd import NRRD_SUFFIXES, open_nrrd, read_nrrd_info, write_nrrd
from .readers import VolumeInfo, VolumeReader, basic_dtype
from .staging import atomic_target

__all__ = [
    "MRC_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "WRITE_FORMATS",
    "Geometry",
    "Triple",
    "VolumeInfo",
    "VolumeReader",
    "closing_reader",
    "is_volume_file",
    "open_volume",
    "output_path",
    "read_info",
    "read_volume",
    "set_mrc_geometry",
    "storable_dtype",
    "volume_format",
    "volume_stem",
    "volume_suffix",
    "write_volume",
]

WRITE_FORMATS = {"mrc": ".mrc", "nrrd": ".nrrd", "nii.gz": ".nii.gz"}
"""Output format names accepted on the command line, with the file suffix each one writes."""

_SUFFIXES = MRC_SUFFIXES + NRRD_SUFFIXES + NIFTI_SUFFIXES

_INFO: dict[str, Callable[[Path], VolumeInfo]] = {
    "mrc": read_mrc_info,
    "nrrd": read_nrrd_info,
    "nifti": read_nifti_info,
}
_OPEN: dict[str, Callable[[Path], VolumeReader]] = {
    "mrc": MrcReader,
    "nrrd": open_nrrd,
    "nifti": open_nifti,
}
_WRITE: dict[str, Callable[[Path, np.ndarray, Geometry], None]] = {
    "mrc": write_mrc,
    "nrrd": write_nrrd,
    "nifti": write_nifti,
}


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
    raise InputError(f"{path}: unsupported file type; expected one of {' '.join(_SUFFIXES)}")


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` is a file with a suffix this module reads."""
    return path.is_file() and path.name.lower().endswith(_SUFFIXES)


def volume_suffix(path: Path) -> str:
    """The volume suffix of a file name, as written there (``a.NII.gz`` -> ``.NII.gz``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[-len(suffix) :]
    return path.suffix


def volume_stem(path: Path) -> str:
    """File name without its volume suffix (``a.nii.gz`` -> ``a``)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


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
    with atomic_target(path, volume_suffix(path)) as temporary:
        _WRITE[fmt](temporary, data, geometry)


def storable_dtype(dtype: np.dtype, fmt: str, high: float = 0) -> np.dtype:
    """The dtype ``fmt`` stores ``dtype`` as, losslessly where the format allows.

    MRC has int8, int16, uint16, float16 and float32 modes; NRRD (pynrrd) has no float16;
    NIfTI (nibabel) has no float16 either. ``high`` is the data's maximum, which decides
    whether uint8 fits MRC's int8 mode.
    """
    if fmt in ("nrrd", "nifti") or (np.dtype(dtype).kind == "b" and fmt != "mrc"):
        # Other names (WRITE_FORMATS' "nii.gz" among them) keep their old answer: bool as
        # uint8, the rest by MRC's rules.
        return basic_dtype(dtype)
    return mrc_dtype(dtype, high)
