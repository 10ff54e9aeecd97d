"""Where a patch file lies in a full-size volume: by its header's origin and voxel size on
the volume's grid, checked against (and, where the volume sits elsewhere in space than
the tomogram, replaced by) the voxel offset its extraction manifest records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, warn
from .geometry import Index3, PatchBox, xyz_text
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
