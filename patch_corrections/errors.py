"""Exceptions and warnings raised for users' input, and how a run collects its warnings
for its report."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(Exception):
    """Bad input from the user: the message is one actionable line naming the culprit."""


class PatchCorrectionsWarning(UserWarning):
    """A recoverable oddity in the input, reported in the end-of-run summary."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C; the message says what was kept and how to go on."""


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
