"""``segment``: whole tomograms through the network."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ..io.copick_project import DEFAULT_NAME, DEFAULT_SESSION, SegmentationName
from ..io.volumes import at_scale_level, is_volume_folder, volume_name
from ..workflows.batch_segmentation import BatchSegmentReport, is_segmented, segment_many
from ..workflows.copick_runs import CopickSegmentReport, segment_runs
from ..workflows.segmentation import SegmentReport, SegmentSettings, segment
from . import _copick, options
from ._console import console, print_warnings
from ._errors import user_errors


class SegmentFormat(str, Enum):
    """What segment writes (``--format``)."""

    mrc = "mrc"
    zarr = "zarr"


# The help's panels, so that 22 options read at 80 columns.
_FILES = "Input and output"
_WINDOWS = "Windows"
_RUN = "Device"
_MORE = "More outputs"
_CLUSTER = "Many tomograms, several jobs"

_TOMOGRAMS = typer.Option(
    "--tomogram",
    "-t",
    metavar="<path>",
    rich_help_panel=_FILES,
    help="Tomogram to segment, or a folder of them; repeat for several (the network is loaded "
    "once; those already segmented are skipped unless --overwrite).",
)
_TTA = typer.Option(
    "--tta",
    rich_help_panel=_WINDOWS,
    help="Average the logits of 8 passes over the flipped tomogram (8x slower).",
)
_UNCERTAINTY = typer.Option(
    "--uncertainty",
    rich_help_panel=_MORE,
    help="With --tta, also write <stem>_uncertainty.mrc: the variance of the 8 flipped "
    "passes' probabilities.",
)
_COMPONENTS = typer.Option(
    "--components",
    rich_help_panel=_MORE,
    help="Also write <stem>_components.mrc: 26-connected membranes labelled 1…N.",
)
_MIN_COMPONENT_SIZE = typer.Option(
    "--min-component-size",
    rich_help_panel=_MORE,
    help="With --components, drop smaller ones (voxels).",
)
_PART = typer.Option(
    "--part",
    rich_help_panel=_CLUSTER,
    help="Which part of the tomograms to segment, counted from 0 (nnU-Net's -part_id): every "
    "--parts-th of them sorted by name, from this one on. In a SLURM job array with "
    "--array=0-<parts-1>, pass $SLURM_ARRAY_TASK_ID; with --array=1-<parts>, pass "
    "$((SLURM_ARRAY_TASK_ID - 1)).",
)
_PARTS = typer.Option(
    "--parts",
    rich_help_panel=_CLUSTER,
    help="Split the tomograms into this many parts (nnU-Net's -num_parts), one per job or GPU, "
    "all into the same --out-dir: each tomogram is segmented by exactly one part.",
)
_WHOLE = (0, 1)
"""``--part`` and ``--parts`` when the tomograms are not split: all of them in one part."""


_WRITTEN = "segment writes"


@user_errors
def segment_command(
    tomograms: Annotated[list[Path] | None, _TOMOGRAMS] = None,
    *,
    checkpoint: Annotated[Path, options.checkpoint("Weights", _FILES)],
    out_dir: Annotated[
        Path,
        options.out_dir("Folder for <stem>_probabilities.mrc and <stem>_segmented.mrc.", _FILES),
    ],
    output_format: Annotated[
        SegmentFormat,
        typer.Option(
            "--format",
            help="Write the outputs as MRC files or OME-Zarr images (.zarr).",
            rich_help_panel=_FILES,
        ),
    ] = SegmentFormat(SegmentSettings.format),
    window: Annotated[int, options.window(_WINDOWS)] = SegmentSettings.window,
    overlap: Annotated[float, options.overlap(_WINDOWS)] = SegmentSettings.overlap,
    tta: Annotated[bool, _TTA] = SegmentSettings.tta,
    batch_size: Annotated[int, options.window_batch_size(_WINDOWS)] = SegmentSettings.batch_size,
    threshold: Annotated[float, options.probability_threshold(_FILES)] = SegmentSettings.threshold,
    device: Annotated[str, options.device(_RUN)] = SegmentSettings.device,
    threads: Annotated[int | None, options.threads(_RUN)] = None,
    trust_checkpoint: Annotated[
        bool, options.trust_checkpoint(_FILES)
    ] = SegmentSettings.trust_checkpoint,
    rescale: Annotated[bool, options.rescale(_WINDOWS)] = SegmentSettings.rescale,
    pixel_size: Annotated[float | None, options.pixel_size(_WINDOWS)] = SegmentSettings.pixel_size,
    uncertainty: Annotated[bool, _UNCERTAINTY] = SegmentSettings.uncertainty,
    components: Annotated[bool, _COMPONENTS] = SegmentSettings.components,
    min_component_size: Annotated[int, _MIN_COMPONENT_SIZE] = SegmentSettings.min_component_size,
    compile_network: Annotated[bool, options.compile_network(_RUN)] = SegmentSettings.compile,
    overwrite: Annotated[
        bool, options.overwrite("earlier outputs", _FILES)
    ] = SegmentSettings.overwrite,
    scale_level: Annotated[int | None, options.scale_level(_FILES)] = None,
    part: Annotated[int, _PART] = _WHOLE[0],
    parts: Annotated[int, _PARTS] = _WHOLE[1],
    copick_config: Annotated[Path | None, options.copick_config()] = None,
    runs: Annotated[list[str] | None, options.copick_run(many=True)] = None,
    tomo_type: Annotated[str | None, options.tomo_type()] = None,
    voxel_spacing: Annotated[float | None, options.voxel_spacing()] = None,
    copick_name: Annotated[str, options.copick_name(_WRITTEN)] = DEFAULT_NAME,
    copick_user: Annotated[str | None, options.copick_user(_WRITTEN)] = None,
    copick_session: Annotated[str, options.copick_session(_WRITTEN)] = DEFAULT_SESSION,
) -> None:
    """Segment whole tomograms: a probability scoremap and a binary segmentation.

    With several tomograms, one that cannot be read or segmented is reported and the others
    are done; the exit code is then 1. Several runs may share one --out-dir (one per GPU
    with CUDA_VISIBLE_DEVICES, or a job array with --part/--parts): a tomogram another run
    is segmenting is left to it. With --copick-config, every selected run's tomogram is
    segmented into <out-dir>/<run>/ and its segmentation written into the project.
    """
    settings = SegmentSettings(
        window=window,
        overlap=overlap,
        tta=tta,
        batch_size=batch_size,
        threshold=threshold,
        device=device,
        trust_checkpoint=trust_checkpoint,
        rescale=rescale,
        pixel_size=pixel_size,
        uncertainty=uncertainty,
        components=components,
        min_component_size=min_component_size,
        overwrite=overwrite,
        compile=compile_network,
        format=output_format.value,
    )
    options.use_threads(threads)
    project = _copick.project(copick_config, runs, tomo_type, voxel_spacing, bool(tomograms))
    files = list(tomograms or [])
    single = len(files) == 1 and not is_volume_folder(files[0]) and (part, parts) == _WHOLE
    level = scale_level  # a batch takes each tomogram's level in turn
    if single:
        files, level = [at_scale_level(files[0], scale_level)], None
    if project is not None:
        if scale_level:
            raise InputError(
                "--scale-level: a copick segmentation is stored at its tomogram's voxel "
                "spacing; choose a coarser tomogram with --voxel-spacing"
            )
        name = SegmentationName(copick_name, copick_user, copick_session)
        many = partial(segment_runs, project, name)
    else:
        many = partial(segment_many, files, scale_level=level)
    with console() as listener:
        # A tomogram already segmented is skipped alone as in a folder (segment_many says
        # so, exit 0): a job array that resubmits single files goes through.
        if single and (overwrite or not is_segmented(files[0], out_dir, settings)):
            render(segment(files[0], checkpoint, out_dir, settings=settings, listener=listener))
            return
        result = many(
            checkpoint, out_dir, settings=settings, part=part, parts=parts, listener=listener
        )
    if isinstance(result, CopickSegmentReport):
        render_runs(result, out_dir, part, parts)
        result = result.batch
    else:
        render_batch(result, out_dir, part, parts)
    if result.failed:
        raise typer.Exit(1)


def render_batch(
    batch: BatchSegmentReport, out_dir: Path, part: int, parts: int, done: str | None = None
) -> None:
    """Each tomogram segmented, then what was skipped (``done`` says why: default,
    already segmented in ``out_dir``), left to another run, or failed."""
    if parts > 1 and not (batch.done or batch.skipped or batch.failed or batch.busy):
        typer.echo(
            f"Part {part} of {parts} holds no tomogram ({batch.total} given in all); "
            "nothing to do."
        )
        return
    for report in batch.done:
        render(report)
    if batch.skipped:
        typer.echo(
            f"Skipped {len(batch.skipped)} tomogram(s) "
            f"{done or f'already segmented in {out_dir}'} (--overwrite redoes them): "
            f"{', '.join(p.name for p in batch.skipped)}"
        )
    if batch.busy:
        typer.echo(
            f"Left {len(batch.busy)} tomogram(s) to another run segmenting them into "
            f"{out_dir}: {', '.join(p.name for p in batch.busy)}"
        )
    print_warnings(batch.warnings)
    if batch.failed:
        typer.echo(
            f"Failed {len(batch.failed)} tomogram(s); nothing of theirs was written (the "
            "same command redoes only those still missing):",
            err=True,
        )
        for _, reason in batch.failed:
            typer.echo(f"  - {reason}", err=True)
    busy = f", left {len(batch.busy)} to another run" if batch.busy else ""
    which = f" (part {part} of {parts})" if parts > 1 else ""
    typer.echo(
        f"Segmented {len(batch.done)} tomogram(s), skipped {len(batch.skipped)}, "
        f"failed {len(batch.failed)}{busy}{which}."
    )


def render_runs(report: CopickSegmentReport, out_dir: Path, part: int, parts: int) -> None:
    """The batch's lines, each tomogram named by its run, then each segmentation written
    into the copick project."""

    def run(path: Path) -> Path:
        return Path(f"run {report.runs.get(path, path)}")

    batch = report.batch
    render_batch(
        replace(
            batch,
            done=[replace(r, tomogram=run(r.tomogram)) for r in batch.done],
            skipped=[run(p) for p in batch.skipped],
            busy=[run(p) for p in batch.busy],
        ),
        out_dir,
        part,
        parts,
        "whose copick segmentation exists",
    )
    for run, folder in report.written:
        typer.echo(f"Written into the copick project, run {run}: {folder}")


def render(report: SegmentReport) -> None:
    """What was segmented, how, and where the outputs are."""
    s = report.settings
    if report.pixel_sizes is not None:
        given, network = report.pixel_sizes
        typer.echo(
            f"Windows of {report.grid_window}³ voxels at {given:g} Å resampled to the "
            f"network's {s.window}³ at {network:g} Å."
        )
    typer.echo(
        f"Segmented {volume_name(report.tomogram)} "
        f"({'x'.join(map(str, report.shape_xyz))} voxels, "
        f"{report.windows} windows of {report.grid_window}³, overlap {s.overlap:g}"
        f"{', 8-flip TTA' if s.tta else ''}) on {report.device}: "
        f"{report.membrane_share:.2%} membrane at probability > {s.threshold:g}."
    )
    if report.peak_gpu_gib is not None:
        typer.echo(f"Peak GPU memory: {report.peak_gpu_gib:.1f} GiB")
    typer.echo(f"Probabilities: {report.probabilities}\nSegmentation: {report.segmentation}")
    if report.uncertainty is not None:
        typer.echo(f"Uncertainty (variance of the 8 TTA passes): {report.uncertainty}")
    if report.components is not None:
        typer.echo(f"Components ({report.component_count}): {report.components}")
    print_warnings(report.warnings)
