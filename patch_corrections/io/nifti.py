"""NIfTI volumes (``.nii.gz``, ``.nii``) with their geometry, through nibabel.

nibabel indexes NIfTI arrays ``(i, j, k) = (x, y, z)`` (the MemBrain-seg convention), so
this module transposes them to and from ``(z, y, x)``. The affine carries spacing (its
column lengths) and origin (its translation), both ``x, y, z``, reversed here. Data is read
lazily through nibabel's array proxy, one block at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .geometry import ArrayReader, Geometry, VolumeInfo, basic_dtype

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
    """Read only the header of a NIfTI file: shape ``(z, y, x)``, dtype and geometry."""
    return _info(path, _load(path))


def open_nifti(path: Path) -> ArrayReader:
    """Open a NIfTI file for block reads ``(z, y, x)``; data is read only when asked for."""
    image = _load(path)
    return _NiftiReader(_info(path, image), image.dataobj)


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

    try:
        return nibabel.load(str(path))
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from None


def _info(path: Path, image: Any) -> VolumeInfo:
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
