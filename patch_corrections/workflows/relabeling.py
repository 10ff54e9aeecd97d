"""The staged relabeling run of ``retrain --relabel-rounds`` (SMILE-style): train on the sure
labels, then adopt the most confident predictions of the ignore regions round by round.

Each round's adopted voxels are written as label patches in ``round_<t>/adopted/`` for
inspection; the final and best weights are copied to the run's folder, and
``relabel.json`` reports every round.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import BACKGROUND, BORDER_WIDTH, MEMBRANE, MERGE_SUMMARY_NAME, RELABEL_DIR
from ..errors import InputError
from ..io.files import atomic_target, write_text_atomic
from ..io.manifest import padding_zyx
from ..io.volumes import Geometry, read_info, volume_suffix, write_volume
from ._common import summary_rows, warn
from ._runs import plot_curves, training_stops, write_metrics
from .events import Listener, Progress

RELABEL_REPORT = "relabel.json"
"""Per-round report of a relabeling run, in its output folder."""


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


def relabel_candidates_of(train_patches, train_dir: Path) -> tuple[list[np.ndarray], set[int]]:
    """Per training patch, the ignore voxels a relabeling round may adopt (outside the
    border band and padding that the training folder's summary records), and the border
    widths used; ``InputError`` when there are none at all."""
    from ..relabel import relabel_candidates

    records = summary_rows(
        Path(train_dir) / MERGE_SUMMARY_NAME,
        f"relabeling assumes a {BORDER_WIDTH}-voxel border band",
    )
    unrecorded = [p.name for p in train_patches if "border" not in records.get(p.name, {})]
    if unrecorded:
        warn(
            f"{train_dir / MERGE_SUMMARY_NAME} records no border band or padding for "
            f"{len(unrecorded)} training patch(es) ({unrecorded[0]}…); relabeling keeps out "
            f"a {BORDER_WIDTH}-voxel band there and cannot know their padding"
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


def run_relabeling(
    network,
    train_patches,
    val_patches,
    config,
    out_dir: Path,
    device,
    split: dict,
    plan: RelabelPlan,
    train_dir: Path,
    listener: Listener,
) -> tuple[dict, int, dict, float]:
    """Train in stages, write and copy the results; ``relabel.json``'s content, and the
    last stage's step and final metrics row, and the best validation Dice of all stages."""
    from ..data import find_training_pairs
    from ..relabel import curriculum_share
    from ..relabel_training import RELABEL_MAX, round_dir, train_with_relabeling
    from ..train import BEST, LAST

    rounds, background = plan.rounds, plan.background
    max_share = RELABEL_MAX if plan.max_share is None else plan.max_share
    # Adopted voxels are saved named and placed like their label: read each header once.
    label_files = {
        name: (label, read_info(label).geometry or Geometry((1.0, 1.0, 1.0)))
        for name, _, label in find_training_pairs(train_dir)
    }
    total = config.iterations + rounds * plan.round_iterations
    classes = "membrane and background" if background else "membrane"
    listener.message(
        f"Relabeling: {config.iterations} iterations on the sure labels, then {rounds} "
        f"round(s) of {plan.round_iterations} adopting up to {max_share:.0%} of the predicted "
        f"{classes} in ignore regions (border band of "
        f"{', '.join(map(str, sorted(plan.borders)))} voxels never relabeled)."
    )
    stages: list[dict] = []
    current = {"round": 0, "offset": 0}

    def save_adopted(t: int, adopted_patches) -> None:
        folder = round_dir(out_dir, t) / RELABEL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        membrane, background_counts = {}, {}
        for patch, adopted in zip(train_patches, adopted_patches):
            label, geometry = label_files[patch.name]
            path = folder / f"{patch.name}{volume_suffix(label)}"
            write_volume(path, adopted, geometry, overwrite=True)
            membrane[patch.name] = int(np.count_nonzero(adopted == MEMBRANE))
            background_counts[patch.name] = int(np.count_nonzero(adopted == BACKGROUND))
        stage = {
            "round": t,
            "share": curriculum_share(t, rounds, max_share),
            "iterations": plan.round_iterations,
            "adopted": membrane,
            "adopted_total": sum(membrane.values()),
        }
        if background:
            stage["adopted_background"] = background_counts
            stage["adopted_background_total"] = sum(background_counts.values())
        stages.append({**stage, "adopted_dir": str(folder)})
        current["offset"] += config.iterations if t == 1 else plan.round_iterations
        current["round"] = t

    def on_step(step: int, value: float) -> None:
        listener.progress(Progress("Training", current["offset"] + step, total, value))

    stops = training_stops(
        out_dir,
        config,
        lambda stop: (
            f"Interrupted at iteration {stop.step} of round {current['round']}; "
            f"saved {stop.path}. A relabeling run cannot be resumed: start a new run from it "
            "with --checkpoint."
        ),
        ", or predicting a whole training patch to relabel it; use a smaller batch or crop",
    )
    listener.progress(Progress("Training", 0, total))
    with stops:
        states = train_with_relabeling(
            network,
            train_patches,
            val_patches,
            config,
            out_dir,
            device,
            rounds=rounds,
            max_share=max_share,
            candidates=plan.candidates,
            round_iterations=plan.round_iterations,
            background=background,
            on_round=save_adopted,
            on_step=on_step,
            on_metrics=lambda rows: write_metrics(
                round_dir(out_dir, current["round"]) / "metrics.csv", rows
            ),
            split=split,
        )

    rows = [{"round": 0, "share": 0.0, "iterations": config.iterations, "adopted_total": 0}]
    if background:
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
            best_val_dice=state.best_dice if (folder / BEST).exists() else None,
        )
    with atomic_target(out_dir / LAST, ".pt") as temporary:
        shutil.copyfile(round_dir(out_dir, rounds) / LAST, temporary)
    validated = [r for r in rows if r["best_val_dice"] is not None]
    best = max(validated, key=lambda r: r["best_val_dice"]) if validated else None
    if best is not None:
        with atomic_target(out_dir / BEST, ".pt") as temporary:
            shutil.copyfile(Path(best["folder"]) / BEST, temporary)
    report = {
        "rounds": rounds,
        "max_share": max_share,
        "round_iterations": plan.round_iterations,
        "background": background,
        "loss": config.loss,
        "stages": rows,
        "last": str(out_dir / LAST),
        "best": str(out_dir / BEST) if best is not None else None,
        "best_round": best["round"] if best is not None else None,
    }
    write_text_atomic(out_dir / RELABEL_REPORT, json.dumps(report, indent=2) + "\n")
    last_state = states[-1]
    final = last_state.history[-1] if last_state.history else {}
    best_dice = best["best_val_dice"] if best is not None else -1.0
    return report, last_state.step, final, best_dice
