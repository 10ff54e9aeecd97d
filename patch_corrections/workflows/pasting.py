"""Pasting: merged (corrected) label patches written back into a full-size segmentation.

The target segmentation is read and the output written one slab of z sections at a time,
so memory holds a slab (twice: as read and as written) and the patches that reach into
it, never the tomogram.

Where patches overlap, a voxel one patch decides (background or membrane) beats a voxel
another leaves undecided (ignore). Where two patches decide a voxel differently, the
patch in which it lies deeper (farther from that patch's nearest face, where its
annotator saw more context around it) wins; at equal depth the later patch in name order
(``<token>_patchNNN``: the later extracted) wins. Each disagreeing pair is a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE, LABEL_VALUES, LABELS_SUBDIR, MEMBRANE, TRAIN_LABELS_SUBDIR
from ..errors import InputError, collect_warnings, warn
from ..io.geometry import Geometry, as_xyz, xyz_text
from ..io.locks import folder_lock
from ..io.manifest import PatchRecord, manifest_path, padding_zyx, read_records
from ..io.patch_folders import find_label_patches
from ..io.placement import Placement, check_offsets, place_patch
from ..io.staging import remove_leftovers_of, staged
from ..io.summary import summary_path, summary_rows
from ..io.volumes import (
    VolumeInfo,
    check_slab_output,
    closing_reader,
    read_volume,
    slab_writer,
    storable_dtype,
    volume_format,
    volume_suffix,
)
from ..labels.compositing import Tally, composite
from ..labels.corrections import require_label_values
from ..labels.density import refuse_density_of
from ._common import check_out_dir, require_free
from .events import SILENT, Listener, Progress

SLAB_VOXELS = 1 << 24
"""Voxels of the target read (and written) at once: whole z sections, at least one."""


@dataclass(frozen=True)
class PasteSettings:
    """How corrected patches are pasted.

    Attributes
    ----------
    mark_ignore
        Write this value where patches lie but none decided the voxel (ignore: the border
        band, padding inside the tomogram, painted Ignore), so it shows what nobody
        decided; default: those voxels keep the target's value.
    token
        Paste only the patches named ``<token>_patchNNN`` (a merge folder may hold patches
        of several tomograms).
    overwrite
        Replace an existing output file.
    """

    mark_ignore: int | None = None
    token: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.mark_ignore is not None and self.mark_ignore in LABEL_VALUES[:2]:
            raise InputError(
                f"--mark-ignore {self.mark_ignore}: that is a decided label (0 background, "
                "1 membrane); choose another value, e.g. 2"
            )
        if self.token is not None and not self.token:
            raise InputError("--token: give the patch name prefix, e.g. tomogram")


@dataclass(frozen=True)
class PasteReport:
    """What a paste wrote.

    Counts are voxels of the output, compared with the target segmentation (a non-zero
    target voxel counts as membrane).
    """

    out: Path
    segmentation: Path
    shape_xyz: tuple[int, int, int]
    rows: list[dict]
    """One row per patch pasted: ``name``, ``label`` (its file), ``offset_xyz``,
    ``size_xyz``, ``placed_by`` (``header``, ``manifest`` or both), and the voxels whose
    value it set (``decided``), of which membrane ``added`` and ``removed``."""
    decided: int
    """Voxels set by a patch (background or membrane)."""
    added: int
    """Background in the target, membrane in the output."""
    removed: int
    """Membrane in the target, background in the output."""
    marked: int
    """Voxels set to ``settings.mark_ignore``."""
    conflicts: int
    """Voxels that overlapping patches decided differently."""
    settings: PasteSettings
    warnings: list[str]


def paste_corrections(
    merged_dir: Path,
    segmentation: Path,
    out: Path,
    patches_dir: Path | None = None,
    *,
    settings: PasteSettings = PasteSettings(),
    listener: Listener = SILENT,
) -> PasteReport:
    """Write the corrected label patches of ``merged_dir`` into ``segmentation``, as ``out``.

    Inside every patch, voxels it decides (0 background, 1 membrane) replace the target's;
    its ignore voxels (2: the border band, padding, painted Ignore) keep the target's value,
    or become ``settings.mark_ignore``. Overlaps: a decided voxel beats an ignore voxel of
    another patch; where patches decide differently, the one in which the voxel lies
    deeper (farther from its nearest face) wins, at equal depth the later in name order.

    Each patch is placed by its header's origin and voxel size on the target's grid; with
    ``patches_dir`` (the ``extract_patches`` folder) its manifest's voxel offset is checked
    against the header, and wins when only the target's origin differs from the
    tomogram's (e.g. a segmentation from another tool), with a warning.

    Parameters
    ----------
    merged_dir
        A ``merge_corrections`` output folder (``labelsTr/``, ``merge_summary.json``), or
        its ``labelsTr/``.
    segmentation
        The full-size segmentation ``(z, y, x)`` to correct: ``segment``'s
        ``<stem>_segmented.mrc`` or the one given to ``extract_patches`` (any readable format).
    out
        The MRC file to write, with the target's shape, voxel size and origin and (for
        MRC targets) data mode.
    patches_dir
        The ``extract_patches`` output folder the patches were cut into.

    Returns
    -------
    PasteReport
        Patches pasted and voxels changed.
    """
    merged_dir, segmentation, out = Path(merged_dir), Path(segmentation), Path(out)
    with collect_warnings() as warned:
        _check_out(out, segmentation, settings)
        rows = _merge_summary(merged_dir)
        records, manifest = _manifest(patches_dir)
        with closing_reader(segmentation) as reader:
            target = reader.info
            placements = _place_all(merged_dir, target, records, manifest, rows, settings)
            # extract_patches' rule, over the voxels the patches cover.
            refuse_density_of(
                reader,
                [p.box.inside(target.shape) for p in placements],
                {r.tomogram for r in records.values() if r.tomogram},
                "Paste into the network's segmentation (segment's <stem>_segmented.mrc)",
            )
            dtype = _output_dtype(target, settings.mark_ignore, volume_format(out))
            # The folder is locked, not recovered: `segment` writes into its folders without
            # a lock, so only this run's own leftovers are removed there.
            with folder_lock(out.parent):
                require_free([out], settings.overwrite)
                if remove_leftovers_of([out]):
                    warn(f"{out}: removed the temporary files an interrupted run left")
                with staged() as files:
                    totals, per_patch, odd = _paste(
                        reader,
                        placements,
                        files.stage(out, volume_suffix(out)),
                        dtype,
                        settings,
                        listener,
                    )
        if odd:
            warn(
                f"{segmentation}: {odd} voxel(s) hold values other than 0 and 1 (a score map "
                "or component labels?); corrected voxels were written as 0 and 1 among them"
            )
    return PasteReport(
        out=out,
        segmentation=segmentation,
        shape_xyz=tuple(as_xyz(target.shape)),  # type: ignore[arg-type]
        rows=_rows(placements, per_patch),
        settings=settings,
        warnings=warned,
        **totals,
    )


def _rows(placements: list[Placement], per_patch: dict[str, np.ndarray]) -> list[dict]:
    """The report's row of each patch: where it was placed, by what, and its counts."""
    return [
        {
            "name": p.name,
            "label": str(p.label),
            "offset_xyz": as_xyz(p.box.offset),
            "size_xyz": as_xyz(p.box.size),
            "placed_by": p.placed_by,
            **{key: int(values[i]) for key, values in per_patch.items()},
        }
        for i, p in enumerate(placements)
    ]


def _check_out(out: Path, segmentation: Path, settings: PasteSettings) -> None:
    check_slab_output(out, "--out", segmentation, "the segmentation pasted into")
    check_out_dir(out.parent)
    require_free([out], settings.overwrite)


def _merge_summary(merged_dir: Path) -> dict[str, dict]:
    """The merge summary's rows by patch name, after checking ``merged_dir`` is a merge
    output (or its ``labelsTr/``) and not an extraction folder."""
    if not merged_dir.is_dir():
        raise InputError(f"{merged_dir}: folder not found; give merge_corrections' --out-dir")
    if manifest_path(merged_dir).exists() or (
        merged_dir.name == LABELS_SUBDIR and manifest_path(merged_dir.parent).exists()
    ):
        raise InputError(
            f"{merged_dir}: an extract_patches folder (uncorrected patches); give the "
            "--out-dir of merge_corrections (and this folder as --patches-dir)"
        )
    root = merged_dir.parent if merged_dir.name == TRAIN_LABELS_SUBDIR else merged_dir
    return summary_rows(summary_path(root), "patches are pasted without it")


def _manifest(patches_dir: Path | None) -> tuple[dict[str, PatchRecord], Path | None]:
    """The extraction manifest's records by patch name (the folder or its ``labels/``)."""
    if patches_dir is None:
        return {}, None
    patches_dir = Path(patches_dir)
    if not manifest_path(patches_dir).exists() and manifest_path(patches_dir.parent).exists():
        patches_dir = patches_dir.parent
    path = manifest_path(patches_dir)
    if not path.exists():
        raise InputError(
            f"--patches-dir {patches_dir}: no {path.name}; give the extract_patches --out-dir"
        )
    return {r.name: r for r in read_records(patches_dir)}, path


def _place_all(
    merged_dir: Path,
    target: VolumeInfo,
    records: dict[str, PatchRecord],
    manifest: Path | None,
    rows: dict[str, dict],
    settings: PasteSettings,
) -> list[Placement]:
    patches = find_label_patches(merged_dir)
    if settings.token is not None:
        prefix = f"{settings.token}_patch"
        patches = [p for p in patches if p.name.startswith(prefix)]
        if not patches:
            raise InputError(f"{merged_dir}: no label patch is named {prefix}NNN (--token)")
    if not patches:
        raise InputError(
            f"{merged_dir}: no label patches (labelsTr/); give merge_corrections' --out-dir"
        )
    sources = {records[p.name].tomogram for p in patches if p.name in records}
    if len(sources) > 1 and settings.token is None:
        raise InputError(
            f"{manifest}: the patches of {merged_dir} come from {len(sources)} tomograms; "
            "paste one tomogram's at a time with --token <its patch name prefix>"
        )
    unrecorded = [p.name for p in patches if manifest is not None and p.name not in records]
    if unrecorded:
        warn(
            f"{manifest}: records no patch {', '.join(unrecorded)}; placed by their headers alone"
        )
    if manifest is not None:
        check_offsets([records[p.name] for p in patches if p.name in records], manifest)
    placements = []
    for patch in patches:
        placement = place_patch(patch.name, patch.label, target, records.get(patch.name), manifest)
        _check_inside(placement, target, rows.get(patch.name))
        placements.append(placement)
    return placements


def _check_inside(placement: Placement, target: VolumeInfo, row: dict | None) -> None:
    """``InputError`` unless every voxel ``placement`` decides lies inside ``target`` (the
    part of a patch outside it was padding, all ignore); checks its label values too."""
    box = placement.box
    start, stop = box.inside(target.shape)
    where = (
        f"offset x,y,z={xyz_text(box.offset)}, size {xyz_text(box.size)}; "
        f"{target.path} is x,y,z={xyz_text(target.shape)}"
    )
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(f"{placement.label}: lies outside {target.path} ({where})")
    labels, _ = read_volume(placement.label)
    require_label_values(labels, placement.label)
    decided = int(np.count_nonzero(labels != IGNORE))
    local = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, box.offset))
    outside = decided - int(np.count_nonzero(labels[local] != IGNORE))
    if outside:
        raise InputError(
            f"{placement.label}: {outside} decided voxel(s) lie outside {target.path} "
            f"({where}); is that the segmentation it was cut from?"
        )
    padding = padding_zyx(row) if row is not None else None
    if padding is not None:
        expected = tuple(
            (a - o, o + s - b) for o, s, a, b in zip(box.offset, box.size, start, stop)
        )
        if padding != expected:
            warn(
                f"{placement.label}: its padding in the merge summary differs from its place "
                f"in {target.path} ({where})"
            )


def _output_dtype(target: VolumeInfo, mark: int | None, fmt: str) -> np.dtype:
    """The dtype an output of format ``fmt`` stores: the target's, or the mode that holds it."""
    dtype = target.dtype
    if dtype.kind not in "biuf":
        raise InputError(f"{target.path}: holds {dtype} values; a segmentation holds numbers")
    stored = storable_dtype(dtype, fmt, float(np.iinfo(dtype).max) if dtype.kind in "iu" else 0)
    if mark is not None and stored.kind in "iu":
        limits = np.iinfo(stored)
        if not limits.min <= mark <= limits.max:
            raise InputError(
                f"--mark-ignore {mark}: {target.path} stores {stored} values "
                f"({limits.min} to {limits.max}); choose a value among them, e.g. 2"
            )
    return stored


def _paste(
    reader,
    placements: list[Placement],
    path: Path,
    dtype: np.dtype,
    settings: PasteSettings,
    listener: Listener,
) -> tuple[dict[str, int], dict[str, np.ndarray], int]:
    """Stream the target through the patches into ``path``, slab by slab along z.

    Returns the totals (report fields), the per-patch counts and the target voxels
    holding values other than 0 and 1.
    """
    shape = reader.info.shape
    nz, ny, nx = shape
    geometry = reader.info.geometry or Geometry((0.0, 0.0, 0.0))
    step = max(1, SLAB_VOXELS // max(ny * nx, 1))
    count = len(placements)
    per_patch = {k: np.zeros(count, np.int64) for k in ("decided", "added", "removed")}
    totals = dict.fromkeys(("decided", "added", "removed"), 0)
    tally = Tally()
    boxes = [p.box for p in placements]
    extents = [box.inside(shape) for box in boxes]
    loaded: dict[int, np.ndarray] = {}

    def labels_of(i: int) -> np.ndarray:
        if i not in loaded:
            loaded[i] = read_volume(placements[i].label)[0]
        return loaded[i]

    odd = 0
    slabs = math.ceil(nz / step)
    listener.progress(Progress("Pasting corrections", 0, slabs))
    with slab_writer(path, shape, dtype, geometry) as writer:
        for number, z0 in enumerate(range(0, nz, step), start=1):
            z1 = min(nz, z0 + step)
            before = reader.read_block((z0, 0, 0), (z1, ny, nx))
            odd += int(np.count_nonzero((before != 0) & (before != MEMBRANE)))
            after = before.astype(dtype, copy=True)
            here = [i for i, (a, b) in enumerate(extents) if a[0] < z1 and b[0] > z0]
            if here:
                won = composite(
                    after, z0, shape, boxes, here, labels_of, tally, settings.mark_ignore
                )
                decided = won >= 0
                added = decided & (before == 0) & (after == MEMBRANE)
                removed = decided & (before != 0) & (after == 0)
                for key, mask in (("decided", decided), ("added", added), ("removed", removed)):
                    per_patch[key] += np.bincount(won[mask], minlength=count)
                    totals[key] += int(np.count_nonzero(mask))
            writer.write(z0, after)
            for i in [i for i in loaded if extents[i][1][0] <= z1]:
                del loaded[i]  # the patch lies wholly above this slab
            listener.progress(Progress("Pasting corrections", number, slabs))
    for (first, second), voxels in sorted(tally.pairs.items()):
        warn(
            f"{placements[first].name} and {placements[second].name} decide {voxels} "
            "overlapping voxel(s) differently; each took the value of the patch it lies "
            "deeper in"
        )
    totals.update(marked=tally.marked, conflicts=tally.conflicts)
    return totals, per_patch, odd
