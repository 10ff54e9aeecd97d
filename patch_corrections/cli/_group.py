"""The commands' group: one-line usage errors, help that reads well, and ``--version``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from ._errors import one_line_usage_errors


class OneLineUsageErrors(TyperGroup):
    """The commands' group: a command line that does not parse (a bad value, an unknown,
    misused or missing option, an unknown command) prints one ``usage_error_line`` on
    stderr and exits with ``USAGE_EXIT_CODE``, instead of typer's usage and error panel.
    ``--help``, and help for a command given no arguments, are left as they are, except
    that every command's help is tidied by ``tidy_help``."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():  # the group's own options, e.g. an unknown --flag
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():  # the command's name, options and their values
            return super().invoke(ctx)

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy_help(command, ctx)
        return command


def tidy_help(command: Any, ctx: Any) -> None:
    """Make ``command``'s help read well at 80 columns: flags (``--overwrite``) show no
    ``<bool>`` value they do not take, and the paragraphs after the first are rewrapped
    to the terminal instead of keeping the docstring's line breaks (rich help keeps them;
    a paragraph that starts with click's ``\\b`` marker keeps its lines)."""
    _flags_as_flags(command.get_params(ctx))  # with the --help option typer adds
    if command.help:
        first, *rest = inspect.cleandoc(command.help).split("\n\n")
        rest = [p if p.startswith("\b") else " ".join(map(str.strip, p.split("\n"))) for p in rest]
        command.help = "\n\n".join([first, *rest])


def _flags_as_flags(params: list[Any]) -> list[Any]:
    """Give every on/off flag an empty metavar, in place: typer's rich help would show
    each as taking a ``<bool>`` value. Returns ``params``."""
    for param in params:
        flag = getattr(param, "is_flag", False) and not getattr(param, "count", False)
        if flag and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


IDENTITY = "the patch correction toolkit, not MemBrain-seg's script of the same name"
"""What ``--version`` says this program is: MemBrain-seg installs a ``patch_corrections``
command too, and whichever package was installed last owns the name."""


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"patch_corrections {__version__} ({IDENTITY})")
        raise typer.Exit()


def app_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """The options of ``patch_corrections`` itself, before a command: ``--version``."""
