"""Correction folders, as MemBrain-seg lays them out: ``corrections_dir/<patch name>/Add*,
Remove*, Ignore*`` in any readable format, prefixes matched case-insensitively, any
non-zero voxel marked.

Here are the rules every front end shares: which files of a folder are masks of which
kind, what a newly saved mask is called (``Add<n>.nrrd``, never overwriting), and whether
a mask belongs to its patch (:func:`mask_misfit`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import CORRECTION_KINDS
from ..errors import InputError
from .geometry import Geometry, as_xyz
from .names import warn_links_out
from .readers import VolumeInfo
from .volumes import is_volume_file, volume_stem

KIND_NAMES = {"add": "Add", "remove": "Remove", "ignore": "Ignore"}
"""The file prefix of each correction kind, as MemBrain-seg names them."""
MASK_SUFFIX = ".nrrd"
"""Masks saved here are NRRD: MITK reads them, and their geometry is checked."""


@dataclass
class CorrectionFolder:
    """The masks painted for one patch, by kind, and the files that matched no kind."""

    folder: Path
    masks: dict[str, list[Path]] = field(default_factory=dict)
    unmatched: list[Path] = field(default_factory=list)


def correction_kind(path: Path) -> str | None:
    """``"add"``, ``"remove"`` or ``"ignore"`` from a file name's prefix, else ``None``."""
    name = path.name.lower()
    for kind in CORRECTION_KINDS:
        if name.startswith(kind) and is_volume_file(path):
            return kind
    return None


def scan_corrections(corrections_dir: Path) -> dict[str, CorrectionFolder]:
    """Read the corrections tree: one entry per sub-folder, keyed by the folder's name."""
    corrections_dir = Path(corrections_dir)
    if not corrections_dir.is_dir():
        raise InputError(f"{corrections_dir}: corrections folder not found")
    folders: dict[str, CorrectionFolder] = {}
    for folder in sorted(p for p in corrections_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        entry = CorrectionFolder(folder)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            kind = correction_kind(path)
            if kind is None:
                entry.unmatched.append(path)
            else:
                entry.masks.setdefault(kind, []).append(path)
        # A folder may be named after the patch file itself (``tomo_patch0.nii.gz/``).
        name = volume_stem(folder)
        if name in folders:
            raise InputError(
                f"{folder}: a second corrections folder for patch {name!r} (beside "
                f"{folders[name].folder.name}); keep one"
            )
        folders[name] = entry
    warn_links_out(
        corrections_dir, [m for f in folders.values() for ms in f.masks.values() for m in ms]
    )
    return folders


def stray_files(corrections_dir: Path) -> list[Path]:
    """Files lying directly in the corrections folder, outside any patch folder."""
    return sorted(
        p for p in Path(corrections_dir).iterdir() if p.is_file() and not p.name.startswith(".")
    )


def new_mask_path(folder: Path, kind: str) -> Path:
    """Where a new ``kind`` mask of a patch's correction folder is saved:
    ``<Kind><n>.nrrd``, ``n`` one more than the highest ``<Kind><n>`` there (any case, any
    format), so a save never overwrites."""
    pattern = re.compile(rf"^{kind}(\d+)", re.IGNORECASE)
    existing = Path(folder).iterdir() if Path(folder).is_dir() else ()
    numbers = [int(m.group(1)) for p in existing if (m := pattern.match(p.name))]
    return Path(folder) / f"{KIND_NAMES[kind]}{max(numbers, default=0) + 1}{MASK_SUFFIX}"


@dataclass(frozen=True)
class Misfit:
    """Why a mask does not belong to its patch: ``message`` names both; ``geometry_only``
    when only the header's place differs, so the mask could still be applied voxel by
    voxel."""

    message: str
    geometry_only: bool


def mask_misfit(path: Path, info: VolumeInfo, patch: VolumeInfo) -> Misfit | None:
    """Whether the mask ``path`` (header ``info``) belongs to the patch whose label file
    has header ``patch``: the same shape, and, for NRRD masks, the same origin and
    spacing. ``None`` when it does (or its geometry cannot tell)."""
    if info.shape != patch.shape:
        return Misfit(
            f"{path}: shape x,y,z={tuple(as_xyz(info.shape))} differs from its patch "
            f"{patch.path}: x,y,z={tuple(as_xyz(patch.shape))}",
            geometry_only=False,
        )
    where = _geometry_mismatch(path, info.geometry, patch.geometry)
    return None if where is None else Misfit(where, geometry_only=True)


def _geometry_mismatch(
    path: Path, geometry: Geometry | None, patch_geometry: Geometry | None
) -> str | None:
    """``"<path>: origin/spacing … differ from its patch's …"`` when the correction mask
    ``path`` (of header ``geometry``) does not lie where its patch does; ``None`` when it
    does or cannot tell. Only NRRD masks are checked: painting tools write their geometry
    faithfully, while NIfTI/MRC masks from other tools often carry a default one."""
    if (
        geometry is None
        or patch_geometry is None
        or not path.name.lower().endswith((".nrrd", ".nhdr"))
        or geometry.agrees_with(patch_geometry)
    ):
        return None
    return (
        f"{path}: origin/spacing {_describe(geometry)} differ from its patch's "
        f"{_describe(patch_geometry)}"
    )


def _describe(geometry: Geometry) -> str:
    spacing = ",".join(f"{v:g}" for v in as_xyz(geometry.voxel_size))
    origin = ",".join(f"{v:g}" for v in as_xyz(geometry.origin))
    return f"(spacing {spacing}; origin {origin})"
