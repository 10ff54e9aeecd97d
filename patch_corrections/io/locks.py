"""Locks that keep two runs out of each other's way: one on an output folder for a whole
run, one on a single tomogram's outputs for ``segment``. The operating system releases a
lock when its holder dies, so a killed run never blocks the next."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError, warn

LOCK_NAME = ".patch_corrections.lock"
"""The file an output folder's lock is held on, there while a run holds it."""


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block; a second
    holder, in this process or another, gets an ``InputError`` at once. The operating
    system releases the lock when its holder dies, so a killed run never blocks the next.
    On a file system that cannot lock files the block runs unlocked, with a warning.

    A run that fails before writing anything leaves no folder behind.
    """
    with new_folder(folder) as created:
        with lock_file(Path(folder) / LOCK_NAME) as held:
            if held is False:
                created.clear()  # the other run's folder
                raise InputError(
                    f"{folder}: another patch_corrections run is writing into this folder; "
                    "wait for it to finish, or choose another --out-dir"
                )
            if held is None:
                warn(
                    f"{folder}: its file system cannot lock files; make sure no other run "
                    "writes into this folder at the same time",
                )
            yield


@contextmanager
def new_folder(folder: Path) -> Iterator[list[Path]]:
    """Make ``folder`` (and missing parents) for the block; yields the folders it made,
    which are removed again if ``folder`` is empty when the block ends (clear the list to
    keep them): a run that wrote nothing leaves no folder behind."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield created
    finally:
        if created and not any(folder.iterdir()):
            for made in created:
                try:
                    made.rmdir()
                except OSError:
                    break


HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK})
"""What taking a lock that another run holds fails with (EDEADLK: Windows' msvcrt)."""


@contextmanager
def lock_file(path: Path) -> Iterator[bool | None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block,
    without waiting. Yields ``True`` while held, ``False`` if another holder, in this
    process or another, has it, and ``None`` if the file system cannot lock files (Lustre
    mounted without flock, NFS without its lock daemon): then nothing is held.

    The operating system releases the lock when its holder dies. The file is removed when
    the block ends (not on Windows, where an open file cannot be); a run that locked a file
    another run had just removed sees that the name now leads elsewhere and tries again, so
    two runs never both hold it.
    """
    path = Path(path)
    handle = None
    try:
        for _ in range(10):
            try:
                handle = open(path, "a+b")  # held open for the whole block
            except FileNotFoundError:  # a run that wrote nothing just removed the folder
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                _lock(handle.fileno())
            except OSError as exc:
                handle.close()
                if exc.errno in HELD:
                    yield False
                    return
                # The file system cannot lock: runs go unlocked (with a warning), so the file
                # would only be left behind.
                path.unlink(missing_ok=True)
                yield None
                return
            if _same_file(handle, path):
                break
            handle.close()  # locked a file its holder had just removed: again
        else:
            raise InputError(f"{path}: cannot lock this file (it keeps changing)")
        yield True
    finally:
        if handle is not None and not handle.closed:  # this run holds the lock
            if os.name != "nt":
                path.unlink(missing_ok=True)
            handle.close()  # releases the lock


def _same_file(handle, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``handle``."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


def _lock(descriptor: int) -> None:
    """Take an exclusive lock on an open file without waiting; ``OSError`` if held."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
