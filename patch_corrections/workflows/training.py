"""A training run: fine-tune the U-Net on training pairs, ignore voxels left out of the loss.

Settings are checked here once for every front end; the run itself is
:func:`patch_corrections.training.loop.train`, or the staged relabeling run of
:mod:`patch_corrections.training.relabel_rounds` with ``relabel_rounds``.

Started by ``torchrun --nproc-per-node N``, every process runs this workflow: each joins
the run's process group and trains its share of every batch (see
:mod:`patch_corrections.network.distributed`); rank 0 alone locks and writes the output
folder and tells the listener, and the others wait for it before reading a saved run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..constants import (
    BEST_CHECKPOINT,
    DEFAULT_LOSS,
    LAST_CHECKPOINT,
    PATCH_SIZE,
)
from ..errors import InputError, RunInterrupted, collect_warnings
from ..training.config import DEFAULT_LR, SCHEDULES
from ..training.prior import CLASS_PRIORS
from ._common import run_folder
from .events import SILENT, Listener, Progress


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
    optimizer: str | None = None
    """``sgd`` or ``adamw``; ``None``: the fine-tuning recipe from a checkpoint (with no
    ``lr`` either), else SGD."""
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
    context: int | None = None
    """Context boxes to cut from the patches' tomograms and train beside them; ``None``:
    the fine-tuning default from a checkpoint, else 0."""
    membrane_centres: float | None = None
    """Share of crops centred on membrane; ``None``: the fine-tuning default from a
    checkpoint, else nnU-Net's third."""
    teacher: float | None = None
    """Weight of the starting network as the teacher of the voxels nobody decided;
    ``None``: the fine-tuning default from a checkpoint, else 0."""
    teacher_clearance: int = 0
    """Voxels near labelled membrane the teacher leaves alone (see ``TrainConfig``)."""
    class_prior: str | None = None
    """``tomogram`` or ``patches``: the membrane share the loss trains toward (see
    :mod:`patch_corrections.training.prior`); ``None``: the tomogram's from a checkpoint,
    else the patches'."""

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
        if (self.context or self.teacher) and self.relabel_rounds:
            raise InputError("--context and --teacher do not combine with --relabel-rounds")
        if self.class_prior not in (None, *CLASS_PRIORS):
            raise InputError(f"--class-prior must be tomogram or patches, got {self.class_prior}")
        if self.class_prior == "tomogram" and self.relabel_rounds:
            raise InputError("--class-prior tomogram does not combine with --relabel-rounds")
        if self.membrane_centres is not None and not 0 <= self.membrane_centres <= 1:
            raise InputError(f"--membrane-centres must be in [0, 1], got {self.membrane_centres}")
        if self.teacher is not None and not (math.isfinite(self.teacher) and self.teacher >= 0):
            raise InputError(f"--teacher must be 0 or more, got {self.teacher}")
        if self.iterations is not None and self.epochs is not None:
            raise InputError("give --iterations or --epochs, not both")
        for option, value, least in (
            ("--batch-size", self.batch_size, 1),
            ("--crop-size", self.crop_size, 1),
            ("--val-every", self.val_every, 1),
            ("--save-every", self.save_every or 1, 1),
            ("--seed", self.seed, 0),
            ("--warmup", self.warmup or 0, 0),
            ("--context", self.context or 0, 0),
            ("--teacher-clearance", self.teacher_clearance, 0),
        ):
            if value < least:
                raise InputError(f"{option} must be at least {least}, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.pixel_size is not None and not (
            math.isfinite(self.pixel_size) and self.pixel_size > 0
        ):
            raise InputError(f"--pixel-size must be a positive number, got {self.pixel_size}")
        if self.optimizer is not None and self.optimizer not in DEFAULT_LR:
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
    reporting: bool = True
    """Whether this process reports the run: under torchrun only the first does (every
    process returns the same report)."""


def retrain(
    train_dir: Path | None,
    out_dir: Path,
    checkpoint: Path | None = None,
    val_dir: Path | None = None,
    *,
    settings: RetrainSettings,
    listener: Listener = SILENT,
) -> RetrainReport:
    """Fine-tune the network of ``checkpoint`` (ours or MemBrain-seg's; a new one of
    ``settings.preset`` without) on the training folder ``train_dir`` (with
    ``settings.resume``, ``None``: the saved run's).

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
    from ..network import distributed
    from ..network.devices import pick_device
    from ..training.runs import saved_train_dir

    out_dir, s = Path(out_dir), settings
    if train_dir is None:
        train_dir = saved_train_dir(out_dir, s.resume, s.trust_checkpoint)
    train_dir = Path(train_dir)
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
        device = pick_device(s.device, ranks.local if ranks.distributed else None)
    except ValueError as exc:
        raise InputError(f"--device {s.device}: {exc}") from None
    if not ranks.main:
        listener = SILENT
    joined = distributed.join(ranks, device)
    failed = True
    try:
        with collect_warnings() as warned, run_folder(out_dir, ranks):
            report = _retrain(train_dir, out_dir, checkpoint, val_dir, s, listener, device, ranks)
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
    return replace(report, warnings=warned if ranks.main else [], reporting=ranks.main)


def _retrain(
    train_dir: Path,
    out_dir: Path,
    checkpoint: Path | None,
    val_dir: Path | None,
    s: RetrainSettings,
    listener: Listener,
    device,
    ranks,
) -> RetrainReport:
    """:func:`retrain` in its output folder, on its device: every check first, then the
    old run's files go and the new run trains."""
    from ..training.data import check_step_memory
    from ..training.relabel_rounds import RelabelPlan, run_relabeling
    from ..training.runs import METRICS, announce, clear_run, run_training

    start, patches, split, config, candidates = _prepare(
        train_dir, out_dir, checkpoint, val_dir, s, ranks
    )
    check_step_memory(start.network.config, config, device)
    listener.message(announce(start, config, checkpoint, s, device, ranks, patches))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not s.resume and ranks.main:
        clear_run(out_dir)

    def progress(done: int, total: int, loss: float | None) -> None:
        listener.progress(Progress("Training", done, total, loss))

    last, metrics = out_dir / LAST_CHECKPOINT, out_dir / METRICS
    if candidates is None:
        run = (start.network, patches, config, out_dir, device, split, start.resume)
        state = run_training(*run, progress, ranks, start.teacher)
        final = state.history[-1] if state.history else {}
        best = out_dir / BEST_CHECKPOINT if "val_dice" in final else None
        return RetrainReport(
            out_dir, state.step, final, state.best_dice, last, best, metrics, None, []
        )
    plan = RelabelPlan(
        rounds=s.relabel_rounds,
        max_share=s.relabel_max,
        round_iterations=s.relabel_iterations or max(1, config.iterations // 2),
        background=s.relabel_background,
        candidates=candidates[0],
        borders=candidates[1],
    )
    listener.message(plan.describe(config.iterations))
    run = (start.network, patches[:2], config, out_dir, device, split, plan, train_dir)
    result = run_relabeling(*run, progress)
    best = out_dir / BEST_CHECKPOINT if result.report["best"] is not None else None
    return RetrainReport(
        out_dir,
        result.step,
        result.final,
        result.best_dice,
        last,
        best,
        metrics,
        result.report,
        [],
    )


def _prepare(train_dir, out_dir, checkpoint, val_dir, s: RetrainSettings, ranks):
    """Everything a run needs, checked before anything is written: its start, training
    and validation patches and their split, its config, and for relabeling the voxels each
    patch may adopt (with the border widths kept out)."""
    from ..network.unet import PRESETS
    from ..training.config import run_config, run_data
    from ..training.context import Context, context_boxes
    from ..training.data import check_crop_size
    from ..training.datasets import load_split, shared_pixel_size
    from ..training.relabel_rounds import relabel_candidates_of
    from ..training.runs import RunStart, refuse_folder
    from ..training.teacher import teacher_of

    loss = _loss_name(s.loss)
    relabeling = bool(s.relabel_rounds)
    refuse_folder(
        out_dir,
        resume=s.resume,
        overwrite=s.overwrite,
        relabeling=relabeling,
        checkpoint=checkpoint,
    )
    if s.preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {s.preset}")
    start = RunStart.load(out_dir, checkpoint, s, val_dir, ranks)
    seed = start.config.seed if start.config else s.seed
    sizes = (start.normalisation, start.pixel_size, s.pixel_size)
    train, val, split = load_split(train_dir, val_dir, s.val_fraction, seed, start.split, *sizes)
    pixel_size = start.pixel_size or shared_pixel_size(train_dir, train + val)
    candidates = relabel_candidates_of(train, train_dir) if relabeling else None
    config = run_config(s, start, len(train), ranks, loss, pixel_size)
    if not s.resume and run_data(s, start)["class_prior"] == "tomogram":
        start.prior = _prior_shift(train_dir, [p.name for p in train], s.class_prior)
        config = replace(config, prior_shift=start.prior.delta if start.prior else 0.0)
    check_crop_size(config.crop_size, start.network.config, train)
    if config.teacher and s.resume:
        start.teacher = teacher_of(config, s.trust_checkpoint)
    context = Context([], [])
    if not relabeling:
        counts = (config.context, config.probes, config.seed)
        context = context_boxes(train_dir, *counts, start.normalisation, pixel_size)
    return start, (train, val, context), split, config, candidates


def _loss_name(name: str) -> str:
    from ..training.losses import parse_loss

    try:
        return "+".join(parse_loss(name))
    except ValueError as exc:
        raise InputError(f"--loss {name}: {exc}") from None


def _prior_shift(train_dir: Path, names: list[str], chosen: str | None):
    """The class-prior shift of the training patches ``names`` of ``train_dir`` (see
    :mod:`patch_corrections.training.prior`); ``None`` with a warning where it cannot be
    estimated, an ``InputError`` where ``chosen``."""
    from ..errors import warn
    from ..training.prior import summary_prior_shift

    shift = summary_prior_shift(train_dir, names)
    if not isinstance(shift, str):
        return shift
    if chosen:
        raise InputError(f"--class-prior tomogram: {shift}; extract and merge them again")
    warn(f"{train_dir}: the patches' own class prior is trained: {shift}")
    return None
