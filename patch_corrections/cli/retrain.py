"""``retrain``: fine-tune the U-Net on training pairs."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_LOSS, PATCH_SIZE, RELABEL_DIR
from ..workflows.training import RetrainReport, RetrainSettings, retrain
from ._common import THREADS_HELP, console, print_warnings, use_threads, user_errors

Preset = Enum("Preset", {n: n for n in ("full", "small", "tiny")}, type=str)
Optimiser = Enum("Optimiser", {n: n for n in ("sgd", "adamw")}, type=str)
Schedule = Enum("Schedule", {n: n for n in ("poly", "cosine")}, type=str)

# The help's panels, so that 30 options read at 80 columns.
_DATA, _OUTPUT, _NETWORK, _DEVICE = "Data", "Output", "Network", "Device"
_OPTIMISATION, _RELABELING = "Optimisation", "Relabeling (--relabel-rounds)"


@user_errors
def retrain_command(
    train_dir: Annotated[
        Path,
        typer.Option(
            "--train-dir",
            "-t",
            rich_help_panel=_DATA,
            help="Training folder (imagesTr/, labelsTr/) from merge_corrections or MemBrain-seg.",
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            rich_help_panel=_OUTPUT,
            help="Folder for last.pt, best.pt, metrics.csv and curves.png.",
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            rich_help_panel=_NETWORK,
            help="Start from these weights: ours or a MemBrain-seg .ckpt.",
        ),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            rich_help_panel=_NETWORK,
            help="Allow a checkpoint that holds pickled objects beyond weights.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            rich_help_panel=_OUTPUT,
            help="Continue the run saved in --out-dir where it stopped, with its settings; "
            "--iterations or --epochs may extend it.",
        ),
    ] = False,
    val_dir: Annotated[
        Path | None,
        typer.Option(
            "--val-dir", rich_help_panel=_DATA, help="Training folder used only for validation."
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            rich_help_panel=_DATA,
            help="Share of training patches held out when there is no --val-dir.",
        ),
    ] = 0.2,
    preset: Annotated[
        Preset,
        typer.Option(
            "--preset",
            rich_help_panel=_NETWORK,
            help="Network width when training from scratch (full = MemBrain-seg's).",
        ),
    ] = Preset.full,
    device: Annotated[
        str, typer.Option("--device", rich_help_panel=_DEVICE, help="auto, cpu, cuda or cuda:N.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", rich_help_panel=_DEVICE, help=THREADS_HELP)
    ] = None,
    compile_network: Annotated[
        bool,
        typer.Option(
            "--compile",
            rich_help_panel=_DEVICE,
            help="torch.compile the network: on a GPU about twice the steps per second "
            "(measured on an H200), after tens of seconds of compiling.",
        ),
    ] = False,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last/--no-channels-last",
            rich_help_panel=_DEVICE,
            help="Channels-last 3D memory layout on CUDA.",
        ),
    ] = True,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations",
            rich_help_panel=_OPTIMISATION,
            help="Training steps. One of --iterations and --epochs is required "
            "(with --resume: to extend the run).",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            rich_help_panel=_OPTIMISATION,
            help="Passes over the training patches (one crop each), instead of --iterations; "
            "one of the two is required.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", rich_help_panel=_OPTIMISATION, help="Crops per step.")
    ] = 2,
    crop_size: Annotated[
        int,
        typer.Option(
            "--crop-size",
            rich_help_panel=_OPTIMISATION,
            help="Edge of the cubic training crops, in voxels.",
        ),
    ] = PATCH_SIZE,
    optimiser: Annotated[
        Optimiser,
        typer.Option(
            "--optimizer",
            rich_help_panel=_OPTIMISATION,
            help="SGD (Nesterov, momentum 0.99) or AdamW.",
        ),
    ] = Optimiser.sgd,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            rich_help_panel=_OPTIMISATION,
            help="Peak learning rate; default 1e-2 (SGD) or 3e-4 (AdamW).",
        ),
    ] = None,
    schedule: Annotated[
        Schedule,
        typer.Option("--schedule", rich_help_panel=_OPTIMISATION, help="Decay after warm-up."),
    ] = Schedule.poly,
    warmup: Annotated[
        int | None,
        typer.Option(
            "--warmup",
            rich_help_panel=_OPTIMISATION,
            help="Warm-up steps; default 5 % of the run.",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option("--seed", rich_help_panel=_OPTIMISATION, help="Seed of every random choice."),
    ] = 0,
    no_augment: Annotated[
        bool,
        typer.Option(
            "--no-augment", rich_help_panel=_DATA, help="Train without data augmentation."
        ),
    ] = False,
    val_every: Annotated[
        int,
        typer.Option(
            "--val-every", rich_help_panel=_OUTPUT, help="Validate and log every N steps."
        ),
    ] = 50,
    save_every: Annotated[
        int | None,
        typer.Option(
            "--save-every",
            rich_help_panel=_OUTPUT,
            help="Write last.pt every N steps; default: --val-every.",
        ),
    ] = None,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            rich_help_panel=_OPTIMISATION,
            help="Loss terms joined by '+': bce, dice, rrw (region-wise, Valverde & Tohka); "
            "e.g. rrw or rrw+dice.",
        ),
    ] = DEFAULT_LOSS,
    relabel_rounds: Annotated[
        int,
        typer.Option(
            "--relabel-rounds",
            rich_help_panel=_RELABELING,
            help="After training on the sure labels, this many rounds that adopt the most "
            "confident predicted membrane of the ignore regions and train again (SMILE-style).",
        ),
    ] = 0,
    relabel_max: Annotated[
        float | None,
        typer.Option(
            "--relabel-max",
            rich_help_panel=_RELABELING,
            help="Share γ of the predicted membrane in ignore regions adopted by the last "
            "round; round t of T adopts γ·t/T. Default 0.5.",
        ),
    ] = None,
    relabel_iterations: Annotated[
        int | None,
        typer.Option(
            "--relabel-iterations",
            rich_help_panel=_RELABELING,
            help="Training steps of each relabeling round; default: half of --iterations.",
        ),
    ] = None,
    relabel_background: Annotated[
        bool,
        typer.Option(
            "--relabel-background",
            rich_help_panel=_RELABELING,
            help="Also adopt the same share of the predicted background of ignore regions, "
            "as background.",
        ),
    ] = False,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            rich_help_panel=_DATA,
            help="Å per voxel of the training patches, when their headers lack it or are "
            "wrong. Patches at another pixel size than the starting network's (10 Å for "
            "MemBrain-seg) are resampled to it.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            rich_help_panel=_OUTPUT,
            help="Start a new run in an --out-dir that holds one.",
        ),
    ] = False,
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
        optimizer=optimiser.value,
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
    )
    use_threads(threads)
    with console() as listener:
        report = retrain(
            train_dir, out_dir, checkpoint, val_dir, settings=settings, listener=listener
        )
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun, the first process reports
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
