"""Helpers every workflow shares: warnings for the report, output checks, progress."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import InputError, PatchCorrectionsWarning
from ..io.files import folder_lock, recover
from ..io.volumes import WRITE_FORMATS
from .events import Listener, Progress

T = TypeVar("T")


def warn(message: str) -> None:
    """A recoverable oddity, for the report's warnings."""
    warnings.warn(message, PatchCorrectionsWarning, stacklevel=2)


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


def tracked(items: list[T], task: str, listener: Listener) -> Iterator[T]:
    """Yield ``items``, telling ``listener`` as the work on each one is done."""
    listener.progress(Progress(task, 0, len(items)))
    for done, item in enumerate(items, start=1):
        yield item
        listener.progress(Progress(task, done, len(items)))


def check_out_dir(out_dir: Path) -> None:
    """``InputError`` when ``out_dir`` or a folder above it exists as a file."""
    for folder in (Path(out_dir), *Path(out_dir).parents):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder; choose another --out-dir")


@contextmanager
def writing_into(out_dir: Path) -> Iterator[None]:
    """Check ``out_dir`` and hold its lock for the block: runs that read, extend and write
    back a folder's manifest or summary (or a training run) never interleave there."""
    check_out_dir(out_dir)
    with folder_lock(out_dir):
        finished, removed = recover(out_dir)
        if finished:
            warn(f"{out_dir}: finished the commit of a run that was interrupted there")
        if removed:
            warn(f"{out_dir}: removed {removed} temporary file(s) that interrupted runs left")
        yield


def check_format(fmt: str) -> str:
    """An output format name (``nrrd``, ``mrc``, ``nii.gz``), checked."""
    if fmt not in WRITE_FORMATS:
        raise InputError(f"--format {fmt}: expected one of {', '.join(WRITE_FORMATS)}")
    return fmt


def require_free(paths: Iterable[Path], overwrite: bool) -> None:
    """``InputError`` naming the first of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    taken = [p for p in paths if p.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise InputError(f"{taken[0]}: already exists{more}; pass --overwrite to replace")


def summary_rows(path: Path, unreadable: str) -> dict[str, dict]:
    """The per-patch rows of a ``merge_summary.json`` by patch name (empty without one);
    a file that cannot be read is a warning that ends with ``unreadable``."""
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["patches"]
        return {r["name"]: r for r in rows if isinstance(r, dict) and "name" in r}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        warn(f"{path}: unreadable; {unreadable}")
        return {}


def merged_rows(summary_path: Path, rows: list[dict]) -> list[dict]:
    """This run's rows, plus those of earlier runs into the same folder for other patches."""
    earlier = summary_rows(summary_path, "replaced by this run's summary")
    names = {r["name"] for r in rows}
    kept = [r for name, r in earlier.items() if name not in names]
    return sorted(kept + rows, key=lambda r: r["name"])
