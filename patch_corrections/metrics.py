"""Segmentation quality against reference labels, ignore voxels excluded.

Thin membranes make voxel-exact overlap harsh: a prediction one voxel off along a whole
membrane scores near 0 Dice. Besides Dice, IoU, precision and recall, a distance-tolerant
Dice counts a predicted voxel as right when a true membrane voxel lies within ``tolerance``
voxels (and a true voxel as found when a predicted one does).
"""

from __future__ import annotations

import numpy as np

from .constants import IGNORE, MEMBRANE


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return (z**2 + y**2 + x**2) <= radius**2


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=_ball(radius))


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
