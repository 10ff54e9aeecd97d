"""``export_membrain``: one of our checkpoints as a MemBrain-seg ``.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import BEST_CHECKPOINT, LAST_CHECKPOINT
from ..workflows.export import (
    NORMALISATION_WORDS,
    ExportReport,
    ExportSettings,
    export_membrain,
)
from . import options
from ._console import print_warnings
from ._errors import user_errors

_CHECKPOINT = typer.Option(
    "--checkpoint",
    help=f"Our checkpoint to export ({BEST_CHECKPOINT} or {LAST_CHECKPOINT} of a retrain run).",
)
_OUT = typer.Option(
    "--out",
    "-o",
    help="MemBrain-seg checkpoint to write, e.g. model/best_membrain.ckpt.",
)
_ALLOW_NORMALISATION_MISMATCH = typer.Option(
    "--allow-normalisation-mismatch",
    help="Export a network that learnt intensities normalised by median and MAD (a run "
    "started from scratch) although membrain segment feeds it tomograms normalised by mean "
    "and standard deviation.",
)


@user_errors
def export_membrain_command(
    checkpoint: Annotated[Path, _CHECKPOINT],
    out: Annotated[Path, _OUT],
    overwrite: Annotated[
        bool, options.overwrite("an existing --out file")
    ] = ExportSettings.overwrite,
    trust_checkpoint: Annotated[
        bool, options.trust_checkpoint()
    ] = ExportSettings.trust_checkpoint,
    allow_normalisation_mismatch: Annotated[
        bool, _ALLOW_NORMALISATION_MISMATCH
    ] = ExportSettings.allow_normalisation_mismatch,
) -> None:
    """Write a network of ours as a MemBrain-seg checkpoint, weights only, for membrain segment.

    The file is what membrain segment --ckpt-path and membrain finetune load; writing it
    needs neither MemBrain-seg nor Lightning. Networks MemBrain-seg's cannot hold (the
    small and tiny presets, networks trained before the axis order was recorded) are
    refused, and so is one that learnt intensities normalised otherwise than membrain
    segment normalises them, unless --allow-normalisation-mismatch.
    """
    settings = ExportSettings(
        overwrite=overwrite,
        trust_checkpoint=trust_checkpoint,
        allow_normalisation_mismatch=allow_normalisation_mismatch,
    )
    render(export_membrain(checkpoint, out, settings=settings))


def render(report: ExportReport) -> None:
    """What was written, what its network learnt, and how MemBrain-seg uses it."""
    step = f"step {report.step}; " if report.step is not None else ""
    size = report.size_bytes / 2**20
    typer.echo(
        f"Exported {report.checkpoint} ({step}filters {', '.join(map(str, report.filters))}; "
        f"{report.weights:,} weights) to {report.out} "
        f"({f'{size:.1f} MiB' if size >= 1 else f'{report.size_bytes / 1024:.0f} KiB'}, "
        "weights only)."
    )
    words = NORMALISATION_WORDS.get(report.normalisation, report.normalisation)
    at = f"{report.pixel_size:g} Å" if report.pixel_size else "an unrecorded pixel size"
    typer.echo(f"Its network learnt intensities normalised by {words}, at {at}.")
    typer.echo(f"Use it: membrain segment --tomogram-path <tomogram> --ckpt-path {report.out}")
    print_warnings(report.warnings)
