"""What training runs share: metrics.csv and curves.png beside the checkpoints, and how a
run that stops early is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
