"""The fine-tuning loop, readable top to bottom: :func:`train` runs :meth:`_Session.step`
until the run's iterations are done, writing a metrics row and a checkpoint every so many
steps.

Every random choice of step ``s`` (which patches, where to crop, how to augment) comes from
generators seeded with ``(seed, s)``, so a resumed run repeats exactly what an uninterrupted
one would have done, and the next batch can be prepared while the current one trains.

Under torchrun (see :mod:`patch_corrections.network.distributed`) each of N processes
takes its share of the same seeded stream: with ``batch_size`` B per process, step ``s`` of
the run trains on the crops one process with batch N·B would cut, rank ``r`` taking crops
``r·B … r·B + B - 1``. Gradients are averaged over the processes (the loss's voxel means
divided by the annotated voxels of all of them), validation patches are
shared out and their results gathered, and only rank 0 writes files and reports.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..constants import BEST_CHECKPOINT, LAST_CHECKPOINT
from ..network import distributed
from ..network.checkpoints import save_checkpoint
from ..network.devices import Precision, sync, to_cpu
from ..network.distributed import SINGLE, Ranks
from ..network.unet import UNet
from .augment import AugmentConfig, augment
from .config import TrainConfig, learning_rate, make_optimizer
from .data import TrainingPatch, batch_for_step
from .losses import deep_supervision_loss, make_loss
from .teacher import Teacher
from .validation import moved, selection_score, validate


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving ``last.pt``."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted at iteration {step}; saved {path}")
        self.step, self.path = step, path


@dataclass
class RunState:
    """What a run has done so far; restored from ``last.pt`` on resume."""

    step: int = 0
    best_dice: float = -1.0
    """Validation Dice of the row ``best.pt`` holds."""
    best_score: float = -np.inf
    """That row's :func:`selection_score` (its Dice, less what moved on the probes)."""
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
    probes: list[TrainingPatch] = (),
    teacher: UNet | None = None,
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
    probes
        Context boxes nobody corrected, not trained on: each metrics row says how far the
        network's calls moved there (:func:`moved`), and ``best.pt`` weighs it.
    teacher
        The starting network, with ``config.teacher``: its membrane probabilities are the
        targets of the voxels nobody decided (default: a copy of ``network`` as it is
        now, which is the starting network unless the run resumes).
    """
    ranks = ranks or distributed.current()
    session = _Session.open(network, config, Path(out_dir), device, resume, split, ranks)
    if config.teacher:
        start = teacher if teacher is not None else copy.deepcopy(network)
        session.teacher = Teacher(start, config, device, ranks)
    state = session.state
    batches = _Batches(train_patches, config, device, ranks, state)
    # torchrun passes a terminal's Ctrl-C on to its workers, which get it twice at once.
    stop = _StopFlag(same_request=2.0 if ranks.distributed else 0.0)
    agreed = False  # whether all ranks stop at this step (and can still talk)
    latest = state.history[-1].get("train_loss") if state.history else None
    try:
        while state.step < config.iterations:
            if distributed.any_rank(stop.requested, ranks):
                agreed = True
                raise KeyboardInterrupt
            # Passed on, not held here: the un-augmented batch goes once augmented.
            session.step(*batches.take(state.step), state.step)
            state.step += 1
            row = session.after_step(val_patches, on_metrics if ranks.main else None, probes)
            if row is not None:
                latest = row["train_loss"]
            if on_step is not None and ranks.main:
                on_step(state.step, latest)
    except KeyboardInterrupt:
        # A second Ctrl-C may have stopped the ranks at different places: no collective.
        state.pending_losses += _read_losses(session.unread, ranks if agreed else SINGLE)
        raise Interrupted(state.step, session.checkpoint(LAST_CHECKPOINT)) from None
    finally:
        stop.release()
        batches.close()
    return state


@dataclass
class _Session:
    """What every step of one session of a run (from its start or a resume) uses."""

    network: UNet
    config: TrainConfig
    device: torch.device
    ranks: Ranks
    out_dir: Path
    split: dict | None
    optimizer: torch.optim.Optimizer
    precision: Precision
    forward: Callable[[torch.Tensor], list[torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    augmenter: torch.Generator
    state: RunState
    started: float
    unread: list[torch.Tensor] = field(default_factory=list)
    """Step losses not yet read from the device: one transfer at each metrics row and
    checkpoint, instead of a wait for the device after every step."""
    teacher: Teacher | None = None
    """The starting network as the teacher of undecided voxels (with ``config.teacher``)."""

    @classmethod
    def open(cls, network, config, out_dir, device, resume, split, ranks) -> _Session:
        """Put ``network`` on ``device`` and make its optimiser, restoring a saved run's
        state, optimiser, random generator and grad scaler from ``resume``."""
        torch.manual_seed(config.seed)
        network.to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if device.type == "cuda" and config.channels_last:
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
                resume.get("best_score", resume["best_dice"]),
                list(resume["history"]),
                list(resume["pending_losses"]),
                resume["elapsed"],
            )
            torch.set_rng_state(resume["rng"]["torch"])
            if precision.scaler.is_enabled() and resume.get("grad_scaler"):
                precision.scaler.load_state_dict(resume["grad_scaler"])
        replicated = distributed.replicate(network, device) if ranks.distributed else network
        forward = _heads_function(replicated, config.compile)
        started = time.perf_counter() - state.elapsed
        return cls(
            network=network,
            config=config,
            device=device,
            ranks=ranks,
            out_dir=out_dir,
            split=split,
            optimizer=optimizer,
            precision=precision,
            forward=forward,
            loss=make_loss(config.loss, ranks, config.prior_shift),
            augmenter=torch.Generator(device=device),
            state=state,
            started=started,
        )

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
        """One optimisation step on the batch ``x`` (images), ``y`` (labels); its loss is
        kept on the device, in :attr:`unread`."""
        config, scaler = self.config, self.precision.scaler
        if config.augment:
            # Rank 0 augments as one process does; the others draw other streams.
            self.augmenter.manual_seed(config.seed * 1_000_003 + step + (self.ranks.rank << 40))
            x, y = augment(x, y, self.augmenter, AugmentConfig())
        if self.device.type == "cuda" and config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        with self.precision.autocast():
            outputs = self.forward(x)
        loss = deep_supervision_loss([o.float() for o in outputs], y, self.loss)
        if self.teacher is not None:
            loss = loss + self.teacher.term(x, outputs[0], y, self.precision)
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), config.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        self.unread.append(loss.detach())

    def after_step(
        self,
        val_patches: list[TrainingPatch],
        on_metrics: Callable[[list[dict]], None] | None = None,
        probes: list[TrainingPatch] = (),
    ) -> dict | None:
        """After a step: a metrics row (validated, ``best.pt`` when it is the best; told to
        ``on_metrics``) and ``last.pt`` when their turn has come, or the run is done. The
        new row, if any."""
        state, config = self.state, self.config
        done = state.step == config.iterations
        logging = state.step % config.val_every == 0 or done
        saving = state.step % config.save_every == 0 or done
        if not (logging or saving):
            return None
        sync(self.device)
        paused = time.perf_counter()
        state.pending_losses += _read_losses(self.unread, self.ranks)
        row = None
        if logging:
            row = {
                "step": state.step,
                "train_loss": float(np.mean(state.pending_losses)),
                "lr": learning_rate(state.step - 1, config),
                "seconds": time.perf_counter() - self.started,
            }
            state.pending_losses = []
            on = (self.device, self.precision, self.ranks)
            if probes:
                row.update(moved(self.network, probes, *on))
            if val_patches:
                row.update(validate(self.network, val_patches, *on))
                if selection_score(row) > state.best_score:
                    state.best_dice, state.best_score = row["val_dice"], selection_score(row)
                    self.checkpoint(BEST_CHECKPOINT)
            state.history.append(row)
            if on_metrics is not None:
                on_metrics(state.history)
        if saving:
            self.checkpoint(LAST_CHECKPOINT)
        state.io_seconds += time.perf_counter() - paused
        return row

    def checkpoint(self, name: str) -> Path:
        """Write the run as it stands to ``out_dir / name`` (rank 0 only); its path."""
        path = self.out_dir / name
        if not self.ranks.main:
            return path
        state, scaler = self.state, self.precision.scaler
        save_checkpoint(
            path,
            {
                "model_config": self.network.config.to_dict(),
                "train_config": asdict(self.config),
                "normalisation": self.config.normalisation,
                "pixel_size": self.config.pixel_size,
                "model": to_cpu(self.network.state_dict()),
                "optimizer": to_cpu(self.optimizer.state_dict()),
                "step": state.step,
                "best_dice": state.best_dice,
                "best_score": state.best_score,
                "history": state.history,
                "pending_losses": state.pending_losses,
                "split": self.split,
                "elapsed": time.perf_counter() - self.started,
                "rng": {"torch": torch.get_rng_state()},
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "processes": self.ranks.size,
            },
        )
        return path


class _Batches:
    """This rank's batch of each step, cut (and pinned, for a fast copy to a GPU) in a
    thread while the step before it trains."""

    def __init__(self, patches, config: TrainConfig, device, ranks: Ranks, state: RunState):
        self._patches, self._config, self._ranks = patches, config, ranks
        self._device, self._state = device, state
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._upcoming = self._pool.submit(self._fetch, state.step)

    def _fetch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = batch_for_step(self._patches, step, self._config, self._ranks)
        x, y = torch.from_numpy(image), torch.from_numpy(labels)
        return (x.pin_memory(), y.pin_memory()) if self._device.type == "cuda" else (x, y)

    def take(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s batch on the device; the next one starts being cut."""
        waited = time.perf_counter()
        x, y = self._upcoming.result()
        x = x.to(self._device, non_blocking=True)
        y = y.to(self._device, non_blocking=True)
        self._state.data_wait += time.perf_counter() - waited
        if step + 1 < self._config.iterations:
            self._upcoming = self._pool.submit(self._fetch, step + 1)
        return x, y

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
