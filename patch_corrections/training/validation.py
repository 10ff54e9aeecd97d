"""Whole patches through the network during training: the membrane probability of a patch
(relabeling rounds predict their training patches), the validation loss and Dice, and how
far the network moved on context probes; the last two choose ``best.pt``. Arrays are
``(z, y, x)``."""

from __future__ import annotations

import numpy as np
import torch

from ..constants import IGNORE, MEMBRANE
from ..network import distributed
from ..network.devices import Precision
from ..network.distributed import SINGLE, Ranks
from ..network.unet import UNet
from .data import TrainingPatch
from .losses import bce_dice_loss


def _patch_logits(
    network: UNet, image: np.ndarray, device: torch.device, precision: Precision
) -> torch.Tensor:
    """Logits ``(z, y, x)`` float32 of a whole normalised patch, padded to what the
    network divides by and cropped back."""
    divisor = network.config.divisor
    pad = [(0, -n % divisor) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad))[None, None].to(device)
    with precision.autocast():
        logits = network.forward_zyx(x).float()
    return logits[0, 0, : image.shape[0], : image.shape[1], : image.shape[2]]


@torch.no_grad()
def predict_patch(
    network: UNet, image: np.ndarray, device: torch.device, precision: Precision | None = None
) -> np.ndarray:
    """Membrane probability ``(z, y, x)`` float32 of a whole normalised patch."""
    was_training = network.training
    network.eval()
    logits = _patch_logits(network, image, device, precision or Precision.for_device(device))
    network.train(was_training)
    return torch.sigmoid(logits).cpu().numpy()


def _scored(network, patches, device, precision, ranks, score) -> list:
    """``score(logits, labels)`` (both ``(z, y, x)`` tensors on ``device``) of each patch;
    under torchrun each rank scores its share and every rank gets all, in order."""
    network.eval()
    scores = []
    for patch in ranks.share(patches):
        logits = _patch_logits(network, patch.image, device, precision)
        scores.append(score(logits, torch.from_numpy(patch.labels).to(device)))
    network.train()
    return distributed.gather(scores, ranks)


@torch.no_grad()
def validate(
    network: UNet,
    patches: list[TrainingPatch],
    device: torch.device,
    precision: Precision,
    ranks: Ranks = SINGLE,
) -> dict[str, float]:
    """Loss and Dice (ignore voxels excluded, pooled over patches) on whole patches.

    The loss is BCE + Dice whatever the training loss, so runs with different losses
    compare on the same scale. Under torchrun each rank scores its share of the patches
    and every rank gets the result of all, the same as one process would compute."""

    def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, ...]:
        # The loss, voxels predicted membrane and right, predicted, true.
        logits, y = logits[None, None], y[None, None]
        annotated = y != IGNORE
        hit = (logits > 0) & annotated
        truth = (y == MEMBRANE) & annotated
        counts = torch.stack([(hit & truth).sum(), hit.sum(), truth.sum()]).tolist()
        return (float(bce_dice_loss(logits, y)), *map(float, counts))

    scores = _scored(network, patches, device, precision, ranks, score)
    overlap, predicted, actual = (sum(s[i] for s in scores) for i in (1, 2, 3))
    dice = 2 * overlap / (predicted + actual) if predicted + actual else 1.0
    return {"val_loss": float(np.mean([s[0] for s in scores])), "val_dice": dice}


@torch.no_grad()
def moved(
    network: UNet,
    probes: list[TrainingPatch],
    device: torch.device,
    precision: Precision,
    ranks: Ranks = SINGLE,
) -> dict[str, float]:
    """How far the network's calls moved on the ``probes`` (context boxes nobody corrected
    and nothing trained on, labelled with the segmentation the patches were cut from):
    ``moved_new``, the share of their annotated voxels called membrane now and background
    there, and ``moved_lost``, the share called background now and membrane there."""

    def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, ...]:
        # New membrane, lost membrane, annotated voxels.
        calls, annotated = logits > 0, y != IGNORE
        was = (y == MEMBRANE) & annotated
        counts = torch.stack([(calls & annotated & ~was).sum(), (~calls & was).sum()])
        return (*map(float, counts.tolist()), float(annotated.sum()))

    counts = _scored(network, probes, device, precision, ranks, score)
    new, lost, total = (sum(c[i] for c in counts) for i in range(3))
    return {"moved_new": new / max(total, 1.0), "moved_lost": lost / max(total, 1.0)}


def selection_score(row: dict) -> float | None:
    """What ``best.pt`` maximises over metrics rows: validation Dice, less the share of
    probe voxels whose call moved where the run has probes; ``None`` without validation."""
    if "val_dice" not in row:
        return None
    return row["val_dice"] - row.get("moved_new", 0.0) - row.get("moved_lost", 0.0)
