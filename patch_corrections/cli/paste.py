"""``paste_corrections``: corrected label patches written back into a full segmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..io.copick_project import DEFAULT_NAME, DEFAULT_SESSION, SegmentationName
from ..workflows.pasting import PasteReport, PasteSettings, paste_corrections
from . import _copick, options
from ._console import console, print_warnings
from ._errors import user_errors

_MERGED_DIR = typer.Option(
    "--merged-dir",
    "-m",
    help="The corrected patches: merge_corrections' --out-dir (or its labelsTr/).",
)
_SEGMENTATION = (
    "The full-size segmentation to correct: segment's <stem>_segmented.mrc, or the one given "
    "to extract_patches (with --copick-config: the copick segmentation --copick-name/"
    "--copick-user/--copick-session)."
)
_OUT = typer.Option(
    "--out",
    "-o",
    help="MRC file or OME-Zarr image (.zarr) to write, with the segmentation's shape, voxel "
    "size and origin (with --copick-config: none, the result goes into the project).",
)
_READ = "to correct"
_OUT_SESSION = typer.Option(
    "--copick-out-session",
    help="Session of the corrected copick segmentation written (same name and user).",
    rich_help_panel=options.COPICK_PANEL,
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
    segmentation: Annotated[Path | None, options.segmentation(_SEGMENTATION)] = None,
    out: Annotated[Path | None, _OUT] = None,
    patches_dir: Annotated[Path | None, _PATCHES_DIR] = None,
    mark_ignore: Annotated[int | None, _MARK_IGNORE] = PasteSettings.mark_ignore,
    token: Annotated[str | None, _TOKEN] = PasteSettings.token,
    overwrite: Annotated[
        bool, options.overwrite("an existing --out file")
    ] = PasteSettings.overwrite,
    copick_config: Annotated[Path | None, options.copick_config()] = None,
    run: Annotated[str | None, options.copick_run(many=False)] = None,
    voxel_spacing: Annotated[float | None, options.voxel_spacing()] = None,
    copick_name: Annotated[str, options.copick_name(_READ)] = DEFAULT_NAME,
    copick_user: Annotated[str | None, options.copick_user(_READ)] = None,
    copick_session: Annotated[str, options.copick_session(_READ)] = DEFAULT_SESSION,
    copick_out_session: Annotated[str, _OUT_SESSION] = "corrected",
) -> None:
    """Paste corrected patches back into a full segmentation; ignore keeps its values.

    Voxels a patch decides (0 background, 1 membrane) replace the segmentation's; its
    ignore voxels (2: the border band, padding, painted Ignore) keep the segmentation's
    value, or become --mark-ignore. Where patches overlap, a decided voxel beats an ignore
    one; where two patches decide a voxel differently, the patch it lies deeper in
    (farther from that patch's nearest face) wins, at equal depth the later patch by name.
    Each patch is placed by its header's origin and voxel size on the segmentation's grid
    (checked against the manifest with --patches-dir). The segmentation is read and the
    output written slab by slab. With --copick-config, the segmentation is read from the
    copick project and the result written into it as a segmentation of --copick-out-session.
    """
    if copick_config is not None:
        segmentation, out = _copick_paths(
            copick_config,
            run,
            voxel_spacing,
            SegmentationName(copick_name, copick_user, copick_session),
            copick_out_session,
            segmentation,
            out,
        )
    elif run is not None or voxel_spacing is not None:
        raise InputError(
            "--run and --voxel-spacing select in a copick project: give --copick-config"
        )
    if segmentation is None or out is None:
        raise InputError(
            f"give {'--segmentation' if segmentation is None else '--out'}, or a copick "
            "project with --copick-config"
        )
    settings = PasteSettings(mark_ignore=mark_ignore, token=token, overwrite=overwrite)
    with console() as listener:
        report = paste_corrections(
            merged_dir, segmentation, out, patches_dir, settings=settings, listener=listener
        )
    render(report)


def _copick_paths(
    config: Path,
    run: str | None,
    voxel_spacing: float | None,
    name: SegmentationName,
    out_session: str,
    segmentation: Path | None,
    out: Path | None,
) -> tuple[Path, Path]:
    """The copick segmentation to read and the one to write."""
    if segmentation is not None or out is not None:
        given = "--segmentation" if segmentation is not None else "--out"
        raise InputError(
            f"{given}: with --copick-config the segmentation is read from the project and the "
            "result written into it; give one or the other"
        )
    if out_session == name.session:
        raise InputError(
            f"--copick-out-session {out_session}: that is the session read "
            f"(--copick-session); write the corrected segmentation under another, e.g. "
            f"--copick-out-session {out_session}-2"
        )
    project = _copick.project(config, [run] if run else None, None, voxel_spacing, False)
    assert project is not None
    run_name, spacing = project.run_and_spacing()
    read = project.existing_segmentation(run_name, spacing, name)
    written = SegmentationName(name.name, name.user, out_session)
    return read, project.new_segmentation(run_name, spacing, written, "--copick-out-session")


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
