"""NIfTI volumes (``.nii.gz``, ``.nii``) with their geometry, through nibabel.

nibabel indexes NIfTI arrays ``(i, j, k) = (x, y, z)`` (the MemBrain-seg convention), so
this module transposes them to and from ``(z, y, x)``. The affine carries spacing (its
column lengths) and origin (its translation), both ``x, y, z``, reversed here; a rotation,
shear or flip in it is dropped, with a warning. Data is read lazily through nibabel's array
proxy, one block at a time. nibabel skips the gzip checks of a ``.nii.gz``, so opening one
for reading verifies its whole stream first.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .geometry import Geometry
from .readers import (
    READ_ERRORS,
    ArrayReader,
    VolumeInfo,
    as_3d,
    basic_dtype,
    decompressed_size,
    reason,
    warn_unless_axis_aligned,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class _NiftiReader(ArrayReader):
    """Block reads from nibabel's ``(x, y, z)`` array proxy, returned ``(z, y, x)``.

    The proxy reads through one file object (a gzip stream for ``.nii.gz``), so reads
    from several threads take turns.
    """

    def __init__(self, info: VolumeInfo, data: Any):
        super().__init__(info, data)
        self._lock = threading.Lock()

    def _read(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        with self._lock:
            block = np.asarray(self._data[x0:x1, y0:y1, z0:z1, ...])
        block = block.reshape(x1 - x0, y1 - y0, z1 - z0)  # drop trailing singleton axes
        return np.ascontiguousarray(block.transpose())


def read_nifti_info(path: Path) -> VolumeInfo:
    """Read only the header of a NIfTI file: shape ``(z, y, x)``, dtype and geometry.

    The size of an uncompressed file is checked against its header; a ``.nii.gz`` is not
    decompressed.
    """
    image = _load(path)
    info = _info(path, image)
    if not _is_gzip(path):
        _check_size(path, image, path.stat().st_size)
    return info


def open_nifti(path: Path) -> ArrayReader:
    """Open a NIfTI file for block reads ``(z, y, x)``; data is read only when asked for.

    A ``.nii.gz`` is decompressed once here, in chunks, to verify it (CRC and length).

    Raises
    ------
    InputError
        If the file is unreadable, damaged or holds less data than its header declares.
    """
    image = _load(path)
    info = _info(path, image)
    if _is_gzip(path):
        with open(path, "rb") as stream:
            available = decompressed_size(path, stream)
    else:
        available = path.stat().st_size
    _check_size(path, image, available)
    return _NiftiReader(info, image.dataobj)


def write_nifti(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    """Write ``data`` ``(z, y, x)`` to a NIfTI file at ``path`` as an ``(x, y, z)`` array."""
    import nibabel

    vz, vy, vx = geometry.voxel_size
    oz, oy, ox = geometry.origin
    affine = np.diag([vx, vy, vz, 1.0])
    affine[:3, 3] = (ox, oy, oz)
    data = data.astype(basic_dtype(data.dtype), copy=False)
    image = nibabel.Nifti1Image(np.ascontiguousarray(data.transpose()), affine)
    image.header.set_xyzt_units(xyz="unknown")
    nibabel.save(image, str(path))


def _load(path: Path) -> Any:
    import nibabel
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        return nibabel.load(str(path))
    except (*READ_ERRORS, ImageFileError, HeaderDataError) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({reason(exc)})") from None


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")  # as nibabel tells them apart


def _check_size(path: Path, image: Any, available: int) -> None:
    """Refuse a file whose (decompressed) bytes cannot hold the data its header declares.

    Checked before any data is read, so a damaged header that declares a huge volume never
    makes nibabel allocate it.
    """
    proxy = image.dataobj
    offset = int(proxy.offset)
    needed = offset + math.prod(int(n) for n in proxy.shape) * image.get_data_dtype().itemsize
    if offset < 0:
        raise InputError(f"{path}: not a readable NIfTI file (data offset {offset} is negative)")
    if available < needed:
        raise InputError(
            f"{path}: cannot read its data (the file is truncated: {available} bytes"
            f"{' decompressed' if _is_gzip(path) else ''}, the header says {needed})"
        )


def _info(path: Path, image: Any) -> VolumeInfo:
    shape_xyz = tuple(int(s) for s in image.shape)
    if len(shape_xyz) > 3 and all(s == 1 for s in shape_xyz[3:]):
        shape_xyz = shape_xyz[:3]
    if len(shape_xyz) != 3:
        raise InputError(f"{path}: expected a 3D volume, found shape {shape_xyz}")
    as_3d(path, shape_xyz)  # no empty axis
    dtype = np.dtype(image.get_data_dtype())
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported NIfTI data type {dtype} (not real numbers)")
    affine = np.asarray(image.affine, float)
    spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
    header = image.header
    if header["sform_code"] > 0 or header["qform_code"] > 0:
        # Without either, nibabel makes up an affine (with x flipped): no orientation is lost.
        warn_unless_axis_aligned(path, affine[:3, :3].T, "NIfTI affine")
    origin_xyz = affine[:3, 3]
    geometry = Geometry(
        (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])),
        (float(origin_xyz[2]), float(origin_xyz[1]), float(origin_xyz[0])),
    )
    x, y, z = shape_xyz
    return VolumeInfo(path, (z, y, x), dtype, geometry)
