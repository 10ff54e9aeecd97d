"""``paste_corrections``: corrected label patches written back into a full segmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..workflows.pasting import PasteReport, PasteSettings, paste_corrections
from . import options
from ._console import console, print_warnings
from ._errors import user_errors

_MERGED_DIR = typer.Option(
    "--merged-dir",
    "-m",
    help="The corrected patches: merge_corrections' --out-dir (or its labelsTr/).",
)
_SEGMENTATION = (
    "The full-size segmentation to correct: segment's <stem>_segmented.mrc, or the one given "
    "to extract_patches."
)
_OUT = typer.Option(
    "--out",
    "-o",
    help="MRC file to write, with the segmentation's shape, voxel size and origin.",
)
_PATCHES_DIR = typer.Option(
    "--patches-dir",
    "-p",
    help="The extract_patches --out-dir: its manifest's voxel offsets are checked against the "
    "patches' headers (and place patches whose headers lack geometry).",
)
_MARK_IGNORE = typer.Option(
    "--mark-ignore",
    help="Write this value (e.g. 2) where patches lie but leave the voxel ignore (border band, "
    "painted Ignore), to see what nobody decided; default: those voxels keep the "
    "segmentation's value.",
)
_TOKEN = typer.Option(
    "--token", help="Paste only the patches named <token>_patchNNN (one tomogram's)."
)


@user_errors
def paste_corrections_command(
    merged_dir: Annotated[Path, _MERGED_DIR],
    segmentation: Annotated[Path, options.segmentation(_SEGMENTATION)],
    out: Annotated[Path, _OUT],
    patches_dir: Annotated[Path | None, _PATCHES_DIR] = None,
    mark_ignore: Annotated[int | None, _MARK_IGNORE] = PasteSettings.mark_ignore,
    token: Annotated[str | None, _TOKEN] = PasteSettings.token,
    overwrite: Annotated[
        bool, options.overwrite("an existing --out file")
    ] = PasteSettings.overwrite,
) -> None:
    """Paste corrected patches back into a full segmentation; ignore keeps its values.

    Voxels a patch decides (0 background, 1 membrane) replace the segmentation's; its
    ignore voxels (2: the border band, padding, painted Ignore) keep the segmentation's
    value, or become --mark-ignore. Where patches overlap, a decided voxel beats an ignore
    one; where two patches decide a voxel differently, the patch it lies deeper in
    (farther from that patch's nearest face) wins, at equal depth the later patch by name.
    Each patch is placed by its header's origin and voxel size on the segmentation's grid
    (checked against the manifest with --patches-dir). The segmentation is read and the
    output written slab by slab.
    """
    settings = PasteSettings(mark_ignore=mark_ignore, token=token, overwrite=overwrite)
    with console() as listener:
        report = paste_corrections(
            merged_dir, segmentation, out, patches_dir, settings=settings, listener=listener
        )
    render(report)


def render(report: PasteReport) -> None:
    """The per-patch table and the totals."""
    rows = report.rows
    typer.echo(f"Pasted {len(rows)} patch(es) into a copy of {report.segmentation}:")
    width = max(len(r["name"]) for r in rows)
    typer.echo(
        f"  {'patch':<{width}}  {'offset x,y,z':>16}  {'decided':>9}  {'+membrane':>9}  "
        f"{'-membrane':>9}  placed by"
    )
    for r in rows:
        offset = ",".join(str(v) for v in r["offset_xyz"])
        typer.echo(
            f"  {r['name']:<{width}}  {offset:>16}  {r['decided']:>9}  {r['added']:>9}  "
            f"{r['removed']:>9}  {r['placed_by']}"
        )
    typer.echo(
        f"Voxels of the segmentation changed: {report.added} became membrane, "
        f"{report.removed} background ({report.decided} decided by the patches; per "
        "patch, the voxels it set in the output, where patches overlap only the one that "
        "decides)"
    )
    if report.settings.mark_ignore is not None:
        typer.echo(
            f"Undecided voxels inside patches marked {report.settings.mark_ignore}: "
            f"{report.marked}"
        )
    if report.conflicts:
        typer.echo(
            f"Overlapping patches disagreed on {report.conflicts} voxel(s): each took the "
            "value of the patch it lies deeper in"
        )
    typer.echo(f"Written: {report.out}")
    print_warnings(report.warnings)
