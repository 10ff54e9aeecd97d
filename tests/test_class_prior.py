"""Training toward the tomogram's membrane share: extraction records the segmentation's
share, the merge records each patch's membrane before and after the corrections, and a
run from a checkpoint shifts its loss's logits by logit(the patches' share) − logit(the
share the corrections imply for the tomogram)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint, write_mrc
from test_context import CENTRES, SHAPE

from patch_corrections import ExtractSettings, MergeSettings, extract_patches, merge_corrections
from patch_corrections.constants import IGNORE, MEMBRANE
from patch_corrections.io import read_volume, write_volume
from patch_corrections.labels.corrections import merge_labels
from patch_corrections.training.losses import make_loss
from patch_corrections.training.prior import MAX_SHIFT, prior_shift


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_merge_counts_the_trained_membrane_before_and_after_the_corrections():
    base = np.zeros((12, 12, 12), np.uint8)
    base[2:10, 5, 2:10] = MEMBRANE
    add = np.zeros(base.shape, bool)
    add[4:8, 8, 4:8] = True
    remove = np.zeros(base.shape, bool)
    remove[4:6, 5, 4:6] = True
    merged, counts = merge_labels(base, add=add, remove=remove, border=2)
    trained = merged != IGNORE
    assert counts.membrane == np.count_nonzero(merged == MEMBRANE) == 64 - 4 + 16
    assert counts.base_membrane == np.count_nonzero(trained & (base == MEMBRANE)) == 64
    assert counts.base_membrane - counts.removed + counts.added == counts.membrane


def _row(annotated, membrane, base, share):
    return {
        "annotated": annotated,
        "membrane": membrane,
        "base_membrane": base,
        "segmentation_membrane_share": share,
    }


def test_the_shift_is_the_patches_prior_against_the_one_the_corrections_imply():
    rows = [_row(1000, 200, 100, 0.05), _row(3000, 100, 50, 0.09)]
    shift = prior_shift(rows)
    # Membrane doubled where it trains: the tomogram holds about twice what was found.
    implied = (1000 * 0.05 + 3000 * 0.09) / 4000 * 300 / 150
    assert shift.patch_share == pytest.approx(300 / 4000)
    assert shift.tomogram_share == pytest.approx(implied)
    assert shift.delta == pytest.approx(_logit(300 / 4000) - _logit(implied))
    assert f"{shift.delta:+.2f}" in shift.describe()
    # Patches far richer in membrane than the tomogram: the shift is clipped.
    assert prior_shift([_row(1000, 500, 500, 0.001)]).delta == MAX_SHIFT


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ([], "does not record"),
        ([_row(1000, 200, 100, 0.05), {"annotated": 10}], "does not record"),
        ([_row(1000, 200, 100, None)], "does not record"),
        ([_row(1000, 0, 0, 0.05)], "no membrane"),
        ([_row(1000, 1000, 10, 0.05)], "no background"),
        ([_row(1000, 100, 100, 0.0)], "hold no membrane"),
    ],
)
def test_no_shift_without_what_it_is_estimated_from(rows, why):
    reason = prior_shift(rows)
    assert isinstance(reason, str) and why in reason


def test_the_loss_sees_the_shifted_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator)
    shifted = make_loss(shift=0.7)(logits, target)
    assert shifted == pytest.approx(float(make_loss()(logits + 0.7, target)), rel=1e-6)
    assert float(shifted) != pytest.approx(float(make_loss()(logits, target)), rel=1e-3)


def _corrected_round(root):
    """Two 32³ patches cut where a segmentation is dense in membrane (chance 0.3 against
    0.05 elsewhere), one of them given an Add block, merged; the training folder and the
    segmentation."""
    rng = np.random.default_rng(0)
    chance = np.full(SHAPE, 0.05)
    chance[4:36, 14:46, 14:106] = 0.3  # around both centres
    segmentation = (rng.random(SHAPE) < chance).astype(np.uint8)
    image = (rng.normal(size=SHAPE) - 3.0 * segmentation).astype(np.float32)
    (root / "data").mkdir(parents=True)
    tomogram = write_mrc(root / "data" / "tomo.mrc", image)
    labels = write_mrc(root / "data" / "tomo_seg.mrc", segmentation)
    (root / "centres.csv").write_text(CENTRES)
    settings = ExtractSettings(patch_size=32, border=4)
    extract_patches(tomogram, labels, root / "patches", root / "centres.csv", settings=settings)
    base, info = read_volume(root / "patches" / "labels" / "tomo_patch000.nrrd")
    add = np.zeros(base.shape, np.uint8)
    add[8:24, 8:24, 8:24] = 1
    (root / "corrections" / "tomo_patch000").mkdir(parents=True)
    write_volume(root / "corrections" / "tomo_patch000" / "Add1.nrrd", add, info.geometry)
    merge = MergeSettings(include_uncorrected=True)
    merge_corrections(root / "patches", root / "corrections", root / "train", settings=merge)
    return root / "train", segmentation


def test_extraction_and_merge_record_what_the_shift_is_estimated_from(tmp_path):
    train_dir, segmentation = _corrected_round(tmp_path)
    # 32 slices spread through the 40 of the segmentation, every voxel of them.
    slices = np.unique(np.linspace(0, len(segmentation) - 1, 32).astype(int))
    whole = segmentation[slices].mean()
    manifest = json.loads((tmp_path / "patches" / "manifest.json").read_text())
    assert [e["segmentation_membrane_share"] for e in manifest["patches"]] == pytest.approx(
        [whole, whole]
    )
    rows = json.loads((train_dir / "merge_summary.json").read_text())["patches"]
    for row in rows:
        merged = read_volume(train_dir / row["label"])[0]
        base = read_volume(tmp_path / "patches" / "labels" / f"{row['name']}.nrrd")[0]
        trained = merged != IGNORE
        assert row["membrane"] == np.count_nonzero(merged == MEMBRANE)
        assert row["base_membrane"] == np.count_nonzero(trained & (base == MEMBRANE))
        assert row["segmentation_membrane_share"] == pytest.approx(whole)
    corrected = {r["name"]: r for r in rows}["tomo_patch000"]
    assert corrected["membrane"] > corrected["base_membrane"]


def test_retrain_from_a_checkpoint_trains_toward_the_tomograms_share(tmp_path, run_cli):
    train_dir, _ = _corrected_round(tmp_path)
    rows = json.loads((train_dir / "merge_summary.json").read_text())["patches"]
    annotated, membrane, base = (
        sum(r[k] for r in rows) for k in ("annotated", "membrane", "base_membrane")
    )
    whole = rows[0]["segmentation_membrane_share"]
    expected = _logit(membrane / annotated) - _logit(whole * membrane / base)
    assert expected > 0.5  # the patches are richer in membrane than the tomogram
    start = save_tiny_checkpoint(tmp_path / "start.pt")
    common = ("-t", train_dir, "--checkpoint", start, "--iterations", 2, "--crop-size", 32)
    result = run_cli("retrain", *common, "-o", tmp_path / "m1", "--val-fraction", 0)
    assert result.exit_code == 0, result.output
    assert "training toward the tomograms' membrane share" in result.output
    assert f"shifts the logits by {expected:+.2f}" in result.output
    saved = torch.load(tmp_path / "m1" / "last.pt", weights_only=False)["train_config"]
    assert saved["prior_shift"] == pytest.approx(expected)
    # Resumed, the run keeps the shift it started with.
    result = run_cli("retrain", "-o", tmp_path / "m1", "--resume", "--iterations", 3)
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "m1" / "last.pt", weights_only=False)["train_config"]
    assert saved["prior_shift"] == pytest.approx(expected)
    # The patches' own share: no shift.
    result = run_cli(
        "retrain", *common, "-o", tmp_path / "m2", "--val-fraction", 0, "--class-prior", "patches"
    )
    assert result.exit_code == 0, result.output
    assert "membrane share" not in result.output
    saved = torch.load(tmp_path / "m2" / "last.pt", weights_only=False)["train_config"]
    assert saved["prior_shift"] == 0.0


def test_retrain_says_when_the_tomograms_share_is_not_recorded(tmp_path, run_cli):
    train_dir, _ = _corrected_round(tmp_path)
    summary = train_dir / "merge_summary.json"
    content = json.loads(summary.read_text())
    for row in content["patches"]:  # as merged by an older version
        del row["base_membrane"]
    summary.write_text(json.dumps(content))
    start = save_tiny_checkpoint(tmp_path / "start.pt")
    common = ("-t", train_dir, "--checkpoint", start, "--iterations", 2, "--crop-size", 32)
    result = run_cli("retrain", *common, "-o", tmp_path / "m1")
    assert result.exit_code == 0, result.output
    assert "the patches' own class prior is trained" in result.output
    saved = torch.load(tmp_path / "m1" / "last.pt", weights_only=False)["train_config"]
    assert saved["prior_shift"] == 0.0
    result = run_cli("retrain", *common, "-o", tmp_path / "m2", "--class-prior", "tomogram")
    assert result.exit_code != 0
    assert "--class-prior tomogram: the merge summary does not record" in result.output
    assert "Traceback" not in result.output
    result = run_cli("retrain", *common, "-o", tmp_path / "m3", "--class-prior", "boxes")
    assert result.exit_code != 0 and "Traceback" not in result.output
    result = run_cli(
        "retrain",
        *common,
        "-o",
        tmp_path / "m4",
        "--class-prior",
        "tomogram",
        "--relabel-rounds",
        1,
    )
    assert result.exit_code != 0 and "does not combine with --relabel-rounds" in result.output
