"""The extraction manifest: one JSON file that records every patch of an output folder.

Per patch it keeps the name, the source files, the centre, offset and size (all ``x, y, z``,
as users speak), voxel size and origin in Å, and the padding, so patches and corrections can
be traced back to, and pasted back into, their tomogram. :func:`load_manifest` gives the
entries as written (an extraction writes the others back unchanged); every reader of a
patch's place uses the typed :class:`PatchRecord` of :func:`read_records`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..constants import MANIFEST_NAME
from ..errors import InputError, warn
from .geometry import Geometry, Index3, as_xyz, from_xyz
from .names import inside, is_plain_name
from .staging import write_text_atomic

MANIFEST_VERSION = 1
_REQUIRED = ("name", "image", "label", "offset_xyz", "size_xyz")

Padding = tuple[tuple[int, int], ...]
"""Voxels ``(before, after)`` per axis ``(z, y, x)``."""


def padding_zyx(entry: dict) -> Padding | None:
    """An entry's ``padding_xyz`` (manifest or merge summary) as ``(before, after)`` per
    axis ``(z, y, x)``; ``None`` when it records none."""
    padding = entry.get("padding_xyz")
    return tuple((int(b), int(a)) for b, a in padding[::-1]) if padding else None


@dataclass(frozen=True)
class PatchRecord:
    """One patch of an extraction manifest, every per-axis value ``(z, y, x)``.

    Attributes
    ----------
    name
        The patch name, a plain file name (``<token>_patchNNN``).
    image, label
        The patch files, inside the extraction folder.
    offset, size
        The tomogram index of the patch's first voxel (negative where it starts before the
        tomogram) and the patch's shape.
    centre
        The tomogram index the patch was cut around.
    tomogram, segmentation
        The files it was cut from, as recorded (absolute paths of the machine that cut it).
    tomogram_shape
        The shape of that tomogram.
    geometry
        The patch's voxel size and origin (its first voxel's position), in Å.
    padding
        Voxels that lay outside the tomogram.
    border
        Width of the ignore band it was cut with.
    intensity_statistics
        The tomogram's intensity statistics per normalisation (see
        :func:`patch_corrections.inference.intensity.tomogram_statistics`).
    label_threshold
        Segmentation values above it were membrane (``None``: not recorded).
    membrane_share
        The share of the whole segmentation that is membrane (by ``label_threshold``),
        estimated from slices spread through it (``None``: not recorded).
    """

    name: str
    image: Path
    label: Path
    offset: Index3
    size: Index3
    centre: Index3 | None = None
    tomogram: str | None = None
    segmentation: str | None = None
    tomogram_shape: Index3 | None = None
    geometry: Geometry | None = None
    padding: Padding | None = None
    border: int | None = None
    intensity_statistics: dict | None = None
    label_threshold: float | None = None
    membrane_share: float | None = None

    @classmethod
    def from_entry(cls, entry: dict, folder: Path) -> PatchRecord:
        """The record of a manifest entry (checked by :func:`load_manifest`);
        ``ValueError`` or ``TypeError`` when a value is malformed."""
        optional = {key: entry.get(key) for key in ("centre_xyz", "tomogram_shape_xyz")}
        voxel, origin = entry.get("voxel_size_xyz"), entry.get("origin_xyz")
        border = entry.get("border")
        return cls(
            name=entry["name"],
            image=(Path(folder) / entry["image"]).resolve(),
            label=(Path(folder) / entry["label"]).resolve(),
            offset=from_xyz(entry["offset_xyz"]),
            size=from_xyz(entry["size_xyz"]),
            centre=None if optional["centre_xyz"] is None else from_xyz(optional["centre_xyz"]),
            tomogram=_text(entry.get("tomogram")),
            segmentation=_text(entry.get("segmentation")),
            tomogram_shape=(
                None
                if optional["tomogram_shape_xyz"] is None
                else from_xyz(optional["tomogram_shape_xyz"])
            ),
            geometry=(
                None
                if voxel is None or origin is None
                else Geometry(from_xyz(voxel, float), from_xyz(origin, float))
            ),
            padding=padding_zyx(entry),
            border=None if border is None else int(border),
            intensity_statistics=_mapping(entry.get("intensity_statistics")),
            label_threshold=_number(entry.get("label_threshold")),
            membrane_share=_share(entry.get("segmentation_membrane_share")),
        )

    def cut_from(self, tomogram: Path, shape: Index3) -> bool:
        """Whether this patch was cut from ``tomogram`` (of ``shape``): the file recorded
        is this one, or (moved since) has its name, and the recorded shape is ``shape``."""
        if self.tomogram_shape is not None and self.tomogram_shape != shape:
            return False
        if self.tomogram is None:
            return self.tomogram_shape is not None
        try:
            return os.path.samefile(self.tomogram, tomogram)
        except OSError:  # moved or on another machine
            return Path(self.tomogram).name == Path(tomogram).name


def source_of(record: PatchRecord | None) -> dict | None:
    """Where ``record``'s patch lies in the tomogram it was cut from, for a merge summary
    row (per-axis values ``x, y, z``); ``None`` unless the manifest recorded the files."""
    if record is None or not (record.tomogram and record.segmentation):
        return None
    if record.tomogram_shape is None:
        return None
    return {
        "tomogram": record.tomogram,
        "segmentation": record.segmentation,
        "offset_xyz": as_xyz(record.offset),
        "size_xyz": as_xyz(record.size),
        "tomogram_shape_xyz": as_xyz(record.tomogram_shape),
        "label_threshold": record.label_threshold,
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    finite = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if finite and math.isfinite(value) else None


def _share(value: object) -> float | None:
    share = _number(value)
    return share if share is not None and 0 <= share <= 1 else None


def _mapping(value: object) -> dict | None:
    return value if isinstance(value, dict) else None


def manifest_path(folder: Path) -> Path:
    """Where the manifest of an extraction folder lives."""
    return Path(folder) / MANIFEST_NAME


def load_manifest(folder: Path) -> list[dict]:
    """The patch entries of ``folder``'s manifest, as written; empty without a manifest.

    Raises
    ------
    InputError
        For a manifest that is not one, an entry that lacks a required field or holds a
        malformed value, a name that is not a plain file name, or a path outside
        ``folder``.
    """
    path = manifest_path(folder)
    if not path.exists():
        return []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid manifest ({exc}); move it aside") from None
    entries = content.get("patches") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path}: not a patch manifest (no 'patches' list)")
    for index, entry in enumerate(entries):
        _check_entry(path, folder, index, entry)
    return entries


def _check_entry(path: Path, folder: Path, index: int, entry: object) -> None:
    missing = [k for k in _REQUIRED if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise InputError(f"{path}: patch entry {index} lacks {', '.join(missing)}")
    assert isinstance(entry, dict)
    # Names become file names and paths are read, written and deleted: a hand-edited or
    # downloaded manifest must not reach outside its folder.
    if not is_plain_name(entry["name"]):
        raise InputError(
            f"{path}: patch entry {index} has the name {entry['name']!r}; a patch name "
            "must be a plain file name"
        )
    for key in ("image", "label"):
        if not inside(folder, entry[key]):
            raise InputError(
                f"{path}: patch {entry['name']!r} names the {key} {entry[key]!r}, "
                "outside the folder; the manifest may only name files inside it"
            )
    try:
        PatchRecord.from_entry(entry, folder)
    except (TypeError, ValueError, IndexError) as exc:
        field = _unreadable_field(entry, folder)
        raise InputError(
            f"{path}: patch {entry['name']!r} has an unreadable {field} ({exc}); correct it "
            "or move the manifest aside"
        ) from None


def _unreadable_field(entry: dict, folder: Path) -> str:
    """The first field of ``entry`` without which its record reads (for the error line)."""
    for key in entry:
        if key in _REQUIRED:
            continue
        try:
            PatchRecord.from_entry({k: v for k, v in entry.items() if k != key}, folder)
        except (TypeError, ValueError, IndexError):
            continue
        return repr(key)
    return "offset_xyz or size_xyz"


def read_records(folder: Path) -> list[PatchRecord]:
    """The patches of ``folder``'s manifest as typed records; empty without a manifest."""
    return [PatchRecord.from_entry(entry, folder) for entry in load_manifest(folder)]


def records_cut_from(folder: Path, tomogram: Path, shape: Index3) -> list[PatchRecord]:
    """The records of ``folder``'s manifest whose patches were cut from ``tomogram`` (of
    ``shape``); a warning when the manifest holds patches but none of them."""
    path = manifest_path(folder)
    if not path.is_file():
        raise InputError(
            f"--exclude-manifest {folder}: no {path.name} in it; give an extract_patches "
            "output folder"
        )
    records = read_records(folder)
    cut = [r for r in records if r.cut_from(tomogram, shape)]
    if records and not cut:
        warn(
            f"{path}: none of its {len(records)} patches was cut from {tomogram}; nothing is "
            "excluded"
        )
    return cut


def new_entry(
    name: str,
    files: tuple[str, str],
    sources: dict[str, str],
    centre: Index3,
    offset: Index3,
    size: Index3,
    tomogram_shape: Index3,
    geometry: Geometry,
    padding: Padding,
    **extra,
) -> dict:
    """The manifest entry of a patch cut now: ``files`` (image, label) relative to the
    folder, ``sources`` (tomogram, segmentation), every per-axis value given ``(z, y, x)``
    and written ``x, y, z``; ``extra`` fields follow them as they are."""
    return {
        "name": name,
        "image": files[0],
        "label": files[1],
        **sources,
        "centre_xyz": as_xyz(centre),
        **{k: extra.pop(k) for k in ("centre_given", "centre_source") if k in extra},
        "offset_xyz": as_xyz(offset),
        "size_xyz": as_xyz(size),
        "tomogram_shape_xyz": as_xyz(tomogram_shape),
        "voxel_size_xyz": as_xyz(geometry.voxel_size),
        "origin_xyz": as_xyz(geometry.origin),
        "padding_xyz": as_xyz(padding),
        **extra,
    }


def manifest_text(entries: list[dict]) -> str:
    """The manifest file's content for ``entries``."""
    content = {
        "format_version": MANIFEST_VERSION,
        "written_by": f"patch_corrections {__version__}",
        "axis_order": "x, y, z (voxel indices, 0-based); voxel_size and origin in Å",
        "patches": entries,
    }
    return json.dumps(content, indent=2) + "\n"


def save_manifest(folder: Path, entries: list[dict]) -> Path:
    """Write the manifest atomically and return its path."""
    path = manifest_path(folder)
    write_text_atomic(path, manifest_text(entries))
    return path
