"""Merging: Add / Remove / Ignore masks applied to label patches, written as training pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import (
    BORDER_WIDTH,
    CORRECTION_KINDS,
    PAINTED_IN_BAND,
    PREVIEWS_SUBDIR,
    TRAIN_IMAGE_SUFFIX,
    TRAIN_IMAGES_SUBDIR,
    TRAIN_LABELS_SUBDIR,
)
from ..errors import InputError, collect_warnings, warn
from ..io.correction_folders import CorrectionFolder, mask_misfit, scan_corrections, stray_files
from ..io.geometry import as_xyz, geometry_or_unit
from ..io.manifest import Padding, source_of
from ..io.names import preview_path
from ..io.patch_folders import LabelPatch, find_label_patches
from ..io.staging import StagedFiles, staged
from ..io.summary import (
    earlier_rows,
    merged_rows,
    row_files,
    summary_path,
    summary_text,
    warn_other_band_choice,
)
from ..io.volumes import output_path, read_info, read_volume, volume_suffix, write_volume
from ..labels.corrections import merge_labels, require_label_values, union_mask
from ..labels.patches import fill_nonfinite
from ..labels.sparse import AXES, parse_slices, slices_mask
from ..previews import merge_preview, require_matplotlib
from ._common import check_format, require_free, tracked, writing_into
from .events import SILENT, Listener


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
    painted_in_band
        Keep the Add and Remove voxels painted inside the border band as labels (a person
        decided them); the rest of the band stays ignore. Off: MemBrain-seg's merge, where
        the band covers everything.
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
    painted_in_band: bool = PAINTED_IN_BAND

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
    voxels that were padding stay ignore. With ``settings.painted_in_band`` the band spares
    the Add and Remove voxels painted in it; each summary row records the choice.

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
        if not any(p.name in folders for p in patches) and not settings.include_uncorrected:
            raise InputError(
                f"{corrections_dir}: no folder matches a patch of {labels_dir}; name each "
                f"folder after its patch, e.g. {corrections_dir / patches[0].name}"
            )
        chosen = [p for p in patches if p.name in folders or settings.include_uncorrected]
        plans = [
            _plan_merge(p, folders.get(p.name), out_dir, settings, images_dir) for p in chosen
        ]
        outputs = [path for plan in plans for path in (*plan.outputs, *plan.previews)]
        require_free(outputs, settings.overwrite)
        earlier = earlier_rows(out_dir)
        warn_other_band_choice(
            out_dir, earlier, {p.name for p in chosen}, settings.painted_in_band
        )
        # The files, then the summary, recorded first so that a killed run is finished
        # by the next one.
        with staged(out_dir) as files:
            files.make_dirs(out_dir / TRAIN_IMAGES_SUBDIR, out_dir / TRAIN_LABELS_SUBDIR)
            if settings.preview:
                files.make_dirs(out_dir / PREVIEWS_SUBDIR)
            rows = [
                _merge_one(plan, files) for plan in tracked(plans, "Merging corrections", listener)
            ]
            found = _found(patches, folders, corrections_dir)
            files.write_text(
                summary_path(out_dir),
                summary_text(merged_rows(earlier, rows), **found),
            )
            files.remove(_stale_previews(out_dir, plans, settings))
    return MergeReport(
        out_dir,
        summary_path(out_dir),
        rows,
        found["uncorrected"],
        found["folders_without_patch"],
        [Path(f) for f in found["unmatched_files"]],
        corrections_dir,
        settings,
        warned,
        [path for plan in plans for path in plan.previews],
    )


def _found(
    patches: list[LabelPatch], folders: dict[str, CorrectionFolder], corrections_dir: Path
) -> dict:
    """What the merge found but did not use, as the summary records it: patches without
    corrections, correction folders without a patch, files that are no mask."""
    unmatched = stray_files(corrections_dir)
    for entry in folders.values():
        unmatched.extend(entry.unmatched)
    return {
        "uncorrected": [p.name for p in patches if p.name not in folders],
        "folders_without_patch": sorted(set(folders) - {p.name for p in patches}),
        "unmatched_files": [str(f) for f in unmatched],
    }


def _stale_previews(out_dir: Path, plans: list, settings: MergeSettings) -> list[Path]:
    """An --overwrite run without --preview leaves no preview of an earlier merge that
    would show other labels than the ones it writes."""
    if not settings.overwrite or settings.preview:
        return []
    stale = [preview_path(out_dir, plan.patch.name) for plan in plans]
    return [path for path in stale if path.exists()]


@dataclass
class _MergePlan:
    """One patch's inputs and outputs, checked by their headers before anything is written."""

    patch: LabelPatch
    masks: dict[str, list[Path]]
    border: int
    padding: Padding | None
    outputs: tuple[Path, Path]
    corrected: bool
    shape: tuple[int, int, int]
    sparse: bool = False
    keep_slices: dict[str, list[int]] = field(default_factory=dict)
    """Axis name -> slice indices kept by a sparse merge."""
    previews: tuple[Path, ...] = ()
    """Where this patch's preview goes (none without ``settings.preview``)."""
    painted_in_band: bool = PAINTED_IN_BAND


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
            misfit = mask_misfit(path, read_info(path), label_info)
            if misfit is None:
                continue
            if not misfit.geometry_only:
                raise InputError(misfit.message)
            if not settings.ignore_geometry:
                raise InputError(
                    f"{misfit.message}: painted on another patch? (--ignore-geometry merges "
                    "it by voxel index)"
                )
            warn(f"{misfit.message}; merged by voxel index (--ignore-geometry)")
    record = patch.record
    border = settings.border
    if border is None:
        border = record.border if record and record.border is not None else BORDER_WIDTH
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
        padding=record.padding if record else None,
        outputs=(
            output_path(out_dir / TRAIN_IMAGES_SUBDIR, patch.name + TRAIN_IMAGE_SUFFIX, fmt),
            output_path(out_dir / TRAIN_LABELS_SUBDIR, patch.name, fmt),
        ),
        corrected=folder is not None,
        shape=label_info.shape,
        sparse=settings.sparse,
        keep_slices=_keep_slices(settings.keep_slices, label_info.shape, patch.label),
        previews=(preview_path(out_dir, patch.name),) if settings.preview else (),
        painted_in_band=settings.painted_in_band,
    )


def _merge_one(plan: _MergePlan, files: StagedFiles) -> dict:
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
        painted_in_band=plan.painted_in_band,
    )
    image, image_info = read_volume(patch.image)
    replaced = fill_nonfinite(image)
    if replaced:
        warn(
            f"{patch.image}: {replaced} voxel(s) are NaN or infinite; written to the training "
            "image as the mean of the finite ones"
        )
    geometry = geometry_or_unit(
        label_info.geometry or image_info.geometry, patch.label, "training pairs are written"
    )
    image_out, label_out = plan.outputs
    write_volume(
        files.stage(image_out, volume_suffix(image_out)), image, image_info.geometry or geometry
    )
    write_volume(files.stage(label_out, volume_suffix(label_out)), merged, geometry)
    for preview in plan.previews:
        files.stage(preview, ".png").write_bytes(_preview(plan, image, base, merged, masks))
    return {
        "name": patch.name,
        "corrected": plan.corrected,
        "added": counts.added,
        "removed": counts.removed,
        "ignored": counts.ignored,
        "annotated": counts.annotated,
        "membrane": counts.membrane,
        "base_membrane": counts.base_membrane,
        "sparse": plan.sparse,
        "kept_slices": plan.keep_slices,
        "border": plan.border,
        "painted_in_band": plan.painted_in_band,
        "band_painted": counts.band_painted,
        "padding_xyz": [list(p) for p in as_xyz(plan.padding)] if plan.padding else None,
        "files": {k: [p.name for p in v] for k, v in plan.masks.items()},
        **row_files(image_out.parent.parent, image_out, label_out),
        # The tomogram's statistics from the extraction manifest, for retrain to normalise
        # this patch as segment normalises the whole tomogram.
        "intensity_statistics": patch.record.intensity_statistics if patch.record else None,
        # Where the patch lies in the tomogram it was cut from, for retrain's context boxes.
        "cut_from": source_of(patch.record),
        "segmentation_membrane_share": patch.record.membrane_share if patch.record else None,
    }


def _preview(plan: _MergePlan, image, base, merged, masks: dict[str, np.ndarray]) -> bytes:
    """The patch's preview PNG: image, network labels, merged labels and what was painted."""
    offset_zyx = plan.patch.record.offset if plan.patch.record else None
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
