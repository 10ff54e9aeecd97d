"""``retrain``: fine-tune the U-Net on training pairs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..constants import (
    MEMBRAIN_PIXEL_SIZE,
    PRESET_NAMES,
    RELABEL_DIR,
    RELABEL_MAX,
    WARMUP_SHARE,
)
from ..training.config import DEFAULT_LR, FINE_TUNING_DATA, SCHEDULES
from ..training.prior import CLASS_PRIORS
from ..workflows.training import RetrainReport, RetrainSettings, retrain
from . import options
from ._console import console, print_warnings
from ._errors import user_errors

Preset = Enum("Preset", {n: n for n in PRESET_NAMES}, type=str)
Optimiser = Enum("Optimiser", {n: n for n in DEFAULT_LR}, type=str)
Schedule = Enum("Schedule", {n: n for n in SCHEDULES}, type=str)
ClassPrior = Enum("ClassPrior", {n: n for n in CLASS_PRIORS}, type=str)

# The help's panels, so that 30 options read at 80 columns.
_DATA, _OUTPUT, _NETWORK, _DEVICE = "Data", "Output", "Network", "Device"
_OPTIMISATION, _RELABELING = "Optimisation", "Relabeling (--relabel-rounds)"


def _lr(value: float) -> str:
    """``1e-2`` for 0.01: a learning rate as the help gives it."""
    return np.format_float_scientific(value, trim="-", exp_digits=1)


_TRAIN_SOURCE = (
    "from merge_corrections or MemBrain-seg; required, but with --resume: the saved run's"
)
_OUT_DIR = "Folder for last.pt, best.pt, metrics.csv and curves.png."
_CHECKPOINT = "Start from these weights"
_OVERWRITE = "the run in --out-dir with a new one"
_VAL_DIR = typer.Option(
    "--val-dir", rich_help_panel=_DATA, help="Training folder used only for validation."
)
_VAL_FRACTION = typer.Option(
    "--val-fraction",
    rich_help_panel=_DATA,
    help="Share of training patches held out when there is no --val-dir.",
)
_NO_AUGMENT = typer.Option(
    "--no-augment", rich_help_panel=_DATA, help="Train without data augmentation."
)
_PIXEL_SIZE = typer.Option(
    "--pixel-size",
    rich_help_panel=_DATA,
    help="Å per voxel of the training patches, when their headers lack it or are wrong. "
    "Patches at another pixel size than the starting network's "
    f"({MEMBRAIN_PIXEL_SIZE:g} Å for MemBrain-seg) are resampled to it.",
)
_RESUME = typer.Option(
    "--resume",
    rich_help_panel=_OUTPUT,
    help="Continue the run saved in --out-dir where it stopped, with its settings; "
    "--iterations or --epochs may extend it.",
)
_VAL_EVERY = typer.Option(
    "--val-every", rich_help_panel=_OUTPUT, help="Validate and log every N steps."
)
_SAVE_EVERY = typer.Option(
    "--save-every",
    rich_help_panel=_OUTPUT,
    help="Write last.pt every N steps; default: --val-every.",
)
_PRESET = typer.Option(
    "--preset",
    rich_help_panel=_NETWORK,
    help="Network width when training from scratch (full = MemBrain-seg's).",
)
_CHANNELS_LAST = typer.Option(
    "--channels-last/--no-channels-last",
    rich_help_panel=_DEVICE,
    help="Channels-last 3D memory layout on CUDA.",
)
_ITERATIONS = typer.Option(
    "--iterations",
    rich_help_panel=_OPTIMISATION,
    help="Training steps. One of --iterations and --epochs is required (with --resume: to "
    "extend the run).",
)
_EPOCHS = typer.Option(
    "--epochs",
    rich_help_panel=_OPTIMISATION,
    help="Passes over the training patches (one crop each), instead of --iterations; one of "
    "the two is required.",
)
_BATCH_SIZE = typer.Option("--batch-size", rich_help_panel=_OPTIMISATION, help="Crops per step.")
_CROP_SIZE = typer.Option(
    "--crop-size",
    rich_help_panel=_OPTIMISATION,
    help="Edge of the cubic training crops, in voxels.",
)
_OPTIMISER = typer.Option(
    "--optimizer",
    rich_help_panel=_OPTIMISATION,
    help="SGD (Nesterov, momentum 0.99) or AdamW; default: AdamW at 1e-3 from a "
    "--checkpoint when --lr is not given either (the fine-tuning recipe), else SGD.",
)
_LR = typer.Option(
    "--lr",
    rich_help_panel=_OPTIMISATION,
    help=f"Peak learning rate; default {_lr(DEFAULT_LR['sgd'])} (SGD) or "
    f"{_lr(DEFAULT_LR['adamw'])} (AdamW).",
)
_SCHEDULE = typer.Option("--schedule", rich_help_panel=_OPTIMISATION, help="Decay after warm-up.")
_WARMUP = typer.Option(
    "--warmup",
    rich_help_panel=_OPTIMISATION,
    help=f"Warm-up steps; default {WARMUP_SHARE:.0%} of the run.",
)
_LOSS = typer.Option(
    "--loss",
    rich_help_panel=_OPTIMISATION,
    help="Loss terms joined by '+': bce, dice, rrw (region-wise, Valverde & Tohka); e.g. rrw "
    "or rrw+dice.",
)
_CONTEXT = typer.Option(
    "--context",
    rich_help_panel=_DATA,
    help="Context boxes to cut from the patches' tomograms (as merge_corrections "
    "recorded them) and train beside the patches on the segmentation's own calls, so the "
    "network keeps what it knew where nobody corrected; two more, never trained on, show "
    "in metrics.csv how far its calls moved. Default: the fine-tuning default from a "
    "checkpoint, else 0.",
)
_MEMBRANE_CENTRES = typer.Option(
    "--membrane-centres",
    rich_help_panel=_DATA,
    help="Share of crops centred on a membrane voxel (the others on any annotated voxel). "
    "Default: the fine-tuning default from a checkpoint, else 0.33.",
)
_TEACHER = typer.Option(
    "--teacher",
    rich_help_panel=_DATA,
    help="Weight of the starting network as a teacher: on the voxels nobody decided "
    "(the border band, Ignore, unlabelled) its membrane probabilities are the targets, so "
    "the network learns the corrections without drifting elsewhere; 0 turns it off. "
    f"Needs --checkpoint. Default: {FINE_TUNING_DATA['teacher']:g} from a checkpoint, else 0.",
)
_TEACHER_CLEARANCE = typer.Option(
    "--teacher-clearance",
    rich_help_panel=_DATA,
    help="Voxels near labelled membrane (within this many along each axis) that the "
    "teacher leaves alone: a membrane you labelled may go on into the band, where the "
    "starting network missed it.",
)
_CLASS_PRIOR = typer.Option(
    "--class-prior",
    rich_help_panel=_DATA,
    help="The membrane share to train toward. Patches chosen where the network is wrong "
    "hold more membrane than the tomogram; 'tomogram' shifts the loss's logits so the "
    "network keeps the tomogram's share, estimated from how the corrections changed the "
    "membrane of the segmentation the patches were cut from (recorded by extract_patches "
    "and merge_corrections); 'patches' trains on the patches' own share. Default: "
    f"{FINE_TUNING_DATA['class_prior']} from a checkpoint, else patches.",
)
_RELABEL_ROUNDS = typer.Option(
    "--relabel-rounds",
    rich_help_panel=_RELABELING,
    help="After training on the sure labels, this many rounds that adopt the most confident "
    "predicted membrane of the ignore regions and train again (SMILE-style).",
)
_RELABEL_MAX = typer.Option(
    "--relabel-max",
    rich_help_panel=_RELABELING,
    help="Share γ of the predicted membrane in ignore regions adopted by the last round; "
    f"round t of T adopts γ·t/T. Default {RELABEL_MAX:g}.",
)
_RELABEL_ITERATIONS = typer.Option(
    "--relabel-iterations",
    rich_help_panel=_RELABELING,
    help="Training steps of each relabeling round; default: half of --iterations.",
)
_RELABEL_BACKGROUND = typer.Option(
    "--relabel-background",
    rich_help_panel=_RELABELING,
    help="Also adopt the same share of the predicted background of ignore regions, as background.",
)


@user_errors
def retrain_command(
    out_dir: Annotated[Path, options.out_dir(_OUT_DIR, _OUTPUT)],
    train_dir: Annotated[Path | None, options.train_dir(_TRAIN_SOURCE, _DATA)] = None,
    checkpoint: Annotated[Path | None, options.checkpoint(_CHECKPOINT, _NETWORK)] = None,
    trust_checkpoint: Annotated[
        bool, options.trust_checkpoint(_NETWORK)
    ] = RetrainSettings.trust_checkpoint,
    resume: Annotated[bool, _RESUME] = RetrainSettings.resume,
    val_dir: Annotated[Path | None, _VAL_DIR] = None,
    val_fraction: Annotated[float, _VAL_FRACTION] = RetrainSettings.val_fraction,
    preset: Annotated[Preset, _PRESET] = Preset(RetrainSettings.preset),
    device: Annotated[str, options.device(_DEVICE)] = RetrainSettings.device,
    threads: Annotated[int | None, options.threads(_DEVICE)] = None,
    compile_network: Annotated[
        bool, options.compile_network(_DEVICE, training=True)
    ] = RetrainSettings.compile,
    channels_last: Annotated[bool, _CHANNELS_LAST] = RetrainSettings.channels_last,
    iterations: Annotated[int | None, _ITERATIONS] = RetrainSettings.iterations,
    epochs: Annotated[int | None, _EPOCHS] = RetrainSettings.epochs,
    batch_size: Annotated[int, _BATCH_SIZE] = RetrainSettings.batch_size,
    crop_size: Annotated[int, _CROP_SIZE] = RetrainSettings.crop_size,
    optimiser: Annotated[Optimiser | None, _OPTIMISER] = RetrainSettings.optimizer,
    lr: Annotated[float | None, _LR] = RetrainSettings.lr,
    schedule: Annotated[Schedule, _SCHEDULE] = Schedule(RetrainSettings.schedule),
    warmup: Annotated[int | None, _WARMUP] = RetrainSettings.warmup,
    seed: Annotated[int, options.seed(_OPTIMISATION)] = RetrainSettings.seed,
    no_augment: Annotated[bool, _NO_AUGMENT] = not RetrainSettings.augment,
    val_every: Annotated[int, _VAL_EVERY] = RetrainSettings.val_every,
    save_every: Annotated[int | None, _SAVE_EVERY] = RetrainSettings.save_every,
    loss: Annotated[str, _LOSS] = RetrainSettings.loss,
    relabel_rounds: Annotated[int, _RELABEL_ROUNDS] = RetrainSettings.relabel_rounds,
    relabel_max: Annotated[float | None, _RELABEL_MAX] = RetrainSettings.relabel_max,
    relabel_iterations: Annotated[
        int | None, _RELABEL_ITERATIONS
    ] = RetrainSettings.relabel_iterations,
    relabel_background: Annotated[bool, _RELABEL_BACKGROUND] = RetrainSettings.relabel_background,
    pixel_size: Annotated[float | None, _PIXEL_SIZE] = RetrainSettings.pixel_size,
    context: Annotated[int | None, _CONTEXT] = RetrainSettings.context,
    membrane_centres: Annotated[
        float | None, _MEMBRANE_CENTRES
    ] = RetrainSettings.membrane_centres,
    teacher: Annotated[float | None, _TEACHER] = RetrainSettings.teacher,
    teacher_clearance: Annotated[int, _TEACHER_CLEARANCE] = RetrainSettings.teacher_clearance,
    class_prior: Annotated[ClassPrior | None, _CLASS_PRIOR] = RetrainSettings.class_prior,
    overwrite: Annotated[bool, options.overwrite(_OVERWRITE, _OUTPUT)] = RetrainSettings.overwrite,
) -> None:
    """Fine-tune the U-Net on training pairs; ignore voxels are left out of the loss.

    Give the run's length with --iterations or --epochs: one of them is required.

    With --relabel-rounds, the run trains in stages (round_0/ on the sure labels, then
    round_1/ ...), saves the voxels each round adopted in round_<t>/adopted/, and copies the
    final weights to --out-dir/last.pt and the best validated ones to best.pt.
    """
    settings = RetrainSettings(
        iterations=iterations,
        epochs=epochs,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
        val_fraction=val_fraction,
        preset=preset.value,
        batch_size=batch_size,
        crop_size=crop_size,
        optimizer=optimiser.value if optimiser is not None else None,
        lr=lr,
        schedule=schedule.value,
        warmup=warmup,
        seed=seed,
        device=device,
        compile=compile_network,
        augment=not no_augment,
        channels_last=channels_last,
        val_every=val_every,
        save_every=save_every,
        loss=loss,
        relabel_rounds=relabel_rounds,
        relabel_max=relabel_max,
        relabel_iterations=relabel_iterations,
        relabel_background=relabel_background,
        pixel_size=pixel_size,
        overwrite=overwrite,
        context=context,
        membrane_centres=membrane_centres,
        teacher=teacher,
        teacher_clearance=teacher_clearance,
        class_prior=class_prior.value if class_prior is not None else None,
    )
    options.use_threads(threads)
    with console() as listener:
        report = retrain(
            train_dir, out_dir, checkpoint, val_dir, settings=settings, listener=listener
        )
    if report.reporting:  # under torchrun, the first process reports
        render(report)


def render(report: RetrainReport) -> None:
    """The final losses and where the weights are; a table of rounds for relabeling."""
    if report.relabel is not None:
        _render_rounds(report)
    else:
        final = report.final
        summary = f"train loss {final.get('train_loss', float('nan')):.4f}"
        if "val_dice" in final:
            summary += (
                f", val loss {final['val_loss']:.4f}, val Dice {final['val_dice']:.4f}"
                f" (best {report.best_dice:.4f} in {report.best})"
            )
        typer.echo(f"Done: iteration {report.step}, {summary}.")
        typer.echo(f"Checkpoint: {report.last}; metrics: {report.metrics}")
    print_warnings(report.warnings)


def _render_rounds(report: RetrainReport) -> None:
    relabel = report.relabel or {}
    rows, background = relabel["stages"], relabel["background"]
    typer.echo(f"Done: {len(rows)} stage(s) in {report.out_dir}:")
    extra = f"  {'background':>10}" if background else ""
    typer.echo(
        f"  {'round':>5}  {'share':>6}  {'membrane':>9}{extra}  {'train loss':>10}  "
        f"{'val Dice':>8}"
    )
    for r in rows:
        loss = "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        dice = "-" if r["val_dice"] is None else f"{r['val_dice']:.4f}"
        extra = f"  {r['adopted_background_total']:>10}" if background else ""
        typer.echo(
            f"  {r['round']:>5}  {r['share']:>6.1%}  {r['adopted_total']:>9}{extra}  "
            f"{loss:>10}  {dice:>8}"
        )
    where = (
        f"; best validated (round {relabel['best_round']}): {report.best}" if report.best else ""
    )
    typer.echo(f"Final weights: {report.last}{where}")
    typer.echo(
        f"Adopted labels: round_<t>/{RELABEL_DIR}/ (1 membrane, 0 background, 2 not "
        f"adopted); report: {report.out_dir / 'relabel.json'}"
    )
