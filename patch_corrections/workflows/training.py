"""A training run: fine-tune the U-Net on training pairs, ignore voxels left out of the loss.

Settings are checked here once for every front end; the run itself is
:func:`patch_corrections.train.train`, or the staged relabeling run of
:mod:`.relabeling` with ``relabel_rounds``.

Started by ``torchrun --nproc-per-node N``, every process runs this workflow: each joins
the run's process group and trains its share of every batch (see
:mod:`patch_corrections.distributed`); rank 0 alone locks and writes the output folder and
tells the listener, and the others wait for it before reading a saved run.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..constants import DEFAULT_LOSS, PATCH_SIZE
from ..errors import InputError, RunInterrupted
from ._common import collect_warnings, warn, writing_into
from ._runs import plot_curves, refuse_changes_on_resume, training_stops, write_metrics
from .events import SILENT, Listener, Progress
from .relabeling import RELABEL_REPORT, RelabelPlan, relabel_candidates_of, run_relabeling

DEFAULT_LR = {"sgd": 1e-2, "adamw": 3e-4}
SCHEDULES = ("poly", "cosine")


@dataclass(frozen=True)
class RetrainSettings:
    """Everything a training run is told; see ``patch_corrections retrain --help``.

    ``iterations`` or ``epochs`` (passes over the training patches, one crop each) is
    required for a new run; a resumed run may give either to extend itself. ``lr``,
    ``warmup``, ``save_every``, ``relabel_max`` and ``relabel_iterations`` default to
    values derived from the others when ``None``.
    """

    iterations: int | None = None
    epochs: int | None = None
    resume: bool = False
    trust_checkpoint: bool = False
    val_fraction: float = 0.2
    preset: str = "full"
    batch_size: int = 2
    crop_size: int = PATCH_SIZE
    optimizer: str = "sgd"
    lr: float | None = None
    schedule: str = "poly"
    warmup: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    augment: bool = True
    channels_last: bool = True
    val_every: int = 50
    save_every: int | None = None
    loss: str = DEFAULT_LOSS
    relabel_rounds: int = 0
    relabel_max: float | None = None
    relabel_iterations: int | None = None
    relabel_background: bool = False
    pixel_size: float | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.relabel_rounds < 0:
            raise InputError(f"--relabel-rounds must be 0 or more, got {self.relabel_rounds}")
        if not self.relabel_rounds and (
            self.relabel_max is not None
            or self.relabel_iterations is not None
            or self.relabel_background
        ):
            raise InputError(
                "--relabel-max, --relabel-iterations and --relabel-background shape "
                "relabeling rounds; add --relabel-rounds (1 or more)"
            )
        if self.relabel_max is not None and not 0 < self.relabel_max <= 1:
            raise InputError(f"--relabel-max must be in (0, 1], got {self.relabel_max}")
        if self.relabel_iterations is not None and self.relabel_iterations < 1:
            raise InputError(
                f"--relabel-iterations must be at least 1, got {self.relabel_iterations}"
            )
        if self.iterations is not None and self.epochs is not None:
            raise InputError("give --iterations or --epochs, not both")
        for option, value, least in (
            ("--batch-size", self.batch_size, 1),
            ("--crop-size", self.crop_size, 1),
            ("--val-every", self.val_every, 1),
            ("--save-every", self.save_every or 1, 1),
            ("--seed", self.seed, 0),
            ("--warmup", self.warmup or 0, 0),
        ):
            if value < least:
                raise InputError(f"{option} must be at least {least}, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.pixel_size is not None and not (
            math.isfinite(self.pixel_size) and self.pixel_size > 0
        ):
            raise InputError(f"--pixel-size must be a positive number, got {self.pixel_size}")
        if self.optimizer not in DEFAULT_LR:
            raise InputError(f"--optimizer must be sgd or adamw, got {self.optimizer}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule must be poly or cosine, got {self.schedule}")


@dataclass(frozen=True)
class RetrainReport:
    """What a training run left in its output folder.

    ``final`` is the last metrics row (``train_loss``, and ``val_loss`` / ``val_dice`` with
    validation patches); ``relabel`` is the content of ``relabel.json`` for a relabeling
    run, else ``None``.
    """

    out_dir: Path
    step: int
    final: dict
    best_dice: float
    last: Path
    best: Path | None
    metrics: Path
    relabel: dict | None
    warnings: list[str]


def retrain(
    train_dir: Path,
    out_dir: Path,
    checkpoint: Path | None = None,
    val_dir: Path | None = None,
    *,
    settings: RetrainSettings,
    listener: Listener = SILENT,
) -> RetrainReport:
    """Fine-tune the network of ``checkpoint`` (ours or MemBrain-seg's; a new one of
    ``settings.preset`` without) on the training folder ``train_dir``.

    Writes ``last.pt``, ``best.pt`` (with validation patches), ``metrics.csv`` and
    ``curves.png`` to ``out_dir``; with ``settings.relabel_rounds`` the stages go to
    ``round_<t>/`` and the final and best weights are copied to ``out_dir``.

    Under torchrun (``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set) this is one of the
    run's processes: ``settings.batch_size`` is per process, only rank 0 writes and calls
    ``listener``, and every rank returns the same report.

    Raises
    ------
    InputError
        For settings and data that cannot make a run, before anything is written.
    RunInterrupted
        On Ctrl-C, after saving ``last.pt``.
    """
    from .. import distributed
    from ..devices import pick_device

    train_dir, out_dir, s = Path(train_dir), Path(out_dir), settings
    try:
        ranks = distributed.Ranks.from_environment()
    except ValueError as exc:
        raise InputError(f"torchrun's environment: {exc}") from None
    if ranks.distributed and s.relabel_rounds:
        raise InputError(
            "--relabel-rounds runs in one process; start it without torchrun, or drop "
            "--relabel-rounds"
        )
    try:
        target = pick_device(s.device, ranks.local if ranks.distributed else None)
    except ValueError as exc:
        raise InputError(f"--device {s.device}: {exc}") from None
    if not ranks.main:
        listener = SILENT
    joined = distributed.join(ranks, target)
    failed = True
    try:
        with collect_warnings() as warned, _run_folder(out_dir, ranks):
            report = _retrain(train_dir, out_dir, checkpoint, val_dir, s, listener, target, ranks)
        failed = False
    except (InputError, RunInterrupted):
        raise
    except Exception as exc:
        if ranks.main or not ranks.distributed:
            raise
        # Most often the first process failed (its error is printed once, by it) and this
        # one lost it in a collective operation: one line, not a second traceback.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(
            f"process {ranks.rank} of {ranks.size} stopped ({type(exc).__name__}: {first}); "
            "the first process's error says why"
        ) from None
    finally:
        # After a failure the others may never reach the shutdown; waiting for them there
        # could hang (NCCL), and the process ends anyway.
        if joined and not failed:
            distributed.leave()
    return replace(report, warnings=warned if ranks.main else [])


@contextmanager
def _run_folder(out_dir: Path, ranks) -> Iterator[None]:
    """Rank 0 holds ``out_dir``'s lock for the run (finishing an interrupted run's commit
    first); the other ranks wait until it has, so they read a saved run only once it is
    whole, and the ranks leave together, once rank 0 has written everything."""
    from ..distributed import barrier

    if ranks.main:
        with writing_into(out_dir):
            barrier(ranks)
            yield
            barrier(ranks)
    else:
        barrier(ranks)
        yield
        barrier(ranks)


def _retrain(train_dir: Path, out_dir: Path, checkpoint, val_dir, s: RetrainSettings,
             listener: Listener, target, ranks) -> RetrainReport:  # fmt: skip
    """:func:`retrain` in its output folder, on its device."""
    from ..checkpoints import (
        network_from_checkpoint,
        normalisation_of,
        pixel_size_of,
        read_checkpoint,
    )
    from ..data import load_split
    from ..intensity import NORMALISATION, NORMALISATIONS
    from ..losses import parse_loss
    from ..model import PRESETS, UNet
    from ..relabel_training import relabel_round_dirs, round_dir
    from ..train import BEST, LAST, TrainConfig

    last = out_dir / LAST
    try:
        loss = "+".join(parse_loss(s.loss))
    except ValueError as exc:
        raise InputError(f"--loss {s.loss}: {exc}") from None
    if s.resume and (s.relabel_rounds or relabel_round_dirs(out_dir)):
        rounds_here = relabel_round_dirs(out_dir)
        latest = rounds_here[-1] / LAST if rounds_here else round_dir(out_dir, 0) / LAST
        raise InputError(
            "a relabeling run cannot be resumed; start a new one from a round's weights "
            f"with --checkpoint {latest} and another --out-dir"
        )
    if not s.resume and not s.overwrite and (round_dir(out_dir, 0) / LAST).exists():
        raise InputError(
            f"{out_dir}: holds a relabeling run ({round_dir(out_dir, 0).name}/); pass "
            "--overwrite to start again, or choose another --out-dir"
        )
    if s.resume and checkpoint is not None:
        raise InputError(
            "--resume continues the run in --out-dir; to start a new run from its "
            f"weights, use --checkpoint {last} with another --out-dir"
        )
    if s.resume and not last.exists():
        raise InputError(f"{last}: nothing to resume; start without --resume")
    if not s.resume and last.exists() and not s.overwrite:
        raise InputError(
            f"{out_dir}: holds a run ({LAST}); pass --resume to continue it, --overwrite "
            "to start again, or choose another --out-dir"
        )
    if s.preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {s.preset}")

    content = None
    if s.resume or checkpoint is not None:
        content = read_checkpoint(last if s.resume else checkpoint, s.trust_checkpoint)
    if s.resume:
        refuse_changes_on_resume(content, s, val_dir)
        saved_processes = content.get("processes", 1)
        if saved_processes != ranks.size:
            warn(
                f"{last}: the run trained on {saved_processes} process(es) and goes on "
                f"with {ranks.size}: each step now trains on "
                f"{ranks.size * content['train_config']['batch_size']} crops instead of "
                f"{saved_processes * content['train_config']['batch_size']}"
            )
        config, split = TrainConfig.from_dict(content["train_config"]), content["split"]
    else:
        config, split = None, None
    if content is not None:
        network, _ = network_from_checkpoint(content, last if s.resume else checkpoint)
    else:
        import torch

        torch.manual_seed(s.seed)  # the starting weights follow the seed too
        network = UNet(PRESETS[s.preset])
    # Train in the starting network's normalisation (MemBrain-seg's z-score for its
    # checkpoints), so the fine-tuned network is fed as it learnt and as segment feeds it.
    normalisation = (
        config.normalisation
        if config
        else (normalisation_of(content) if content is not None else NORMALISATION)
    )
    if normalisation not in NORMALISATIONS:
        raise InputError(f"{checkpoint}: unknown intensity normalisation {normalisation!r}")
    # And at the starting network's pixel size (10 Å for MemBrain-seg's): patches at
    # another are resampled to it rather than teaching the network a new scale.
    pixel_size = (
        config.pixel_size if config else (pixel_size_of(content) if content is not None else None)
    )
    train_patches, val_patches, split = load_split(
        train_dir, val_dir, s.val_fraction, config.seed if config else s.seed, split,
        normalisation, pixel_size, s.pixel_size,
    )  # fmt: skip
    if pixel_size is None:  # a new scale: the patches' own, when they share one
        sizes = {p.pixel_size for p in train_patches + val_patches}
        if len(sizes) > 1:
            warn(
                f"{train_dir}: patches at different voxel sizes "
                f"({', '.join(f'{v:g}' for v in sorted(sizes, key=str))} Å) and no network "
                "pixel size to resample them to: the checkpoint records none"
            )
        pixel_size = sizes.pop() if len(sizes) == 1 else None
    if s.relabel_rounds:
        candidates, borders = relabel_candidates_of(train_patches, train_dir)

    # On resume an epoch counts in the saved run's batch size, not the option's default;
    # under torchrun a step trains every process's batch.
    per_step = (config.batch_size if s.resume else s.batch_size) * ranks.size
    steps_per_epoch = max(1, math.ceil(len(train_patches) / per_step))
    total = (
        s.iterations
        if s.iterations is not None
        else (s.epochs * steps_per_epoch if s.epochs is not None else None)
    )
    if s.resume:
        if total is not None:
            if total <= content["step"]:
                raise InputError(
                    f"the saved run is at iteration {content['step']}; to extend it, "
                    f"give more iterations than that (got {total})"
                )
            config = replace(config, iterations=total)
    else:
        if total is None:
            raise InputError("give --iterations or --epochs")
        if total < 1:
            raise InputError(f"the run needs at least one step, got {total}")
        if s.warmup is not None and s.warmup >= total:
            raise InputError(f"--warmup {s.warmup} must be shorter than the run ({total})")
        config = TrainConfig(
            iterations=total,
            batch_size=s.batch_size,
            crop_size=s.crop_size,
            optimizer=s.optimizer,
            lr=s.lr if s.lr is not None else DEFAULT_LR[s.optimizer],
            schedule=s.schedule,
            warmup=s.warmup if s.warmup is not None else total // 20,
            seed=s.seed,
            val_every=s.val_every,
            save_every=s.save_every or s.val_every,
            augment=s.augment,
            compile=s.compile,
            channels_last=s.channels_last,
            loss=loss,
            normalisation=normalisation,
            pixel_size=pixel_size,
        )
    divisor = network.config.divisor
    if config.crop_size % divisor:
        raise InputError(
            f"--crop-size {config.crop_size}: must be a multiple of {divisor} for this network"
        )
    largest = max(max(p.image.shape) for p in train_patches)
    if config.crop_size > largest:
        fits = max(divisor, largest // divisor * divisor)
        raise InputError(
            f"--crop-size {config.crop_size}: larger than every training patch (the "
            f"largest edge is {largest}), so each crop would be mostly padding; use "
            f"--crop-size {fits}"
        )

    if s.resume:
        start = "resuming at iteration {}".format(content["step"])
    else:
        start = (
            f"from {checkpoint}" if checkpoint is not None else "from scratch (no --checkpoint)"
        )
    parameters = sum(p.numel() for p in network.parameters())
    where, batch = str(target), f"{config.batch_size}"
    if ranks.distributed:
        backend = "NCCL" if target.type == "cuda" else "gloo"
        where = f"{ranks.size} processes ({target.type}, {backend})"
        batch = f"{ranks.size} x {config.batch_size}"
    listener.message(
        f"Training {parameters / 1e6:.2f} M parameters {start} on {where} "
        f"({'bf16/fp16 autocast' if target.type == 'cuda' else 'fp32'}): "
        f"{len(train_patches)} training and {len(val_patches)} validation patch(es), "
        f"{config.iterations} iterations of {batch} x {config.crop_size}³, "
        f"intensities normalised by {config.normalisation}"
        + (f", at {config.pixel_size:g} Å per voxel." if config.pixel_size else ".")
    )

    metrics_path = out_dir / "metrics.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not s.resume and ranks.main:
        # overwrite: nothing of the old run may pass for the new one's, last.pt included
        # (a relabeling run writes it only at its end).
        stale_files = (last, out_dir / BEST, metrics_path, out_dir / "curves.png")
        for stale in (*stale_files, out_dir / RELABEL_REPORT):
            stale.unlink(missing_ok=True)
        for stale in relabel_round_dirs(out_dir):
            shutil.rmtree(stale)
    if s.relabel_rounds:
        plan = RelabelPlan(
            rounds=s.relabel_rounds,
            max_share=s.relabel_max,
            round_iterations=s.relabel_iterations or max(1, config.iterations // 2),
            background=s.relabel_background,
            candidates=candidates,
            borders=borders,
        )
        relabel, step, final, best_dice = run_relabeling(
            network, train_patches, val_patches, config, out_dir, target, split, plan,
            train_dir, listener,
        )  # fmt: skip
        best = out_dir / BEST if relabel["best"] is not None else None
    else:
        relabel = None
        state = _run(network, train_patches, val_patches, config, out_dir, target, split,
                     content if s.resume else None, listener, ranks)  # fmt: skip
        step, best_dice = state.step, state.best_dice
        final = state.history[-1] if state.history else {}
        best = out_dir / BEST if "val_dice" in final else None
    return RetrainReport(out_dir, step, final, best_dice, last, best, metrics_path, relabel, [])


def _run(network, train_patches, val_patches, config, out_dir: Path, target, split, resume,
         listener: Listener, ranks):  # fmt: skip
    """One plain training run, with progress, metrics and curves; its final state."""
    from ..train import LAST, train

    metrics_path = out_dir / "metrics.csv"
    listener.progress(Progress("Training", resume["step"] if resume else 0, config.iterations))
    with training_stops(
        out_dir,
        config,
        lambda stop: (
            f"Interrupted at iteration {stop.step}; saved {stop.path}. "
            "Run again with --resume to continue."
        ),
        f" (or on a large validation patch); start a new run from {out_dir / LAST} with "
        "--checkpoint and a smaller batch or crop",
    ):
        state = train(
            network,
            train_patches,
            val_patches,
            config,
            out_dir,
            target,
            resume=resume,
            on_step=lambda step, value: listener.progress(
                Progress("Training", step, config.iterations, value)
            ),
            on_metrics=lambda rows: write_metrics(metrics_path, rows),
            split=split,
            ranks=ranks,
        )
    if ranks.main:
        plot_curves(state.history, out_dir / "curves.png")
    return state
