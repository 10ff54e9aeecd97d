"""``suggest``: where in a tomogram a correction would teach the network most."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import BORDER_WIDTH, PATCH_SIZE
from ..suggest import MAX_OVERLAP
from ..workflows.segmentation import SegmentSettings
from ..workflows.suggestion import SuggestReport, SuggestSettings, suggest
from ._common import console, print_warnings, user_errors

_INPUT = "Input"
_RANKING = "Ranking"
_OUTPUT = "Output"
_NETWORK = "Network (with --checkpoint)"


@user_errors
def suggest_command(
    tomogram: Annotated[
        Path,
        typer.Option(
            "--tomogram",
            "-t",
            help="Tomogram (.mrc .rec .map .st .nrrd .nhdr .nii .nii.gz).",
            rich_help_panel=_INPUT,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            help="Folder for the centres (<stem>_suggestions.csv), napari points and "
            "previews/; with --checkpoint, segment's outputs too.",
            rich_help_panel=_OUTPUT,
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Run this network (8-flip TTA) for the probabilities and their variance.",
            rich_help_panel=_INPUT,
        ),
    ] = None,
    probabilities: Annotated[
        Path | None,
        typer.Option(
            "--probabilities",
            help="Or the probabilities that segment --tta --uncertainty wrote (no network run).",
            rich_help_panel=_INPUT,
        ),
    ] = None,
    uncertainty: Annotated[
        Path | None,
        typer.Option(
            "--uncertainty",
            help="With --probabilities: the uncertainty segment wrote.",
            rich_help_panel=_INPUT,
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count", "-n", help="How many patch centres to suggest.", rich_help_panel=_RANKING
        ),
    ] = 5,
    patch_size: Annotated[
        int,
        typer.Option(
            "--patch-size",
            help="Edge of the patches you will extract, in voxels.",
            rich_help_panel=_RANKING,
        ),
    ] = PATCH_SIZE,
    border: Annotated[
        int,
        typer.Option(
            "--border",
            help="Their ignore band (as extract_patches): not scored, only context.",
            rich_help_panel=_RANKING,
        ),
    ] = BORDER_WIDTH,
    max_overlap: Annotated[
        float,
        typer.Option(
            "--max-overlap",
            help="Largest share of a patch that may lie inside another suggestion or an "
            "excluded patch.",
            rich_help_panel=_RANKING,
        ),
    ] = MAX_OVERLAP,
    exclude_manifest: Annotated[
        Path | None,
        typer.Option(
            "--exclude-manifest",
            help="An extract_patches output folder: skip its patches of this tomogram.",
            rich_help_panel=_RANKING,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="Region of interest, the tomogram's shape: non-zero voxels count and hold "
            "the centres.",
            rich_help_panel=_RANKING,
        ),
    ] = None,
    allow_border: Annotated[
        bool,
        typer.Option(
            "--allow-border",
            help="Let patches cross the tomogram's border (default: they lie inside it).",
            rich_help_panel=_RANKING,
        ),
    ] = False,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            help="Probability above which a voxel is membrane.",
            rich_help_panel=_RANKING,
        ),
    ] = 0.5,
    no_previews: Annotated[
        bool,
        typer.Option("--no-previews", help="Write no preview PNGs.", rich_help_panel=_OUTPUT),
    ] = False,
    window: Annotated[
        int,
        typer.Option(
            "--window",
            help="Edge of the sliding windows, in voxels.",
            rich_help_panel=_NETWORK,
        ),
    ] = PATCH_SIZE,
    overlap: Annotated[
        float,
        typer.Option(
            "--overlap",
            help="Fraction by which neighbouring windows overlap.",
            rich_help_panel=_NETWORK,
        ),
    ] = 0.5,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Windows per forward pass.",
            rich_help_panel=_NETWORK,
        ),
    ] = 1,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=_NETWORK)
    ] = "auto",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            help="Allow a checkpoint that pickles objects beyond weights.",
            rich_help_panel=_NETWORK,
        ),
    ] = False,
    rescale: Annotated[
        bool,
        typer.Option(
            "--rescale",
            help="Resample windows to the pixel size the network was trained at.",
            rich_help_panel=_NETWORK,
        ),
    ] = False,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            help="The tomogram's pixel size in Å for --rescale; default: header.",
            rich_help_panel=_NETWORK,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace this tomogram's earlier outputs in --out-dir.",
            rich_help_panel=_OUTPUT,
        ),
    ] = False,
) -> None:
    """Suggest patch centres where a correction would teach the network most.

    Boxes of --patch-size are ranked by how much the network's 8 flipped (TTA) passes
    disagree inside them, where it sees membrane; the best that do not overlap are
    written as a centres file for extract_patches --centres, a napari points CSV and
    one preview PNG each.
    """
    settings = SuggestSettings(
        count=count,
        patch_size=patch_size,
        border=border,
        max_overlap=max_overlap,
        allow_border=allow_border,
        threshold=threshold,
        previews=not no_previews,
        overwrite=overwrite,
        network=SegmentSettings(
            window=window,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            trust_checkpoint=trust_checkpoint,
            rescale=rescale,
            pixel_size=pixel_size,
        ),
    )
    with console() as listener:
        report = suggest(
            tomogram,
            out_dir,
            checkpoint,
            probabilities=probabilities,
            uncertainty=uncertainty,
            mask=mask,
            exclude_manifest=exclude_manifest,
            settings=settings,
            listener=listener,
        )
    render(report)


def render(report: SuggestReport) -> None:
    """The suggestions, best first, and where they were written."""
    s = report.settings
    excluded = f", {report.excluded} extracted patch(es) left out" if report.excluded else ""
    typer.echo(
        f"Scored {report.candidates} boxes of {s.patch_size}³ voxels in "
        f"{report.tomogram.name} ({'x'.join(map(str, report.shape_xyz))}){excluded}; "
        f"{len(report.suggestions)} suggestion(s), best first:"
    )
    for item in report.suggestions:
        x, y, z = item.centre_xyz
        typer.echo(f"  {item.rank:2d}. x={x} y={y} z={z}  score {item.score:.4f}  {item.reason}")
    typer.echo(f"Centres: {report.centres}\nnapari points: {report.points}")
    if report.suggestions and report.suggestions[0].preview is not None:
        typer.echo(f"Previews: {report.suggestions[0].preview.parent}")
    if report.segmentation is not None:
        typer.echo(
            f"Segment outputs: {report.probabilities.name}, {report.segmentation.name}, "
            f"{report.uncertainty.name}"
        )
    if report.suggestions:
        segmentation = report.segmentation or _beside(report.probabilities)
        typer.echo(
            f"Next: patch_corrections extract_patches -t {report.tomogram} -s {segmentation} "
            f"-c {report.centres} --patch-size {s.patch_size} -o <patches-dir>"
        )
    print_warnings(report.warnings)


def _beside(probabilities: Path) -> Path | str:
    """The segmentation segment wrote beside ``probabilities``, if it is there."""
    name = probabilities.name
    if name.endswith("_probabilities.mrc"):
        segmented = probabilities.with_name(
            name.removesuffix("_probabilities.mrc") + "_segmented.mrc"
        )
        if segmented.exists():
            return segmented
    return "<segmentation>"
