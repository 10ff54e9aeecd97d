"""Running a workflow in a napari worker thread, so the viewer stays responsive.

One workflow runs at a time. Its progress crosses back to the widget's thread through a
queued Qt signal onto a progress bar, and an input it refuses comes back as its one-line
message, not as a traceback: napari shows a worker's errors as tracebacks, which a user's
mistake must not produce.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QProgressBar

from ..errors import InputError
from ..workflows import Listener, Progress


class WorkflowRunner(QObject):
    """Runs workflows in a worker thread, one at a time, on a progress bar and status line.

    Parameters
    ----------
    bar, status
        Where the running workflow's progress, what it does and a failure are shown.
    on_busy
        Called whenever :attr:`busy` changes.
    """

    progress = Signal(int, int)
    """``(done, total)`` of the running workflow, emitted from its worker thread."""

    def __init__(self, bar: QProgressBar, status: QLabel, on_busy: Callable[[], None]) -> None:
        super().__init__()
        self.bar, self.status, self._on_busy = bar, status, on_busy
        self.busy = False
        """A workflow runs in the worker thread."""
        self.progress.connect(self._show_progress)

    def start(self, function: Callable, args: tuple, kwargs: dict, returned: Callable, text: str):
        """Start ``function(*args, **kwargs, listener=...)`` with ``text`` in the status line
        and return the worker. ``returned`` gets its report, or the one-line message of an
        input it refused; any other exception (a defect) shows in the status line."""
        self._set_busy(True)
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.status.setText(text)
        worker = create_worker(
            or_refusal,
            function,
            *args,
            **kwargs,
            listener=Listener(progress=self._relay),
            _start_thread=False,
            _connect={"returned": returned, "errored": self._failed, "finished": self._finished},
        )
        worker.start()
        return worker

    def _relay(self, progress: Progress) -> None:
        # Called in the worker thread: a queued signal moves it to the runner's thread.
        self.progress.emit(progress.done, progress.total)

    def _show_progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)

    def _failed(self, exc: Exception) -> None:
        # Not a refusal of the input but a defect: napari also keeps its traceback.
        self.status.setText(f"Failed: {type(exc).__name__}: {exc}")

    def _finished(self) -> None:
        self.bar.setVisible(False)
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._on_busy()


def or_refusal(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)``, with a refused input (``InputError``, or a file
    that cannot be read or written) returned as its one-line message."""
    try:
        return function(*args, **kwargs)
    except (InputError, OSError) as exc:
        return str(exc)
