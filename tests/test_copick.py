"""copick projects: tomograms chosen by run, type and voxel spacing, segmentations written
back where copick's own API finds them; a project built by copick itself."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from conftest import BRIEF_RETRAIN, save_tiny_checkpoint

from patch_corrections.errors import InputError
from patch_corrections.io.copick_project import (
    CopickProject,
    CopickSelection,
    SegmentationName,
    _local_path,
)
from patch_corrections.io.volumes import read_volume

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
WINDOW = ("--window", 64, "--batch-size", 4, "--device", "cpu")
SMALL = (slice(None), slice(0, 96), slice(0, 112))
"""TS_02 is a corner of the sample tomogram, so that it segments fast."""


def segment_args(config: Path, out: Path) -> tuple:
    """``segment``'s arguments for a copick project with the sample network."""
    return ("--copick-config", config, "--checkpoint", SAMPLE / "starting_model.pt", "-o", out)


def new_project(folder: Path, objects=("membrane",)) -> Path:
    """A copick project written by copick: runs TS_01 (the sample tomogram) and TS_02 (a
    corner of it), each a two-level ``wbp`` tomogram at 10 Å."""
    copick = pytest.importorskip("copick")
    config = folder / "copick.json"
    config.write_text(
        json.dumps(
            {
                "config_type": "filesystem",
                "name": "test",
                "version": copick.__version__,
                "pickable_objects": [
                    {"name": o, "is_particle": False, "label": i + 1}
                    for i, o in enumerate(objects)
                ],
                "overlay_root": f"local://{folder / 'overlay'}",
                "overlay_fs_args": {"auto_mkdir": True},
            }
        )
    )
    root = copick.from_file(str(config))
    tomogram = mrcfile.read(SAMPLE / "tomogram.mrc")
    for name, data in (("TS_01", tomogram), ("TS_02", tomogram[SMALL])):
        made = root.new_run(name).new_voxel_spacing(10.0).new_tomogram("wbp")
        made.from_numpy(np.ascontiguousarray(data), levels=2)
    return config


def copick_segmentation(config: Path, run: str, session: str) -> np.ndarray:
    """A segmentation read back by copick's own API."""
    import copick

    found = (
        copick.from_file(str(config))
        .get_run(run)
        .get_segmentations(name="membrane", user_id="patch-corrections", session_id=session)
    )
    assert len(found) == 1 and not found[0].is_multilabel
    return found[0].numpy()


def test_the_correction_loop_on_a_copick_project(tmp_path, run_cli):
    config = new_project(tmp_path)
    model = SAMPLE / "starting_model.pt"
    project = ("--copick-config", config)
    segmented = run_cli(
        "segment", *project, "--checkpoint", model, "-o", tmp_path / "seg", *WINDOW
    )
    assert segmented.exit_code == 0, segmented.output
    assert "Segmented run TS_01 (224x224x64 voxels" in segmented.output
    assert "Written into the copick project, run TS_02" in segmented.output
    prediction = mrcfile.read(SAMPLE / "prediction.mrc")
    stored = copick_segmentation(config, "TS_01", "0")
    assert stored.dtype == np.uint8 and np.array_equal(stored != 0, prediction != 0)
    # Each run's outputs in its folder; the copick segmentation is its segmentation.
    outputs = tmp_path / "seg" / "TS_02" / "VoxelSpacing10.000"
    own = mrcfile.read(outputs / "wbp_segmented.mrc")
    assert np.array_equal(copick_segmentation(config, "TS_02", "0"), own)
    assert (outputs / "wbp_probabilities.mrc").exists()
    again = run_cli("segment", *project, "--checkpoint", model, "-o", tmp_path / "seg", *WINDOW)
    assert "whose copick segmentation exists (--overwrite redoes them): run TS_01, run TS_02" in (
        again.output
    )

    # Patches cut from the project: its tomogram and the segmentation segment wrote.
    patches, train = tmp_path / "patches", tmp_path / "train"
    cut = run_cli(
        "extract_patches",
        *project,
        "--run",
        "TS_01",
        "-o",
        patches,
        "--centres",
        SAMPLE / "centres.csv",
        "--patch-size",
        96,
        "--token",
        "tomogram",
    )
    assert cut.exit_code == 0, cut.output
    merged = run_cli("merge_corrections", "-l", patches, "-c", SAMPLE / "corrections", "-o", train)
    assert merged.exit_code == 0, merged.output
    trained = run_cli(
        "retrain",
        "-t",
        train,
        "-o",
        tmp_path / "model",
        "--checkpoint",
        model,
        *BRIEF_RETRAIN,
    )
    assert trained.exit_code == 0 and "not here" not in trained.output, trained.output

    pasted = run_cli("paste_corrections", "-m", train, *project, "--run", "TS_01", "-p", patches)
    assert pasted.exit_code == 0, pasted.output
    reference = tmp_path / "corrected.mrc"
    # The same corrections pasted into the sample's files.
    plain = tmp_path / "plain"
    assert (
        run_cli(
            "extract_patches",
            "-t",
            SAMPLE / "tomogram.mrc",
            "-s",
            SAMPLE / "prediction.mrc",
            "-o",
            plain,
            "--centres",
            SAMPLE / "centres.csv",
            "--patch-size",
            96,
        ).exit_code
        == 0
    )
    assert (
        run_cli(
            "merge_corrections", "-l", plain, "-c", SAMPLE / "corrections", "-o", plain / "t"
        ).exit_code
        == 0
    )
    assert (
        run_cli(
            "paste_corrections",
            "-m",
            plain / "t",
            "-s",
            SAMPLE / "prediction.mrc",
            "-o",
            reference,
        ).exit_code
        == 0
    )
    corrected = copick_segmentation(config, "TS_01", "corrected")
    assert corrected.dtype == np.uint8
    assert np.array_equal(corrected != 0, mrcfile.read(reference) != 0)
    assert not np.array_equal(corrected, stored)
    refused = run_cli("paste_corrections", "-m", train, *project, "--run", "TS_01")
    assert refused.exit_code == 1 and "already exists; pass --overwrite" in refused.output


def test_suggest_reads_one_run_and_names_it_in_the_next_command(tmp_path, run_cli):
    config = new_project(tmp_path)
    network = save_tiny_checkpoint(tmp_path / "tiny.pt")
    project = ("--copick-config", config, "--run", "TS_02")
    result = run_cli(
        "suggest",
        *project,
        "--checkpoint",
        network,
        "-o",
        tmp_path / "s",
        "--patch-size",
        48,
        "--count",
        2,
        "--no-previews",
        *WINDOW,
    )
    assert result.exit_code == 0, result.output
    assert f"extract_patches --copick-config {config} --run TS_02 --tomo-type wbp" in result.output
    assert "boxes of 48³ voxels in run TS_02 (wbp at 10 Å)" in result.output
    shape = read_volume(tmp_path / "s" / "wbp_probabilities.mrc")[1].shape
    assert shape == (64, 96, 112)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--run", "TS_09"),
            "--run TS_09: no such run in the copick project .* it holds TS_01, TS_02",
        ),
        (("--run", "TS_01", "--voxel-spacing", 7), "--voxel-spacing 7: .* holds 10.000 Å"),
        (
            ("--run", "TS_01", "--tomo-type", "denoised"),
            "--tomo-type denoised: .* holds wbp at 10.000 Å",
        ),
        ((), "holds 2 runs; choose one with --run \\(TS_01, TS_02\\)"),
        (("--run", "TS_01"), "holds no segmentation 'membrane' by patch-corrections, session 0"),
        (
            ("--run", "TS_01", "-t", SAMPLE / "tomogram.mrc"),
            "give --tomogram or --copick-config, not both",
        ),
    ],
)
def test_a_selection_the_project_lacks_is_one_line_listing_what_it_holds(
    tmp_path, run_cli, args, message
):
    config = new_project(tmp_path)
    result = run_cli(
        "extract_patches",
        "--copick-config",
        config,
        *args,
        "-o",
        tmp_path / "p",
        "--x",
        50,
        "--y",
        50,
        "--z",
        30,
    )
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert re.search(message, line), line
    assert not (tmp_path / "p").exists()


def test_names_copick_refuses_are_refused_before_segmenting(tmp_path, run_cli):
    config = new_project(tmp_path, objects=("ribosome",))
    common = segment_args(config, tmp_path / "seg")
    missing = run_cli("segment", *common, *WINDOW)
    assert missing.exit_code == 1
    assert "no pickable object of that name (it has ribosome)" in missing.output
    underscore = run_cli(
        "segment", *common, "--copick-name", "ribosome", "--copick-session", "a_b"
    )
    assert (
        underscore.exit_code == 1
        and "--copick-session 'a_b': copick names hold no" in underscore.output
    )
    level = run_cli("segment", *common, "--scale-level", 1)
    assert (
        level.exit_code == 1 and "choose a coarser tomogram with --voxel-spacing" in level.output
    )
    nothing = run_cli(
        "segment", "--checkpoint", SAMPLE / "starting_model.pt", "-o", tmp_path / "seg"
    )
    assert nothing.exit_code == 1
    assert "give --tomogram, or a copick project with --copick-config" in nothing.output
    stray = run_cli(
        "segment",
        "--run",
        "TS_01",
        "--checkpoint",
        SAMPLE / "starting_model.pt",
        "-o",
        tmp_path / "seg",
    )
    assert (
        stray.exit_code == 1
        and "--run selects in a copick project: give --copick-config" in stray.output
    )
    assert not (tmp_path / "seg").exists()


def test_segment_splits_the_runs_into_parts_and_writes_only_what_is_missing(tmp_path, run_cli):
    config = new_project(tmp_path)
    common = (*segment_args(config, tmp_path / "seg"), *WINDOW)
    second = run_cli("segment", *common, "--part", 1, "--parts", 2)
    assert second.exit_code == 0, second.output
    assert "run TS_02" in second.output and "TS_01" not in second.output
    written = tmp_path / "overlay" / "ExperimentRuns" / "TS_02" / "Segmentations"
    (store,) = written.iterdir()
    assert store.name == "10.000_patch-corrections_0_membrane.zarr"
    shutil.rmtree(store)  # the outputs stay; only the copick segmentation is written again
    again = run_cli("segment", *common, "--run", "TS_02")
    assert again.exit_code == 0 and "Segmented 0 tomogram(s)" in again.output
    assert "Written into the copick project, run TS_02" in again.output
    kept = copick_segmentation(config, "TS_02", "0")
    assert kept.shape == (64, 96, 112)
    # A copick segmentation is the project's: another output folder does not replace it.
    elsewhere = run_cli("segment", *segment_args(config, tmp_path / "other"), "--run", "TS_02")
    assert elsewhere.exit_code == 0 and "whose copick segmentation exists" in elsewhere.output
    assert not (tmp_path / "other").exists()


def test_runs_without_the_tomogram_are_left_out_of_all_runs_and_refused_by_name(tmp_path, run_cli):
    config = new_project(tmp_path)
    import copick

    copick.from_file(str(config)).new_run("TS_03")
    common = segment_args(config, tmp_path / "seg")
    named = run_cli("segment", *common, "--run", "TS_03")
    assert named.exit_code == 1
    assert "holds no tomogram in run(s) TS_03" in named.output
    every = run_cli("segment", *common, "--part", 1, "--parts", 2, *WINDOW)
    assert every.exit_code == 0, every.output
    assert "1 run(s) of the copick project" in every.output and "left out: TS_03" in every.output
    pasted = run_cli(
        "paste_corrections", "-m", tmp_path, "--copick-config", config, "--copick-out-session", "0"
    )
    assert pasted.exit_code == 1 and "that is the session read" in pasted.output


def test_a_project_on_remote_storage_is_one_line_before_anything_is_listed(tmp_path, run_cli):
    pytest.importorskip("copick")
    config = tmp_path / "copick.json"
    config.write_text(
        json.dumps({"config_type": "filesystem", "overlay_root": "s3://bucket/project"})
    )
    result = run_cli("segment", *segment_args(config, tmp_path / "seg"))
    assert result.exit_code == 1
    assert "its overlay_root lies on s3:// storage" in result.output
    assert "Traceback" not in result.output


def test_without_copick_the_error_gives_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "copick", None)
    with pytest.raises(
        InputError, match=r'copick extra \(pip install "patch_corrections\[copick\]"\)'
    ):
        CopickProject(CopickSelection(tmp_path / "copick.json"))


def test_data_on_remote_storage_is_refused():
    class Remote:
        protocol = ("s3", "s3a")

    with pytest.raises(
        InputError, match=r"lies on s3:// storage; .* local or mounted file system"
    ):
        _local_path(Remote(), "bucket/run", "tomogram TS_01/wbp")


def test_a_configuration_that_is_not_copick_is_one_line(tmp_path):
    pytest.importorskip("copick")
    bad = tmp_path / "copick.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a copick configuration"):
        CopickProject(CopickSelection(bad))
    bad.write_text(json.dumps({"config_type": "cryoet_data_portal", "dataset_ids": [1]}))
    with pytest.raises(
        InputError, match="patch_corrections reads copick projects on a file system"
    ):
        CopickProject(CopickSelection(bad))
    assert SegmentationName().session == "0"
