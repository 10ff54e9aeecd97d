"""Segmentation quality against reference labels, ignore voxels excluded.

Thin membranes make voxel-exact overlap harsh: a prediction one voxel off along a whole
membrane scores near 0 Dice. Besides Dice, IoU, precision and recall, a distance-tolerant
Dice counts a predicted voxel as right when a true membrane voxel lies within ``tolerance``
voxels (and a true voxel as found when a predicted one does).
"""

from __future__ import annotations

import numpy as np

from .constants import IGNORE, MEMBRANE

_BALL_MAX_RADIUS = 3
"""Up to this radius a dilation by the ball itself is fastest; beyond, its cost grows with
the radius cubed and a distance transform takes over."""
_SLAB_VOXELS = 2**22
"""Voxels per slab of a distance transform (about 30 bytes each while it runs)."""


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return (z**2 + y**2 + x**2) <= radius**2


def _dilate(mask: np.ndarray, radius: int, slab_voxels: int = _SLAB_VOXELS) -> np.ndarray:
    """Voxels within Euclidean distance ``radius`` of a ``mask`` voxel: the dilation by a
    ball of that radius, in memory proportional to the volume whatever the radius.

    Parameters
    ----------
    mask
        Boolean ``(z, y, x)``.
    radius
        In voxels; any size (one reaching across the volume marks all of it).
    slab_voxels
        Voxels per slab of the distance transform, which runs slab by slab along ``z``.
    """
    if radius <= 0:
        return mask
    if not mask.any():
        return np.zeros(mask.shape, bool)
    if radius**2 >= sum((n - 1) ** 2 for n in mask.shape):  # no voxel is farther away
        return np.ones(mask.shape, bool)
    from scipy import ndimage

    if radius <= _BALL_MAX_RADIUS:
        return ndimage.binary_dilation(mask, structure=_ball(radius))
    depth = mask.shape[0]
    # Each slab reads ``radius`` planes beyond its ends, where the nearest voxel may lie.
    step = max(1, radius, slab_voxels // max(1, mask[0].size))
    near = np.empty(mask.shape, bool)
    for low in range(0, depth, step):
        high = min(low + step, depth)
        first, last = max(0, low - radius), min(depth, high + radius)
        near[low:high] = _within(mask[first:last], radius)[low - first : high - first]
    return near


def _within(mask: np.ndarray, radius: int) -> np.ndarray:
    """``_dilate`` by an exact Euclidean distance transform: integer squared distances to
    the nearest ``mask`` voxel, so the comparison with ``radius`` is exact."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    from scipy import ndimage

    nearest = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    squared = np.zeros(mask.shape, np.int64)
    for axis, index in enumerate(nearest):
        place = [1] * mask.ndim
        place[axis] = -1
        index -= np.arange(mask.shape[axis], dtype=index.dtype).reshape(place)
        squared += np.square(index, dtype=np.int64)
    return squared <= radius * radius


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def counts(prediction: np.ndarray, reference: np.ndarray, tolerance: int = 2) -> dict[str, int]:
    """Voxel counts for the metrics, over annotated voxels (``reference != 2``).

    Parameters
    ----------
    prediction
        Boolean membrane prediction ``(z, y, x)``.
    reference
        Labels ``(z, y, x)``: 0 background, 1 membrane, 2 ignore.
    tolerance
        Radius in voxels for the distance-tolerant counts.
    """
    annotated = reference != IGNORE
    truth = reference == MEMBRANE
    predicted = prediction.astype(bool) & annotated
    near_truth = _dilate(truth, tolerance)
    near_prediction = _dilate(predicted, tolerance)
    return {
        "annotated": int(annotated.sum()),
        "true_positive": int((predicted & truth).sum()),
        "predicted": int(predicted.sum()),
        "actual": int(truth.sum()),
        "predicted_near_truth": int((predicted & near_truth).sum()),
        "actual_near_prediction": int((truth & near_prediction).sum()),
    }


def summarise(total: dict[str, int], tolerance: int) -> dict[str, float]:
    """Dice, IoU, precision, recall and tolerant Dice from (summed) ``counts``.

    Values are NaN only when undefined: nothing predicted and nothing true (Dice, IoU,
    tolerant Dice), nothing predicted (precision), nothing true (recall).
    """
    tp, predicted, actual = total["true_positive"], total["predicted"], total["actual"]
    if predicted or actual:
        # With one side empty and the other not, nothing is found: 0.
        precision_t = total["predicted_near_truth"] / predicted if predicted else 0.0
        recall_t = total["actual_near_prediction"] / actual if actual else 0.0
        both = precision_t + recall_t
        tolerant = 2 * precision_t * recall_t / both if both else 0.0
    else:
        tolerant = float("nan")
    return {
        "dice": _ratio(2 * tp, predicted + actual),
        "iou": _ratio(tp, predicted + actual - tp),
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, actual),
        f"tolerant_dice_{tolerance}": tolerant,
        "annotated_voxels": total["annotated"],
    }


def add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b[k] for k in b}
