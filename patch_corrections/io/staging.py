"""Writing files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import WRITE_ERRNOS, InputError
from .names import inside
from .omezarr import ZARR_SUFFIXES, is_zarr_volume


@contextmanager
def naming_errors(path: Path, temporary: Path | None = None) -> Iterator[None]:
    """Make an ``OSError`` raised in the block, where the file written is ``path``, name
    it: when the error names no file (``write()`` on a full disk, past ``ulimit -f``) or
    names ``temporary``, the name ``path`` is written under."""
    try:
        yield
    except OSError as exc:
        _name_output(exc, path, {os.fspath(temporary): path} if temporary else {}, True)
        raise


def _name_output(exc: OSError, final, temporaries: dict[str, Path], any_error: bool) -> None:
    """Let ``exc`` name the output it concerns: a temporary name becomes the final name
    it is written for (from ``temporaries``); an error that names no file gets ``final``
    when it is one of writing (or ``any_error``: the block wrote and read nothing else)."""
    for attribute in ("filename", "filename2"):
        value = getattr(exc, attribute)
        if isinstance(value, (str, bytes, os.PathLike)):
            final_name = temporaries.get(os.fsdecode(value))
            if final_name is not None:
                setattr(exc, attribute, os.fspath(final_name))
    if exc.filename is None and final is not None and (any_error or exc.errno in WRITE_ERRNOS):
        exc.filename = os.fspath(final)


@contextmanager
def atomic_target(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    ``suffix`` ends the temporary name, for writers that pick a format or compression from
    it (``.nii.gz``). On error the temporary file is removed and ``path`` is untouched; an
    ``OSError`` names ``path`` (see :func:`naming_errors`).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        with naming_errors(path, temporary):
            yield temporary
            replace_path(temporary, path)
    finally:
        remove_path(temporary)


def is_zarr_folder(path: Path) -> bool:
    """Whether ``path`` is a real folder (not a link) named ``*.zarr`` that holds Zarr
    metadata, or is empty: the only folders a commit replaces or removes, so that a
    name read from a manifest or a journal never takes a user's folder with it."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not path.name.lower().endswith(ZARR_SUFFIXES):
        return False
    return is_zarr_volume(path) or not any(path.iterdir())


_REPLACED = "-replaced.zarr"
"""Ends the name an OME-Zarr folder is moved aside under while its new version goes in."""


def replace_path(temporary: Path, final: Path) -> None:
    """``os.replace``, also for an OME-Zarr folder replacing whatever is at ``final``: that
    is moved aside, the new folder renamed into place, then the old one removed (a run
    killed in between leaves the old one aside, which :func:`remove_leftovers_of` and
    :func:`recover` put back). Any other folder is left to ``os.replace``, which refuses
    to replace a folder that is not empty."""
    temporary, final = Path(temporary), Path(final)
    old = os.path.lexists(final) and (
        final.is_symlink() or is_zarr_folder(final) or not final.is_dir()
    )
    if not (is_zarr_folder(temporary) and old):
        os.replace(temporary, final)
        return
    aside = final.with_name(f".{final.name}.partial-{secrets.token_hex(4)}{_REPLACED}")
    os.replace(final, aside)
    os.replace(temporary, final)
    remove_path(aside, missing_ok=True)


def remove_path(path: Path, missing_ok: bool = True) -> None:
    """Remove a file or link, or an OME-Zarr folder (see :func:`is_zarr_folder`); any
    other folder is an error, as ``unlink`` makes it."""
    path = Path(path)
    if is_zarr_folder(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=missing_ok)


def _put_back(leftover: Path) -> bool:
    """Rename an output moved aside by :func:`replace_path` back to its final name when
    a killed run left that name empty; whether it did."""
    name = leftover.name
    if not name.endswith(_REPLACED) or ".partial-" not in name:
        return False
    final = leftover.with_name(name[1 : name.index(".partial-")])
    if os.path.lexists(final):
        return False
    os.replace(leftover, final)
    return True


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class StagedFiles:
    """Files of one run, written under temporary names and moved into place together.

    Nothing under a final name changes until :meth:`commit`; :meth:`discard` removes the
    temporary files and the folders this run created, so a failed run leaves everything as
    it was. Use it through :func:`staged`, which does one or the other.

    Parameters
    ----------
    journal
        The run's locked output folder, holding every path named: a journal there records
        the whole commit before it starts, so that a run killed part-way is finished by the
        next run in that folder (see :func:`recover`). ``None``: no journal.
    """

    def __init__(self, journal: Path | None = None) -> None:
        self._journal = Path(journal) if journal is not None else None
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []
        self._texts: dict[Path, str] = {}
        self._remove: list[Path] = []

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

    def temporary(self, final: Path) -> Path:
        """The temporary path staged for ``final`` (its content until the commit)."""
        return next(t for t, f in self._staged if f == Path(final))

    @property
    def finals(self) -> list[Path]:
        return [final for _, final in self._staged]

    def name_output(self, exc: OSError) -> None:
        """Let ``exc``, raised while this run wrote, name the output it concerns: the
        final name of a staged file it names; for an error of writing that names no file
        (a full disk, a file-size limit), the file staged last, which was being written."""
        temporaries = {os.fspath(t): f for t, f in self._staged}
        last = self._staged[-1][1] if self._staged else self._journal
        _name_output(exc, last, temporaries, False)

    def write_text(self, path: Path, text: str) -> None:
        """Write ``text`` to ``path`` (a manifest, a summary) at the commit, atomically,
        once every staged file is in place."""
        self._texts[Path(path)] = text

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove ``paths`` at the commit, last (files the new ones replace)."""
        self._remove.extend(Path(p) for p in paths)

    def commit(self) -> None:
        """Rename every staged file to its final name, then write the texts and remove the
        files to remove, recorded first in the journal when there is one."""
        journal = self._journal / JOURNAL_NAME if self._journal is not None else None
        if journal is not None:
            root = self._journal
            entry = {
                "renames": [[_rel(t, root), _rel(f, root)] for t, f in self._staged],
                "texts": {_rel(path, root): text for path, text in self._texts.items()},
                "remove": [_rel(path, root) for path in self._remove],
            }
            write_text_atomic(journal, json.dumps(entry))
        _finish(self._staged, self._texts, self._remove)
        if journal is not None:
            journal.unlink()
        self._staged, self._created, self._texts, self._remove = [], [], {}, []

    def discard(self) -> None:
        """Remove staged files and the folders created for them (if left empty)."""
        for temporary, _ in self._staged:
            remove_path(temporary)
        self._staged, self._texts, self._remove = [], {}, []
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created = []


@contextmanager
def staged(journal: Path | None = None) -> Iterator[StagedFiles]:
    """The files a run writes in the block, staged (see :class:`StagedFiles`): committed
    together when the block ends, discarded when it raises. An ``OSError`` leaving it
    names the output it concerns (see :meth:`StagedFiles.name_output`)."""
    files = StagedFiles(journal)
    try:
        yield files
    except BaseException as exc:
        if isinstance(exc, OSError):
            files.name_output(exc)
        files.discard()
        raise
    try:
        files.commit()
    except OSError as exc:
        files.name_output(exc)
        raise


JOURNAL_NAME = ".patch_corrections.journal.json"
"""Where a run's commit is recorded before it starts (removed once it is done)."""
LEFTOVERS = (".staged-", ".partial-")
"""What the temporary names of staged and atomically written files hold."""


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, each with its folders resolved (not its own name: a
    link there is the file the run replaces, not the file it points to)."""
    path = Path(path)
    return (path.parent.resolve() / path.name).relative_to(Path(root).resolve()).as_posix()


def _finish(renames, texts: dict[Path, str], remove: list[Path]) -> None:
    """Carry out a commit; every step may be repeated (a rename already done is skipped)."""
    for temporary, final in renames:
        if Path(temporary).exists():
            replace_path(temporary, final)
    for path, text in texts.items():
        write_text_atomic(Path(path), text)
    for path in remove:
        remove_path(path)


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
        if (path.is_file() or is_zarr_folder(path))
        and any(mark in path.name for mark in LEFTOVERS)
    ]
    for path in leftovers:
        if not _put_back(path):
            remove_path(path)
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
                if path.is_dir() and not path.is_symlink() and not is_zarr_folder(path):
                    continue  # not one this package writes: left alone
                if not _put_back(path):
                    remove_path(path)
                removed += 1
    return removed
