"""The command line: one thin module per command over the workflows.

A command declares its options, builds the workflow's settings, calls the workflow, and
renders its report. User mistakes become one line on stderr: exit code 1 for input the
workflows refuse, 2 for a command line that does not parse (click's usage-error code);
recoverable oddities are listed in the end-of-run summary.
"""

from __future__ import annotations

import typer

from ._group import OneLineUsageErrors, app_options
from .demo import demo_command
from .evaluate import evaluate_command
from .export import export_membrain_command
from .extract import extract_patches_command
from .merge import merge_corrections_command
from .paste import paste_corrections_command
from .retrain import retrain_command
from .segment import segment_command
from .sparse import simulate_sparse_command
from .suggest import suggest_command

app = typer.Typer(
    name="patch_corrections",
    help="Correct a membrane segmentation in patches and turn the corrections into "
    "training data for the network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineUsageErrors,
    callback=app_options,
)
# In the order of a round: where to correct, cut, (paint,) merge, train, segment, check,
# hand the network back to MemBrain-seg.
for name, command in (
    ("suggest", suggest_command),
    ("extract_patches", extract_patches_command),
    ("merge_corrections", merge_corrections_command),
    ("paste_corrections", paste_corrections_command),
    ("simulate_sparse", simulate_sparse_command),
    ("retrain", retrain_command),
    ("segment", segment_command),
    ("evaluate", evaluate_command),
    ("export_membrain", export_membrain_command),
):
    app.command(name=name, no_args_is_help=True)(command)
app.command(name="demo")(demo_command)


def main() -> None:
    """Console entry point."""
    app()


__all__ = ["app", "main"]
