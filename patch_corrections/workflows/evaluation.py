"""Evaluation: a segmentation against reference labels, ignore voxels excluded."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, collect_warnings, warn
from ..io.geometry import as_xyz
from ..io.names import warn_links_out
from ..io.volumes import Geometry, closing_reader, is_volume_file, is_volume_folder, read_volume
from ..labels.corrections import require_label_values
from ..metrics import add_counts, counts, summarise


@dataclass(frozen=True)
class EvaluateSettings:
    """How a segmentation is compared.

    Attributes
    ----------
    threshold
        Values above it are membrane (for scoremaps); default 0.5.
    tolerance
        Radius in voxels of the distance-tolerant Dice. Any size is computed (in memory
        proportional to the volume); one longer than the compared volume's largest side is
        warned about, since then almost every voxel counts as near.
    """

    threshold: float | None = None
    tolerance: int = 2

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise InputError(f"--tolerance must be 0 or more, got {self.tolerance}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise InputError(f"--threshold must be a finite number, got {self.threshold}")


@dataclass(frozen=True)
class EvaluateReport:
    """The metrics, in a fixed order: Dice, IoU, precision, recall, tolerant Dice, counts."""

    metrics: dict[str, float | int]
    settings: EvaluateSettings
    warnings: list[str]
    scores: bool = False
    """Whether the prediction held values other than 0 and 1 (a score map), binarised at
    :attr:`threshold`."""
    threshold: float = 0.5
    """Values above it were membrane: ``settings.threshold``, else 0.5."""


def evaluate(
    prediction: Path, reference: Path, *, settings: EvaluateSettings = EvaluateSettings()
) -> EvaluateReport:
    """Compare ``prediction`` (a segmentation, or a scoremap with a threshold) with
    ``reference`` labels (0, 1, 2 = ignore): a volume of the same shape, or a folder of
    label patches placed in the prediction by their headers."""
    prediction, reference = Path(prediction), Path(reference)
    threshold = settings.threshold
    with collect_warnings() as warned:
        with closing_reader(prediction) as reader:
            shape, geometry = reader.info.shape, reader.info.geometry
            total: dict[str, int] = {}
            largest, low, high, scores = 0, np.inf, -np.inf, False
            for name, labels, start in _references(reference, shape, geometry):
                largest = max(largest, *labels.shape)
                stop = tuple(a + n for a, n in zip(start, labels.shape))
                block = reader.read_block(start, stop)
                if block.size:
                    low, high = (
                        min(low, float(np.nanmin(block))),
                        max(high, float(np.nanmax(block))),
                    )
                predicted = block > (threshold if threshold is not None else 0.5)
                scores = scores or bool(np.any((block != 0) & (block != 1)))
                if (
                    threshold is None
                    and block.dtype.kind == "f"
                    and (block.min() < 0 or block.max() > 1)
                ):
                    warn(f"{prediction}: values outside [0, 1]; pass --threshold for scores")
                require_label_values(labels, name)
                total = add_counts(total, counts(predicted, labels, settings.tolerance))
        if not total.get("annotated"):
            raise InputError(f"{reference}: no annotated voxel (all ignore): nothing to compare")
        if threshold is not None and np.isfinite(high) and not low <= threshold < high:
            warn(
                f"--threshold {threshold:g} is outside the prediction's values "
                f"({low:g} to {high:g}): every voxel is "
                f"{'background' if threshold >= high else 'membrane'}"
            )
        if 0 < largest < settings.tolerance:
            warn(
                f"--tolerance {settings.tolerance} is larger than the compared volume's "
                f"largest side ({largest} voxels): almost every voxel counts as near; use a "
                "few voxels"
            )
        metrics = summarise(total, settings.tolerance)
    used = threshold if threshold is not None else 0.5
    return EvaluateReport(metrics, settings, warned, scores, used)


def _references(
    reference: Path, shape: tuple[int, int, int], geometry: Geometry | None
) -> Iterator[tuple[Path, np.ndarray, tuple[int, int, int]]]:
    """``(name, labels, start)`` for a reference volume, or for each label patch of a folder
    (placed in the prediction by its origin; the part outside the prediction is dropped)."""
    if is_volume_folder(reference):
        files = sorted(p for p in reference.iterdir() if is_volume_file(p))
        if not files:
            raise InputError(f"{reference}: no label patches")
        warn_links_out(reference, files)
        if geometry is None:
            raise InputError("the prediction has no voxel size: patches cannot be placed")
        placed: list[tuple[Path, tuple, tuple]] = []
        for path in files:
            labels, info = read_volume(path)
            if info.geometry is None:
                raise InputError(f"{path}: no origin/spacing to place it in the prediction")
            if not all(
                math.isclose(a, b, rel_tol=1e-3)
                for a, b in zip(info.geometry.voxel_size, geometry.voxel_size)
            ):
                raise InputError(
                    f"{path}: voxel size {tuple(as_xyz(info.geometry.voxel_size))} Å differs "
                    f"from the prediction's {tuple(as_xyz(geometry.voxel_size))} Å"
                )
            exact = geometry.index_of(info.geometry.origin)
            offset = [round(e) for e in exact]
            if any(abs(e - o) > 0.1 for e, o in zip(exact, offset)):
                raise InputError(f"{path}: its origin is not on the prediction's voxel grid")
            low, high = tuple(offset), tuple(o + n for o, n in zip(offset, labels.shape))
            for other, other_low, other_high in placed:
                if all(a < d and c < b for a, b, c, d in zip(low, high, other_low, other_high)):
                    warn(
                        f"{path.name} overlaps {other.name}: their shared voxels count once "
                        "per patch"
                    )
            placed.append((path, low, high))
            start = [max(0, o) for o in offset]
            stop = [min(n, o + s) for o, s, n in zip(offset, labels.shape, shape)]
            if any(b <= a for a, b in zip(start, stop)):
                raise InputError(f"{path}: lies outside the prediction")
            local = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, offset))
            yield path, labels[local], tuple(start)  # type: ignore[misc]
        return
    labels, info = read_volume(reference)
    if info.shape != shape:
        raise InputError(
            f"{reference}: shape x,y,z={tuple(as_xyz(info.shape))} differs from the "
            f"prediction's x,y,z={tuple(as_xyz(shape))}"
        )
    yield reference, labels, (0, 0, 0)
