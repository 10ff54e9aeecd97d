"""What training runs share: metrics.csv and curves.png beside the checkpoints, how a
run that stops early is reported, and which settings a resumed run keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from ..errors import InputError, RunInterrupted
from ..io.files import atomic_target, write_text_atomic
from ._common import warn

METRIC_COLUMNS = ("step", "train_loss", "val_loss", "val_dice", "lr", "seconds")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The metrics history as CSV, one row per logged step."""
    lines = [",".join(METRIC_COLUMNS)]
    for row in rows:
        lines.append(
            ",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in METRIC_COLUMNS)
        )
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss, validation Dice and learning rate against the iteration, as a PNG."""
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warn("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    steps = [r["step"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r["train_loss"] for r in rows], label="train loss")
    if "val_loss" in rows[0]:
        left.plot(steps, [r["val_loss"] for r in rows], label="val loss")
        right.plot(steps, [r["val_dice"] for r in rows], label="val Dice (ignore excluded)")
    right.plot(
        steps,
        [r["lr"] / max(r["lr"] for r in rows) for r in rows],
        "--",
        label="learning rate (relative)",
    )
    for axis in (left, right):
        axis.set_xlabel("iteration")
        axis.legend()
    figure.tight_layout()
    with atomic_target(path, ".png") as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


@contextmanager
def training_stops(
    out_dir: Path, config, interrupted: Callable, out_of_memory: str
) -> Iterator[None]:
    """Turn the ways training stops early into errors a front end can show: Ctrl-C
    (``RunInterrupted`` with the message ``interrupted(stop)``) or running out of GPU
    memory (``InputError`` with the ``out_of_memory`` advice)."""
    import torch

    from ..train import Interrupted

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
}


def refuse_changes_on_resume(content: dict, settings, val_dir) -> None:
    """A resumed run keeps its settings: one given with another value (in ``settings``, a
    ``RetrainSettings``) is an error."""
    from ..model import PRESETS, UNetConfig
    from ..train import TrainConfig

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
