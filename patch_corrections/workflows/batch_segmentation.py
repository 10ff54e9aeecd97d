"""Segmenting a dataset: several tomograms with one loaded network, split into parts for
job arrays or one process per GPU, each tomogram locked while it is segmented."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, collect_warnings, os_error_text
from ..io.volumes import at_scale_level, is_volume_file, is_volume_folder, volume_stem
from ._common import check_out_dir
from .events import SILENT, Listener
from .segmentation import (
    SegmentReport,
    SegmentSettings,
    claimed,
    load_predictor,
    output_paths,
    segment_one,
)


@dataclass(frozen=True)
class BatchSegmentReport:
    """What a run over several tomograms (or over its part of them) did."""

    done: list[SegmentReport]
    """One report per tomogram segmented."""
    skipped: list[Path]
    """Tomograms whose outputs were all in the output folder already."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Tomograms that could not be segmented, each with the one-line reason; their earlier
    outputs, if any, are untouched and nothing of theirs was left behind."""
    busy: list[Path] = field(default_factory=list)
    """Tomograms left alone because another run was segmenting them into the same folder."""
    total: int = 0
    """Tomograms given, in all parts together."""
    warnings: list[str] = field(default_factory=list)


def segment_many(
    tomograms: Sequence[Path],
    checkpoint: Path,
    out_dir: Path,
    *,
    settings: SegmentSettings = SegmentSettings(),
    part: int = 0,
    parts: int = 1,
    scale_level: int | None = None,
    listener: Listener = SILENT,
) -> BatchSegmentReport:
    """Segment several tomograms (files, or folders of them) with one loaded network;
    with ``scale_level``, that level of each (OME-Zarr) tomogram.

    A tomogram whose outputs are all in ``out_dir`` already is skipped, unless
    ``settings.overwrite``; so a run that stopped can be started again as it was.

    A tomogram that cannot be read or segmented (an ``InputError``, or an ``OSError`` other
    than a full or read-only output disk) is recorded in ``failed`` with its reason, leaves
    no file behind, and the run goes on with the others. Errors that concern every
    tomogram (the checkpoint, the settings, the output folder) stop the run at once.

    ``part`` of ``parts`` (counted from 0, as nnU-Net's ``-part_id`` of ``-num_parts``)
    takes every ``parts``-th tomogram, from the ``part``-th on, of all those given sorted
    by name: the split depends only on which tomograms are given, not on the order of the
    folders, so running every part, at once or one by one, segments each tomogram once.

    Several runs may write into ``out_dir`` at the same time (one per GPU, or the tasks of
    a job array): each holds a lock on the tomogram it is segmenting, so two runs never
    work on the same one; a run that finds a tomogram locked leaves it to the other
    (``busy``). Every output is written under a temporary name and renamed into place
    once complete, so readers never see a partial file.
    """
    out_dir = Path(out_dir)
    check_part(part, parts)
    with collect_warnings() as warned:
        files = _tomogram_files(tomograms)
        check_out_dir(out_dir)
        mine = files[part::parts]
        if parts > 1 and mine:
            listener.message(
                f"Part {part} of {parts} (counted from 0): {len(mine)} of the {len(files)} "
                "tomograms"
            )
        levels, failed = _at_level(mine, scale_level)
        todo = [f for f in levels if settings.overwrite or not is_segmented(f, out_dir, settings)]
        report = BatchSegmentReport(
            [], [f for f in levels if f not in todo], failed, total=len(files)
        )
        predictor = load_predictor(Path(checkpoint), settings, listener) if todo else None
        for number, tomogram in enumerate(todo, start=1):
            listener.message(f"[{number}/{len(todo)}] {tomogram}")
            segment_in_turn(tomogram, predictor, out_dir, settings, listener, report)
    report.skipped.sort(key=levels.index)
    report.warnings.extend(warned)
    return report


def _at_level(files: list[Path], level: int | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Scale level ``level`` of each file, and the files without it with the reason: a
    tomogram that lacks the level fails alone, as one that cannot be read."""
    found: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for path in files:
        try:
            found.append(at_scale_level(path, level))
        except InputError as exc:
            failed.append((path, _reason(exc, path)))
    return found, failed


def check_part(part: int, parts: int) -> None:
    if parts < 1:
        raise InputError(f"--parts must be at least 1, got {parts}")
    if parts == 1 and part != 0:
        raise InputError(
            f"--part {part}: give --parts too, the number of parts the tomograms are split "
            "into (parts are counted from 0)"
        )
    if not 0 <= part < parts:
        raise InputError(
            f"--part {part}: must be 0 … {parts - 1} for --parts {parts} (parts are counted "
            f"from 0: pass $SLURM_ARRAY_TASK_ID of --array=0-{parts - 1})"
        )


def segment_in_turn(
    tomogram: Path,
    predictor,
    out_dir: Path,
    settings: SegmentSettings,
    listener: Listener,
    report: BatchSegmentReport,
) -> None:
    """Segment ``tomogram`` unless another run holds it or has finished it since the run
    began; what happened goes into ``report``."""
    with claimed(tomogram, out_dir) as held:
        if not held:
            listener.message(f"{tomogram}: another run is segmenting it; left to it")
            report.busy.append(tomogram)
            return
        if not settings.overwrite and is_segmented(tomogram, out_dir, settings):
            report.skipped.append(tomogram)  # another run finished it since we looked
            return
        try:
            report.done.append(segment_one(tomogram, predictor, out_dir, settings, listener))
        except (InputError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in _OUTPUT_DISK_ERRORS:
                raise  # every other tomogram would fail the same way
            reason = _reason(exc, tomogram)
            listener.message(f"Failed: {reason}")
            report.failed.append((tomogram, reason))


_OUTPUT_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
"""Errors writing the outputs that no other tomogram would escape: a full disk, an
exhausted quota, a read-only file system."""


def _reason(exc: Exception, tomogram: Path) -> str:
    """One line saying why ``tomogram`` failed, naming it."""
    if isinstance(exc, OSError):
        text = os_error_text(exc)
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if str(tomogram) in text else f"{tomogram}: {text}"


def is_segmented(tomogram: Path, out_dir: Path, settings: SegmentSettings) -> bool:
    """Whether every output ``settings`` ask of ``tomogram`` is in ``out_dir`` already:
    a run without ``overwrite`` skips it."""
    return all(p.exists() for p in output_paths(tomogram, out_dir, settings).values())


def _tomogram_files(tomograms: Sequence[Path]) -> list[Path]:
    """The tomogram files given (files, or folders of them), each once, sorted by name."""
    files: dict[Path, Path] = {}  # the same file named twice (./a.mrc, /data/a.mrc) is one
    for given in map(Path, tomograms):
        if is_volume_folder(given):
            found = sorted(p for p in given.iterdir() if is_volume_file(p))
            if not found:
                raise InputError(f"{given}: no tomogram (.mrc .rec .nrrd .nii.gz .zarr …) in it")
        else:
            found = [given]
        for path in found:
            files.setdefault(path.parent.resolve() / path.name, path)
    if not files:
        raise InputError("no tomogram given")
    stems: dict[str, Path] = {}
    for path in files.values():
        other = stems.setdefault(volume_stem(path), path)
        if other != path:
            raise InputError(
                f"{path} and {other}: the same name, so the same output files; segment "
                "them into different --out-dir folders"
            )
    # By output name, which is unique: every part sees the same order, whatever the order
    # of the folders given or of their listings.
    return sorted(files.values(), key=volume_stem)
