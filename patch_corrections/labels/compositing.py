"""Label patches composited into a full-size volume, one slab of z sections at a time.

Inside every patch, voxels it decides (0 background, 1 membrane) replace the target's;
its ignore voxels keep the target's value, or become a mark. Where patches overlap, a
voxel one patch decides beats a voxel another leaves undecided; where two patches decide
a voxel differently, the patch in which it lies deeper (farther from that patch's nearest
face, where its annotator saw more context) wins, and at equal depth the later patch.
Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..constants import IGNORE
from ..io.geometry import Index3, PatchBox


def depth(start: int, stop: int, size: int) -> np.ndarray:
    """Distance of patch indices ``start .. stop`` to the nearer of the patch's faces."""
    index = np.arange(start, stop, dtype=np.int32)
    return np.minimum(index, size - 1 - index)


@dataclass
class Tally:
    """What compositing met, summed over the slabs.

    Attributes
    ----------
    conflicts
        Voxels that overlapping patches decided differently (each counted once).
    marked
        Voxels set to the mark (inside a patch, decided by none).
    pairs
        Per pair of patch indices ``(earlier, later)``, the voxels they decided differently.
    """

    conflicts: int = 0
    marked: int = 0
    pairs: dict[tuple[int, int], int] = field(default_factory=dict)


def composite(
    slab: np.ndarray,
    z0: int,
    shape: Index3,
    boxes: list[PatchBox],
    indices: list[int],
    labels_of: Callable[[int], np.ndarray],
    tally: Tally,
    mark: int | None = None,
) -> np.ndarray:
    """Paste the patches ``indices`` (of ``boxes``, placed in the target) into ``slab``,
    the target's sections ``z0 ..``, in place.

    Parameters
    ----------
    slab
        Sections ``(n, y, x)`` of the target, the whole ``y, x`` extent.
    shape
        The whole target's shape ``(z, y, x)``.
    boxes
        Every patch's place in the target; ``indices`` says which reach into ``slab``, in
        the order later patches win ties.
    labels_of
        The label patch ``(z, y, x)`` of a patch index, values 0, 1, 2.
    tally
        Counts conflicts and marked voxels, across slabs.
    mark
        Written where patches lie but none decided the voxel; ``None``: those keep their
        value.

    Returns
    -------
    won
        Per voxel of ``slab``, the index of the patch whose value it took (-1: none).
    """
    z1 = z0 + len(slab)
    won = np.full(slab.shape, -1, np.int16 if len(boxes) < 2**15 else np.int32)
    best = np.full(slab.shape, -1, np.int32)  # depth of the winning voxel
    covered = np.zeros(slab.shape, bool) if mark is not None else None
    clashed = np.zeros(slab.shape, bool)  # a voxel counts once, however many patches clash
    for i in indices:
        box = boxes[i]
        (a, b), offset = box.inside(shape), box.offset
        start = (max(a[0], z0), a[1], a[2])
        stop = (min(b[0], z1), b[1], b[2])
        local = tuple(slice(s - o, e - o) for s, e, o in zip(start, stop, offset))
        region = (slice(start[0] - z0, stop[0] - z0), slice(a[1], b[1]), slice(a[2], b[2]))
        labels = labels_of(i)[local]
        dz, dy, dx = (depth(s.start, s.stop, n) for s, n in zip(local, box.size))
        inner = np.minimum(np.minimum(dz[:, None, None], dy[None, :, None]), dx[None, None, :])
        decided = labels != IGNORE
        there, value, previous = best[region], slab[region], won[region]
        clash = decided & (there >= 0) & (value != labels)
        if clash.any():
            for other, voxels in zip(*np.unique(previous[clash], return_counts=True)):
                pair = (int(other), i)
                tally.pairs[pair] = tally.pairs.get(pair, 0) + int(voxels)
            clashed[region] |= clash
        take = decided & (inner >= there)
        value[take] = labels[take]
        there[take] = inner[take]
        previous[take] = i
        if covered is not None:
            covered[region] = True
    tally.conflicts += int(np.count_nonzero(clashed))
    if covered is not None:
        marked = covered & (won < 0)
        slab[marked] = mark
        tally.marked += int(np.count_nonzero(marked))
    return won
