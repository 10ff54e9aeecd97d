"""The bundled sample data: the README's main job runs on it and the script regenerates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
from conftest import all_files

from patch_corrections.constants import IGNORE
from patch_corrections.io.volumes import read_volume

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def test_readme_main_job_makes_labels_that_match_the_truth(tmp_path, run_cli):
    result = run_cli(
        "extract_patches",
        "--tomogram",
        SAMPLE / "tomogram.mrc",
        "--segmentation",
        SAMPLE / "prediction.mrc",
        "--centres",
        SAMPLE / "centres.csv",
        "--patch-size",
        96,
        "--out-dir",
        tmp_path / "patches",
    )
    assert result.exit_code == 0, result.output
    result = run_cli(
        "merge_corrections",
        "--labels-dir",
        tmp_path / "patches",
        "--corrections-dir",
        SAMPLE / "corrections",
        "--out-dir",
        tmp_path / "train",
    )
    assert result.exit_code == 0, result.output
    assert "Warnings" not in result.output
    truth = mrcfile.read(SAMPLE / "truth.mrc")
    labels = all_files(tmp_path / "train" / "labelsTr")
    assert len(labels) == 4
    for path in labels:
        merged, info = read_volume(path)
        offset = [round(o / v) for o, v in zip(info.geometry.origin, info.geometry.voxel_size)]
        window = tuple(
            slice(max(o, 0), min(o + n, full))
            for o, n, full in zip(offset, merged.shape, truth.shape)
        )
        local = tuple(slice(w.start - o, w.stop - o) for w, o in zip(window, offset))
        inside, reference = merged[local], truth[window]
        annotated = inside != IGNORE
        assert annotated.mean() > 0.2
        # Corrections turn the prediction into the truth wherever they do not say "ignore".
        np.testing.assert_array_equal(inside[annotated], reference[annotated], err_msg=path.name)
        prediction = mrcfile.read(SAMPLE / "prediction.mrc")[window]
        assert np.any(prediction[annotated] != reference[annotated])  # there was work to do


def test_script_regenerates_the_committed_arrays(tmp_path):
    subprocess.run(
        [sys.executable, SAMPLE / "make_sample_data.py", "--out", tmp_path],
        check=True,
        capture_output=True,
    )
    for name in ("tomogram.mrc", "truth.mrc", "prediction.mrc"):
        np.testing.assert_array_equal(mrcfile.read(tmp_path / name), mrcfile.read(SAMPLE / name))
    assert (tmp_path / "centres.csv").read_text() == (SAMPLE / "centres.csv").read_text()
    committed = sorted(p.relative_to(SAMPLE) for p in all_files(SAMPLE / "corrections"))
    assert (
        sorted(p.relative_to(tmp_path) for p in all_files(tmp_path / "corrections")) == committed
    )
    for relative in committed:
        np.testing.assert_array_equal(
            read_volume(tmp_path / relative)[0], read_volume(SAMPLE / relative)[0]
        )


def test_demo_runs_the_whole_loop(tmp_path, run_cli):
    result = run_cli("demo", "--out-dir", tmp_path / "demo", "--iterations", 10)
    assert result.exit_code == 0, result.output
    for step in (
        "1. Segment",
        "2. Cut patches",
        "3. Merge",
        "4. Fine-tune",
        "5. Segment",
        "6. Evaluate",
    ):
        assert step in result.output
    lines = result.output.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["metric", "before", "after"]
    )
    dice = lines[header + 1].split()
    assert dice[0] == "dice" and all(0 <= float(v) <= 1 for v in dice[1:])
    for folder in ("before", "patches", "train", "model", "after"):
        assert (tmp_path / "demo" / folder).is_dir()
    # The starting model's segmentation is the bundled prediction, voxel for voxel.
    before = mrcfile.read(tmp_path / "demo" / "before" / "tomogram_segmented.mrc")
    np.testing.assert_array_equal(before, mrcfile.read(SAMPLE / "prediction.mrc"))
    result = run_cli("demo", "--out-dir", tmp_path / "demo", "--iterations", 10)
    assert result.exit_code == 1 and "holds an earlier run" in result.output
