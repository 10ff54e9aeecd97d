"""``demo``: the whole correction loop on the bundled sample data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..workflows import ExtractReport, MergeReport, RetrainReport, SegmentReport
from ..workflows.demo import DEMO_OUT_DIR, METRICS, SAMPLE_DIR, DemoSettings, demo
from . import extract, merge, options, retrain, segment
from ._console import console
from ._errors import user_errors

_RENDERERS = {
    SegmentReport: segment.render,
    ExtractReport: extract.render,
    MergeReport: merge.render,
    RetrainReport: retrain.render,
}
_OUT_DIR = "Folder for every step's output."
_SAMPLE_DIR = typer.Option(
    "--sample-dir",
    help="The sample data; default: the checkout's sample_data/.",
    show_default=False,
)
_ITERATIONS = typer.Option("--iterations", help="Fine-tuning steps.")


@user_errors
def demo_command(
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR)] = DEMO_OUT_DIR,
    sample_dir: Annotated[Path, _SAMPLE_DIR] = SAMPLE_DIR,
    iterations: Annotated[int, _ITERATIONS] = DemoSettings.iterations,
    overwrite: Annotated[bool, options.overwrite("an earlier demo run")] = DemoSettings.overwrite,
    threads: Annotated[int | None, options.threads()] = None,
) -> None:
    """Run the whole loop on the sample data: segment, correct, retrain, segment, evaluate."""
    settings = DemoSettings(iterations=iterations, overwrite=overwrite)
    options.use_threads(threads)
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
