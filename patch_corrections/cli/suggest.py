"""``suggest``: where in a tomogram a correction would teach the network most."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..io.names import segmentation_beside
from ..io.volumes import at_scale_level, volume_name
from ..network.threads import check_threads
from ..workflows.segmentation import SegmentSettings
from ..workflows.suggestion import SuggestReport, SuggestSettings, suggest
from . import _copick, options
from ._console import console, print_warnings
from ._errors import user_errors

# The help's panels, so that 24 options read at 80 columns.
_INPUT = "Input"
_RANKING = "Ranking"
_OUTPUT = "Output"
_NETWORK = "Network (with --checkpoint)"

_CHECKPOINT = "Run this network (8-flip TTA) for the probabilities and their variance"
_PROBABILITIES = typer.Option(
    "--probabilities",
    help="Or the probabilities that segment --tta --uncertainty wrote (no network run).",
    rich_help_panel=_INPUT,
)
_UNCERTAINTY = typer.Option(
    "--uncertainty",
    help="With --probabilities: the uncertainty segment wrote.",
    rich_help_panel=_INPUT,
)
_OUT_DIR = (
    "Folder for the centres (<stem>_suggestions.csv), napari points and previews/; with "
    "--checkpoint, segment's outputs too."
)
_COUNT = typer.Option(
    "--count", "-n", help="How many patch centres to suggest.", rich_help_panel=_RANKING
)
_MAX_OVERLAP = typer.Option(
    "--max-overlap",
    help="Largest share of a patch that may lie inside another suggestion or an excluded patch.",
    rich_help_panel=_RANKING,
)
_SPREAD = typer.Option(
    "--spread/--no-spread",
    help="The most uncertain box of each kind of region (intensity, texture, membrane, "
    "disagreement; as many kinds as --count), or the most uncertain boxes on membrane.",
    rich_help_panel=_RANKING,
)
_EXCLUDE_MANIFEST = typer.Option(
    "--exclude-manifest",
    help="An extract_patches output folder: skip its patches of this tomogram.",
    rich_help_panel=_RANKING,
)
_MASK = typer.Option(
    "--mask",
    help="Region of interest, the tomogram's shape: non-zero voxels count and hold the centres.",
    rich_help_panel=_RANKING,
)
_ALLOW_BORDER = typer.Option(
    "--allow-border",
    help="Let patches cross the tomogram's border (default: they lie inside it).",
    rich_help_panel=_RANKING,
)
_NO_PREVIEWS = typer.Option(
    "--no-previews", help="Write no preview PNGs.", rich_help_panel=_OUTPUT
)


@user_errors
def suggest_command(
    tomogram: Annotated[Path | None, options.tomogram(_INPUT)] = None,
    *,
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR, _OUTPUT)],
    checkpoint: Annotated[Path | None, options.checkpoint(_CHECKPOINT, _INPUT)] = None,
    scale_level: Annotated[int | None, options.scale_level(_INPUT)] = None,
    probabilities: Annotated[Path | None, _PROBABILITIES] = None,
    uncertainty: Annotated[Path | None, _UNCERTAINTY] = None,
    count: Annotated[int, _COUNT] = SuggestSettings.count,
    patch_size: Annotated[int, options.patch_size(_RANKING)] = SuggestSettings.patch_size,
    border: Annotated[int, options.border(_RANKING, scored=False)] = SuggestSettings.border,
    max_overlap: Annotated[float, _MAX_OVERLAP] = SuggestSettings.max_overlap,
    spread: Annotated[bool, _SPREAD] = SuggestSettings.spread,
    exclude_manifest: Annotated[Path | None, _EXCLUDE_MANIFEST] = None,
    mask: Annotated[Path | None, _MASK] = None,
    allow_border: Annotated[bool, _ALLOW_BORDER] = SuggestSettings.allow_border,
    threshold: Annotated[
        float, options.probability_threshold(_RANKING)
    ] = SuggestSettings.threshold,
    no_previews: Annotated[bool, _NO_PREVIEWS] = not SuggestSettings.previews,
    window: Annotated[int, options.window(_NETWORK)] = SegmentSettings.window,
    overlap: Annotated[float, options.overlap(_NETWORK)] = SegmentSettings.overlap,
    batch_size: Annotated[int, options.window_batch_size(_NETWORK)] = SegmentSettings.batch_size,
    device: Annotated[str, options.device(_NETWORK)] = SegmentSettings.device,
    threads: Annotated[int | None, options.threads(_NETWORK)] = None,
    compile_network: Annotated[bool, options.compile_network(_NETWORK)] = SegmentSettings.compile,
    trust_checkpoint: Annotated[
        bool, options.trust_checkpoint(_NETWORK)
    ] = SegmentSettings.trust_checkpoint,
    rescale: Annotated[bool, options.rescale(_NETWORK)] = SegmentSettings.rescale,
    pixel_size: Annotated[float | None, options.pixel_size(_NETWORK)] = SegmentSettings.pixel_size,
    overwrite: Annotated[
        bool, options.overwrite("this tomogram's earlier outputs in --out-dir", _OUTPUT)
    ] = SuggestSettings.overwrite,
    copick_config: Annotated[Path | None, options.copick_config()] = None,
    run: Annotated[str | None, options.copick_run(many=False)] = None,
    tomo_type: Annotated[str | None, options.tomo_type()] = None,
    voxel_spacing: Annotated[float | None, options.voxel_spacing()] = None,
) -> None:
    """Suggest patch centres where a correction would teach the network most.

    Boxes of --patch-size are grouped into as many kinds of region as --count, and the
    box of each kind where the network's 8 flipped (TTA) passes disagree most is chosen
    (--no-spread: the boxes where they disagree most on membrane); boxes that do not
    overlap are written as a centres file for extract_patches --centres, a napari points
    CSV and one preview PNG each.
    """
    settings = SuggestSettings(
        count=count,
        patch_size=patch_size,
        border=border,
        max_overlap=max_overlap,
        spread=spread,
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
            compile=compile_network,
        ),
    )
    picked = _copick.one_tomogram(
        copick_config, run, tomo_type, voxel_spacing, tomogram is not None
    )
    source = None
    if picked is not None:
        chosen = picked[1]
        tomogram = chosen.path
        source = (
            f"--copick-config {copick_config} --run {chosen.run} --tomo-type "
            f"{chosen.tomo_type} --voxel-spacing {chosen.voxel_spacing:g}"
        )
    if checkpoint is not None:  # only the network needs PyTorch
        options.use_threads(threads)
    else:
        check_threads(threads)
    with console() as listener:
        report = suggest(
            at_scale_level(tomogram, scale_level),  # type: ignore[arg-type]
            out_dir,
            checkpoint,
            probabilities=probabilities,
            uncertainty=uncertainty,
            mask=mask,
            exclude_manifest=exclude_manifest,
            settings=settings,
            listener=listener,
        )
    if picked is not None:
        report = replace(report, tomogram=_copick.shown(picked[1]))
    render(report, source)


def render(report: SuggestReport, source: str | None = None) -> None:
    """The suggestions, best first, and where they were written; ``source`` gives the
    tomogram's options for the next command (default ``-t <tomogram>``)."""
    s = report.settings
    excluded = f", {report.excluded} extracted patch(es) left out" if report.excluded else ""
    typer.echo(
        f"Scored {report.candidates} boxes of {s.patch_size}³ voxels in "
        f"{volume_name(report.tomogram)} ({'x'.join(map(str, report.shape_xyz))}){excluded}; "
        f"{len(report.suggestions)} suggestion(s), "
        + ("one per kind of region, the largest kind first:" if s.spread else "best first:")
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
        segmentation = (
            report.segmentation or segmentation_beside(report.probabilities) or "<segmentation>"
        )
        typer.echo(
            f"Next: patch_corrections extract_patches {source or f'-t {report.tomogram}'} "
            f"-s {segmentation} "
            f"-c {report.centres} --patch-size {s.patch_size} -o <patches-dir>"
        )
    print_warnings(report.warnings)
