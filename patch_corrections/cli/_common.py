"""What every command shares: one-line errors, progress bars, warnings, format choices."""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import typer
from typer.core import TyperGroup

from .._version import __version__
from ..errors import InputError, RunInterrupted
from ..workflows.events import Listener, Progress

P = ParamSpec("P")
PROGRESS_MIN_ITEMS = 3
"""Progress bars appear from this many items on."""
LOG_EVERY_S = 30.0
"""Seconds between progress lines when stderr is not a terminal (a log file)."""
TRAIN_EXTRA = ("torch", "matplotlib")
"""What the ``train`` extra installs: commands that need them say so in one line."""
USAGE_EXIT_CODE = 2
"""Exit code of a command line that does not parse (a bad, unknown or missing option), as
click and argparse use it; 1 stays for bad input files and values the workflows refuse."""

# Typer ships its own copy of click from 0.2x on and used click itself before: take the
# exception classes from wherever typer.BadParameter comes from.
_click_errors = importlib.import_module(typer.BadParameter.__module__)


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
        except ModuleNotFoundError as exc:
            if exc.name not in TRAIN_EXTRA:
                raise
            typer.echo(
                f"Error: this command needs {exc.name}, which is not installed: "
                'pip install "patch_corrections[train]" (or PyTorch for your CUDA, '
                "from pytorch.org)",
                err=True,
            )
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `| head`: the reader has all it wanted; say nothing
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more fails at exit
            raise typer.Exit(128 + 13) from None  # as a process ended by SIGPIPE
        except OSError as exc:  # permissions, full disk: the system's words suffice
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _option_name(param: object) -> str:
    """``--patch-size`` for an option (its first long name), ``TOMOGRAM`` for an argument."""
    names = [str(n) for n in getattr(param, "opts", ())]
    long = [n for n in names if n.startswith("--")]
    if long or names:
        return (long or names)[0]
    return str(getattr(param, "human_readable_name", None) or getattr(param, "name", ""))


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
        if error.possibilities:
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


def _rejected_value(error: Exception) -> str | None:
    """The text typed for the option, where the error's cause records it (typer's pydantic
    validation errors do; click's own errors name it in their message)."""
    try:
        value = error.__cause__.errors()[0]["input"]  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


class OneLineUsageErrors(TyperGroup):
    """The commands' group: a command line that does not parse (a bad value, an unknown,
    misused or missing option, an unknown command) prints one ``usage_error_line`` on
    stderr and exits with ``USAGE_EXIT_CODE``, instead of typer's usage and error panel.
    ``--help``, and help for a command given no arguments, are left as they are, except
    that every command's help is tidied by ``tidy_help``."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():  # the group's own options, e.g. an unknown --flag
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():  # the command's name, options and their values
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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"patch_corrections {__version__}")
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


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _click_errors.UsageError as error:
        if isinstance(error, getattr(_click_errors, "NoArgsIsHelpError", ())):
            raise  # a command given no arguments: its help is the answer
        typer.echo(usage_error_line(error), err=True)
        raise typer.Exit(USAGE_EXIT_CODE) from None


THREADS_HELP = (
    "CPU threads for PyTorch; default: $OMP_NUM_THREADS if set, else the cores this run may "
    "use, fewer while other programs keep them busy (their load average)."
)
ThreadsOption = Annotated[int | None, typer.Option("--threads", help=THREADS_HELP)]


def use_threads(requested: int | None) -> None:
    """Set PyTorch's CPU threads for this command: ``requested``; else ``$OMP_NUM_THREADS``
    (a choice already made, by the user or the cluster); else the cores the process may use
    less the machine's load. PyTorch's own default (every core) makes a run several times
    slower when other programs already use the cores: its threads wait on each other.
    Says so on stderr when the load leaves fewer threads than cores."""
    if requested is not None and requested < 1:
        raise InputError(f"--threads must be at least 1, got {requested}")
    try:
        import torch
    except ImportError:
        return  # the workflow says what to install
    if requested is None:
        given = os.environ.get("OMP_NUM_THREADS", "").strip()
        requested = int(given) if given.isdigit() and int(given) > 0 else None
    if requested is not None:
        torch.set_num_threads(requested)
        return
    cores = usable_cores()
    load = _load_on_our_cores()
    # Whole cores only: the one-minute average still carries a program that ended a
    # minute ago at a third of its load.
    threads = max(1, min(cores, cores - math.floor(load)))
    torch.set_num_threads(threads)
    if threads < cores:
        typer.echo(
            f"Using {threads} of {cores} CPU cores for PyTorch: other programs keep the "
            f"others busy (load {load:.1f}); --threads chooses.",
            err=True,
        )


def _load_on_our_cores() -> float:
    """The load average, when it falls on the cores this process may use: only when they
    are all the machine has. A job given some cores of a shared node (taskset, a SLURM
    allocation) does not share them with the node's other jobs, whatever their load."""
    try:
        load = os.getloadavg()[0]
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        return 0.0
    return load if mine >= (os.cpu_count() or mine) else 0.0


def usable_cores() -> int:
    """Physical CPU cores this process may use: its CPU affinity (what taskset or a SLURM
    allocation grant), hyperthreads of one core counted once (Linux), capped by a cgroup
    CPU quota (a container's ``--cpus``)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(topology.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    count = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


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
