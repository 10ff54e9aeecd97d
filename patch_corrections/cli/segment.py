"""``segment``: whole tomograms through the network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import PATCH_SIZE
from ..workflows.segmentation import (
    BatchSegmentReport,
    SegmentReport,
    SegmentSettings,
    segment,
    segment_many,
)
from ._common import ThreadsOption, console, print_warnings, use_threads, user_errors


@user_errors
def segment_command(
    tomograms: Annotated[
        list[Path],
        typer.Option(
            "--tomogram",
            "-t",
            help="Tomogram to segment, or a folder of them; repeat for several (the network "
            "is loaded once; those already segmented are skipped unless --overwrite).",
        ),
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint", help="Weights: ours (best.pt, last.pt) or a MemBrain-seg .ckpt."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir", "-o", help="Folder for <stem>_probabilities.mrc and <stem>_segmented.mrc."
        ),
    ],
    window: Annotated[
        int, typer.Option("--window", help="Edge of the sliding windows, in voxels.")
    ] = PATCH_SIZE,
    overlap: Annotated[
        float, typer.Option("--overlap", help="Fraction by which neighbouring windows overlap.")
    ] = 0.5,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta", help="Average the logits of 8 passes over the flipped tomogram (8x slower)."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Probability above which a voxel is membrane.")
    ] = 0.5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: ThreadsOption = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="Allow a checkpoint that pickles objects beyond weights."
        ),
    ] = False,
    rescale: Annotated[
        bool,
        typer.Option(
            "--rescale",
            help="Resample windows to the pixel size the network was trained at (10 Å for "
            "MemBrain-seg's); outputs stay on the tomogram's grid.",
        ),
    ] = False,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            help="The tomogram's pixel size in Å for --rescale; default: its header's.",
        ),
    ] = None,
    uncertainty: Annotated[
        bool,
        typer.Option(
            "--uncertainty",
            help="With --tta, also write <stem>_uncertainty.mrc: the variance of the 8 "
            "flipped passes' probabilities.",
        ),
    ] = False,
    components: Annotated[
        bool,
        typer.Option(
            "--components",
            help="Also write <stem>_components.mrc: 26-connected membranes labelled 1…N.",
        ),
    ] = False,
    min_component_size: Annotated[
        int,
        typer.Option(
            "--min-component-size", help="With --components, drop smaller ones (voxels)."
        ),
    ] = 1,
    compile_network: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the network: tens of seconds before the first window, "
            "faster windows after (for large tomograms, --tta, or many tomograms).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace earlier outputs.")
    ] = False,
    part: Annotated[
        int,
        typer.Option(
            "--part",
            help="Which part of the tomograms to segment, counted from 0 (nnU-Net's "
            "-part_id): every --parts-th of them sorted by name, from this one on. In a SLURM "
            "job array with --array=0-<parts-1>, pass $SLURM_ARRAY_TASK_ID; with "
            "--array=1-<parts>, pass $((SLURM_ARRAY_TASK_ID - 1)).",
        ),
    ] = 0,
    parts: Annotated[
        int,
        typer.Option(
            "--parts",
            help="Split the tomograms into this many parts (nnU-Net's -num_parts), one per "
            "job or GPU, all into the same --out-dir: each tomogram is segmented by exactly "
            "one part.",
        ),
    ] = 1,
) -> None:
    """Segment whole tomograms: a probability scoremap and a binary segmentation (MRC).

    With several tomograms, one that cannot be read or segmented is reported and the others
    are done; the exit code is then 1. Several runs may share one --out-dir (one per GPU
    with CUDA_VISIBLE_DEVICES, or a job array with --part/--parts): a tomogram another run
    is segmenting is left to it.
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
    )
    use_threads(threads)
    with console() as listener:
        if len(tomograms) == 1 and not tomograms[0].is_dir() and (part, parts) == (0, 1):
            render(
                segment(tomograms[0], checkpoint, out_dir, settings=settings, listener=listener)
            )
            return
        batch = segment_many(
            tomograms,
            checkpoint,
            out_dir,
            settings=settings,
            part=part,
            parts=parts,
            listener=listener,
        )
    render_batch(batch, out_dir, part, parts)
    if batch.failed:
        raise typer.Exit(1)


def render_batch(batch: BatchSegmentReport, out_dir: Path, part: int, parts: int) -> None:
    """Each tomogram segmented, then what was skipped, left to another run, or failed."""
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
            f"Skipped {len(batch.skipped)} tomogram(s) already segmented in {out_dir} "
            f"(--overwrite redoes them): {', '.join(p.name for p in batch.skipped)}"
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
        f"Segmented {report.tomogram.name} ({'x'.join(map(str, report.shape_xyz))} voxels, "
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
