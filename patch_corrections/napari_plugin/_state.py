"""What the "Patch corrections" widget keeps between clicks, without Qt or napari.

The patch being painted (:class:`OpenPatch`): its label patch, geometry and the masks
already saved for it, read by the rules ``merge_corrections`` applies; the merged preview
of what is painted; and saving the painted masks where ``merge_corrections`` reads them.
Beside it, what the widget derives from its fields and an opened extraction folder: the
patch list's lines, the patches that are corrected, the tomogram's geometry and the
voxels at clicked points, and the settings Extract and Retrain run with. Every array is
``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import BORDER_WIDTH, CORRECTION_KINDS, PATCH_SIZE
from ..errors import InputError, collect_warnings
from ..io.correction_folders import KIND_NAMES, mask_misfit, new_mask_path, scan_corrections
from ..io.geometry import Geometry, as_xyz, geometry_or_unit
from ..io.manifest import Padding
from ..io.patch_folders import LabelPatch
from ..io.readers import VolumeInfo
from ..io.volumes import read_info, read_volume, write_volume
from ..labels.corrections import merge_labels, union_mask
from ..workflows import ExtractSettings


@dataclass
class SavedMasks:
    """What one save wrote into a patch's correction ``folder``.

    ``notes`` say what a save cannot do (erased voxels stay in files saved before);
    ``failure`` is the one-line reason a save stopped, after writing ``written``.
    """

    folder: Path
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass
class OpenPatch:
    """The patch being painted: its files, labels, geometry and what is saved for it."""

    patch: LabelPatch
    base: np.ndarray
    """The network's label patch ``(z, y, x)``."""
    geometry: Geometry
    """Where its voxels sit (1 Å voxels when its header has no voxel size)."""
    border: int
    padding: Padding | None
    saved: dict[str, np.ndarray]
    """Per kind, the union ``(z, y, x)`` of the masks already saved for the patch."""

    @classmethod
    def read(cls, patch: LabelPatch, corrections_dir: Path) -> tuple[OpenPatch, list[str]]:
        """Open ``patch`` with the masks saved for it in ``corrections_dir``.

        Returns
        -------
        opened
            The patch, its saved masks preloaded.
        problems
            One line per thing the user should know: a saved mask that does not belong to
            the patch (not loaded), a header without voxel size.

        Raises
        ------
        InputError
            If the label patch, the corrections folder or a fitting mask cannot be read.
        """
        with collect_warnings() as warned:
            base, info = read_volume(patch.label)
            geometry = geometry_or_unit(
                info.geometry, patch.label, "its layers are placed and its masks saved"
            )
            saved, misfits = _saved_masks(patch.name, info, Path(corrections_dir))
        record = patch.record
        opened = cls(
            patch=patch,
            base=base,
            geometry=geometry,
            border=record.border if record and record.border is not None else BORDER_WIDTH,
            padding=record.padding if record else None,
            saved=saved,
        )
        return opened, [*warned, *misfits]

    def unsaved(self, painted: dict[str, np.ndarray]) -> bool:
        """Whether the ``painted`` masks (by kind) hold voxels no saved mask holds."""
        return any((painted[kind] & ~self.saved[kind]).any() for kind in CORRECTION_KINDS)

    def opened_line(self) -> str:
        """What the status line says once the patch is open."""
        saved = sum(int(m.any()) for m in self.saved.values())
        return f"{self.patch.name}: paint into Add, Remove and Ignore, then Save masks." + (
            f" Loaded the saved masks of {saved} kind(s)." if saved else ""
        )

    def marked(self, painted: np.ndarray) -> np.ndarray:
        """The voxels ``(z, y, x)`` marked in a painted layer's data (any non-zero label)."""
        return union_mask([np.asarray(painted)], self.base.shape)

    def preview(self, painted: dict[str, np.ndarray]) -> np.ndarray:
        """The labels ``merge_corrections`` will write for the ``painted`` masks (by kind):
        Remove, then Add, then Ignore, then the border band and any padding."""
        merged, _ = merge_labels(
            self.base,
            add=painted["add"],
            remove=painted["remove"],
            ignore=painted["ignore"],
            border=self.border,
            padding=self.padding,
        )
        return merged

    def save(self, corrections_dir: Path, painted: dict[str, np.ndarray]) -> SavedMasks:
        """Write each ``painted`` mask (by kind) that holds new voxels as
        ``<corrections_dir>/<patch>/<Kind><n>.nrrd`` (n: the next free number) with the
        patch's geometry; never overwrites."""
        result = SavedMasks(Path(corrections_dir) / self.patch.name)
        try:
            for kind in CORRECTION_KINDS:
                self._save_kind(kind, painted[kind], result)
        except (InputError, OSError) as exc:
            result.failure = str(exc)
        return result

    def _save_kind(self, kind: str, mask: np.ndarray, result: SavedMasks) -> None:
        saved = self.saved[kind]
        erased = int(np.count_nonzero(saved & ~mask))
        if erased:
            result.notes.append(
                f"{erased} voxel(s) erased from {KIND_NAMES[kind]} stay marked in the files "
                f"saved before in {result.folder} (never overwritten: delete a file there to "
                "drop its strokes)."
            )
        if not (mask & ~saved).any():
            return
        result.folder.mkdir(parents=True, exist_ok=True)
        path = new_mask_path(result.folder, kind)
        write_volume(path, mask.astype(np.uint8), self.geometry)
        self.saved[kind] = saved | mask
        result.written.append(path)


def _saved_masks(
    name: str, patch_info: VolumeInfo, corrections_dir: Path
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per kind, the union of the masks saved for patch ``name`` that belong to it, and a
    line for each one that does not (or cannot be read)."""
    folders = scan_corrections(corrections_dir) if corrections_dir.is_dir() else {}
    entry = folders.get(name)
    saved = {kind: np.zeros(patch_info.shape, dtype=bool) for kind in CORRECTION_KINDS}
    problems: list[str] = []
    for kind, paths in (entry.masks if entry else {}).items():
        accepted = []
        for path in paths:
            problem = _misfit_line(path, patch_info)
            if problem:
                problems.append(problem)
            else:
                accepted.append(read_volume(path)[0])
        saved[kind] = union_mask(accepted, patch_info.shape)
    return saved, problems


def _misfit_line(path: Path, patch_info: VolumeInfo) -> str | None:
    """Why the saved mask ``path`` is not loaded onto its patch; ``None`` when it is."""
    try:
        info = read_info(path)
    except InputError as exc:
        return str(exc)
    misfit = mask_misfit(path, info, patch_info)
    return None if misfit is None else f"{misfit.message}; not loaded (painted on another patch?)."


def corrected_names(corrections_dir: Path) -> set[str]:
    """The patches with at least one mask saved in ``corrections_dir`` (none when it does
    not exist)."""
    if not Path(corrections_dir).is_dir():
        return set()
    return {
        name
        for name, entry in scan_corrections(Path(corrections_dir)).items()
        if any(entry.masks.values())
    }


def patch_line(patch: LabelPatch, corrected: bool) -> str:
    """A patch list entry: name, centre ``x, y, z`` when recorded, and whether corrected."""
    centre = patch.record.centre if patch.record else None
    where = f"  centre {', '.join(map(str, as_xyz(centre)))}" if centre else ""
    return f"{patch.name}{where}{'  ✔ corrected' if corrected else ''}"


def point_centres(positions: np.ndarray, geometry: Geometry) -> list[tuple[float, ...]]:
    """The tomogram voxels ``x, y, z`` (rounded) at world positions ``(n, 3)`` ``(z, y, x)``
    in Å, as ``extract_patches`` takes points."""
    return [
        tuple(float(v) for v in as_xyz(np.round(geometry.index_of(position))))
        for position in positions
    ]


def extract_settings(patches: list[LabelPatch]) -> ExtractSettings:
    """Settings to cut more patches like an extraction folder's: its first recorded
    patch's edge and border width, else 160 and 16."""
    record = patches[0].record if patches else None
    if record is None:
        return ExtractSettings(patch_size=PATCH_SIZE, border=BORDER_WIDTH)
    border = record.border if record.border is not None else BORDER_WIDTH
    return ExtractSettings(patch_size=int(as_xyz(record.size)[0]), border=int(border))


def crop_size(patches: list[LabelPatch]) -> int:
    """Training crops for Retrain: the default crop, no larger than the smallest patch."""
    sizes = [min(p.record.size) if p.record else PATCH_SIZE for p in patches]
    return min([PATCH_SIZE, *sizes])


def tomogram_geometry(text: str) -> tuple[Path, Geometry, list[str]]:
    """The tomogram named ``text`` in the Tomogram field, its geometry, and a line for the
    user if its header has no voxel size (1 Å is used)."""
    if not text.strip():
        raise InputError("give the tomogram to cut patches from (Tomogram field)")
    tomogram = Path(text.strip())
    with collect_warnings() as warned:
        geometry = geometry_or_unit(read_info(tomogram).geometry, tomogram, "points are placed")
    return tomogram, geometry, warned
