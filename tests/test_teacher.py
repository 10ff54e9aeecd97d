"""The starting network as a teacher: its membrane probabilities are the targets of the
voxels nobody decided (ignore), so fine-tuning on a few patches learns their corrections
without drifting where nobody corrected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from test_context import _merged

from patch_corrections.constants import BACKGROUND, IGNORE, MEMBRANE
from patch_corrections.network.checkpoints import load_network
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.data import TrainingPatch
from patch_corrections.training.loop import train
from patch_corrections.training.losses import taught_bce


def test_taught_bce_is_the_cross_entropy_against_the_teacher_on_ignore_voxels_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, 6, generator=generator)
    taught = torch.rand(2, 1, 6, 6, 6, generator=generator)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=generator)
    undecided = target == IGNORE
    p = torch.sigmoid(logits[undecided])
    t = taught[undecided]
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert torch.allclose(taught_bce(logits, taught, target), expected, atol=1e-6)
    # What the labels decide is the loss's business, not the teacher's.
    moved = torch.where(undecided, logits, torch.full_like(logits, float("nan")))
    assert torch.allclose(taught_bce(moved, taught, target), expected, atol=1e-6)
    decided = torch.where(undecided, torch.full_like(target, MEMBRANE), target)
    assert taught_bce(logits, taught, decided) == 0


def test_taught_bce_leaves_voxels_near_labelled_membrane_to_the_labels():
    target = torch.full((1, 1, 9, 9, 9), IGNORE)
    target[0, 0, 4, 4, 4] = MEMBRANE
    target[0, 0, 0, 0, 0] = BACKGROUND
    logits = torch.full((1, 1, 9, 9, 9), -2.0)
    taught = torch.zeros(1, 1, 9, 9, 9)
    # Only the voxels more than 2 voxels (along some axis) from the membrane voxel count:
    # a teacher of 1 there, 0 elsewhere, gives the loss of a teacher of 1 everywhere.
    far = torch.ones(9, 9, 9, dtype=torch.bool)
    far[2:7, 2:7, 2:7] = False
    taught[0, 0][far] = 1.0
    everywhere = taught_bce(logits, torch.ones_like(taught), target)
    assert torch.allclose(taught_bce(logits, taught, target, clearance=2), everywhere)
    assert taught_bce(logits, taught, target) < everywhere


def _biased_patch() -> TrainingPatch:
    """A 32³ patch whose interior a person called membrane nearly everywhere (it is
    darker), its band of 8 voxels ignore: what a box chosen for its missed membrane
    teaches, in the extreme."""
    rng = np.random.default_rng(0)
    labels = np.full((32, 32, 32), IGNORE, np.uint8)
    labels[8:-8, 8:-8, 8:-8] = MEMBRANE
    labels[8:-8, 8:-8, 8:12] = BACKGROUND
    image = rng.normal(size=labels.shape).astype(np.float32) - 2.0 * (labels == MEMBRANE)
    return TrainingPatch.from_arrays("biased", image, labels)


def _band_change(tmp_path, teacher: float) -> float:
    """Mean change of the membrane probability on the band after 12 steps."""
    network = load_network(save_tiny_checkpoint(tmp_path / "start.pt")).network
    patch = _biased_patch()
    x = torch.from_numpy(patch.image)[None, None]
    with torch.no_grad():
        before = torch.sigmoid(network.forward_zyx(x))
    config = TrainConfig(
        iterations=12, crop_size=32, optimizer="adamw", lr=3e-3, augment=False, teacher=teacher
    )
    train(network, [patch], [], config, tmp_path / f"run_{teacher}", torch.device("cpu"))
    network.eval()
    with torch.no_grad():
        after = torch.sigmoid(network.forward_zyx(x))
    band = torch.from_numpy(patch.labels == IGNORE)[None, None]
    return float((after - before).abs()[band].mean())


def test_a_teacher_keeps_the_starting_calls_where_nobody_decided(tmp_path):
    drift = _band_change(tmp_path, 0.0)
    taught = _band_change(tmp_path, 40.0)
    assert drift > 0.05
    assert taught < drift / 2, (taught, drift)


def test_retrain_with_a_teacher_resumes_with_it_and_says_when_it_is_gone(tmp_path, run_cli):
    train_dir, _ = _merged(tmp_path)
    start = save_tiny_checkpoint(tmp_path / "start.pt")
    out = tmp_path / "model"
    common = ("--iterations", 2, "--crop-size", 32, "--val-every", 2, "--val-fraction", 0.5)
    new = ("retrain", "-t", train_dir, "-o", out, "--checkpoint", start)
    result = run_cli(*new, "--teacher", 2, "--teacher-clearance", 3, *common)
    assert result.exit_code == 0, result.output
    assert "the starting network teaching the voxels nobody decided (--teacher 2)" in (
        result.output
    )
    saved = torch.load(out / "last.pt", weights_only=False)["train_config"]
    assert saved["teacher"] == 2 and saved["teacher_from"] == str(start.resolve())
    assert saved["teacher_clearance"] == 3
    result = run_cli("retrain", "-o", out, "--resume", "--iterations", 4)
    assert result.exit_code == 0, result.output
    assert "(--teacher 2)" in result.output
    assert run_cli("retrain", "-o", out, "--resume", "--iterations", 6, "--teacher", 1).exit_code
    start.rename(tmp_path / "moved.pt")
    result = run_cli("retrain", "-o", out, "--resume", "--iterations", 6)
    assert result.exit_code != 0
    assert f"{start.resolve()}: the checkpoint this run started from" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--preset", "tiny", "--teacher", "1"), "--teacher needs a starting network"),
        (("--teacher", "-1"), "--teacher must be 0 or more"),
        (("--teacher", "1", "--relabel-rounds", "1"), "do not combine with --relabel-rounds"),
    ],
)
def test_retrain_refuses_a_teacher_it_cannot_have(tmp_path, run_cli, extra, message):
    train_dir, _ = _merged(tmp_path)
    result = run_cli("retrain", "-t", train_dir, "-o", tmp_path / "m", "--iterations", 2, *extra)
    assert result.exit_code != 0 and message in result.output, result.output
