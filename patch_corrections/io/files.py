"""Writing files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import errno
import json
import os
import secrets
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError, PatchCorrectionsWarning


@contextmanager
def atomic_target(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    ``suffix`` ends the temporary name, for writers that pick a format or compression from
    it (``.nii.gz``). On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class StagedFiles:
    """Files of one run, written under temporary names and moved into place together.

    Nothing under a final name changes until ``commit``; ``discard`` removes the temporary
    files and the folders this run created, so a failed run leaves everything as it was.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def make_dirs(self, *folders: Path) -> None:
        """Create ``folders`` (and parents), remembering which ones did not exist."""
        for folder in folders:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self._created.extend(missing)

    def stage(self, final: Path, suffix: str = "") -> Path:
        """A temporary path to write ``final``'s content to; ``suffix`` ends its name."""
        final = Path(final)
        temporary = final.with_name(f".{final.name}.staged-{secrets.token_hex(4)}{suffix}")
        self._staged.append((temporary, final))
        return temporary

    @property
    def finals(self) -> list[Path]:
        return [final for _, final in self._staged]

    def commit(
        self,
        folder: Path | None = None,
        texts: dict[Path, str] | None = None,
        remove: Iterable[Path] = (),
    ) -> None:
        """Rename every staged file to its final name, then write ``texts`` (a manifest, a
        summary; atomically each) and remove the files in ``remove``.

        With ``folder`` (the run's locked output folder, holding every path named), a
        journal there records the whole commit before it starts, so that a run killed
        part-way is finished by the next run in that folder (see :func:`recover`).
        """
        texts = dict(texts or {})
        remove = list(remove)
        journal = Path(folder) / JOURNAL_NAME if folder is not None else None
        if journal is not None:
            root = Path(folder)
            entry = {
                "renames": [[_rel(t, root), _rel(f, root)] for t, f in self._staged],
                "texts": {_rel(path, root): text for path, text in texts.items()},
                "remove": [_rel(path, root) for path in remove],
            }
            write_text_atomic(journal, json.dumps(entry))
        _finish(self._staged, texts, remove)
        if journal is not None:
            journal.unlink()
        self._staged = []
        self._created = []

    def discard(self) -> None:
        """Remove staged files and the folders created for them (if left empty)."""
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged = []
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created = []


JOURNAL_NAME = ".patch_corrections.journal.json"
"""Where a run's commit is recorded before it starts (removed once it is done)."""
LEFTOVERS = (".staged-", ".partial-")
"""What the temporary names of staged and atomically written files hold."""


def _rel(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _finish(renames, texts: dict[Path, str], remove: list[Path]) -> None:
    """Carry out a commit; every step may be repeated (a rename already done is skipped)."""
    for temporary, final in renames:
        if Path(temporary).exists():
            os.replace(temporary, final)
    for path, text in texts.items():
        write_text_atomic(Path(path), text)
    for path in remove:
        Path(path).unlink(missing_ok=True)


def recover(folder: Path) -> tuple[int, int]:
    """Finish the commit of a run that was killed in ``folder`` and remove the temporary
    files dead runs left there. Call it holding the folder's lock (no other run can be
    writing). Returns (steps of a commit finished, leftover files removed)."""
    folder = Path(folder)
    journal = folder / JOURNAL_NAME
    finished = 0
    if journal.exists():
        try:
            entry = json.loads(journal.read_text(encoding="utf-8"))
            renames = [(folder / t, folder / f) for t, f in entry["renames"]]
            texts = {folder / path: text for path, text in entry["texts"].items()}
            remove = [folder / path for path in entry["remove"]]
            named = [p for pair in entry["renames"] for p in pair]
            named += [*entry["texts"], *entry["remove"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"{journal}: an interrupted run's record, unreadable ({exc}); move it aside"
            ) from None
        outside = [p for p in named if not inside(folder, p)]
        if outside:
            raise InputError(f"{journal}: names {outside[0]!r}, outside the folder; move it aside")
        _finish(renames, texts, remove)
        finished = len(renames) + len(texts) + len(remove)
        journal.unlink()
    leftovers = [
        path
        for path in (*folder.glob(".*"), *folder.glob("*/.*"))
        if path.is_file() and any(mark in path.name for mark in LEFTOVERS)
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return finished, len(leftovers)


def remove_leftovers_of(finals: Iterable[Path]) -> int:
    """Remove the temporary files that killed runs left for these final paths (their
    ``.staged-`` and ``.partial-`` names); how many. For folders several runs may write
    into at once (``segment``), where only a run's own outputs are its business."""
    removed = 0
    for final in finals:
        final = Path(final)
        for mark in LEFTOVERS:
            for path in final.parent.glob(f".{final.name}{mark}*"):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is usable as one file name: a non-empty string without path
    separators, other than ``.`` and ``..``."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and Path(name).name == name
    )


def inside(folder: Path, relative: object) -> bool:
    """Whether the relative path ``relative`` stays inside ``folder`` once ``..`` and
    symbolic links are resolved."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        return False
    root = Path(folder).resolve()
    return (root / relative).resolve().is_relative_to(root)


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
                warnings.warn(
                    f"{folder}: its file system cannot lock files; make sure no other run "
                    "writes into this folder at the same time",
                    PatchCorrectionsWarning,
                    stacklevel=3,
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
