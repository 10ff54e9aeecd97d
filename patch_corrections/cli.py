"""The command line: parse options, validate, read, call the pure cores, write, report.

User mistakes raise ``InputError``; each command turns it into one line on stderr and exit
code 1. Recoverable oddities are ``PatchCorrectionsWarning``s, collected and printed in the
end-of-run summary.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import operator
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import numpy as np
import typer

from .constants import (
    BACKGROUND,
    BORDER_WIDTH,
    CORRECTION_KINDS,
    DEFAULT_LOSS,
    IGNORE,
    IMAGES_SUBDIR,
    LABELS_SUBDIR,
    MEMBRANE,
    MERGE_SUMMARY_NAME,
    PATCH_SIZE,
    RELABEL_DIR,
    TRAIN_IMAGE_SUFFIX,
    TRAIN_IMAGES_SUBDIR,
    TRAIN_LABELS_SUBDIR,
)
from .corrections import merge_labels, require_label_values, union_mask
from .errors import InputError, PatchCorrectionsWarning
from .io.centres import Centre, read_centres
from .io.files import StagedFiles, atomic_target, write_text_atomic
from .io.folders import LabelPatch, find_label_patches, scan_corrections, stray_files
from .io.manifest import as_xyz, load_manifest, manifest_path, padding_zyx, save_manifest
from .io.volumes import (
    Geometry,
    closing_reader,
    output_path,
    read_info,
    read_volume,
    set_mrc_geometry,
    volume_stem,
    volume_suffix,
    write_volume,
)
from .patches import (
    PatchBox,
    ValueRange,
    centre_index,
    check_patch_size,
    choose_binarisation,
    image_patch,
    label_patch,
)
from .sparse import AXES, parse_slices, random_boxes, slices_mask, spaced_slices, sparsify

app = typer.Typer(
    name="patch_corrections",
    help="Correct a membrane segmentation in patches and turn the corrections into "
    "training data for the network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
P = ParamSpec("P")
PROGRESS_MIN_ITEMS = 3
"""Progress bars appear from this many patches on."""


class OutputFormat(str, Enum):
    nrrd = "nrrd"
    mrc = "mrc"
    nii_gz = "nii.gz"


def _user_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Turn ``InputError`` into one line on stderr and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except InputError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; this run wrote nothing.", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # permissions, full disk: the system's words suffice
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _warn(message: str) -> None:
    warnings.warn(message, PatchCorrectionsWarning, stacklevel=2)


@contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Gather our warnings for the summary instead of printing them as they happen."""
    collected: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PatchCorrectionsWarning)
            yield collected
    finally:
        # Foreign warnings are passed on only once recording has stopped: re-emitted while
        # recording, each would be appended to the list being read, without end.
        for item in caught:
            if issubclass(item.category, PatchCorrectionsWarning):
                message = str(item.message)
                if message not in collected:
                    collected.append(message)
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _progress(items: list[T], description: str) -> Iterable[T]:
    if len(items) < PROGRESS_MIN_ITEMS:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)


def _report_warnings(messages: list[str]) -> None:
    if messages:
        typer.echo(f"Warnings ({len(messages)}):")
        for message in messages:
            typer.echo(f"  - {message}")


def _check_out_dir(out_dir: Path) -> None:
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder; choose another --out-dir")


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise InputError(
            f"--token {token!r}: use letters, digits and . _ + - only (it becomes a file name)"
        )
    return token


def _require_free(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    taken = [p for p in paths if p.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise InputError(f"{taken[0]}: already exists{more}; pass --overwrite to replace")


# --- extract_patches --------------------------------------------------------------------


def _gather_centres(
    centres_file: Path | None, x: float | None, y: float | None, z: float | None
) -> list[Centre]:
    given = [v is not None for v in (x, y, z)]
    if any(given) and not all(given):
        raise InputError("give all three of --x, --y and --z, or a --centres file")
    centres = read_centres(centres_file) if centres_file is not None else []
    if all(given):
        if not all(math.isfinite(v) for v in (x, y, z)):  # type: ignore[arg-type]
            raise InputError(f"--x/--y/--z: coordinates must be finite, got {x}, {y}, {z}")
        centres.append(Centre((float(x), float(y), float(z)), "--x/--y/--z"))  # type: ignore[arg-type]
    if not centres:
        raise InputError("no centres given: pass --centres FILE or --x, --y and --z")
    return centres


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


@app.command(name="extract_patches", no_args_is_help=True)
@_user_errors
def extract_patches(
    tomogram: Annotated[
        Path,
        typer.Option(
            "--tomogram", "-t", help="Tomogram (.mrc .rec .map .st .nrrd .nhdr .nii .nii.gz)."
        ),
    ],
    segmentation: Annotated[
        Path,
        typer.Option(
            "--segmentation", "-s", help="The network's segmentation of the tomogram, same shape."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            help="Folder for images/, labels/ and manifest.json; created if missing.",
        ),
    ],
    centres: Annotated[
        Path | None,
        typer.Option(
            "--centres",
            "-c",
            help="CSV/TXT of x,y,z rows, or a napari points CSV (axis-0..2 = z,y,x).",
        ),
    ] = None,
    x: Annotated[float | None, typer.Option("--x", help="Centre x of a single patch.")] = None,
    y: Annotated[float | None, typer.Option("--y", help="Centre y of a single patch.")] = None,
    z: Annotated[float | None, typer.Option("--z", help="Centre z of a single patch.")] = None,
    angstrom: Annotated[
        bool,
        typer.Option("--angstrom", help="Centres are in Å from the first voxel, not in voxels."),
    ] = False,
    patch_size: Annotated[
        int, typer.Option("--patch-size", help="Edge length of the cubic patches, in voxels.")
    ] = PATCH_SIZE,
    border: Annotated[
        int,
        typer.Option(
            "--border", help="Width of the ignore band along every face of a label patch."
        ),
    ] = BORDER_WIDTH,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Binarise the segmentation: values above it are membrane."
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="File format of the patches.")
    ] = OutputFormat.nrrd,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Patch name prefix; default: the tomogram's file name stem."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace this token's patches instead of adding to them."
        ),
    ] = False,
) -> None:
    """Cut image and label patches around centres, ready to be corrected."""
    with _collect_warnings() as warned:
        check_patch_size(patch_size, border)
        requested = _gather_centres(centres, x, y, z)
        fmt = output_format.value
        token = _check_token(token or volume_stem(tomogram))
        _check_out_dir(out_dir)
        with closing_reader(tomogram) as image_reader, closing_reader(segmentation) as seg_reader:
            shape = image_reader.info.shape
            if seg_reader.info.shape != shape:
                raise InputError(
                    f"{segmentation}: shape x,y,z={tuple(as_xyz(seg_reader.info.shape))} "
                    f"differs from the tomogram {tomogram}: x,y,z={tuple(as_xyz(shape))}"
                )
            geometry = image_reader.info.geometry
            if geometry is None:
                if angstrom:
                    raise InputError(
                        f"{tomogram}: header has no voxel size, so --angstrom "
                        "cannot convert centres; give them in voxels"
                    )
                _warn(f"{tomogram}: header has no voxel size; patches are written with 1 Å")
                geometry = Geometry((1.0, 1.0, 1.0))
            seg_geometry = seg_reader.info.geometry
            if seg_geometry is not None and not seg_geometry.agrees_with(geometry):
                _warn(
                    f"{segmentation}: voxel size/origin differ from the tomogram's; "
                    "the tomogram's are written to the patches"
                )
            located = _locate_centres(
                requested,
                shape,
                geometry.voxel_size if angstrom else None,
                "Å" if angstrom else "voxels",
            )
            sources = {
                "tomogram": str(tomogram.resolve()),
                "segmentation": str(segmentation.resolve()),
            }
            records, new, replaced = _plan_names(
                out_dir, token, located, patch_size, sources["tomogram"], overwrite
            )
            size = (patch_size,) * 3
            boxes = {name: PatchBox.around(index, size) for name, _, index in new}
            paths = {
                name: (
                    output_path(out_dir / IMAGES_SUBDIR, name, fmt),
                    output_path(out_dir / LABELS_SUBDIR, name, fmt),
                )
                for name in boxes
            }
            _require_free([p for pair in paths.values() for p in pair], overwrite)
            # One rule for the whole segmentation, from the values of every patch.
            values = [
                ValueRange.of(seg_reader.read_block(*b.inside(shape))) for b in boxes.values()
            ]
            binarisation = choose_binarisation(
                functools.reduce(operator.or_, values, ValueRange(0.0, 0.0, True)), threshold
            )
            if binarisation.rule != "binary" and threshold is None:
                _warn(
                    f"{segmentation}: values are not 0/1; read as {binarisation.rule}. "
                    "Pass --threshold to choose."
                )

            staged = StagedFiles()
            try:
                staged.make_dirs(out_dir / IMAGES_SUBDIR, out_dir / LABELS_SUBDIR)
                for name, centre, index in _progress(new, "Extracting patches"):
                    box = boxes[name]
                    start, stop = box.inside(shape)
                    image, pad_value = image_patch(
                        image_reader.read_block(start, stop), box, shape
                    )
                    labels = label_patch(
                        seg_reader.read_block(start, stop), box, shape, border, binarisation
                    )
                    patch_geometry = geometry.shifted(box.offset)
                    for final, data in zip(paths[name], (image, labels)):
                        staged_path = staged.stage(final, volume_suffix(final))
                        write_volume(staged_path, data, patch_geometry)
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
                        }
                    )
            except BaseException:
                staged.discard()
                raise
            written = staged.finals
            staged.commit()
            save_manifest(out_dir, records)
            # Only once the new patches and manifest are in place do replaced ones go.
            for path in replaced - set(written):
                path.unlink(missing_ok=True)
        _report_extraction(new, shape, size, out_dir, fmt, border, tomogram)
        skipped = len(located) - len(new)
        if skipped:
            typer.echo(
                f"Skipped {skipped} centre(s) already extracted from {tomogram.name} "
                "(see the manifest); --overwrite re-extracts them."
            )
    _report_warnings(warned)


def _plan_names(
    out_dir: Path, token: str, located: list, patch_size: int, tomogram: str, overwrite: bool
) -> tuple[list[dict], list[tuple[str, Centre, tuple[int, int, int]]], set[Path]]:
    """Keep the manifest's other patches and name the new ones ``<token>_patchNNN``.

    Without ``overwrite``, numbering continues after this token's last patch and a centre
    already extracted from the same tomogram with the same size is skipped. With it, this
    token's patches are dropped from the manifest and re-extracted from number 000; their
    files are returned, to be deleted once the new ones are written.
    """
    records = load_manifest(out_dir)
    prefix = f"{token}_patch"
    mine = [
        r for r in records if r["name"].startswith(prefix) and r["name"][len(prefix) :].isdigit()
    ]
    replaced: set[Path] = set()
    if overwrite:
        replaced = {out_dir / r[key] for r in mine for key in ("image", "label")}
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
    return records, new, replaced


def _report_extraction(new, shape, size, out_dir, fmt, border, tomogram) -> None:
    typer.echo(
        f"Extracted {len(new)} patch pair(s) of {size[0]}³ voxels from {tomogram.name} "
        f"into {out_dir} ({fmt}, ignore border {border})."
    )
    for name, _, index in new:
        box = PatchBox.around(index, size)
        padded = [
            f"{axis} {b}/{a}" for axis, (b, a) in zip("xyz", as_xyz(box.padding(shape))) if b or a
        ]
        note = f"  padding before/after: {', '.join(padded)}" if padded else ""
        cx, cy, cz = as_xyz(index)
        typer.echo(f"  {name}  centre x={cx} y={cy} z={cz}{note}")
    if new:
        typer.echo(f"Manifest: {manifest_path(out_dir)}")
        typer.echo(
            f"Next: paint corrections as <corrections-dir>/{new[0][0]}/Add1.nrrd, "
            "Remove1.nrrd, Ignore1.nrrd, then run merge_corrections."
        )


# --- merge_corrections ------------------------------------------------------------------


def _check_same_shape(path: Path, reference: Path, shape, expected) -> None:
    if shape != expected:
        raise InputError(
            f"{path}: shape x,y,z={tuple(as_xyz(shape))} differs from its patch {reference}: "
            f"x,y,z={tuple(as_xyz(expected))}"
        )


@app.command(name="merge_corrections", no_args_is_help=True)
@_user_errors
def merge_corrections(
    labels_dir: Annotated[
        Path,
        typer.Option(
            "--labels-dir",
            "-l",
            help="Label patches: an "
            "extract_patches output folder, its labels/, "
            "or any folder of label files.",
        ),
    ],
    corrections_dir: Annotated[
        Path,
        typer.Option(
            "--corrections-dir",
            "-c",
            help="One folder per patch holding Add*, Remove*, Ignore* masks.",
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            help="Training folder to write (imagesTr/, labelsTr/); created if missing.",
        ),
    ],
    images_dir: Annotated[
        Path | None,
        typer.Option(
            "--images-dir",
            help="Image patches, "
            "named like the labels (or <name>_0000); "
            "default: from the manifest.",
        ),
    ] = None,
    border: Annotated[
        int | None,
        typer.Option("--border", help="Ignore band width; default: the manifest's, else 16."),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="File format of the training pairs.")
    ] = OutputFormat.nii_gz,
    include_uncorrected: Annotated[
        bool,
        typer.Option(
            "--include-uncorrected",
            help="Also write patches that have no corrections folder, as they are.",
        ),
    ] = False,
    sparse: Annotated[
        bool,
        typer.Option(
            "--sparse",
            help="Sparse annotation: start every patch as all ignore, so only the Add "
            "(membrane) and Remove (background) strokes, and --keep-slices, are labels.",
        ),
    ] = False,
    keep_slices: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-slices",
            help="With --sparse, keep the patch's labels on these slices, e.g. z=40,80,100-110 "
            "(patch voxel indices; repeat for other axes).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing training pairs.")
    ] = False,
) -> None:
    """Merge Add/Remove/Ignore masks into label patches: training pairs for retrain."""
    with _collect_warnings() as warned:
        if border is not None and border < 0:
            raise InputError(f"--border must be 0 or more, got {border}")
        if keep_slices and not sparse:
            raise InputError(
                "--keep-slices chooses what a --sparse merge keeps; add --sparse (without "
                "it every slice is kept)"
            )
        patches = find_label_patches(labels_dir, images_dir)
        if not patches:
            raise InputError(f"{labels_dir}: no label patches found")
        folders = scan_corrections(corrections_dir)
        names = {p.name for p in patches}
        orphans = sorted(set(folders) - names)
        uncorrected = [p.name for p in patches if p.name not in folders]
        chosen = [p for p in patches if p.name in folders or include_uncorrected]
        if not any(p.name in folders for p in patches) and not include_uncorrected:
            example = patches[0].name
            raise InputError(
                f"{corrections_dir}: no folder matches a patch of {labels_dir}; name each "
                f"folder after its patch, e.g. {corrections_dir / example}"
            )
        fmt = output_format.value
        plans = [
            _plan_merge(p, folders.get(p.name), out_dir, fmt, border, images_dir) for p in chosen
        ]
        for plan in plans:
            plan.sparse = sparse
            plan.keep_slices = _keep_slices(keep_slices or [], plan.shape, plan.patch.label)
        _require_free([path for plan in plans for path in plan.outputs], overwrite)

        _check_out_dir(out_dir)
        staged = StagedFiles()
        try:
            staged.make_dirs(out_dir / TRAIN_IMAGES_SUBDIR, out_dir / TRAIN_LABELS_SUBDIR)
            rows = [_merge_one(plan, staged) for plan in _progress(plans, "Merging corrections")]
        except BaseException:
            staged.discard()
            raise
        staged.commit()
        summary = {
            "patches": _merged_rows(out_dir / MERGE_SUMMARY_NAME, rows),
            "uncorrected": uncorrected,
            "folders_without_patch": orphans,
            "unmatched_files": [str(f) for f in _unmatched(folders, corrections_dir)],
        }
        write_text_atomic(out_dir / MERGE_SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        _report_merge(
            rows,
            out_dir,
            uncorrected,
            include_uncorrected,
            orphans,
            summary["unmatched_files"],
            corrections_dir,
        )
    _report_warnings(warned)


def _summary_rows(path: Path, unreadable: str) -> dict[str, dict]:
    """The per-patch rows of a ``merge_summary.json`` by patch name (empty without one);
    a file that cannot be read is a warning that ends with ``unreadable``."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["patches"]
        return {r["name"]: r for r in rows if isinstance(r, dict) and "name" in r}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        _warn(f"{path}: unreadable; {unreadable}")
        return {}


def _merged_rows(summary_path: Path, rows: list[dict]) -> list[dict]:
    """This run's rows, plus those of earlier runs into the same folder for other patches."""
    earlier = _summary_rows(summary_path, "replaced by this run's summary")
    names = {r["name"] for r in rows}
    kept = [r for name, r in earlier.items() if name not in names]
    return sorted(kept + rows, key=lambda r: r["name"])


def _unmatched(folders, corrections_dir: Path) -> list[Path]:
    files = stray_files(corrections_dir)
    for entry in folders.values():
        files.extend(entry.unmatched)
    return files


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


def _keep_slices(specs: list[str], shape, source: Path) -> dict[str, list[int]]:
    """``--keep-slices`` options as axis name -> sorted indices, checked against ``shape``."""
    kept: dict[str, set[int]] = {}
    for spec in specs:
        try:
            axis, indices = parse_slices(spec, shape)
        except ValueError as exc:
            raise InputError(f"--keep-slices {spec}: {exc} ({source})") from None
        kept.setdefault("zyx"[axis], set()).update(indices)
    return {name: sorted(indices) for name, indices in kept.items()}


def _plan_merge(
    patch: LabelPatch, folder, out_dir: Path, fmt: str, border: int | None, images_dir: Path | None
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
            # Only NRRD masks are checked: painting tools write their geometry faithfully,
            # while NIfTI/MRC masks from other tools often carry a default one.
            if (
                info.geometry is not None
                and label_info.geometry is not None
                and path.name.lower().endswith((".nrrd", ".nhdr"))
                and not info.geometry.agrees_with(label_info.geometry)
            ):
                _warn(
                    f"{path}: origin/spacing {_describe(info.geometry)} differ from its "
                    f"patch's {_describe(label_info.geometry)}; merged by voxel index"
                )
    record = patch.record or {}
    if border is None:
        border = int(record.get("border", BORDER_WIDTH))
    if 2 * border >= min(label_info.shape):
        raise InputError(
            f"{patch.label}: a border of {border} leaves no voxel of its "
            f"{'x'.join(map(str, as_xyz(label_info.shape)))} patch outside the ignore band"
        )
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
    geometry = label_info.geometry or image_info.geometry or Geometry((1.0, 1.0, 1.0))
    image_out, label_out = plan.outputs
    write_volume(
        staged.stage(image_out, volume_suffix(image_out)), image, image_info.geometry or geometry
    )
    write_volume(staged.stage(label_out, volume_suffix(label_out)), merged, geometry)
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
    }


def _report_merge(
    rows, out_dir, uncorrected, included, orphans, unmatched, corrections_dir
) -> None:
    typer.echo(f"Merged {len(rows)} patch(es) into {out_dir}:")
    width = max(len(r["name"]) for r in rows)
    typer.echo(
        f"  {'patch':<{width}}  {'added':>9}  {'removed':>9}  {'ignored':>9}  "
        f"{'annotated':>9}  masks"
    )
    for r in rows:
        files = ", ".join(n for names in r["files"].values() for n in names) or "none"
        typer.echo(
            f"  {r['name']:<{width}}  {r['added']:>9}  {r['removed']:>9}  "
            f"{r['ignored']:>9}  {r['annotated']:>9}  {files}"
        )
    if rows and rows[0]["sparse"]:
        kept = rows[0]["kept_slices"]
        slices = "; ".join(f"{a}={len(v)} slice(s)" for a, v in kept.items()) or "no slices"
        typer.echo(
            f"Sparse merge: labels only where painted (Add, Remove) and on kept {slices}; "
            "the rest is ignore."
        )
    if uncorrected:
        verb = "written as they are" if included else "skipped; --include-uncorrected keeps them"
        typer.echo(f"Patches without a corrections folder ({verb}): {', '.join(uncorrected)}")
    if orphans:
        typer.echo(
            f"Folders in {corrections_dir} that match no patch (not used): {', '.join(orphans)}"
        )
    if unmatched:
        typer.echo(
            "Files that match no Add/Remove/Ignore prefix (not used): "
            + ", ".join(str(Path(f).relative_to(corrections_dir)) for f in unmatched)
        )
    typer.echo(f"Summary: {out_dir / MERGE_SUMMARY_NAME}")


# --- simulate_sparse --------------------------------------------------------------------


class SparseMode(str, Enum):
    slices = "slices"
    boxes = "boxes"


@app.command(name="simulate_sparse", no_args_is_help=True)
@_user_errors
def simulate_sparse(
    train_dir: Annotated[
        Path,
        typer.Option("--train-dir", "-t", help="Training folder with dense labels."),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out-dir", "-o", help="Training folder to write, labels made sparse."),
    ],
    mode: Annotated[
        SparseMode,
        typer.Option(
            "--mode", help="Keep evenly spaced slices, or random boxes around labelled voxels."
        ),
    ] = SparseMode.slices,
    fraction: Annotated[
        float,
        typer.Option(
            "--fraction",
            help="Share kept: of the slices holding labels (slices), or of the labelled "
            "voxels (boxes).",
        ),
    ] = 0.1,
    axis: Annotated[
        str, typer.Option("--axis", help="Slice axis for --mode slices: x, y or z.")
    ] = "z",
    box_size: Annotated[
        int, typer.Option("--box-size", help="Edge of the cubic boxes, in voxels.")
    ] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the slice phase or boxes.")] = 0,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="File format of the sparse labels.")
    ] = OutputFormat.nii_gz,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing training pairs.")
    ] = False,
) -> None:
    """Make dense training labels sparse, as an annotator would leave them, for experiments.

    Everything not kept becomes ignore; images are copied as they are.
    """

    from .data import find_training_pairs

    with _collect_warnings() as warned:
        if not 0 < fraction <= 1:
            raise InputError(f"--fraction must be in (0, 1], got {fraction}")
        if axis.lower() not in AXES:
            raise InputError(f"--axis must be x, y or z, got {axis}")
        if box_size < 1:
            raise InputError(f"--box-size must be at least 1, got {box_size}")
        if seed < 0:
            raise InputError(f"--seed must be at least 0, got {seed}")
        if Path(out_dir).resolve() == Path(train_dir).resolve():
            raise InputError("--out-dir must differ from --train-dir: the dense labels are kept")
        pairs = find_training_pairs(train_dir)
        fmt = output_format.value
        outputs = [
            (
                out_dir / TRAIN_IMAGES_SUBDIR / image.name,
                output_path(out_dir / TRAIN_LABELS_SUBDIR, name, fmt),
            )
            for name, image, _ in pairs
        ]
        _require_free([path for pair in outputs for path in pair], overwrite)
        source_rows = _summary_rows(
            Path(train_dir) / MERGE_SUMMARY_NAME, "border and padding are not carried over"
        )

        _check_out_dir(out_dir)
        rng = np.random.default_rng(seed)
        staged = StagedFiles()
        rows = []
        try:
            staged.make_dirs(out_dir / TRAIN_IMAGES_SUBDIR, out_dir / TRAIN_LABELS_SUBDIR)
            for (name, image, label), (image_out, label_out) in _progress(
                list(zip(pairs, outputs)), "Making labels sparse"
            ):
                labels, info = read_volume(label)
                require_label_values(labels, label)
                if mode is SparseMode.slices:
                    kept = spaced_slices(labels, AXES[axis.lower()], fraction, rng)
                    keep = slices_mask(labels.shape, AXES[axis.lower()], kept)
                    what = {"axis": axis.lower(), "slices": kept}
                else:
                    keep = random_boxes(labels, box_size, fraction, rng)
                    what = {"box_size": box_size}
                sparse_labels = sparsify(labels, keep)
                write_volume(
                    staged.stage(label_out, volume_suffix(label_out)),
                    sparse_labels,
                    info.geometry or Geometry((1.0, 1.0, 1.0)),
                )
                shutil.copyfile(image, staged.stage(image_out, volume_suffix(image_out)))
                dense_count = int(np.count_nonzero(labels != IGNORE))
                rows.append(
                    {
                        **{
                            k: v
                            for k, v in source_rows.get(name, {}).items()
                            if k in ("border", "padding_xyz")
                        },
                        "name": name,
                        "source": str(label),
                        "annotated_before": dense_count,
                        "annotated": int(np.count_nonzero(sparse_labels != IGNORE)),
                        "simulated": {"mode": mode.value, "fraction": fraction, **what},
                        "image": str(image_out),
                        "label": str(label_out),
                    }
                )
        except BaseException:
            staged.discard()
            raise
        staged.commit()
        summary = {
            "patches": _merged_rows(out_dir / MERGE_SUMMARY_NAME, rows),
            "simulated_from": str(Path(train_dir).resolve()),
            "seed": seed,
        }
        write_text_atomic(out_dir / MERGE_SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        before = sum(r["annotated_before"] for r in rows)
        after = sum(r["annotated"] for r in rows)
        typer.echo(f"Wrote {len(rows)} sparse training pair(s) to {out_dir}:")
        width = max(len(r["name"]) for r in rows)
        typer.echo(f"  {'patch':<{width}}  {'labelled before':>15}  {'kept':>9}  {'share':>6}")
        for r in rows:
            share = r["annotated"] / max(r["annotated_before"], 1)
            typer.echo(
                f"  {r['name']:<{width}}  {r['annotated_before']:>15}  {r['annotated']:>9}  "
                f"{share:>6.1%}"
            )
        typer.echo(
            f"Kept {after} of {before} labelled voxels ({after / max(before, 1):.1%}); the rest "
            f"is ignore. Summary: {out_dir / MERGE_SUMMARY_NAME}"
        )
    _report_warnings(warned)


# --- retrain --------------------------------------------------------------------------


class Preset(str, Enum):
    full = "full"
    small = "small"
    tiny = "tiny"


class Optimiser(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(str, Enum):
    poly = "poly"
    cosine = "cosine"


DEFAULT_LR = {"sgd": 1e-2, "adamw": 3e-4}


@app.command(name="retrain", no_args_is_help=True)
@_user_errors
def retrain(
    train_dir: Annotated[
        Path,
        typer.Option(
            "--train-dir",
            "-t",
            help="Training folder (imagesTr/, labelsTr/) from merge_corrections or MemBrain-seg.",
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir", "-o", help="Folder for last.pt, best.pt, metrics.csv and curves.png."
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Start from these weights: ours or a MemBrain-seg .ckpt."
        ),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            help="Allow a checkpoint that holds pickled objects beyond weights.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run saved in --out-dir where it stopped, with its settings; "
            "--iterations or --epochs may extend it.",
        ),
    ] = False,
    val_dir: Annotated[
        Path | None, typer.Option("--val-dir", help="Training folder used only for validation.")
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", help="Share of training patches held out when there is no --val-dir."
        ),
    ] = 0.2,
    preset: Annotated[
        Preset,
        typer.Option(
            "--preset", help="Network width when training from scratch (full = MemBrain-seg's)."
        ),
    ] = Preset.full,
    iterations: Annotated[int | None, typer.Option("--iterations", help="Training steps.")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Passes over the training patches (one crop each), instead of --iterations.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crops per step.")] = 2,
    crop_size: Annotated[
        int, typer.Option("--crop-size", help="Edge of the cubic training crops, in voxels.")
    ] = PATCH_SIZE,
    optimiser: Annotated[
        Optimiser, typer.Option("--optimizer", help="SGD (Nesterov, momentum 0.99) or AdamW.")
    ] = Optimiser.sgd,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate; default 1e-2 (SGD) or 3e-4 (AdamW)."),
    ] = None,
    schedule: Annotated[
        Schedule, typer.Option("--schedule", help="Decay after warm-up.")
    ] = Schedule.poly,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help="Warm-up steps; default 5 % of the run.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile_network: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the network (slow start, faster steps)."),
    ] = False,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", help="Train without data augmentation.")
    ] = False,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last 3D memory layout on CUDA.",
        ),
    ] = True,
    val_every: Annotated[
        int, typer.Option("--val-every", help="Validate and log every N steps.")
    ] = 50,
    save_every: Annotated[
        int | None,
        typer.Option("--save-every", help="Write last.pt every N steps; default: --val-every."),
    ] = None,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            help="Loss terms joined by '+': bce, dice, rrw (region-wise, Valverde & Tohka); "
            "e.g. rrw or rrw+dice.",
        ),
    ] = DEFAULT_LOSS,
    relabel_rounds: Annotated[
        int,
        typer.Option(
            "--relabel-rounds",
            help="After training on the sure labels, this many rounds that adopt the most "
            "confident predicted membrane of the ignore regions and train again (SMILE-style).",
        ),
    ] = 0,
    relabel_max: Annotated[
        float | None,
        typer.Option(
            "--relabel-max",
            help="Share γ of the predicted membrane in ignore regions adopted by the last "
            "round; round t of T adopts γ·t/T. Default 0.5.",
        ),
    ] = None,
    relabel_iterations: Annotated[
        int | None,
        typer.Option(
            "--relabel-iterations",
            help="Training steps of each relabeling round; default: half of --iterations.",
        ),
    ] = None,
    relabel_background: Annotated[
        bool,
        typer.Option(
            "--relabel-background",
            help="Also adopt the same share of the predicted background of ignore regions, "
            "as background.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start a new run in an --out-dir that holds one.")
    ] = False,
) -> None:
    """Fine-tune the U-Net on training pairs; ignore voxels are left out of the loss.

    With --relabel-rounds, the run trains in stages (round_0/ on the sure labels, then
    round_1/ ...), saves the voxels each round adopted in round_<t>/adopted/, and copies the
    final weights to --out-dir/last.pt and the best validated ones to best.pt.
    """
    import torch

    from .checkpoints import network_from_checkpoint, read_checkpoint
    from .losses import parse_loss
    from .model import PRESETS, UNet
    from .train import (
        BEST,
        LAST,
        RELABEL_MAX,
        TrainConfig,
        pick_device,
        relabel_round_dirs,
        round_dir,
        train,
    )

    with _collect_warnings() as warned:
        _check_out_dir(out_dir)
        last = out_dir / LAST
        try:
            loss = "+".join(parse_loss(loss))
        except ValueError as exc:
            raise InputError(f"--loss {loss}: {exc}") from None
        if relabel_rounds < 0:
            raise InputError(f"--relabel-rounds must be 0 or more, got {relabel_rounds}")
        if not relabel_rounds and (
            relabel_max is not None or relabel_iterations is not None or relabel_background
        ):
            raise InputError(
                "--relabel-max, --relabel-iterations and --relabel-background shape "
                "relabeling rounds; add --relabel-rounds (1 or more)"
            )
        relabel_max = RELABEL_MAX if relabel_max is None else relabel_max
        if not 0 < relabel_max <= 1:
            raise InputError(f"--relabel-max must be in (0, 1], got {relabel_max}")
        if relabel_iterations is not None and relabel_iterations < 1:
            raise InputError(f"--relabel-iterations must be at least 1, got {relabel_iterations}")
        if resume and (relabel_rounds or relabel_round_dirs(out_dir)):
            rounds_here = relabel_round_dirs(out_dir)
            latest = rounds_here[-1] / LAST if rounds_here else round_dir(out_dir, 0) / LAST
            raise InputError(
                "a relabeling run cannot be resumed; start a new one from a round's weights "
                f"with --checkpoint {latest} and another --out-dir"
            )
        if not resume and not overwrite and (round_dir(out_dir, 0) / LAST).exists():
            raise InputError(
                f"{out_dir}: holds a relabeling run ({round_dir(out_dir, 0).name}/); pass "
                "--overwrite to start again, or choose another --out-dir"
            )
        if resume and checkpoint is not None:
            raise InputError(
                "--resume continues the run in --out-dir; to start a new run from its "
                f"weights, use --checkpoint {last} with another --out-dir"
            )
        if resume and not last.exists():
            raise InputError(f"{last}: nothing to resume; start without --resume")
        if not resume and last.exists() and not overwrite:
            raise InputError(
                f"{out_dir}: holds a run ({LAST}); pass --resume to continue it, --overwrite "
                "to start again, or choose another --out-dir"
            )
        if iterations is not None and epochs is not None:
            raise InputError("give --iterations or --epochs, not both")
        for option, value, least in (
            ("--batch-size", batch_size, 1),
            ("--crop-size", crop_size, 1),
            ("--val-every", val_every, 1),
            ("--save-every", save_every or 1, 1),
            ("--seed", seed, 0),
            ("--warmup", warmup or 0, 0),
        ):
            if value < least:
                raise InputError(f"{option} must be at least {least}, got {value}")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise InputError(f"--lr must be a positive number, got {lr}")
        try:
            target = pick_device(device)
        except ValueError as exc:
            raise InputError(f"--device {device}: {exc}") from None

        content = None
        if resume or checkpoint is not None:
            content = read_checkpoint(last if resume else checkpoint, trust_checkpoint)
        if resume:
            _refuse_changes_on_resume(content, locals())
            config, split = TrainConfig.from_dict(content["train_config"]), content["split"]
        else:
            config, split = None, None
        train_patches, val_patches, split = _training_data(
            train_dir, val_dir, val_fraction, config.seed if config else seed, split
        )
        if relabel_rounds:
            candidates, borders = _relabel_candidates(train_patches, train_dir)

        if content is not None:
            network, _ = network_from_checkpoint(content, last if resume else checkpoint)
        else:
            torch.manual_seed(seed)  # the starting weights follow --seed too
            network = UNet(PRESETS[preset.value])
        # On resume an epoch counts in the saved run's batch size, not the option's default.
        per_step = config.batch_size if resume else batch_size
        steps_per_epoch = max(1, math.ceil(len(train_patches) / per_step))
        total = (
            iterations
            if iterations is not None
            else (epochs * steps_per_epoch if epochs is not None else None)
        )
        if resume:
            if total is not None:
                if total <= content["step"]:
                    raise InputError(
                        f"the saved run is at iteration {content['step']}; to extend it, "
                        f"give more iterations than that (got {total})"
                    )
                config = replace(config, iterations=total)
        else:
            if total is None:
                raise InputError("give --iterations or --epochs")
            if total < 1:
                raise InputError(f"the run needs at least one step, got {total}")
            if warmup is not None and warmup >= total:
                raise InputError(f"--warmup {warmup} must be shorter than the run ({total})")
            config = TrainConfig(
                iterations=total,
                batch_size=batch_size,
                crop_size=crop_size,
                optimizer=optimiser.value,
                lr=lr if lr is not None else DEFAULT_LR[optimiser.value],
                schedule=schedule.value,
                warmup=warmup if warmup is not None else total // 20,
                seed=seed,
                val_every=val_every,
                save_every=save_every or val_every,
                augment=not no_augment,
                compile=compile_network,
                channels_last=channels_last,
                loss=loss,
            )
        divisor = network.config.divisor
        if config.crop_size % divisor:
            raise InputError(
                f"--crop-size {config.crop_size}: must be a multiple of {divisor} for this network"
            )

        start = (
            "resuming at iteration {}".format(content["step"])
            if resume
            else (
                f"from {checkpoint}"
                if checkpoint is not None
                else "from scratch (no --checkpoint)"
            )
        )
        parameters = sum(p.numel() for p in network.parameters())
        typer.echo(
            f"Training {parameters / 1e6:.2f} M parameters {start} on {target} "
            f"({'bf16/fp16 autocast' if target.type == 'cuda' else 'fp32'}): "
            f"{len(train_patches)} training and {len(val_patches)} validation patch(es), "
            f"{config.iterations} iterations of {config.batch_size} x {config.crop_size}³."
        )

        metrics_path = out_dir / "metrics.csv"
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            # --overwrite: nothing of the old run may pass for the new one's, last.pt included
            # (a relabeling run writes it only at its end).
            stale_files = (last, out_dir / BEST, metrics_path, out_dir / "curves.png")
            for stale in (*stale_files, out_dir / RELABEL):
                stale.unlink(missing_ok=True)
            for stale in relabel_round_dirs(out_dir):
                shutil.rmtree(stale)
        if relabel_rounds:
            _relabel_run(
                network,
                train_patches,
                val_patches,
                config,
                out_dir,
                target,
                split,
                train_dir,
                candidates=candidates,
                borders=borders,
                rounds=relabel_rounds,
                max_share=relabel_max,
                round_iterations=relabel_iterations or max(1, config.iterations // 2),
                background=relabel_background,
            )
            _report_warnings(warned)
            return
        stops = _training_stops(
            out_dir,
            config,
            lambda stop: (
                f"Interrupted at iteration {stop.step}; saved {stop.path}. "
                "Run again with --resume to continue."
            ),
            f" (or on a large validation patch); start a new run from {last} with "
            "--checkpoint and a smaller batch or crop",
        )
        with (
            stops,
            _training_progress(config.iterations, content["step"] if resume else 0) as tick,
        ):
            state = train(
                network,
                train_patches,
                val_patches,
                config,
                out_dir,
                target,
                resume=content if resume else None,
                on_step=tick,
                on_metrics=lambda rows: _write_metrics(metrics_path, rows),
                split=split,
            )
        _plot_curves(state.history, out_dir / "curves.png")
        final = state.history[-1] if state.history else {}
        summary = f"train loss {final.get('train_loss', float('nan')):.4f}"
        if "val_dice" in final:
            summary += (
                f", val loss {final['val_loss']:.4f}, val Dice {final['val_dice']:.4f}"
                f" (best {state.best_dice:.4f} in {out_dir / BEST})"
            )
        typer.echo(f"Done: iteration {state.step}, {summary}.")
        typer.echo(f"Checkpoint: {out_dir / LAST}; metrics: {metrics_path}")
    _report_warnings(warned)


RELABEL = "relabel.json"
"""Per-round report of a relabeling run, in its --out-dir."""


@contextmanager
def _training_stops(out_dir: Path, config, interrupted: Callable, out_of_memory: str):
    """Turn the ways training stops early into what the user sees: Ctrl-C (message
    ``interrupted(stop)``, exit code 130) or running out of GPU memory (an error with the
    ``out_of_memory`` advice)."""
    import torch

    from .train import Interrupted

    try:
        yield
    except Interrupted as stop:
        typer.echo(interrupted(stop), err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.echo(f"Interrupted; checkpoints in {out_dir} are kept.", err=True)
        raise typer.Exit(130) from None
    except torch.cuda.OutOfMemoryError:
        raise InputError(
            f"out of GPU memory with --batch-size {config.batch_size} and --crop-size "
            f"{config.crop_size}{out_of_memory} (checkpoints written so far are kept)"
        ) from None


def _relabel_candidates(train_patches, train_dir: Path) -> tuple[list[np.ndarray], set[int]]:
    """Per training patch, the ignore voxels a relabeling round may adopt (outside the
    border band and padding that the training folder's summary records), and the border
    widths used; ``InputError`` when there are none at all."""
    from .relabel import relabel_candidates

    records = _summary_rows(
        Path(train_dir) / MERGE_SUMMARY_NAME,
        f"relabeling assumes a {BORDER_WIDTH}-voxel border band",
    )
    unrecorded = [p.name for p in train_patches if "border" not in records.get(p.name, {})]
    if unrecorded:
        _warn(
            f"{train_dir / MERGE_SUMMARY_NAME} records no border band or padding for "
            f"{len(unrecorded)} training patch(es) ({unrecorded[0]}…); relabeling keeps out "
            f"a {BORDER_WIDTH}-voxel band there and cannot know their padding"
        )
    candidates, borders = [], set()
    for patch in train_patches:
        record = records.get(patch.name, {})
        border = int(record.get("border", BORDER_WIDTH))
        borders.add(border)
        candidates.append(relabel_candidates(patch.labels, border, padding_zyx(record)))
    if not any(c.any() for c in candidates):
        raise InputError(
            f"{train_dir}: no ignore voxel outside the border band of any training patch; "
            "there is nothing to relabel (drop --relabel-rounds)"
        )
    return candidates, borders


def _relabel_run(
    network,
    train_patches,
    val_patches,
    config,
    out_dir: Path,
    device,
    split: dict,
    train_dir: Path,
    *,
    candidates: list[np.ndarray],
    borders: set[int],
    rounds: int,
    max_share: float,
    round_iterations: int,
    background: bool,
) -> None:
    """Train on the sure labels, then relabel in rounds; write, copy and report the results."""
    from .data import find_training_pairs
    from .relabel import curriculum_share
    from .train import BEST, LAST, round_dir, train_with_relabeling

    # Adopted voxels are saved named and placed like their label: read each header once.
    label_files = {
        name: (label, read_info(label).geometry or Geometry((1.0, 1.0, 1.0)))
        for name, _, label in find_training_pairs(train_dir)
    }
    total = config.iterations + rounds * round_iterations
    classes = "membrane and background" if background else "membrane"
    typer.echo(
        f"Relabeling: {config.iterations} iterations on the sure labels, then {rounds} "
        f"round(s) of {round_iterations} adopting up to {max_share:.0%} of the predicted "
        f"{classes} in ignore regions (border band of "
        f"{', '.join(map(str, sorted(borders)))} voxels never relabeled)."
    )
    stages: list[dict] = []
    current = {"round": 0, "offset": 0}

    def save_adopted(t: int, adopted_patches) -> None:
        folder = round_dir(out_dir, t) / RELABEL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        membrane, background_counts = {}, {}
        for patch, adopted in zip(train_patches, adopted_patches):
            label, geometry = label_files[patch.name]
            path = folder / f"{patch.name}{volume_suffix(label)}"
            write_volume(path, adopted, geometry, overwrite=True)
            membrane[patch.name] = int(np.count_nonzero(adopted == MEMBRANE))
            background_counts[patch.name] = int(np.count_nonzero(adopted == BACKGROUND))
        stage = {
            "round": t,
            "share": curriculum_share(t, rounds, max_share),
            "iterations": round_iterations,
            "adopted": membrane,
            "adopted_total": sum(membrane.values()),
        }
        if background:
            stage["adopted_background"] = background_counts
            stage["adopted_background_total"] = sum(background_counts.values())
        stages.append({**stage, "adopted_dir": str(folder)})
        current["offset"] += config.iterations if t == 1 else round_iterations
        current["round"] = t

    def write_metrics(rows) -> None:
        folder = round_dir(out_dir, current["round"])
        _write_metrics(folder / "metrics.csv", rows)

    stops = _training_stops(
        out_dir,
        config,
        lambda stop: (
            f"Interrupted at iteration {stop.step} of round {current['round']}; "
            f"saved {stop.path}. A relabeling run cannot be resumed: start a new run from it "
            "with --checkpoint."
        ),
        ", or predicting a whole training patch to relabel it; use a smaller batch or crop",
    )
    with stops:
        with _training_progress(total, 0) as tick:
            states = train_with_relabeling(
                network,
                train_patches,
                val_patches,
                config,
                out_dir,
                device,
                rounds=rounds,
                max_share=max_share,
                candidates=candidates,
                round_iterations=round_iterations,
                background=background,
                on_round=save_adopted,
                on_step=lambda step, value: tick(current["offset"] + step, value),
                on_metrics=write_metrics,
                split=split,
            )

    rows = [{"round": 0, "share": 0.0, "iterations": config.iterations, "adopted_total": 0}]
    if background:
        rows[0]["adopted_background_total"] = 0
    rows += stages
    for row, state in zip(rows, states):
        folder = round_dir(out_dir, row["round"])
        _plot_curves(state.history, folder / "curves.png")
        final = state.history[-1] if state.history else {}
        row.update(
            folder=str(folder),
            train_loss=final.get("train_loss"),
            val_dice=final.get("val_dice"),
            best_val_dice=state.best_dice if (folder / BEST).exists() else None,
        )
    with atomic_target(out_dir / LAST, ".pt") as temporary:
        shutil.copyfile(round_dir(out_dir, rounds) / LAST, temporary)
    validated = [r for r in rows if r["best_val_dice"] is not None]
    best = max(validated, key=lambda r: r["best_val_dice"]) if validated else None
    if best is not None:
        with atomic_target(out_dir / BEST, ".pt") as temporary:
            shutil.copyfile(Path(best["folder"]) / BEST, temporary)
    report = {
        "rounds": rounds,
        "max_share": max_share,
        "round_iterations": round_iterations,
        "background": background,
        "loss": config.loss,
        "stages": rows,
        "last": str(out_dir / LAST),
        "best": str(out_dir / BEST) if best is not None else None,
        "best_round": best["round"] if best is not None else None,
    }
    write_text_atomic(out_dir / RELABEL, json.dumps(report, indent=2) + "\n")

    typer.echo(f"Done: {len(rows)} stage(s) in {out_dir}:")
    extra = f"  {'background':>10}" if background else ""
    typer.echo(
        f"  {'round':>5}  {'share':>6}  {'membrane':>9}{extra}  {'train loss':>10}  "
        f"{'val Dice':>8}"
    )
    for r in rows:
        loss = "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        dice = "-" if r["val_dice"] is None else f"{r['val_dice']:.4f}"
        extra = f"  {r['adopted_background_total']:>10}" if background else ""
        typer.echo(
            f"  {r['round']:>5}  {r['share']:>6.1%}  {r['adopted_total']:>9}{extra}  "
            f"{loss:>10}  {dice:>8}"
        )
    where = f"; best validated (round {best['round']}): {out_dir / BEST}" if best else ""
    typer.echo(f"Final weights: {out_dir / LAST}{where}")
    typer.echo(
        f"Adopted labels: round_<t>/{RELABEL_DIR}/ (1 membrane, 0 background, 2 not "
        f"adopted); report: {out_dir / RELABEL}"
    )


_RESUME_FIXED = {
    "loss": ("--loss", "loss"),
    "batch_size": ("--batch-size", "batch_size"),
    "crop_size": ("--crop-size", "crop_size"),
    "optimiser": ("--optimizer", "optimizer"),
    "lr": ("--lr", "lr"),
    "schedule": ("--schedule", "schedule"),
    "warmup": ("--warmup", "warmup"),
    "seed": ("--seed", "seed"),
    "val_every": ("--val-every", "val_every"),
    "save_every": ("--save-every", "save_every"),
    "no_augment": ("--no-augment", "augment"),
    "compile_network": ("--compile", "compile"),
    "channels_last": ("--channels-last/--no-channels-last", "channels_last"),
}


def _refuse_changes_on_resume(content: dict, options: dict) -> None:
    """A resumed run keeps its settings: an option given with another value is an error."""
    from .model import PRESETS, UNetConfig
    from .train import TrainConfig

    saved = TrainConfig.from_dict(content["train_config"])
    defaults = {p.name: p.default for p in inspect.signature(retrain).parameters.values()}
    changed = []
    for name, (flag, attribute) in _RESUME_FIXED.items():
        given = options[name]
        given = given.value if isinstance(given, Enum) else given
        if given == _default_value(defaults[name]):
            continue
        stored = getattr(saved, attribute)
        if name == "no_augment":
            stored = not stored
        if given != stored:
            changed.append(f"{flag} (saved: {stored})")
    split = content["split"]
    fraction = options["val_fraction"]
    if fraction not in (split["val_fraction"], defaults["val_fraction"]):
        changed.append(f"--val-fraction (saved: {split['val_fraction']})")
    val_dir = options["val_dir"]
    if val_dir is not None and str(Path(val_dir).resolve()) != split["val_dir"]:
        changed.append(f"--val-dir (saved: {split['val_dir']})")
    preset = options["preset"]
    network = UNetConfig.from_dict(content["model_config"])
    if preset != _default_value(defaults["preset"]) and PRESETS[preset.value] != network:
        changed.append(f"--preset (the saved network has filters {network.filters})")
    if changed:
        raise InputError(
            "--resume keeps the saved run's settings; drop " + ", ".join(changed) + ", or "
            "start a new run from its weights with --checkpoint"
        )


def _default_value(parameter_default):
    return parameter_default.value if isinstance(parameter_default, Enum) else parameter_default


def _training_data(
    train_dir: Path, val_dir: Path | None, val_fraction: float, seed: int, split: dict | None
):
    """Training and validation patches; ``split`` (names, from a saved run) wins over the
    options so a resumed run sees the same patches."""
    import numpy as np

    from .data import find_training_pairs, load_training_pairs, split_validation

    pairs = find_training_pairs(train_dir)
    if split is not None:
        val_pairs = find_training_pairs(Path(split["val_dir"])) if split["val_dir"] else pairs
        by_name = {p[0]: p for p in pairs}
        val_by_name = {p[0]: p for p in val_pairs}
        missing = [n for n in split["train"] if n not in by_name]
        missing += [n for n in split["val"] if n not in val_by_name]
        if missing:
            raise InputError(
                f"{train_dir}: the saved run's patch {missing[0]} is missing; resume needs "
                "the same training folder"
            )
        train_pairs = [by_name[n] for n in split["train"]]
        val_pairs = [val_by_name[n] for n in split["val"]]
    elif val_dir is not None:
        train_pairs, val_pairs = pairs, find_training_pairs(val_dir)
    else:
        train_pairs, val_pairs = split_validation(pairs, val_fraction, np.random.default_rng(seed))
    if not train_pairs:
        raise InputError(f"{train_dir}: no patch left for training; lower --val-fraction")
    train_patches = load_training_pairs(train_pairs)
    val_patches = load_training_pairs(val_pairs)
    if not any(len(p.annotated) for p in train_patches):
        raise InputError(f"{train_dir}: no training patch has an annotated (non-ignore) voxel")
    if not val_patches:
        _warn("no validation patches: best.pt is not written; last.pt is the result")
    elif not any(len(p.membrane) for p in val_patches):
        _warn("the validation patches hold no membrane voxel: their Dice says little")
    split = {
        "val_fraction": split["val_fraction"] if split else val_fraction,
        "train": [p.name for p in train_patches],
        "val": [p.name for p in val_patches],
        "val_dir": str(Path(val_dir).resolve())
        if val_dir is not None
        else (split["val_dir"] if split else None),
    }
    return train_patches, val_patches, split


@contextmanager
def _training_progress(total: int, done: int) -> Iterator[Callable[[int, float], None]]:
    """A progress bar with loss, iterations/s and time left; yields the per-step callback."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("Training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} it/s"),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("train", total=total, completed=done, rate="-", loss="-")
        started, first = time.perf_counter(), done

        def tick(step: int, loss: float) -> None:
            rate = (step - first) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=step, rate=f"{rate:.2f}", loss=f"{loss:.4f}")

        yield tick


_METRIC_COLUMNS = ("step", "train_loss", "val_loss", "val_dice", "lr", "seconds")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    lines = [",".join(_METRIC_COLUMNS)]
    for row in rows:
        lines.append(
            ",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in _METRIC_COLUMNS)
        )
    write_text_atomic(path, "\n".join(lines) + "\n")


def _plot_curves(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _warn("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    steps = [r["step"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r["train_loss"] for r in rows], label="train loss")
    if "val_loss" in rows[0]:
        left.plot(steps, [r["val_loss"] for r in rows], label="val loss")
        right.plot(steps, [r["val_dice"] for r in rows], label="val Dice (ignore excluded)")
    right.plot(
        steps,
        [r["lr"] / max(r["lr"] for r in rows) for r in rows],
        "--",
        label="learning rate (relative)",
    )
    for axis in (left, right):
        axis.set_xlabel("iteration")
        axis.legend()
    figure.tight_layout()
    with atomic_target(path, ".png") as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


# --- segment ----------------------------------------------------------------------------

NORMALISATION_SAMPLE = 2_000_000
"""Voxels sampled (evenly spread) to normalise a tomogram, instead of reading it twice."""


@app.command(name="segment", no_args_is_help=True)
@_user_errors
def segment(
    tomogram: Annotated[Path, typer.Option("--tomogram", "-t", help="Tomogram to segment.")],
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint", help="Weights: ours (best.pt, last.pt) or a MemBrain-seg .ckpt."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir", "-o", help="Folder for <stem>_scores.mrc and <stem>_segmented.mrc."
        ),
    ],
    window: Annotated[
        int, typer.Option("--window", help="Edge of the sliding windows, in voxels.")
    ] = PATCH_SIZE,
    overlap: Annotated[
        float, typer.Option("--overlap", help="Fraction by which neighbouring windows overlap.")
    ] = 0.5,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average over the 8 flips of every window (8x slower).")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Probability above which a voxel is membrane.")
    ] = 0.5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="Allow a checkpoint that pickles objects beyond weights."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace earlier outputs.")
    ] = False,
) -> None:
    """Segment a whole tomogram: a probability scoremap and a binary segmentation (MRC)."""
    import numpy as np
    import torch

    from .checkpoints import network_from_checkpoint, read_checkpoint
    from .data import NORMALISATION, normalise, robust_statistics
    from .infer import sliding_window, windows_count
    from .train import Precision, pick_device

    with _collect_warnings() as warned:
        if not 0 <= overlap < 1:
            raise InputError(f"--overlap must be in [0, 1), got {overlap}")
        if window < 1:
            raise InputError(f"--window must be positive, got {window}")
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {batch_size}")
        if not 0 < threshold < 1:
            raise InputError(f"--threshold must be a probability in (0, 1), got {threshold}")
        try:
            target = pick_device(device)
        except ValueError as exc:
            raise InputError(f"--device {device}: {exc}") from None
        _check_out_dir(out_dir)
        stem = volume_stem(tomogram)
        scores_path = out_dir / f"{stem}_scores.mrc"
        labels_path = out_dir / f"{stem}_segmented.mrc"
        _require_free([scores_path, labels_path], overwrite)
        content = read_checkpoint(checkpoint, trust_checkpoint)
        network, _ = network_from_checkpoint(content, checkpoint)
        normalisation = content.get("normalisation", NORMALISATION)
        if normalisation != NORMALISATION:
            raise InputError(f"{checkpoint}: unknown intensity normalisation {normalisation!r}")
        if network.config.in_channels != 1:
            raise InputError(
                f"{checkpoint}: the network takes {network.config.in_channels} input channels; "
                "a tomogram has 1"
            )
        if window % network.config.divisor:
            raise InputError(
                f"--window {window}: must be a multiple of {network.config.divisor} for "
                "this network"
            )
        network.to(target).eval()
        precision = Precision.for_device(target)

        @torch.inference_mode()
        def predict(windows: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(windows)[:, None].to(target)
            with precision.autocast():
                logits = network(x)
            return logits[:, 0].float().cpu().numpy()

        with closing_reader(tomogram) as reader:
            shape = reader.info.shape
            geometry = reader.info.geometry or Geometry((1.0, 1.0, 1.0))
            if reader.info.geometry is None:
                _warn(f"{tomogram}: header has no voxel size; outputs are written with 1 Å")
            sample = _spread_sample(reader, NORMALISATION_SAMPLE)
            if sample.dtype.kind == "f" and not np.isfinite(sample).all():
                _warn(f"{tomogram}: holds NaN or infinite values; they are read as the mean")
            statistics = robust_statistics(sample)

            def read_block(start, stop) -> np.ndarray:
                block = reader.read_block(start, stop)  # a fresh array
                return normalise(block, statistics, in_place=True)

            staged = StagedFiles()
            try:
                staged.make_dirs(out_dir)
                scores = _new_mrc(staged.stage(scores_path, ".mrc"), shape, np.float16)
                labels = _new_mrc(staged.stage(labels_path, ".mrc"), shape, np.int8)
                total = windows_count(shape, window, overlap)
                stats = {"scores": _RunningStats(), "labels": _RunningStats()}
                with _counting_progress(total, "Segmenting") as advance:
                    for z0, slab in sliding_window(
                        read_block,
                        shape,
                        predict,
                        window,
                        overlap,
                        batch_size,
                        tta,
                        on_window=advance,
                    ):
                        # Threshold what is stored, so both files agree voxel for voxel.
                        stored = slab.astype(np.float16)
                        binary = (stored > threshold).astype(np.int8)
                        scores.data[z0 : z0 + len(slab)] = stored
                        labels.data[z0 : z0 + len(slab)] = binary
                        stats["scores"].add(stored)
                        stats["labels"].add(binary)
                membrane = stats["labels"].mean
                for mrc, name in ((scores, "scores"), (labels, "labels")):
                    set_mrc_geometry(mrc, geometry)
                    # Header statistics from the slabs: mrcfile's would make a float32
                    # copy of the whole volume.
                    stats[name].write(mrc.header)
                    mrc.close()
            except BaseException:
                staged.discard()
                raise
            staged.commit()
        typer.echo(
            f"Segmented {tomogram.name} ({'x'.join(map(str, as_xyz(shape)))} voxels, "
            f"{total} windows of {window}³, overlap {overlap:g}{', 8-flip TTA' if tta else ''}"
            f") on {target}: {membrane:.2%} membrane at probability > {threshold:g}."
        )
        if target.type == "cuda":
            peak = torch.cuda.max_memory_allocated(target) / 2**30
            typer.echo(f"Peak GPU memory: {peak:.1f} GiB")
        typer.echo(f"Scoremap: {scores_path}\nSegmentation: {labels_path}")
    _report_warnings(warned)


class _RunningStats:
    """Minimum, maximum, mean and RMS deviation of data seen slab by slab (MRC header)."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = float("inf"), float("-inf")

    def add(self, slab) -> None:
        import numpy as np

        values = slab.astype(np.float64)
        self.count += values.size
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def write(self, header) -> None:
        variance = max(self.squares / max(self.count, 1) - self.mean**2, 0.0)
        header.dmin, header.dmax, header.dmean = self.low, self.high, self.mean
        header.rms = math.sqrt(variance)


def _spread_sample(reader, count: int):
    """About ``count`` voxels spread evenly through the volume, read slice by slice."""
    import numpy as np

    nz, ny, nx = reader.info.shape
    slices = np.unique(np.linspace(0, nz - 1, min(nz, 32)).astype(int))
    stride = max(1, int(np.sqrt(ny * nx * len(slices) / count)))
    parts = [reader.read_block((z, 0, 0), (z + 1, ny, nx))[0, ::stride, ::stride] for z in slices]
    return np.concatenate([p.ravel() for p in parts])


def _new_mrc(path: Path, shape, dtype):
    import mrcfile
    import numpy as np

    mode = {"float16": 12, "int8": 0}[np.dtype(dtype).name]
    return mrcfile.new_mmap(path, shape=shape, mrc_mode=mode, overwrite=True)


@contextmanager
def _counting_progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


# --- evaluate ---------------------------------------------------------------------------


@app.command(name="evaluate", no_args_is_help=True)
@_user_errors
def evaluate(
    prediction: Annotated[
        Path,
        typer.Option("--prediction", "-p", help="Segmentation, or a scoremap with --threshold."),
    ],
    reference: Annotated[
        Path,
        typer.Option(
            "--reference",
            "-r",
            help="Reference labels "
            "(0, 1, 2 = ignore): a volume of the same "
            "shape, or a folder of label patches placed "
            "by their headers.",
        ),
    ],
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Values above it are membrane (for scoremaps)."),
    ] = None,
    tolerance: Annotated[
        int, typer.Option("--tolerance", help="Radius in voxels of the distance-tolerant Dice.")
    ] = 2,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Dice, IoU, precision, recall and tolerant Dice of a segmentation, ignore excluded."""
    from .metrics import add_counts, counts, summarise

    with _collect_warnings() as warned:
        if tolerance < 0:
            raise InputError(f"--tolerance must be 0 or more, got {tolerance}")
        if threshold is not None and not math.isfinite(threshold):
            raise InputError(f"--threshold must be a finite number, got {threshold}")
        with closing_reader(prediction) as reader:
            shape, geometry = reader.info.shape, reader.info.geometry
            total: dict[str, int] = {}
            for name, labels, start in _references(reference, shape, geometry):
                stop = tuple(a + n for a, n in zip(start, labels.shape))
                block = reader.read_block(start, stop)
                predicted = block > (threshold if threshold is not None else 0.5)
                if (
                    threshold is None
                    and block.dtype.kind == "f"
                    and (block.min() < 0 or block.max() > 1)
                ):
                    _warn(f"{prediction}: values outside [0, 1]; pass --threshold for scores")
                require_label_values(labels, name)
                total = add_counts(total, counts(predicted, labels, tolerance))
        if not total.get("annotated"):
            raise InputError(f"{reference}: no annotated voxel (all ignore): nothing to compare")
        result = summarise(total, tolerance)
        if as_json:
            clean = {
                k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()
            }
            typer.echo(json.dumps(clean, indent=2))
        else:
            typer.echo(f"{'metric':<20} {'value':>10}")
            for key, value in result.items():
                shown = f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}"
                typer.echo(f"{key:<20} {shown}")
    _report_warnings(warned if not as_json else [])
    if as_json and warned:
        for message in warned:
            typer.echo(f"Warning: {message}", err=True)


def _references(reference: Path, shape, geometry):
    """``(name, labels, start)`` for a reference volume, or for each label patch of a folder
    (placed in the prediction by its origin; the part outside the prediction is dropped)."""
    from .io.volumes import is_volume_file

    if reference.is_dir():
        files = sorted(p for p in reference.iterdir() if is_volume_file(p))
        if not files:
            raise InputError(f"{reference}: no label patches")
        if geometry is None:
            raise InputError("the prediction has no voxel size: patches cannot be placed")
        placed: list[tuple[Path, tuple, tuple]] = []
        for path in files:
            labels, info = read_volume(path)
            if info.geometry is None:
                raise InputError(f"{path}: no origin/spacing to place it in the prediction")
            if not all(
                math.isclose(a, b, rel_tol=1e-3)
                for a, b in zip(info.geometry.voxel_size, geometry.voxel_size)
            ):
                raise InputError(
                    f"{path}: voxel size {tuple(as_xyz(info.geometry.voxel_size))} Å differs "
                    f"from the prediction's {tuple(as_xyz(geometry.voxel_size))} Å"
                )
            exact = [
                (o - p) / v
                for o, p, v in zip(info.geometry.origin, geometry.origin, geometry.voxel_size)
            ]
            offset = [round(e) for e in exact]
            if any(abs(e - o) > 0.1 for e, o in zip(exact, offset)):
                raise InputError(f"{path}: its origin is not on the prediction's voxel grid")
            low, high = tuple(offset), tuple(o + n for o, n in zip(offset, labels.shape))
            for other, other_low, other_high in placed:
                if all(a < d and c < b for a, b, c, d in zip(low, high, other_low, other_high)):
                    _warn(
                        f"{path.name} overlaps {other.name}: their shared voxels count once "
                        "per patch"
                    )
            placed.append((path, low, high))
            start = [max(0, o) for o in offset]
            stop = [min(n, o + s) for o, s, n in zip(offset, labels.shape, shape)]
            if any(b <= a for a, b in zip(start, stop)):
                raise InputError(f"{path}: lies outside the prediction")
            local = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, offset))
            yield path, labels[local], tuple(start)
        return
    labels, info = read_volume(reference)
    if info.shape != shape:
        raise InputError(
            f"{reference}: shape x,y,z={tuple(as_xyz(info.shape))} differs from the "
            f"prediction's x,y,z={tuple(as_xyz(shape))}"
        )
    yield reference, labels, (0, 0, 0)


# --- demo -------------------------------------------------------------------------------

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
DEMO_PATCH_SIZE = 96
DEMO_SEGMENT = {"window": 64, "overlap": 0.5, "batch_size": 4, "threshold": 0.5}
"""How the demo segments; sample_data/make_sample_data.py makes prediction.mrc with it."""


@app.command(name="demo")
@_user_errors
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-o", help="Folder for every step's output.")
    ] = Path("work/demo"),
    sample_dir: Annotated[
        Path, typer.Option("--sample-dir", help="The bundled sample data.")
    ] = SAMPLE_DIR,
    iterations: Annotated[int, typer.Option("--iterations", help="Fine-tuning steps.")] = 300,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier demo run.")
    ] = False,
) -> None:
    """Run the whole loop on the sample data: segment, correct, retrain, segment, evaluate."""
    from .metrics import counts, summarise

    needed = ["tomogram.mrc", "truth.mrc", "centres.csv", "starting_model.pt", "corrections"]
    missing = [n for n in needed if not (sample_dir / n).exists()]
    if missing:
        raise InputError(f"{sample_dir}: no {missing[0]}; pass --sample-dir with the sample data")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError(
                f"{out_dir}: holds an earlier run; pass --overwrite or another --out-dir"
            )
        shutil.rmtree(out_dir)
    tomogram = sample_dir / "tomogram.mrc"

    def step(title: str) -> None:
        typer.echo(f"\n== {title}")

    step("1. Segment with the starting model (a tiny network trained on other data)")
    segment(
        tomogram=tomogram,
        checkpoint=sample_dir / "starting_model.pt",
        out_dir=out_dir / "before",
        device="cpu",
        **DEMO_SEGMENT,
    )
    step("2. Cut patches where it is wrong")
    extract_patches(
        tomogram=tomogram,
        segmentation=out_dir / "before" / "tomogram_segmented.mrc",
        out_dir=out_dir / "patches",
        centres=sample_dir / "centres.csv",
        patch_size=DEMO_PATCH_SIZE,
    )
    step("3. Merge the bundled corrections (what an annotator painted on those patches)")
    merge_corrections(
        labels_dir=out_dir / "patches",
        corrections_dir=sample_dir / "corrections",
        out_dir=out_dir / "train",
    )
    step("4. Fine-tune the starting model on the corrected patches")
    retrain(
        train_dir=out_dir / "train",
        out_dir=out_dir / "model",
        checkpoint=sample_dir / "starting_model.pt",
        iterations=iterations,
        crop_size=48,
        optimiser=Optimiser.adamw,
        lr=1e-3,
        val_fraction=0.0,
        val_every=max(1, iterations // 5),
        device="cpu",
    )
    step("5. Segment again with the fine-tuned model")
    segment(
        tomogram=tomogram,
        checkpoint=out_dir / "model" / "last.pt",
        out_dir=out_dir / "after",
        device="cpu",
        **DEMO_SEGMENT,
    )
    step("6. Evaluate both against the sample's true membrane mask")
    truth, _ = read_volume(sample_dir / "truth.mrc")
    rows = {}
    for name in ("before", "after"):
        predicted, _ = read_volume(out_dir / name / "tomogram_segmented.mrc")
        rows[name] = summarise(counts(predicted != 0, truth.astype("uint8"), 2), 2)
    typer.echo(f"{'metric':<18} {'before':>8} {'after':>8}")
    for key in ("dice", "iou", "precision", "recall", "tolerant_dice_2"):
        typer.echo(f"{key:<18} {rows['before'][key]:>8.4f} {rows['after'][key]:>8.4f}")
    typer.echo(f"\nEverything is in {out_dir}: before/, patches/, train/, model/, after/.")


def main() -> None:
    """Console entry point."""
    app()
