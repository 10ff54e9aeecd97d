"""A training step never waits for the device: neither the loop nor the losses read a
tensor's value back to the host (on a GPU each such read blocks until the GPU is done, so
the next step cannot be queued). Values are read only at metrics rows and checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from unittest.mock import patch

import numpy as np
import pytest
import torch

from patch_corrections.network.unet import PRESETS, UNet
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.data import TrainingPatch
from patch_corrections.training.loop import train
from patch_corrections.training.losses import deep_supervision_loss, downsample_labels, make_loss

HOST_READS = ("item", "tolist", "__float__", "__int__", "__index__", "__bool__")
"""Tensor methods that hand a value to Python: on a GPU, each one waits for the device."""

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda(test):
    """A test of a GPU path: skipped without one, selected by ``pytest -m cuda`` (what the
    GPU check runs)."""
    return pytest.mark.cuda(ON_CUDA(test))


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """The names of the :data:`HOST_READS` called on any tensor inside the block, in order."""
    calls: list[str] = []

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return read

    with ExitStack() as stack:
        for name in HOST_READS:
            stack.enter_context(patch.object(torch.Tensor, name, counted(name)))
        yield calls


def _patches(count: int = 3, edge: int = 24) -> list[TrainingPatch]:
    """Random membrane (10 %) in background, with an ignore slab along z."""
    rng = np.random.default_rng(0)
    patches = []
    for i in range(count):
        labels = (rng.random((edge,) * 3) < 0.1).astype(np.uint8)
        labels[:4] = 2
        patches.append(TrainingPatch.from_arrays(f"p{i}", rng.normal(size=labels.shape), labels))
    return patches


def _config(loss: str, iterations: int = 4) -> TrainConfig:
    # No metrics row or checkpoint before the last step; augmentation on.
    return TrainConfig(
        iterations=iterations,
        crop_size=16,
        seed=3,
        val_every=100,
        save_every=100,
        augment=True,
        loss=loss,
    )


@pytest.mark.parametrize("loss", ["bce+dice", "rrw+dice"])
def test_training_steps_read_nothing_back_until_the_metrics_row(loss, tmp_path):
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    seen: dict[int, list[str]] = {}
    with host_reads() as calls:
        state = train(
            network,
            _patches(),
            [],
            _config(loss),
            tmp_path,
            torch.device("cpu"),
            on_step=lambda step, value: seen.setdefault(step, list(calls)),
        )
    # Setting up and the first three steps: no read at all.
    assert seen[1] == seen[2] == seen[3] == []
    # The last step writes the metrics row: its losses are read, in one transfer.
    assert seen[4].count("tolist") == 1
    assert len(state.history) == 1 and np.isfinite(state.history[0]["train_loss"])


@pytest.mark.parametrize("loss", ["rrw", "rrw+dice", "bce+dice"])
def test_losses_and_their_gradients_read_nothing_back(loss):
    generator = torch.Generator().manual_seed(5)
    target = torch.randint(0, 3, (2, 1, 32, 32, 32), generator=generator)
    target[1, :, :, 10:] = 2  # planes without any annotated voxel
    logits = [
        torch.randn((2, 1) + (32 // f,) * 3, generator=generator).requires_grad_(True)
        for f in (1, 2, 4)
    ]
    with host_reads() as calls:
        value = deep_supervision_loss(logits, target, make_loss(loss))
        value.backward()
        downsample_labels(target, 2)
        assert calls == []
        float(value.detach())  # the counter sees a read when there is one
    assert calls == ["__float__"]
    assert all(torch.isfinite(x.grad).all() for x in logits)


@_cuda
@pytest.mark.parametrize("loss", ["bce+dice", "rrw+dice"])
def test_training_steps_never_synchronise_the_gpu(loss, tmp_path):
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])

    def on_step(step: int, value: float | None) -> None:
        # Steps 2 and 3 run with any synchronisation an error: step 1 may autotune
        # cuDNN, and step 4 writes the metrics row and last.pt.
        torch.cuda.set_sync_debug_mode("error" if step in (1, 2) else "default")

    try:
        state = train(
            network,
            _patches(),
            [],
            _config(loss),
            tmp_path,
            torch.device("cuda"),
            on_step=on_step,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.step == 4 and np.isfinite(state.history[0]["train_loss"])


def test_augmentation_reads_nothing_back():
    # Every transform on: the choices that shape the work are drawn on the host.
    from patch_corrections.training.augment import AugmentConfig, augment

    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (3, 1, 16, 16, 16), generator=generator, dtype=torch.uint8)
    everything = AugmentConfig(
        flip=1, rotate90=1, affine=1, brightness=1, contrast=1, gamma=1, noise=1, blur=1
    )
    with host_reads() as calls:
        image, moved = augment(labels.float(), labels, generator, everything)
    assert calls == []
    assert image.shape == labels.shape and set(torch.unique(moved).tolist()) <= {0, 1, 2}
