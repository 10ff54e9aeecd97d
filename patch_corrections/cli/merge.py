"""``merge_corrections``: Add/Remove/Ignore masks merged into training pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import BORDER_WIDTH
from ..workflows.merging import MergeReport, MergeSettings, merge_corrections
from . import options
from ._console import console, print_warnings
from ._errors import user_errors
from .options import OutputFormat

# The help's panels, so that the descriptions have room at 80 columns.
_FILES = "Input and output"
_LABELS = "What the labels hold"

_LABELS_DIR = typer.Option(
    "--labels-dir",
    "-l",
    rich_help_panel=_FILES,
    help="Label patches: an extract_patches output folder, its labels/, or any folder of "
    "label files.",
)
_CORRECTIONS_DIR = typer.Option(
    "--corrections-dir",
    "-c",
    rich_help_panel=_FILES,
    help="One folder per patch holding Add*, Remove*, Ignore* masks.",
)
_OUT_DIR = "Training folder to write (imagesTr/, labelsTr/); created if missing."
_IMAGES_DIR = typer.Option(
    "--images-dir",
    rich_help_panel=_FILES,
    help="Image patches, named like the labels (or <name>_0000); default: from the manifest.",
)
_BORDER_DEFAULT = f"the manifest's, else {BORDER_WIDTH}"
_INCLUDE_UNCORRECTED = typer.Option(
    "--include-uncorrected",
    rich_help_panel=_LABELS,
    help="Also write patches that have no corrections folder, as they are.",
)
_SPARSE = typer.Option(
    "--sparse",
    rich_help_panel=_LABELS,
    help="Sparse annotation: start every patch as all ignore, so only the Add (membrane) and "
    "Remove (background) strokes, and --keep-slices, are labels.",
)
_KEEP_SLICES = typer.Option(
    "--keep-slices",
    metavar="<axis=slices>",
    rich_help_panel=_LABELS,
    help="With --sparse, keep the patch's labels on these slices, e.g. z=40,80,100-110 (patch "
    "voxel indices; repeat for other axes).",
)
_IGNORE_GEOMETRY = typer.Option(
    "--ignore-geometry",
    rich_help_panel=_LABELS,
    help="Merge an NRRD mask whose origin or spacing differs from its patch's by voxel index "
    "(an error without it: the mask was likely painted on another patch).",
)
# A plain flag while the band covers painted voxels by default: a negative name would not
# fit the panel at 80 columns. Whoever turns PAINTED_IN_BAND on gives it an off switch.
_PAINTED_IN_BAND = typer.Option(
    "--painted-in-band",
    rich_help_panel=_LABELS,
    help="Keep Add and Remove voxels painted inside the border band as labels (Ignore still "
    "wins); otherwise the whole band is ignore, as in MemBrain-seg's merge.",
)
_PREVIEW_SHOWS = (
    "image, network labels and merged labels with Add (green), Remove (red) and Ignore (blue)"
)


@user_errors
def merge_corrections_command(
    labels_dir: Annotated[Path, _LABELS_DIR],
    corrections_dir: Annotated[Path, _CORRECTIONS_DIR],
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR, _FILES)],
    images_dir: Annotated[Path | None, _IMAGES_DIR] = None,
    border: Annotated[
        int | None, options.border(_LABELS, default=_BORDER_DEFAULT)
    ] = MergeSettings.border,
    output_format: Annotated[
        OutputFormat, options.output_format("training pairs", _FILES)
    ] = OutputFormat(MergeSettings.format),
    include_uncorrected: Annotated[bool, _INCLUDE_UNCORRECTED] = MergeSettings.include_uncorrected,
    sparse: Annotated[bool, _SPARSE] = MergeSettings.sparse,
    keep_slices: Annotated[list[str] | None, _KEEP_SLICES] = None,
    ignore_geometry: Annotated[bool, _IGNORE_GEOMETRY] = MergeSettings.ignore_geometry,
    overwrite: Annotated[
        bool, options.overwrite("existing training pairs", _FILES)
    ] = MergeSettings.overwrite,
    preview: Annotated[bool, options.preview(_PREVIEW_SHOWS, _FILES)] = MergeSettings.preview,
    painted_in_band: Annotated[bool, _PAINTED_IN_BAND] = MergeSettings.painted_in_band,
) -> None:
    """Merge Add/Remove/Ignore masks into label patches: training pairs for retrain."""
    settings = MergeSettings(
        border=border,
        format=output_format.value,
        include_uncorrected=include_uncorrected,
        sparse=sparse,
        keep_slices=tuple(keep_slices or ()),
        ignore_geometry=ignore_geometry,
        overwrite=overwrite,
        preview=preview,
        painted_in_band=painted_in_band,
    )
    with console() as listener:
        report = merge_corrections(
            labels_dir, corrections_dir, out_dir, images_dir, settings=settings, listener=listener
        )
    render(report)


def render(report: MergeReport) -> None:
    """The per-patch table, and what was found but not used."""
    rows = report.rows
    typer.echo(f"Merged {len(rows)} patch(es) into {report.out_dir}:")
    width = max(len(r["name"]) for r in rows)
    typer.echo(
        f"  {'patch':<{width}}  {'+membrane':>9}  {'-membrane':>9}  {'+ignore':>9}  "
        f"{'trained':>9}  masks"
    )
    for r in rows:
        files = ", ".join(n for names in r["files"].values() for n in names) or "none"
        typer.echo(
            f"  {r['name']:<{width}}  {r['added']:>9}  {r['removed']:>9}  "
            f"{r['ignored']:>9}  {r['annotated']:>9}  {files}"
        )
    typer.echo(
        "  (voxels of each label patch the merge changed, and those left to train on; "
        "the previews count the voxels painted)"
    )
    _render_band(rows)
    if rows and rows[0]["sparse"]:
        kept = rows[0]["kept_slices"]
        slices = "; ".join(f"{a}={len(v)} slice(s)" for a, v in kept.items()) or "no slices"
        typer.echo(
            f"Sparse merge: labels only where painted (Add, Remove) and on kept {slices}; "
            "the rest is ignore."
        )
    if report.uncorrected:
        verb = (
            "written as they are"
            if report.settings.include_uncorrected
            else "skipped; --include-uncorrected keeps them"
        )
        typer.echo(
            f"Patches without a corrections folder ({verb}): {', '.join(report.uncorrected)}"
        )
    if report.folders_without_patch:
        typer.echo(
            f"Folders in {report.corrections_dir} that match no patch (not used): "
            f"{', '.join(report.folders_without_patch)}"
        )
    if report.unmatched_files:
        typer.echo(
            "Files that match no Add/Remove/Ignore prefix (not used): "
            + ", ".join(
                str(Path(f).relative_to(report.corrections_dir)) for f in report.unmatched_files
            )
        )
    typer.echo(f"Summary: {report.summary}")
    if report.previews:
        typer.echo(f"Previews: {report.previews[0].parent} ({len(report.previews)} PNG)")
    print_warnings(report.warnings)


def _render_band(rows: list[dict]) -> None:
    """How many painted voxels the border band held, and what became of them."""
    painted = sum(r["band_painted"] for r in rows)
    if not painted:
        return
    if rows[0]["painted_in_band"]:
        typer.echo(
            f"Border band: {painted} voxel(s) painted Add or Remove in it kept as labels "
            "(--painted-in-band); the rest of the band is ignore."
        )
    else:
        typer.echo(
            f"Border band: {painted} voxel(s) painted Add or Remove in it made ignore with "
            "the rest of the band, as MemBrain-seg merges (--painted-in-band keeps them)."
        )
