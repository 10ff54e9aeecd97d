"""Painted voxels inside the border band: ignore like the rest of the band by default
(MemBrain-seg's merge), kept as labels with --painted-in-band."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
from typer.main import get_command

from patch_corrections.cli import app
from patch_corrections.constants import BACKGROUND, IGNORE, MEMBRANE, PAINTED_IN_BAND
from patch_corrections.errors import collect_warnings
from patch_corrections.io.summary import warn_other_band_choice
from patch_corrections.io.volumes import read_volume, write_volume
from patch_corrections.labels.corrections import merge_labels
from patch_corrections.labels.patches import add_border_band
from patch_corrections.workflows.merging import MergeSettings

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
N, BORDER = 12, 2
NRRD_HEADER = {"space directions": np.diag([10.0, 10.0, 10.0]), "space origin": [1.0, 2.0, 3.0]}


def _shell(*args, columns: int = 80) -> subprocess.CompletedProcess:
    """``python -m patch_corrections ARGS`` as a user's shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "patch_corrections", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"},
        check=False,
    )


def _write_nrrd(path: Path, data: np.ndarray) -> None:
    """``data`` ``(z, y, x)`` written by pynrrd, as MITK or napari users' scripts do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, NRRD_HEADER, index_order="C")


def _base() -> np.ndarray:
    """A label patch as extraction cuts it: a membrane sheet at z 5-6, the band ignore."""
    base = np.zeros((N, N, N), np.uint8)
    base[5:7] = MEMBRANE
    return add_border_band(base, BORDER)


def _patches(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        _write_nrrd(folder / "labels" / f"{name}.nrrd", _base())
        _write_nrrd(folder / "images" / f"{name}.nrrd", np.ones((N, N, N), np.float32))


def _painted(*voxels) -> np.ndarray:
    mask = np.zeros((N, N, N), np.uint8)
    for voxel in voxels:
        mask[voxel] = 1
    return mask


def test_painted_voxels_in_the_band_stay_labels_unless_ignore_or_padding_covers_them():
    base = add_border_band(np.zeros((12, 12, 12), np.uint8), 3)
    add, remove, ignore = (np.zeros(base.shape, bool) for _ in range(3))
    add[1, 5, 5] = add[6, 6, 6] = add[5, 1, 2] = True  # band, interior, band under Ignore
    remove[5, 5, 10] = remove[1, 5, 5] = True  # band; Add wins where both are painted
    ignore[5, 1, 2] = True
    padding = ((0, 0), (0, 0), (0, 1))  # the last x plane lay outside the tomogram
    add[4, 4, 11] = True
    masks = {"add": add, "remove": remove, "ignore": ignore, "border": 3, "padding": padding}
    band, band_counts = merge_labels(base, **masks)
    kept, counts = merge_labels(base, **masks, painted_in_band=True)
    assert band[1, 5, 5] == IGNORE and band[5, 5, 10] == IGNORE and band[6, 6, 6] == MEMBRANE
    assert kept[1, 5, 5] == MEMBRANE and kept[5, 5, 10] == BACKGROUND
    assert kept[5, 1, 2] == IGNORE and kept[4, 4, 11] == IGNORE  # Ignore, padding win
    assert kept[0, 0, 0] == IGNORE and kept[6, 6, 6] == MEMBRANE  # unpainted band: ignore
    assert counts.annotated == np.count_nonzero(band != IGNORE) + 2
    assert counts.band_painted == band_counts.band_painted == 2  # each voxel counted once
    assert (counts.added, counts.removed) == (band_counts.added + 1, band_counts.removed)


def test_merge_cli_keeps_painted_band_voxels_of_pynrrd_files(tmp_path, run_cli):
    _patches(tmp_path, ("tomo_patch000",))
    corrections = tmp_path / "corrections" / "tomo_patch000"
    _write_nrrd(corrections / "Add1.nrrd", _painted((slice(0, 2), 4, 4), (8, 6, 6)))
    _write_nrrd(corrections / "Remove1.nrrd", _painted((5, 6, slice(0, 3))))
    _write_nrrd(corrections / "Ignore1.nrrd", _painted((0, 4, 4)))
    merged = {}
    for flags in ((), ("--painted-in-band",)):
        out = tmp_path / ("kept" if flags else "band")
        done = _shell(
            *("merge_corrections", "-l", tmp_path / "labels", "-c", corrections.parent),
            *("-o", out, "--images-dir", tmp_path / "images", "--border", BORDER),
            *("--format", "nrrd", *flags),
        )
        assert done.returncode == 0, done.stderr
        merged[flags] = nrrd.read(str(out / "labelsTr" / "tomo_patch000.nrrd"), index_order="C")
        row = json.loads((out / "merge_summary.json").read_text())["patches"][0]
        assert (row["painted_in_band"], row["band_painted"]) == (bool(flags), 3)
        said = "kept as labels (--painted-in-band)" if flags else "made ignore"
        assert f"Border band: 3 voxel(s) painted Add or Remove in it {said}" in done.stdout
    expected = _base()
    expected[5, 6, 2] = BACKGROUND
    expected[8, 6, 6] = MEMBRANE
    np.testing.assert_array_equal(merged[()][0], expected)  # MemBrain-seg's merge
    expected[1, 4, 4] = MEMBRANE  # Add in the band; its voxel (0, 4, 4) is under Ignore
    expected[5, 6, 0:2] = BACKGROUND  # Remove in the band
    np.testing.assert_array_equal(merged[("--painted-in-band",)][0], expected)
    # A sparse copy of the folder says how its band was merged.
    result = run_cli("simulate_sparse", "-t", tmp_path / "kept", "-o", tmp_path / "sparse")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sparse" / "merge_summary.json").read_text())["patches"]
    assert [r["painted_in_band"] for r in rows] == [True]


def test_help_shows_the_option_whole_in_its_panel_at_80_columns():
    done = _shell("merge_corrections", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # no option name cut short
    panel = text[text.index("─ What the labels hold") :]
    panel = panel[: panel.index("╰")]
    flat = " ".join(panel.replace("│", " ").split())
    assert re.search(
        r"--painted-in-band Keep Add and Remove voxels painted inside the border band as "
        r"labels \(Ignore still wins\); otherwise the whole band is ignore, as in "
        r"MemBrain-seg's merge\.",
        flat,
    )


def test_the_default_is_one_constant_that_the_command_line_can_undo():
    command = get_command(app).commands["merge_corrections"]  # type: ignore[attr-defined]
    (option,) = [p for p in command.params if p.name == "painted_in_band"]

    def parsed(*flags) -> bool:
        args = ["-l", "labels", "-c", "corrections", "-o", "out", *flags]
        return command.make_context("merge_corrections", args).params["painted_in_band"]

    assert MergeSettings().painted_in_band is parsed() is PAINTED_IN_BAND
    # Whichever the default, one of the option's names gives the other choice.
    names = [*option.opts, *option.secondary_opts]
    assert (not PAINTED_IN_BAND) in {parsed(name) for name in names}


def test_a_rerun_with_the_other_choice_keeps_earlier_rows_as_they_were_merged(tmp_path, run_cli):
    _patches(tmp_path, ("a_patch000", "b_patch000", "c_patch000"))
    first, second = tmp_path / "first", tmp_path / "second"
    _write_nrrd(first / "a_patch000" / "Add1.nrrd", _painted((0, 4, 4)))  # in the band
    _write_nrrd(first / "c_patch000" / "Add1.nrrd", _painted((6, 6, 6)))  # inside only
    _write_nrrd(second / "b_patch000" / "Add1.nrrd", _painted((0, 4, 4)))
    args = ["-l", tmp_path / "labels", "--images-dir", tmp_path / "images", "-o", tmp_path / "t"]
    result = run_cli(
        "merge_corrections", *args, "--border", BORDER, "-c", first, "--painted-in-band"
    )
    assert result.exit_code == 0, result.output
    assert "Warnings" not in result.output
    result = run_cli("merge_corrections", *args, "--border", BORDER, "-c", second)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert (
        "1 earlier patch(es) (a_patch000) stay as merged with --painted-in-band, this run's "
        "without; each row records its choice" in flat
    )
    assert "made ignore with the rest of the band" in flat
    rows = json.loads((tmp_path / "t" / "merge_summary.json").read_text())["patches"]
    assert [(r["name"], r["painted_in_band"]) for r in rows] == [
        ("a_patch000", True),
        ("b_patch000", False),
        ("c_patch000", True),
    ]
    labels = {r["name"]: read_volume(tmp_path / "t" / r["label"])[0] for r in rows}
    assert labels["a_patch000"][0, 4, 4] == MEMBRANE and labels["b_patch000"][0, 4, 4] == IGNORE


def test_rows_from_before_the_choice_was_recorded_count_as_the_band_covering_them(tmp_path):
    earlier = {
        "old": {"name": "old", "corrected": True},  # a summary of an earlier version
        "kept": {"name": "kept", "painted_in_band": True, "band_painted": 4},
        "empty": {"name": "empty", "painted_in_band": False, "band_painted": 0},
        "uncorrected": {"name": "uncorrected", "corrected": False},
        "new": {"name": "new", "painted_in_band": False, "band_painted": 9},  # merged again
    }
    with collect_warnings() as warned:
        warn_other_band_choice(tmp_path, earlier, {"new"}, True)
    assert len(warned) == 1
    assert "1 earlier patch(es) (old) stay as merged without --painted-in-band" in warned[0]
    with collect_warnings() as warned:
        warn_other_band_choice(tmp_path, earlier, {"new"}, False)
    assert len(warned) == 1 and "(kept) stay as merged with --painted-in-band" in warned[0]


def test_merge_keeps_the_painted_band_voxels_on_the_sample_and_records_it(tmp_path, run_cli):
    result = run_cli(
        "extract_patches",
        "-t",
        SAMPLE / "tomogram.mrc",
        "-s",
        SAMPLE / "prediction.mrc",
        "-c",
        SAMPLE / "centres.csv",
        "--patch-size",
        96,
        "-o",
        tmp_path / "patches",
    )
    assert result.exit_code == 0, result.output
    # The bundled corrections, and a stroke of membrane painted across each patch's band.
    corrections = tmp_path / "corrections"
    shutil.copytree(SAMPLE / "corrections", corrections)
    for label in sorted((tmp_path / "patches" / "labels").iterdir()):
        labels, info = read_volume(label)
        stroke = np.zeros(labels.shape, np.uint8)
        stroke[40:44, 2:30, 40:44] = 1  # 14 voxels into the band along y, then inside
        name = label.name.removesuffix(".nrrd")
        write_volume(corrections / name / "Add2.nrrd", stroke, info.geometry)
    labelled = {}
    for flags in ((), ("--painted-in-band",)):
        out = tmp_path / ("kept" if flags else "band")
        args = ["-l", tmp_path / "patches", "-c", corrections, "-o", out]
        result = run_cli("merge_corrections", *args, *flags)
        assert result.exit_code == 0, result.output
        rows = json.loads((out / "merge_summary.json").read_text())["patches"]
        assert {r["painted_in_band"] for r in rows} == {bool(flags)}
        counted = {r["name"]: r["band_painted"] for r in rows}  # the last: the kept ones
        labelled[flags] = {
            path.name.removesuffix(".nii.gz"): read_volume(path)[0]
            for path in sorted((out / "labelsTr").iterdir())
        }
    for name, kept in labelled[("--painted-in-band",)].items():
        band = labelled[()][name]
        masks = {p.stem: read_volume(p)[0] != 0 for p in (corrections / name).iterdir()}
        painted = (masks["Add1"] | masks["Add2"] | masks.get("Remove1", False)) & ~masks.get(
            "Ignore1", False
        )
        gained = (kept != IGNORE) & (band == IGNORE)
        assert (gained <= painted).all()  # only painted voxels gained
        assert counted[name] == np.count_nonzero(gained)
        assert (kept[~gained] == band[~gained]).all()  # the rest is as it was
        stroke_in_band = np.zeros(kept.shape, bool)
        stroke_in_band[40:44, 2:16, 40:44] = True
        assert (kept[stroke_in_band & ~masks.get("Ignore1", False)] == MEMBRANE).all()
        assert (band[stroke_in_band] == IGNORE).all()
