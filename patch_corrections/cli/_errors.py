"""User mistakes as one line on stderr and an exit code, never a traceback.

Input the workflows refuse (``InputError``) exits with 1; a command line that does not
parse (a bad, unknown, misused or missing option) with ``USAGE_EXIT_CODE``; Ctrl-C with 130.
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec

import typer

from ..errors import InputError, RunInterrupted, os_error_text

P = ParamSpec("P")
TRAIN_EXTRA = ("torch", "matplotlib")
"""What the ``train`` extra installs: commands that need them say so in one line."""
USAGE_EXIT_CODE = 2
"""Exit code of a command line that does not parse (a bad, unknown or missing option), as
click and argparse use it; 1 stays for bad input files and values the workflows refuse."""

# Typer ships its own copy of click from 0.2x on and used click itself before: take the
# exception classes from wherever typer.BadParameter comes from.
_click_errors = importlib.import_module(typer.BadParameter.__module__)


def user_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Turn ``InputError`` (and an ``OSError``, naming its path) into one line on stderr
    and exit code 1, without a traceback; Ctrl-C into what the run kept and exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except InputError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except RunInterrupted as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; this run wrote nothing.", err=True)
            raise typer.Exit(130) from None
        except ModuleNotFoundError as exc:
            if exc.name not in TRAIN_EXTRA:
                raise
            typer.echo(
                f"Error: this command needs {exc.name}, which is not installed: "
                f'pip install {exc.name} (in the checkout: pip install -e ".[train]"; '
                "for a GPU, PyTorch for your CUDA from pytorch.org)",
                err=True,
            )
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `| head`: the reader has all it wanted; say nothing
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more fails at exit
            raise typer.Exit(128 + 13) from None  # as a process ended by SIGPIPE
        except OSError as exc:  # permissions, full disk: the system's words, and the path
            typer.echo(f"Error: {os_error_text(exc)}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Turn click's usage errors raised inside into one ``usage_error_line`` on stderr and
    ``USAGE_EXIT_CODE``; a command given no arguments still gets its help."""
    try:
        yield
    except _click_errors.UsageError as error:
        if isinstance(error, getattr(_click_errors, "NoArgsIsHelpError", ())):
            raise  # a command given no arguments: its help is the answer
        typer.echo(usage_error_line(error), err=True)
        raise typer.Exit(USAGE_EXIT_CODE) from None


def usage_error_line(error: Exception) -> str:
    """One line for a command line click could not parse: ``Error: <option>: <what>``."""
    name = ""
    if isinstance(error, _click_errors.BadParameter):
        if error.param is not None:
            name = _option_name(error.param)
        elif error.param_hint:
            hint = error.param_hint
            name = hint if isinstance(hint, str) else str(next(iter(hint), ""))
    elif isinstance(error, (_click_errors.NoSuchOption, _click_errors.BadOptionUsage)):
        name = error.option_name
    if isinstance(error, _click_errors.MissingParameter):
        kind = error.param_type or getattr(error.param, "param_type_name", "parameter")
        what = f"missing; this {kind} is required"
    elif isinstance(error, _click_errors.NoSuchOption):
        what = "no such option"
        ours = _ours_for_membrain(error)
        if ours and ours.startswith("--"):
            what += f"; that is MemBrain-seg's name: here, {ours}"
        elif ours:
            what += f"; that is MemBrain-seg's, not needed here: {ours}"
        elif error.possibilities:
            what += f" (did you mean {' or '.join(sorted(error.possibilities))}?)"
    elif isinstance(error, _click_errors.BadParameter):
        what = str(error.message).removeprefix("Value error, ")  # pydantic's wording
        value = _rejected_value(error)
        if name and value is not None and value not in what:
            name = f"{name} {shlex.quote(value)}"
    else:
        what = error.format_message()
    text = f"{name}: {what}" if name else what
    return "Error: " + " ".join(text.split())  # click's messages may wrap: keep one line


MEMBRAIN_OPTIONS = {
    "--tomogram-path": "--tomogram",
    "--segmentation-path": "--segmentation",
    "--ckpt-path": "--checkpoint",
    "--pretrained-checkpoint-path": "--checkpoint",
    "--out-folder": "--out-dir",
    "--log-dir": "--out-dir",
    "--coords-file": "--centres",
    "--ds-token": "--token",
    "--sliding-window-size": "--window",
    "--test-time-augmentation": "--tta",
    "--no-test-time-augmentation": "no TTA is the default",
    "--rescale-patches": "--rescale",
    "--in-pixel-size": "--pixel-size",
    "--out-pixel-size": "outputs stay on the tomogram's grid",
    "--store-probabilities": "<stem>_probabilities.mrc is always written",
    "--store-uncertainty-map": "--uncertainty (with --tta)",
    "--store-connected-components": "--components",
    "--connected-component-thres": "--min-component-size",
    "--segmentation-threshold": "--threshold (a probability: 0.5 is MemBrain-seg's 0.0)",
    "--finetune-data-dir": "--train-dir",
    "--finetune-learning-rate": "--lr",
    "--max-epochs": "--epochs",
}
"""MemBrain-seg's option names and what this tool calls them (its README's map)."""


def _ours_for_membrain(error: Exception) -> str | None:
    """Our name for a MemBrain-seg option the command line used, where this command has
    it (or it needs none)."""
    ours = MEMBRAIN_OPTIONS.get(getattr(error, "option_name", "") or "")
    if ours is None:
        return None
    command = getattr(getattr(error, "ctx", None), "command", None)
    names = {n for p in getattr(command, "params", ()) for n in getattr(p, "opts", ())}
    option = ours.split()[0]
    return ours if not option.startswith("--") or not names or option in names else None


def _option_name(param: object) -> str:
    """``--patch-size`` for an option (its first long name), ``TOMOGRAM`` for an argument."""
    names = [str(n) for n in getattr(param, "opts", ())]
    long = [n for n in names if n.startswith("--")]
    if long or names:
        return (long or names)[0]
    return str(getattr(param, "human_readable_name", None) or getattr(param, "name", ""))


def _rejected_value(error: Exception) -> str | None:
    """The text typed for the option, where the error's cause records it (typer's pydantic
    validation errors do; click's own errors name it in their message)."""
    try:
        value = error.__cause__.errors()[0]["input"]  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None
