"""Context boxes and probes: places of the corrected patches' tomogram nobody corrected,
labelled with the segmentation's calls, trained beside the patches or measuring how far
the network's calls moved; and the share of membrane-centred crops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint, write_mrc

from patch_corrections import (
    ExtractSettings,
    MergeSettings,
    extract_patches,
    merge_corrections,
)
from patch_corrections.constants import IGNORE, MEMBRANE
from patch_corrections.network.devices import Precision
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.context import context_boxes
from patch_corrections.training.data import TrainingPatch, batch_for_step
from patch_corrections.training.validation import moved, selection_score

SHAPE = (40, 120, 120)  # z, y, x
CENTRES = "x,y,z\n30,30,20\n90,30,20\n"


def _tomogram(folder: Path, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """A tomogram, its 0/1 segmentation (random voxels, so that any box of it is found
    again by its labels), and that segmentation."""
    rng = np.random.default_rng(seed)
    segmentation = (rng.random(SHAPE) < 0.2).astype(np.uint8)
    image = (rng.normal(size=SHAPE) - 3.0 * segmentation).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    tomogram = write_mrc(folder / "tomo.mrc", image)
    labels = write_mrc(folder / "tomo_seg.mrc", segmentation)
    return tomogram, labels, segmentation


def _merged(root: Path) -> tuple[Path, np.ndarray]:
    """Two 32³ patches cut and merged (no corrections, a band of 4): a training folder
    whose summary records where they lie."""
    tomogram, labels, segmentation = _tomogram(root / "data")
    (root / "centres.csv").write_text(CENTRES)
    extract_patches(
        tomogram,
        labels,
        root / "patches",
        root / "centres.csv",
        settings=ExtractSettings(patch_size=32, border=4),
    )
    (root / "corrections").mkdir()
    merge_corrections(
        root / "patches",
        root / "corrections",
        root / "train",
        settings=MergeSettings(include_uncorrected=True),
    )
    return root / "train", segmentation


def _box_of(patch: TrainingPatch, segmentation: np.ndarray) -> tuple[int, ...]:
    """Where in the tomogram ``patch`` lies: the first voxel of the one box of the
    segmentation whose calls its annotated labels repeat."""
    where = np.argwhere(patch.labels != IGNORE)[:64]
    values = patch.labels[tuple(where.T)]
    found = [
        (z, y, x)
        for z in range(SHAPE[0] - 31)
        for y in range(SHAPE[1] - 31)
        for x in range(SHAPE[2] - 31)
        if np.array_equal(segmentation[tuple((where + np.array((z, y, x))).T)], values)
    ]
    assert len(found) == 1, (patch.name, found)
    return found[0]


def test_context_boxes_carry_the_segmentations_calls_away_from_the_patches(tmp_path):
    train_dir, segmentation = _merged(tmp_path)
    context = context_boxes(train_dir, count=3, probes=2, seed=4)
    assert [p.name for p in context.probes] == ["probe000", "probe001"]
    assert [p.name for p in context.train] == ["context000", "context001", "context002"]
    for patch in context.train + context.probes:
        assert patch.labels.shape == (32, 32, 32)
        labels = patch.labels
        # The band of the patches' width is ignore; the rest holds the segmentation's calls.
        assert (labels[:4] == IGNORE).all() and (labels[:, :, -4:] == IGNORE).all()
        assert np.isin(labels, (0, 1, IGNORE)).all() and (labels != IGNORE).any()
        z, y, x = _box_of(patch, segmentation)
        # Nothing inside a corrected patch (x 14-45 and 74-105, y 14-45) is annotated.
        inside = np.zeros(SHAPE, bool)
        inside[4:36, 14:46, 14:46] = inside[4:36, 14:46, 74:106] = True
        assert not (inside[z : z + 32, y : y + 32, x : x + 32] & (labels != IGNORE)).any()
    # The same seed cuts the same boxes, another seed others.
    again = context_boxes(train_dir, count=3, probes=2, seed=4)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(again.train, context.train))
    other = context_boxes(train_dir, count=3, probes=2, seed=5)
    assert not all(np.array_equal(a.labels, b.labels) for a, b in zip(other.train, context.train))


def test_no_context_without_the_recorded_tomogram(tmp_path):
    train_dir, _ = _merged(tmp_path)
    (tmp_path / "data" / "tomo.mrc").unlink()
    with pytest.warns(UserWarning, match="tomo.mrc .*is not here: no context box"):
        context = context_boxes(train_dir, count=3, probes=2, seed=0)
    assert context.train == [] and context.probes == []


class _Calls(torch.nn.Module):
    """A network that calls membrane exactly where ``calls`` is true."""

    def __init__(self, calls: np.ndarray):
        super().__init__()
        self.config = type("Config", (), {"divisor": 1})()
        self.logits = torch.from_numpy(np.where(calls, 5.0, -5.0).astype(np.float32))

    def forward_zyx(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None, None]


def test_moved_counts_new_and_lost_membrane_on_annotated_probe_voxels():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0] = MEMBRANE  # 16 membrane voxels
    labels[3] = IGNORE  # 16 ignore voxels, never counted
    probe = TrainingPatch.from_arrays("probe000", np.zeros((4, 4, 4)), labels)
    calls = labels == MEMBRANE
    calls[0, 0, :2] = False  # 2 lost
    calls[1, 0, :3] = True  # 3 new
    calls[3] = True  # on ignore: not counted
    device = torch.device("cpu")
    result = moved(_Calls(calls), [probe], device, Precision.for_device(device))
    assert result == {"moved_new": 3 / 48, "moved_lost": 2 / 48}
    row = {"val_dice": 0.8, **result}
    assert selection_score(row) == pytest.approx(0.8 - 5 / 48)
    assert selection_score({"train_loss": 1.0}) is None


def test_membrane_centres_choose_where_crops_are_centred():
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[40:44, 40:44, 40:44] = MEMBRANE
    patch = TrainingPatch.from_arrays("p", np.zeros(labels.shape), labels)
    config = TrainConfig(iterations=1, batch_size=20, crop_size=16, seed=1)
    always = batch_for_step([patch], 0, replace(config, membrane_centres=1.0))[1]
    never = batch_for_step([patch], 0, replace(config, membrane_centres=0.0))[1]
    assert all((crop == MEMBRANE).any() for crop in always)
    assert sum((crop == MEMBRANE).any() for crop in never) < 5


def test_retrain_from_a_checkpoint_trains_on_context_and_logs_what_moved(tmp_path, run_cli):
    train_dir, _ = _merged(tmp_path)
    start = save_tiny_checkpoint(tmp_path / "start.pt")
    out = tmp_path / "model"
    result = run_cli(
        "retrain",
        "-t",
        train_dir,
        "-o",
        out,
        "--checkpoint",
        start,
        "--iterations",
        4,
        "--crop-size",
        32,
        "--val-every",
        2,
        "--val-fraction",
        0.5,
        "--context",
        3,
    )
    assert result.exit_code == 0, result.output
    assert "1 training and 1 validation patch(es) and 3 context box(es)" in result.output
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",moved_new,moved_lost") and len(rows) == 3
    assert all(float(v) >= 0 for row in rows[1:] for v in row.split(",")[-2:])
    assert (out / "curves.png").stat().st_size > 0 and (out / "best.pt").exists()
    # A resumed run cuts the same boxes and goes on logging what moved.
    result = run_cli("retrain", "-o", out, "--resume", "--iterations", 6)
    assert result.exit_code == 0, result.output
    assert "3 context box(es)" in result.output
    resumed = (out / "metrics.csv").read_text().splitlines()
    assert resumed[:3] == rows and len(resumed) == 4
    # From scratch nothing was there to keep: no probes, no context.
    result = run_cli(
        "retrain",
        "-t",
        train_dir,
        "-o",
        tmp_path / "scratch",
        "--preset",
        "tiny",
        "--iterations",
        2,
        "--crop-size",
        32,
        "--val-every",
        2,
    )
    assert result.exit_code == 0, result.output
    assert "context" not in result.output
    header = (tmp_path / "scratch" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,train_loss,val_loss,val_dice,lr,seconds"


def test_sparse_labels_made_from_merged_patches_keep_where_the_patches_lie(tmp_path):
    from patch_corrections import SparseSettings, simulate_sparse

    train_dir, _ = _merged(tmp_path)
    simulate_sparse(train_dir, tmp_path / "sparse", settings=SparseSettings(fraction=0.5))
    context = context_boxes(tmp_path / "sparse", count=2, probes=1, seed=0)
    assert len(context.train) == 2 and len(context.probes) == 1
