"""Extraction: cut image and label patches around centres, ready to be corrected."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import BORDER_WIDTH, IMAGES_SUBDIR, LABELS_SUBDIR, PATCH_SIZE
from ..errors import InputError
from ..intensity import tomogram_statistics
from ..io.centres import Centre, read_centres
from ..io.files import StagedFiles
from ..io.manifest import as_xyz, load_manifest, manifest_path, manifest_text
from ..io.volumes import (
    Geometry,
    VolumeReader,
    closing_reader,
    output_path,
    volume_stem,
    volume_suffix,
    write_volume,
)
from ..patches import (
    Index3,
    PatchBox,
    ValueRange,
    centre_index,
    check_patch_size,
    choose_binarisation,
    image_patch,
    label_patch,
)
from ..previews import PREVIEWS_SUBDIR, extraction_preview, require_matplotlib
from ._common import (
    check_format,
    collect_warnings,
    require_free,
    tracked,
    warn,
    writing_into,
)
from .events import SILENT, Listener

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise InputError(
            f"--token {token!r}: use letters, digits and . _ + - only (it becomes a file name)"
        )
    return token


def _safe_token(tomogram: Path) -> str:
    """The tomogram's stem as a token, with each character a file name should not hold
    replaced by ``_`` (and said so)."""
    stem = volume_stem(tomogram)
    if _TOKEN.fullmatch(stem):
        return stem
    token = re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip("._+-") or "tomogram"
    warn(f"{tomogram}: patches are named {token}_patchNNN (give --token to choose)")
    return token


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
            _check_token(self.token)
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
            patches, skipped = _extract(
                tomogram, segmentation, out_dir, requested, settings, listener
            )
    previews = [preview_path(out_dir, p.name) for p in patches] if settings.preview else []
    return ExtractReport(
        tomogram, out_dir, manifest_path(out_dir), patches, skipped, settings, warned, previews
    )


def preview_path(out_dir: Path, name: str) -> Path:
    """Where the preview of patch ``name`` of an extraction folder goes."""
    return Path(out_dir) / PREVIEWS_SUBDIR / f"{name}.png"


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


def _extract(
    tomogram: Path,
    segmentation: Path,
    out_dir: Path,
    requested: list[Centre],
    settings: ExtractSettings,
    listener: Listener,
) -> tuple[list[ExtractedPatch], int]:
    fmt, border, overwrite = settings.format, settings.border, settings.overwrite
    token = _check_token(settings.token) if settings.token else _safe_token(tomogram)
    with closing_reader(tomogram) as image_reader, closing_reader(segmentation) as seg_reader:
        shape = image_reader.info.shape
        if seg_reader.info.shape != shape:
            raise InputError(
                f"{segmentation}: shape x,y,z={tuple(as_xyz(seg_reader.info.shape))} "
                f"differs from the tomogram {tomogram}: x,y,z={tuple(as_xyz(shape))}"
            )
        geometry = image_reader.info.geometry
        if geometry is None:
            if settings.angstrom:
                raise InputError(
                    f"{tomogram}: header has no voxel size, so --angstrom "
                    "cannot convert centres; give them in voxels"
                )
            warn(f"{tomogram}: header has no voxel size; patches are written with 1 Å")
            geometry = Geometry((1.0, 1.0, 1.0))
        seg_geometry = seg_reader.info.geometry
        if seg_geometry is not None and not seg_geometry.agrees_with(geometry):
            warn(
                f"{segmentation}: voxel size/origin differ from the tomogram's; "
                "the tomogram's are written to the patches"
            )
        located = _locate_centres(
            requested,
            shape,
            geometry.voxel_size if settings.angstrom else None,
            "Å" if settings.angstrom else "voxels",
        )
        sources = {
            "tomogram": str(tomogram.resolve()),
            "segmentation": str(segmentation.resolve()),
        }
        records, new, replaced = _plan_names(
            out_dir, token, located, settings.patch_size, sources["tomogram"], overwrite
        )
        size = (settings.patch_size,) * 3
        boxes = {name: PatchBox.around(index, size) for name, _, index in new}
        paths = {
            name: (
                output_path(out_dir / IMAGES_SUBDIR, name, fmt),
                output_path(out_dir / LABELS_SUBDIR, name, fmt),
            )
            for name in boxes
        }
        previews = (
            {name: preview_path(out_dir, name) for name in boxes} if settings.preview else {}
        )
        require_free(
            [*(p for pair in paths.values() for p in pair), *previews.values()], overwrite
        )
        # One rule for the whole segmentation, from the values of every patch.
        blocks = [b.inside(shape) for b in boxes.values()]
        survey = _Survey.of(seg_reader, blocks)
        binarisation = choose_binarisation(survey.values, settings.threshold)
        if settings.threshold is None:
            _refuse_density(
                segmentation, survey, lambda: _correlation(seg_reader, image_reader, blocks)
            )
        if binarisation.rule != "binary" and settings.threshold is None:
            warn(
                f"{segmentation}: values are not 0/1; read as {binarisation.rule}. "
                "Pass --threshold to choose."
            )

        # What training needs to normalise the patches as segment normalises the tomogram.
        statistics = tomogram_statistics(image_reader) if new else None
        nonfinite = [0, 0]  # NaN or infinite voxels met in the tomogram, the segmentation
        staged = StagedFiles()
        try:
            staged.make_dirs(out_dir / IMAGES_SUBDIR, out_dir / LABELS_SUBDIR)
            if previews:
                staged.make_dirs(out_dir / PREVIEWS_SUBDIR)
            for name, centre, index in tracked(new, "Extracting patches", listener):
                box = boxes[name]
                start, stop = box.inside(shape)
                image, pad_value, filled = image_patch(
                    image_reader.read_block(start, stop), box, shape
                )
                segmentation_block = seg_reader.read_block(start, stop)
                nonfinite[0] += filled
                if segmentation_block.dtype.kind == "f":
                    nonfinite[1] += int(np.count_nonzero(~np.isfinite(segmentation_block)))
                labels = label_patch(segmentation_block, box, shape, border, binarisation)
                patch_geometry = geometry.shifted(box.offset)
                for final, data in zip(paths[name], (image, labels)):
                    write_volume(staged.stage(final, volume_suffix(final)), data, patch_geometry)
                if previews:
                    cx, cy, cz = as_xyz(index)
                    png = extraction_preview(
                        image,
                        labels,
                        title=f"{name}: centre x={cx} y={cy} z={cz} in {tomogram.name}",
                        offset=box.offset,
                    )
                    staged.stage(previews[name], ".png").write_bytes(png)
                records.append(
                    {
                        "name": name,
                        "image": paths[name][0].relative_to(out_dir).as_posix(),
                        "label": paths[name][1].relative_to(out_dir).as_posix(),
                        **sources,
                        "centre_xyz": as_xyz(index),
                        "centre_given": list(centre.xyz),
                        "centre_source": centre.source,
                        "offset_xyz": as_xyz(box.offset),
                        "size_xyz": as_xyz(box.size),
                        "tomogram_shape_xyz": as_xyz(shape),
                        "voxel_size_xyz": as_xyz(patch_geometry.voxel_size),
                        "origin_xyz": as_xyz(patch_geometry.origin),
                        "padding_xyz": as_xyz(box.padding(shape)),
                        "border": border,
                        "image_pad_value": pad_value,
                        "label_rule": binarisation.rule,
                        "intensity_statistics": statistics,
                    }
                )
        except BaseException:
            staged.discard()
            raise
        # The patches, then the manifest, and only then the replaced files go: recorded
        # first in a journal, so that a run killed part-way is finished by the next one.
        staged.commit(
            out_dir,
            {manifest_path(out_dir): manifest_text(records)},
            remove=sorted(replaced - set(staged.finals)),
        )
        if nonfinite[0]:
            warn(
                f"{tomogram}: {nonfinite[0]} voxel(s) of the patches are NaN or infinite; "
                "written as the mean of the finite ones"
            )
        if nonfinite[1]:
            warn(
                f"{segmentation}: {nonfinite[1]} voxel(s) of the patches are NaN or infinite; "
                "ignore in the label patches"
            )
    extracted = [
        ExtractedPatch(
            name,
            tuple(as_xyz(index)),  # type: ignore[arg-type]
            tuple(as_xyz(boxes[name].padding(shape))),
        )
        for name, _, index in new
    ]
    return extracted, len(located) - len(new)


DENSITY_MIN_DISTINCT = 32
"""A segmentation with fewer distinct values than this in every patch (binary masks, a few
classes, a score map of few levels) is never taken for a tomogram."""
DENSITY_MEMBRANE_SHARE = 0.4
"""Share of the patches' voxels above 0 from which values beyond [0, 1] (read as label
values or scores) are taken for a density map: a segmentation marks far fewer voxels as
membrane, a tomogram's densities lie around their mean (about half above 0) or all above 0."""
DENSITY_CORRELATION = 0.9
"""Correlation with the tomogram's values in the patches from which the segmentation is
taken for the tomogram itself, or a copy of it in other units (a network's scores follow
the density far more loosely: -0.63 on the sample data)."""
_SAMPLE_VOXELS = 1 << 18
"""At most this many voxels of a patch are sampled to count distinct values and correlate."""


@dataclass(frozen=True)
class _Survey:
    """What the segmentation's values in the patches say, before anything is written."""

    values: ValueRange
    finite: int
    """Finite voxels in the patches."""
    above_zero: int
    """Voxels in the patches with a value above 0."""
    distinct: int
    """Distinct values in the patch that has most (counted on a sample of its voxels)."""

    @classmethod
    def of(cls, reader: VolumeReader, blocks: list[tuple[Index3, Index3]]) -> _Survey:
        values, finite, above, distinct = ValueRange(0.0, 0.0, True), 0, 0, 0
        for start, stop in blocks:
            block = reader.read_block(start, stop)
            values = values | ValueRange.of(block)
            finite += (
                int(np.count_nonzero(np.isfinite(block)))
                if block.dtype.kind == "f"
                else block.size
            )
            above += int(np.count_nonzero(block > 0))
            distinct = max(distinct, len(np.unique(_sample(block))))
        return cls(values, finite, above, distinct)


def _sample(block: np.ndarray) -> np.ndarray:
    """Evenly spaced voxels of ``block``, flattened: all of them, or about ``_SAMPLE_VOXELS``."""
    return block.reshape(-1)[:: max(1, block.size // _SAMPLE_VOXELS)]


def _correlation(
    seg_reader: VolumeReader, image_reader: VolumeReader, blocks: list[tuple[Index3, Index3]]
) -> float:
    """Pearson correlation of the segmentation's and the tomogram's values over samples of
    the patches; 0 where either is constant."""
    n = sum_s = sum_t = sum_ss = sum_tt = sum_st = 0.0
    shift: tuple[float, float] | None = None
    for start, stop in blocks:
        s = _sample(seg_reader.read_block(start, stop)).astype(np.float64)
        t = _sample(image_reader.read_block(start, stop)).astype(np.float64)
        finite = np.isfinite(s) & np.isfinite(t)
        s, t = s[finite], t[finite]
        if s.size == 0:
            continue
        if shift is None:  # raw densities lie far from 0: keep the sums of squares exact
            shift = (float(s.mean()), float(t.mean()))
        s, t = s - shift[0], t - shift[1]
        n += s.size
        sum_s, sum_t = sum_s + s.sum(), sum_t + t.sum()
        sum_ss, sum_tt, sum_st = sum_ss + s @ s, sum_tt + t @ t, sum_st + s @ t
    if n == 0:
        return 0.0
    var_s, var_t = sum_ss - sum_s**2 / n, sum_tt - sum_t**2 / n
    if var_s <= 0 or var_t <= 0:
        return 0.0
    return float((sum_st - sum_s * sum_t / n) / np.sqrt(var_s * var_t))


def _refuse_density(segmentation: Path, survey: _Survey, correlation: Callable[[], float]) -> None:
    """Refuse a segmentation whose values look like a tomogram's densities: an
    ``InputError`` naming what gave it away, and how to go on (``--threshold``).

    Binary masks and probabilities (values within [0, 1]) and maps of few distinct values
    (label classes) always pass; ``correlation()`` is only computed for the rest.
    """
    values = survey.values
    if (values.low >= 0 and values.high <= 1) or survey.distinct < DENSITY_MIN_DISTINCT:
        return
    share = survey.above_zero / max(survey.finite, 1)
    if share >= DENSITY_MEMBRANE_SHARE:
        clue = f"{share:.0%} of the patches' voxels would be membrane (values above 0)"
    else:
        r = correlation()
        if abs(r) < DENSITY_CORRELATION:
            return
        clue = f"its values follow the tomogram's (correlation {r:.2f})"
    raise InputError(
        f"{segmentation}: looks like a tomogram (density values), not a segmentation: "
        f"at least {survey.distinct} distinct values, and {clue}. Give the network's "
        "segmentation or scoremap (segment writes both), or pass --threshold to binarise "
        "these values anyway"
    )


def _locate_centres(
    centres: list[Centre],
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float] | None,
    unit: str,
) -> list[tuple[Centre, tuple[int, int, int]]]:
    located = []
    for centre in centres:
        index = centre_index(centre.xyz, voxel_size)
        if not all(0 <= i < n for i, n in zip(index, shape)):
            x, y, z = centre.xyz
            limits = "x < {}, y < {}, z < {}".format(*as_xyz(shape))
            raise InputError(
                f"{centre.source}: centre x={x:g}, y={y:g}, z={z:g} ({unit}) lies outside "
                f"the tomogram (voxel indices must satisfy 0 <= {limits})"
            )
        located.append((centre, index))
    return located


def _plan_names(
    out_dir: Path, token: str, located: list, patch_size: int, tomogram: str, overwrite: bool
) -> tuple[list[dict], list[tuple[str, Centre, tuple[int, int, int]]], set[Path]]:
    """Keep the manifest's other patches and name the new ones ``<token>_patchNNN``.

    Without ``overwrite``, numbering continues after this token's last patch and a centre
    already extracted from the same tomogram with the same size is skipped. With it, this
    token's patches are dropped from the manifest and re-extracted from number 000; their
    files are returned, to be deleted once the new ones are written, with their previews
    (which would show the old patches).
    """
    records = load_manifest(out_dir)
    prefix = f"{token}_patch"
    mine = [
        r for r in records if r["name"].startswith(prefix) and r["name"][len(prefix) :].isdigit()
    ]
    replaced: set[Path] = set()
    earlier = {r["name"]: r.get("centre_xyz") for r in mine}
    if overwrite:
        replaced = {out_dir / r[key] for r in mine for key in ("image", "label")}
        replaced |= {p for r in mine if (p := preview_path(out_dir, r["name"])).exists()}
        records = [r for r in records if r not in mine]
        mine = []
    done = {
        (r.get("tomogram"), tuple(r.get("centre_xyz", ())), tuple(r["size_xyz"])) for r in mine
    }
    number = max((int(r["name"][len(prefix) :]) + 1 for r in mine), default=0)
    new = []
    for centre, index in located:
        key = (tomogram, tuple(as_xyz(index)), (patch_size,) * 3)
        if key in done:
            continue
        done.add(key)
        new.append((f"{prefix}{number:03d}", centre, index))
        number += 1
    moved = [n for n, _, index in new if n in earlier and earlier[n] != as_xyz(index)]
    if moved:
        warn(
            f"{', '.join(moved)}: now cut at other centres than before; corrections painted "
            "on the old patches do not fit them (merge_corrections refuses NRRD masks whose "
            "origin differs)"
        )
    return records, new, replaced
