"""``extract_patches``: cut image and label patches around centres."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import BORDER_WIDTH, PATCH_SIZE
from ..errors import InputError
from ..io.centres import Centre
from ..workflows.extraction import ExtractReport, ExtractSettings, extract_patches
from ._common import OutputFormat, console, print_warnings, user_errors


@user_errors
def extract_patches_command(
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
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Also write previews/<patch>.png: xy, xz and yz slices through each patch's "
            "centre, image and network labels (needs matplotlib).",
        ),
    ] = False,
) -> None:
    """Cut image and label patches around centres, ready to be corrected."""
    given = [v is not None for v in (x, y, z)]
    if any(given) and not all(given):
        raise InputError("give all three of --x, --y and --z, or a --centres file")
    points = [Centre((x, y, z), "--x/--y/--z")] if all(given) else []  # type: ignore[arg-type]
    settings = ExtractSettings(
        patch_size=patch_size,
        border=border,
        threshold=threshold,
        format=output_format.value,
        token=token,
        angstrom=angstrom,
        overwrite=overwrite,
        preview=preview,
    )
    with console() as listener:
        report = extract_patches(
            tomogram, segmentation, out_dir, centres, points=points, settings=settings,
            listener=listener,
        )  # fmt: skip
    render(report)


def render(report: ExtractReport) -> None:
    """What was cut, where it went, and what to do next."""
    s = report.settings
    typer.echo(
        f"Extracted {len(report.patches)} patch pair(s) of {s.patch_size}³ voxels from "
        f"{report.tomogram.name} into {report.out_dir} ({s.format}, ignore border {s.border})."
    )
    for patch in report.patches:
        padded = [f"{axis} {b}/{a}" for axis, (b, a) in zip("xyz", patch.padding_xyz) if b or a]
        note = f"  padding before/after: {', '.join(padded)}" if padded else ""
        cx, cy, cz = patch.centre_xyz
        typer.echo(f"  {patch.name}  centre x={cx} y={cy} z={cz}{note}")
    if report.patches:
        typer.echo(f"Manifest: {report.manifest}")
        typer.echo(
            f"Next: paint corrections as <corrections-dir>/{report.patches[0].name}/Add1.nrrd, "
            "Remove1.nrrd, Ignore1.nrrd, then run merge_corrections."
        )
    if report.previews:
        typer.echo(f"Previews: {report.previews[0].parent} ({len(report.previews)} PNG)")
    if report.skipped:
        typer.echo(
            f"Skipped {report.skipped} centre(s) already extracted from {report.tomogram.name} "
            "(see the manifest); --overwrite re-extracts them."
        )
    print_warnings(report.warnings)
