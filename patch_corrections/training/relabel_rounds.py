"""The staged SMILE-style run of ``retrain --relabel-rounds``: train on the sure labels, then
in rounds adopt the voxels the network is most confident about inside ignore regions and
train again.

The array side (which voxels are candidates, how many a round adopts) lives in
:mod:`patch_corrections.labels.relabel`, which stays NumPy-only; this module drives the
training, writes each round's adopted voxels as label patches in ``round_<t>/adopted/`` for
inspection, copies the final and best weights into the run's folder, and reports every
round in ``relabel.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..constants import (
    BACKGROUND,
    BEST_CHECKPOINT,
    BORDER_WIDTH,
    LAST_CHECKPOINT,
    MEMBRANE,
    RELABEL_DIR,
    RELABEL_MAX,
)
from ..errors import InputError, warn
from ..io.geometry import geometry_or_unit
from ..io.manifest import padding_zyx
from ..io.patch_folders import find_training_pairs
from ..io.staging import atomic_target, write_text_atomic
from ..io.summary import summary_path, summary_rows
from ..io.volumes import read_info, volume_suffix, write_volume
from ..labels.relabel import adopted_labels, curriculum_share, relabel_candidates, with_adopted
from ..network.unet import UNet
from .config import TrainConfig, default_warmup
from .data import TrainingPatch
from .loop import RunState, train
from .runs import RELABEL_REPORT, plot_curves, round_dir, training_stops, write_metrics
from .validation import predict_patch


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
    ``candidates`` (boolean ``(z, y, x)``, see
    :func:`patch_corrections.labels.relabel.relabel_candidates`), and
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
                warmup=min(config.warmup, default_warmup(steps)),
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


@dataclass(frozen=True)
class RelabelPlan:
    """The rounds of a relabeling run, and the voxels each patch may adopt.

    ``candidates`` holds one boolean ``(z, y, x)`` array per training patch; ``borders``
    the border widths kept out (for the report). ``max_share`` ``None`` is the default.
    """

    rounds: int
    max_share: float | None
    round_iterations: int
    background: bool
    candidates: list[np.ndarray]
    borders: set[int]

    @property
    def share(self) -> float:
        """Share of the predicted membrane the last round adopts."""
        return RELABEL_MAX if self.max_share is None else self.max_share

    def describe(self, first_iterations: int) -> str:
        """The plan in words, for a run that trains ``first_iterations`` steps on the sure
        labels first."""
        classes = "membrane and background" if self.background else "membrane"
        return (
            f"Relabeling: {first_iterations} iterations on the sure labels, then "
            f"{self.rounds} round(s) of {self.round_iterations} adopting up to "
            f"{self.share:.0%} of the predicted {classes} in ignore regions (border band of "
            f"{', '.join(map(str, sorted(self.borders)))} voxels never relabeled)."
        )


def relabel_candidates_of(train_patches, train_dir: Path) -> tuple[list[np.ndarray], set[int]]:
    """Per training patch, the ignore voxels a relabeling round may adopt (outside the
    border band and padding that the training folder's summary records), and the border
    widths used; ``InputError`` when there are none at all."""
    summary = summary_path(train_dir)
    records = summary_rows(summary, f"relabeling assumes a {BORDER_WIDTH}-voxel border band")
    unrecorded = [p.name for p in train_patches if "border" not in records.get(p.name, {})]
    if unrecorded:
        warn(
            f"{summary} records no border band or padding for {len(unrecorded)} training "
            f"patch(es) ({unrecorded[0]}…); relabeling keeps out a {BORDER_WIDTH}-voxel band "
            "there and cannot know their padding"
        )
    candidates, borders = [], set()
    for patch in train_patches:
        record = records.get(patch.name, {})
        border = int(record.get("border", BORDER_WIDTH))
        borders.add(border)
        candidates.append(relabel_candidates(patch.labels, border, padding_zyx(record)))
    if not any(c.any() for c in candidates):
        raise InputError(
            f"{train_dir}: no ignore voxel outside the border band of any training patch; "
            "there is nothing to relabel (drop --relabel-rounds)"
        )
    return candidates, borders


@dataclass(frozen=True)
class RelabelResult:
    """What a relabeling run did: ``report`` is ``relabel.json``'s content; ``step`` and
    ``final`` the last stage's step and final metrics row; ``best_dice`` the best
    validation Dice of all stages (-1 without validation)."""

    report: dict
    step: int
    final: dict
    best_dice: float


def run_relabeling(
    network: UNet,
    patches: tuple[list[TrainingPatch], list[TrainingPatch]],
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    split: dict,
    plan: RelabelPlan,
    train_dir: Path,
    progress: Callable[[int, int, float | None], None],
) -> RelabelResult:
    """Train in stages (see :func:`train_with_relabeling`) on the training and validation
    ``patches``, write what each round adopted, the stages' curves, ``relabel.json``, and
    the final and best weights into ``out_dir``. ``progress`` hears the steps done of all
    stages, their total and the latest training loss."""
    train_patches, val_patches = patches
    max_share = plan.share
    saver = _AdoptedSaver(out_dir, train_patches, train_dir, plan, max_share, config.iterations)
    total = config.iterations + plan.rounds * plan.round_iterations
    stops = training_stops(
        out_dir,
        config,
        lambda stop: (
            f"Interrupted at iteration {stop.step} of round {saver.round}; saved {stop.path}. "
            "A relabeling run cannot be resumed: start a new run from it with --checkpoint."
        ),
        ", or predicting a whole training patch to relabel it; use a smaller batch or crop",
    )
    progress(0, total, None)
    with stops:
        states = train_with_relabeling(
            network,
            train_patches,
            val_patches,
            config,
            out_dir,
            device,
            rounds=plan.rounds,
            max_share=max_share,
            candidates=plan.candidates,
            round_iterations=plan.round_iterations,
            background=plan.background,
            on_round=saver.save,
            on_step=lambda step, value: progress(saver.offset + step, total, value),
            on_metrics=lambda rows: write_metrics(
                round_dir(out_dir, saver.round) / "metrics.csv", rows
            ),
            split=split,
        )
    rows = _stage_rows(out_dir, config, plan, saver.stages, states)
    best = _copy_results(out_dir, plan.rounds, rows)
    report = {
        "rounds": plan.rounds,
        "max_share": max_share,
        "round_iterations": plan.round_iterations,
        "background": plan.background,
        "loss": config.loss,
        "stages": rows,
        "last": str(out_dir / LAST_CHECKPOINT),
        "best": str(out_dir / BEST_CHECKPOINT) if best is not None else None,
        "best_round": best["round"] if best is not None else None,
    }
    write_text_atomic(out_dir / RELABEL_REPORT, json.dumps(report, indent=2) + "\n")
    final = states[-1].history[-1] if states[-1].history else {}
    best_dice = best["best_val_dice"] if best is not None else -1.0
    return RelabelResult(report, states[-1].step, final, best_dice)


class _AdoptedSaver:
    """Writes each round's adopted voxels as label patches in ``round_<t>/adopted/``, named
    and placed like their labels, and keeps the round's numbers for the report."""

    def __init__(self, out_dir, train_patches, train_dir, plan, max_share, first_iterations):
        self.out_dir, self.patches, self.plan = out_dir, train_patches, plan
        self.max_share, self.first_iterations = max_share, first_iterations
        self.round, self.offset = 0, 0
        self.stages: list[dict] = []
        self.labels = {
            name: (
                label,
                geometry_or_unit(read_info(label).geometry, label, "adopted labels are written"),
            )
            for name, _, label in find_training_pairs(train_dir)
        }

    def save(self, t: int, adopted_patches: list[np.ndarray]) -> None:
        folder = round_dir(self.out_dir, t) / RELABEL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        membrane, background = {}, {}
        for patch, adopted in zip(self.patches, adopted_patches):
            label, geometry = self.labels[patch.name]
            path = folder / f"{patch.name}{volume_suffix(label)}"
            write_volume(path, adopted, geometry, overwrite=True)
            membrane[patch.name] = int(np.count_nonzero(adopted == MEMBRANE))
            background[patch.name] = int(np.count_nonzero(adopted == BACKGROUND))
        stage = {
            "round": t,
            "share": curriculum_share(t, self.plan.rounds, self.max_share),
            "iterations": self.plan.round_iterations,
            "adopted": membrane,
            "adopted_total": sum(membrane.values()),
        }
        if self.plan.background:
            stage["adopted_background"] = background
            stage["adopted_background_total"] = sum(background.values())
        self.stages.append({**stage, "adopted_dir": str(folder)})
        self.offset += self.first_iterations if t == 1 else self.plan.round_iterations
        self.round = t


def _stage_rows(out_dir, config, plan: RelabelPlan, stages, states) -> list[dict]:
    """One report row per stage, round 0 first, each with its curves drawn."""
    rows = [{"round": 0, "share": 0.0, "iterations": config.iterations, "adopted_total": 0}]
    if plan.background:
        rows[0]["adopted_background_total"] = 0
    rows += stages
    for row, state in zip(rows, states):
        folder = round_dir(out_dir, row["round"])
        plot_curves(state.history, folder / "curves.png")
        final = state.history[-1] if state.history else {}
        row.update(
            folder=str(folder),
            train_loss=final.get("train_loss"),
            val_dice=final.get("val_dice"),
            best_val_dice=state.best_dice if (folder / BEST_CHECKPOINT).exists() else None,
        )
    return rows


def _copy_results(out_dir: Path, rounds: int, rows: list[dict]) -> dict | None:
    """Copy the last round's weights, and the best validated ones, into ``out_dir``; the
    row of the best stage (``None`` without validation)."""
    with atomic_target(out_dir / LAST_CHECKPOINT, ".pt") as temporary:
        shutil.copyfile(round_dir(out_dir, rounds) / LAST_CHECKPOINT, temporary)
    validated = [r for r in rows if r["best_val_dice"] is not None]
    best = max(validated, key=lambda r: r["best_val_dice"]) if validated else None
    if best is not None:
        with atomic_target(out_dir / BEST_CHECKPOINT, ".pt") as temporary:
            shutil.copyfile(Path(best["folder"]) / BEST_CHECKPOINT, temporary)
    return best
