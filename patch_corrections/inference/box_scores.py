"""Where a correction would teach the network most: scores of patch-sized boxes over a
tomogram's membrane probabilities and test-time-augmentation variance, and the choice of
the best boxes that do not overlap (:mod:`.box_choice`; by default one box per kind of
region, :mod:`.box_kinds`). Pure NumPy.

The rule, per voxel (probability ``p``, variance ``v`` of the 8 flipped passes'
probabilities, threshold ``t``):

- *disagreement* ``4 v`` (0 … 1): the flipped passes disagree;
- *near threshold* ``max(0, 1 - |p - t| / NEAR_BAND)`` (0 … 1): the decision is close;
- *membrane* ``p > t``: the network calls it membrane.

A box's *uncertainty* is the mean over its voxels of disagreement + ``NEAR_WEIGHT`` × near
threshold, its *membrane share* the mean of the membrane term; its score is the
uncertainty times ``min(1, membrane share / MEMBRANE_SATURATION)``: uncertainty counts in
full once the box holds about a membrane's worth of voxels, and an empty box whose noise
is uncertain scores near 0 (a correction there teaches little).

``NEAR_WEIGHT`` is 0: the near-threshold term is reported, not ranked on. Every membrane
has a rim of voxels near the threshold, where the probability falls from 1 to 0, so that
term mostly measures how much membrane a box holds; ranked on it (weight 1), suggested
patches taught less than patches picked at random among membrane-bearing ones, while
disagreement alone did as well as them and as the oracle (benchmarks/suggest_round.py,
benchmarks/RESULTS.md).

The maps are read one slab of z sections at a time (:func:`score_maps`) and reduced to
sums over cells of ``cell`` voxels per axis (a
volume ``cell³`` times smaller); every box sum is then a difference of cumulative sums
(an integral image), and candidate boxes start on cell boundaries, every ``cell`` voxels.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, warn
from ..io.geometry import Index3
from ..io.readers import VolumeReader

CELL = 4
"""Edge of the cells the maps are summed over, in voxels (fewer for small patches, see
:func:`cell_size`): candidate boxes lie every ``CELL`` voxels along each axis."""
NEAR_BAND = 0.3
"""How far from the threshold a probability still counts as near it (linearly less):
background at ``p < 0.2`` (for the threshold 0.5) adds nothing, however much of it a box
holds."""
NEAR_WEIGHT = 0.0
"""Weight of the near-threshold term in the score (see the module's description)."""
MEMBRANE_SATURATION = 0.02
"""Membrane share of a box from which its uncertainty counts in full (a membrane crossing
a 160³ box marks about 3 % of it)."""
MAX_OVERLAP = 0.25
"""Default largest share of a box's volume that may lie inside a box chosen before (or a
patch already extracted)."""
TERMS = ("disagreement", "near_threshold", "membrane")
"""The per-voxel terms summed over cells, in the order of :class:`CellSums`' arrays."""


def cell_size(patch_size: int) -> int:
    """Cell edge for boxes of ``patch_size``: :data:`CELL`, less for patches under 32 voxels
    (a box spans at least 8 cells)."""
    return max(1, min(CELL, patch_size // 8))


def voxel_terms(
    probabilities: np.ndarray,
    variance: np.ndarray,
    threshold: float = 0.5,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-voxel terms of the rule, as float32 arrays of the input's shape.

    Parameters
    ----------
    probabilities, variance
        Membrane probability and the variance of the 8 flipped passes' probabilities,
        same shape (any, e.g. a slab ``(n, y, x)``); NaN counts as 0.
    threshold
        Probability above which a voxel is membrane.
    allowed
        Boolean, same shape: voxels outside it (``False``) get 0 for every term.

    Returns
    -------
    disagreement, near_threshold, membrane
        See the module's description.
    """
    p = np.nan_to_num(np.asarray(probabilities, np.float32), nan=0.0)
    v = np.nan_to_num(np.asarray(variance, np.float32), nan=0.0)
    disagreement = np.clip(4 * v, 0, 1)
    near = np.abs(p - np.float32(threshold))
    near /= np.float32(-NEAR_BAND)
    near += 1
    np.maximum(near, 0, out=near)
    membrane = (p > threshold).astype(np.float32)
    if allowed is not None:
        for term in (disagreement, near, membrane):
            term[~allowed] = 0
    return disagreement, near, membrane


def cell_sums_2d(values: np.ndarray, cell: int) -> np.ndarray:
    """Sums of ``values`` ``(n, y, x)`` over ``cell × cell`` squares of each slice:
    ``(n, ceil(y / cell), ceil(x / cell))`` float64 (the last row and column of squares may
    be partial)."""
    n, y, x = values.shape
    cy, cx = -(-y // cell), -(-x // cell)
    padded = np.zeros((n, cy * cell, cx * cell), np.float64)
    padded[:, :y, :x] = values
    return padded.reshape(n, cy, cell, cx, cell).sum(axis=(2, 4))


class CellSums:
    """The per-voxel terms of a volume summed over cells, filled slab by slab.

    Attributes
    ----------
    shape
        Volume shape ``(z, y, x)``.
    cell
        Cell edge in voxels.
    sums
        One float64 array per term (``terms`` of them; by default those of
        :data:`TERMS`), ``ceil(shape / cell)``.
    """

    def __init__(self, shape: Index3, cell: int, terms: int = len(TERMS)) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.cell = int(cell)
        cells = tuple(-(-n // self.cell) for n in self.shape)
        self.sums = [np.zeros(cells, np.float64) for _ in range(terms)]

    def add(self, z0: int, terms: tuple[np.ndarray, ...]) -> None:
        """Add the terms of slices ``[z0, z0 + n)``, each ``(n, y, x)``."""
        n = len(terms[0])
        rows = (z0 + np.arange(n)) // self.cell
        for total, term in zip(self.sums, terms):
            np.add.at(total, rows, cell_sums_2d(term, self.cell))


@dataclass(frozen=True)
class AxisCandidates:
    """Candidate boxes along one axis.

    Attributes
    ----------
    centres
        Voxel index of each box's centre (local index ``size // 2`` of the box).
    first, last
        Each box's cells: ``[first, last)`` in the cell grid (clipped to the volume).
    """

    centres: np.ndarray
    first: np.ndarray
    last: np.ndarray


def axis_candidates(
    length: int, size: int, cell: int, allow_border: bool, border: int = 0
) -> AxisCandidates:
    """Boxes of ``size`` along an axis of ``length`` voxels, one every ``cell`` voxels.

    A box starts on a cell boundary. Without ``allow_border`` it lies inside the axis;
    along an axis shorter than the box, the only box is the centred one (it holds the
    whole axis). With ``allow_border`` a box may cross the axis' ends as long as its
    centre lies inside. The cells ``first … last`` of each box are those of its part
    ``border`` voxels away from its faces (the part of a label patch that is not ignore),
    rounded to whole cells.
    """
    cells = -(-length // cell)
    half = size // 2
    if allow_border:
        starts = np.arange(-(half // cell), (length - 1 - half) // cell + 1) * cell
    elif length <= size:
        starts = np.array([length // 2 - half])
    else:
        starts = np.arange(0, (length - size) // cell + 1) * cell
    centres = starts + half
    first = np.clip(np.round((starts + border) / cell).astype(int), 0, cells)
    last = np.clip(np.round((starts + size - border) / cell).astype(int), 0, cells)
    return AxisCandidates(centres, first, last)


def box_sums(cells: np.ndarray, axes: tuple[AxisCandidates, ...]) -> np.ndarray:
    """Sum of ``cells`` over every candidate box: ``(len(z), len(y), len(x))`` float64.

    Separable: along each axis in turn, a cumulative sum and one difference per box.
    """
    total = cells
    for axis, candidates in enumerate(axes):
        summed = np.cumsum(total, axis=axis, dtype=np.float64)
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        summed = np.pad(summed, pad)
        total = np.take(summed, candidates.last, axis=axis) - np.take(
            summed, candidates.first, axis=axis
        )
    return total


@dataclass(frozen=True)
class BoxScores:
    """Every candidate box's score and the terms it is made of, ``(z, y, x)`` grids.

    Attributes
    ----------
    axes
        The candidates along ``z``, ``y``, ``x``.
    score
        The rule's score (see the module's description).
    disagreement, near_threshold, membrane
        Mean of each term over the box (its padding beyond the volume counting 0).
    """

    axes: tuple[AxisCandidates, ...]
    score: np.ndarray
    disagreement: np.ndarray
    near_threshold: np.ndarray
    membrane: np.ndarray

    def centre(self, index: Index3) -> Index3:
        """Voxel index ``(z, y, x)`` of the centre of the box at grid ``index``."""
        return tuple(int(a.centres[i]) for a, i in zip(self.axes, index))  # type: ignore[return-value]


def box_scores(
    sums: CellSums,
    size: int,
    border: int = 0,
    allow_border: bool = False,
    saturation: float = MEMBRANE_SATURATION,
    near_weight: float = NEAR_WEIGHT,
) -> BoxScores:
    """Score every candidate box of edge ``size`` over the cell sums of a volume; only the
    part ``border`` voxels inside its faces counts (see :func:`axis_candidates`)."""
    axes = tuple(axis_candidates(n, size, sums.cell, allow_border, border) for n in sums.shape)
    volume = float(size - 2 * border) ** 3
    disagreement, near, membrane = (box_sums(s, axes) / volume for s in sums.sums)
    weight = np.minimum(1.0, membrane / saturation) if saturation > 0 else 1.0
    score = (disagreement + near_weight * near) * weight
    return BoxScores(axes, score, disagreement, near, membrane)  # type: ignore[arg-type]


def describe_box(disagreement: float, near: float, membrane: float) -> str:
    """A box's terms in words (no commas: suggest writes it into a CSV column)."""
    where = "little membrane" if membrane < MEMBRANE_SATURATION else "on membrane"
    return (
        f"TTA passes disagree ({disagreement:.3f}) {where} ({membrane:.1%}); "
        f"near threshold {near:.3f}"
    )


SLAB_VOXELS = 1 << 22
"""Voxels of each map read at once (whole z sections, at least one)."""
VARIANCE_LIMIT = 0.25 + 1e-3
"""The variance of values in [0, 1] is at most 1/4 (float16 storage rounds a little)."""
_PROBABILITY_SLACK = 1e-3


def score_maps(
    probabilities: VolumeReader,
    variance: VolumeReader,
    size: int,
    *,
    border: int = 0,
    threshold: float = 0.5,
    allow_border: bool = False,
    mask: VolumeReader | None = None,
    image: VolumeReader | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[BoxScores, np.ndarray | None, CellSums | None]:
    """Score every box of edge ``size`` over the maps of ``probabilities`` and
    ``variance`` (of the 8 flipped passes' probabilities), read slab by slab into cell sums.

    With ``mask`` (the maps' shape; non-zero voxels count), also returns which candidates
    have their centre inside it (a grid like the scores), else ``None``. With ``image``
    (the tomogram), also returns its cell sums of :data:`.box_kinds.IMAGE_TERMS` (inside
    the mask), else ``None``. ``progress`` hears ``(slabs done, slabs)``.

    Raises
    ------
    InputError
        For maps that are no probabilities or variance.
    """
    shape = probabilities.info.shape
    cell = cell_size(size)
    sums = CellSums(shape, cell)
    image_sums = CellSums(shape, cell, terms=2) if image is not None else None
    axes = [axis_candidates(n, size, cell, allow_border) for n in shape]
    centre_rows = {int(z): k for k, z in enumerate(axes[0].centres)}
    allowed = np.ones([len(a.centres) for a in axes], bool) if mask is not None else None
    depth = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    total, nonfinite = -(-shape[0] // depth), 0
    if progress is not None:
        progress(0, total)
    for done, z0 in enumerate(range(0, shape[0], depth), start=1):
        start, stop = (z0, 0, 0), (min(z0 + depth, shape[0]), shape[1], shape[2])
        p = probabilities.read_block(start, stop).astype(np.float32, copy=False)
        v = variance.read_block(start, stop).astype(np.float32, copy=False)
        nonfinite += _check_maps(p, v, probabilities.info.path, variance.info.path)
        inside = None
        if mask is not None:
            inside = mask.read_block(start, stop) != 0
            for z in range(z0, stop[0]):
                if z in centre_rows:
                    picked = np.ix_(axes[1].centres, axes[2].centres)
                    allowed[centre_rows[z]] = inside[z - z0][picked]  # type: ignore[index]
        sums.add(z0, voxel_terms(p, v, threshold, inside))
        if image_sums is not None:
            assert image is not None
            values = image.read_block(start, stop)
            image_sums.add(z0, _image_terms(values, inside))
        if progress is not None:
            progress(done, total)
    if nonfinite:
        warn(
            f"{probabilities.info.path}, {variance.info.path}: {nonfinite} NaN or infinite "
            "voxel(s), read as 0"
        )
    scores = box_scores(sums, size, border, allow_border, MEMBRANE_SATURATION)
    return scores, allowed, image_sums


def _image_terms(values: np.ndarray, inside: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The image's intensity and squared intensity (float64; NaN, infinities and voxels
    outside ``inside`` read as 0)."""
    intensity = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if inside is not None:
        intensity[~inside] = 0
    return intensity, intensity * intensity


def _check_maps(p: np.ndarray, v: np.ndarray, p_path, v_path) -> int:
    """``InputError`` for maps that are no probabilities or variance; the count of
    non-finite voxels."""
    bad = ~np.isfinite(p)
    bad |= ~np.isfinite(v)
    nonfinite = int(np.count_nonzero(bad))
    low, high = float(np.nanmin(p, initial=0)), float(np.nanmax(p, initial=0))
    if low < -_PROBABILITY_SLACK or high > 1 + _PROBABILITY_SLACK:
        raise InputError(
            f"{p_path}: values from {low:g} to {high:g} are not probabilities (logits, a "
            "MemBrain-seg _scores.mrc?); give segment's <stem>_probabilities.mrc"
        )
    low, high = float(np.nanmin(v, initial=0)), float(np.nanmax(v, initial=0))
    if low < 0 or high > VARIANCE_LIMIT:
        raise InputError(
            f"{v_path}: values from {low:g} to {high:g} are not a variance of probabilities; "
            "give the <stem>_uncertainty.mrc of segment --tta --uncertainty"
        )
    return nonfinite
