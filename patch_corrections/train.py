"""The fine-tuning loop, readable top to bottom.

Every random choice of step ``s`` (which patches, where to crop, how to augment) comes from
generators seeded with ``(seed, s)``, so a resumed run repeats exactly what an uninterrupted
one would have done, and the next batch can be prepared while the current one trains.

Under torchrun (see :mod:`patch_corrections.distributed`) each of N processes takes its
share of the same seeded stream: with ``batch_size`` B per process, step ``s`` of the run
trains on the crops one process with batch N·B would cut, rank ``r`` taking crops
``r·B … r·B + B - 1``. Gradients are averaged over the processes, validation patches are
shared out and their results gathered, and only rank 0 writes files and reports.

The device and its precision are chosen in :mod:`patch_corrections.devices`; the staged
relabeling run built on :func:`train` is :mod:`patch_corrections.relabel_training`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .augment import AugmentConfig, augment
from .checkpoints import save_checkpoint
from .constants import DEFAULT_LOSS, IGNORE, MEMBRANE
from .data import TrainingPatch, crop_start, cut_crop
from .devices import Precision, sync, to_cpu
from .distributed import SINGLE, Ranks
from .intensity import NORMALISATION
from .losses import bce_dice_loss, deep_supervision_loss, make_loss
from .model import UNet

LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved in every checkpoint."""

    iterations: int
    batch_size: int = 2
    crop_size: int = 160
    optimizer: str = "sgd"
    lr: float = 1e-2
    schedule: str = "poly"
    warmup: int = 0
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    seed: int = 0
    val_every: int = 50
    save_every: int = 50
    augment: bool = True
    compile: bool = False
    channels_last: bool = True
    loss: str = DEFAULT_LOSS
    """Loss terms joined with ``+`` (see :mod:`patch_corrections.losses`)."""
    normalisation: str = NORMALISATION
    """How the patches' intensities were normalised; saved for ``segment`` to repeat."""
    pixel_size: float | None = None
    """Å per voxel the network is trained at (``None``: unknown); saved for ``segment
    --rescale``."""

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return cls(**values)


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving ``last.pt``."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted at iteration {step}; saved {path}")
        self.step, self.path = step, path


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``config.warmup`` steps, then poly (0.9) or cosine decay to 0
    at ``config.iterations``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.iterations - config.warmup))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress) ** 0.9


def make_optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(
        network.parameters(),
        lr=config.lr,
        momentum=0.99,
        nesterov=True,
        weight_decay=config.weight_decay,
    )


def batch_for_step(
    patches: list[TrainingPatch], step: int, config: TrainConfig, ranks: Ranks = SINGLE
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's crops of step ``step``: image ``(b, 1, z, y, x)`` float32, labels uint8.

    The step's stream holds ``b · ranks.size`` crops, the batch of one process with all
    ranks' samples; rank ``r`` draws (without cutting) the ``r · b`` crops before its own.
    """
    rng = np.random.default_rng([config.seed, step])
    size = (config.crop_size,) * 3
    windows = []
    for _ in range((ranks.rank + 1) * config.batch_size):
        patch = patches[rng.integers(len(patches))]
        windows.append((patch, crop_start(patch, size, rng)))
    crops = [cut_crop(patch, start, size) for patch, start in windows[-config.batch_size :]]
    return (np.stack([c[0] for c in crops])[:, None], np.stack([c[1] for c in crops])[:, None])


def _patch_logits(
    network: UNet, image: np.ndarray, device: torch.device, precision: Precision
) -> torch.Tensor:
    """Logits ``(z, y, x)`` float32 of a whole normalised patch, padded to what the
    network divides by and cropped back."""
    divisor = network.config.divisor
    pad = [(0, -n % divisor) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad))[None, None].to(device)
    with precision.autocast():
        logits = network.forward_zyx(x).float()
    return logits[0, 0, : image.shape[0], : image.shape[1], : image.shape[2]]


@torch.no_grad()
def predict_patch(
    network: UNet, image: np.ndarray, device: torch.device, precision: Precision | None = None
) -> np.ndarray:
    """Membrane probability ``(z, y, x)`` float32 of a whole normalised patch."""
    was_training = network.training
    network.eval()
    logits = _patch_logits(network, image, device, precision or Precision.for_device(device))
    network.train(was_training)
    return torch.sigmoid(logits).cpu().numpy()


@torch.no_grad()
def evaluate(
    network: UNet,
    patches: list[TrainingPatch],
    device: torch.device,
    precision: Precision,
    ranks: Ranks = SINGLE,
) -> dict[str, float]:
    """Loss and Dice (ignore voxels excluded, pooled over patches) on whole patches.

    The loss is BCE + Dice whatever the training loss, so runs with different losses
    compare on the same scale. Under torchrun each rank scores its share of the patches
    and every rank gets the result of all, the same as one process would compute."""
    network.eval()
    scores = []  # per patch: loss, voxels predicted membrane and right, predicted, true
    for patch in ranks.share(patches):
        logits = _patch_logits(network, patch.image, device, precision)[None, None]
        y = torch.from_numpy(patch.labels)[None, None].to(device)
        annotated = y != IGNORE
        hit = (logits > 0) & annotated
        truth = (y == MEMBRANE) & annotated
        counts = torch.stack([(hit & truth).sum(), hit.sum(), truth.sum()]).tolist()
        scores.append((float(bce_dice_loss(logits, y)), *map(float, counts)))
    network.train()
    scores = distributed.gather(scores, ranks)
    overlap, predicted, actual = (sum(s[i] for s in scores) for i in (1, 2, 3))
    dice = 2 * overlap / (predicted + actual) if predicted + actual else 1.0
    return {"val_loss": float(np.mean([s[0] for s in scores])), "val_dice": dice}


@dataclass
class RunState:
    """What a run has done so far; restored from ``last.pt`` on resume."""

    step: int = 0
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)
    pending_losses: list[float] = field(default_factory=list)
    """Step losses since the last metrics row, read from the device at each metrics row and
    checkpoint (until then :func:`train` keeps them there)."""
    elapsed: float = 0.0
    """Seconds of training in earlier sessions of this run."""
    data_wait: float = 0.0
    """Seconds this process spent waiting for batches to be cut and sent to the device."""
    io_seconds: float = 0.0
    """Seconds spent validating and writing checkpoints (not training)."""


def train(
    network: UNet,
    train_patches: list[TrainingPatch],
    val_patches: list[TrainingPatch],
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    resume: dict | None = None,
    on_step: Callable[[int, float | None], None] | None = None,
    on_metrics: Callable[[list[dict]], None] | None = None,
    split: dict | None = None,
    ranks: Ranks | None = None,
) -> RunState:
    """Train ``network`` for ``config.iterations`` steps; write checkpoints to ``out_dir``.

    Parameters
    ----------
    resume
        The content of a ``last.pt`` to continue from (weights already in ``network``).
    on_step
        Called after every step with the step number and the training loss of the latest
        metrics row (``None`` until there is one), for a progress display. Not the step's
        own loss: reading that would make the host wait for the device every step.
    on_metrics
        Called with the metrics history whenever a row is added.
    split
        Which patches train and which validate (names), saved in checkpoints so that a
        resumed run uses the same ones.
    ranks
        This process's place in a torchrun run (default: the process group it has joined,
        if any). Only rank 0 writes checkpoints and calls ``on_step`` and ``on_metrics``.
    """
    ranks = ranks or distributed.current()
    torch.manual_seed(config.seed)
    network.to(device)
    channels_last = device.type == "cuda" and config.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if channels_last:
        network.to(memory_format=torch.channels_last_3d)
    network.train()
    optimizer = make_optimizer(network, config)
    precision = Precision.for_device(device)
    state = RunState()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        state = RunState(
            resume["step"],
            resume["best_dice"],
            list(resume["history"]),
            list(resume["pending_losses"]),
            resume["elapsed"],
        )
        torch.set_rng_state(resume["rng"]["torch"])
        if precision.scaler is not None and resume.get("grad_scaler"):
            precision.scaler.load_state_dict(resume["grad_scaler"])
    forward = _heads_function(
        distributed.replicate(network, device) if ranks.distributed else network,
        config.compile,
    )
    loss_function = make_loss(config.loss)
    augmenter = torch.Generator(device=device)
    augment_config = AugmentConfig()
    started = time.perf_counter() - state.elapsed
    # Step losses not yet read from the device: one transfer at each metrics row and
    # checkpoint, instead of a wait for the device after every step.
    unread: list[torch.Tensor] = []
    latest = state.history[-1].get("train_loss") if state.history else None

    def checkpoint(name: str) -> Path:
        path = Path(out_dir) / name
        if not ranks.main:
            return path
        save_checkpoint(
            path,
            {
                "model_config": network.config.to_dict(),
                "train_config": asdict(config),
                "normalisation": config.normalisation,
                "pixel_size": config.pixel_size,
                "model": to_cpu(network.state_dict()),
                "optimizer": to_cpu(optimizer.state_dict()),
                "step": state.step,
                "best_dice": state.best_dice,
                "history": state.history,
                "pending_losses": state.pending_losses,
                "split": split,
                "elapsed": time.perf_counter() - started,
                "rng": {"torch": torch.get_rng_state()},
                "grad_scaler": precision.scaler.state_dict() if precision.scaler else None,
                "processes": ranks.size,
            },
        )
        return path

    # The next step's crops are cut (and pinned, for a fast copy) while this step runs.
    pin = device.type == "cuda"
    prefetch = ThreadPoolExecutor(max_workers=1)

    def fetch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = batch_for_step(train_patches, step, config, ranks)
        x, y = torch.from_numpy(image), torch.from_numpy(labels)
        return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

    upcoming = prefetch.submit(fetch, state.step)
    # torchrun passes a terminal's Ctrl-C on to its workers, which get it twice at once.
    stop = _StopFlag(same_request=2.0 if ranks.distributed else 0.0)
    agreed = False  # whether all ranks stop at this step (and can still talk)
    try:
        while state.step < config.iterations:
            if distributed.any_rank(stop.requested, ranks):
                agreed = True
                raise KeyboardInterrupt
            step = state.step
            waited = time.perf_counter()
            x, y = upcoming.result()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            state.data_wait += time.perf_counter() - waited
            if step + 1 < config.iterations:
                upcoming = prefetch.submit(fetch, step + 1)
            if config.augment:
                # Rank 0 augments as one process does; the others draw other streams.
                augmenter.manual_seed(config.seed * 1_000_003 + step + (ranks.rank << 40))
                x, y = augment(x, y, augmenter, augment_config)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            with precision.autocast():
                outputs = forward(x)
            loss = deep_supervision_loss([o.float() for o in outputs], y, loss_function)
            optimizer.zero_grad(set_to_none=True)
            if precision.scaler is not None:
                precision.scaler.scale(loss).backward()
                precision.scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            if precision.scaler is not None:
                precision.scaler.step(optimizer)
                precision.scaler.update()
            else:
                optimizer.step()
            unread.append(loss.detach())
            # Free this step's graph now, not when the next forward pass rebinds the names:
            # otherwise two steps' activations are alive at once.
            del outputs, loss, x, y
            state.step = step + 1
            done = state.step == config.iterations
            logging = state.step % config.val_every == 0 or done
            saving = state.step % config.save_every == 0 or done
            if logging or saving:
                sync(device)
                paused = time.perf_counter()
                state.pending_losses += _read_losses(unread, ranks)
            if logging:
                row = {
                    "step": state.step,
                    "train_loss": float(np.mean(state.pending_losses)),
                    "lr": learning_rate(step, config),
                    "seconds": time.perf_counter() - started,
                }
                state.pending_losses = []
                latest = row["train_loss"]
                if val_patches:
                    row.update(evaluate(network, val_patches, device, precision, ranks))
                    if row["val_dice"] > state.best_dice:
                        state.best_dice = row["val_dice"]
                        checkpoint(BEST)
                state.history.append(row)
                if on_metrics is not None and ranks.main:
                    on_metrics(state.history)
            if saving:
                checkpoint(LAST)
            if logging or saving:
                state.io_seconds += time.perf_counter() - paused
            if on_step is not None and ranks.main:
                on_step(state.step, latest)
    except KeyboardInterrupt:
        # A second Ctrl-C may have stopped the ranks at different places: no collective.
        state.pending_losses += _read_losses(unread, ranks if agreed else SINGLE)
        raise Interrupted(state.step, checkpoint(LAST)) from None
    finally:
        stop.release()
        prefetch.shutdown(wait=True, cancel_futures=True)
    return state


def _read_losses(losses: list[torch.Tensor], ranks: Ranks = SINGLE) -> list[float]:
    """The 0-d step losses as floats, read from the device in one transfer; empties
    ``losses``. Each float equals ``float()`` of its tensor, so metrics and checkpoints
    are the same as if every step had been read on its own. Under torchrun, each is the
    mean of the ranks' losses of that step."""
    if not losses:
        return []
    values = distributed.average(torch.stack(losses), ranks).tolist()
    losses.clear()
    return values


class _StopFlag:
    """Turns Ctrl-C (SIGINT) into a request honoured between steps, so ``last.pt`` never
    holds weights updated by a step it does not count. A second Ctrl-C stops at once,
    unless it comes within ``same_request`` seconds of the first (the same one, passed on
    by torchrun)."""

    def __init__(self, same_request: float = 0.0) -> None:
        self.requested = False
        self._first = 0.0
        self._same_request = same_request
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first >= self._same_request:
                raise KeyboardInterrupt
            return
        self.requested = True
        self._first = time.monotonic()

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _heads_function(network: torch.nn.Module, compile_it: bool) -> Callable[[torch.Tensor], list]:
    """The network's deep-supervision heads as a function of a ``(b, 1, z, y, x)`` batch;
    ``network`` is a :class:`UNet`, or one wrapped by :func:`distributed.replicate`
    (whose ``forward`` gives the heads)."""
    heads = network.forward_heads_zyx if isinstance(network, UNet) else network
    return torch.compile(heads) if compile_it else heads
