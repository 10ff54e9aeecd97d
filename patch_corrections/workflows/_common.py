"""What the workflows share: progress over a list, output-folder checks, the folder lock
and recovery around a run's writes, the output format, outputs not to overwrite."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import InputError, warn
from ..io.locks import folder_lock
from ..io.staging import recover
from ..io.volumes import WRITE_FORMATS
from .events import Listener, Progress

T = TypeVar("T")


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


@contextmanager
def run_folder(out_dir: Path, ranks) -> Iterator[None]:
    """Rank 0 holds ``out_dir``'s lock for the run (finishing an interrupted run's commit
    first); the other ranks wait until it has, so they read a saved run only once it is
    whole, and the ranks leave together, once rank 0 has written everything."""
    from ..network.distributed import barrier

    if ranks.main:
        with writing_into(out_dir):
            barrier(ranks)
            yield
            barrier(ranks)
    else:
        barrier(ranks)
        yield
        barrier(ranks)
