"""Writing OME-Zarr images: one level, OME-NGFF 0.4 (Zarr format 2, what the CZ cryoET
Data Portal and copick write), in chunks of :data:`.omezarr.CHUNK` voxels, voxel size and
origin in Å; through zarr 3 or zarr 2 (which copick pins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Geometry
from .omezarr import CHUNK, SPACE_AXES, import_zarr


def _new_group(zarr, path: Path):
    """A new group at ``path`` in Zarr format 2, with zarr 3 (``zarr_format``) or zarr 2
    (which copick pins)."""
    if zarr.__version__.split(".")[0] == "2":
        return zarr.open_group(str(path), mode="w-")
    return zarr.open_group(str(path), mode="w-", zarr_format=2)


def _new_array(group, name: str, shape, chunks, dtype):
    """A new array whose chunks are nested folders (``0/1/2``), recorded in its metadata:
    the layout copick's stores assume, which a reader of ``0.1.2`` keys would miss."""
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    return group.create_dataset(
        name, shape=shape, chunks=chunks, dtype=dtype, dimension_separator="/"
    )


def write_zarr(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    """Write ``data`` ``(z, y, x)`` as a one-level OME-NGFF 0.4 image at ``path`` (a new
    folder), chunked, with the voxel size and origin in Å."""
    with ZarrSlabWriter(path, data.shape, data.dtype, geometry) as writer:
        writer.write(0, data)


def _metadata(geometry: Geometry) -> list[dict]:
    """One-level OME-NGFF 0.4 multiscales metadata with ``geometry`` in Å."""
    transforms = [
        {"type": "scale", "scale": [float(v) for v in geometry.voxel_size]},
        {"type": "translation", "translation": [float(v) for v in geometry.origin]},
    ]
    return [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "angstrom"} for n in SPACE_AXES],
            "datasets": [{"path": "0", "coordinateTransformations": transforms}],
        }
    ]


class ZarrSlabWriter:
    """A new one-level OME-Zarr image written slab by slab along z, as
    :class:`.mrc_writer.MrcSlabWriter` writes an MRC file: the same ``write``, ``mean``
    and ``close``, the metadata written by ``close``. Slabs are gathered into whole rows
    of chunks along z before they are stored, so each chunk is compressed once (a slab of
    a few sections would otherwise recompress every chunk it crosses); slabs that come
    back to a row already stored are written straight through. ``path`` must not exist:
    write to a temporary name and rename it into place."""

    def __init__(self, path: Path, shape, dtype, geometry: Geometry, chunk: int = CHUNK):
        zarr = import_zarr()
        self.path, self.geometry = Path(path), geometry
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._group = _new_group(zarr, self.path)
        chunks = tuple(min(chunk, n) for n in self.shape)
        self._array = _new_array(self._group, "0", self.shape, chunks, dtype)
        self._depth, self._dtype = chunks[0], np.dtype(dtype)
        self._row: int | None = None
        self._buffer: np.ndarray | None = None
        self._stored: set[int] = set()
        self._count, self._total = 0, 0.0

    def write(self, z0: int, slab: np.ndarray) -> None:
        """Store ``slab`` ``(n, y, x)`` as sections ``z0 .. z0 + n``."""
        slab = np.asarray(slab)
        nz, ny, nx = self.shape
        if slab.ndim != 3 or slab.shape[1:] != (ny, nx) or not 0 <= z0 <= nz - len(slab):
            raise ValueError(
                f"{self.path}: a slab of shape {slab.shape} does not fit at z {z0} "
                f"in a volume of shape {self.shape}"
            )
        self._count += slab.size
        self._total += float(slab.sum(dtype=np.float64))
        done = 0
        while done < len(slab):
            z = z0 + done
            row = z // self._depth
            first, last = row * self._depth, min((row + 1) * self._depth, nz)
            part = slab[done : done + last - z]
            done += len(part)
            if row in self._stored:
                self._array[z : z + len(part)] = part
                continue
            if row != self._row:
                self._flush()
                self._row, self._buffer = row, np.zeros((last - first, ny, nx), self._dtype)
            self._buffer[z - first : z - first + len(part)] = part  # type: ignore[index]
            if z + len(part) == last:
                self._flush()

    def _flush(self) -> None:
        if self._buffer is not None and self._row is not None:
            first = self._row * self._depth
            self._array[first : first + len(self._buffer)] = self._buffer
            self._stored.add(self._row)
        self._row, self._buffer = None, None

    @property
    def mean(self) -> float:
        """Mean of every value written so far (0 before the first slab)."""
        return self._total / self._count if self._count else 0.0

    def close(self) -> None:
        """Store the last row of chunks and write the multiscales metadata."""
        self._flush()
        self._group.attrs["multiscales"] = _metadata(self.geometry)

    def __enter__(self) -> ZarrSlabWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
