"""Exceptions and warnings raised for users' input, how a run collects its warnings for
its report, and how an OS error reads as one line."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(Exception):
    """Bad input from the user: the message is one actionable line naming the culprit."""


class PatchCorrectionsWarning(UserWarning):
    """A recoverable oddity in the input, reported in the end-of-run summary."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C; the message says what was kept and how to go on."""


WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
)
"""OS errors that concern the file being written, never one read: a full disk or quota, a
file-size limit (``ulimit -f``), a read-only file system."""


def os_error_text(exc: OSError) -> str:
    """``<path>: <what>``, one line, for an OS error: the path it concerns (for an error
    of writing, the target of a copy or rename, which the system names second) and the
    system's words, lower-case like ours; ``<what>`` alone when no path is known."""
    path = exc.filename
    if exc.errno in WRITE_ERRNOS and exc.filename2 is not None:
        path = exc.filename2
    what = exc.strerror or str(exc) or type(exc).__name__
    what = " ".join((what[:1].lower() + what[1:]).split())
    if path is None:
        return what
    return f"{os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else path}: {what}"


def warn(message: str, stacklevel: int = 2) -> None:
    """Report a recoverable oddity as a :class:`PatchCorrectionsWarning`; workflows collect
    them into their report's warnings."""
    warnings.warn(message, PatchCorrectionsWarning, stacklevel=stacklevel + 1)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Gather our warnings (each message once) into the yielded list, for the report.

    Other libraries' warnings are passed on unchanged, once recording has stopped:
    re-emitted while recording, each would be appended to the list being read, without end.
    """
    collected: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PatchCorrectionsWarning)
            yield collected
    finally:
        for item in caught:
            if issubclass(item.category, PatchCorrectionsWarning):
                message = str(item.message)
                if message not in collected:
                    collected.append(message)
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
