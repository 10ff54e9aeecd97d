"""OME-Zarr volumes (``.zarr`` folders), through ``zarr``: the CZ cryoET Data Portal's and
copick's tomograms and segmentations.

An OME-Zarr image is a Zarr group whose ``multiscales`` metadata (OME-NGFF 0.4 in
``.zattrs``, or 0.5 under ``ome`` in ``zarr.json``) lists one array per scale level, finest
first, each with its scale (the voxel size) and optional translation (the origin), in the
unit of its axes. A path names one level:

- ``tomo.zarr``: the finest level (``datasets[0]``);
- ``tomo.zarr/2``: the level stored at ``2`` inside it, with that level's geometry from
  the group's metadata (:func:`scale_level` turns a level number into such a path);
- a plain Zarr array (``seg.zarr`` holding ``.zarray``), without metadata: no geometry,
  as an MRC header with a voxel size of 0.

Arrays are ``(z, y, x)`` as everywhere here; axes other than ``z``, ``y``, ``x`` must have
one voxel. Blocks are read as slices of the Zarr array, so only the chunks a block touches
are read. :mod:`.omezarr_writer` writes them.

``zarr`` is an optional dependency (``pip install "patch-corrections[zarr]"``): nothing
imports it until a ``.zarr`` path is read or written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, warn
from .chunk_cache import ChunkCache
from .geometry import Geometry
from .names import warn_links_out
from .readers import READ_ERRORS, ArrayReader, VolumeInfo, as_3d, quoted, reason

ZARR_SUFFIXES = (".zarr",)
CHUNK = 64
"""Edge of the chunks volumes are written in (a 64³ float32 chunk is 1 MiB)."""
UNITS_IN_ANGSTROM = {
    "angstrom": 1.0,
    "nanometer": 10.0,
    "micrometer": 1e4,
    "millimeter": 1e7,
    "meter": 1e10,
    "picometer": 0.01,
}
"""OME-NGFF space units, in Å."""
SPACE_AXES = ("z", "y", "x")


def import_zarr():
    """The ``zarr`` module, or an ``InputError`` giving the install line."""
    try:
        import zarr
    except ImportError:
        raise InputError(
            'reading or writing .zarr volumes needs zarr: pip install "patch-corrections[zarr]"'
        ) from None
    return zarr


def _zarr_errors(zarr) -> tuple[type[Exception], ...]:
    """What zarr raises on a damaged or foreign store: zarr 3's base error, zarr 2's."""
    names = ("BaseZarrError", "_BaseZarrError", "MetadataError")
    return tuple(getattr(zarr.errors, n) for n in names if hasattr(zarr.errors, n))


def zarr_root(path: Path) -> tuple[Path, str] | None:
    """The ``.zarr`` folder holding ``path`` (itself or a parent) and the path inside it
    (``""`` for the folder itself); ``None`` when no part of ``path`` ends in ``.zarr``."""
    path = Path(path)
    for depth, folder in enumerate((path, *path.parents)):
        if folder.name.lower().endswith(ZARR_SUFFIXES):
            inner = path.parts[len(path.parts) - depth :]
            return folder, "/".join(inner)
    return None


def is_zarr_volume(path: Path) -> bool:
    """Whether ``path`` is a folder that Zarr metadata makes a group or an array (not a
    ``.zarr`` folder of anything else)."""
    path = Path(path)
    markers = (".zgroup", ".zarray", "zarr.json")
    return path.is_dir() and any((path / m).is_file() for m in markers)


def scale_level(path: Path, level: int) -> Path:
    """The path of scale level ``level`` (0: the finest) of the OME-Zarr image ``path``.

    Raises
    ------
    InputError
        If ``path`` holds no multiscales metadata or no such level; the message lists the
        levels there are.
    """
    if level < 0:
        raise InputError(f"--scale-level must be 0 or more, got {level}")
    levels = scale_levels(path)
    if level == 0:
        return levels[0]
    if levels == [Path(path)]:
        raise InputError(f"{path}: no OME-Zarr multiscales metadata, so no --scale-level {level}")
    if level >= len(levels):
        held = ", ".join(f"{i} ({p.relative_to(path).as_posix()})" for i, p in enumerate(levels))
        raise InputError(f"{path}: no scale level {level}; it holds {held}")
    return levels[level]


def scale_levels(path: Path) -> list[Path]:
    """The paths of every scale level of the OME-Zarr image ``path``, finest first; a plain
    array, or a path naming one level, is its only level."""
    path = Path(path)
    node = _open_node(path)
    multiscale = _multiscale(path, _attributes(node, path)) if _is_group(node) else None
    if multiscale is None:
        return [path]
    return [path / dataset["path"] for dataset in multiscale["datasets"]]


def read_zarr_info(path: Path) -> VolumeInfo:
    """The shape ``(z, y, x)``, dtype and geometry of the level ``path`` names."""
    return _level(path)[1]


def open_zarr(path: Path) -> _ZarrReader:
    """Open the level ``path`` names for block reads ``(z, y, x)``."""
    array, info = _level(path)
    return _ZarrReader(info, array)


class _ZarrReader(ArrayReader):
    """Block reads of a Zarr array; its axes beyond ``z, y, x`` have one voxel. After
    :meth:`keep_chunks`, chunks are kept decompressed for the reads that come back to
    them (:mod:`.chunk_cache`); before, every read decompresses what it touches."""

    def __init__(self, info: VolumeInfo, data: Any):
        super().__init__(info, data)
        self._cache = ChunkCache(self._region, info.shape, self.chunks, info.dtype, budget=0)

    def keep_chunks(self) -> None:
        """Keep decompressed chunks from now on, within the cache's default budget: for
        reads that overlap (``segment``'s windows), not for reads that seldom meet (the
        patches of ``extract_patches``), whose chunks would only take memory."""
        self._cache.budget = ChunkCache.default_budget(self.chunks, self.info.dtype)

    @property
    def array(self) -> Any:
        """The Zarr array itself, not read: index it with a leading 0 for each axis beyond
        ``z, y, x`` (``info.shape`` is its shape along those)."""
        return self._data

    @property
    def chunks(self) -> tuple[int, int, int]:
        """The chunk shape ``(z, y, x)``: a read decompresses every chunk it touches."""
        return tuple(int(c) for c in self._data.chunks[-3:])  # type: ignore[return-value]

    read_errors = READ_ERRORS  # codecs and stores raise more kinds than nibabel

    def _read(self, start, stop) -> np.ndarray:
        return self._cache.read(start, stop)

    def _region(self, start, stop) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        extra = (0,) * (self._data.ndim - 3)
        return np.array(self._data[(*extra, slice(z0, z1), slice(y0, y1), slice(x0, x1))])

    def close(self) -> None:
        self._cache.budget = 0  # reads still running when a run fails keep nothing
        self._cache.clear()
        super().close()


def _level(path: Path) -> tuple[Any, VolumeInfo]:
    path = Path(path)
    node = _open_node(path)
    multiscale, dataset = None, None
    if _is_group(node):
        multiscale = _multiscale(path, _attributes(node, path))
        if multiscale is None:
            raise InputError(
                f"{path}: a Zarr group without OME-Zarr multiscales metadata; name one of "
                f"its arrays ({', '.join(sorted(node.array_keys())) or 'none'})"
            )
        dataset = multiscale["datasets"][0]
        warn_links_out(path, [path / dataset["path"]])
        node = _open_node(path / dataset["path"])
    else:
        multiscale, dataset = _parent_dataset(path)
    if _is_group(node):
        raise InputError(f"{path}: its first scale level is a group, not an array")
    axes = _axes(path, multiscale, node.ndim)
    if axes[-3:] != list(SPACE_AXES) or any(node.shape[i] != 1 for i in range(node.ndim - 3)):
        raise InputError(
            f"{path}: axes {','.join(axes)} of shape {tuple(node.shape)}; expected z, y, x "
            "last and one voxel along any other"
        )
    if np.dtype(node.dtype).kind not in "biuf":
        raise InputError(f"{path}: holds {np.dtype(node.dtype)} values, not numbers")
    shape = as_3d(path, tuple(node.shape))
    geometry = _geometry(path, multiscale, dataset) if dataset is not None else None
    return node, VolumeInfo(path, shape, np.dtype(node.dtype), geometry)


def _open_node(path: Path):
    zarr = import_zarr()
    if not is_zarr_volume(path):
        raise InputError(f"{path}: not a Zarr array or group (no .zgroup, .zarray or zarr.json)")
    try:
        return zarr.open(str(path), mode="r")
    except (*READ_ERRORS, AttributeError, *_zarr_errors(zarr)) as exc:
        if (path / "zarr.json").is_file() and zarr.__version__.startswith("2."):
            raise InputError(
                f'{path}: Zarr format 3 (zarr.json), which needs zarr 3: pip install "zarr>=3"'
            ) from None
        raise InputError(f"{path}: cannot read it as Zarr ({reason(exc)})") from None


def _is_group(node) -> bool:
    return hasattr(node, "array_keys")


def _attributes(node, path: Path) -> dict:
    """A node's attributes (zarr 2 reads them only now)."""
    try:
        attributes = dict(node.attrs)
    except (*READ_ERRORS, AttributeError) as exc:
        raise InputError(f"{path}: its Zarr attributes are unreadable ({reason(exc)})") from None
    return attributes


def _multiscale(path: Path, attributes: dict) -> dict | None:
    """The first multiscales entry of a group's attributes (0.4, or 0.5's under ``ome``),
    checked: ``None`` when there is none."""
    ome = attributes.get("ome")
    found = (ome if isinstance(ome, dict) else attributes).get("multiscales")
    if not found:
        return None
    multiscale = found[0] if isinstance(found, list) else None
    datasets = multiscale.get("datasets") if isinstance(multiscale, dict) else None
    if not isinstance(datasets, list) or not datasets:
        raise InputError(f"{path}: its OME-Zarr multiscales metadata lists no datasets")
    for dataset in datasets:
        name = dataset.get("path") if isinstance(dataset, dict) else None
        if (
            not isinstance(name, str)
            or not name
            or Path(name).is_absolute()
            or ".." in Path(name).parts
        ):
            raise InputError(f"{path}: its multiscales metadata names a dataset {quoted(name)}")
    return multiscale


def _parent_dataset(path: Path) -> tuple[dict | None, dict | None]:
    """The multiscales entry and dataset of the group holding the array ``path``, when
    that group's metadata lists it."""
    root = zarr_root(path)
    if root is None or not root[1]:
        return None, None
    folder, inner = root
    parts = inner.split("/")
    for depth in range(len(parts) - 1, -1, -1):  # the nearest group first, the root last
        group, name = folder.joinpath(*parts[:depth]), "/".join(parts[depth:])
        if not is_zarr_volume(group):
            continue
        node = _open_node(group)
        multiscale = _multiscale(group, _attributes(node, group)) if _is_group(node) else None
        for dataset in (multiscale or {}).get("datasets", []):
            if dataset["path"].strip("/") == name:
                return multiscale, dataset
    return None, None


def _axes(path: Path, multiscale: dict | None, ndim: int) -> list[str]:
    """Axis names, outermost first: the metadata's (0.4 objects or 0.3 names), else
    ``z, y, x`` after singleton axes."""
    listed = (multiscale or {}).get("axes")
    if listed is None:
        return ["?"] * (ndim - 3) + list(SPACE_AXES)
    if not isinstance(listed, list):
        raise InputError(f"{path}: its metadata's axes {quoted(listed)} are not a list")
    names = [a.get("name") if isinstance(a, dict) else a for a in listed]
    if len(names) != ndim or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: its metadata lists {len(names)} axes for a {ndim}D array")
    return [n.lower() for n in names]


def _geometry(path: Path, multiscale: dict, dataset: dict) -> Geometry | None:
    """Voxel size and origin (Å) of a level: its scale and translation, then the
    multiscale's own, in the unit of its axes; ``None``, with a warning, without a scale."""
    ndim = len(multiscale.get("axes") or SPACE_AXES)
    scale, translation, scaled = np.ones(ndim), np.zeros(ndim), False
    own, shared = (
        dataset.get("coordinateTransformations"),
        multiscale.get("coordinateTransformations"),
    )
    for transforms in (own, shared):
        for transform in transforms if isinstance(transforms, list) else []:
            kind = transform.get("type") if isinstance(transform, dict) else None
            if kind not in ("scale", "translation") or kind not in transform:
                continue
            values = _numbers(path, kind, transform[kind], ndim)
            if kind == "scale":
                scale, translation, scaled = scale * values, translation * values, True
            else:
                translation = translation + values
    factor = _unit(path, multiscale)
    size = tuple(float(v) * factor for v in scale[-3:])
    if not scaled or not all(math.isfinite(v) and v > 0 for v in size):
        what = (
            f"scale {tuple(scale[-3:].tolist())} is not a voxel size"
            if scaled
            else "gives no scale"
        )
        warn(f"{path}: its OME-Zarr metadata {what}; its voxel size is unknown")
        return None
    origin = tuple(float(v) * factor for v in translation[-3:])
    return Geometry(size, origin)  # type: ignore[arg-type]


def _numbers(path: Path, kind: str, values, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (ndim,) or not np.all(np.isfinite(array)):
        raise InputError(f"{path}: its metadata's {kind} {quoted(values)} is not {ndim} numbers")
    return array


def _unit(path: Path, multiscale: dict) -> float:
    """Å per unit of the spatial axes; 1 when no unit is given (Å, as the Data Portal
    and copick write)."""
    axes = [a for a in multiscale.get("axes") or [] if isinstance(a, dict)]
    given = {
        str(a["unit"]) for a in axes if str(a.get("name")).lower() in SPACE_AXES and a.get("unit")
    }
    if not given:
        return 1.0
    unit = given.pop()
    if given or unit not in UNITS_IN_ANGSTROM:
        raise InputError(
            f"{path}: spatial axes in {quoted(unit)}{' and others' if given else ''}; "
            f"expected one of {', '.join(UNITS_IN_ANGSTROM)}"
        )
    return UNITS_IN_ANGSTROM[unit]
