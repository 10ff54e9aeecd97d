"""SMILE-style relabeling: adopt the most confident predicted membrane of ignore regions.

After a network has trained on the labels the user is sure of, it predicts the ignore
regions of its training patches; round ``t`` of ``T`` adopts the ``γ·t/T`` most confident
of the voxels it calls membrane there (a curriculum: few and sure first), and training
goes on with them as membrane. Optionally the same share of the voxels it calls
background is adopted as background, so relabeled regions are not membrane only. The
border band of a patch (where the network saw no context) and voxels that lay outside the
tomogram are never adopted. Pure array logic; arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import numpy as np

from ..constants import BACKGROUND, IGNORE, MEMBRANE
from .patches import interior


def curriculum_share(round_index: int, rounds: int, max_share: float) -> float:
    """Share adopted in round ``round_index`` (1-based) of ``rounds``: ``γ · t / T``."""
    return max_share * round_index / rounds


def relabel_candidates(
    labels: np.ndarray,
    border: int,
    padding: tuple[tuple[int, int], ...] | None = None,
) -> np.ndarray:
    """Ignore voxels that may be relabeled: not in the ``border`` band along any face, nor
    in ``padding`` ``((before, after),)`` per axis (voxels outside the tomogram)."""
    candidates = labels == IGNORE
    edges = [(border, border)] * labels.ndim
    if padding is not None:
        edges = [(max(b, pb), max(a, pa)) for (b, a), (pb, pa) in zip(edges, padding)]
    return candidates & interior(labels.shape, edges)


def adopt(probability: np.ndarray, candidates: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` most probable of the ``candidates`` voxels predicted membrane
    (probability above 0.5), as a boolean mask; ties at the cut are broken by position.
    ``adopt(1 - probability, ...)`` picks the most confident background the same way."""
    predicted = candidates & (probability > 0.5)
    index = np.flatnonzero(predicted)
    count = round(share * len(index))
    chosen = np.zeros(probability.shape, dtype=bool)
    if count == 0:
        return chosen
    order = np.argsort(-probability.ravel()[index], kind="stable")[:count]
    chosen.ravel()[index[order]] = True
    return chosen


def adopted_labels(
    probability: np.ndarray, candidates: np.ndarray, share: float, background: bool = False
) -> np.ndarray:
    """What one round adopts, as a label patch: membrane on the ``share`` most confident
    predicted membrane of the ``candidates``, with ``background`` also background on the
    ``share`` most confident predicted background, ignore elsewhere."""
    labels = np.full(probability.shape, IGNORE, dtype=np.uint8)
    labels[adopt(probability, candidates, share)] = MEMBRANE
    if background:
        labels[adopt(1 - probability, candidates, share)] = BACKGROUND
    return labels


def with_adopted(labels: np.ndarray, adopted: np.ndarray) -> np.ndarray:
    """Copy of ``labels`` with the labels ``adopted`` (a label patch, ignore where
    nothing was adopted) written over it."""
    out = labels.copy()
    chosen = adopted != IGNORE
    out[chosen] = adopted[chosen]
    return out
