"""extract_patches through the CLI, on small real MRC files, with exact expected arrays."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import nrrd
import numpy as np
import pytest
from conftest import all_files, write_mrc

from patch_corrections.io.volumes import Geometry, read_volume, write_volume

SHAPE = (10, 12, 14)  # z, y, x
VOXEL_XYZ = (2.0, 3.0, 4.0)
ORIGIN_XYZ = (100.0, 200.0, 300.0)
SIZE = 6
BORDER = 1


@pytest.fixture
def volumes(tmp_path):
    tomogram = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    segmentation = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0).astype(np.int8)
    write_mrc(tmp_path / "tomo.mrc", tomogram, VOXEL_XYZ, ORIGIN_XYZ)
    write_mrc(tmp_path / "seg.mrc", segmentation, VOXEL_XYZ, ORIGIN_XYZ)
    return tomogram, segmentation


def _expected(tomogram, segmentation, centre_zyx):
    """Patches cut from explicitly padded copies of the volumes."""
    pad = SIZE
    image = np.pad(tomogram.astype(np.float64), pad, constant_values=np.nan)
    labels = np.pad(segmentation, pad, constant_values=2).astype(np.uint8)
    window = tuple(slice(c - SIZE // 2 + pad, c - SIZE // 2 + pad + SIZE) for c in centre_zyx)
    image, labels = image[window], labels[window].copy()
    image[np.isnan(image)] = np.float32(np.nanmean(image))
    for axis in range(3):
        for end in (0, SIZE - 1):
            index = [slice(None)] * 3
            index[axis] = end
            labels[tuple(index)] = 2
    return image.astype(np.float32), labels


def _extract(run_cli, tmp_path, *args, tomogram=None):
    tomogram = tomogram or tmp_path / "tomo.mrc"
    common = ["-s", tmp_path / "seg.mrc", "-o", tmp_path / "out", "--patch-size", SIZE]
    return run_cli("extract_patches", "-t", tomogram, *common, "--border", BORDER, *args)


def test_patches_at_every_face_and_corner(tmp_path, volumes, run_cli):
    nz, ny, nx = SHAPE
    corners = list(itertools.product((0, nx - 1), (0, ny - 1), (0, nz - 1)))
    faces = [(0, 6, 5), (nx - 1, 6, 5), (7, 0, 5), (7, ny - 1, 5), (7, 6, 0), (7, 6, nz - 1)]
    centres = [(7, 6, 5), *corners, *faces]  # x, y, z; the first lies fully inside
    (tmp_path / "c.csv").write_text("".join(f"{x} {y} {z}\n" for x, y, z in centres))
    result = _extract(run_cli, tmp_path, "-c", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["patches"]
    assert len(manifest) == len(centres)
    for number, (x, y, z) in enumerate(centres):
        name = f"tomo_patch{number:03d}"
        image, image_info = read_volume(tmp_path / "out" / "images" / f"{name}.nrrd")
        labels, _ = read_volume(tmp_path / "out" / "labels" / f"{name}.nrrd")
        want_image, want_labels = _expected(*volumes, (z, y, x))
        np.testing.assert_array_equal(image, want_image, err_msg=name)
        np.testing.assert_array_equal(labels, want_labels, err_msg=name)
        offset = (z - SIZE // 2, y - SIZE // 2, x - SIZE // 2)
        assert image_info.geometry == Geometry(VOXEL_XYZ[::-1], ORIGIN_XYZ[::-1]).shifted(offset)
        record = manifest[number]
        assert record["name"] == name
        assert record["centre_xyz"] == [x, y, z]
        assert record["offset_xyz"] == [x - 3, y - 3, z - 3]
        assert record["voxel_size_xyz"] == list(VOXEL_XYZ)
        expected_padding = [
            [max(0, 3 - c), max(0, c + 3 - n)] for c, n in zip((x, y, z), SHAPE[::-1])
        ]
        assert record["padding_xyz"] == expected_padding
    assert manifest[0]["padding_xyz"] == [[0, 0]] * 3


def test_nrrd_patch_overlays_on_tomogram(tmp_path, volumes, run_cli):
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5)
    assert result.exit_code == 0, result.output
    header = nrrd.read_header(str(tmp_path / "out" / "images" / "tomo_patch000.nrrd"))
    assert np.allclose(header["space directions"], np.diag(VOXEL_XYZ))
    # first voxel (4, 3, 2) in x, y, z, placed at origin + index * voxel size
    assert header["space origin"].tolist() == [100 + 4 * 2.0, 200 + 3 * 3.0, 300 + 2 * 4.0]


@pytest.mark.parametrize(("fmt", "suffix"), [("mrc", ".mrc"), ("nii.gz", ".nii.gz")])
def test_other_formats_keep_geometry(tmp_path, volumes, run_cli, fmt, suffix):
    result = _extract(run_cli, tmp_path, "--x", 0, "--y", 6, "--z", 5, "--format", fmt)
    assert result.exit_code == 0, result.output
    image, info = read_volume(tmp_path / "out" / "images" / f"tomo_patch000{suffix}")
    labels, _ = read_volume(tmp_path / "out" / "labels" / f"tomo_patch000{suffix}")
    want_image, want_labels = _expected(*volumes, (5, 6, 0))
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(labels, want_labels)
    assert info.geometry == Geometry(VOXEL_XYZ[::-1], ORIGIN_XYZ[::-1]).shifted((2, 3, -3))


def test_angstrom_centres_and_napari_points(tmp_path, volumes, run_cli):
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1,axis-2\n0,5,6,7\n")
    result = _extract(run_cli, tmp_path, "-c", tmp_path / "points.csv")
    assert result.exit_code == 0, result.output
    # 7 * 2 Å, 6 * 3 Å, 5 * 4 Å with rounding slack
    result = _extract(
        run_cli,
        tmp_path,
        "--x",
        14.9,
        "--y",
        18.2,
        "--z",
        19.0,
        "--angstrom",
        "--token",
        "angstrom",
    )
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["patches"]
    assert [r["centre_xyz"] for r in records] == [[7, 6, 5], [7, 6, 5]]
    assert [r["name"] for r in records] == ["tomo_patch000", "angstrom_patch000"]


def test_rerun_adds_patches_and_overwrite_replaces(tmp_path, volumes, run_cli):
    assert _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5).exit_code == 0
    first = (tmp_path / "out" / "images" / "tomo_patch000.nrrd").read_bytes()
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5)
    assert "Skipped 1 centre(s) already extracted" in result.output
    assert _extract(run_cli, tmp_path, "--x", 1, "--y", 1, "--z", 1).exit_code == 0
    names = [p.name for p in all_files(tmp_path / "out" / "images")]
    assert names == ["tomo_patch000.nrrd", "tomo_patch001.nrrd"]
    assert (tmp_path / "out" / "images" / "tomo_patch000.nrrd").read_bytes() == first

    result = _extract(run_cli, tmp_path, "--x", 2, "--y", 2, "--z", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["patches"]
    assert [(r["name"], r["centre_xyz"]) for r in records] == [("tomo_patch000", [2, 2, 2])]
    assert [p.name for p in all_files(tmp_path / "out" / "images")] == ["tomo_patch000.nrrd"]


@pytest.mark.parametrize("linked", [False, True])
def test_overwrite_through_a_relative_or_linked_out_dir(
    tmp_path, volumes, run_cli, monkeypatch, linked
):
    (tmp_path / "real").mkdir()
    if linked:
        (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    out = "link" if linked else "real"
    common = ["-t", "tomo.mrc", "-s", "seg.mrc", "-o", out, "--patch-size", SIZE, "--border", 1]
    assert run_cli("extract_patches", *common, "--x", 7, "--y", 6, "--z", 5).exit_code == 0
    result = run_cli("extract_patches", *common, "--x", 2, "--y", 2, "--z", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "real" / "manifest.json").read_text())["patches"]
    assert [(r["name"], r["centre_xyz"]) for r in records] == [("tomo_patch000", [2, 2, 2])]
    image, _ = read_volume(tmp_path / "real" / "images" / "tomo_patch000.nrrd")
    expected, _ = _expected(*volumes, (2, 2, 2))
    np.testing.assert_array_equal(image, expected)


def test_a_patch_too_large_for_the_memory_is_one_line_before_anything_is_allocated(
    tmp_path, volumes, run_cli
):
    inputs = ["-t", tmp_path / "tomo.mrc", "-s", tmp_path / "seg.mrc", "-o", tmp_path / "out"]
    result = run_cli(
        "extract_patches", *inputs, "--patch-size", 100000, "--x", 7, "--y", 6, "--z", 5
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: --patch-size 100000: a 100000³ patch needs about")
    assert len(result.output.splitlines()) == 1 and "PiB of host memory" in result.output
    assert not (tmp_path / "out").exists()


def test_stray_file_is_not_overwritten(tmp_path, volumes, run_cli):
    (tmp_path / "out" / "labels").mkdir(parents=True)
    (tmp_path / "out" / "labels" / "tomo_patch000.nrrd").write_text("mine")
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5)
    assert result.exit_code == 1
    assert "tomo_patch000.nrrd: already exists" in result.output
    assert [p.name for p in all_files(tmp_path / "out")] == ["tomo_patch000.nrrd"]


def test_probability_map_is_binarised_with_a_warning(tmp_path, volumes, run_cli):
    probabilities = np.linspace(0, 1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    write_mrc(tmp_path / "seg.mrc", probabilities, VOXEL_XYZ, ORIGIN_XYZ)
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5)
    assert result.exit_code == 0, result.output
    assert "read as probabilities: values > 0.5 are membrane" in result.output
    labels, _ = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")
    inner = (slice(1, 5),) * 3
    window = tuple(slice(c - 2, c + 2) for c in (5, 6, 7))
    np.testing.assert_array_equal(labels[inner], probabilities[window] > 0.5)

    result = _extract(
        run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5, "--threshold", 0.25, "--overwrite"
    )
    assert result.exit_code == 0 and "Warnings" not in result.output
    labels, _ = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")
    np.testing.assert_array_equal(labels[inner], probabilities[window] > 0.25)


def test_label_image_is_binarised_with_a_warning(tmp_path, volumes, run_cli):
    write_mrc(tmp_path / "seg.mrc", np.full(SHAPE, 3, np.int8), VOXEL_XYZ, ORIGIN_XYZ)
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5)
    assert "every value above 0 is membrane" in result.output
    labels, _ = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")
    assert set(np.unique(labels[1:5, 1:5, 1:5])) == {1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "{tmp}/c.csv"], "c.csv:3: centre x=14, y=0, z=0 (voxels) lies outside"),
        (["--x", "1", "--y", "2"], "give all three of --x, --y and --z"),
        ([], "no centres given"),
        (
            ["--x", "1", "--y", "1", "--z", "1", "--patch-size", "6", "--border", "3"],
            "--border 3 leaves no voxel",
        ),
        (["--x", "1", "--y", "1", "--z", "-1"], "--x/--y/--z: centre x=1, y=1, z=-1"),
        (["-c", "{tmp}/missing.csv"], "missing.csv: centres file not found"),
    ],
)
def test_bad_centres_write_nothing(tmp_path, volumes, run_cli, args, message):
    (tmp_path / "c.csv").write_text("x,y,z\n1,1,1\n14,0,0\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = _extract(run_cli, tmp_path, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert all_files(tmp_path / "out") == []


def test_shape_mismatch_names_both_files(tmp_path, volumes, run_cli):
    write_mrc(tmp_path / "seg.mrc", np.zeros((10, 12, 13), np.int8))
    result = _extract(run_cli, tmp_path, "--x", 1, "--y", 1, "--z", 1)
    assert result.exit_code == 1
    assert "seg.mrc: shape x,y,z=(13, 12, 10) differs from the tomogram" in result.output
    assert "tomo.mrc: x,y,z=(14, 12, 10)" in result.output
    assert all_files(tmp_path / "out") == []


def test_angstrom_needs_a_voxel_size(tmp_path, run_cli):
    write_mrc(tmp_path / "tomo.mrc", np.zeros(SHAPE, np.float32), (0.0, 0.0, 0.0))
    write_mrc(tmp_path / "seg.mrc", np.zeros(SHAPE, np.int8), (0.0, 0.0, 0.0))
    result = _extract(run_cli, tmp_path, "--x", 1, "--y", 1, "--z", 1, "--angstrom")
    assert result.exit_code == 1 and "has no voxel size" in result.output
    result = _extract(run_cli, tmp_path, "--x", 1, "--y", 1, "--z", 1)
    assert result.exit_code == 0 and "patches are written with 1 Å" in result.output


def test_help_and_extraction_do_not_import_torch(tmp_path, volumes):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from patch_corrections.cli import app\n"
        f"r = CliRunner().invoke(app, ['extract_patches', '-t', r'{tmp_path}/tomo.mrc', "
        f"'-s', r'{tmp_path}/seg.mrc', '-o', r'{tmp_path}/o', '--x', '1', '--y', '1', "
        "'--z', '1', '--patch-size', '4', '--border', '1'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(app, ['merge_corrections', '-l', r'{tmp_path}/o', "
        f"'-c', r'{tmp_path}/o', '-o', r'{tmp_path}/t', '--include-uncorrected'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    help_run = subprocess.run(
        [sys.executable, "-m", "patch_corrections", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "extract_patches" in help_run.stdout and "merge_corrections" in help_run.stdout


def test_one_binarisation_rule_for_all_patches(tmp_path, volumes, run_cli):
    # Scores in [-2, 1]: one patch only sees values in [0, 1] but must still use "> 0".
    scores = np.full(SHAPE, 0.3, np.float32)
    scores[:, :, 10:] = -2.0
    write_mrc(tmp_path / "seg.mrc", scores, VOXEL_XYZ, ORIGIN_XYZ)
    (tmp_path / "c.csv").write_text("3 6 5\n11 6 5\n")
    result = _extract(run_cli, tmp_path, "-c", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    assert "scores (logits): values > 0 are membrane" in result.output
    labels, _ = read_volume(tmp_path / "out" / "labels" / "tomo_patch000.nrrd")
    assert set(np.unique(labels[1:5, 1:5, 1:5])) == {1}  # 0.3 > 0


def test_same_stem_from_another_tomogram_is_not_skipped(tmp_path, volumes, run_cli):
    assert _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5).exit_code == 0
    other = tmp_path / "TS2"
    other.mkdir()
    write_mrc(other / "tomo.mrc", np.zeros(SHAPE, np.float32), VOXEL_XYZ, ORIGIN_XYZ)
    result = _extract(run_cli, tmp_path, "--x", 7, "--y", 6, "--z", 5, tomogram=other / "tomo.mrc")
    assert result.exit_code == 0 and "tomo_patch001" in result.output


def test_failed_overwrite_keeps_the_earlier_patches(tmp_path, volumes, run_cli):
    tomogram = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    write_volume(tmp_path / "tomo.nii", tomogram, Geometry((1.0, 1.0, 1.0)))

    def extract(*args):
        return _extract(run_cli, tmp_path, *args, tomogram=tmp_path / "tomo.nii")

    assert extract("--x", 7, "--y", 6, "--z", 2).exit_code == 0
    before = {p: p.read_bytes() for p in all_files(tmp_path / "out")}
    # Then the tomogram is cut short: its last z slices are unreadable.
    data = (tmp_path / "tomo.nii").read_bytes()
    (tmp_path / "tomo.nii").write_bytes(data[: len(data) - 3 * SHAPE[1] * SHAPE[2] * 4])
    (tmp_path / "c.csv").write_text("1 1 1\n7 6 9\n")
    result = extract("-c", tmp_path / "c.csv", "--overwrite")
    assert result.exit_code == 1
    assert (
        result.output.startswith("Error: ") and "tomo.nii: cannot read its data" in result.output
    )
    assert {p: p.read_bytes() for p in all_files(tmp_path / "out")} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--x", "nan", "--y", "1", "--z", "1"], "coordinates must be finite"),
        (["--x", "1", "--y", "1", "--z", "1", "--threshold", "nan"], "--threshold must be"),
        (["--x", "1", "--y", "1", "--z", "1", "--token", "../up"], "--token '../up'"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, volumes, run_cli, args, message):
    result = _extract(run_cli, tmp_path, *args)
    assert result.exit_code == 1 and message in result.output
    assert all_files(tmp_path / "out") == [] and not (tmp_path / "out" / "images").exists()


@pytest.mark.parametrize(
    ("dtype", "fmt"),
    [(np.float16, "nrrd"), (np.float16, "nii.gz"), (np.float16, "mrc"), (np.uint8, "mrc")],
)
def test_tomogram_dtypes_in_every_format(tmp_path, run_cli, dtype, fmt):
    tomogram = (np.arange(np.prod(SHAPE)) % 200).reshape(SHAPE).astype(dtype)
    write_volume(tmp_path / "tomo.nrrd", tomogram, Geometry((1.0, 1.0, 1.0)))
    write_mrc(tmp_path / "seg.mrc", np.zeros(SHAPE, np.int8))
    result = run_cli(
        "extract_patches",
        "-t",
        tmp_path / "tomo.nrrd",
        "-s",
        tmp_path / "seg.mrc",
        "-o",
        tmp_path / "out",
        "--patch-size",
        4,
        "--border",
        1,
        "--x",
        7,
        "--y",
        6,
        "--z",
        5,
        "--format",
        fmt,
    )
    assert result.exit_code == 0, result.output
    suffix = ".nii.gz" if fmt == "nii.gz" else f".{fmt}"
    image, _ = read_volume(tmp_path / "out" / "images" / f"tomo_patch000{suffix}")
    np.testing.assert_array_equal(image.astype(np.float64), tomogram[3:7, 4:8, 5:9])
