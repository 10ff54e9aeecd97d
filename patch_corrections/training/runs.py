"""A training run's folder: what a run leaves there (checkpoints, metrics.csv, curves.png,
a relabeling run's ``round_<t>/`` and ``relabel.json``), which folders a new run may start
in, what it starts from (:class:`RunStart`: new weights, a checkpoint's, or a saved run
resumed with its settings), and how a run that stops early is reported."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from ..constants import BEST_CHECKPOINT, LAST_CHECKPOINT, NORMALISATION
from ..errors import InputError, RunInterrupted, warn
from ..io.staging import atomic_target, write_text_atomic
from .config import TrainConfig, optimiser_and_rate
from .context import Context

METRIC_COLUMNS = ("step", "train_loss", "val_loss", "val_dice", "lr", "seconds")
PROBE_COLUMNS = ("moved_new", "moved_lost")
"""Columns of a run with context probes (see :mod:`.context`), after the others."""
METRICS = "metrics.csv"
CURVES = "curves.png"
RELABEL_REPORT = "relabel.json"
"""Per-round report of a relabeling run, in its output folder."""


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


def refuse_folder(
    out_dir: Path, *, resume: bool, overwrite: bool, relabeling: bool, checkpoint: Path | None
) -> None:
    """``InputError`` when a run cannot start in ``out_dir``: resuming what is not there or
    cannot be resumed (a relabeling run), starting over a run without ``overwrite``."""
    last = out_dir / LAST_CHECKPOINT
    first = round_dir(out_dir, 0) / LAST_CHECKPOINT
    if resume and (relabeling or relabel_round_dirs(out_dir)):
        rounds_here = relabel_round_dirs(out_dir)
        latest = rounds_here[-1] / LAST_CHECKPOINT if rounds_here else first
        raise InputError(
            "a relabeling run cannot be resumed; start a new one from a round's weights "
            f"with --checkpoint {latest} and another --out-dir"
        )
    if not resume and not overwrite and first.exists():
        raise InputError(
            f"{out_dir}: holds a relabeling run ({first.parent.name}/); pass --overwrite to "
            "start again, or choose another --out-dir"
        )
    if resume and checkpoint is not None:
        raise InputError(
            "--resume continues the run in --out-dir; to start a new run from its "
            f"weights, use --checkpoint {last} with another --out-dir"
        )
    if resume and not last.exists():
        raise InputError(f"{last}: nothing to resume; start without --resume")
    if not resume and last.exists() and not overwrite:
        raise InputError(
            f"{out_dir}: holds a run ({LAST_CHECKPOINT}); pass --resume to continue it, "
            "--overwrite to start again, or choose another --out-dir"
        )


def clear_run(out_dir: Path) -> None:
    """Remove everything an earlier run left in ``out_dir``, ``last.pt`` included (a
    relabeling run writes it only at its end), so nothing passes for the new run's."""
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS, CURVES, RELABEL_REPORT):
        (out_dir / name).unlink(missing_ok=True)
    for stale in relabel_round_dirs(out_dir):
        shutil.rmtree(stale)


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The metrics history as CSV, one row per logged step."""
    columns = METRIC_COLUMNS + (PROBE_COLUMNS if any("moved_new" in r for r in rows) else ())
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in columns))
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss, validation Dice and learning rate against the iteration, as a PNG at
    ``path`` (see :func:`previews.training_curves`); none without rows or matplotlib."""
    if not rows:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warn("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    from ..previews import training_curves

    with atomic_target(path, ".png") as temporary:
        temporary.write_bytes(training_curves(rows))


@contextmanager
def training_stops(
    out_dir: Path, config, interrupted: Callable, out_of_memory: str
) -> Iterator[None]:
    """Turn the ways training stops early into errors a front end can show: Ctrl-C
    (``RunInterrupted`` with the message ``interrupted(stop)``) or running out of GPU
    memory (``InputError`` with the ``out_of_memory`` advice)."""
    import torch

    from .loop import Interrupted

    try:
        yield
    except Interrupted as stop:
        raise RunInterrupted(interrupted(stop)) from None
    except KeyboardInterrupt:
        raise RunInterrupted(f"Interrupted; checkpoints in {out_dir} are kept.") from None
    except torch.cuda.OutOfMemoryError:
        raise InputError(
            f"out of GPU memory with --batch-size {config.batch_size} and --crop-size "
            f"{config.crop_size}{out_of_memory} (checkpoints written so far are kept)"
        ) from None


# Settings a resumed run keeps, with the option that sets each one.
_RESUME_FIXED = {
    "loss": "--loss",
    "batch_size": "--batch-size",
    "crop_size": "--crop-size",
    "optimizer": "--optimizer",
    "lr": "--lr",
    "schedule": "--schedule",
    "warmup": "--warmup",
    "seed": "--seed",
    "val_every": "--val-every",
    "save_every": "--save-every",
    "augment": "--no-augment",
    "compile": "--compile",
    "channels_last": "--channels-last/--no-channels-last",
    "context": "--context",
    "membrane_centres": "--membrane-centres",
    "teacher": "--teacher",
    "teacher_clearance": "--teacher-clearance",
}


def refuse_changes_on_resume(content: dict, settings, val_dir) -> None:
    """A resumed run keeps its settings: one given with another value (in ``settings``, a
    ``RetrainSettings``) is an error."""
    from ..network.unet import PRESETS, UNetConfig

    saved = TrainConfig.from_dict(content["train_config"])
    defaults = {f.name: f.default for f in fields(settings)}
    changed = []
    for name, flag in _RESUME_FIXED.items():
        given, stored = getattr(settings, name), getattr(saved, name)
        if given == defaults[name] or given == stored:
            continue
        changed.append(f"{flag} (saved: {not stored if name == 'augment' else stored})")
    split = content["split"]
    fraction = settings.val_fraction
    if fraction not in (split["val_fraction"], defaults["val_fraction"]):
        changed.append(f"--val-fraction (saved: {split['val_fraction']})")
    if val_dir is not None and str(Path(val_dir).resolve()) != split["val_dir"]:
        changed.append(f"--val-dir (saved: {split['val_dir']})")
    network = UNetConfig.from_dict(content["model_config"])
    if settings.preset != defaults["preset"] and PRESETS[settings.preset] != network:
        changed.append(f"--preset (the saved network has filters {network.filters})")
    if changed:
        raise InputError(
            "--resume keeps the saved run's settings; drop " + ", ".join(changed) + ", or "
            "start a new run from its weights with --checkpoint"
        )


@dataclass
class RunStart:
    """What a run starts from: its network (weights loaded), the checkpoint it came from,
    and for a resumed run the saved one's ``config``, ``split`` and state (``resume``);
    the normalisation and pixel size the run trains in.

    A run trains in its starting network's normalisation (MemBrain-seg's z-score for its
    checkpoints), so the fine-tuned network is fed as it learnt and as ``segment`` feeds
    it, and at its pixel size (10 Å for MemBrain-seg's): patches at another are resampled
    to it rather than teaching the network a new scale.
    """

    network: object
    checkpoint: object | None
    normalisation: str
    pixel_size: float | None
    config: TrainConfig | None = None
    split: dict | None = None
    resume: dict | None = None
    teacher: object | None = None
    """The starting network of a resumed run with a teacher (see :func:`.teacher.teacher_of`); a
    new run's teacher is its network as it starts."""
    prior: object | None = None
    """A new run's class-prior shift (a :class:`.prior.PriorShift`), where it has one."""

    @classmethod
    def load(cls, out_dir: Path, checkpoint: Path | None, settings, val_dir, ranks) -> RunStart:
        """The start of a run with ``settings`` (a ``RetrainSettings``): a new network of
        ``settings.preset`` (seeded), the weights of ``checkpoint``, or with
        ``settings.resume`` the run saved in ``out_dir``, whose settings it keeps."""
        from ..network.checkpoints import load_network
        from ..network.unet import PRESETS, UNet

        if not settings.resume and checkpoint is None:
            import torch

            torch.manual_seed(settings.seed)  # the starting weights follow the seed too
            return cls(UNet(PRESETS[settings.preset]), None, NORMALISATION, None)
        last = out_dir / LAST_CHECKPOINT
        loaded = load_network(last if settings.resume else checkpoint, settings.trust_checkpoint)
        if not settings.resume:
            return cls(loaded.network, loaded, loaded.normalisation, loaded.pixel_size)
        content = loaded.content
        refuse_changes_on_resume(content, settings, val_dir)
        saved = content.get("processes", 1)
        if saved != ranks.size:
            batch = content["train_config"]["batch_size"]
            warn(
                f"{last}: the run trained on {saved} process(es) and goes on with "
                f"{ranks.size}: each step now trains on {ranks.size * batch} crops instead "
                f"of {saved * batch}"
            )
        config = TrainConfig.from_dict(content["train_config"])
        return cls(
            loaded.network,
            loaded,
            config.normalisation,
            config.pixel_size,
            config,
            content["split"],
            content,
        )


def run_training(
    network,
    patches: tuple[list, list, Context],
    config: TrainConfig,
    out_dir: Path,
    device,
    split: dict | None,
    resume: dict | None,
    progress: Callable[[int, int, float | None], None],
    ranks,
    teacher=None,
):
    """One plain training run on the training and validation ``patches`` and the context
    boxes (trained on beside them, or probes), with ``metrics.csv`` and ``curves.png``; its
    final state. ``progress`` hears the step, the run's length and the latest training
    loss."""
    from .loop import train

    metrics = out_dir / METRICS
    progress(resume["step"] if resume else 0, config.iterations, None)
    with training_stops(
        out_dir,
        config,
        lambda stop: (
            f"Interrupted at iteration {stop.step}; saved {stop.path}. "
            "Run again with --resume to continue."
        ),
        f" (or on a large validation patch); start a new run from "
        f"{out_dir / LAST_CHECKPOINT} with --checkpoint and a smaller batch or crop",
    ):
        train_patches, val_patches, context = patches
        state = train(
            network,
            train_patches + context.train,
            val_patches,
            config,
            out_dir,
            device,
            resume=resume,
            on_step=lambda step, value: progress(step, config.iterations, value),
            on_metrics=lambda rows: write_metrics(metrics, rows),
            split=split,
            ranks=ranks,
            probes=context.probes,
            teacher=teacher,
        )
    if ranks.main:
        plot_curves(state.history, out_dir / CURVES)
    return state


def saved_train_dir(out_dir: Path, resume: bool, trust: bool) -> Path:
    """The training folder of the run saved in ``out_dir`` (``--resume`` without
    ``--train-dir``)."""
    if not resume:
        raise InputError("--train-dir: give the training folder (only --resume knows it)")
    from ..network.checkpoints import read_checkpoint

    last = out_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise InputError(f"{last}: nothing to resume; start without --resume")
    saved = (read_checkpoint(last, trust).get("split") or {}).get("train_dir")
    if not saved:
        raise InputError(
            f"{last}: saved before runs recorded their training folder; give --train-dir"
        )
    return Path(saved)


def _context_text(context) -> str:
    if not (context.train or context.probes):
        return ""
    return (
        f" and {len(context.train)} context box(es) from their tomogram(s) (and "
        f"{len(context.probes)} probe(s) that show what moved)"
    )


def announce(start: RunStart, config, checkpoint, s, device, ranks, patches) -> str:
    """The run's first line: what trains, from what, where, on what (``s``: the run's
    ``RetrainSettings``; ``patches``: training, validation and the context boxes)."""
    if s.resume:
        begin = "resuming at iteration {}".format(start.resume["step"])
    else:
        begin = (
            f"from {checkpoint}" if checkpoint is not None else "from scratch (no --checkpoint)"
        )
    parameters = sum(p.numel() for p in start.network.parameters())
    where, batch = str(device), f"{config.batch_size}"
    if ranks.distributed:
        backend = "NCCL" if device.type == "cuda" else "gloo"
        where = f"{ranks.size} processes ({device.type}, {backend})"
        batch = f"{ranks.size} x {config.batch_size}"
    recipe = ""
    if not s.resume and optimiser_and_rate(s.optimizer, s.lr, checkpoint is not None)[2]:
        recipe = (
            f" Fine-tuning with AdamW at {config.lr:g}, the default from a checkpoint (it "
            "gained most on held-out tomograms, benchmarks/RESULTS.md); --optimizer and "
            "--lr choose."
        )
    return (
        f"Training {parameters / 1e6:.2f} M parameters {begin} on {where} "
        f"({'bf16/fp16 autocast' if device.type == 'cuda' else 'fp32'}): "
        f"{len(patches[0])} training and {len(patches[1])} validation patch(es)"
        + _context_text(patches[2])
        + (
            f", the starting network teaching the voxels nobody decided (--teacher "
            f"{config.teacher:g})"
            if config.teacher
            else ""
        )
        + (f"; {start.prior.describe()};" if start.prior is not None else ",")
        + f" {config.iterations} iterations of {batch} x {config.crop_size}³, "
        f"intensities normalised by {config.normalisation}"
        + (f", at {config.pixel_size:g} Å per voxel." if config.pixel_size else ".")
        + recipe
    )
