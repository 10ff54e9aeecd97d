"""evaluate: metrics by hand on tiny volumes, ignore excluded, patch folders placed by header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.metrics import counts, summarise

GEOMETRY = Geometry((1.0, 1.0, 1.0))


def _volumes():
    reference = np.zeros((1, 4, 10), np.uint8)
    reference[0, 1, :] = 1  # a membrane line of 10 voxels
    reference[0, 3, 5:] = 2  # ignore
    prediction = np.zeros_like(reference, dtype=bool)
    prediction[0, 1, :6] = True  # 6 right
    prediction[0, 2, :2] = True  # 2 wrong, next to the membrane
    prediction[0, 3, 5:] = True  # inside ignore: not counted
    return prediction, reference


def test_metrics_by_hand():
    prediction, reference = _volumes()
    result = summarise(counts(prediction, reference, tolerance=1), 1)
    assert result["dice"] == pytest.approx(2 * 6 / (8 + 10))
    assert result["iou"] == pytest.approx(6 / 12)
    assert result["precision"] == pytest.approx(6 / 8)
    assert result["recall"] == pytest.approx(6 / 10)
    # Within 1 voxel: all 8 predicted voxels touch the truth; 7 of 10 true voxels touch a
    # prediction (columns 0-5, and column 6 beside the predicted column 5).
    precision_t, recall_t = 8 / 8, 7 / 10
    assert result["tolerant_dice_1"] == pytest.approx(
        2 * precision_t * recall_t / (precision_t + recall_t)
    )
    assert result["annotated_voxels"] == 40 - 5


def test_evaluate_cli_on_volume_and_on_patches(tmp_path, run_cli):
    prediction, reference = _volumes()
    write_volume(tmp_path / "pred.mrc", prediction.astype(np.int8), GEOMETRY)
    write_volume(tmp_path / "ref.nrrd", reference, GEOMETRY)
    result = run_cli(
        "evaluate",
        "-p",
        tmp_path / "pred.mrc",
        "-r",
        tmp_path / "ref.nrrd",
        "--json",
        "--tolerance",
        1,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dice"] == pytest.approx(12 / 18)
    (tmp_path / "patches").mkdir()
    write_volume(
        tmp_path / "patches" / "a.nrrd",
        reference[:, :, :5],
        Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    )
    write_volume(
        tmp_path / "patches" / "b.nrrd",
        reference[:, :, 5:],
        Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 5.0)),
    )
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "patches", "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert values["precision"] == pytest.approx(6 / 8) and values["recall"] == pytest.approx(0.6)
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "pred.mrc")
    assert result.exit_code == 0  # 0/1 labels are valid references too
    write_volume(tmp_path / "small.nrrd", reference[:, :, :5], GEOMETRY)
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "small.nrrd")
    assert result.exit_code == 1 and "differs from the prediction" in result.output


def test_empty_sides():
    reference = np.zeros((3, 3, 3), np.uint8)
    reference[1, 1, 1] = 1
    nothing = np.zeros_like(reference, dtype=bool)
    result = summarise(counts(nothing, reference, 1), 1)
    assert result["dice"] == 0 and result["tolerant_dice_1"] == 0 and result["recall"] == 0
    assert np.isnan(result["precision"])
    both_empty = summarise(counts(nothing, np.zeros_like(reference), 1), 1)
    assert np.isnan(both_empty["dice"]) and np.isnan(both_empty["tolerant_dice_1"])


def test_patches_placed_by_origin_and_voxel_size(tmp_path, run_cli):
    geometry = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    prediction = np.zeros((6, 6, 6), np.int8)
    prediction[2, 3, 4] = 1
    write_volume(tmp_path / "pred.mrc", prediction, geometry)
    (tmp_path / "patches").mkdir()
    patch = np.zeros((4, 4, 4), np.uint8)
    patch[1, 1, 1] = 1  # = prediction voxel (2, 3, 4) when the patch starts at (1, 2, 3)
    write_volume(tmp_path / "patches" / "p.nrrd", patch, geometry.shifted((1, 2, 3)))
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "patches", "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert values["dice"] == 1.0 and values["annotated_voxels"] == 4 * 4 * 3  # part inside
    write_volume(
        tmp_path / "patches" / "p.nrrd",
        patch,
        Geometry((1.0, 1.0, 1.0), (10.0, 20.0, 30.0)),
        overwrite=True,
    )
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "patches")
    assert result.exit_code == 1 and "differs from the prediction's" in result.output


def test_all_ignore_reference_and_json_nulls(tmp_path, run_cli):
    write_volume(tmp_path / "pred.mrc", np.zeros((2, 2, 2), np.int8), GEOMETRY)
    write_volume(tmp_path / "ignore.nrrd", np.full((2, 2, 2), 2, np.uint8), GEOMETRY)
    result = run_cli("evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "ignore.nrrd")
    assert result.exit_code == 1 and "no annotated voxel" in result.output
    write_volume(tmp_path / "empty.nrrd", np.zeros((2, 2, 2), np.uint8), GEOMETRY)
    result = run_cli(
        "evaluate", "-p", tmp_path / "pred.mrc", "-r", tmp_path / "empty.nrrd", "--json"
    )
    assert result.exit_code == 0
    assert json.loads(result.output)["dice"] is None  # strict JSON: null, not NaN


def test_a_score_map_says_the_threshold_it_was_read_at(tmp_path, run_cli):
    prediction, reference = _volumes()
    scores = np.where(prediction, 0.8, 0.3).astype(np.float32)  # a probability map
    write_volume(tmp_path / "scores.mrc", scores, GEOMETRY)
    write_volume(tmp_path / "ref.nrrd", reference, GEOMETRY)
    args = ["evaluate", "-p", tmp_path / "scores.mrc", "-r", tmp_path / "ref.nrrd"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "The prediction holds scores, not 0/1: membrane where above 0.5 (the default; "
        "--threshold chooses)."
    )
    default = json.loads(run_cli(*args, "--json").output)
    assert default["threshold"] == 0.5 and default["dice"] == pytest.approx(12 / 18)
    values = json.loads(run_cli(*args, "--json", "--threshold", 0.7).output)
    assert values["threshold"] == 0.7 and values["dice"] == default["dice"]
    write_volume(tmp_path / "binary.mrc", prediction.astype(np.int8), GEOMETRY)
    result = run_cli("evaluate", "-p", tmp_path / "binary.mrc", "-r", tmp_path / "ref.nrrd")
    assert result.output.startswith("metric")  # 0/1: nothing to say
    binary = ["evaluate", "-p", tmp_path / "binary.mrc", "-r", tmp_path / "ref.nrrd", "--json"]
    assert json.loads(run_cli(*binary).output)["threshold"] is None


def test_a_reference_patch_linked_from_outside_is_read_with_a_warning(tmp_path):
    from patch_corrections.workflows.evaluation import EvaluateSettings, evaluate

    prediction, reference = _volumes()
    write_volume(tmp_path / "pred.mrc", prediction.astype(np.int8), GEOMETRY)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "patches").mkdir()
    write_volume(tmp_path / "elsewhere" / "a.nrrd", reference, GEOMETRY)
    (tmp_path / "patches" / "a.nrrd").symlink_to(tmp_path / "elsewhere" / "a.nrrd")
    report = evaluate(tmp_path / "pred.mrc", tmp_path / "patches", settings=EvaluateSettings())
    assert report.metrics["dice"] == pytest.approx(12 / 18)
    assert [w.split(";")[0] for w in report.warnings] == [
        f"{tmp_path / 'patches' / 'a.nrrd'}: a symbolic link to "
        f"{tmp_path / 'elsewhere' / 'a.nrrd'}, outside {tmp_path / 'patches'}"
    ]
