"""Connected membrane components of a segmentation, as ``membrain segment
--store-connected-components`` labels them.

Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import numpy as np


def connected_components(segmentation: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Label the 26-connected membrane components of ``segmentation`` (non-zero voxels).

    Components are numbered in MemBrain-seg's scan order (its arrays are ``(x, y, z)``),
    so the labels match its output. With ``min_size`` above 1, smaller components are
    dropped and the rest renumbered ``1 … N`` in the same order.

    Returns
    -------
    numpy.ndarray
        Labels ``(z, y, x)``, int32, 0 for background.
    """
    from scipy import ndimage

    # Label the (x, y, z) view so the scan, and so the numbering, is MemBrain-seg's.
    labels, count = ndimage.label(segmentation.T != 0, structure=np.ones((3, 3, 3), bool))
    labels = labels.T
    if min_size > 1 and count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(count + 1, np.int32)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = renumber[labels]
    return np.ascontiguousarray(labels, dtype=np.int32)


def smallest_label_dtype(labels: np.ndarray) -> np.dtype:
    """int8 or int16 where the labels fit (MRC stores both exactly), else float32, which
    holds whole numbers exactly up to 2**24."""
    high = int(labels.max()) if labels.size else 0
    if high <= 127:
        return np.dtype(np.int8)
    if high <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.float32)
