"""MemBrain-seg's patch-correction guide, followed as written: its extraction folder
(``imagesCorr/``, ``labelsCorr/``, ``<ds>_<token>_patch<N>.nii.gz``, written by nibabel
with an identity affine and the array transposed to x, y, z, as its ``extract_patches``
writes them) and its merge command, unchanged."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest

from patch_corrections.io.volumes import Geometry, read_volume, write_volume

EDGE = 40
NAMES = ("other_tomo_patch0", "other_tomo_patch1")


@pytest.fixture
def membrain_folders(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "extracted"
    for sub in ("imagesCorr", "labelsCorr"):
        (root / sub).mkdir(parents=True)
    for name in NAMES:
        image = rng.normal(size=(EDGE,) * 3).astype(np.float32)
        labels = (rng.random((EDGE,) * 3) < 0.1).astype(np.float32)
        for sub, data in (("imagesCorr", image), ("labelsCorr", labels)):
            nifti = nibabel.Nifti1Image(np.transpose(data, (2, 1, 0)), np.eye(4))
            nibabel.save(nifti, root / sub / f"{name}.nii.gz")
    return root


def _paint(folder, name: str = "Add1.nrrd"):
    folder.mkdir(parents=True)
    mask = np.zeros((EDGE,) * 3, np.uint8)
    mask[20, 20, 18:22] = 1
    write_volume(folder / name, mask, Geometry((1.0, 1.0, 1.0)))


@pytest.mark.parametrize("labels", ["labelsCorr", "."])
def test_the_guides_merge_command_runs_as_written(membrain_folders, tmp_path, run_cli, labels):
    corrections = tmp_path / "corrections"
    _paint(corrections / NAMES[0])
    _paint(corrections / f"{NAMES[1]}.nii.gz")  # named after the file: matched too
    result = run_cli(
        "merge_corrections",
        "--labels-dir",
        membrain_folders / labels,
        "--corrections-dir",
        corrections,
        "--out-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    assert "Merged 2 patch(es)" in result.output
    for name in NAMES:
        merged = read_volume(tmp_path / "out" / "labelsTr" / f"{name}.nii.gz")[0]
        image = read_volume(tmp_path / "out" / "imagesTr" / f"{name}_0000.nii.gz")[0]
        original = read_volume(membrain_folders / "imagesCorr" / f"{name}.nii.gz")[0]
        np.testing.assert_array_equal(image, original)
        assert merged[20, 20, 18:22].tolist() == [1, 1, 1, 1]  # the Add stroke along x


def test_two_corrections_folders_for_one_patch_are_refused(membrain_folders, tmp_path, run_cli):
    corrections = tmp_path / "corrections"
    _paint(corrections / NAMES[0])
    _paint(corrections / f"{NAMES[0]}.nii.gz")
    result = run_cli(
        "merge_corrections",
        "--labels-dir",
        membrain_folders / "labelsCorr",
        "--corrections-dir",
        corrections,
        "--out-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 1
    assert "a second corrections folder for patch 'other_tomo_patch0'" in result.output
