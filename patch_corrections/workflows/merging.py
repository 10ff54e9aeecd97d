"""Merging: Add / Remove / Ignore masks applied to label patches, written as training pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import (
    BORDER_WIDTH,
    CORRECTION_KINDS,
    MERGE_SUMMARY_NAME,
    TRAIN_IMAGE_SUFFIX,
    TRAIN_IMAGES_SUBDIR,
    TRAIN_LABELS_SUBDIR,
)
from ..corrections import merge_labels, require_label_values, union_mask
from ..errors import InputError
from ..io.files import StagedFiles
from ..io.folders import LabelPatch, find_label_patches, scan_corrections, stray_files
from ..io.manifest import as_xyz, padding_zyx
from ..io.volumes import (
    Geometry,
    output_path,
    read_info,
    read_volume,
    volume_suffix,
    write_volume,
)
from ..patches import fill_nonfinite
from ..previews import PREVIEWS_SUBDIR, merge_preview, require_matplotlib
from ..sparse import AXES, parse_slices, slices_mask
from ._common import (
    check_format,
    collect_warnings,
    merged_rows,
    require_free,
    tracked,
    warn,
    writing_into,
)
from .events import SILENT, Listener
from .extraction import preview_path


@dataclass(frozen=True)
class MergeSettings:
    """How corrections are merged.

    Attributes
    ----------
    border
        Ignore band width; default: the manifest's, else 16.
    format
        File format of the training pairs: ``nii.gz``, ``nrrd`` or ``mrc``.
    include_uncorrected
        Also write patches that have no corrections folder, as they are.
    sparse
        Start every patch as all ignore, so only the Add (membrane) and Remove (background)
        strokes, and ``keep_slices``, are labels.
    keep_slices
        With ``sparse``, keep the patch's labels on these slices, e.g. ``"z=40,80,100-110"``
        (patch voxel indices; one entry per axis).
    ignore_geometry
        Merge an NRRD mask whose origin or spacing differs from its patch's by voxel
        index, with a warning; without it that is an error (the mask was most likely
        painted on another patch of the same name, e.g. before ``extract_patches
        --overwrite`` cut a new one).
    overwrite
        Replace existing training pairs (and their previews).
    preview
        Also draw each merged patch as ``previews/<name>.png``: the xy, xz and yz slices
        through its centre, image, network labels and merged labels with the painted Add,
        Remove and Ignore voxels in their own colours (needs matplotlib).
    """

    border: int | None = None
    format: str = "nii.gz"
    include_uncorrected: bool = False
    sparse: bool = False
    keep_slices: tuple[str, ...] = ()
    ignore_geometry: bool = False
    overwrite: bool = False
    preview: bool = False

    def __post_init__(self) -> None:
        if self.border is not None and self.border < 0:
            raise InputError(f"--border must be 0 or more, got {self.border}")
        if self.keep_slices and not self.sparse:
            raise InputError(
                "--keep-slices chooses what a --sparse merge keeps; add --sparse (without "
                "it every slice is kept)"
            )
        check_format(self.format)
        if self.preview:
            require_matplotlib()


@dataclass(frozen=True)
class MergeReport:
    """What a merge wrote, and what it found but did not use."""

    out_dir: Path
    summary: Path
    rows: list[dict]
    """One row per patch written, as in ``merge_summary.json``."""
    uncorrected: list[str]
    folders_without_patch: list[str]
    unmatched_files: list[Path]
    corrections_dir: Path
    settings: MergeSettings
    warnings: list[str]
    previews: list[Path] = field(default_factory=list)
    """The PNG previews written (``settings.preview``), one per patch merged."""


def merge_corrections(
    labels_dir: Path,
    corrections_dir: Path,
    out_dir: Path,
    images_dir: Path | None = None,
    *,
    settings: MergeSettings = MergeSettings(),
    listener: Listener = SILENT,
) -> MergeReport:
    """Merge the masks of ``corrections_dir/<patch>/`` into the label patches of ``labels_dir``.

    Precedence is MemBrain-seg's: Remove, then Add, then Ignore, then the border band;
    voxels that were padding stay ignore.

    Parameters
    ----------
    labels_dir
        An extraction folder, its ``labels/``, or any folder of label patches.
    images_dir
        Image patches named like the labels (or ``<name>_0000``); default: the manifest's.

    Returns
    -------
    MergeReport
        Training pairs in ``out_dir/imagesTr`` and ``labelsTr``, summed up in
        ``merge_summary.json``; with ``settings.preview`` their previews
        (``previews/<name>.png``, not in the summary).
    """
    labels_dir, corrections_dir, out_dir = Path(labels_dir), Path(corrections_dir), Path(out_dir)
    with collect_warnings() as warned, writing_into(out_dir):
        patches = find_label_patches(labels_dir, images_dir)
        if not patches:
            raise InputError(f"{labels_dir}: no label patches found")
        folders = scan_corrections(corrections_dir)
        names = {p.name for p in patches}
        orphans = sorted(set(folders) - names)
        uncorrected = [p.name for p in patches if p.name not in folders]
        chosen = [p for p in patches if p.name in folders or settings.include_uncorrected]
        if not any(p.name in folders for p in patches) and not settings.include_uncorrected:
            example = patches[0].name
            raise InputError(
                f"{corrections_dir}: no folder matches a patch of {labels_dir}; name each "
                f"folder after its patch, e.g. {corrections_dir / example}"
            )
        plans = [
            _plan_merge(p, folders.get(p.name), out_dir, settings, images_dir) for p in chosen
        ]
        require_free(
            [path for plan in plans for path in (*plan.outputs, *plan.previews)],
            settings.overwrite,
        )
        # An --overwrite run without --preview leaves no preview of an earlier merge that
        # would show other labels than the ones it writes.
        stale = []
        if settings.overwrite and not settings.preview:
            stale = [preview_path(out_dir, plan.patch.name) for plan in plans]
            stale = [path for path in stale if path.exists()]

        staged = StagedFiles()
        try:
            staged.make_dirs(out_dir / TRAIN_IMAGES_SUBDIR, out_dir / TRAIN_LABELS_SUBDIR)
            if settings.preview:
                staged.make_dirs(out_dir / PREVIEWS_SUBDIR)
            rows = [
                _merge_one(plan, staged)
                for plan in tracked(plans, "Merging corrections", listener)
            ]
        except BaseException:
            staged.discard()
            raise
        unmatched = stray_files(corrections_dir)
        for entry in folders.values():
            unmatched.extend(entry.unmatched)
        summary = {
            "patches": merged_rows(out_dir / MERGE_SUMMARY_NAME, rows),
            "uncorrected": uncorrected,
            "folders_without_patch": orphans,
            "unmatched_files": [str(f) for f in unmatched],
        }
        # The files, then the summary, recorded first so that a killed run is finished
        # by the next one.
        staged.commit(
            out_dir,
            {out_dir / MERGE_SUMMARY_NAME: json.dumps(summary, indent=2) + "\n"},
            remove=stale,
        )
    return MergeReport(
        out_dir,
        out_dir / MERGE_SUMMARY_NAME,
        rows,
        uncorrected,
        orphans,
        unmatched,
        corrections_dir,
        settings,
        warned,
        [path for plan in plans for path in plan.previews],
    )


@dataclass
class _MergePlan:
    """One patch's inputs and outputs, checked by their headers before anything is written."""

    patch: LabelPatch
    masks: dict[str, list[Path]]
    border: int
    padding: tuple[tuple[int, int], ...] | None
    outputs: tuple[Path, Path]
    corrected: bool
    shape: tuple[int, int, int]
    sparse: bool = False
    keep_slices: dict[str, list[int]] = field(default_factory=dict)
    """Axis name -> slice indices kept by a sparse merge."""
    previews: tuple[Path, ...] = ()
    """Where this patch's preview goes (none without ``settings.preview``)."""


def _keep_slices(specs: tuple[str, ...], shape, source: Path) -> dict[str, list[int]]:
    """``keep_slices`` settings as axis name -> sorted indices, checked against ``shape``."""
    kept: dict[str, set[int]] = {}
    for spec in specs:
        try:
            axis, indices = parse_slices(spec, shape)
        except ValueError as exc:
            raise InputError(f"--keep-slices {spec}: {exc} ({source})") from None
        kept.setdefault("zyx"[axis], set()).update(indices)
    return {name: sorted(indices) for name, indices in kept.items()}


def _check_same_shape(path: Path, reference: Path, shape, expected) -> None:
    if shape != expected:
        raise InputError(
            f"{path}: shape x,y,z={tuple(as_xyz(shape))} differs from its patch {reference}: "
            f"x,y,z={tuple(as_xyz(expected))}"
        )


def _plan_merge(
    patch: LabelPatch, folder, out_dir: Path, settings: MergeSettings, images_dir: Path | None
) -> _MergePlan:
    label_info = read_info(patch.label)
    if patch.image is None or not patch.image.exists():
        where = f"in {images_dir}" if images_dir else "(no manifest names it)"
        raise InputError(
            f"{patch.label}: no image patch found {where}; pass --images-dir "
            "with images named like the labels or <name>_0000"
        )
    image_info = read_info(patch.image)
    _check_same_shape(patch.image, patch.label, image_info.shape, label_info.shape)
    masks: dict[str, list[Path]] = folder.masks if folder is not None else {}
    for kind in CORRECTION_KINDS:
        for path in masks.get(kind, []):
            info = read_info(path)
            _check_same_shape(path, patch.label, info.shape, label_info.shape)
            where = geometry_mismatch(path, info.geometry, label_info.geometry)
            if where is not None:
                if not settings.ignore_geometry:
                    raise InputError(
                        f"{where}: painted on another patch? (--ignore-geometry merges it "
                        "by voxel index)"
                    )
                warn(f"{where}; merged by voxel index (--ignore-geometry)")
    record = patch.record or {}
    border = settings.border
    if border is None:
        border = int(record.get("border", BORDER_WIDTH))
    if 2 * border >= min(label_info.shape):
        raise InputError(
            f"{patch.label}: a border of {border} leaves no voxel of its "
            f"{'x'.join(map(str, as_xyz(label_info.shape)))} patch outside the ignore band"
        )
    fmt = settings.format
    return _MergePlan(
        patch=patch,
        masks=masks,
        border=border,
        padding=padding_zyx(record),
        outputs=(
            output_path(out_dir / TRAIN_IMAGES_SUBDIR, patch.name + TRAIN_IMAGE_SUFFIX, fmt),
            output_path(out_dir / TRAIN_LABELS_SUBDIR, patch.name, fmt),
        ),
        corrected=folder is not None,
        shape=label_info.shape,
        sparse=settings.sparse,
        keep_slices=_keep_slices(settings.keep_slices, label_info.shape, patch.label),
        previews=(preview_path(out_dir, patch.name),) if settings.preview else (),
    )


def geometry_mismatch(
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


def _merge_one(plan: _MergePlan, staged: StagedFiles) -> dict:
    patch = plan.patch
    base, label_info = read_volume(patch.label)
    require_label_values(base, patch.label)
    masks = {
        kind: union_mask((read_volume(p)[0] for p in plan.masks.get(kind, [])), base.shape)
        for kind in CORRECTION_KINDS
    }
    keep = None
    if plan.sparse:
        keep = np.zeros(base.shape, dtype=bool)
        for name, indices in plan.keep_slices.items():
            keep |= slices_mask(base.shape, AXES[name], indices)
    merged, counts = merge_labels(
        base,
        add=masks["add"],
        remove=masks["remove"],
        ignore=masks["ignore"],
        border=plan.border,
        padding=plan.padding,
        keep=keep,
    )
    image, image_info = read_volume(patch.image)
    replaced = fill_nonfinite(image)
    if replaced:
        warn(
            f"{patch.image}: {replaced} voxel(s) are NaN or infinite; written to the training "
            "image as the mean of the finite ones"
        )
    geometry = label_info.geometry or image_info.geometry or Geometry((1.0, 1.0, 1.0))
    image_out, label_out = plan.outputs
    write_volume(
        staged.stage(image_out, volume_suffix(image_out)), image, image_info.geometry or geometry
    )
    write_volume(staged.stage(label_out, volume_suffix(label_out)), merged, geometry)
    for preview in plan.previews:
        staged.stage(preview, ".png").write_bytes(_preview(plan, image, base, merged, masks))
    return {
        "name": patch.name,
        "corrected": plan.corrected,
        "added": counts.added,
        "removed": counts.removed,
        "ignored": counts.ignored,
        "annotated": counts.annotated,
        "sparse": plan.sparse,
        "kept_slices": plan.keep_slices,
        "border": plan.border,
        "padding_xyz": [list(p) for p in as_xyz(plan.padding)] if plan.padding else None,
        "files": {k: [p.name for p in v] for k, v in plan.masks.items()},
        "image": str(image_out),
        "label": str(label_out),
        # The tomogram's statistics from the extraction manifest, for retrain to normalise
        # this patch as segment normalises the whole tomogram.
        "intensity_statistics": (patch.record or {}).get("intensity_statistics"),
    }


def _preview(plan: _MergePlan, image, base, merged, masks: dict[str, np.ndarray]) -> bytes:
    """The patch's preview PNG: image, network labels, merged labels and what was painted."""
    offset = (plan.patch.record or {}).get("offset_xyz")
    try:  # the manifest's; a hand-edited one may hold anything: then patch indices only
        offset_zyx = tuple(int(v) for v in offset[::-1]) if len(offset) == 3 else None
    except (TypeError, ValueError):
        offset_zyx = None
    painted = ", ".join(
        f"{kind.capitalize()} {int(np.count_nonzero(masks[kind]))}"
        for kind in ("add", "remove", "ignore")
    )
    title = f"{plan.patch.name}: voxels painted {painted}"
    if plan.sparse:
        title += " (sparse: unpainted voxels are ignore)"
    return merge_preview(
        image,
        base,
        merged,
        masks["add"],
        masks["remove"],
        masks["ignore"],
        title=title,
        offset=offset_zyx,
    )
