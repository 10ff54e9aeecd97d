"""``evaluate``: Dice and friends of a segmentation against reference labels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from ..workflows.evaluation import EvaluateReport, EvaluateSettings, evaluate
from . import options
from ._console import print_warnings
from ._errors import user_errors

_PREDICTION = typer.Option(
    "--prediction", "-p", help="Segmentation, or a scoremap with --threshold."
)
_REFERENCE = typer.Option(
    "--reference",
    "-r",
    help="Reference labels (0, 1, 2 = ignore): a volume of the same shape, or a folder of "
    "label patches placed by their headers.",
)
_TOLERANCE = typer.Option("--tolerance", help="Radius in voxels of the distance-tolerant Dice.")
_JSON = typer.Option("--json", help="Print JSON instead of a table.")


@user_errors
def evaluate_command(
    prediction: Annotated[Path, _PREDICTION],
    reference: Annotated[Path, _REFERENCE],
    threshold: Annotated[
        float | None, options.threshold("a scoremap --prediction")
    ] = EvaluateSettings.threshold,
    tolerance: Annotated[int, _TOLERANCE] = EvaluateSettings.tolerance,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Dice, IoU, precision, recall and tolerant Dice of a segmentation, ignore excluded."""
    settings = EvaluateSettings(threshold=threshold, tolerance=tolerance)
    render(evaluate(prediction, reference, settings=settings), as_json)


def render(report: EvaluateReport, as_json: bool = False) -> None:
    """A table, or JSON on stdout with the warnings on stderr."""
    if as_json:
        clean = {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in report.metrics.items()
        }
        clean["threshold"] = report.threshold if report.scores else None
        typer.echo(json.dumps(clean, indent=2))
        for message in report.warnings:
            typer.echo(f"Warning: {message}", err=True)
        return
    if report.scores:
        chosen = "--threshold" if report.settings.threshold is not None else "the default"
        typer.echo(
            f"The prediction holds scores, not 0/1: membrane where above {report.threshold:g} "
            f"({chosen}; --threshold chooses)."
        )
    typer.echo(f"{'metric':<20} {'value':>10}")
    for key, value in report.metrics.items():
        shown = f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}"
        typer.echo(f"{key:<20} {shown}")
    print_warnings(report.warnings)
