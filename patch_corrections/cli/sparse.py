"""``simulate_sparse``: dense training labels made sparse, for experiments."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..workflows.sparse_simulation import (
    SPARSE_MODES,
    SparseReport,
    SparseSettings,
    simulate_sparse,
)
from . import options
from ._console import console, print_warnings
from ._errors import user_errors
from .options import OutputFormat

SparseMode = Enum("SparseMode", {n: n for n in SPARSE_MODES}, type=str)

_OUT_DIR = "Training folder to write, labels made sparse."
_MODE = typer.Option(
    "--mode", help="Keep evenly spaced slices, or random boxes around labelled voxels."
)
_FRACTION = typer.Option(
    "--fraction",
    help="Share kept: of the slices holding labels (slices), or of the labelled voxels (boxes).",
)
_AXIS = typer.Option("--axis", help="Slice axis for --mode slices: x, y or z.")
_BOX_SIZE = typer.Option("--box-size", help="Edge of the cubic boxes, in voxels.")


@user_errors
def simulate_sparse_command(
    train_dir: Annotated[Path, options.train_dir("with dense labels")],
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR)],
    mode: Annotated[SparseMode, _MODE] = SparseMode(SparseSettings.mode),
    fraction: Annotated[float, _FRACTION] = SparseSettings.fraction,
    axis: Annotated[str, _AXIS] = SparseSettings.axis,
    box_size: Annotated[int, _BOX_SIZE] = SparseSettings.box_size,
    seed: Annotated[int, options.seed()] = SparseSettings.seed,
    output_format: Annotated[OutputFormat, options.output_format("sparse labels")] = OutputFormat(
        SparseSettings.format
    ),
    overwrite: Annotated[
        bool, options.overwrite("existing training pairs")
    ] = SparseSettings.overwrite,
) -> None:
    """Make dense training labels sparse, as an annotator would leave them, for experiments.

    Everything not kept becomes ignore; images are copied as they are.
    """
    settings = SparseSettings(
        mode=mode.value,
        fraction=fraction,
        axis=axis,
        box_size=box_size,
        seed=seed,
        format=output_format.value,
        overwrite=overwrite,
    )
    with console() as listener:
        report = simulate_sparse(train_dir, out_dir, settings=settings, listener=listener)
    render(report)


def render(report: SparseReport) -> None:
    """Per training pair: labelled voxels before, kept, and the share kept."""
    rows = report.rows
    before = sum(r["annotated_before"] for r in rows)
    after = sum(r["annotated"] for r in rows)
    typer.echo(f"Wrote {len(rows)} sparse training pair(s) to {report.out_dir}:")
    width = max(len(r["name"]) for r in rows)
    typer.echo(f"  {'patch':<{width}}  {'labelled before':>15}  {'kept':>9}  {'share':>6}")
    for r in rows:
        share = r["annotated"] / max(r["annotated_before"], 1)
        typer.echo(
            f"  {r['name']:<{width}}  {r['annotated_before']:>15}  {r['annotated']:>9}  "
            f"{share:>6.1%}"
        )
    settings = report.settings
    asked = (
        f"--fraction {settings.fraction:g} of the labelled voxels"
        if settings.mode == "boxes"
        else f"--fraction {settings.fraction:g} of the {settings.axis} slices holding labels"
    )
    typer.echo(
        f"Kept {after} of {before} labelled voxels ({report.kept_fraction:.1%}; {asked}); "
        f"the rest is ignore. Summary: {report.summary}"
    )
    print_warnings(report.warnings)
