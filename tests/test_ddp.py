"""Training under torchrun on the CPU (gloo, two processes): the same weights as one
process with the whole batch, only rank 0 writes, resume continues a two-process run, and
checkpoints pass between one process and two."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import all_files, save_tiny_checkpoint

from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.network.checkpoints import read_checkpoint
from patch_corrections.network.distributed import Ranks
from patch_corrections.training.config import TrainConfig
from patch_corrections.training.data import TrainingPatch, batch_for_step
from patch_corrections.workflows.training import RetrainSettings, retrain

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with gloo",
)

ROOT = Path(__file__).resolve().parent.parent
# SGD: AdamW's step (gradient over its running RMS) turns the float rounding of a gradient
# summed in another order into differences of a whole step where the gradient is near 0.
OPTIONS = {
    "preset": "tiny",
    "crop_size": 32,
    "val_every": 2,
    "augment": False,
    "device": "cpu",
    "optimizer": "sgd",
}


def _folder(root: Path, count: int, seed: int, ignore: bool) -> Path:
    """A training folder of ``count`` 40³ patches with membrane planes; with ``ignore`` a
    slab along y is ignore."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(count):
        labels = np.zeros((40, 40, 40), np.uint8)
        for z in rng.integers(4, 36, 3):
            labels[z : z + 2] = 1
        image = rng.normal(size=labels.shape) + 2.0 * labels
        if ignore:
            labels[:, :6] = 2
        geometry = Geometry((1.0, 1.0, 1.0))
        write_volume(root / "imagesTr" / f"p{i}_0000.nii.gz", image.astype(np.float32), geometry)
        write_volume(root / "labelsTr" / f"p{i}.nii.gz", labels, geometry)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, run=subprocess.run, **options):
    """``torchrun --nproc-per-node 2 -m patch_corrections retrain ARGS`` on the CPU, by
    ``run``; a ``subprocess.run`` must succeed."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "patch_corrections",
        "retrain",
        *map(str, args),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    kwargs = {"cwd": ROOT, "env": environment, "text": True, **options}
    if run is not subprocess.run:
        return run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    result = run(command, capture_output=True, timeout=120, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _metrics(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()[1:]
    return np.array([[float(v) for v in line.split(",")[:5]] for line in lines])


def _assert_same_run(ddp: Path, single: Path, steps: int) -> None:
    """``ddp`` (two processes, batch 1 each) holds what ``single`` (one, batch 2) holds,
    written by rank 0 alone: the files of one run, no temporary left, one metrics row per
    logged step, the same weights and scores to float tolerance."""
    assert sorted(p.name for p in all_files(ddp)) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]
    saved = read_checkpoint(ddp / "last.pt")
    assert saved["step"] == steps and saved["processes"] == 2
    ours, theirs = saved["model"], read_checkpoint(single / "last.pt")["model"]
    assert ours.keys() == theirs.keys()  # the network's own names, not a wrapper's
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # Validation, shared out over the ranks (3 patches on 2) and gathered, scores the same.
    two, one = _metrics(ddp / "metrics.csv"), _metrics(single / "metrics.csv")
    assert two[:, 0].tolist() == one[:, 0].tolist() == list(range(2, steps + 1, 2))
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)


def test_each_rank_takes_its_share_of_the_batch_one_process_would_draw():
    rng = np.random.default_rng(1)
    shape = (24, 24, 24)
    patches = [
        TrainingPatch.from_arrays(f"p{i}", rng.normal(size=shape), rng.integers(0, 3, shape))
        for i in range(3)
    ]
    config = TrainConfig(iterations=1, batch_size=3, crop_size=16, seed=5)
    whole = batch_for_step(patches, 7, config)
    per_rank = replace(config, batch_size=1)
    shares = [batch_for_step(patches, 7, per_rank, Ranks(r, 3)) for r in range(3)]
    for i in (0, 1):
        np.testing.assert_array_equal(np.concatenate([s[i] for s in shares]), whole[i])


def test_two_processes_train_as_one_with_the_whole_batch(tmp_path):
    train_dir = _folder(tmp_path / "train", 3, seed=0, ignore=False)
    val_dir = _folder(tmp_path / "val", 3, seed=1, ignore=True)
    # A start written by one process, fine-tuned by two: checkpoints pass that way...
    retrain(train_dir, tmp_path / "start", settings=RetrainSettings(iterations=1, **OPTIONS))
    start = tmp_path / "start" / "last.pt"
    single = RetrainSettings(iterations=4, batch_size=2, **OPTIONS)
    retrain(train_dir, tmp_path / "one", start, val_dir, settings=single)

    ddp = tmp_path / "two"
    common = ["-t", train_dir, "-o", ddp, "--preset", "tiny", "--crop-size", 32]
    result = _torchrun(
        *common,
        "--checkpoint",
        start,
        "--optimizer",
        "sgd",
        "--val-dir",
        val_dir,
        "--iterations",
        4,
        "--batch-size",
        1,
        "--val-every",
        2,
        "--no-augment",
        "--device",
        "cpu",
    )
    assert result.stdout.count("Training ") == 1  # rank 0 alone tells
    assert "2 processes (cpu, gloo)" in result.stdout and "2 x 1 x 32³" in result.stdout
    _assert_same_run(ddp, tmp_path / "one", 4)

    # Resume continues a two-process run as one process continues its own.
    retrain(train_dir, tmp_path / "one", settings=replace(single, iterations=6, resume=True))
    result = _torchrun(*common, "--resume", "--iterations", 6)
    assert "resuming at iteration 4" in result.stdout
    _assert_same_run(ddp, tmp_path / "one", 6)

    # A checkpoint written by two processes fine-tunes in one.
    report = retrain(
        train_dir,
        tmp_path / "after",
        ddp / "last.pt",
        settings=RetrainSettings(iterations=1, val_fraction=0, **OPTIONS),
    )
    assert report.step == 1 and np.isfinite(report.final["train_loss"])


def _sample_training_folders(root: Path) -> tuple[Path, Path]:
    """The demo's merged patches of the sample (96³, 16-voxel border band, the bundled
    corrections), and the same made sparse (every fourth slice along y kept)."""
    from patch_corrections import (
        ExtractSettings,
        SparseSettings,
        extract_patches,
        merge_corrections,
        simulate_sparse,
    )

    sample = ROOT / "sample_data"
    extract_patches(
        sample / "tomogram.mrc",
        sample / "prediction.mrc",
        root / "patches",
        sample / "centres.csv",
        settings=ExtractSettings(patch_size=96),
    )
    merge_corrections(root / "patches", sample / "corrections", root / "merged")
    simulate_sparse(
        root / "merged", root / "sparse", settings=SparseSettings(axis="y", fraction=0.25)
    )
    return root / "merged", root / "sparse"


@pytest.mark.parametrize("labels", ["merged", "sparse", "taught"])
def test_two_processes_train_as_one_where_crops_hold_different_amounts_of_ignore(tmp_path, labels):
    # Each crop of a merged patch holds its own amount of ignore (the border band, sparse
    # slices), so each rank annotates its own number of voxels: the mean over annotated
    # voxels must be the whole batch's, not the mean of each rank's mean; and the
    # teacher's mean over the voxels nobody decided, the same way ("taught").
    folders = dict(zip(("merged", "sparse"), _sample_training_folders(tmp_path)))
    train_dir = folders.get(labels, folders["merged"])
    options = {**OPTIONS, "crop_size": 48, "val_every": 3, "val_fraction": 0.0, "seed": 3}
    start, taught = None, ()
    if labels == "taught":
        start = save_tiny_checkpoint(tmp_path / "start.pt")
        options = {**options, "teacher": 1.0}
        taught = ("--checkpoint", start, "--teacher", 1)
    retrain(
        train_dir,
        tmp_path / "one",
        start,
        settings=RetrainSettings(iterations=6, batch_size=2, **options),
    )
    _torchrun(
        "-t",
        train_dir,
        "-o",
        tmp_path / "two",
        "--preset",
        "tiny",
        "--crop-size",
        48,
        "--optimizer",
        "sgd",
        "--iterations",
        6,
        "--batch-size",
        1,
        "--val-every",
        3,
        "--val-fraction",
        0,
        "--seed",
        3,
        "--no-augment",
        "--device",
        "cpu",
        *taught,
    )
    ours = read_checkpoint(tmp_path / "two" / "last.pt")["model"]
    theirs = read_checkpoint(tmp_path / "one" / "last.pt")["model"]
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # The loss each logs is the whole batch's too.
    losses = [
        [
            float(row.split(",")[1])
            for row in (tmp_path / run / "metrics.csv").read_text().split()[1:]
        ]
        for run in ("two", "one")
    ]
    np.testing.assert_allclose(*losses, rtol=1e-4)


def test_ctrl_c_stops_every_rank_at_the_same_step_and_saves(tmp_path):
    train_dir = _folder(tmp_path / "train", 2, seed=0, ignore=False)
    out = tmp_path / "model"
    process = _torchrun(
        "-t",
        train_dir,
        "-o",
        out,
        "--preset",
        "tiny",
        "--crop-size",
        32,
        "--iterations",
        10_000,
        "--val-every",
        2,
        "--val-fraction",
        0,
        "--batch-size",
        1,
        "--device",
        "cpu",
        run=subprocess.Popen,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.csv").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        # As a terminal's Ctrl-C: to torchrun and both workers (torchrun passes it on too).
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stops = re.findall(r"Interrupted at iteration (\d+); saved", output)
    assert len(stops) == 2 and stops[0] == stops[1], output  # one line per rank, same step
    saved = read_checkpoint(out / "last.pt")
    assert saved["step"] == int(stops[0]) < 10_000
    assert sorted(p.name for p in all_files(out)) == ["last.pt", "metrics.csv"]
