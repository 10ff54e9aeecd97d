"""Training on CPU with the tiny network: the loss falls, resuming is exact, checkpoints
round-trip, augmentation keeps labels valid, and bad input gets one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import all_files

from patch_corrections.constants import IGNORE
from patch_corrections.errors import PatchCorrectionsWarning
from patch_corrections.inference.intensity import normalise
from patch_corrections.io.patch_folders import find_training_pairs
from patch_corrections.io.volumes import Geometry, read_volume, write_volume
from patch_corrections.labels.relabel import relabel_candidates
from patch_corrections.network.checkpoints import network_from_checkpoint, read_checkpoint
from patch_corrections.network.unet import PRESETS, UNet
from patch_corrections.training.augment import AugmentConfig, augment
from patch_corrections.training.config import TrainConfig, learning_rate
from patch_corrections.training.data import TrainingPatch, sample_crop
from patch_corrections.training.datasets import load_split, load_training_pairs
from patch_corrections.training.loop import Interrupted, train
from patch_corrections.training.relabel_rounds import train_with_relabeling
from patch_corrections.training.validation import predict_patch

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.fixture(scope="module")
def sample_train_dir(tmp_path_factory):
    """The README's main job: sample patches merged with the bundled corrections."""
    from typer.testing import CliRunner

    from patch_corrections.cli import app

    folder = tmp_path_factory.mktemp("sample")
    runner = CliRunner()
    for args in (
        [
            "extract_patches",
            "-t",
            SAMPLE / "tomogram.mrc",
            "-s",
            SAMPLE / "prediction.mrc",
            "-c",
            SAMPLE / "centres.csv",
            "--patch-size",
            96,
            "-o",
            folder / "patches",
        ],
        [
            "merge_corrections",
            "-l",
            folder / "patches",
            "-c",
            SAMPLE / "corrections",
            "-o",
            folder / "train",
        ],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return folder / "train"


@pytest.fixture(scope="module")
def sample_patches(sample_train_dir):
    return load_training_pairs(find_training_pairs(sample_train_dir))


CONFIG = TrainConfig(
    iterations=6,
    batch_size=2,
    crop_size=32,
    optimizer="adamw",
    lr=3e-3,
    val_every=3,
    save_every=3,
    seed=7,
)


def _run(patches, out_dir, config=CONFIG, resume=None, on_step=None):
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    if resume is not None:
        network, _ = network_from_checkpoint(resume, out_dir / "last.pt")
    state = train(
        network,
        patches[:3],
        patches[3:],
        config,
        out_dir,
        torch.device("cpu"),
        resume=resume,
        on_step=on_step,
    )
    return network, state


def test_loss_falls_on_sample_data(sample_patches, tmp_path):
    config = replace(CONFIG, iterations=40, val_every=10, save_every=40)
    _, state = _run(sample_patches, tmp_path, config)
    losses = [row["train_loss"] for row in state.history]
    assert losses[-1] < 0.9 * losses[0], losses
    dice = [row["val_dice"] for row in state.history]
    assert dice[-1] > dice[0], dice
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_resumed_run_matches_uninterrupted(sample_patches, tmp_path):
    whole, state = _run(sample_patches, tmp_path / "whole")

    def stop_at_three(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: honoured before step 4

    with pytest.raises(Interrupted) as stopped:
        _run(sample_patches, tmp_path / "split", on_step=stop_at_three)
    assert stopped.value.step == 3
    content = read_checkpoint(tmp_path / "split" / "last.pt")
    assert content["step"] == 3
    resumed, resumed_state = _run(sample_patches, tmp_path / "split", resume=content)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r["train_loss"] for r in resumed_state.history] == [
        r["train_loss"] for r in state.history
    ]


def test_step_losses_read_together_equal_those_read_one_by_one(sample_patches, tmp_path):
    # Without validation patches, when rows are logged does not change the run.
    def run(config, on_step):
        torch.manual_seed(0)
        network = UNet(PRESETS["tiny"])
        cpu = torch.device("cpu")
        return train(network, sample_patches[:3], [], config, tmp_path, cpu, on_step=on_step)

    every_step = replace(CONFIG, iterations=4, val_every=1, save_every=100)
    shown = []
    each = [r["train_loss"] for r in run(every_step, lambda s, v: shown.append(v)).history]
    assert len(set(each)) == 4 and shown == each
    saved, shown = {}, []

    def on_step(step, loss):
        shown.append(loss)
        if step == 2:
            saved.update(read_checkpoint(tmp_path / "last.pt"))

    state = run(replace(every_step, val_every=100, save_every=2), on_step)
    assert saved["step"] == 2 and saved["pending_losses"] == each[:2]
    assert state.history[0]["train_loss"] == float(np.mean(each))
    assert shown == [None, None, None, state.history[0]["train_loss"]]


def test_checkpoint_round_trips_with_weights_only(sample_patches, tmp_path):
    network, _ = _run(sample_patches, tmp_path)
    content = torch.load(tmp_path / "last.pt", weights_only=True)
    assert content["normalisation"] == "robust_z" and content["step"] == CONFIG.iterations
    assert TrainConfig.from_dict(content["train_config"]) == CONFIG
    loaded, _ = network_from_checkpoint(content, tmp_path / "last.pt")
    x = torch.randn(1, 1, 16, 16, 16)
    network.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(x), loaded(x))


def test_relabeling_rounds_adopt_only_candidates_on_a_curriculum(sample_patches, tmp_path):
    # the demo's starting network already finds membrane, so every round adopts some
    start = SAMPLE / "starting_model.pt"
    network, _ = network_from_checkpoint(read_checkpoint(start), start)
    train_patches = sample_patches[:3]
    # a large ignore region in the middle of every patch, as if never annotated
    hidden = []
    for patch in train_patches:
        labels = patch.labels.copy()
        labels[20:60, 20:60, 20:60] = IGNORE
        hidden.append(patch.with_labels(labels))
    candidates = [relabel_candidates(p.labels, border=16) for p in hidden]
    adopted = {}
    states = train_with_relabeling(
        network,
        hidden,
        sample_patches[3:],
        replace(CONFIG, iterations=4, val_every=4, save_every=4),
        tmp_path,
        torch.device("cpu"),
        rounds=2,
        max_share=1.0,
        candidates=candidates,
        round_iterations=2,
        on_round=lambda t, masks: adopted.setdefault(t, masks),
    )
    assert [s.step for s in states] == [4, 2, 2]
    for t in (0, 1, 2):
        assert (tmp_path / f"round_{t}" / "last.pt").exists()
    assert sorted(adopted) == [1, 2]
    for labels in adopted.values():
        for adopted_patch, allowed in zip(labels, candidates):
            assert not ((adopted_patch != IGNORE) & ~allowed).any()
            assert not (adopted_patch == 0).any()  # membrane only by default
    # round 2 adopts all predicted membrane of the candidates, round 1 half of it
    probability = predict_patch(network, hidden[0].image, torch.device("cpu"))
    assert probability.shape == hidden[0].labels.shape and probability.dtype == np.float32
    total = [sum(int((a == 1).sum()) for a in adopted[t]) for t in (1, 2)]
    assert 0 < total[0] < total[1]
    # the patches given keep their own labels
    assert all((p.labels[20:60, 20:60, 20:60] == IGNORE).all() for p in hidden)


def test_learning_rate_schedule():
    config = TrainConfig(iterations=100, lr=1.0, warmup=10)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(10, config) == pytest.approx(1.0)
    assert learning_rate(100, config) == pytest.approx(0.0)
    cosine = replace(config, schedule="cosine")
    assert learning_rate(55, cosine) == pytest.approx(0.5)


def test_augmentation_keeps_labels_and_alignment():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 1, 12, 12, 12), generator=generator, dtype=torch.uint8)
    image = labels.float()
    only_moves = AugmentConfig(affine=0.0, brightness=0, contrast=0, gamma=0, noise=0, blur=0)
    moved_image, moved_labels = augment(image, labels, generator, only_moves)
    assert torch.equal(moved_image, moved_labels.float())  # flips and turns move both alike
    assert not torch.equal(moved_labels, labels)
    everything = AugmentConfig(
        flip=1, rotate90=1, affine=1, brightness=1, contrast=1, gamma=1, noise=1, blur=1
    )
    new_image, new_labels = augment(image, labels, generator, everything)
    assert new_labels.dtype == labels.dtype
    assert set(torch.unique(new_labels).tolist()) <= {0, 1, 2}
    assert torch.isfinite(new_image).all() and not torch.equal(new_image, image)


def test_crops_contain_annotated_voxels_and_pad_with_ignore():
    labels = np.full((20, 20, 20), 2, np.uint8)
    labels[14:17, 3:6, 9:12] = 0
    labels[15, 4, 10] = 1
    patch = TrainingPatch.from_arrays(
        "p", np.random.default_rng(0).normal(size=labels.shape), labels
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, crop = sample_crop(patch, (8, 8, 8), rng)
        assert (crop != 2).any()
    _, big = sample_crop(patch, (24, 24, 24), rng)
    assert big.shape == (24, 24, 24) and (big[20:] == 2).all()


def test_normalise_is_robust():
    values = np.concatenate([np.random.default_rng(0).normal(5, 2, 10000), [1e6]])
    out = normalise(values)
    assert abs(np.median(out)) < 0.05 and 0.9 < np.median(np.abs(out)) * 1.4826 < 1.1


def _training_folder(root: Path, labels: np.ndarray, image_shape=None, voxel=1.0) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    geometry = Geometry((voxel, voxel, voxel))
    image = np.random.default_rng(0).normal(size=image_shape or labels.shape)
    write_volume(root / "imagesTr" / "p_0000.nii.gz", image.astype(np.float32), geometry)
    write_volume(root / "labelsTr" / "p.nii.gz", labels, geometry)
    return root


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("empty", [], "no label files; run merge_corrections first"),
        ("not_training", [], "not a training folder"),
        ("shapes", [], "differs from its image"),
        ("values", [], "label values must be 0, 1 or 2; found 3"),
        ("ok", ["--crop-size", "12"], "--crop-size 12: must be a multiple of 8"),
        ("ok", ["--crop-size", "8"], "--crop-size 8: at least 16 for this network"),
        ("ok", ["--crop-size", "24"], "larger than every training patch (the largest edge is 16)"),
        ("ok", ["--checkpoint", "{other}"], "weights do not describe this U-Net"),
        ("ok", ["--checkpoint", "{garbage}"], "not a readable PyTorch checkpoint"),
        ("ok", ["--resume"], "nothing to resume"),
        ("no_train_dir", ["--resume"], "last.pt: nothing to resume; start without --resume"),
        ("no_train_dir", [], "--train-dir: give the training folder (only --resume knows it)"),
        ("ok", ["--seed", "-1"], "--seed must be at least 0, got -1"),
        (
            "ok",
            ["--batch-size", "100000", "--crop-size", "16"],
            "--batch-size 100000 with --crop-size 16: a training step on cpu needs about",
        ),
        ("ok", ["--lr", "-1"], "--lr must be a positive number"),
        ("ok", ["--device", "mps"], "--device mps: expected auto, cpu, cuda or cuda:N"),
        ("ok", ["--warmup", "5"], "--warmup 5 must be shorter than the run (2)"),
        ("all_ignore", [], "no training patch has an annotated (non-ignore) voxel"),
        ("ok", ["--loss", "focal+dice"], "--loss focal+dice: unknown loss term 'focal'"),
        ("ok", ["--loss", "dice+dice"], "each loss term may appear once"),
        ("ok", ["--relabel-rounds", "-1"], "--relabel-rounds must be 0 or more"),
        ("ok", ["--relabel-rounds", "1", "--relabel-max", "0"], "--relabel-max must be in"),
        ("ok", ["--relabel-rounds", "1", "--relabel-iterations", "0"], "at least 1, got 0"),
        ("ok", ["--relabel-rounds", "1", "--resume"], "a relabeling run cannot be resumed"),
        ("ok", ["--relabel-rounds", "1"], "no ignore voxel outside the border band"),
        ("ok", ["--relabel-max", "0.3"], "add --relabel-rounds (1 or more)"),
        ("ok", ["--relabel-iterations", "3"], "add --relabel-rounds (1 or more)"),
        ("ok", ["--relabel-background"], "add --relabel-rounds (1 or more)"),
        (
            "ok",
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--epochs", "0"],
            "--device cuda:7: no CUDA device"
            if not torch.cuda.is_available()
            else "at least one step",
        ),
    ],
)
def test_retrain_bad_input(tmp_path, run_cli, setup, extra, message):
    labels = np.zeros((16, 16, 16), np.uint8)
    folder = tmp_path / "train"
    if setup == "empty":
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
    elif setup == "not_training":
        folder.mkdir()
    elif setup == "shapes":
        _training_folder(folder, labels, image_shape=(16, 16, 17))
    elif setup == "values":
        labels[3, 3, 3] = 3
        _training_folder(folder, labels)
    elif setup == "all_ignore":
        _training_folder(folder, np.full_like(labels, 2))
    else:
        _training_folder(folder, labels)
    torch.save({"state_dict": {"_model.encoder.weight": torch.zeros(3)}}, tmp_path / "other.ckpt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    extra = [
        e.format(other=tmp_path / "other.ckpt", garbage=tmp_path / "garbage.pt") for e in extra
    ]
    source = [] if setup == "no_train_dir" else ["-t", folder]
    result = run_cli(
        "retrain",
        *source,
        "-o",
        tmp_path / "model",
        "--preset",
        "tiny",
        "--iterations",
        2,
        "--crop-size",
        16,
        *extra,
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert all_files(tmp_path / "model") == []


def test_retrain_cli_end_to_end_and_resume(sample_train_dir, tmp_path, run_cli):
    base = ["retrain", "-t", sample_train_dir, "-o", tmp_path / "model", "--preset", "tiny"]
    args = [*base, "--iterations", 4, "--crop-size", 32, "--val-every", 2, "--batch-size", 1]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "from scratch (no --checkpoint)" in result.output and "val Dice" in result.output
    names = sorted(p.name for p in all_files(tmp_path / "model"))
    assert names == ["best.pt", "curves.png", "last.pt", "metrics.csv"]
    rows = (tmp_path / "model" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,val_loss,val_dice,lr,seconds" and len(rows) == 3
    result = run_cli(*args)
    assert result.exit_code == 1 and "holds a run" in result.output
    # The saved run knows its training folder.
    result = run_cli("retrain", "-o", tmp_path / "model", "--resume", "--iterations", 6)
    assert result.exit_code == 0, result.output
    assert "resuming at iteration 4" in result.output and "iteration 6" in result.output
    rows = (tmp_path / "model" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    result = run_cli(*base, "--resume", "--iterations", 3)
    assert result.exit_code == 1 and "at iteration 6; to extend it" in result.output
    result = run_cli(
        "retrain",
        "-t",
        sample_train_dir,
        "-o",
        tmp_path / "tuned",
        "--iterations",
        2,
        "--crop-size",
        32,
        "--checkpoint",
        tmp_path / "model" / "best.pt",
    )
    assert result.exit_code == 0, result.output
    assert "best.pt on cpu" in result.output


def test_membrain_lightning_checkpoint_fine_tunes(sample_train_dir, tmp_path, run_cli):
    import argparse

    fixture = torch.load(
        Path(__file__).with_name("fixtures") / "dynunet_tiny.pt", weights_only=True
    )
    state = {f"_model.{k}": v for k, v in fixture["state_dict"].items()}
    state["loss_function.deep_supervision_weights"] = torch.ones(3)
    lightning = {
        "epoch": 999,
        "global_step": 12345,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": state,
        "hyper_parameters": {"learning_rate": 1e-4},
    }
    torch.save(lightning, tmp_path / "membrain.ckpt")
    args = [
        "retrain",
        "-t",
        sample_train_dir,
        "--iterations",
        2,
        "--crop-size",
        16,
        "--val-every",
        2,
        "--batch-size",
        1,
    ]
    result = run_cli(*args, "-o", tmp_path / "a", "--checkpoint", tmp_path / "membrain.ckpt")
    assert result.exit_code == 0, result.output
    assert "membrain.ckpt on cpu" in result.output
    tuned = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert tuple(tuned["model_config"]["filters"]) == tuple(fixture["filters"])
    # Fine-tuned in MemBrain-seg's normalisation, and segment goes on using it.
    assert "normalised by zscore" in result.output
    assert tuned["normalisation"] == tuned["train_config"]["normalisation"] == "zscore"

    lightning["hyper_parameters"] = {"args": argparse.Namespace(lr=1e-4)}
    torch.save(lightning, tmp_path / "pickled.ckpt")
    result = run_cli(*args, "-o", tmp_path / "b", "--checkpoint", tmp_path / "pickled.ckpt")
    assert result.exit_code == 1 and "pass --trust-checkpoint" in result.output
    result = run_cli(
        *args,
        "-o",
        tmp_path / "b",
        "--checkpoint",
        tmp_path / "pickled.ckpt",
        "--trust-checkpoint",
    )
    assert result.exit_code == 0, result.output


def test_same_seed_same_model_and_resume_keeps_the_split(sample_train_dir, tmp_path, run_cli):
    args = [
        "retrain",
        "-t",
        sample_train_dir,
        "--preset",
        "tiny",
        "--crop-size",
        16,
        "--val-every",
        2,
        "--batch-size",
        1,
        "--seed",
        3,
        "--val-fraction",
        0.5,
    ]
    for name in ("a", "b"):
        result = run_cli(*args, "--iterations", 2, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert "2 training and 2 validation" in result.output
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["model"] for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)

    result = run_cli(*args, "--iterations", 4, "-o", tmp_path / "a", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming at iteration 2" in result.output
    assert "2 training and 2 validation" in result.output
    changed = [a if a != 16 else 32 for a in args]  # another --crop-size
    result = run_cli(*changed, "--iterations", 6, "-o", tmp_path / "a", "--resume")
    assert result.exit_code == 1, result.output
    assert "drop --crop-size (saved: 16)" in result.output


def test_retrain_relabel_rounds_write_adopted_voxels_outside_the_border(
    sample_train_dir, tmp_path, run_cli
):
    # the middle of every patch left unannotated, as if the annotator never got there
    train_dir = tmp_path / "train"
    shutil.copytree(sample_train_dir, train_dir)
    for path in (train_dir / "labelsTr").iterdir():
        labels, info = read_volume(path)
        labels[30:66, 30:66, 30:66] = IGNORE
        write_volume(path, labels, info.geometry, overwrite=True)
    rows = json.loads((train_dir / "merge_summary.json").read_text())["patches"]
    assert any(r["padding_xyz"] for r in rows)  # the sample crosses the tomogram border
    out = tmp_path / "model"
    args = [
        "retrain",
        "-t",
        train_dir,
        "-o",
        out,
        "--checkpoint",
        SAMPLE / "starting_model.pt",
        "--iterations",
        2,
        "--crop-size",
        32,
        "--val-every",
        2,
        "--batch-size",
        1,
        "--relabel-rounds",
        2,
        "--relabel-max",
        1.0,
        "--relabel-iterations",
        1,
    ]
    result = run_cli(*args, "--loss", "rrw+dice", "--relabel-background")
    assert result.exit_code == 0, result.output
    assert "border band of 16 voxels never relabeled" in result.output
    assert "predicted membrane and background" in result.output
    report = json.loads((out / "relabel.json").read_text())
    assert [s["round"] for s in report["stages"]] == [0, 1, 2]
    assert report["loss"] == "rrw+dice" and report["round_iterations"] == 1
    assert (out / "last.pt").read_bytes() == (out / "round_2" / "last.pt").read_bytes()
    best = out / f"round_{report['best_round']}" / "best.pt"
    assert (out / "best.pt").read_bytes() == best.read_bytes()
    labels_dir = train_dir / "labelsTr"
    records = {r["name"]: r for r in rows}
    totals = []
    for stage in report["stages"][1:]:
        for name, count in stage["adopted"].items():
            path = out / f"round_{stage['round']}" / "adopted" / f"{name}.nii.gz"
            adopted, info = read_volume(path)
            labels, label_info = read_volume(labels_dir / f"{name}.nii.gz")
            assert info.geometry.agrees_with(label_info.geometry)
            assert int((adopted == 1).sum()) == count
            assert int((adopted == 0).sum()) == stage["adopted_background"][name]
            marked = adopted != IGNORE
            assert (labels[marked] == IGNORE).all()  # only ignore voxels are relabeled
            edges = [(16, 16)] * 3
            if records[name]["padding_xyz"]:
                padding = records[name]["padding_xyz"][::-1]
                edges = [(max(16, b), max(16, a)) for b, a in padding]
            inner = np.zeros(marked.shape, bool)
            inner[tuple(slice(b, n - a) for (b, a), n in zip(edges, marked.shape))] = True
            assert not (marked & ~inner).any()  # never the border band nor the padding
        totals.append((stage["adopted_total"], stage["adopted_background_total"]))
    for first, second in zip(*totals):
        assert 0 < first < second  # the curriculum adopts more in later rounds
    assert "round_<t>/adopted/ (1 membrane, 0 background, 2 not adopted)" in result.output
    content = torch.load(out / "last.pt", weights_only=True)
    assert content["train_config"]["loss"] == "rrw+dice"

    result = run_cli(*args)
    assert result.exit_code == 1 and "holds a relabeling run (round_0/)" in result.output
    result = run_cli(*args[:5], "--resume", "--iterations", 8)
    assert result.exit_code == 1 and "a relabeling run cannot be resumed" in result.output
    assert str(out / "round_2" / "last.pt") in result.output
    # a plain run in its place clears the stale rounds
    plain = [*args[:15], "--overwrite"]
    result = run_cli(*plain, "--loss", "rrw")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]
    # a resumed run keeps its loss
    result = run_cli(*args[:5], "--resume", "--iterations", 4, "--loss", "dice")
    assert result.exit_code == 1 and "--loss (saved: rrw)" in result.output


def test_patches_are_normalised_with_their_tomograms_statistics(sample_train_dir, tmp_path):
    from patch_corrections.constants import ZSCORE
    from patch_corrections.inference.intensity import tomogram_statistics
    from patch_corrections.io.manifest import load_manifest
    from patch_corrections.io.volumes import closing_reader

    with closing_reader(SAMPLE / "tomogram.mrc") as reader:
        expected = tomogram_statistics(reader)
    records = load_manifest(sample_train_dir.parent / "patches")
    assert records and all(r["intensity_statistics"] == expected for r in records)
    summary = json.loads((sample_train_dir / "merge_summary.json").read_text())
    assert all(row["intensity_statistics"] == expected for row in summary["patches"])

    for normalisation in ("robust_z", ZSCORE):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            patches, _, _ = load_split(sample_train_dir, None, 0.0, 0, None, normalisation)
        assert not [w for w in caught if "no record" in str(w.message)]  # all recorded
        name = patches[0].name
        raw = read_volume(sample_train_dir / "imagesTr" / f"{name}_0000.nii.gz")[0]
        statistics = tuple(expected[normalisation])
        wanted = normalise(raw, statistics, clip=normalisation != ZSCORE)
        np.testing.assert_array_equal(patches[0].image, wanted)
        assert not np.allclose(patches[0].image, normalise(raw))  # not its own statistics

    # A folder without the record (MemBrain-seg's): each patch by its own, with a warning.
    bare = tmp_path / "bare"
    shutil.copytree(sample_train_dir, bare)
    (bare / "merge_summary.json").unlink()
    with pytest.warns(PatchCorrectionsWarning) as caught:
        patches, _, _ = load_split(bare, None, 0.0, 0, None)
    assert any(
        "4 of 4 patch(es)" in str(w.message) and "no record" in str(w.message) for w in caught
    )
    raw = read_volume(bare / "imagesTr" / f"{patches[0].name}_0000.nii.gz")[0]
    np.testing.assert_array_equal(patches[0].image, normalise(raw))


def test_resampling_keeps_smooth_images_and_label_values():
    from patch_corrections.inference.rescale import resample_image, resample_labels

    z = np.arange(40) * 2 * np.pi / 40
    image = (np.sin(z)[:, None, None] + np.zeros((40, 12, 10))).astype(np.float32) + 3
    for shape in ((56, 17, 14), (28, 9, 7), (29, 12, 10)):
        resampled = resample_image(image, shape)
        wanted = np.sin(np.arange(shape[0]) * 2 * np.pi / shape[0]) + 3
        np.testing.assert_allclose(resampled[:, 2, 3], wanted, atol=1e-5)
    labels = np.random.default_rng(0).integers(0, 3, size=(9, 10, 11)).astype(np.uint8)
    assert np.array_equal(resample_labels(labels, labels.shape), labels)
    doubled = resample_labels(labels, (18, 20, 22))
    assert np.array_equal(doubled[::2, ::2, ::2], labels)  # each voxel becomes 2 x 2 x 2


def test_patches_at_another_voxel_size_are_resampled_to_the_networks(tmp_path):
    from patch_corrections.errors import InputError

    labels = np.zeros((28, 28, 28), np.uint8)
    labels[10:14] = 1
    labels[:4] = 2
    folder = _training_folder(tmp_path / "train", labels, voxel=14.0)
    with pytest.warns(PatchCorrectionsWarning) as caught:
        patches, _, _ = load_split(folder, None, 0.0, 0, None, "robust_z", 10.0)
    assert any("resampled to it" in str(w.message) for w in caught)
    (patch,) = patches
    assert patch.image.shape == patch.labels.shape == (39, 39, 39) and patch.pixel_size == 10
    assert set(np.unique(patch.labels)) == {0, 1, 2} and (patch.labels[:5] == 2).all()
    # The header is wrong and the patches are at 10 Å: said with given_pixel_size.
    with pytest.warns(PatchCorrectionsWarning) as caught:
        patches, _, _ = load_split(folder, None, 0.0, 0, None, "robust_z", 10.0, 10.0)
    assert not [w for w in caught if "resampled" in str(w.message)]
    assert patches[0].image.shape == (28, 28, 28)
    with pytest.raises(InputError, match="too far from the network's 50 Å"):
        load_split(folder, None, 0.0, 0, None, "robust_z", 50.0)


def test_a_new_network_records_the_pixel_size_it_was_trained_at(tmp_path):
    from patch_corrections import RetrainSettings, SegmentSettings, retrain, segment

    labels = np.zeros((32, 32, 32), np.uint8)
    labels[12:15] = 1
    folder = _training_folder(tmp_path / "train", labels, voxel=12.5)
    settings = RetrainSettings(
        iterations=1, preset="tiny", crop_size=16, val_fraction=0, device="cpu"
    )
    report = retrain(folder, tmp_path / "run", settings=settings)
    saved = read_checkpoint(report.last)
    assert saved["pixel_size"] == saved["train_config"]["pixel_size"] == 12.5
    # segment --rescale can now resample a tomogram at another pixel size to it.
    tomogram = tmp_path / "tomo.mrc"
    write_volume(tomogram, np.zeros((20, 40, 40), np.float32), Geometry((25.0, 25.0, 25.0)))
    segmented = segment(
        tomogram,
        report.last,
        tmp_path / "seg",
        settings=SegmentSettings(window=16, rescale=True, device="cpu"),
    )
    assert segmented.pixel_sizes == (25.0, 12.5)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], ("adamw", 1e-3)),  # from a checkpoint, nothing given: the fine-tuning recipe
        (["--optimizer", "sgd"], ("sgd", 1e-2)),
        (["--lr", "5e-4"], ("sgd", 5e-4)),
        (["--optimizer", "adamw"], ("adamw", 3e-4)),
    ],
)
def test_fine_tuning_from_a_checkpoint_has_its_own_recipe_unless_one_is_chosen(
    sample_train_dir, tmp_path, run_cli, extra, expected
):
    args = ["retrain", "-t", sample_train_dir, "-o", tmp_path / "model", "--iterations", 1]
    args += ["--crop-size", 32, "--batch-size", 1, "--checkpoint", SAMPLE / "starting_model.pt"]
    result = run_cli(*args, *extra)
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "model" / "last.pt", weights_only=True)["train_config"]
    assert (saved["optimizer"], saved["lr"]) == expected
    said = "Fine-tuning with AdamW at 0.001, the default from a checkpoint" in result.output
    assert said == (not extra)


def test_from_scratch_the_default_stays_sgd(sample_train_dir, tmp_path, run_cli):
    args = ["retrain", "-t", sample_train_dir, "-o", tmp_path / "m", "--preset", "tiny"]
    result = run_cli(*args, "--iterations", 1, "--crop-size", 32, "--batch-size", 1)
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "m" / "last.pt", weights_only=True)["train_config"]
    assert (saved["optimizer"], saved["lr"]) == (
        "sgd",
        1e-2,
    ) and "Fine-tuning" not in result.output
