"""Which boxes to suggest: the best-scoring ones, greedily (or the most uncertain of each
kind of region, :func:`choose_spread`), that overlap neither each other nor patches
already cut by more than a share of a box (non-maximum suppression). Grids and boxes are
``(z, y, x)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..io.geometry import Index3
from . import box_kinds
from .box_scores import MAX_OVERLAP, BoxScores, CellSums


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
    open_ = open_candidates(scores.score, scores, size, max_overlap, excluded, allowed)
    ranked = np.where(open_, scores.score, -np.inf)
    chosen: list[Index3] = []
    while len(chosen) < count and _take_best(ranked, scores, size, max_overlap, chosen):
        pass
    return chosen


def open_candidates(
    values: np.ndarray,
    scores: BoxScores,
    size: int,
    max_overlap: float,
    excluded: Sequence[tuple[Index3, Index3]],
    allowed: np.ndarray | None,
) -> np.ndarray:
    """Candidates that may be chosen: ``values`` above 0, inside ``allowed``, and
    overlapping no ``excluded`` box by more than ``max_overlap``."""
    centres = tuple(a.centres for a in scores.axes)
    open_ = values > 0
    if allowed is not None:
        open_ &= allowed
    for offset, box in excluded:
        open_ &= _overlaps(centres, size, offset, box) <= max_overlap
    return open_


def _take_best(
    ranked: np.ndarray,
    scores: BoxScores,
    size: int,
    max_overlap: float,
    chosen: list,
    among: np.ndarray | None = None,
) -> bool:
    """Append the best of ``ranked`` (``-inf`` where closed; only ``among`` when given)
    to ``chosen`` and close every candidate overlapping it beyond ``max_overlap``;
    ``False`` when none is left."""
    pool = ranked if among is None else np.where(among, ranked, -np.inf)
    best = np.unravel_index(int(np.argmax(pool)), pool.shape)
    if not np.isfinite(pool[best]):
        return False
    index = tuple(int(i) for i in best)
    chosen.append(index)
    centres = tuple(a.centres for a in scores.axes)
    offset = tuple(int(c[i]) - size // 2 for c, i in zip(centres, index))
    closed = _overlaps(centres, size, offset, (size,) * 3) > max_overlap  # type: ignore[arg-type]
    closed[index] = True
    ranked[closed] = -np.inf
    return True


def choose_spread(
    scores: BoxScores,
    image: CellSums,
    size: int,
    count: int,
    max_overlap: float = MAX_OVERLAP,
    excluded: Sequence[tuple[Index3, Index3]] = (),
    allowed: np.ndarray | None = None,
) -> tuple[list[Index3], list[float]]:
    """The most uncertain box of each kind of region (:mod:`.box_kinds`, ``count``
    kinds), kinds holding most candidates first, then, while a kind has no box left that
    overlaps none chosen, the most uncertain of the rest; non-maximum suppression,
    ``excluded`` and ``allowed`` as in :func:`choose`.

    Parameters
    ----------
    image
        The tomogram's cell sums (:data:`.box_kinds.IMAGE_TERMS`) over the cells of
        ``scores``.

    Returns
    -------
    Grid indices ``(z, y, x)`` of at most ``count`` boxes, in the order chosen (boxes where
    the flipped passes agree everywhere are never chosen), and the share of the candidates
    that are of each one's kind.
    """
    open_ = open_candidates(scores.disagreement, scores, size, max_overlap, excluded, allowed)
    kinds = box_kinds.kinds(box_kinds.box_features(scores, image), count, open_)
    ranked = np.where(open_, scores.disagreement, -np.inf)
    sizes = np.bincount(kinds[open_], minlength=1)
    chosen: list[Index3] = []
    for kind in np.argsort(-sizes, kind="stable")[:count]:
        _take_best(ranked, scores, size, max_overlap, chosen, among=kinds == kind)
    while len(chosen) < count and _take_best(ranked, scores, size, max_overlap, chosen):
        pass
    return chosen, [float(sizes[kinds[index]] / max(sizes.sum(), 1)) for index in chosen]
