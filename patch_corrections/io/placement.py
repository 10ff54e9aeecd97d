"""Where a patch file lies in a full-size volume: by its header's origin and voxel size on
the volume's grid, checked against (and, where the volume sits elsewhere in space than
the tomogram, replaced by) the voxel offset its extraction manifest records."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, warn
from .geometry import Geometry, Index3, PatchBox, Triple, xyz_text
from .manifest import PatchRecord
from .readers import VolumeInfo
from .volumes import read_info

_GRID_TOLERANCE = 0.05
"""How far (in voxels) a patch origin may sit from the target's voxel grid: headers store
origins as float32."""


@dataclass(frozen=True)
class Placement:
    """One patch and where it lies in the target: ``box.offset`` ``(z, y, x)`` of its first
    voxel (negative where it starts before the target), ``placed_by`` what said so
    (``header``, ``manifest`` or ``header+manifest``)."""

    name: str
    label: Path
    box: PatchBox
    placed_by: str


def place_patch(
    name: str,
    label: Path,
    target: VolumeInfo,
    record: PatchRecord | None,
    manifest: Path | None,
) -> Placement:
    """Where patch ``label`` lies in ``target``, from its header and the manifest's record,
    each checked against the other; ``InputError`` naming both files when they do not fit."""
    info = read_info(label)
    here, there = info.geometry, target.geometry
    header: Index3 | None = None
    if here is not None and there is not None:
        if not np.allclose(here.voxel_size, there.voxel_size, rtol=1e-3, atol=0):
            raise InputError(
                f"{label}: voxel size x,y,z={xyz_text(here.voxel_size)} Å differs from "
                f"{target.path}'s {xyz_text(there.voxel_size)} Å; paste into the segmentation "
                "of the tomogram the patch was cut from"
            )
        exact = there.index_of(here.origin)
        header = tuple(round(e) for e in exact)  # type: ignore[assignment]
        if any(abs(e - i) > _GRID_TOLERANCE for e, i in zip(exact, header)):  # type: ignore[arg-type]
            raise InputError(
                f"{label}: origin x,y,z={xyz_text(here.origin)} Å is not on {target.path}'s "
                f"voxel grid (origin {xyz_text(there.origin)} Å, voxel size "
                f"{xyz_text(there.voxel_size)} Å): it would start at voxel "
                f"x,y,z={xyz_text(exact, '.2f')}"
            )
    if record is None:
        if header is None:
            missing = label if here is None else target.path
            raise InputError(
                f"{missing}: no voxel size in its header, so {label} cannot be placed in "
                f"{target.path}; give --patches-dir (the extract_patches folder, whose "
                "manifest records each patch's offset)"
            )
        return Placement(name, label, PatchBox(header, info.shape), "header")
    assert manifest is not None
    _check_record(name, label, info, target, record, manifest)
    box = PatchBox(record.offset, record.size)
    if header is None:
        warn(
            f"{target.path if target.geometry is None else label}: no voxel size in its "
            f"header; {name} placed by the offset {manifest} records"
        )
        return Placement(name, label, box, "manifest")
    if header != record.offset:
        # The patch is the one recorded, so its offset in the tomogram is right: the target
        # sits elsewhere in space than the tomogram (another tool's header).
        warn(
            f"{target.path}: origin x,y,z={xyz_text(target.geometry.origin)} Å differs from that "  # type: ignore[union-attr]
            f"of the tomogram the patches were cut from; {name} placed at the voxel offset "
            f"{manifest} records (x,y,z={xyz_text(record.offset)}), not by its header "
            f"(x,y,z={xyz_text(header)})"
        )
        return Placement(name, label, box, "manifest")
    return Placement(name, label, box, "header+manifest")


def _check_record(
    name: str, label: Path, info: VolumeInfo, target: VolumeInfo, record: PatchRecord, manifest
) -> None:
    """``InputError`` unless the patch file ``label`` is the one ``record`` describes, cut
    from a tomogram of ``target``'s shape."""
    if record.size != info.shape:
        raise InputError(
            f"{label}: shape x,y,z={xyz_text(info.shape)} differs from its record in {manifest} "
            f"(size x,y,z={xyz_text(record.size)}); was it merged from another cut of that name?"
        )
    shape = record.tomogram_shape
    if shape is not None and shape != target.shape:
        raise InputError(
            f"{target.path}: shape x,y,z={xyz_text(target.shape)} differs from the tomogram "
            f"{name} was cut from ({manifest}: x,y,z={xyz_text(shape)}); paste into that "
            "tomogram's segmentation"
        )
    recorded, geometry = record.geometry, info.geometry
    if recorded is not None and geometry is not None and not geometry.agrees_with(recorded):
        raise InputError(
            f"{label}: origin/voxel size x,y,z={xyz_text(geometry.origin)} / "
            f"{xyz_text(geometry.voxel_size)} Å differ from its record in {manifest} "
            f"({xyz_text(recorded.origin)} / {xyz_text(recorded.voxel_size)} Å); was it merged "
            "from another cut of that name?"
        )


def check_offsets(records: list[PatchRecord], manifest: Path) -> None:
    """``InputError`` when a record's voxel offset disagrees with its own origin: an edited
    or stale manifest would move that patch's corrections with no other sign.

    The tomogram's origin is read from the tomogram the record names, where it can be
    read (the same shape and voxel size); otherwise the records of one tomogram must imply
    the same origin (the one most of them imply).
    """
    placed = [r for r in records if r.geometry is not None]
    headers: dict[str, Geometry | None] = {}
    unchecked: dict[tuple, list[PatchRecord]] = {}
    for record in placed:
        read = _tomogram_geometry(record, headers)
        if read is not None:
            _refuse_if_apart(record, read, f"in {record.tomogram}", manifest)
            continue
        key = (record.tomogram, record.tomogram_shape, record.geometry.voxel_size)  # type: ignore[union-attr]
        unchecked.setdefault(key, []).append(record)
    for group in unchecked.values():
        starts = Counter(_rounded(_tomogram_origin(r), r) for r in group)
        if len(starts) < 2:
            continue
        (common, most), (_, next_most) = starts.most_common(2)
        if most == next_most:
            raise InputError(
                f"{manifest}: the records of {', '.join(r.name for r in group)} disagree on "
                f"where {group[0].tomogram} starts (offset_xyz against origin_xyz), and no "
                "majority says which is right (was the manifest edited?): restore the "
                "manifest, or extract the patches again"
            )
        geometry = Geometry(group[0].geometry.voxel_size, common)  # type: ignore[union-attr]
        where = f"by the tomogram origin most records of {group[0].tomogram} imply"
        for record in group:
            _refuse_if_apart(record, geometry, where, manifest)


def _tomogram_origin(record: PatchRecord) -> Triple:
    """Where the record's tomogram starts (Å, ``(z, y, x)``): its origin less its offset."""
    geometry = record.geometry
    assert geometry is not None
    return geometry.position_of(tuple(-i for i in record.offset))


def _rounded(origin: Triple, record: PatchRecord) -> Triple:
    """``origin`` to a tenth of a voxel, so that float32 headers compare equal."""
    voxel = record.geometry.voxel_size  # type: ignore[union-attr]
    return tuple(round(o / v, 1) * v for o, v in zip(origin, voxel))  # type: ignore[return-value]


def _tomogram_geometry(record: PatchRecord, headers: dict[str, Geometry | None]):
    """The geometry of the tomogram ``record`` names, where its file can be read and is
    that tomogram (its shape and voxel size); ``None`` otherwise."""
    path = record.tomogram
    if path is None:
        return None
    if path not in headers:
        headers[path] = None
        try:
            if os.path.isfile(path):
                info = read_info(Path(path))
                if record.tomogram_shape in (None, info.shape):
                    headers[path] = info.geometry
        except (InputError, OSError):
            pass
    geometry = headers[path]
    if geometry is None or not np.allclose(
        geometry.voxel_size,
        record.geometry.voxel_size,
        rtol=1e-3,
        atol=0,  # type: ignore[union-attr]
    ):
        return None
    return geometry


def _refuse_if_apart(record: PatchRecord, tomogram: Geometry, where: str, manifest) -> None:
    assert record.geometry is not None
    exact = tomogram.index_of(record.geometry.origin)
    if all(abs(e - i) <= _GRID_TOLERANCE for e, i in zip(exact, record.offset)):
        return
    raise InputError(
        f"{manifest}: {record.name} is recorded at the offset x,y,z={xyz_text(record.offset)}, "
        f"but its origin x,y,z={xyz_text(record.geometry.origin)} Å puts it at "
        f"x,y,z={xyz_text(exact, '.4g')} {where}; a patch's records must agree (was the "
        "manifest edited?): restore the manifest, or extract the patch again"
    )
