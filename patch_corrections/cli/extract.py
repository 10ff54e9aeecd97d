"""``extract_patches``: cut image and label patches around centres."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..io.centres import Centre
from ..io.copick_project import DEFAULT_NAME, DEFAULT_SESSION, SegmentationName
from ..io.volumes import at_scale_level, volume_name
from ..workflows.extraction import ExtractReport, ExtractSettings, extract_patches
from . import _copick, options
from ._console import console, print_warnings
from ._errors import user_errors
from .options import OutputFormat

_SEGMENTATION = (
    "The network's segmentation of the tomogram, same shape (with --copick-config: the "
    "copick segmentation --copick-name/--copick-user/--copick-session)."
)
_READ = "cut label patches from"
_OUT_DIR = "Folder for images/, labels/ and manifest.json; created if missing."
_CENTRES = typer.Option(
    "--centres",
    "-c",
    help="CSV/TXT of x,y,z rows, or a napari points CSV (axis-0..2 = z,y,x).",
)
_X = typer.Option("--x", help="Centre x of a single patch.")
_Y = typer.Option("--y", help="Centre y of a single patch.")
_Z = typer.Option("--z", help="Centre z of a single patch.")
_ANGSTROM = typer.Option(
    "--angstrom", help="Centres are in Å from the first voxel, not in voxels."
)
_TOKEN = typer.Option(
    "--token",
    help="Patch name prefix (default: the tomogram's file name stem, or the copick run).",
)
_OVERWRITE = "this token's patches instead of adding to them"


@user_errors
def extract_patches_command(
    tomogram: Annotated[Path | None, options.tomogram()] = None,
    segmentation: Annotated[Path | None, options.segmentation(_SEGMENTATION)] = None,
    *,
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR)],
    scale_level: Annotated[int | None, options.scale_level()] = None,
    centres: Annotated[Path | None, _CENTRES] = None,
    x: Annotated[float | None, _X] = None,
    y: Annotated[float | None, _Y] = None,
    z: Annotated[float | None, _Z] = None,
    angstrom: Annotated[bool, _ANGSTROM] = ExtractSettings.angstrom,
    patch_size: Annotated[int, options.patch_size()] = ExtractSettings.patch_size,
    border: Annotated[int, options.border()] = ExtractSettings.border,
    threshold: Annotated[
        float | None, options.threshold("the segmentation")
    ] = ExtractSettings.threshold,
    output_format: Annotated[OutputFormat, options.output_format("patches")] = OutputFormat(
        ExtractSettings.format
    ),
    token: Annotated[str | None, _TOKEN] = ExtractSettings.token,
    overwrite: Annotated[bool, options.overwrite(_OVERWRITE)] = ExtractSettings.overwrite,
    preview: Annotated[
        bool, options.preview("image and network labels")
    ] = ExtractSettings.preview,
    copick_config: Annotated[Path | None, options.copick_config()] = None,
    run: Annotated[str | None, options.copick_run(many=False)] = None,
    tomo_type: Annotated[str | None, options.tomo_type()] = None,
    voxel_spacing: Annotated[float | None, options.voxel_spacing()] = None,
    copick_name: Annotated[str, options.copick_name(_READ)] = DEFAULT_NAME,
    copick_user: Annotated[str | None, options.copick_user(_READ)] = None,
    copick_session: Annotated[str, options.copick_session(_READ)] = DEFAULT_SESSION,
) -> None:
    """Cut image and label patches around centres, ready to be corrected."""
    picked = _copick.one_tomogram(
        copick_config, run, tomo_type, voxel_spacing, tomogram is not None
    )
    if picked is not None:
        project, chosen = picked
        tomogram, token = chosen.path, token or chosen.run
        if segmentation is None:
            name = SegmentationName(copick_name, copick_user, copick_session)
            segmentation = project.existing_segmentation(chosen.run, chosen.voxel_spacing, name)
    if segmentation is None:
        raise InputError("give --segmentation, the network's segmentation of the tomogram")
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
            at_scale_level(tomogram, scale_level),  # type: ignore[arg-type]
            segmentation,
            out_dir,
            centres,
            points=points,
            settings=settings,
            listener=listener,
        )
    if picked is not None:
        report = replace(report, tomogram=_copick.shown(picked[1]))
    render(report)


def render(report: ExtractReport) -> None:
    """What was cut, where it went, and what to do next."""
    s = report.settings
    typer.echo(
        f"Extracted {len(report.patches)} patch pair(s) of {s.patch_size}³ voxels from "
        f"{volume_name(report.tomogram)} into {report.out_dir} ({s.format}, ignore border "
        f"{s.border})."
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
            f"Skipped {report.skipped} centre(s) already extracted from "
            f"{volume_name(report.tomogram)} (see the manifest); --overwrite re-extracts them."
        )
    print_warnings(report.warnings)
