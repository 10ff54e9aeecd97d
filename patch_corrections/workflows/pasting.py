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

from ..constants import (
    IGNORE,
    LABEL_VALUES,
    LABELS_SUBDIR,
    MEMBRANE,
    MERGE_SUMMARY_NAME,
    TRAIN_LABELS_SUBDIR,
)
from ..corrections import require_label_values
from ..errors import InputError
from ..io.files import StagedFiles, folder_lock, remove_leftovers_of
from ..io.folders import find_label_patches
from ..io.manifest import as_xyz, load_manifest, manifest_path
from ..io.mrc import MrcSlabWriter, mrc_dtype
from ..io.volumes import (
    MRC_SUFFIXES,
    Geometry,
    VolumeInfo,
    closing_reader,
    read_info,
    read_volume,
)
from ._common import check_out_dir, collect_warnings, require_free, summary_rows, warn
from .events import SILENT, Listener, Progress

SLAB_VOXELS = 1 << 24
"""Voxels of the target read (and written) at once: whole z sections, at least one."""

_GRID_TOLERANCE = 0.05
"""How far (in voxels) a patch origin may sit from the target's voxel grid: headers store
origins as float32."""

Index3 = tuple[int, int, int]


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


@dataclass
class _Placement:
    """One patch and where it lies in the target: ``offset`` ``(z, y, x)`` of its first voxel
    (negative where it starts before the target)."""

    name: str
    label: Path
    shape: Index3
    offset: Index3
    placed_by: str

    def inside(self, shape: Index3) -> tuple[Index3, Index3]:
        """Target ``(start, stop)`` of the part of the patch inside a volume of ``shape``."""
        start = tuple(min(max(o, 0), n) for o, n in zip(self.offset, shape))
        stop = tuple(min(max(o + s, 0), n) for o, s, n in zip(self.offset, self.shape, shape))
        return start, stop  # type: ignore[return-value]


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
            dtype = _output_dtype(target, settings.mark_ignore)
            # The folder is locked, not recovered: `segment` writes into its folders without
            # a lock, so only this run's own leftovers are removed there.
            with folder_lock(out.parent):
                require_free([out], settings.overwrite)
                if remove_leftovers_of([out]):
                    warn(f"{out}: removed the temporary files an interrupted run left")
                staged = StagedFiles()
                try:
                    totals, per_patch, odd = _paste(
                        reader, placements, staged.stage(out, ".mrc"), dtype, settings, listener
                    )
                except BaseException:
                    staged.discard()
                    raise
                staged.commit()
        if odd:
            warn(
                f"{segmentation}: {odd} voxel(s) hold values other than 0 and 1 (a score map "
                "or component labels?); corrected voxels were written as 0 and 1 among them"
            )
    report_rows = [
        {
            "name": p.name,
            "label": str(p.label),
            "offset_xyz": as_xyz(p.offset),
            "size_xyz": as_xyz(p.shape),
            "placed_by": p.placed_by,
            **{key: int(values[i]) for key, values in per_patch.items()},
        }
        for i, p in enumerate(placements)
    ]
    return PasteReport(
        out=out,
        segmentation=segmentation,
        shape_xyz=tuple(as_xyz(target.shape)),  # type: ignore[arg-type]
        rows=report_rows,
        settings=settings,
        warnings=warned,
        **totals,
    )


def _check_out(out: Path, segmentation: Path, settings: PasteSettings) -> None:
    if not out.name.lower().endswith(MRC_SUFFIXES):
        raise InputError(f"--out {out}: the output is an MRC file; end its name with .mrc")
    if out.exists() and out.resolve() == segmentation.resolve():
        raise InputError(
            f"--out {out}: that is the segmentation pasted into; write the corrected one "
            "beside it, e.g. " + str(out.with_name(out.stem + "_corrected.mrc"))
        )
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give the MRC file to write")
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
    return summary_rows(root / MERGE_SUMMARY_NAME, "patches are pasted without it")


def _manifest(patches_dir: Path | None) -> tuple[dict[str, dict], Path | None]:
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
    return {r["name"]: r for r in load_manifest(patches_dir)}, path


def _place_all(
    merged_dir: Path,
    target: VolumeInfo,
    records: dict[str, dict],
    manifest: Path | None,
    rows: dict[str, dict],
    settings: PasteSettings,
) -> list[_Placement]:
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
    sources = {records[p.name].get("tomogram") for p in patches if p.name in records}
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
    placements = []
    for patch in patches:
        placement = _place(patch.name, patch.label, target, records.get(patch.name), manifest)
        _check_inside(placement, target, rows.get(patch.name))
        placements.append(placement)
    return placements


def _xyz(values, spec: str = "g") -> str:
    return ",".join(f"{v:{spec}}" for v in as_xyz(values))


def _place(
    name: str, label: Path, target: VolumeInfo, record: dict | None, manifest: Path | None
) -> _Placement:
    """Where patch ``label`` lies in ``target``, from its header and the manifest's record,
    each checked against the other; ``InputError`` naming both files when they do not fit."""
    info = read_info(label)
    here, there = info.geometry, target.geometry
    header: Index3 | None = None
    if here is not None and there is not None:
        if not np.allclose(here.voxel_size, there.voxel_size, rtol=1e-3, atol=0):
            raise InputError(
                f"{label}: voxel size x,y,z={_xyz(here.voxel_size)} Å differs from "
                f"{target.path}'s {_xyz(there.voxel_size)} Å; paste into the segmentation "
                "of the tomogram the patch was cut from"
            )
        exact = [(o - t) / v for o, t, v in zip(here.origin, there.origin, there.voxel_size)]
        header = tuple(round(e) for e in exact)  # type: ignore[assignment]
        if any(abs(e - i) > _GRID_TOLERANCE for e, i in zip(exact, header)):  # type: ignore[arg-type]
            raise InputError(
                f"{label}: origin x,y,z={_xyz(here.origin)} Å is not on {target.path}'s voxel "
                f"grid (origin {_xyz(there.origin)} Å, voxel size {_xyz(there.voxel_size)} Å): "
                f"it would start at voxel x,y,z={_xyz(exact, '.2f')}"
            )
    if record is None:
        if header is None:
            missing = label if here is None else target.path
            raise InputError(
                f"{missing}: no voxel size in its header, so {label} cannot be placed in "
                f"{target.path}; give --patches-dir (the extract_patches folder, whose "
                "manifest records each patch's offset)"
            )
        return _Placement(name, label, info.shape, header, "header")
    return _place_by_record(name, label, info, target, record, manifest, header)  # type: ignore[arg-type]


def _place_by_record(
    name: str,
    label: Path,
    info: VolumeInfo,
    target: VolumeInfo,
    record: dict,
    manifest: Path,
    header: Index3 | None,
) -> _Placement:
    try:
        offset: Index3 = tuple(int(v) for v in record["offset_xyz"][::-1])  # type: ignore[assignment]
        size = tuple(int(v) for v in record["size_xyz"][::-1])
        shape = record.get("tomogram_shape_xyz")
        shape = tuple(int(v) for v in shape[::-1]) if shape is not None else None
        voxel = record.get("voxel_size_xyz")
        origin = record.get("origin_xyz")
        recorded = (
            Geometry(
                tuple(float(v) for v in voxel[::-1]),  # type: ignore[arg-type]
                tuple(float(v) for v in origin[::-1]),  # type: ignore[arg-type]
            )
            if voxel is not None and origin is not None
            else None
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{manifest}: patch {name!r} has an unreadable record ({exc})") from None
    if len(offset) != 3 or len(size) != 3:
        raise InputError(f"{manifest}: patch {name!r} has no x,y,z offset and size")
    if size != info.shape:
        raise InputError(
            f"{label}: shape x,y,z={_xyz(info.shape)} differs from its record in {manifest} "
            f"(size x,y,z={_xyz(size)}); was it merged from another cut of that name?"
        )
    if shape is not None and shape != target.shape:
        raise InputError(
            f"{target.path}: shape x,y,z={_xyz(target.shape)} differs from the tomogram "
            f"{name} was cut from ({manifest}: x,y,z={_xyz(shape)}); paste into that "
            "tomogram's segmentation"
        )
    if recorded is not None and info.geometry is not None:
        if not info.geometry.agrees_with(recorded):
            raise InputError(
                f"{label}: origin/voxel size x,y,z={_xyz(info.geometry.origin)} / "
                f"{_xyz(info.geometry.voxel_size)} Å differ from its record in {manifest} "
                f"({_xyz(recorded.origin)} / {_xyz(recorded.voxel_size)} Å); was it merged "
                "from another cut of that name?"
            )
    if header is None:
        warn(
            f"{target.path if target.geometry is None else label}: no voxel size in its "
            f"header; {name} placed by the offset {manifest} records"
        )
        return _Placement(name, label, info.shape, offset, "manifest")
    if header != offset:
        # The patch is the one recorded, so its offset in the tomogram is right: the target
        # sits elsewhere in space than the tomogram (another tool's header).
        warn(
            f"{target.path}: origin x,y,z={_xyz(target.geometry.origin)} Å differs from that "  # type: ignore[union-attr]
            f"of the tomogram the patches were cut from; {name} placed at the voxel offset "
            f"{manifest} records (x,y,z={_xyz(offset)}), not by its header "
            f"(x,y,z={_xyz(header)})"
        )
        return _Placement(name, label, info.shape, offset, "manifest")
    return _Placement(name, label, info.shape, offset, "header+manifest")


def _check_inside(placement: _Placement, target: VolumeInfo, row: dict | None) -> None:
    """``InputError`` unless every voxel ``placement`` decides lies inside ``target`` (the
    part of a patch outside it was padding, all ignore); checks its label values too."""
    start, stop = placement.inside(target.shape)
    where = (
        f"offset x,y,z={_xyz(placement.offset)}, size {_xyz(placement.shape)}; "
        f"{target.path} is x,y,z={_xyz(target.shape)}"
    )
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(f"{placement.label}: lies outside {target.path} ({where})")
    labels, _ = read_volume(placement.label)
    require_label_values(labels, placement.label)
    decided = int(np.count_nonzero(labels != IGNORE))
    local = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, placement.offset))
    outside = decided - int(np.count_nonzero(labels[local] != IGNORE))
    if outside:
        raise InputError(
            f"{placement.label}: {outside} decided voxel(s) lie outside {target.path} "
            f"({where}); is that the segmentation it was cut from?"
        )
    if row is not None and row.get("padding_xyz"):
        padding = tuple((int(a), int(b)) for a, b in row["padding_xyz"][::-1])
        expected = tuple(
            (a - o, o + s - b)
            for o, s, a, b in zip(placement.offset, placement.shape, start, stop)
        )
        if padding != expected:
            warn(
                f"{placement.label}: its padding in the merge summary differs from its place "
                f"in {target.path} ({where})"
            )


def _output_dtype(target: VolumeInfo, mark: int | None) -> np.dtype:
    """The MRC mode the output stores: the target's (or the smallest that holds it)."""
    dtype = target.dtype
    if dtype.kind not in "biuf":
        raise InputError(f"{target.path}: holds {dtype} values; a segmentation holds numbers")
    high = float(np.iinfo(dtype).max) if dtype.kind in "iu" else 0
    stored = mrc_dtype(dtype, high)
    if mark is not None and stored.kind in "iu":
        limits = np.iinfo(stored)
        if not limits.min <= mark <= limits.max:
            raise InputError(
                f"--mark-ignore {mark}: {target.path} stores {stored} values "
                f"({limits.min} to {limits.max}); choose a value among them, e.g. 2"
            )
    return stored


def _depth(start: int, stop: int, size: int) -> np.ndarray:
    """Distance of patch indices ``start .. stop`` to the nearer of the patch's faces."""
    index = np.arange(start, stop, dtype=np.int32)
    return np.minimum(index, size - 1 - index)


def _paste(
    reader,
    placements: list[_Placement],
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
    totals = dict.fromkeys(("decided", "added", "removed", "marked", "conflicts"), 0)
    pairs: dict[tuple[int, int], int] = {}
    extents = [p.inside(shape) for p in placements]
    loaded: dict[int, np.ndarray] = {}
    odd = 0
    slabs = math.ceil(nz / step)
    listener.progress(Progress("Pasting corrections", 0, slabs))
    with MrcSlabWriter(path, shape, dtype, geometry) as writer:
        for number, z0 in enumerate(range(0, nz, step), start=1):
            z1 = min(nz, z0 + step)
            before = reader.read_block((z0, 0, 0), (z1, ny, nx))
            odd += int(np.count_nonzero((before != 0) & (before != MEMBRANE)))
            after = before.astype(dtype, copy=True)
            here = [i for i, (a, b) in enumerate(extents) if a[0] < z1 and b[0] > z0]
            if here:
                won = _composite(
                    after, z0, here, placements, extents, loaded, settings, totals, pairs
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
    for (first, second), voxels in sorted(pairs.items()):
        warn(
            f"{placements[first].name} and {placements[second].name} decide {voxels} "
            "overlapping voxel(s) differently; each took the value of the patch it lies "
            "deeper in"
        )
    return totals, per_patch, odd


def _composite(
    slab: np.ndarray,
    z0: int,
    indices: list[int],
    placements: list[_Placement],
    extents: list[tuple[Index3, Index3]],
    loaded: dict[int, np.ndarray],
    settings: PasteSettings,
    totals: dict[str, int],
    pairs: dict[tuple[int, int], int],
) -> np.ndarray:
    """Paste the patches ``indices`` into ``slab`` (sections ``z0 ..`` of the target), in
    place; returns, per voxel, the index of the patch whose value it took (-1: none)."""
    z1 = z0 + len(slab)
    won = np.full(slab.shape, -1, np.int16 if len(placements) < 2**15 else np.int32)
    best = np.full(slab.shape, -1, np.int32)  # depth of the winning voxel
    covered = np.zeros(slab.shape, bool) if settings.mark_ignore is not None else None
    clashed = np.zeros(slab.shape, bool)  # a voxel counts once, however many patches clash
    for i in indices:
        placement = placements[i]
        if i not in loaded:
            loaded[i] = read_volume(placement.label)[0]
        (a, b), offset = extents[i], placement.offset
        start = (max(a[0], z0), a[1], a[2])
        stop = (min(b[0], z1), b[1], b[2])
        local = tuple(slice(s - o, e - o) for s, e, o in zip(start, stop, offset))
        region = (slice(start[0] - z0, stop[0] - z0), slice(a[1], b[1]), slice(a[2], b[2]))
        labels = loaded[i][local]
        dz, dy, dx = (_depth(s.start, s.stop, n) for s, n in zip(local, placement.shape))
        depth = np.minimum(np.minimum(dz[:, None, None], dy[None, :, None]), dx[None, None, :])
        decided = labels != IGNORE
        there, value, previous = best[region], slab[region], won[region]
        clash = decided & (there >= 0) & (value != labels)
        if clash.any():
            for other, voxels in zip(*np.unique(previous[clash], return_counts=True)):
                pairs[(int(other), i)] = pairs.get((int(other), i), 0) + int(voxels)
            clashed[region] |= clash
        take = decided & (depth >= there)
        value[take] = labels[take]
        there[take] = depth[take]
        previous[take] = i
        if covered is not None:
            covered[region] = True
    totals["conflicts"] += int(np.count_nonzero(clashed))
    if covered is not None:
        marked = covered & (won < 0)
        slab[marked] = settings.mark_ignore
        totals["marked"] += int(np.count_nonzero(marked))
    return won
