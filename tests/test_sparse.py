"""Sparse annotation and relabeling: the pure array logic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nrrd
import numpy as np
import pytest

from patch_corrections.constants import BACKGROUND, IGNORE, MEMBRANE
from patch_corrections.io.volumes import Geometry, read_volume, write_volume
from patch_corrections.labels.relabel import (
    adopt,
    adopted_labels,
    curriculum_share,
    relabel_candidates,
    with_adopted,
)
from patch_corrections.labels.sparse import (
    parse_slices,
    random_boxes,
    slices_mask,
    spaced_slices,
    sparsify,
)


def _labels(shape=(20, 12, 10), seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice([BACKGROUND, MEMBRANE], size=shape, p=[0.8, 0.2]).astype(np.uint8)


def test_slices_mask_marks_whole_slices_along_the_axis():
    mask = slices_mask((4, 5, 6), 1, [0, 3, 3])
    assert mask.sum() == 2 * 4 * 6
    assert mask[:, 0].all() and mask[:, 3].all() and not mask[:, [1, 2, 4]].any()


def test_spaced_slices_are_even_and_only_where_annotated():
    labels = _labels()
    labels[:5] = IGNORE  # an annotator cannot keep slices that hold nothing
    rng = np.random.default_rng(1)
    kept = spaced_slices(labels, 0, 0.2, rng)
    assert len(kept) == 3  # 20 % of the 15 annotated slices
    assert all(5 <= k < 20 for k in kept)
    gaps = np.diff(kept)
    assert gaps.min() >= 4 and gaps.max() <= 6
    # a tiny fraction still keeps one slice; none when nothing is annotated
    assert len(spaced_slices(labels, 2, 0.001, rng)) == 1
    assert spaced_slices(np.full((3, 3, 3), IGNORE, np.uint8), 0, 0.5, rng) == []


def test_sparsify_keeps_only_the_mask():
    labels = _labels()
    keep = slices_mask(labels.shape, 0, [2, 7])
    sparse = sparsify(labels, keep)
    assert sparse.dtype == np.uint8
    np.testing.assert_array_equal(sparse[keep], labels[keep])
    assert (sparse[~keep] == IGNORE).all()


def test_random_boxes_cover_the_wanted_share():
    labels = _labels((40, 40, 40))
    labels[:, :, 30:] = IGNORE
    keep = random_boxes(labels, 8, 0.3, np.random.default_rng(3))
    annotated = labels != IGNORE
    assert (keep & annotated).sum() == math.ceil(0.3 * annotated.sum())  # the last box cut
    assert random_boxes(labels, 8, 1.0, np.random.default_rng(3))[annotated].all()


@pytest.mark.parametrize(("box", "fraction"), [(4, 0.2), (8, 0.2), (12, 0.05), (16, 0.5)])
def test_random_boxes_stop_at_the_fraction(box, fraction):
    # Few labelled voxels for the box size: a whole last box would overshoot by up to
    # box³ voxels (simulate_sparse kept 24 % for --fraction 0.2, 30 % on one patch).
    labels = _labels((24, 24, 24))
    labels[:, :, 12:] = IGNORE
    labels[:4] = IGNORE
    annotated = labels != IGNORE
    keep = random_boxes(labels, box, fraction, np.random.default_rng(5))
    assert (keep & annotated).sum() == math.ceil(fraction * annotated.sum())
    again = random_boxes(labels, box, fraction, np.random.default_rng(5))
    np.testing.assert_array_equal(again, keep)  # the seed decides everything
    other = random_boxes(labels, box, fraction, np.random.default_rng(6))
    assert (other != keep).any()
    nothing = np.full((4, 4, 4), IGNORE, np.uint8)
    assert not random_boxes(nothing, box, 0.5, np.random.default_rng(0)).any()


@pytest.mark.parametrize(
    "spec, expected",
    [("z=1,3", (0, [1, 3])), ("Y = 2-4, 0", (1, [2, 3, 4, 0])), ("x=5", (2, [5]))],
)
def test_parse_slices(spec, expected):
    assert parse_slices(spec, (6, 6, 6)) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("40", "AXIS=INDICES"),
        ("w=3", "AXIS=INDICES"),
        ("z=a", "'a' is not an index"),
        ("z=4-2", "runs backwards"),
        ("z=6", "outside the patch (0 to 5)"),
        ("z=-1", "is not an index"),
    ],
)
def test_parse_slices_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_slices(spec, (6, 6, 6))


def test_curriculum_grows_to_the_maximum():
    assert [curriculum_share(t, 4, 0.8) for t in (1, 2, 4)] == pytest.approx([0.2, 0.4, 0.8])


def test_candidates_leave_out_border_band_padding_and_labels():
    labels = np.full((10, 10, 10), IGNORE, np.uint8)
    labels[5, 5, 5] = MEMBRANE
    candidates = relabel_candidates(labels, border=2, padding=((0, 0), (0, 4), (3, 0)))
    assert not candidates[:2].any() and not candidates[-2:].any()
    assert not candidates[:, 6:].any()  # padding after along y is wider than the band
    assert not candidates[:, :, :3].any()
    assert not candidates[5, 5, 5]
    assert candidates[2:8, 2:6, 3:8].sum() == 6 * 4 * 5 - 1


def test_adopt_takes_the_most_confident_predicted_membrane():
    probability = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    candidates = np.ones(probability.shape, bool)
    candidates[9] = False  # the most confident voxels are not candidates
    chosen = adopt(probability, candidates, 0.25)
    above = candidates & (probability > 0.5)
    assert chosen.sum() == round(0.25 * above.sum())
    assert not (chosen & ~above).any()
    assert probability[chosen].min() >= probability[above & ~chosen].max()
    assert not adopt(probability, candidates, 0.0).any()
    assert not adopt(np.zeros_like(probability), candidates, 1.0).any()


def test_adopted_labels_of_one_or_both_classes():
    probability = np.array([0.99, 0.9, 0.7, 0.6, 0.4, 0.2, 0.05, 0.01], np.float32)
    probability = probability.reshape(2, 2, 2)
    candidates = np.ones(probability.shape, bool)
    candidates[0, 0, 0] = False  # the most confident membrane is not a candidate
    membrane_only = adopted_labels(probability, candidates, 0.34)
    assert membrane_only.ravel().tolist() == [2, 1, 2, 2, 2, 2, 2, 2]
    both = adopted_labels(probability, candidates, 0.5, background=True)
    assert both.ravel().tolist() == [2, 1, 1, 2, 2, 2, 0, 0]  # 2 of 3 and 2 of 4
    assert both.dtype == np.uint8


def test_with_adopted_writes_adopted_labels_and_leaves_the_input():
    labels = np.full((2, 2, 2), IGNORE, np.uint8)
    labels[1, 1, 1] = MEMBRANE
    adopted = np.full(labels.shape, IGNORE, np.uint8)
    adopted[0, 0, 0], adopted[0, 0, 1] = MEMBRANE, BACKGROUND
    out = with_adopted(labels, adopted)
    assert out[0, 0, 0] == MEMBRANE and out[0, 0, 1] == BACKGROUND and out[1, 1, 1] == MEMBRANE
    assert int((out == IGNORE).sum()) == 5
    assert int((labels == IGNORE).sum()) == 7


# --- simulate_sparse through the CLI ---------------------------------------------------

GEOMETRY = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))


def _dense_folder(root: Path) -> tuple[Path, np.ndarray]:
    """A training folder with one NRRD pair; the labels carry a different value per y."""
    folder = root / "dense"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    labels = _labels((8, 12, 10))
    labels[:, 0] = IGNORE  # an unlabelled slice is never chosen
    write_volume(folder / "labelsTr" / "p.nrrd", labels, GEOMETRY)
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    write_volume(folder / "imagesTr" / "p_0000.nrrd", image, GEOMETRY)
    summary = {"patches": [{"name": "p", "border": 3, "padding_xyz": [[0, 0], [1, 0], [0, 2]]}]}
    (folder / "merge_summary.json").write_text(json.dumps(summary))
    return folder, labels


def test_simulate_sparse_keeps_whole_slices_with_geometry(tmp_path, run_cli):
    folder, labels = _dense_folder(tmp_path)
    out = tmp_path / "sparse"
    args = ["simulate_sparse", "-t", folder, "-o", out, "--axis", "y", "--fraction", "0.25"]
    result = run_cli(*args, "--format", "nrrd", "--seed", "4")
    assert result.exit_code == 0, result.output
    sparse, info = read_volume(out / "labelsTr" / "p.nrrd")
    assert info.geometry.agrees_with(GEOMETRY)
    kept = [y for y in range(12) if (sparse[:, y] != IGNORE).any()]
    assert len(kept) == 3 and 0 not in kept  # a quarter of the 11 labelled y-slices
    for y in range(12):
        expected = labels[:, y] if y in kept else np.full_like(labels[:, y], IGNORE)
        np.testing.assert_array_equal(sparse[:, y], expected)
    header = nrrd.read_header(str(out / "labelsTr" / "p.nrrd"))
    assert list(header["sizes"]) == [10, 12, 8]  # x, y, z on disk
    image_bytes = (folder / "imagesTr" / "p_0000.nrrd").read_bytes()
    assert (out / "imagesTr" / "p_0000.nrrd").read_bytes() == image_bytes
    row = json.loads((out / "merge_summary.json").read_text())["patches"][0]
    assert row["border"] == 3 and row["padding_xyz"] == [[0, 0], [1, 0], [0, 2]]
    assert row["simulated"]["slices"] == kept and row["annotated"] == int(np.sum(sparse != IGNORE))
    assert "Kept" in result.output and "the rest is ignore" in result.output
    # the same seed gives the same slices; an existing output needs --overwrite
    assert run_cli(*args, "--seed", "4").exit_code == 1
    assert run_cli(*args, "--format", "nrrd", "--seed", "4", "--overwrite").exit_code == 0
    np.testing.assert_array_equal(read_volume(out / "labelsTr" / "p.nrrd")[0], sparse)


def test_simulate_sparse_boxes(tmp_path, run_cli):
    folder, labels = _dense_folder(tmp_path)
    out = tmp_path / "boxes"
    result = run_cli(
        "simulate_sparse", "-t", folder, "-o", out, "--mode", "boxes", "--box-size", "4"
    )
    assert result.exit_code == 0, result.output
    sparse, _ = read_volume(out / "labelsTr" / "p.nii.gz")
    kept = sparse != IGNORE
    np.testing.assert_array_equal(sparse[kept], labels[kept])
    assert 0.1 <= kept.sum() / (labels != IGNORE).sum() < 0.3


def test_simulate_sparse_boxes_keep_the_fraction_and_say_so(tmp_path, run_cli):
    folder, labels = _dense_folder(tmp_path)
    more = _labels((16, 16, 16), seed=3)
    more[:, :, :4] = IGNORE
    write_volume(folder / "labelsTr" / "q.nrrd", more, GEOMETRY)
    write_volume(folder / "imagesTr" / "q_0000.nrrd", more.astype(np.float32), GEOMETRY)
    out = tmp_path / "boxes"
    args = ["simulate_sparse", "-t", folder, "-o", out, "--mode", "boxes"]
    result = run_cli(*args, "--fraction", "0.2", "--box-size", "6", "--seed", "7")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "merge_summary.json").read_text())["patches"]
    for row, dense in zip(rows, (labels, more)):
        sparse, _ = read_volume(out / "labelsTr" / f"{row['name']}.nii.gz")
        before = int((dense != IGNORE).sum())
        assert row["annotated"] == int((sparse != IGNORE).sum()) == math.ceil(0.2 * before)
        assert row["kept_fraction"] == pytest.approx(0.2, abs=1 / before)
    after = sum(r["annotated"] for r in rows)
    before = sum(r["annotated_before"] for r in rows)
    assert f"Kept {after} of {before} labelled voxels (20.0%; --fraction 0.2 of the " in (
        " ".join(result.output.split())
    )
    first = read_volume(out / "labelsTr" / "q.nii.gz")[0]
    again = run_cli(*args, "--fraction", "0.2", "--box-size", "6", "--seed", "7", "--overwrite")
    assert again.exit_code == 0 and again.output == result.output
    np.testing.assert_array_equal(read_volume(out / "labelsTr" / "q.nii.gz")[0], first)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fraction", "0"], "--fraction must be in (0, 1]"),
        (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["--axis", "t"], "--axis must be x, y or z"),
        (["--box-size", "0"], "--box-size must be at least 1"),
        (["--same"], "--out-dir must differ from --train-dir"),
    ],
)
def test_simulate_sparse_bad_input(tmp_path, run_cli, extra, message):
    folder, _ = _dense_folder(tmp_path)
    out = folder if extra == ["--same"] else tmp_path / "out"
    extra = [] if extra == ["--same"] else extra
    result = run_cli("simulate_sparse", "-t", folder, "-o", out, *extra)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_simulate_sparse_needs_a_training_folder(tmp_path, run_cli):
    result = run_cli("simulate_sparse", "-t", tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "not a training folder" in result.output
