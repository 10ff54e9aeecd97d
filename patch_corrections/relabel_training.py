"""The staged SMILE-style run: train on sure labels, then in rounds adopt the voxels the
network is most confident about inside ignore regions and train again.

The array side (which voxels are candidates, how many a round adopts) lives in
:mod:`patch_corrections.relabel`, which stays numpy-only; this module drives the training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .data import TrainingPatch
from .model import UNet
from .relabel import adopted_labels, curriculum_share, with_adopted
from .train import RunState, TrainConfig, predict_patch, train

RELABEL_MAX = 0.5
"""Default share of the predicted membrane in ignore regions adopted by the last round."""


def round_dir(out_dir: Path, round_index: int) -> Path:
    """Folder of one stage of a relabeling run: ``round_0`` trains on sure labels only."""
    return Path(out_dir) / f"round_{round_index}"


def relabel_round_dirs(out_dir: Path) -> list[Path]:
    """The ``round_<t>`` folders of a relabeling run in ``out_dir``, in round order."""
    found = [
        (int(p.name[6:]), p)
        for p in Path(out_dir).glob("round_*")
        if p.is_dir() and p.name[6:].isdigit()
    ]
    return [p for _, p in sorted(found)]


def train_with_relabeling(
    network: UNet,
    train_patches: list[TrainingPatch],
    val_patches: list[TrainingPatch],
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    *,
    rounds: int,
    max_share: float,
    candidates: list[np.ndarray],
    round_iterations: int | None = None,
    background: bool = False,
    on_round: Callable[[int, list[np.ndarray]], None] | None = None,
    **train_options,
) -> list[RunState]:
    """Train on sure labels, then ``rounds`` times: adopt confident membrane, train again.

    Stage 0 is ``train`` on ``train_patches`` as they are, into ``round_0/``. Stage ``t``
    predicts every training patch with the current network, adopts the
    ``max_share · t / rounds`` most confident voxels it calls membrane among that patch's
    ``candidates`` (boolean ``(z, y, x)``, see :func:`relabel.relabel_candidates`), and
    trains on the original labels plus those (recomputed each round, not accumulated) for
    ``round_iterations`` steps (default ``config.iterations``) with a fresh schedule, into
    ``round_<t>/``. Validation always uses the validation patches' own labels.

    Parameters
    ----------
    background
        Also adopt the same share of the voxels predicted background, as background.
    on_round
        Called with the round number and what it adopted, one label patch per training
        patch (see :func:`relabel.adopted_labels`), before that round trains (to save them
        for inspection).
    train_options
        Passed to every :func:`train` call (progress callbacks, ``split``).
    """
    states: list[RunState] = []
    steps = round_iterations or config.iterations
    patches, stage = train_patches, config
    for t in range(rounds + 1):
        if t > 0:
            share = curriculum_share(t, rounds, max_share)
            adopted = [
                adopted_labels(
                    predict_patch(network, patch.image, device), allowed, share, background
                )
                for patch, allowed in zip(train_patches, candidates)
            ]
            if on_round is not None:
                on_round(t, adopted)
            patches = [
                patch.with_labels(with_adopted(patch.labels, labels))
                for patch, labels in zip(train_patches, adopted)
            ]
            stage = replace(
                config,
                iterations=steps,
                warmup=min(config.warmup, steps // 20),
                seed=config.seed + t,  # other crops than stage 0's first steps
            )
        states.append(
            train(
                network,
                patches,
                val_patches,
                stage,
                round_dir(out_dir, t),
                device,
                **train_options,
            )
        )
    return states
