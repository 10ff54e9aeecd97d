"""Losses that leave ignore voxels out entirely: no value, no gradient.

Targets are ``(batch, 1, z, y, x)`` label tensors with 0 background, 1 membrane, 2 ignore;
logits have the same shape. Following nnU-Net's ignore label, the logits of ignore voxels
are replaced by a constant before anything is computed from them, so nothing they hold
(not even inf or NaN) reaches the loss or its gradient.

A loss is named by its terms joined with ``+``: ``bce``, ``dice`` and ``rrw`` (the
rectified region-wise loss of Valverde & Tohka), e.g. ``bce+dice`` (the default, nnU-Net's
and MemBrain-seg's) or ``rrw+dice``.

Terms that average over annotated voxels (``bce``, ``rrw``) divide by a count that
:func:`make_loss` pools over torchrun's ranks: the number of annotated voxels differs from
crop to crop (the border band, sparse labels), so dividing each rank's sum by its own
count would weigh a voxel by how much ignore its rank's crops held. ``dice`` is per sample,
and every rank holds the same number of samples, so the ranks' mean is the batch's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.nn import functional as F

from ..constants import BACKGROUND, DEFAULT_LOSS, IGNORE, MEMBRANE
from ..network import distributed
from ..network.distributed import SINGLE, Ranks

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VoxelMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(sum over this process's annotated voxels, their count) -> the term``."""


def local_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``; 0 when nothing is annotated."""
    return total / count.clamp_min(1)


def pooled_mean(ranks: Ranks) -> VoxelMean:
    """The mean over the annotated voxels of every rank's batch, as one process holding the
    whole batch computes it, once torchrun's ranks average their gradients: each rank
    divides its sum by the ranks' total count and multiplies by their number."""
    if not ranks.distributed:
        return local_mean

    def mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        everyone = distributed.summed(count.to(total.dtype), ranks)
        return total * ranks.size / everyone.clamp_min(1)

    return mean


def masked_bce(
    logits: torch.Tensor, target: torch.Tensor, mean: VoxelMean = local_mean
) -> torch.Tensor:
    """Binary cross-entropy averaged over annotated voxels; 0 when there are none."""
    membrane = (target == MEMBRANE).to(logits.dtype)
    return _bce_where(logits, membrane, target != IGNORE, mean)


def _bce_where(
    logits: torch.Tensor, wanted: torch.Tensor, where: torch.Tensor, mean: VoxelMean
) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against ``wanted`` (probabilities), over the
    voxels of ``where`` only: the others' logits are replaced first, so nothing they hold
    reaches the value or its gradient."""
    safe = torch.where(where, logits, torch.zeros_like(logits))
    per_voxel = F.binary_cross_entropy_with_logits(safe, wanted, reduction="none")
    total = torch.where(where, per_voxel, torch.zeros_like(per_voxel)).sum()
    return mean(total, where.sum())


def taught_bce(
    logits: torch.Tensor,
    taught: torch.Tensor,
    target: torch.Tensor,
    mean: VoxelMean = local_mean,
    clearance: int = 0,
) -> torch.Tensor:
    """Binary cross-entropy against ``taught`` (the starting network's membrane
    probabilities, a soft target) averaged over the voxels nobody decided: the ignore
    voxels of ``target`` (the border band, Ignore masks, unlabelled voxels of sparse
    labels) farther than ``clearance`` voxels (along each axis) from labelled membrane;
    0 when there are none."""
    undecided = target == IGNORE
    if clearance:
        membrane = (target == MEMBRANE).float()
        undecided &= F.max_pool3d(membrane, 2 * clearance + 1, 1, clearance) == 0
    return _bce_where(logits, taught.to(logits.dtype), undecided, mean)


def masked_soft_dice(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - soft Dice`` of membrane over annotated voxels, per sample, then averaged.

    A sample without annotated voxels contributes 0; one without membrane is pushed
    towards predicting none (the ``smooth`` term).
    """
    annotated = target != IGNORE
    safe = torch.where(annotated, logits, torch.zeros_like(logits))
    probability = torch.sigmoid(safe) * annotated
    membrane = ((target == MEMBRANE) & annotated).to(logits.dtype)
    axes = tuple(range(1, logits.ndim))
    intersection = (probability * membrane).sum(axes)
    total = probability.sum(axes) + membrane.sum(axes)
    dice = (2 * intersection + smooth) / (total + smooth)
    has_labels = annotated.flatten(1).any(1)
    return torch.where(has_labels, 1 - dice, torch.zeros_like(dice)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked BCE plus masked soft Dice, computed in float32."""
    logits = logits.float()
    return masked_bce(logits, target) + masked_soft_dice(logits, target)


def squared_distance_to(mask: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distance (in voxels) from every voxel to the nearest true
    voxel of ``mask``, over its last three axes ``(z, y, x)``; ``inf`` where ``mask`` has
    no true voxel.

    Separable, one axis after the other, as whole-tensor operations on the device that
    holds ``mask``. Nothing is read back to the host, so the amount of work depends on the
    shape only and a training step on a GPU never waits here. Along x, the nearest true
    voxel of each line is found with running maxima of indices; along y and z,
    ``d(i) = min_j f(j) + (i - j)²`` over every ``j`` of the line.
    """
    distance = _line_distance(mask) ** 2
    for axis in (-2, -3):
        distance = _lower_envelope(distance, axis)
    return distance


def _line_distance(mask: torch.Tensor) -> torch.Tensor:
    """Distance along the last axis to the nearest true voxel of the same line (inf if
    the line has none), float32."""
    n = mask.shape[-1]
    index = torch.arange(n, device=mask.device, dtype=torch.float32).expand(mask.shape)
    last = torch.where(mask, index, -torch.inf).cummax(-1).values
    following = torch.where(mask, -index, -torch.inf).flip(-1).cummax(-1).values.flip(-1)
    return torch.minimum(index - last, -following - index)


_ENVELOPE_BLOCK = {"cuda": 2**24, "cpu": 2**20}
"""Most elements of the ``(lines, n, n)`` temporary :func:`_lower_envelope` holds at once,
by device type: 64 MiB of float32 on a GPU keeps the number of kernels small; 4 MiB on a
CPU stays in its caches (larger blocks measured several times slower there)."""


def _lower_envelope(values: torch.Tensor, axis: int) -> torch.Tensor:
    """``out[i] = min_j values[j] + (i - j)²`` along ``axis``, over every ``j``: a fixed
    number of kernels, so no bound on ``|i - j|`` has to be read from the device. The
    values are sums of squared integers, so every sum and the minimum are exact."""
    n = values.shape[axis]
    lines = values.movedim(axis, -1)
    flat = lines.reshape(-1, n)
    index = torch.arange(n, device=values.device, dtype=values.dtype)
    offsets = (index[:, None] - index) ** 2  # (i, j)
    out = torch.empty_like(flat)
    block = max(1, _ENVELOPE_BLOCK.get(values.device.type, _ENVELOPE_BLOCK["cpu"]) // (n * n))
    for start in range(0, flat.shape[0], block):
        chunk = flat[start : start + block]
        torch.amin(chunk[:, None, :] + offsets, dim=-1, out=out[start : start + block])
    return out.view(lines.shape).movedim(-1, axis)


def region_wise_maps(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified region-wise maps of membrane and background for ``target``
    ``(batch, 1, z, y, x)``, each of its shape, float32.

    The map of a class is -1 on its own voxels (rewarding its probability there) and, on
    voxels of the other class, the distance to the nearest voxel of the class divided by
    the largest such distance in that sample (penalising its probability, more so far from
    it), so both classes weigh at most 1 whatever their size: the rectification. Ignore
    voxels are 0 in both maps and only annotated voxels count as either class. Where a
    sample has no voxel of a class, that class's map is 1 on every annotated voxel.
    """
    classes = torch.cat([target == MEMBRANE, target == BACKGROUND], dim=1)
    with torch.no_grad():
        distance = squared_distance_to(classes).sqrt_()
        # Each class's map on the *other* class's voxels: swap the channels.
        other = classes.flip(1)
        inside = torch.where(other, distance, torch.zeros_like(distance))
        largest = inside.flatten(2).amax(-1)[..., None, None, None]
        scaled = torch.where(
            torch.isfinite(largest), inside / largest.clamp_min(1e-6), torch.ones_like(inside)
        )
        maps = torch.where(classes, -1.0, torch.where(other, scaled, 0.0))
    return maps[:, :1], maps[:, 1:]


def region_wise_loss(
    logits: torch.Tensor, target: torch.Tensor, mean: VoxelMean = local_mean
) -> torch.Tensor:
    """Rectified region-wise (RRW) loss of Valverde & Tohka, averaged over annotated voxels:
    ``p · Z_membrane + (1 - p) · Z_background`` with ``p`` the membrane probability and the
    maps of :func:`region_wise_maps`. Lies in [-1, 1]; -1 is a perfect prediction.
    """
    annotated = target != IGNORE
    safe = torch.where(annotated, logits, torch.zeros_like(logits))
    probability = torch.sigmoid(safe)
    membrane_map, background_map = region_wise_maps(target)
    per_voxel = probability * membrane_map + (1 - probability) * background_map
    total = torch.where(annotated, per_voxel, torch.zeros_like(per_voxel)).sum()
    return mean(total, annotated.sum())


LOSS_TERMS: dict[str, Callable[..., torch.Tensor]] = {
    "rrw": region_wise_loss,
    "bce": masked_bce,
    "dice": masked_soft_dice,
}
VOXEL_MEANS = ("rrw", "bce")
"""The terms that average over annotated voxels, and so take a :data:`VoxelMean`."""


def parse_loss(name: str) -> tuple[str, ...]:
    """The terms of a loss name such as ``rrw+dice``, checked and in a fixed order;
    ``ValueError`` if unknown.

    Pure string logic (no tensors), so the command line checks names before any work."""
    terms = tuple(t.strip().lower() for t in name.split("+"))
    unknown = [t for t in terms if t not in LOSS_TERMS]
    if unknown or not terms:
        raise ValueError(
            f"unknown loss term {unknown[0]!r}; combine {', '.join(LOSS_TERMS)} with '+'"
        )
    if len(set(terms)) != len(terms):
        raise ValueError("each loss term may appear once")
    return tuple(t for t in LOSS_TERMS if t in terms)  # one name per sum: dice+bce is bce+dice


def make_loss(name: str = DEFAULT_LOSS, ranks: Ranks = SINGLE, shift: float = 0.0) -> LossFunction:
    """The sum of the named terms, computed in float32 on the logits + ``shift`` (the class
    prior's logit adjustment, see :mod:`.prior`); under torchrun (``ranks``) their voxel
    means are pooled over the ranks (see :func:`pooled_mean`)."""
    mean = pooled_mean(ranks)
    terms = [
        partial(LOSS_TERMS[t], mean=mean) if t in VOXEL_MEANS else LOSS_TERMS[t]
        for t in parse_loss(name)
    ]

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float() + shift if shift else logits.float()
        return sum((term(logits, target) for term in terms[1:]), terms[0](logits, target))

    return loss


def downsample_labels(target: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels at ``1 / factor`` resolution, keeping the ignore label.

    A coarse voxel is ignore if any voxel under it is ignore (only what is fully annotated
    is trusted), else membrane if any is membrane (thin membranes survive), else background.
    """
    if factor == 1:
        return target
    ignore = F.max_pool3d((target == IGNORE).float(), factor, factor) > 0
    membrane = F.max_pool3d((target == MEMBRANE).float(), factor, factor) > 0
    coarse = membrane.to(target.dtype) * MEMBRANE
    return torch.where(ignore, torch.full_like(coarse, IGNORE), coarse)


def deep_supervision_loss(
    outputs: list[torch.Tensor], target: torch.Tensor, loss: LossFunction = bce_dice_loss
) -> torch.Tensor:
    """``loss`` over the full-resolution output and each head, weighted 1, 1/2, 1/4 …
    (summing to 1), each head against the labels downsampled to its size."""
    weights = [0.5**i for i in range(len(outputs))]
    norm = sum(weights)
    total = torch.zeros((), device=target.device)
    for weight, output in zip(weights, outputs):
        factor = target.shape[-1] // output.shape[-1]
        total = total + weight / norm * loss(output, downsample_labels(target, factor))
    return total
