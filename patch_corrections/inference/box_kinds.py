"""Kinds of region in a tomogram, so that suggested boxes represent all of it.

Every candidate box (:mod:`.box_scores`) is described by five features over its scored
part: the tomogram's mean intensity, its standard deviation voxel to voxel, its standard
deviation from cell to cell (texture coarser than a cell, e.g. thick ice, dense
cytoplasm, a carbon edge), the share of voxels the network calls membrane, and the mean
disagreement of the flipped passes. Each feature is standardised over the candidates that
may be chosen, and k-means groups the candidates into as many kinds as boxes are asked
for. :func:`.box_choice.choose_spread` then takes the most uncertain box of each kind, so
the boxes a user corrects hold the tomogram's membrane share and its empty regions
instead of the densest membrane only (boxes chosen on uncertainty alone taught the network
that membrane is common; benchmarks/held_out_round.py, benchmarks/RESULTS.md).

The image's sums are read slab by slab into the same cells as the maps'
(:class:`.box_scores.CellSums`), so memory holds a volume ``cell³`` times smaller.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import numpy as np

from .box_scores import AxisCandidates, BoxScores, CellSums, box_sums

IMAGE_TERMS = ("intensity", "squared_intensity")
"""The image's per-voxel terms summed over cells, in the order of their ``CellSums``
(filled by :func:`.box_scores.score_maps`)."""
FEATURES = ("mean", "noise", "texture", "membrane", "disagreement")
"""A box's features, in the order of :func:`box_features`' last axis."""
FIT_POINTS = 8192
"""Candidates k-means is fitted on at most (an even subsample; every candidate is then
given its nearest kind)."""
RESTARTS, ITERATIONS = 4, 50
"""k-means restarts (the one with the least inertia is kept) and iterations per restart."""


def _cell_counts(shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Voxels in each cell (the last cells along an axis may be partial)."""
    counts = np.ones((1, 1, 1))
    for axis, n in enumerate(shape):
        along = np.minimum(cell, n - np.arange(-(-n // cell)) * cell).astype(np.float64)
        size = [1, 1, 1]
        size[axis] = len(along)
        counts = counts * along.reshape(size)
    return counts


def box_features(scores: BoxScores, image: CellSums) -> np.ndarray:
    """The features of every candidate box of ``scores`` (see :data:`FEATURES`) over its
    part inside the volume, from the image's cell sums over the same cells and boxes:
    ``score``'s shape + ``(5,)``, float32."""
    axes: tuple[AxisCandidates, ...] = scores.axes
    counts = _cell_counts(image.shape, image.cell)
    voxels = np.maximum(box_sums(counts, axes), 1.0)
    cells = np.maximum(box_sums(np.ones_like(counts), axes), 1.0)
    total, squares = image.sums
    mean = box_sums(total, axes) / voxels
    noise = np.sqrt(np.maximum(box_sums(squares, axes) / voxels - mean * mean, 0.0))
    cell_means = total / counts
    coarse = box_sums(cell_means, axes) / cells
    texture = box_sums(cell_means * cell_means, axes) / cells - coarse * coarse
    texture = np.sqrt(np.maximum(texture, 0.0))
    # The scores' means count voxels beyond the volume as 0 (a box crossing its faces with
    # --allow-border); the kinds describe the part inside it.
    inside = voxels.max() / voxels
    stacked = (mean, noise, texture, scores.membrane * inside, scores.disagreement * inside)
    return np.stack(stacked, axis=-1).astype(np.float32)


def _standardised(points: np.ndarray) -> np.ndarray:
    centre = points.mean(axis=0)
    spread = points.std(axis=0)
    spread[spread == 0] = 1.0
    return (points - centre) / spread


def _nearest(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest centre and its squared distance."""
    distances = np.full(len(points), np.inf)
    nearest = np.zeros(len(points), np.int64)
    for k, centre in enumerate(centres):
        d = ((points - centre) ** 2).sum(axis=1)
        closer = d < distances
        nearest[closer], distances[closer] = k, d[closer]
    return nearest, distances


def k_means(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Centres of ``k`` clusters of ``points`` ``(n, features)``: k-means++ seeding,
    :data:`ITERATIONS` Lloyd steps, the best of :data:`RESTARTS`; fewer centres when
    there are fewer distinct points."""
    distinct = np.unique(points, axis=0)
    k = min(k, len(distinct))
    rng = np.random.default_rng(seed)
    best, least = distinct[:k], np.inf
    for _ in range(RESTARTS):
        centres = [points[rng.integers(len(points))]]
        while len(centres) < k:  # k-means++: far points are likelier
            _, d = _nearest(points, np.asarray(centres))
            if d.sum() == 0:
                break
            centres.append(points[rng.choice(len(points), p=d / d.sum())])
        centres = np.asarray(centres)
        for _ in range(ITERATIONS):
            nearest, _ = _nearest(points, centres)
            moved = np.stack(
                [
                    points[nearest == j].mean(axis=0) if (nearest == j).any() else centres[j]
                    for j in range(len(centres))
                ]
            )
            if np.allclose(moved, centres):
                break
            centres = moved
        inertia = _nearest(points, centres)[1].sum()
        if inertia < least:
            best, least = centres, inertia
    return best


def kinds(features: np.ndarray, count: int, open_: np.ndarray, seed: int = 0) -> np.ndarray:
    """The kind of region of every candidate (an int grid like ``open_``, ``-1`` where a
    candidate may not be chosen): k-means with ``count`` kinds over the standardised
    features of the open candidates."""
    grid = np.full(open_.shape, -1, np.int64)
    if not open_.any():
        return grid
    points = _standardised(features[open_].astype(np.float64))
    step = max(1, -(-len(points) // FIT_POINTS))
    centres = k_means(points[::step], count, seed)
    grid[open_] = _nearest(points, centres)[0]
    return grid
