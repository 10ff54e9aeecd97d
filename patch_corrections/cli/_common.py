"""What every command shares: one-line errors, progress bars, warnings, format choices."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import ParamSpec

import typer

from ..errors import InputError, RunInterrupted
from ..workflows.events import Listener, Progress

P = ParamSpec("P")
PROGRESS_MIN_ITEMS = 3
"""Progress bars appear from this many items on."""


class OutputFormat(str, Enum):
    nrrd = "nrrd"
    mrc = "mrc"
    nii_gz = "nii.gz"


def user_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Turn ``InputError`` into one line on stderr and exit code 1, without a traceback;
    Ctrl-C into what the run kept and exit code 130."""

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
        except OSError as exc:  # permissions, full disk: the system's words suffice
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def print_warnings(messages: list[str]) -> None:
    """The end-of-run summary of recoverable oddities."""
    if messages:
        typer.echo(f"Warnings ({len(messages)}):")
        for message in messages:
            typer.echo(f"  - {message}")


class _Bars:
    """One transient progress bar on stderr at a time, for the task being reported."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None
        self._label: str | None = None
        self._first = 0
        self._started = 0.0

    def update(self, event: Progress) -> None:
        if event.task != self._label:
            self.stop()
            self._label = event.task
            if event.total >= PROGRESS_MIN_ITEMS:
                self._start(event)
        if self._bar is not None:
            seconds = max(time.perf_counter() - self._started, 1e-9)
            extra = f"{(event.done - self._first) / seconds:.2f}/s"
            if event.loss is not None:  # training: the last logged loss, once there is one
                extra += f"  loss {event.loss:.4f}"
            self._bar.update(self._task, completed=event.done, extra=extra)
        if event.done >= event.total:
            self.stop()

    def _start(self, event: Progress) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn(event.task),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
        )
        self._bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(
            event.task, total=event.total, completed=event.done, extra=""
        )
        self._first, self._started = event.done, time.perf_counter()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._task, self._label = None, None, None


@contextmanager
def console(step_done: Callable[[object], None] | None = None) -> Iterator[Listener]:
    """A listener that draws progress bars on stderr and prints messages, step titles and
    (with ``step_done``) each step's report on stdout."""
    bars = _Bars()

    def message(text: str) -> None:
        bars.stop()
        typer.echo(text)

    def stage(title: str) -> None:
        message(f"\n== {title}")

    def done(report: object) -> None:
        bars.stop()
        if step_done is not None:
            step_done(report)

    try:
        yield Listener(progress=bars.update, message=message, stage=stage, step_done=done)
    finally:
        bars.stop()
