"""napari readers for MRC, NRRD, NIfTI and OME-Zarr volumes, through the package's own I/O.

Each volume opens as one layer whose ``scale`` is the voxel size and whose ``translate`` is
the origin, both ``(z, y, x)`` in Å, so patches overlay on their tomogram. Label volumes
(files in a ``labels`` folder, correction masks, or integer volumes holding only 0, 1 and
2) open as labels layers.

An OME-Zarr image (a copick or CZ cryoET Data Portal tomogram or segmentation) is not read
whole: it opens as a multiscale layer of all its scale levels, each read chunk by chunk
as napari shows it (through dask, which napari brings), so a tomogram of many GB opens
at once. Whether it is a label volume is judged on a sample of its coarsest level.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..constants import IGNORE
from ..errors import InputError
from ..inference.intensity import spread_sample
from ..io.correction_folders import correction_kind
from ..io.geometry import Geometry
from ..io.omezarr import is_zarr_volume, open_zarr, scale_levels, zarr_root
from ..io.patch_folders import LABEL_FOLDERS
from ..io.volumes import is_volume_file, read_info, read_volume, volume_format, volume_stem

LayerData = tuple[np.ndarray, dict, str]
"""napari's layer-data tuple: array ``(z, y, x)``, layer keyword arguments, layer type."""


def geometry_kwargs(geometry: Geometry | None) -> dict:
    """``scale`` and ``translate`` ``(z, y, x)`` of a layer; unit voxels without geometry."""
    if geometry is None:
        return {"scale": (1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0)}
    return {"scale": tuple(geometry.voxel_size), "translate": tuple(geometry.origin)}


def is_label_volume(path: Path, data: np.ndarray) -> bool:
    """Whether ``data`` read from ``path`` is a label volume or a correction mask."""
    if path.parent.name in LABEL_FOLDERS or correction_kind(path) is not None:
        return True
    if data.dtype.kind not in "biu" or data.size == 0:
        return False
    return bool(data.min() >= 0 and data.max() <= IGNORE)


def layer_data(path: Path) -> LayerData:
    """One volume file as a napari layer-data tuple, with its geometry.

    Raises
    ------
    InputError
        If the file cannot be read (the message names it).
    """
    path = Path(path)
    if volume_format(path) == "zarr":
        return zarr_layer_data(path)
    data, info = read_volume(path)
    kwargs = {"name": volume_stem(path), **geometry_kwargs(info.geometry)}
    if is_label_volume(path, data):
        if data.dtype.kind == "b":
            data = data.astype(np.uint8)
        return data, kwargs, "labels"
    return data, kwargs, "image"


def zarr_layer_data(path: Path) -> LayerData:
    """An OME-Zarr image (or one level, or a plain Zarr array) as a layer of lazy arrays,
    one per scale level, finest first, with the finest level's geometry; a single array
    when there is one level."""
    import dask.array as da  # napari's own dependency; the package never imports it

    levels = [open_zarr(level) for level in scale_levels(path)]
    arrays = []
    for level in levels:
        lazy = da.from_array(level.array, chunks=level.array.chunks, fancy=False)
        arrays.append(lazy[(0,) * (level.array.ndim - 3)])
    kwargs = {"name": volume_stem(path), **geometry_kwargs(levels[0].info.geometry)}
    if len(arrays) > 1:
        kwargs["multiscale"] = True
    data = arrays if len(arrays) > 1 else arrays[0]
    coarsest = levels[-1]  # labels are integers: only they are sampled (whole chunks)
    sample = spread_sample(coarsest) if coarsest.info.dtype.kind in "biu" else np.zeros(0)
    if is_label_volume(path, sample):
        return data, kwargs, "labels"
    return data, kwargs, "image"


def read_layers(paths: str | list[str]) -> list[LayerData]:
    """The napari reader function: one layer per file."""
    if isinstance(paths, str):
        paths = [paths]
    return [layer_data(Path(p)) for p in paths]


def _is_ours(path: Path) -> bool:
    """A volume file, a ``.zarr`` image, or a level or array inside one (``tomo.zarr/1``)."""
    return is_volume_file(path) or (zarr_root(path) is not None and is_zarr_volume(path))


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for ``path`` when every file is a volume this package reads, else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_ours(Path(p)) for p in paths):
        return None
    if any(zarr_root(Path(p)) for p in paths) and importlib.util.find_spec("zarr") is None:
        return read_layers  # whose error gives the install line, not "no reader"
    try:  # a header that does not parse is left to other readers
        for p in paths:
            read_info(Path(p))
    except InputError:
        return None
    return read_layers
