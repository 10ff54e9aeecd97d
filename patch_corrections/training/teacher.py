"""The starting network as a teacher (learning without forgetting): a frozen copy of the
network a run started from segments every training crop, and its membrane probabilities
are the soft targets of the voxels nobody decided (:func:`.losses.taught_bce`), in a term
of weight ``TrainConfig.teacher`` beside the loss."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..errors import InputError
from ..network.devices import Precision
from ..network.distributed import Ranks
from ..network.unet import UNet
from .config import TrainConfig
from .losses import pooled_mean, taught_bce


class Teacher:
    """``network`` frozen on ``device``, and the run's taught term (its weight, clearance,
    and under torchrun the mean pooled over the ranks)."""

    def __init__(self, network: UNet, config: TrainConfig, device: torch.device, ranks: Ranks):
        network = network.to(device).eval().requires_grad_(False)
        if device.type == "cuda" and config.channels_last:
            network.to(memory_format=torch.channels_last_3d)
        self._forward = network.forward_zyx
        self._weight = config.teacher
        clearance, mean = config.teacher_clearance, pooled_mean(ranks)
        self._loss = partial(taught_bce, mean=mean, clearance=clearance)

    def term(
        self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, precision: Precision
    ) -> torch.Tensor:
        """The weighted term of the batch ``x`` (labels ``y``), for the full-resolution
        ``logits`` of the network that trains."""
        with torch.no_grad(), precision.autocast():
            taught = torch.sigmoid(self._forward(x).float())
        return self._weight * self._loss(logits.float(), taught, y)


def teacher_of(config: TrainConfig, trust: bool = False) -> UNet:
    """The teacher of a resumed run: the network of the checkpoint it started from."""
    from ..network.checkpoints import load_network

    path = Path(config.teacher_from or "")
    if not path.is_file():
        raise InputError(
            f"{path}: the checkpoint this run started from, its teacher (--teacher), is not "
            "there; put it back to resume, or start a new run from last.pt"
        )
    return load_network(path, trust).network
