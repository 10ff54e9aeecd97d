"""Sparse annotation: which voxels of a label patch are kept, the rest set to ignore.

Used two ways: ``merge_corrections --sparse`` keeps chosen slices of the network's labels
(besides what the Add/Remove masks say), and ``simulate_sparse`` turns dense labels into
the slices or boxes an annotator would have drawn, for experiments at a known budget.
Pure array logic; arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import IGNORE

AXES = {"z": 0, "y": 1, "x": 2}


def slices_mask(shape: tuple[int, ...], axis: int, indices) -> np.ndarray:
    """Boolean mask of ``shape`` that is true on the given slices along ``axis``."""
    keep = np.zeros(shape, dtype=bool)
    index: list = [slice(None)] * len(shape)
    index[axis] = np.asarray(sorted(set(indices)), dtype=np.intp)
    keep[tuple(index)] = True
    return keep


def spaced_slices(
    labels: np.ndarray, axis: int, fraction: float, rng: np.random.Generator
) -> list[int]:
    """Evenly spaced slices along ``axis`` (random phase), ``fraction`` of those that hold
    an annotated voxel (at least one), as an annotator drawing every n-th slice would."""
    others = tuple(a for a in range(labels.ndim) if a != axis)
    candidates = np.flatnonzero((labels != IGNORE).any(axis=others))
    if len(candidates) == 0:
        return []
    count = min(len(candidates), max(1, round(fraction * len(candidates))))
    spacing = len(candidates) / count
    positions = (rng.random() + np.arange(count)) * spacing
    return [int(candidates[int(p)]) for p in positions]


def random_boxes(
    labels: np.ndarray, box: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Mask of random cubes of edge ``box`` centred on annotated voxels not yet covered,
    added until they cover ``ceil(fraction * annotated)`` of the annotated voxels, exactly:
    the last box is cut short where that count is reached (after whole ``z`` slices of it,
    then ``y`` rows, then voxels), as an annotator stops at the budget.

    Parameters
    ----------
    labels
        Label patch ``(z, y, x)``; ignore voxels are not annotated.
    box
        Edge of the cubes, in voxels.
    fraction
        Share of the annotated voxels to cover, in ``(0, 1]``.
    rng
        The only source of randomness: the same seed gives the same boxes.
    """
    annotated = labels != IGNORE
    total = int(np.count_nonzero(annotated))
    keep = np.zeros(labels.shape, dtype=bool)
    # The tolerance keeps 0.1 * 880 (88.00000000000001 in floating point) at 88.
    wanted = min(total, math.ceil(fraction * total - 1e-9))
    covered = 0
    # Centres in a random order, skipping those a box already covers: each annotated
    # voxel is looked at once, however small the boxes.
    for index in rng.permutation(np.flatnonzero(annotated)):
        if covered >= wanted:
            break
        centre = np.unravel_index(index, labels.shape)
        if keep[centre]:
            continue
        window = tuple(slice(max(0, c - box // 2), max(0, c - box // 2) + box) for c in centre)
        new = annotated[window] & ~keep[window]
        count = int(np.count_nonzero(new))
        if covered + count > wanted:  # the last box: up to its (wanted - covered)-th new voxel
            last = np.flatnonzero(new)[wanted - covered - 1]
            part = np.zeros(new.size, dtype=bool)
            part[: last + 1] = True
            keep[window] |= part.reshape(new.shape)
            count = wanted - covered
        else:
            keep[window] = True
        covered += count
    return keep


def sparsify(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Copy of ``labels`` with every voxel outside ``keep`` set to ignore."""
    return np.where(keep, labels, np.uint8(IGNORE)).astype(labels.dtype)


def parse_slices(spec: str, shape: tuple[int, ...]) -> tuple[int, list[int]]:
    """``(axis, indices)`` from ``"z=40,80,100-110"`` (patch voxel indices; ranges are
    inclusive); ``ValueError`` with the reason otherwise."""
    name, sep, items = spec.partition("=")
    axis = AXES.get(name.strip().lower())
    if not sep or axis is None:
        raise ValueError("expected AXIS=INDICES with AXIS x, y or z, e.g. z=40,80,100-110")
    indices: list[int] = []
    for item in items.split(","):
        first, dash, last = item.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not an index or a range a-b") from None
        if low > high:
            raise ValueError(f"range {item.strip()} runs backwards")
        if low < 0 or high >= shape[axis]:
            raise ValueError(
                f"{name.strip()} index {high if low >= 0 else low} is outside the patch "
                f"(0 to {shape[axis] - 1})"
            )
        indices.extend(range(low, high + 1))
    return axis, indices
