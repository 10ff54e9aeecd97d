"""Which boxes to suggest: the best-scoring ones, greedily, that overlap neither each
other nor patches already cut by more than a share of a box (non-maximum suppression).
Grids and boxes are ``(z, y, x)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..io.geometry import Index3
from .box_scores import MAX_OVERLAP, BoxScores


def overlap_share(offset_a: Index3, size_a: Index3, offset_b: Index3, size_b: Index3) -> float:
    """Volume shared by two boxes (``offset`` of the first voxel, ``size``, ``(z, y, x)``),
    as a share of the smaller one."""
    shared = 1
    for oa, sa, ob, sb in zip(offset_a, size_a, offset_b, size_b):
        shared *= max(0, min(oa + sa, ob + sb) - max(oa, ob))
    smaller = min(int(np.prod(size_a)), int(np.prod(size_b)))
    return shared / smaller if smaller else 0.0


def _overlaps(
    centres: tuple[np.ndarray, ...], size: int, offset: Index3, box: Index3
) -> np.ndarray:
    """Share of each candidate box (centres per axis, edge ``size``) that overlaps the box
    at ``offset`` of ``box`` voxels, relative to the smaller of the two: a grid ``(z, y,
    x)``."""
    half = size // 2
    shared = np.ones((1, 1, 1))
    for axis, (c, o, s) in enumerate(zip(centres, offset, box)):
        start = c - half
        along = np.maximum(0, np.minimum(start + size, o + s) - np.maximum(start, o))
        shape = [1, 1, 1]
        shape[axis] = len(c)
        shared = shared * along.reshape(shape)
    return shared / min(size**3, int(np.prod(box)))


def choose(
    scores: BoxScores,
    size: int,
    count: int,
    max_overlap: float = MAX_OVERLAP,
    excluded: Sequence[tuple[Index3, Index3]] = (),
    allowed: np.ndarray | None = None,
) -> list[Index3]:
    """The best boxes, greedily: the highest score first, then each next best box that
    overlaps none chosen before (non-maximum suppression) by more than ``max_overlap`` of
    the smaller box's volume.

    Parameters
    ----------
    excluded
        Boxes ``(offset, size)`` ``(z, y, x)`` already corrected (e.g. an extraction
        manifest's patches): a candidate overlapping one by more than ``max_overlap`` is
        never chosen.
    allowed
        Boolean grid like ``scores.score``: candidates that may be chosen (e.g. centres
        inside a region of interest).

    Returns
    -------
    Grid indices ``(z, y, x)`` of at most ``count`` boxes, best first. Boxes scoring 0
    (no uncertainty, or no membrane) are never chosen.
    """
    centres = tuple(a.centres for a in scores.axes)
    open_ = scores.score > 0
    if allowed is not None:
        open_ &= allowed
    half = size // 2
    for offset, box in excluded:
        open_ &= _overlaps(centres, size, offset, box) <= max_overlap
    chosen: list[Index3] = []
    ranked = np.where(open_, scores.score, -np.inf)
    while len(chosen) < count:
        best = np.unravel_index(int(np.argmax(ranked)), ranked.shape)
        if not np.isfinite(ranked[best]):
            break
        index = tuple(int(i) for i in best)
        chosen.append(index)  # type: ignore[arg-type]
        offset = tuple(int(c[i]) - half for c, i in zip(centres, index))
        ranked[_overlaps(centres, size, offset, (size,) * 3) > max_overlap] = -np.inf  # type: ignore[arg-type]
        ranked[index] = -np.inf
    return chosen
