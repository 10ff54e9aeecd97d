"""merge_corrections through the CLI: exact merged arrays, checks and the summary."""

from __future__ import annotations

import json

import nibabel
import nrrd
import numpy as np
import pytest
from conftest import all_files

from patch_corrections.io.volumes import Geometry, read_volume, write_volume

N = 8
GEOMETRY = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))


MITK_HEADER = {
    "space": "left-posterior-superior",
    "space directions": np.diag([4.0, 3.0, 2.0]),  # GEOMETRY's voxel size, x first
    "space origin": np.array([30.0, 20.0, 10.0]),
}
"""An NRRD header as MITK writes it for a mask painted on a GEOMETRY patch."""


def _mask(*boxes, value=1) -> np.ndarray:
    mask = np.zeros((N, N, N), np.uint8)
    for box in boxes:
        mask[box] = value
    return mask


def _extraction_folder(tmp_path, names=("tomo_patch000",), fmt=".nrrd"):
    """An extract_patches output folder with a manifest, built by hand."""
    folder = tmp_path / "patches"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    base = _mask((slice(2, 6), slice(2, 6), slice(2, 6)))  # a membrane cube, 4³
    records = []
    for number, name in enumerate(names):
        image = np.full((N, N, N), number + 1, np.float32)
        write_volume(folder / "images" / f"{name}{fmt}", image, GEOMETRY)
        write_volume(folder / "labels" / f"{name}{fmt}", base, GEOMETRY)
        records.append(
            {
                "name": name,
                "image": f"images/{name}{fmt}",
                "label": f"labels/{name}{fmt}",
                "offset_xyz": [0, 0, 0],
                "size_xyz": [N] * 3,
                "border": 1,
            }
        )
    (folder / "manifest.json").write_text(json.dumps({"patches": records}))
    return folder, base


def _merge(run_cli, tmp_path, labels_dir, *args):
    return run_cli(
        "merge_corrections",
        "--labels-dir",
        labels_dir,
        "--corrections-dir",
        tmp_path / "corr",
        "--out-dir",
        tmp_path / "train",
        *args,
    )


def _paint(tmp_path, patch, filename, mask, geometry=GEOMETRY):
    (tmp_path / "corr" / patch).mkdir(parents=True, exist_ok=True)
    write_volume(tmp_path / "corr" / patch / filename, mask, geometry)


def test_overlapping_corrections_follow_the_precedence(tmp_path, run_cli):
    folder, base = _extraction_folder(tmp_path)
    a, b = slice(3, 7), slice(2, 5)
    _paint(tmp_path, "tomo_patch000", "Remove1.nrrd", _mask((a, a, a)))
    _paint(tmp_path, "tomo_patch000", "add1.nrrd", _mask((b, b, b), value=255))
    _paint(tmp_path, "tomo_patch000", "Add2.nrrd", _mask((0, 0, 0)))  # inside the border
    _paint(tmp_path, "tomo_patch000", "IGNORE_edge.nrrd", _mask((4, 4, slice(0, 8)), value=7))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 0, result.output

    expected = base.copy()
    expected[a, a, a] = 0  # Remove
    expected[b, b, b] = 1  # then Add wins over Remove
    expected[0, 0, 0] = 1
    expected[4, 4, :] = 2  # then Ignore wins over both
    expected[[0, -1], :, :] = 2  # then the manifest's 1-voxel border band
    expected[:, [0, -1], :] = 2
    expected[:, :, [0, -1]] = 2
    labels, info = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    np.testing.assert_array_equal(labels, expected)
    assert info.geometry == GEOMETRY
    image, image_info = read_volume(tmp_path / "train" / "imagesTr" / "tomo_patch000_0000.nii.gz")
    assert np.all(image == 1) and image_info.geometry == GEOMETRY

    row = json.loads((tmp_path / "train" / "merge_summary.json").read_text())["patches"][0]
    interior = (slice(1, 7),) * 3
    assert row["added"] == int(np.sum((expected == 1) & (base != 1)))
    assert row["removed"] == int(np.sum((expected == 0) & (base == 1)))
    assert row["ignored"] == int(np.sum(expected == 2))
    assert row["added"] == int(np.sum((expected[interior] == 1) & (base[interior] == 0)))
    assert f"{row['added']:>9}  {row['removed']:>9}  {row['ignored']:>9}" in result.output
    assert "+membrane  -membrane    +ignore    trained  masks" in result.output
    assert "the previews count the voxels painted" in result.output


def test_membrain_layout_with_images_dir(tmp_path, run_cli):
    labels_dir, images_dir = tmp_path / "labels", tmp_path / "images"
    labels_dir.mkdir()
    images_dir.mkdir()
    base = _mask((slice(2, 6),) * 3)
    write_volume(labels_dir / "t1_patch0.nii.gz", base, GEOMETRY)
    write_volume(images_dir / "t1_patch0_0000.nii.gz", np.ones((N, N, N), np.float32), GEOMETRY)
    _paint(tmp_path, "t1_patch0", "Remove.nii.gz", _mask((slice(2, 6),) * 3))
    result = _merge(
        run_cli,
        tmp_path,
        labels_dir,
        "--images-dir",
        images_dir,
        "--format",
        "nrrd",
        "--border",
        "0",
    )
    assert result.exit_code == 0, result.output
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "t1_patch0.nrrd")
    assert not labels.any()
    assert (tmp_path / "train" / "imagesTr" / "t1_patch0_0000.nrrd").exists()


def test_labels_subfolder_of_an_extraction_uses_its_manifest(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder / "labels")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train" / "imagesTr" / "tomo_patch000_0000.nii.gz").exists()


def test_summary_lists_what_was_not_used(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path, names=("p_patch000", "p_patch001", "p_patch002"))
    _paint(tmp_path, "p_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    _paint(tmp_path, "p_patch000", "Segmentation.nrrd", _mask((3, 3, 3)))
    (tmp_path / "corr" / "p_patch000" / "notes.txt").write_text("hello")
    _paint(tmp_path, "q_patch009", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 0, result.output
    assert "Merged 1 patch(es)" in result.output
    assert "(skipped; --include-uncorrected keeps them): p_patch001, p_patch002" in result.output
    assert "match no patch (not used): q_patch009" in result.output
    assert "p_patch000/Segmentation.nrrd" in result.output
    assert "p_patch000/notes.txt" in result.output
    summary = json.loads((tmp_path / "train" / "merge_summary.json").read_text())
    assert summary["uncorrected"] == ["p_patch001", "p_patch002"]
    assert summary["folders_without_patch"] == ["q_patch009"]
    assert len(all_files(tmp_path / "train" / "labelsTr")) == 1

    result = _merge(run_cli, tmp_path, folder, "--include-uncorrected", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(all_files(tmp_path / "train" / "labelsTr")) == 3


def test_geometry_disagreement_is_an_error_unless_told(tmp_path, run_cli):
    # A mask painted on another patch of the same name (cut elsewhere before an
    # extract_patches --overwrite) must not be merged silently into the new one.
    folder, _ = _extraction_folder(tmp_path)
    moved = Geometry(GEOMETRY.voxel_size, (0.0, 0.0, 0.0))
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)), geometry=moved)
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert "Add1.nrrd: origin/spacing (spacing 4,3,2; origin 0,0,0) differ" in result.output
    assert "--ignore-geometry" in result.output and len(result.output.splitlines()) == 1
    assert not (tmp_path / "train").exists()
    result = _merge(run_cli, tmp_path, folder, "--ignore-geometry")
    assert result.exit_code == 0, result.output
    assert "Warnings (1)" in result.output and "merged by voxel index" in result.output


def test_mitk_style_nrrd_is_accepted(tmp_path, run_cli):
    folder, base = _extraction_folder(tmp_path)
    (tmp_path / "corr" / "tomo_patch000").mkdir(parents=True)
    header = MITK_HEADER
    mask = _mask((1, 4, 6))  # z, y, x
    nrrd.write(str(tmp_path / "corr" / "tomo_patch000" / "Add1.nrrd"), mask.transpose(), header)
    result = _merge(run_cli, tmp_path, folder, "--border", "0")
    assert result.exit_code == 0 and "Warnings" not in result.output, result.output
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    assert labels[1, 4, 6] == 1 and base[1, 4, 6] == 0
    stored = np.asanyarray(
        nibabel.load(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz").dataobj
    )
    assert stored[6, 4, 1] == 1  # NIfTI holds x, y, z


def test_shape_mismatch_names_both_and_writes_nothing(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path, names=("a_patch000", "b_patch000"))
    _paint(tmp_path, "a_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    _paint(tmp_path, "b_patch000", "Ignore1.nrrd", np.zeros((N, N, N + 1), np.uint8))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert "Ignore1.nrrd: shape x,y,z=(9, 8, 8) differs from its patch" in result.output
    assert "b_patch000.nrrd: x,y,z=(8, 8, 8)" in result.output
    assert all_files(tmp_path / "train") == []


def test_bad_label_values_leave_no_partial_output(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path, names=("a_patch000", "b_patch000"))
    write_volume(
        folder / "labels" / "b_patch000.nrrd", _mask((3, 3, 3), value=5), GEOMETRY, overwrite=True
    )
    _paint(tmp_path, "a_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    _paint(tmp_path, "b_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert "b_patch000.nrrd: label values must be 0, 1 or 2; found 5" in result.output
    assert all_files(tmp_path / "train") == []


def test_nothing_overwritten_without_flag(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    assert _merge(run_cli, tmp_path, folder).exit_code == 0
    before = (tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz").read_bytes()
    _paint(tmp_path, "tomo_patch000", "Remove1.nrrd", np.ones((N, N, N), np.uint8))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz").read_bytes() == before
    assert _merge(run_cli, tmp_path, folder, "--overwrite").exit_code == 0
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    assert np.argwhere(labels == 1).tolist() == [[3, 3, 3]]  # Add wins over Remove


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_match", "no folder matches a patch"),
        ("no_labels", "no label patches found"),
        ("no_image", "no image patch found"),
        ("no_corrections_dir", "corrections folder not found"),
    ],
)
def test_bad_inputs(tmp_path, run_cli, setup, message):
    folder, _ = _extraction_folder(tmp_path)
    labels_dir = folder
    _paint(
        tmp_path,
        "tomo_patch000" if setup != "no_match" else "other",
        "Add1.nrrd",
        _mask((3, 3, 3)),
    )
    if setup == "no_labels":
        labels_dir = tmp_path / "empty"
        labels_dir.mkdir()
    elif setup == "no_image":
        (folder / "images" / "tomo_patch000.nrrd").unlink()
    elif setup == "no_corrections_dir":
        for path in all_files(tmp_path / "corr"):
            path.unlink()
        (tmp_path / "corr" / "tomo_patch000").rmdir()
        (tmp_path / "corr").rmdir()
    result = _merge(run_cli, tmp_path, labels_dir)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert all_files(tmp_path / "train") == []


def test_second_round_adds_to_the_training_folder_and_its_summary(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path, names=("a_patch000", "b_patch000"))
    _paint(tmp_path, "a_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    assert _merge(run_cli, tmp_path, folder).exit_code == 0
    _paint(tmp_path, "b_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder)  # a_patch000's pair exists: refused
    assert result.exit_code == 1 and "a_patch000_0000.nii.gz: already exists" in result.output
    (tmp_path / "corr" / "a_patch000" / "Add1.nrrd").unlink()
    (tmp_path / "corr" / "a_patch000").rmdir()
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "train" / "merge_summary.json").read_text())["patches"]
    assert [r["name"] for r in rows] == ["a_patch000", "b_patch000"]
    assert len(all_files(tmp_path / "train" / "labelsTr")) == 2


def test_unreadable_mask_names_the_file(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    (tmp_path / "corr" / "tomo_patch000").mkdir(parents=True)
    (tmp_path / "corr" / "tomo_patch000" / "Add1.nrrd").write_text("garbage")
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert "Add1.nrrd: not a readable NRRD file" in result.output
    assert all_files(tmp_path / "train") == []


def test_out_dir_that_is_a_file(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    (tmp_path / "train").write_text("a file")
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert "train: exists and is not a folder" in result.output


def test_failed_overwrite_keeps_the_earlier_training_pairs(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path, names=("a_patch000", "b_patch000"))
    _paint(tmp_path, "a_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    _paint(tmp_path, "b_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    assert _merge(run_cli, tmp_path, folder).exit_code == 0
    before = {p: p.read_bytes() for p in all_files(tmp_path / "train")}
    write_volume(
        folder / "labels" / "b_patch000.nrrd", _mask((3, 3, 3), value=5), GEOMETRY, overwrite=True
    )
    result = _merge(run_cli, tmp_path, folder, "--overwrite")
    assert result.exit_code == 1 and "label values must be 0, 1 or 2" in result.output
    assert {p: p.read_bytes() for p in all_files(tmp_path / "train")} == before


def test_failed_first_run_leaves_no_folders(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    write_volume(
        folder / "labels" / "tomo_patch000.nrrd",
        _mask((3, 3, 3), value=5),
        GEOMETRY,
        overwrite=True,
    )
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 1
    assert not (tmp_path / "train").exists()


def test_padding_stays_ignore_whatever_was_painted(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["patches"][0]["padding_xyz"] = [[0, 0], [2, 0], [0, 3]]  # y before, z after
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", np.ones((N, N, N), np.uint8))
    result = _merge(run_cli, tmp_path, folder, "--border", "0")
    assert result.exit_code == 0, result.output
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    expected = np.ones((N, N, N), np.uint8)
    expected[:, :2, :] = 2
    expected[N - 3 :, :, :] = 2
    np.testing.assert_array_equal(labels, expected)


def test_nan_in_a_float_mask_marks_nothing(tmp_path, run_cli):
    folder, base = _extraction_folder(tmp_path)
    mask = np.full((N, N, N), np.nan, np.float32)
    mask[3, 3, 1] = 0.25
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", mask)
    assert _merge(run_cli, tmp_path, folder, "--border", "0").exit_code == 0
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    changed = np.argwhere(labels != base).tolist()
    assert changed == [[3, 3, 1]]


def test_border_wider_than_the_patch_allows(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((3, 3, 3)))
    result = _merge(run_cli, tmp_path, folder, "--border", "4")
    assert result.exit_code == 1 and "a border of 4 leaves no voxel" in result.output
    assert all_files(tmp_path / "train") == []


def test_sparse_merge_keeps_only_strokes_and_chosen_slices(tmp_path, run_cli):
    folder, base = _extraction_folder(tmp_path)
    (tmp_path / "corr" / "tomo_patch000").mkdir(parents=True)
    header = MITK_HEADER
    add = _mask((1, 4, 6))  # z, y, x: a membrane stroke where the network saw none
    remove = _mask((3, 3, 2), (3, 3, 3))  # a background stroke on the network's membrane
    for name, mask in (("Add1.nrrd", add), ("Remove1.nrrd", remove)):
        nrrd.write(str(tmp_path / "corr" / "tomo_patch000" / name), mask.transpose(), header)
    result = _merge(
        run_cli, tmp_path, folder, "--sparse", "--keep-slices", "z=5", "--keep-slices", "x=2"
    )
    assert result.exit_code == 0, result.output
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    expected = np.full((N, N, N), 2, np.uint8)
    expected[5] = base[5]
    expected[:, :, 2] = base[:, :, 2]
    expected[1, 4, 6] = 1
    expected[3, 3, 2:4] = 0
    expected[[0, -1]] = expected[:, [0, -1]] = expected[:, :, [0, -1]] = 2  # border 1
    np.testing.assert_array_equal(labels, expected)
    row = json.loads((tmp_path / "train" / "merge_summary.json").read_text())["patches"][0]
    assert row["sparse"] and row["kept_slices"] == {"z": [5], "x": [2]}
    assert row["annotated"] == int(np.sum(expected != 2)) and row["border"] == 1
    assert "Sparse merge" in result.output and f"{row['annotated']:>9}" in result.output


def test_sparse_merge_without_slices_keeps_the_strokes_only(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((2, 2, 2)))
    assert _merge(run_cli, tmp_path, folder, "--sparse").exit_code == 0
    labels, _ = read_volume(tmp_path / "train" / "labelsTr" / "tomo_patch000.nii.gz")
    assert np.argwhere(labels != 2).tolist() == [[2, 2, 2]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--keep-slices", "z=1"], "--keep-slices chooses what a --sparse merge keeps"),
        (["--sparse", "--keep-slices", "z=8"], "--keep-slices z=8: z index 8 is outside"),
        (["--sparse", "--keep-slices", "1,2"], "expected AXIS=INDICES"),
    ],
)
def test_sparse_merge_bad_slices(tmp_path, run_cli, args, message):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((2, 2, 2)))
    result = _merge(run_cli, tmp_path, folder, *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert all_files(tmp_path / "train") == []


def test_unreadable_summary_is_replaced_with_a_warning(tmp_path, run_cli):
    folder, _ = _extraction_folder(tmp_path)
    _paint(tmp_path, "tomo_patch000", "Add1.nrrd", _mask((2, 2, 2)))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "merge_summary.json").write_text("{not json")
    result = _merge(run_cli, tmp_path, folder)
    assert result.exit_code == 0, result.output
    assert "merge_summary.json: unreadable; replaced by this run's summary" in result.output
    rows = json.loads((tmp_path / "train" / "merge_summary.json").read_text())["patches"]
    assert [r["name"] for r in rows] == ["tomo_patch000"]
