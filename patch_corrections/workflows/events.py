"""How a workflow tells its caller what is happening while it runs.

Workflows never print. A front end passes a :class:`Listener`; the command line draws
progress bars and prints messages, a notebook may log them, a widget may move a bar.
Warnings are not events: they are collected into each workflow's report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """How far one long step of a workflow has come.

    A step announces itself with ``done`` at its starting point (0, or the iteration a
    resumed run starts from) before any work, then reports each item it finishes.

    Attributes
    ----------
    task
        What is being done, e.g. ``"Extracting patches"``, ``"Training"``, ``"Segmenting"``.
    done, total
        Items finished so far, and in all (patches, iterations, windows).
    loss
        The loss of the last training step, for training progress.
    """

    task: str
    done: int
    total: int
    loss: float | None = None


def _ignore(_: object) -> None:
    return None


@dataclass(frozen=True)
class Listener:
    """What a caller hears from a running workflow; every part is optional.

    Attributes
    ----------
    progress
        Called with a :class:`Progress` as long steps start and advance.
    message
        Called with a line of news before a long step, e.g. what a training run is about
        to do.
    stage
        Called with the title of each step of a workflow made of other workflows (the
        demo), before the step starts.
    step_done
        Called with the report of each such step once it has finished, so a front end can
        show it before the next step starts.
    """

    progress: Callable[[Progress], None] = _ignore
    message: Callable[[str], None] = _ignore
    stage: Callable[[str], None] = _ignore
    step_done: Callable[[object], None] = _ignore


SILENT = Listener()
"""A listener that hears nothing: the default of every workflow."""
