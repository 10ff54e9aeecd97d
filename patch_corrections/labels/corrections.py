"""Merging painted corrections into a label patch. Pure array logic, no file paths."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..constants import BACKGROUND, IGNORE, LABEL_VALUES, MEMBRANE, PAINTED_IN_BAND
from ..errors import InputError
from .patches import add_border_band, interior


@dataclass(frozen=True)
class MergeCounts:
    """How a merge changed a label patch, in voxels.

    Attributes
    ----------
    added
        Voxels that are membrane now and were not before.
    removed
        Voxels that were membrane and are background now.
    ignored
        Voxels that are ignore now and were not before (border band included).
    annotated
        Voxels that are not ignore after the merge: what training learns from.
    band_painted
        Voxels painted Add or Remove inside the border band, outside Ignore and padding:
        labels with ``painted_in_band``, ignore like the rest of the band without it.
    membrane, base_membrane
        Of the annotated voxels, those that are membrane after the merge, and those that
        were membrane before it: how much the corrections changed the membrane the
        network found, where training learns (see :mod:`patch_corrections.training.prior`).
    """

    added: int
    removed: int
    ignored: int
    annotated: int
    band_painted: int = 0
    membrane: int = 0
    base_membrane: int = 0


def union_mask(masks: Iterable[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Union of correction masks: any non-zero voxel of any mask is marked.

    MITK saves 0/1, other tools 0/255 or label values; all count the same.
    """
    marked = np.zeros(shape, dtype=bool)
    for mask in masks:
        # NaN is what some tools write for "nothing here", never a mark.
        marked |= (mask != 0) & ~np.isnan(mask) if mask.dtype.kind == "f" else mask != 0
    return marked


def merge_labels(
    base: np.ndarray,
    *,
    add: np.ndarray | None = None,
    remove: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    border: int = 0,
    padding: tuple[tuple[int, int], ...] | None = None,
    keep: np.ndarray | None = None,
    painted_in_band: bool = PAINTED_IN_BAND,
) -> tuple[np.ndarray, MergeCounts]:
    """Apply corrections to a label patch.

    The order is MemBrain-seg's: Remove sets background, then Add sets membrane, then Ignore
    sets ignore, then the border band and any padding are set to ignore. Later steps win
    where masks overlap. With ``keep`` (sparse annotation) the patch first becomes ignore
    everywhere outside ``keep``, so only the kept voxels and the painted masks are labels.
    With ``painted_in_band`` the Add and Remove voxels inside the band stay labelled (a
    person decided them; the band is there for the network's own labels), unless Ignore
    or padding covers them.

    Parameters
    ----------
    base
        Label patch ``(z, y, x)`` with values in ``{0, 1, 2}``.
    add, remove, ignore
        Boolean masks of ``base.shape`` (``None``: nothing painted).
    border
        Width of the ignore band along every face, in voxels.
    padding
        Voxels ``(before, after)`` per axis ``(z, y, x)`` that lay outside the tomogram
        when the patch was cut: they carry no signal, so no painted label may stay there.
    keep
        Boolean mask of ``base.shape``: the voxels of ``base`` to keep before the masks
        apply (``None``: all of them). An all-false mask keeps only what is painted.

    Returns
    -------
    merged
        New ``uint8`` label patch.
    counts
        Voxels added, removed and ignored relative to ``base``, left to train on, painted
        inside the band, and membrane among those left to train on, after and before.
    """
    merged = base.astype(np.uint8, copy=True)
    if keep is not None:
        merged[~keep] = IGNORE
    painted = [(m, v) for m, v in ((remove, BACKGROUND), (add, MEMBRANE)) if m is not None]
    for mask, value in painted:
        merged[mask] = value
    if ignore is not None:
        merged[ignore] = IGNORE
        painted = [(mask & ~ignore, value) for mask, value in painted]
    add_border_band(merged, border)
    if painted_in_band:
        for mask, value in painted:
            merged[mask] = value
    inside = interior(merged.shape, padding or [(0, 0)] * merged.ndim)
    merged[~inside] = IGNORE
    drawn = np.zeros(merged.shape, dtype=bool)
    for mask, _ in painted:
        drawn |= mask
    band = ~interior(merged.shape, [(border, border)] * merged.ndim)
    counts = MergeCounts(
        added=int(np.count_nonzero((merged == MEMBRANE) & (base != MEMBRANE))),
        removed=int(np.count_nonzero((merged == BACKGROUND) & (base == MEMBRANE))),
        ignored=int(np.count_nonzero((merged == IGNORE) & (base != IGNORE))),
        annotated=int(np.count_nonzero(merged != IGNORE)),
        band_painted=int(np.count_nonzero(drawn & band & inside)),
        membrane=int(np.count_nonzero(merged == MEMBRANE)),
        base_membrane=int(np.count_nonzero((merged != IGNORE) & (base == MEMBRANE))),
    )
    return merged, counts


def invalid_label_values(labels: np.ndarray) -> list:
    """Values of ``labels`` outside ``{0, 1, 2}``, sorted (empty when all are valid)."""
    values = np.unique(labels)
    return [v.item() for v in values if v not in LABEL_VALUES]


def require_label_values(labels: np.ndarray, source) -> None:
    """Raise ``InputError`` naming ``source`` if ``labels`` hold values outside {0, 1, 2}."""
    bad = invalid_label_values(labels)
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise InputError(f"{source}: label values must be 0, 1 or 2; found {shown}")
