"""``merge_corrections``: Add/Remove/Ignore masks merged into training pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..workflows.merging import MergeReport, MergeSettings, merge_corrections
from ._common import OutputFormat, console, print_warnings, user_errors


@user_errors
def merge_corrections_command(
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
    ignore_geometry: Annotated[
        bool,
        typer.Option(
            "--ignore-geometry",
            help="Merge an NRRD mask whose origin or spacing differs from its patch's by "
            "voxel index (an error without it: the mask was likely painted on another patch).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing training pairs.")
    ] = False,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Also write previews/<patch>.png: xy, xz and yz slices through each patch's "
            "centre, image, network labels and merged labels with Add (green), Remove (red) "
            "and Ignore (blue) (needs matplotlib).",
        ),
    ] = False,
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
