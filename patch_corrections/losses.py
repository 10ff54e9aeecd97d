"""Losses that leave ignore voxels out entirely: no value, no gradient.

Targets are ``(batch, 1, z, y, x)`` label tensors with 0 background, 1 membrane, 2 ignore;
logits have the same shape. Following nnU-Net's ignore label, the logits of ignore voxels
are replaced by a constant before anything is computed from them, so nothing they hold
(not even inf or NaN) reaches the loss or its gradient.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .constants import IGNORE, MEMBRANE


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over annotated voxels; 0 when there are none."""
    annotated = target != IGNORE
    safe = torch.where(annotated, logits, torch.zeros_like(logits))
    membrane = (target == MEMBRANE).to(logits.dtype)
    per_voxel = F.binary_cross_entropy_with_logits(safe, membrane, reduction="none")
    total = torch.where(annotated, per_voxel, torch.zeros_like(per_voxel)).sum()
    return total / annotated.sum().clamp_min(1)


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


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Loss over the full-resolution output and each head, weighted 1, 1/2, 1/4 … (summing
    to 1), each head against the labels downsampled to its size."""
    weights = [0.5**i for i in range(len(outputs))]
    norm = sum(weights)
    total = torch.zeros((), device=target.device)
    for weight, output in zip(weights, outputs):
        factor = target.shape[-1] // output.shape[-1]
        total = total + weight / norm * bce_dice_loss(output, downsample_labels(target, factor))
    return total
