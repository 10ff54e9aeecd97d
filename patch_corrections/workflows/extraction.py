"""Extraction: cut image and label patches around centres, ready to be corrected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import BORDER_WIDTH, IMAGES_SUBDIR, LABELS_SUBDIR, PATCH_SIZE, PREVIEWS_SUBDIR
from ..errors import InputError, collect_warnings, warn
from ..inference.intensity import spread_sample, tomogram_statistics
from ..io.centres import Centre, read_centres
from ..io.geometry import Geometry, Index3, as_xyz, geometry_or_unit, xyz_text
from ..io.manifest import PatchRecord, load_manifest, manifest_path, manifest_text, new_entry
from ..io.names import check_token, preview_path, token_of
from ..io.readers import VolumeReader
from ..io.staging import StagedFiles, staged
from ..io.volumes import closing_reader, output_path, volume_stem, volume_suffix, write_volume
from ..labels.density import Survey, correlation, refuse_density
from ..labels.patches import (
    Binarisation,
    PatchBox,
    check_patch_size,
    choose_binarisation,
    image_patch,
    label_patch,
    locate_centres,
)
from ..previews import extraction_preview, require_matplotlib
from ._common import check_format, require_free, tracked, writing_into
from .events import SILENT, Listener


@dataclass(frozen=True)
class ExtractSettings:
    """How patches are cut.

    Attributes
    ----------
    patch_size
        Edge length of the cubic patches, in voxels.
    border
        Width of the ignore band along every face of a label patch.
    threshold
        Binarise the segmentation: values above it are membrane (default: chosen from its
        values, and a segmentation whose values look like a tomogram's densities is
        refused; with a threshold it is binarised as told).
    format
        File format of the patches: ``nrrd``, ``mrc`` or ``nii.gz``.
    token
        Patch name prefix; default: the tomogram's file name stem.
    angstrom
        Centres are in Å from the first voxel, not in voxels.
    overwrite
        Replace this token's patches instead of adding to them.
    preview
        Also draw each new patch as ``previews/<name>.png``: the xy, xz and yz slices
        through its centre, image and network labels (needs matplotlib).
    """

    patch_size: int = PATCH_SIZE
    border: int = BORDER_WIDTH
    threshold: float | None = None
    format: str = "nrrd"
    token: str | None = None
    angstrom: bool = False
    overwrite: bool = False
    preview: bool = False

    def __post_init__(self) -> None:
        check_patch_size(self.patch_size, self.border)
        check_format(self.format)
        if self.token is not None:
            check_token(self.token)
        if self.preview:
            require_matplotlib()


@dataclass(frozen=True)
class ExtractedPatch:
    """One patch written: its name, centre and the padding it needed, all ``x, y, z``."""

    name: str
    centre_xyz: tuple[int, int, int]
    padding_xyz: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ExtractReport:
    """What an extraction wrote."""

    tomogram: Path
    out_dir: Path
    manifest: Path
    patches: list[ExtractedPatch]
    skipped: int
    """Centres already extracted from this tomogram (kept as they were)."""
    settings: ExtractSettings
    warnings: list[str]
    previews: list[Path] = field(default_factory=list)
    """The PNG previews written (``settings.preview``), one per new patch."""


def extract_patches(
    tomogram: Path,
    segmentation: Path,
    out_dir: Path,
    centres: Path | None = None,
    *,
    points: Sequence[Centre | tuple[float, float, float]] = (),
    settings: ExtractSettings = ExtractSettings(),
    listener: Listener = SILENT,
) -> ExtractReport:
    """Cut image and label patches of ``tomogram`` and its ``segmentation`` into ``out_dir``.

    Parameters
    ----------
    centres
        A file of ``x, y, z`` rows, or a napari points CSV.
    points
        More centres ``(x, y, z)``, in voxels (or Å with ``settings.angstrom``).

    Returns
    -------
    ExtractReport
        The patches written (``images/``, ``labels/``) and recorded in the manifest; with
        ``settings.preview`` their previews (``previews/<name>.png``, not in the manifest).
    """
    tomogram, segmentation, out_dir = Path(tomogram), Path(segmentation), Path(out_dir)
    with collect_warnings() as warned:
        requested = _requested_centres(centres, points)
        with writing_into(out_dir):  # the manifest is read, extended and written back
            with closing_reader(tomogram) as image, closing_reader(segmentation) as labels:
                patches, skipped = _extract(image, labels, out_dir, requested, settings, listener)
    previews = [preview_path(out_dir, p.name) for p in patches] if settings.preview else []
    return ExtractReport(
        tomogram, out_dir, manifest_path(out_dir), patches, skipped, settings, warned, previews
    )


def _requested_centres(
    centres: Path | None, points: Sequence[Centre | tuple[float, float, float]]
) -> list[Centre]:
    requested = read_centres(Path(centres)) if centres is not None else []
    for number, point in enumerate(points, start=1):
        if not isinstance(point, Centre):
            point = Centre(tuple(float(v) for v in point), f"point {number}")  # type: ignore[arg-type]
        if not all(math.isfinite(v) for v in point.xyz):
            raise InputError(
                f"{point.source}: coordinates must be finite, got "
                + ", ".join(str(v) for v in point.xyz)
            )
        requested.append(point)
    if not requested:
        raise InputError("no centres given: pass --centres FILE or --x, --y and --z")
    return requested


@dataclass
class _Plan:
    """What an extraction writes, decided before anything is.

    ``entries`` are the manifest's entries kept (this run's are added as they are cut),
    ``new`` the patches to cut (name, centre, index ``(z, y, x)``), ``replaced`` the files
    of earlier patches they replace, removed once the new ones are in place.
    """

    entries: list[dict]
    new: list[tuple[str, Centre, Index3]]
    replaced: set[Path]
    boxes: dict[str, PatchBox] = field(default_factory=dict)
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    previews: dict[str, Path] = field(default_factory=dict)


def _extract(
    image: VolumeReader,
    labels: VolumeReader,
    out_dir: Path,
    requested: list[Centre],
    settings: ExtractSettings,
    listener: Listener,
) -> tuple[list[ExtractedPatch], int]:
    tomogram = image.info.path
    token = (
        check_token(settings.token)
        if settings.token
        else token_of(volume_stem(tomogram), tomogram)
    )
    geometry = _geometry(image, labels, settings.angstrom)
    shape = image.info.shape
    voxel_size = geometry.voxel_size if settings.angstrom else None
    located = locate_centres(requested, shape, voxel_size)
    plan = _plan_names(out_dir, token, located, settings, str(tomogram.resolve()))
    outputs = [path for pair in plan.files.values() for path in pair]
    require_free([*outputs, *plan.previews.values()], settings.overwrite)
    blocks = [box.inside(shape) for box in plan.boxes.values()]
    binarisation = _binarisation(image, labels, blocks, settings.threshold)
    # What training needs to normalise the patches as segment normalises the tomogram.
    statistics = tomogram_statistics(image) if plan.new else None
    # What retrain needs to train toward the tomogram's membrane share, not the patches'.
    share = float(binarisation.apply(spread_sample(labels)).mean()) if plan.new else None
    cutter = _Cutter(image, labels, geometry, binarisation, settings, (statistics, share))
    # The patches, then the manifest, and only then the replaced files go: recorded first
    # in a journal, so that a run killed part-way is finished by the next one.
    with staged(out_dir) as files:
        files.make_dirs(out_dir / IMAGES_SUBDIR, out_dir / LABELS_SUBDIR)
        if plan.previews:
            files.make_dirs(out_dir / PREVIEWS_SUBDIR)
        for name, centre, index in tracked(plan.new, "Extracting patches", listener):
            plan.entries.append(cutter.cut(name, centre, index, plan, files, out_dir))
        files.write_text(manifest_path(out_dir), manifest_text(plan.entries))
        files.remove(sorted(plan.replaced - set(files.finals)))
    cutter.warn_nonfinite()
    extracted = [
        ExtractedPatch(
            name,
            tuple(as_xyz(index)),  # type: ignore[arg-type]
            tuple(as_xyz(plan.boxes[name].padding(shape))),
        )
        for name, _, index in plan.new
    ]
    return extracted, len(located) - len(plan.new)


def _geometry(image: VolumeReader, labels: VolumeReader, angstrom: bool) -> Geometry:
    """The tomogram's geometry, written to the patches, after checking the segmentation
    against the tomogram."""
    tomogram, segmentation = image.info.path, labels.info.path
    if labels.info.shape != image.info.shape:
        raise InputError(
            f"{segmentation}: shape x,y,z={tuple(as_xyz(labels.info.shape))} differs from "
            f"the tomogram {tomogram}: x,y,z={tuple(as_xyz(image.info.shape))}"
        )
    if image.info.geometry is None and angstrom:
        raise InputError(
            f"{tomogram}: header has no voxel size, so --angstrom cannot convert centres; "
            "give them in voxels"
        )
    geometry = geometry_or_unit(image.info.geometry, tomogram, "patches are written")
    if labels.info.geometry is not None and not labels.info.geometry.agrees_with(geometry):
        warn(
            f"{segmentation}: voxel size/origin differ from the tomogram's; the tomogram's "
            "are written to the patches"
        )
    return geometry


def _binarisation(
    image: VolumeReader,
    labels: VolumeReader,
    blocks: list[tuple[Index3, Index3]],
    threshold: float | None,
) -> Binarisation:
    """One rule for the whole segmentation, from the values of every patch; a segmentation
    that looks like a density map is refused unless ``threshold`` says how to read it."""
    segmentation = labels.info.path
    survey = Survey.of(labels, blocks)
    binarisation = choose_binarisation(survey.values, threshold)
    if threshold is None:
        refuse_density(segmentation, survey, lambda: correlation(labels, image, blocks))
        if binarisation.rule != "binary":
            warn(
                f"{segmentation}: values are not 0/1; read as {binarisation.rule}. "
                "Pass --threshold to choose."
            )
    return binarisation


class _Cutter:
    """Cuts one patch pair after another into staged files, counting the NaN and infinite
    voxels it meets in the tomogram and the segmentation."""

    def __init__(self, image, labels, geometry, binarisation, settings, whole):
        self.image, self.labels, self.geometry = image, labels, geometry
        self.binarisation, self.settings = binarisation, settings
        self.statistics, self.share = whole  # the tomogram's, the segmentation's
        self.nonfinite = [0, 0]

    def cut(self, name, centre, index, plan: _Plan, files: StagedFiles, out_dir: Path) -> dict:
        """Write patch ``name`` (and its preview); its manifest entry."""
        shape, box = self.image.info.shape, plan.boxes[name]
        start, stop = box.inside(shape)
        image, pad_value, filled = image_patch(self.image.read_block(start, stop), box, shape)
        block = self.labels.read_block(start, stop)
        self.nonfinite[0] += filled
        if block.dtype.kind == "f":
            self.nonfinite[1] += int(np.count_nonzero(~np.isfinite(block)))
        border = self.settings.border
        labels = label_patch(block, box, shape, border, self.binarisation)
        geometry = self.geometry.shifted(box.offset)
        for final, data in zip(plan.files[name], (image, labels)):
            write_volume(files.stage(final, volume_suffix(final)), data, geometry)
        if name in plan.previews:
            cx, cy, cz = as_xyz(index)
            title = f"{name}: centre x={cx} y={cy} z={cz} in {self.image.info.path.name}"
            png = extraction_preview(image, labels, title=title, offset=box.offset)
            files.stage(plan.previews[name], ".png").write_bytes(png)
        return new_entry(
            name,
            tuple(path.relative_to(out_dir).as_posix() for path in plan.files[name]),
            {
                "tomogram": str(self.image.info.path.resolve()),
                "segmentation": str(self.labels.info.path.resolve()),
            },
            index,
            box.offset,
            box.size,
            shape,
            geometry,
            box.padding(shape),
            centre_given=list(centre.xyz),
            centre_source=centre.source,
            border=border,
            image_pad_value=pad_value,
            label_rule=self.binarisation.rule,
            label_threshold=self.binarisation.threshold,
            segmentation_membrane_share=self.share,
            intensity_statistics=self.statistics,
        )

    def warn_nonfinite(self) -> None:
        if self.nonfinite[0]:
            warn(
                f"{self.image.info.path}: {self.nonfinite[0]} voxel(s) of the patches are NaN "
                "or infinite; written as the mean of the finite ones"
            )
        if self.nonfinite[1]:
            warn(
                f"{self.labels.info.path}: {self.nonfinite[1]} voxel(s) of the patches are NaN "
                "or infinite; ignore in the label patches"
            )


def _plan_names(
    out_dir: Path, token: str, located: list, settings: ExtractSettings, tomogram: str
) -> _Plan:
    """Keep the manifest's other patches and name the new ones ``<token>_patchNNN``, with
    the files each is written to.

    Without ``overwrite``, numbering continues after this token's last patch and a centre
    already extracted from the same tomogram with the same size is skipped. With it, this
    token's patches are dropped from the manifest and re-extracted from number 000; their
    files are returned, to be deleted once the new ones are written, with their previews
    (which would show the old patches).
    """
    entries = load_manifest(out_dir)
    prefix = f"{token}_patch"
    mine = {
        id(e): PatchRecord.from_entry(e, out_dir)
        for e in entries
        if e["name"].startswith(prefix) and e["name"][len(prefix) :].isdigit()
    }
    earlier = {r.name: (r.centre, r.size) for r in mine.values()}
    replaced: set[Path] = set()
    if settings.overwrite:
        # As the manifest names them (under out_dir as given), like the files staged now.
        ours = [e for e in entries if id(e) in mine]
        replaced = {out_dir / e[key] for e in ours for key in ("image", "label")}
        replaced |= {p for r in mine.values() if (p := preview_path(out_dir, r.name)).exists()}
        entries = [e for e in entries if id(e) not in mine]
        mine = {}
    done = {(r.tomogram, r.centre, r.size) for r in mine.values()}
    number = max((int(r.name[len(prefix) :]) + 1 for r in mine.values()), default=0)
    size = (settings.patch_size,) * 3
    plan = _Plan(entries, [], replaced)
    for centre, index in located:
        if (tomogram, index, size) in done:
            continue
        done.add((tomogram, index, size))
        name = f"{prefix}{number:03d}"
        plan.new.append((name, centre, index))
        plan.boxes[name] = PatchBox.around(index, size)
        plan.files[name] = (
            output_path(out_dir / IMAGES_SUBDIR, name, settings.format),
            output_path(out_dir / LABELS_SUBDIR, name, settings.format),
        )
        if settings.preview:
            plan.previews[name] = preview_path(out_dir, name)
        number += 1
    again = [(n, index, earlier[n]) for n, _, index in plan.new if n in earlier]
    moved = [n for n, index, (centre, _) in again if centre != index]
    if moved:
        warn(
            f"{', '.join(moved)}: now cut at other centres than before; corrections painted "
            "on the old patches do not fit them (merge_corrections refuses NRRD masks whose "
            "origin differs)"
        )
    resized = [n for n, _, (_, old) in again if old != size and n not in moved]
    if resized:
        was = xyz_text(earlier[resized[0]][1])
        warn(
            f"{', '.join(resized)}: now cut at --patch-size {settings.patch_size}, before at "
            f"x,y,z={was}; corrections painted on the old patches do not fit them "
            "(merge_corrections refuses masks of another shape or origin)"
        )
    return plan
