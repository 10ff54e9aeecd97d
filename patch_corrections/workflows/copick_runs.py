"""Segmenting the runs of a copick project, the segmentations written back into it.

Each run's tomogram is segmented as ``segment_many`` segments a file (the same locks,
failures and ``--part/--parts``), its outputs in ``<out-dir>/<run>/VoxelSpacing<Å>/``,
and the binary segmentation is then written into the project as a copick segmentation
(uint8, ``is_multilabel`` false), where napari-copick and copick's API find it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, collect_warnings
from ..io.copick_project import CopickProject, CopickTomogram, SegmentationName
from ..io.names import is_plain_name
from ..io.volumes import check_slab_output, copy_volume, volume_exists
from ._common import check_out_dir
from .batch_segmentation import BatchSegmentReport, check_part, is_segmented, segment_in_turn
from .events import SILENT, Listener
from .segmentation import SegmentSettings, load_predictor, output_paths

COPICK_DTYPE = np.uint8
"""What copick writes a binary segmentation as."""


@dataclass(frozen=True)
class CopickSegmentReport:
    """What a run over a copick project's runs did."""

    batch: BatchSegmentReport
    """The runs segmented, skipped, left to another run or failed; the paths it names are
    the runs' tomograms."""
    written: list[tuple[str, Path]] = field(default_factory=list)
    """Each run whose segmentation was written into the project, with its folder there."""
    runs: dict[Path, str] = field(default_factory=dict)
    """The run of each tomogram the batch names."""


def segment_runs(
    project: CopickProject,
    name: SegmentationName,
    checkpoint: Path,
    out_dir: Path,
    *,
    settings: SegmentSettings = SegmentSettings(),
    part: int = 0,
    parts: int = 1,
    listener: Listener = SILENT,
) -> CopickSegmentReport:
    """Segment the selected runs' tomograms with one loaded network; each run's outputs
    go into ``out_dir/<run>/VoxelSpacing<Å>/`` and its segmentation into the project as
    ``name``.

    A run whose copick segmentation exists is skipped unless ``settings.overwrite``; one
    whose outputs exist but whose copick segmentation does not only has it written.
    ``part`` of ``parts`` takes every ``parts``-th run by name.
    """
    out_dir = Path(out_dir)
    check_part(part, parts)
    written: list[tuple[str, Path]] = []
    mine: list[CopickTomogram] = []
    with collect_warnings() as warned:
        tomograms = project.tomograms()
        check_out_dir(out_dir)
        mine = tomograms[part::parts]
        if parts > 1 and mine:
            listener.message(
                f"Part {part} of {parts} (counted from 0): {len(mine)} of the "
                f"{len(tomograms)} runs"
            )
        targets = {t.run: project.new_segmentation(t.run, t.voxel_spacing, name) for t in mine}
        for t in mine:
            check_slab_output(targets[t.run], "copick segmentation", t.path, "its tomogram")
        folders = {t.run: _run_folder(out_dir, t) for t in mine}
        # The copick segmentation is what the project keeps: one there is never replaced
        # without --overwrite, whatever the output folder holds.
        todo = [t for t in mine if settings.overwrite or not volume_exists(targets[t.run])]
        batch = BatchSegmentReport(
            [], [t.path for t in mine if t not in todo], total=len(tomograms)
        )
        segmenting = [
            t
            for t in todo
            if settings.overwrite or not is_segmented(t.path, folders[t.run], settings)
        ]
        predictor = load_predictor(Path(checkpoint), settings, listener) if segmenting else None
        for number, t in enumerate(todo, start=1):
            listener.message(f"[{number}/{len(todo)}] run {t.run}: {t.path}")
            if t in segmenting:
                before = len(batch.done)
                segment_in_turn(t.path, predictor, folders[t.run], settings, listener, batch)
                if len(batch.done) == before:
                    continue  # failed, or left to another run
            segmented = output_paths(t.path, folders[t.run], settings)["segmented"]
            copy_volume(segmented, targets[t.run], COPICK_DTYPE)
            written.append((t.run, targets[t.run]))
    batch.warnings.extend(warned)
    return CopickSegmentReport(batch, written, {t.path: t.run for t in mine})


def _run_folder(out_dir: Path, tomogram: CopickTomogram) -> Path:
    """``out_dir/<run>/VoxelSpacing<Å>``, as copick lays out its tomograms: runs and
    spacings hold tomograms of the same name, so each has its folder."""
    if not is_plain_name(tomogram.run):
        raise InputError(
            f"run {tomogram.run!r}: not a plain folder name, so no output is written under it"
        )
    return out_dir / tomogram.run / f"VoxelSpacing{tomogram.voxel_spacing:.3f}"
