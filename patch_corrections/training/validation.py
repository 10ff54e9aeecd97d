"""Whole patches through the network during training: the membrane probability of a patch
(relabeling rounds predict their training patches), and the validation loss and Dice that
choose ``best.pt``. Arrays are ``(z, y, x)``."""

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
    network.eval()
    scores = []  # per patch: loss, voxels predicted membrane and right, predicted, true
    for patch in ranks.share(patches):
        logits = _patch_logits(network, patch.image, device, precision)[None, None]
        y = torch.from_numpy(patch.labels)[None, None].to(device)
        annotated = y != IGNORE
        hit = (logits > 0) & annotated
        truth = (y == MEMBRANE) & annotated
        counts = torch.stack([(hit & truth).sum(), hit.sum(), truth.sum()]).tolist()
        scores.append((float(bce_dice_loss(logits, y)), *map(float, counts)))
    network.train()
    scores = distributed.gather(scores, ranks)
    overlap, predicted, actual = (sum(s[i] for s in scores) for i in (1, 2, 3))
    dice = 2 * overlap / (predicted + actual) if predicted + actual else 1.0
    return {"val_loss": float(np.mean([s[0] for s in scores])), "val_dice": dice}
