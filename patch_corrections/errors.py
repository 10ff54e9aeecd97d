"""Exceptions and warnings raised for users' input."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: the message is one actionable line naming the culprit."""


class PatchCorrectionsWarning(UserWarning):
    """A recoverable oddity in the input, reported in the end-of-run summary."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C; the message says what was kept and how to go on."""
