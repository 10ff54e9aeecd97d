"""Connected components and the TTA uncertainty map of a segmentation."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from patch_corrections import InputError, SegmentSettings, segment, segment_many
from patch_corrections.inference.components import connected_components, smallest_label_dtype
from patch_corrections.inference.probabilities import sliding_window, tta_with_variance
from patch_corrections.io.volumes import Geometry, write_volume
from patch_corrections.network.checkpoints import save_checkpoint
from patch_corrections.network.unet import PRESETS, UNet


def test_components_touch_diagonally_drop_small_ones_and_number_x_first():
    seg = np.zeros((6, 6, 8), np.int8)
    seg[0, 0, 6] = 1  # one voxel
    seg[1, 1, 7] = 1  # touches it by a corner: the same component (26-connected)
    seg[4:6, 4:6, 0:2] = 1  # 8 voxels
    seg[0:2, 4:6, 4:6] = 1  # 8 voxels
    labels = connected_components(seg, min_size=3)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[0, 0, 6] == labels[1, 1, 7] == 0  # the 2-voxel component is dropped
    # Numbered in MemBrain-seg's (x, y, z) scan: the component at lower x comes first.
    assert labels[4, 4, 0] == 1 and labels[0, 4, 4] == 2
    assert connected_components(seg)[0, 0, 6] == connected_components(seg)[1, 1, 7] != 0
    assert smallest_label_dtype(labels) == np.int8
    assert smallest_label_dtype(np.array([40000])) == np.float32


def test_tta_variance_is_zero_for_a_flip_equivariant_network_and_not_otherwise():
    volume = np.random.default_rng(5).normal(size=(12, 18, 14)).astype(np.float32)

    def read(start, stop):
        return volume[tuple(slice(a, b) for a, b in zip(start, stop))].copy()

    def pointwise(windows):
        return 3 * windows

    pieces = list(tta_with_variance(read, volume.shape, pointwise, 8, 0.5, 2))
    probabilities = np.concatenate([p for _, p, _ in pieces])
    variance = np.concatenate([v for _, _, v in pieces])
    plain = np.concatenate([p for _, p in sliding_window(read, volume.shape, pointwise, 8)])
    np.testing.assert_allclose(probabilities, plain, rtol=1e-5, atol=1e-6)
    assert variance.shape == volume.shape and np.abs(variance).max() < 1e-6

    def shifted(windows):
        return np.roll(3 * windows, 1, axis=3)

    pieces = list(tta_with_variance(read, volume.shape, shifted, 8, 0.5, 2))
    variance = np.concatenate([v for _, _, v in pieces])
    assert variance.min() >= 0 and variance.max() > 1e-3


def test_segment_writes_uncertainty_and_components(tmp_path):
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    save_checkpoint(
        tmp_path / "tiny.pt",
        {"model_config": network.config.to_dict(), "model": network.state_dict()},
    )
    volume = np.random.default_rng(6).normal(size=(16, 24, 20)).astype(np.float32)
    write_volume(tmp_path / "tomo.mrc", volume, Geometry((5.0, 5.0, 5.0)))
    settings = SegmentSettings(window=16, tta=True, uncertainty=True, components=True)
    report = segment(
        tmp_path / "tomo.mrc", tmp_path / "tiny.pt", tmp_path / "out", settings=settings
    )
    spread = mrcfile.read(report.uncertainty)
    assert spread.dtype == np.float16 and spread.shape == volume.shape
    assert 0 <= spread.min() and spread.max() <= 0.25  # a probability's variance
    labels = mrcfile.read(report.components)
    segmented = mrcfile.read(report.segmentation) != 0
    assert np.array_equal(labels != 0, segmented) and labels.max() == report.component_count
    with mrcfile.open(report.uncertainty) as mrc:
        assert float(mrc.voxel_size.x) == 5.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"uncertainty": True}, "add --tta"),
        ({"min_component_size": 5}, "add --components"),
        ({"components": True, "min_component_size": 0}, "at least 1"),
    ],
)
def test_segment_output_options_are_checked(settings, message):
    with pytest.raises(InputError, match=message):
        SegmentSettings(**settings)


def test_many_tomograms_load_the_network_once_and_skip_finished_ones(tmp_path, run_cli):
    torch.manual_seed(0)
    network = UNet(PRESETS["tiny"])
    save_checkpoint(
        tmp_path / "tiny.pt",
        {"model_config": network.config.to_dict(), "model": network.state_dict()},
    )
    folder = tmp_path / "tomograms"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for name in ("a.mrc", "b.mrc"):
        write_volume(
            folder / name, rng.normal(size=(8, 16, 16)).astype(np.float32), Geometry((5.0,) * 3)
        )
    args = [
        "segment",
        "--checkpoint",
        tmp_path / "tiny.pt",
        "-o",
        tmp_path / "out",
        "--window",
        16,
    ]
    result = run_cli(*args, "-t", folder)
    assert result.exit_code == 0, result.output
    assert "Segmented 2 tomogram(s), skipped 0, failed 0." in result.output
    assert (tmp_path / "out" / "b_segmented.mrc").is_file()
    (tmp_path / "out" / "b_segmented.mrc").unlink()  # as if a run stopped during b
    batch = segment_many(
        [folder / "a.mrc", folder / "b.mrc"],
        tmp_path / "tiny.pt",
        tmp_path / "out",
        settings=SegmentSettings(window=16),
    )
    assert [r.tomogram.name for r in batch.done] == ["b.mrc"]
    assert [p.name for p in batch.skipped] == ["a.mrc"]
    (tmp_path / "other").mkdir()
    write_volume(
        tmp_path / "other" / "a.mrc", np.zeros((8, 8, 8), np.float32), Geometry((5.0,) * 3)
    )
    result = run_cli(*args, "-t", folder, "-t", tmp_path / "other" / "a.mrc")
    assert result.exit_code == 1 and "the same name, so the same output files" in result.output
