"""``simulate_sparse``: dense training labels made sparse, for experiments."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..workflows.sparse_simulation import SparseReport, SparseSettings, simulate_sparse
from ._common import OutputFormat, console, print_warnings, user_errors


class SparseMode(str, Enum):
    slices = "slices"
    boxes = "boxes"


@user_errors
def simulate_sparse_command(
    train_dir: Annotated[
        Path,
        typer.Option("--train-dir", "-t", help="Training folder with dense labels."),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out-dir", "-o", help="Training folder to write, labels made sparse."),
    ],
    mode: Annotated[
        SparseMode,
        typer.Option(
            "--mode", help="Keep evenly spaced slices, or random boxes around labelled voxels."
        ),
    ] = SparseMode.slices,
    fraction: Annotated[
        float,
        typer.Option(
            "--fraction",
            help="Share kept: of the slices holding labels (slices), or of the labelled "
            "voxels (boxes).",
        ),
    ] = 0.1,
    axis: Annotated[
        str, typer.Option("--axis", help="Slice axis for --mode slices: x, y or z.")
    ] = "z",
    box_size: Annotated[
        int, typer.Option("--box-size", help="Edge of the cubic boxes, in voxels.")
    ] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the slice phase or boxes.")] = 0,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="File format of the sparse labels.")
    ] = OutputFormat.nii_gz,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing training pairs.")
    ] = False,
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
