"""``demo``: the whole correction loop on the bundled sample data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..workflows import (
    ExtractReport,
    MergeReport,
    RetrainReport,
    SegmentReport,
)
from ..workflows.demo import METRICS, SAMPLE_DIR, DemoSettings, demo
from . import extract, merge, retrain, segment
from ._common import ThreadsOption, console, use_threads, user_errors

_RENDERERS = {
    SegmentReport: segment.render,
    ExtractReport: extract.render,
    MergeReport: merge.render,
    RetrainReport: retrain.render,
}


@user_errors
def demo_command(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-o", help="Folder for every step's output.")
    ] = Path("work/demo"),
    sample_dir: Annotated[
        Path, typer.Option("--sample-dir", help="The bundled sample data.")
    ] = SAMPLE_DIR,
    iterations: Annotated[int, typer.Option("--iterations", help="Fine-tuning steps.")] = 300,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier demo run.")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Run the whole loop on the sample data: segment, correct, retrain, segment, evaluate."""
    settings = DemoSettings(iterations=iterations, overwrite=overwrite)
    use_threads(threads)
    with console(step_done=lambda report: _RENDERERS[type(report)](report)) as listener:
        report = demo(
            out_dir,
            sample_dir,
            settings=settings,
            listener=listener,
        )
    typer.echo(f"{'metric':<18} {'before':>8} {'after':>8}")
    before, after = report.metrics["before"], report.metrics["after"]
    for key in METRICS:
        typer.echo(f"{key:<18} {before[key]:>8.4f} {after[key]:>8.4f}")
    typer.echo(f"\nEverything is in {report.out_dir}: before/, patches/, train/, model/, after/.")
