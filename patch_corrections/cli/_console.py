"""What a command shows while it runs: progress on stderr, messages and the end-of-run
warnings on stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from ..workflows.events import Listener, Progress

PROGRESS_MIN_ITEMS = 3
"""Progress bars appear from this many items on."""
LOG_EVERY_S = 30.0
"""Seconds between progress lines when stderr is not a terminal (a log file)."""


def print_warnings(messages: list[str]) -> None:
    """The end-of-run summary of recoverable oddities."""
    if messages:
        typer.echo(f"Warnings ({len(messages)}):")
        for message in messages:
            typer.echo(f"  - {message}")


class _Bars:
    """One transient progress bar on stderr at a time, for the task being reported."""

    def __init__(self, terminal: bool | None = None) -> None:
        self._terminal = terminal  # None: whether stderr is one, asked when a task starts
        self._bar = None
        self._lines: _Lines | None = None
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
        if self._lines is not None:
            self._lines.update(event)
        elif self._bar is not None:
            seconds = max(time.perf_counter() - self._started, 1e-9)
            extra = f"{(event.done - self._first) / seconds:.2f}/s"
            if event.loss is not None:  # training: the last logged loss, once there is one
                extra += f"  loss {event.loss:.4f}"
            self._bar.update(self._task, completed=event.done, extra=extra)
        if event.done >= event.total:
            self.stop()

    def _start(self, event: Progress) -> None:
        terminal = sys.stderr.isatty() if self._terminal is None else self._terminal
        if not terminal:  # a log file, a cluster job: no bar would be seen
            self._lines = _Lines(event)
            return
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
        self._bar, self._task, self._label, self._lines = None, None, None, None


class _Lines:
    """Progress as plain lines on stderr, for output that is not a terminal: one at the
    start, then one every ``LOG_EVERY_S`` seconds and one at the end, each with the count,
    the rate, the time left and (training) the last logged loss."""

    def __init__(self, event: Progress) -> None:
        self._first, self._started = event.done, time.perf_counter()
        self._last = -float("inf")

    def update(self, event: Progress) -> None:
        now = time.perf_counter()
        finished = event.done >= event.total
        if now - self._last < LOG_EVERY_S and not finished:
            return
        self._last = now
        rate = (event.done - self._first) / max(now - self._started, 1e-9)
        line = f"{event.task}: {event.done}/{event.total}"
        if event.done > self._first:
            line += f", {rate:.2f}/s"
            if not finished:
                line += f", about {_duration((event.total - event.done) / rate)} left"
        if event.loss is not None:
            line += f", loss {event.loss:.4f}"
        typer.echo(line, err=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


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
