"""Sparse simulation: dense training labels made sparse, as an annotator would leave them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE, TRAIN_IMAGES_SUBDIR, TRAIN_LABELS_SUBDIR
from ..errors import InputError, collect_warnings
from ..io.geometry import geometry_or_unit
from ..io.patch_folders import find_training_pairs
from ..io.staging import StagedFiles, staged
from ..io.summary import (
    earlier_rows,
    merged_rows,
    row_files,
    summary_path,
    summary_rows,
    summary_text,
)
from ..io.volumes import output_path, read_volume, volume_suffix, write_volume
from ..labels.corrections import require_label_values
from ..labels.sparse import AXES, random_boxes, slices_mask, spaced_slices, sparsify
from ._common import check_format, require_free, tracked, writing_into
from .events import SILENT, Listener

SPARSE_MODES = ("slices", "boxes")


@dataclass(frozen=True)
class SparseSettings:
    """What a simulated annotator keeps.

    Attributes
    ----------
    mode
        ``slices``: evenly spaced slices along ``axis``; ``boxes``: random cubic boxes
        around labelled voxels.
    fraction
        Share kept: of the slices holding labels (slices), or of the labelled voxels (boxes).
    axis
        Slice axis for ``slices``: ``x``, ``y`` or ``z``.
    box_size
        Edge of the cubic boxes, in voxels.
    seed
        Seed of the slice phase or boxes.
    format
        File format of the sparse labels.
    overwrite
        Replace existing training pairs.
    """

    mode: str = "slices"
    fraction: float = 0.1
    axis: str = "z"
    box_size: int = 32
    seed: int = 0
    format: str = "nii.gz"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.mode not in SPARSE_MODES:
            raise InputError(f"--mode must be slices or boxes, got {self.mode}")
        if not 0 < self.fraction <= 1:
            raise InputError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.axis.lower() not in AXES:
            raise InputError(f"--axis must be x, y or z, got {self.axis}")
        if self.box_size < 1:
            raise InputError(f"--box-size must be at least 1, got {self.box_size}")
        if self.seed < 0:
            raise InputError(f"--seed must be at least 0, got {self.seed}")
        check_format(self.format)


@dataclass(frozen=True)
class SparseReport:
    """What a sparse simulation wrote: one row per training pair, as in its summary."""

    out_dir: Path
    summary: Path
    rows: list[dict]
    settings: SparseSettings
    warnings: list[str]

    @property
    def kept_fraction(self) -> float:
        """Share of the labelled voxels of every pair that stayed labelled (boxes: the
        ``--fraction`` asked, to a voxel per pair; slices: whatever the slices held)."""
        before = sum(r["annotated_before"] for r in self.rows)
        return sum(r["annotated"] for r in self.rows) / before if before else 0.0


def simulate_sparse(
    train_dir: Path,
    out_dir: Path,
    *,
    settings: SparseSettings = SparseSettings(),
    listener: Listener = SILENT,
) -> SparseReport:
    """Write ``train_dir``'s training pairs to ``out_dir`` with sparse labels.

    Everything not kept becomes ignore; images are copied byte for byte; geometry, and the
    border band and padding recorded in ``train_dir``'s summary, are carried over.
    """
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    with collect_warnings() as warned, writing_into(out_dir):
        if out_dir.resolve() == train_dir.resolve():
            raise InputError("--out-dir must differ from --train-dir: the dense labels are kept")
        pairs = find_training_pairs(train_dir)
        outputs = [
            (
                out_dir / TRAIN_IMAGES_SUBDIR / image.name,
                output_path(out_dir / TRAIN_LABELS_SUBDIR, name, settings.format),
            )
            for name, image, _ in pairs
        ]
        require_free([path for pair in outputs for path in pair], settings.overwrite)
        source_rows = summary_rows(
            summary_path(train_dir),
            "border, padding and intensity statistics are not carried over",
        )

        earlier = earlier_rows(out_dir)
        rng = np.random.default_rng(settings.seed)
        # The files, then the summary, recorded first so that a killed run is finished
        # by the next one.
        with staged(out_dir) as files:
            files.make_dirs(out_dir / TRAIN_IMAGES_SUBDIR, out_dir / TRAIN_LABELS_SUBDIR)
            rows = [
                {
                    **_carried(source_rows.get(pair[0], {})),
                    **_sparsify(pair, out, settings, rng, files),
                }
                for pair, out in tracked(
                    list(zip(pairs, outputs)), "Making labels sparse", listener
                )
            ]
            summary = merged_rows(earlier, rows)
            fields = {"simulated_from": str(train_dir.resolve()), "seed": settings.seed}
            files.write_text(summary_path(out_dir), summary_text(summary, **fields))
    return SparseReport(out_dir, summary_path(out_dir), rows, settings, warned)


def _carried(row: dict) -> dict:
    """What a pair's summary row keeps from its dense source's."""
    carried = ("border", "painted_in_band", "padding_xyz", "intensity_statistics", "cut_from")
    return {k: v for k, v in row.items() if k in carried}


def _sparsify(pair, outputs, settings: SparseSettings, rng, files: StagedFiles) -> dict:
    """Stage one pair with its labels made sparse; its summary row."""
    (name, image, label), (image_out, label_out) = pair, outputs
    labels, info = read_volume(label)
    require_label_values(labels, label)
    axis = settings.axis.lower()
    if settings.mode == "slices":
        kept = spaced_slices(labels, AXES[axis], settings.fraction, rng)
        keep = slices_mask(labels.shape, AXES[axis], kept)
        what = {"axis": axis, "slices": kept}
    else:
        keep = random_boxes(labels, settings.box_size, settings.fraction, rng)
        what = {"box_size": settings.box_size}
    sparse_labels = sparsify(labels, keep)
    before = int(np.count_nonzero(labels != IGNORE))
    after = int(np.count_nonzero(sparse_labels != IGNORE))
    geometry = geometry_or_unit(info.geometry, label, "sparse labels are written")
    write_volume(files.stage(label_out, volume_suffix(label_out)), sparse_labels, geometry)
    shutil.copyfile(image, files.stage(image_out, volume_suffix(image_out)))
    return {
        "name": name,
        "source": str(label),
        "annotated_before": before,
        "annotated": after,
        "kept_fraction": after / before if before else 0.0,
        "simulated": {"mode": settings.mode, "fraction": settings.fraction, **what},
        **row_files(image_out.parent.parent, image_out, label_out),
    }
