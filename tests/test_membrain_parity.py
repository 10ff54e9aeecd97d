"""A MemBrain-seg checkpoint segments here as ``membrain segment`` segments it.

The fixtures in tests/fixtures/membrain/ were made once by membrain-seg 0.0.10 itself
(tests/fixtures/make_membrain_fixture.py, its README lists commands and versions): a small
network of MemBrain-seg's own class, a non-cubic 39 x 48 x 72 (z, y, x) tomogram, windows
of 64 (larger than two of its axes, so padding is tested), with and without its 8-flip
test-time augmentation, and the same tomogram declared at 14 Å segmented with rescaling
to the network's 10 Å. MemBrain-seg stores logits; we store probabilities.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from patch_corrections import SegmentSettings, segment
from patch_corrections.inference.components import connected_components

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "membrain"


@pytest.mark.parametrize(
    ("case", "tomogram", "tta", "rescale"),
    [
        ("a_10A_noTTA", "tomo_10A.mrc", False, False),
        ("b_10A_TTA", "tomo_10A.mrc", True, False),
        ("c_14A_rescale_noTTA", "tomo_14A.mrc", False, True),
        ("d_14A_rescale_TTA", "tomo_14A.mrc", True, True),
    ],
)
def test_membrain_checkpoint_segments_as_membrain_segment_does(
    tmp_path, case, tomogram, tta, rescale
):
    expected = np.load(FIXTURES / "expected.npz")
    logits = expected[f"{case}_scores"].astype(np.float64)
    report = segment(
        FIXTURES / tomogram,
        FIXTURES / "membrain_tiny.ckpt",
        tmp_path,
        settings=SegmentSettings(window=64, tta=tta, device="cpu", rescale=rescale),
    )
    if rescale:  # 46-voxel windows at 14 Å span the network's 64 at 10 Å
        assert report.grid_window == 46 and report.pixel_sizes == (14.0, 10.0)
    ours = mrcfile.read(report.probabilities).astype(np.float64)
    theirs = 1 / (1 + np.exp(-logits))
    # Their logits were stored as float16 (2**-11 relative), our probabilities too.
    assert np.abs(ours - theirs).max() < 1e-3
    # Labels come from the float32 probabilities, as theirs from float32 logits: the
    # same voxel for voxel (float16 storage no longer tips near-ties to background).
    labels = mrcfile.read(report.segmentation) != 0
    assert np.array_equal(labels, expected[f"{case}_segmented"] != 0)


def test_components_are_labelled_as_membrain_segment_labels_them():
    # Their case e labels their own case a segmentation, components under 20 voxels dropped.
    expected = np.load(FIXTURES / "expected.npz")
    ours = connected_components(expected["a_10A_noTTA_segmented"], min_size=20)
    assert np.array_equal(ours, expected["e_10A_noTTA_cc_segmented"])
