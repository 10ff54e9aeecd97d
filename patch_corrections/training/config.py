"""What decides a training run, saved in every checkpoint: :class:`TrainConfig`, and the two
pure functions of it a step uses, the learning-rate schedule and the optimiser."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import DEFAULT_LOSS, NORMALISATION, WARMUP_SHARE
from ..errors import InputError

if TYPE_CHECKING:
    import torch

DEFAULT_LR = {"sgd": 1e-2, "adamw": 3e-4}
"""Peak learning rate of each optimiser when none is given."""
FINE_TUNING = ("adamw", 1e-3)
"""Optimiser and peak rate when a run starts from a checkpoint and neither is given
(``benchmarks/fine_tuning_recipe.py``): on held-out tomograms AdamW at 1e-3 gained as much
as SGD at 1e-2 (nnU-Net's from-scratch rate) with a fifth of its spread over seeds, and
MemBrain-seg's fine-tuning rate (SGD 1e-5) did not move the network in 300 steps."""


def optimiser_and_rate(
    optimizer: str | None, lr: float | None, from_checkpoint: bool
) -> tuple[str, float, bool]:
    """The optimiser and peak rate a run uses, and whether they are the fine-tuning
    recipe (:data:`FINE_TUNING`: from a checkpoint, neither given)."""
    if from_checkpoint and optimizer is None and lr is None:
        return (*FINE_TUNING, True)
    optimizer = optimizer or "sgd"
    return optimizer, lr if lr is not None else DEFAULT_LR[optimizer], False


MEMBRANE_CENTRES = 1 / 3
"""Share of crops centred on membrane when not told: nnU-Net's oversampling of the rare
class."""

PROBES = 2
"""Probes of a run from a checkpoint (see :attr:`TrainConfig.probes`)."""
FINE_TUNING_DATA = {
    "context": 0,
    "membrane_centres": MEMBRANE_CENTRES,
    "teacher": 0.3,
    "class_prior": "tomogram",
}
"""What a run from a checkpoint trains on when not told: context boxes, the share of
crops centred on membrane, the starting network's weight as a teacher, and the class
prior it trains toward (:mod:`.prior`).

Chosen on held-out tomograms of two phantoms written apart from the starting network's
generator (``benchmarks/held_out_round.py``, ``benchmarks/RESULTS.md``): correcting the
boxes where the network was most wrong, a teacher of 0.3 gained 0.08 Dice and 0.11
precision on the phantom where without it precision fell from 0.65 to 0.41, and random
boxes gained 0.02 Dice there; on the other, whose starting network finds a sixth of the
membrane, it cost 0.007 Dice (inside one sd) for the worst boxes and 0.014 for random
ones, for more precision. A teacher of 1 kept the first's precision (0.66) but cost the
other 0.05 Dice; context boxes and fewer membrane-centred crops did less. Training toward
the tomogram's class prior, with that teacher, raised the first phantom's worst boxes
from 0.641 to 0.673 Dice and from 0.528 to 0.617 precision, gained precision everywhere
else, and cost 0.014 Dice on the other phantom's ``suggest`` boxes (3 seeds)."""
FROM_SCRATCH_DATA = {
    "context": 0,
    "membrane_centres": MEMBRANE_CENTRES,
    "teacher": 0.0,
    "class_prior": "patches",
}
"""The same for a new network (which has no teacher)."""


def fine_tuning_data(given: dict, from_checkpoint: bool) -> dict:
    """The values of :data:`FINE_TUNING_DATA`'s keys a run uses: those ``given`` that are
    not ``None``, else the fine-tuning default from a checkpoint or
    :data:`FROM_SCRATCH_DATA`."""
    defaults = FINE_TUNING_DATA if from_checkpoint else FROM_SCRATCH_DATA
    return {k: given[k] if given.get(k) is not None else v for k, v in defaults.items()}


SCHEDULES = ("poly", "cosine")
"""Decays of the learning rate after warm-up."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved in every checkpoint."""

    iterations: int
    batch_size: int = 2
    crop_size: int = 160
    optimizer: str = "sgd"
    lr: float = 1e-2
    schedule: str = "poly"
    warmup: int = 0
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    seed: int = 0
    val_every: int = 50
    save_every: int = 50
    augment: bool = True
    compile: bool = False
    channels_last: bool = True
    loss: str = DEFAULT_LOSS
    """Loss terms joined with ``+`` (see :mod:`patch_corrections.training.losses`)."""
    normalisation: str = NORMALISATION
    """How the patches' intensities were normalised; saved for ``segment`` to repeat."""
    pixel_size: float | None = None
    """Å per voxel the network is trained at (``None``: unknown); saved for ``segment
    --rescale``."""
    membrane_centres: float = MEMBRANE_CENTRES
    """Share of crops centred on a membrane voxel (the others on any annotated voxel)."""
    context: int = 0
    """Context boxes cut from the patches' tomograms to train beside them (see
    :mod:`patch_corrections.training.context`)."""
    probes: int = 0
    """Context boxes never trained on, where metrics rows say how far the network moved
    (a run from a checkpoint has :data:`PROBES`)."""
    teacher: float = 0.0
    """Weight of the starting network as a teacher: its membrane probabilities are the
    soft targets of the voxels nobody decided (ignore), in a cross-entropy term beside
    the loss (learning without forgetting)."""
    teacher_clearance: int = 0
    """Voxels near labelled membrane (within this many along each axis) the teacher
    leaves alone: a membrane a person labelled goes on into the band, where the starting
    network may have missed it."""
    teacher_from: str | None = None
    """The checkpoint the teacher's weights come from, for a resumed run to load again."""
    prior_shift: float = 0.0
    """What the loss adds to the network's logits: logit(the patches' membrane share) −
    logit(the tomograms'), so the network keeps the tomograms' prior (:mod:`.prior`)."""

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return cls(**values)


def default_warmup(steps: int) -> int:
    """Warm-up steps of a run of ``steps`` when none are given: ``WARMUP_SHARE`` of it."""
    return int(steps * WARMUP_SHARE + 1e-9)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``config.warmup`` steps, then poly (0.9) or cosine decay to 0
    at ``config.iterations``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.iterations - config.warmup))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress) ** 0.9


def make_optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum 0.99: nnU-Net's) or AdamW, at ``config.lr``."""
    import torch

    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(
        network.parameters(),
        lr=config.lr,
        momentum=0.99,
        nesterov=True,
        weight_decay=config.weight_decay,
    )


def run_config(s, start, patches: int, ranks, loss: str, pixel_size) -> TrainConfig:
    """A run's training config: the saved one (extended by ``iterations`` or ``epochs``)
    when resuming, else made from the settings ``s`` (a ``RetrainSettings``) for ``start``
    (a ``RunStart``) with ``patches`` training patches; ``InputError`` for settings that
    cannot make a run."""
    # On resume an epoch counts in the saved run's batch size, not the option's default;
    # under torchrun a step trains every process's batch.
    per_step = (start.config.batch_size if s.resume else s.batch_size) * ranks.size
    steps_per_epoch = max(1, math.ceil(patches / per_step))
    total = s.iterations if s.epochs is None else s.epochs * steps_per_epoch
    if s.resume:
        if total is None:
            return start.config
        if total <= start.resume["step"]:
            raise InputError(
                f"the saved run is at iteration {start.resume['step']}; to extend it, give "
                f"more iterations than that (got {total})"
            )
        return replace(start.config, iterations=total)
    if total is None:
        raise InputError("give --iterations or --epochs")
    if total < 1:
        raise InputError(f"the run needs at least one step, got {total}")
    if s.warmup is not None and s.warmup >= total:
        raise InputError(f"--warmup {s.warmup} must be shorter than the run ({total})")
    optimizer, lr, _ = optimiser_and_rate(s.optimizer, s.lr, start.checkpoint is not None)
    data = run_data(s, start)
    if data["teacher"] and start.checkpoint is None:
        raise InputError("--teacher needs a starting network; give --checkpoint")
    return TrainConfig(
        iterations=total,
        batch_size=s.batch_size,
        crop_size=s.crop_size,
        optimizer=optimizer,
        lr=lr,
        schedule=s.schedule,
        warmup=s.warmup if s.warmup is not None else default_warmup(total),
        seed=s.seed,
        val_every=s.val_every,
        save_every=s.save_every or s.val_every,
        augment=s.augment,
        compile=s.compile,
        channels_last=s.channels_last,
        loss=loss,
        normalisation=start.normalisation,
        pixel_size=pixel_size,
        membrane_centres=data["membrane_centres"],
        context=data["context"],
        probes=PROBES if start.checkpoint is not None else 0,
        teacher=data["teacher"],
        teacher_clearance=s.teacher_clearance,
        teacher_from=str(Path(start.checkpoint.path).resolve()) if data["teacher"] else None,
    )


def run_data(s, start) -> dict:
    """What a run trains on (see :func:`fine_tuning_data`): the settings' choices, else
    the defaults of a run from a checkpoint or from scratch."""
    keys = ("context", "membrane_centres", "teacher", "class_prior")
    given = {key: getattr(s, key) for key in keys}
    return fine_tuning_data(given, start.checkpoint is not None and not s.relabel_rounds)
