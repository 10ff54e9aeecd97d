"""Helpers that write small real files the way other tools do."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from patch_corrections.cli import app
from patch_corrections.network.threads import usable_cores


def write_mrc(path: Path, data: np.ndarray, voxel_size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """Write ``data`` ``(z, y, x)`` with mrcfile; ``voxel_size`` and ``origin`` are ``x, y, z``."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
    return path


@pytest.fixture(autouse=True)
def _threads_as_chosen(monkeypatch):
    """Commands pick PyTorch's threads from the machine's load unless OMP_NUM_THREADS says;
    the suite says, so what they print does not depend on what else the machine runs."""
    if not os.environ.get("OMP_NUM_THREADS"):
        monkeypatch.setenv("OMP_NUM_THREADS", str(usable_cores()))


@pytest.fixture
def run_cli():
    """Run the CLI in-process; returns the click Result."""
    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


BRIEF_RETRAIN = ("--crop-size", 48, "--iterations", 2, "--val-fraction", 0, "--device", "cpu")
"""``retrain``'s options for a run that only shows the loop goes through."""


def save_tiny_checkpoint(path: Path, normalisation: str | None = "robust_z") -> Path:
    """A tiny network with seeded random weights saved as our checkpoint at ``path``."""
    import torch

    from patch_corrections.network.checkpoints import save_checkpoint
    from patch_corrections.network.unet import PRESETS, UNet

    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    content = {"model_config": network.config.to_dict(), "model": network.state_dict()}
    if normalisation is not None:
        content["normalisation"] = normalisation
    save_checkpoint(path, content)
    return path


def all_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (empty if it does not exist)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if folder.exists() else []
